"""Training: augmentation, the per-fold loop, cross-validation, evaluation (``tympan train``/``evaluate``)."""

from tympan.training.augment import AugmentConfig, augment_batch
from tympan.training.cv import bundle_from_run, run_cv
from tympan.training.evaluate import evaluate, predict_logits
from tympan.training.loop import TrainConfig, TrainingConfigError, train_fold

__all__ = [
    "AugmentConfig",
    "TrainConfig",
    "TrainingConfigError",
    "augment_batch",
    "bundle_from_run",
    "evaluate",
    "predict_logits",
    "run_cv",
    "train_fold",
]
