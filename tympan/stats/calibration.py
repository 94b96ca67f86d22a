"""Calibration metrics for top-label confidence: ECE, adaptive ECE, MCE, Brier, NLL.

All functions take class probabilities ``(n, k)`` and integer labels ``(n,)``.

* **ECE** (Naeini et al., AAAI 2015; Guo et al., "On Calibration of Modern
  Neural Networks", ICML 2017): ``sum_b |B_b|/n * |acc(B_b) - conf(B_b)|`` over
  ``n_bins`` equal-width confidence bins ``[i/M, (i+1)/M)``. Identical to
  ``torchmetrics MulticlassCalibrationError(n_bins, norm="l1")`` except that a
  confidence of exactly 1.0 goes into the last bin ``[1 - 1/M, 1]`` here, while
  torchmetrics gives it a bin of its own.
* **Adaptive ECE** (Nixon et al., "Measuring Calibration in Deep Learning",
  CVPR-W 2019): same sum over equal-MASS bins, which is less dominated by the
  crowded high-confidence bin of an over-confident network.
* **MCE**: ``max_b |acc(B_b) - conf(B_b)|`` over non-empty bins (torchmetrics
  ``norm="max"``).
* **Brier** (multiclass, Brier 1950): ``mean_i sum_c (p_ic - y_ic)^2`` in
  [0, 2] (sklearn ``brier_score_loss(..., scale_by_half=False)``).
* **NLL**: ``-mean_i log p_i,y_i`` (sklearn ``log_loss``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sklearn.metrics import brier_score_loss, log_loss

from tympan.stats.probabilities import as_probabilities
from tympan.io import json_float, to_jsonable

__all__ = [
    "ReliabilityCurve",
    "adaptive_calibration_error",
    "brier_score",
    "calibration_metrics",
    "expected_calibration_error",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "reliability_curve",
]

BinStrategy = Literal["uniform", "quantile"]


@dataclass
class ReliabilityCurve:
    """Per-bin mean confidence, accuracy and count (empty bins hold NaN / 0)."""

    bin_lower: np.ndarray
    bin_upper: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    strategy: str

    @property
    def n_samples(self) -> int:
        return int(self.count.sum())

    def gaps(self) -> np.ndarray:
        """``|accuracy - confidence|`` per bin (NaN for empty bins)."""
        return np.abs(self.accuracy - self.confidence)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "strategy": self.strategy,
                "bin_lower": self.bin_lower,
                "bin_upper": self.bin_upper,
                "confidence": self.confidence,
                "accuracy": self.accuracy,
                "count": self.count.astype(int),
            }
        )


def _top_label(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = as_probabilities(probs)
    y = np.asarray(labels).astype(int)
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must have shape ({p.shape[0]},), got {y.shape}")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    return confidence, correct


def reliability_curve(
    probs: np.ndarray,
    labels: np.ndarray,
    n_bins: int = 15,
    strategy: BinStrategy = "uniform",
) -> ReliabilityCurve:
    """Bin top-label confidences and compare mean confidence with accuracy per bin.

    ``strategy="uniform"``: bins ``[i/M, (i+1)/M)`` (last bin closed), as in
    torchmetrics. ``strategy="quantile"``: ``M`` bins of (almost) equal count
    over the sorted confidences; bin edges are the min/max confidence inside.
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    confidence, correct = _top_label(probs, labels)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        idx = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)
        lower, upper = edges[:-1], edges[1:]
    elif strategy == "quantile":
        order = np.argsort(confidence, kind="stable")
        idx = np.empty(len(confidence), dtype=int)
        for b, chunk in enumerate(np.array_split(order, n_bins)):
            idx[chunk] = b
        lower = np.array([confidence[idx == b].min() if np.any(idx == b) else np.nan for b in range(n_bins)])
        upper = np.array([confidence[idx == b].max() if np.any(idx == b) else np.nan for b in range(n_bins)])
    else:
        raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf_bin = np.bincount(idx, weights=confidence, minlength=n_bins) / count
        acc_bin = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return ReliabilityCurve(lower, upper, conf_bin, acc_bin, count.astype(int), strategy)


def _weighted_gap(curve: ReliabilityCurve) -> float:
    filled = curve.count > 0
    w = curve.count[filled] / curve.count.sum()
    return float(np.sum(w * curve.gaps()[filled]))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with ``n_bins`` equal-width bins (Guo et al. 2017)."""
    return _weighted_gap(reliability_curve(probs, labels, n_bins, "uniform"))


def adaptive_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE over equal-mass bins (Nixon et al. 2019)."""
    return _weighted_gap(reliability_curve(probs, labels, n_bins, "quantile"))


def maximum_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Largest per-bin ``|accuracy - confidence|`` over non-empty equal-width bins."""
    curve = reliability_curve(probs, labels, n_bins, "uniform")
    return float(np.max(curve.gaps()[curve.count > 0]))


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score ``mean_i sum_c (p_ic - onehot_ic)^2`` in [0, 2]."""
    p = as_probabilities(probs)
    return float(
        brier_score_loss(
            np.asarray(labels).astype(int), p, labels=np.arange(p.shape[1]), scale_by_half=False
        )
    )


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (sklearn ``log_loss``)."""
    p = as_probabilities(probs)
    return float(log_loss(np.asarray(labels).astype(int), p, labels=np.arange(p.shape[1])))


def calibration_metrics(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """All calibration numbers in one JSON-ready dict."""
    confidence, correct = _top_label(probs, labels)
    return {
        "n_samples": int(len(correct)),
        "n_bins": int(n_bins),
        "accuracy": json_float(correct.mean()),
        "mean_confidence": json_float(confidence.mean()),
        "ece": json_float(expected_calibration_error(probs, labels, n_bins)),
        "adaptive_ece": json_float(adaptive_calibration_error(probs, labels, n_bins)),
        "mce": json_float(maximum_calibration_error(probs, labels, n_bins)),
        "brier": json_float(brier_score(probs, labels)),
        "nll": json_float(negative_log_likelihood(probs, labels)),
    }


def ece_noise_floor(probs: np.ndarray, n_draws: int = 200, seed: int = 0, n_bins: int = 15) -> dict[str, float]:
    """ECE a PERFECTLY calibrated model would show on this many clips with these confidences.

    Each draw keeps the confidences and makes every prediction correct with probability equal
    to its confidence; the spread of the resulting ECEs is the estimator's own noise (15
    equal-width bins on a few hundred clips is biased upward by ~1-2 points).
    """
    p = np.asarray(probs, np.float64)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    rng = np.random.default_rng(seed)
    k = p.shape[1]
    eces = []
    for _ in range(n_draws):
        correct = rng.random(len(conf)) < conf
        labels = np.where(correct, pred, (pred + 1 + rng.integers(0, k - 1, len(pred))) % k)
        eces.append(expected_calibration_error(p, labels, n_bins))
    e = np.asarray(eces)
    return {"mean": float(e.mean()), "q95": float(np.quantile(e, 0.95)), "n_draws": n_draws,
            "what": "ECE of a perfectly calibrated model with these confidences on this many clips"}
