"""Domain adaptation: make a trained bundle fit the field audio it is used on.

* :mod:`.adabn` -- unlabelled test-time adaptation: re-estimate BatchNorm statistics on field
  recordings (``tympan adapt --bundle B --field-dir DIR --out NEW``).
* :mod:`.finetune` -- with a few labelled field clips: fine-tune the head (optionally the last
  stage) with ESC-50 replay against forgetting (``--labels labels.csv``).
* :mod:`.compare` -- before/after evidence: OOD rate, confidence, predicted classes, accuracy.
* :mod:`.robust` -- prevention: featurised field-augmented copies of the training clips.
"""

from tympan.adaptation.adabn import adapt_batchnorm, adapt_bundle, batchnorm_layers, has_batchnorm
from tympan.adaptation.compare import compare_bundles
from tympan.adaptation.field import AdaptationError, FieldFeatures, NoBatchNormError, load_field
from tympan.adaptation.finetune import finetune_bundle, finetune_model, read_labels

__all__ = [
    "AdaptationError",
    "FieldFeatures",
    "NoBatchNormError",
    "adapt_batchnorm",
    "adapt_bundle",
    "batchnorm_layers",
    "compare_bundles",
    "finetune_bundle",
    "finetune_model",
    "has_batchnorm",
    "load_field",
    "read_labels",
]
