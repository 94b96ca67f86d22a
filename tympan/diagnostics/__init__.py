"""Diagnostics that tell a user when to distrust the served CNN.

Pure array arithmetic, one concern per module:

* :mod:`.confusion` -- confusion matrix, per-class scores, most-confused pairs.
* :mod:`.calibration` -- ECE / adaptive ECE / MCE / Brier / NLL, reliability diagram.
* :mod:`.temperature` -- temperature scaling and leave-one-group-out cross-fitting.
* :mod:`.ood` -- energy and max-softmax OOD scores (higher = more OOD), metrics.
* :mod:`.acoustic` -- per-clip acoustic descriptors (librosa).
* :mod:`.drift` -- train-vs-field drift with effect-size-gated verdicts.

Everything fitted follows scikit-learn conventions; every report has a
JSON-serialisable ``to_dict()`` (or is a plain dict).
"""

from tympan.diagnostics.acoustic import FEATURE_NAMES, acoustic_feature_matrix, acoustic_features
from tympan.diagnostics.calibration import (
    ReliabilityCurve,
    adaptive_calibration_error,
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_curve,
    reliability_figure,
)
from tympan.diagnostics.confusion import (
    ConfusedPair,
    ConfusionReport,
    confusion_figure,
    confusion_report,
    most_confused_pairs,
)
from tympan.diagnostics.drift import (
    DRIFT,
    INSUFFICIENT,
    NEGLIGIBLE,
    NO_DRIFT,
    EmbeddingDriftDetector,
    EmbeddingDriftReport,
    FeatureDrift,
    FeatureDriftDetector,
    FeatureDriftReport,
    confidence_shift,
    label_shift,
    mmd2_unbiased,
    ood_rate_shift,
    overall_verdict,
    population_stability_index,
    prediction_counts,
)
from tympan.diagnostics.ood import EnergyOOD, MaxSoftmaxOOD, fpr_at_tpr, ood_metrics
from tympan.diagnostics.temperature import CrossFitResult, TemperatureScaler, cross_fit_temperature

__all__ = [
    "DRIFT",
    "FEATURE_NAMES",
    "INSUFFICIENT",
    "NEGLIGIBLE",
    "NO_DRIFT",
    "ConfusedPair",
    "ConfusionReport",
    "CrossFitResult",
    "EmbeddingDriftDetector",
    "EmbeddingDriftReport",
    "EnergyOOD",
    "FeatureDrift",
    "FeatureDriftDetector",
    "FeatureDriftReport",
    "MaxSoftmaxOOD",
    "ReliabilityCurve",
    "TemperatureScaler",
    "acoustic_feature_matrix",
    "acoustic_features",
    "adaptive_calibration_error",
    "brier_score",
    "calibration_metrics",
    "confidence_shift",
    "confusion_figure",
    "confusion_report",
    "cross_fit_temperature",
    "expected_calibration_error",
    "fpr_at_tpr",
    "label_shift",
    "maximum_calibration_error",
    "mmd2_unbiased",
    "most_confused_pairs",
    "negative_log_likelihood",
    "ood_metrics",
    "ood_rate_shift",
    "overall_verdict",
    "population_stability_index",
    "prediction_counts",
    "reliability_curve",
    "reliability_figure",
]
