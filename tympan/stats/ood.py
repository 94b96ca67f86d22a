"""Out-of-distribution scores from logits, thresholds and their evaluation.

Orientation everywhere in tympan: **higher score = more out-of-distribution**.

* Energy score (Liu, Wang, Owens, Li, "Energy-based Out-of-distribution
  Detection", NeurIPS 2020): ``E(x) = -T * logsumexp(z / T)``. In-distribution
  inputs get large logits, hence low (very negative) energy.
* Maximum softmax probability baseline (Hendrycks & Gimpel, "A Baseline for
  Detecting Misclassified and Out-of-Distribution Examples", ICLR 2017): the
  score is ``-max_c softmax(z / T)_c``.

Thresholds are fitted on in-distribution clips only: ``threshold_`` is the
``tpr`` quantile of their scores, so ``score <= threshold_`` keeps (at least)
``tpr`` of in-distribution clips and ``score > threshold_`` is flagged OOD.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
from scipy.special import logsumexp, softmax
from sklearn.base import BaseEstimator
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.utils.validation import check_is_fitted

from tympan.io import json_float

__all__ = ["EnergyOOD", "MaxSoftmaxOOD", "fpr_at_tpr", "ood_metrics"]

POSITIVE_CLASS = "out-of-distribution"


def _as_logits(logits: Any) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"expected logits of shape (n_samples, n_classes), got {z.shape}")
    return z


class _ThresholdOOD(BaseEstimator):
    """Shared fit/predict for score-based detectors (subclasses define ``score``)."""

    def __init__(self, temperature: float = 1.0, tpr: float = 0.95) -> None:
        self.temperature = temperature
        self.tpr = tpr

    @staticmethod
    def score(logits: Any, temperature: float = 1.0) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def decision_function(self, logits: Any) -> np.ndarray:
        """OOD score per clip (higher = more OOD); needs no fitting."""
        return self.score(logits, self.temperature)

    def fit(self, in_dist_logits: Any, y: Any = None) -> Self:
        """Set ``threshold_`` so that ``tpr`` of these in-distribution clips are kept.

        Use clips the model was NOT trained on (validation / out-of-fold):
        training clips have inflated logits and would give a too-strict threshold.
        """
        if not 0 < self.tpr <= 1:
            raise ValueError("tpr must be in (0, 1]")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        s = self.decision_function(in_dist_logits)
        if len(s) == 0:
            raise ValueError("need at least one in-distribution clip")
        # 'higher' picks an observed score with P(score <= thr) >= tpr.
        self.threshold_ = float(np.quantile(s, self.tpr, method="higher"))
        self.in_dist_acceptance_ = float(np.mean(s <= self.threshold_))
        self.n_fit_ = int(len(s))
        self.n_features_in_ = int(np.asarray(in_dist_logits).shape[1])
        return self

    def predict(self, logits: Any) -> np.ndarray:
        """Boolean array, ``True`` = flagged out-of-distribution."""
        check_is_fitted(self, "threshold_")
        return self.decision_function(logits) > self.threshold_

    def evaluate(self, in_dist_logits: Any, out_dist_logits: Any) -> dict[str, Any]:
        """:func:`ood_metrics` on this detector's scores plus its own operating point."""
        s_in = self.decision_function(in_dist_logits)
        s_out = self.decision_function(out_dist_logits)
        out = ood_metrics(s_in, s_out)
        if self.tpr != 0.95:
            out[f"fpr_at_tpr_{self.tpr:g}"] = fpr_at_tpr(s_in, s_out, self.tpr)
        if hasattr(self, "threshold_"):
            out["threshold"] = self.threshold_
            out["in_dist_accepted_at_threshold"] = json_float(np.mean(s_in <= self.threshold_))
            out["ood_flagged_at_threshold"] = json_float(np.mean(s_out > self.threshold_))
        return out

    def to_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "threshold_")
        return {
            "method": type(self).__name__,
            "params": {"temperature": float(self.temperature), "tpr": float(self.tpr)},
            "threshold": float(self.threshold_),
            "in_dist_acceptance": float(self.in_dist_acceptance_),
            "n_fit": int(self.n_fit_),
            "n_classes": int(self.n_features_in_),
            "score_orientation": "higher = more out-of-distribution",
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        obj = cls(**data["params"])
        obj.threshold_ = float(data["threshold"])
        obj.in_dist_acceptance_ = float(data.get("in_dist_acceptance", obj.tpr))
        obj.n_fit_ = int(data.get("n_fit", 0))
        obj.n_features_in_ = int(data["n_classes"])
        return obj


class EnergyOOD(_ThresholdOOD):
    """Energy-score detector, ``E = -T * logsumexp(z / T)`` (Liu et al., NeurIPS 2020)."""

    @staticmethod
    def score(logits: Any, temperature: float = 1.0) -> np.ndarray:
        z = _as_logits(logits)
        return -temperature * logsumexp(z / temperature, axis=1)


class MaxSoftmaxOOD(_ThresholdOOD):
    """Baseline detector, score ``-max softmax(z / T)`` (Hendrycks & Gimpel, ICLR 2017)."""

    @staticmethod
    def score(logits: Any, temperature: float = 1.0) -> np.ndarray:
        z = _as_logits(logits)
        return -softmax(z / temperature, axis=1).max(axis=1)


def fpr_at_tpr(scores_in: Any, scores_out: Any, tpr: float = 0.95) -> float:
    """Share of OOD clips accepted when the threshold keeps ``tpr`` of in-distribution clips.

    Here in-distribution is the positive class of the TPR (the usual FPR95 of
    the OOD literature, e.g. pytorch-ood): accept ``score <= t`` with the
    smallest ``t`` reaching TPR >= ``tpr``, report the OOD share below ``t``.
    """
    s_in = np.asarray(scores_in, dtype=np.float64)
    s_out = np.asarray(scores_out, dtype=np.float64)
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    fpr, tpr_curve, _ = roc_curve(y, -np.r_[s_in, s_out], drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr_curve, tpr - 1e-12, side="left")])


def ood_metrics(scores_in: Any, scores_out: Any) -> dict[str, Any]:
    """AUROC, AUPR (OOD positive and in-distribution positive) and FPR at 95% TPR.

    Scores follow "higher = more OOD". ``auroc`` and ``aupr_out`` treat OOD as
    the positive class; ``aupr_in`` treats in-distribution as positive (scores
    negated); ``fpr_at_95_tpr`` is the share of OOD clips accepted when 95% of
    in-distribution clips are accepted (see :func:`fpr_at_tpr`). AUPR depends on
    the in/out ratio, hence ``n_in``/``n_out``.
    """
    s_in = np.asarray(scores_in, dtype=np.float64).ravel()
    s_out = np.asarray(scores_out, dtype=np.float64).ravel()
    if len(s_in) == 0 or len(s_out) == 0:
        raise ValueError("need at least one in-distribution and one OOD score")
    y_out = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    s = np.r_[s_in, s_out]
    return {
        "auroc": float(roc_auc_score(y_out, s)),
        "aupr_out": float(average_precision_score(y_out, s)),
        "aupr_in": float(average_precision_score(1 - y_out, -s)),
        "fpr_at_95_tpr": fpr_at_tpr(s_in, s_out, 0.95),
        "n_in": int(len(s_in)),
        "n_out": int(len(s_out)),
        "positive": POSITIVE_CLASS,
        "score_orientation": "higher = more out-of-distribution",
        "fpr_definition": "share of OOD clips accepted at the threshold keeping 95% of in-distribution clips",
    }
