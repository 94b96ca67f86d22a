"""Diagnostic pipelines: the statistics of :mod:`tympan.stats` applied to bundles and folders.

* :mod:`.calibrate` -- fit a bundle's temperature, OOD threshold, drift reference and held-out
  diagnostics (``tympan calibrate``); :mod:`.heldout` builds the diagnostics block and
  :mod:`.reference` the drift reference.
* :mod:`.field` -- analyse recordings through the one prediction path and run every drift
  check (``diagnose --field-dir``).
* :mod:`.report` -- ``report.json`` + self-contained ``report.html``.
* :mod:`.robustness` -- accuracy / ECE of the held-out fold under controlled corruptions.

The statistics themselves (arrays in, numbers out) are re-exported here for convenience; the
pipelines load torch and the model code, so they are imported lazily (``fit_bundle``,
``drift_checks``, ... resolve on first use).
"""

from tympan.stats.acoustic import FEATURE_NAMES, acoustic_feature_matrix, acoustic_features
from tympan.stats.calibration import (
    ReliabilityCurve,
    adaptive_calibration_error,
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)
from tympan.stats.confusion import (
    ConfusedPair,
    ConfusionReport,
    confusion_report,
    most_confused_pairs,
)
from tympan.stats.drift import (
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
from tympan.stats.ood import EnergyOOD, MaxSoftmaxOOD, fpr_at_tpr, ood_metrics
from tympan.stats.temperature import CrossFitResult, TemperatureScaler, cross_fit_temperature

_LAZY = {
    "fit_bundle": "tympan.diagnostics.calibrate",
    "calibrate_heldout": "tympan.stats.temperature",
    "heldout_diagnostics": "tympan.diagnostics.heldout",
    "read_heldout": "tympan.bundle",
    "analyse_folder": "tympan.diagnostics.field",
    "analyse_sources": "tympan.diagnostics.field",
    "drift_checks": "tympan.diagnostics.field",
    "write_report": "tympan.diagnostics.report",
    "run_sweep": "tympan.diagnostics.robustness",
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
]
