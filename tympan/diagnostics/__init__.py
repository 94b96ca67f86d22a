"""Diagnostics that tell a user when to distrust the served CNN.

Pure array arithmetic, one concern per module:

* :mod:`.confusion` -- confusion matrix, per-class scores, most-confused pairs.
* :mod:`.calibration` -- ECE / adaptive ECE / MCE / Brier / NLL, reliability diagram.
* :mod:`.temperature` -- temperature scaling and leave-one-group-out cross-fitting.
* :mod:`.ood` -- energy and max-softmax OOD scores (higher = more OOD), metrics.
* :mod:`.acoustic` -- per-clip acoustic descriptors (librosa).
* :mod:`.drift` -- train-vs-field drift with effect-size-gated verdicts.
* :mod:`.fit` -- fit a bundle's temperature, OOD threshold, drift reference (``tympan calibrate``).
* :mod:`.field` -- analyse field recordings and run every drift check (``diagnose --field-dir``).
* :mod:`.report` -- ``report.json`` + self-contained ``report.html``.
* :mod:`.robustness` -- accuracy / ECE under controlled corruptions.
* :mod:`.openset` -- OOD evaluation: open-set split, real OOD set, AudioSet tags.

The last five load torch and the model code, so they are imported lazily (``fit_bundle``,
``drift_checks``, ... resolve on first use).

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

_LAZY = {
    "fit_bundle": "tympan.diagnostics.fit",
    "calibrate_heldout": "tympan.diagnostics.fit",
    "heldout_diagnostics": "tympan.diagnostics.fit",
    "read_heldout": "tympan.diagnostics.fit",
    "analyse_folder": "tympan.diagnostics.field",
    "analyse_sources": "tympan.diagnostics.field",
    "drift_checks": "tympan.diagnostics.field",
    "write_report": "tympan.diagnostics.report",
    "run_sweep": "tympan.diagnostics.robustness",
    "open_set_eval": "tympan.diagnostics.openset",
    "real_ood_eval": "tympan.diagnostics.openset",
    "audioset_tag_eval": "tympan.diagnostics.openset",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tympan.diagnostics' has no attribute {name!r}")


__all__ = [
    *_LAZY,
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
