"""The held-out diagnostics block of a bundle (``bundle.extra["diagnostics"]``).

Confusion, per-class scores, most-confused pairs with clip ids, reliability before/after,
ECE/MCE/NLL/Brier before/after and OOD histograms, all measured on the bundle's held-out fold:
what the dashboard's Model diagnostics page and the HTML report show (``docs/diagnostics.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tympan.contracts.diagnostics import DIAGNOSTICS_VERSION, Diagnostics
from tympan.io import to_jsonable
from tympan.stats.calibration import calibration_metrics, reliability_curve
from tympan.stats.confusion import confusion_report
from tympan.stats.describe import histogram
from tympan.stats.ood import EnergyOOD, MaxSoftmaxOOD, ood_metrics

__all__ = ["DIAGNOSTICS_VERSION", "N_BINS", "heldout_diagnostics"]

N_BINS = 15


def _curve(probs: np.ndarray, labels: np.ndarray, temperature: float, **extra: Any) -> dict[str, Any]:
    curve = reliability_curve(probs, labels, N_BINS, "uniform").to_dict()
    m = calibration_metrics(probs, labels, N_BINS)
    return {**curve, "ece": m["ece"], "temperature": float(temperature), **extra}


def heldout_diagnostics(
    logits: np.ndarray,
    labels: np.ndarray,
    clip_ids: Sequence[str],
    classes: Sequence[str],
    *,
    calibration: Mapping[str, Any],
    detector: EnergyOOD,
    evaluated_on: str,
    ood_logits: np.ndarray | None = None,
    ood_label: str = "out-of-distribution set",
) -> dict[str, Any]:
    """The ``bundle.extra["diagnostics"]`` dict the dashboard reads (see docs/diagnostics.md).

    Validated by :class:`tympan.contracts.diagnostics.Diagnostics` (a version 1 block must be
    complete); returns that model's JSON dump, with the keys written today.
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    cm = confusion_report(y, logits=z, class_names=list(classes), clip_ids=list(clip_ids), top_k=15).to_dict()
    per_class_acc = {row["class"]: row["recall"] for row in cm["per_class"]}
    summ = calibration["summary"]
    t = summ["temperature"]
    s_in = detector.decision_function(z)
    ood: dict[str, Any] = {
        "score_name": "energy",
        "score": "energy",
        "temperature": float(detector.temperature),
        "threshold": float(detector.threshold_),
        "tpr": float(detector.tpr),
        "score_orientation": "higher = more out-of-distribution",
        "in_distribution_accepted": float(np.mean(s_in <= detector.threshold_)),
    }
    pooled = s_in if ood_logits is None else np.r_[s_in, detector.decision_function(ood_logits)]
    edges = np.linspace(np.floor(pooled.min()), np.ceil(pooled.max()), 41)
    ood["histograms"] = {"in": histogram(s_in, edges, f"{evaluated_on} (in-distribution)")}
    if ood_logits is not None and len(ood_logits):
        s_out = detector.decision_function(ood_logits)
        ood["histograms"]["out"] = histogram(s_out, edges, ood_label)
        energy_m = ood_metrics(s_in, s_out)
        msp = MaxSoftmaxOOD(temperature=t)
        msp_m = ood_metrics(msp.decision_function(z), msp.decision_function(ood_logits))
        ood["metrics"] = {"auroc": energy_m["auroc"], "aupr": energy_m["aupr_out"],
                          "fpr_at_95_tpr": energy_m["fpr_at_95_tpr"], "positive": energy_m["positive"],
                          "n_in": energy_m["n_in"], "n_out": energy_m["n_out"],
                          "flagged_at_threshold": float(np.mean(s_out > detector.threshold_))}
        ood["baseline_max_softmax"] = {"auroc": msp_m["auroc"], "aupr": msp_m["aupr_out"],
                                       "fpr_at_95_tpr": msp_m["fpr_at_95_tpr"]}
        ood["out_set"] = ood_label
    doc = to_jsonable({
        "version": DIAGNOSTICS_VERSION,
        "evaluated_on": evaluated_on,
        "n_clips": int(len(y)),
        "accuracy": cm["accuracy"],
        "confusion": cm,
        "per_class_accuracy": per_class_acc,
        "reliability": {
            "before": _curve(calibration["probs_before"], y, 1.0),
            "after": _curve(calibration["probs_after"], y, t, cross_fitted=True),
        },
        "calibration": {k: summ[k] for k in ("temperature", "temperature_at_bound", "protocol", "n_bins",
                                             "before", "after", "after_in_sample", "ece_noise_floor",
                                             "cross_fit")},
        "ood": ood,
    })
    return Diagnostics.model_validate(doc).model_dump(mode="json", exclude_unset=True)
