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
from sklearn.base import BaseEstimator
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.utils.validation import check_is_fitted

from tympan.io import json_float
from tympan.stats.scorers import as_embeddings as _as_embeddings
from tympan.stats.scorers import combined_score, energy_score, knn_distance, softmax, unit_bank

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
        return energy_score(logits, temperature)


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


# --------------------------------------------------------------------------- #
# scores on the embedding
# --------------------------------------------------------------------------- #
class KNNOOD(BaseEstimator):
    """Distance to the k-th nearest training embedding (Sun, Ming, Zhu, Li, "Out-of-Distribution
    Detection with Deep Nearest Neighbors", ICML 2022): ``1 - cos`` to the k-th closest of the
    L2-normalised training embeddings. Higher = more out-of-distribution.

    ``fit(bank)`` stores the (normalised) training embeddings; the threshold keeps ``tpr`` of
    ``heldout`` (embeddings of in-distribution clips the model never trained on).
    """

    def __init__(self, k: int = 10, tpr: float = 0.95) -> None:
        self.k = k
        self.tpr = tpr

    def fit(self, X: Any, y: Any = None, *, heldout: Any | None = None) -> Self:
        bank = unit_bank(X)
        if len(bank) < self.k:
            raise ValueError(f"need at least k={self.k} reference embeddings, got {len(bank)}")
        self.bank_ = bank
        self.n_features_in_ = bank.shape[1]
        self.threshold_ = None
        if heldout is not None:
            self.threshold_ = float(np.quantile(self.decision_function(heldout), self.tpr))
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "bank_")
        return knn_distance(self.bank_, self.k, X)

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "threshold_")
        if self.threshold_ is None:
            raise ValueError("no threshold: fit with heldout=...")
        return self.decision_function(X) > self.threshold_


class MahalanobisOOD(BaseEstimator):
    """Smallest Mahalanobis distance to a class mean under a shared covariance (Lee, Lee, Lee, Shin,
    "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
    Attacks", NeurIPS 2018); the covariance is Ledoit-Wolf shrunk (scikit-learn)."""

    def __init__(self, tpr: float = 0.95) -> None:
        self.tpr = tpr

    def fit(self, X: Any, y: Any, *, heldout: Any | None = None) -> Self:
        from sklearn.covariance import LedoitWolf

        e = _as_embeddings(X)
        y = np.asarray(y, np.int64)
        self.classes_ = np.unique(y)
        self.means_ = np.stack([e[y == c].mean(axis=0) for c in self.classes_])
        centred = e - self.means_[np.searchsorted(self.classes_, y)]
        self.precision_ = LedoitWolf().fit(centred).precision_
        self.n_features_in_ = e.shape[1]
        self.threshold_ = None
        if heldout is not None:
            self.threshold_ = float(np.quantile(self.decision_function(heldout), self.tpr))
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "means_")
        e = _as_embeddings(X)
        d = e[:, None, :] - self.means_[None]
        return np.sqrt(np.maximum(np.einsum("ncd,de,nce->nc", d, self.precision_, d).min(axis=1), 0))


__all__ += ["KNNOOD", "MahalanobisOOD"]


class CombinedOOD(BaseEstimator):
    """The larger of the standardised energy and k-NN scores: OOD when either says so.

    Energy catches inputs the classifier has no strong logit for (speech); the k-NN distance
    catches inputs whose embedding is far from every training clip even when one logit is
    large (music, chimes, pure noise confidently called church bells or rain). Each score is
    standardised with the mean and std of held-out in-distribution clips, so neither dominates
    by its units; the threshold keeps ``tpr`` of those clips.
    """

    def __init__(self, k: int = 10, tpr: float = 0.95, temperature: float = 1.0) -> None:
        self.k = k
        self.tpr = tpr
        self.temperature = temperature

    def fit(self, bank: Any, heldout_embeddings: Any, heldout_logits: Any) -> Self:
        """``bank``: training-clip embeddings; ``heldout_*``: clips the model never trained on."""
        self.knn_ = KNNOOD(k=self.k, tpr=self.tpr).fit(bank)
        e = EnergyOOD.score(heldout_logits, self.temperature)
        d = self.knn_.decision_function(heldout_embeddings)
        self.energy_loc_, self.energy_scale_ = float(np.mean(e)), float(np.std(e) + 1e-9)
        self.knn_loc_, self.knn_scale_ = float(np.mean(d)), float(np.std(d) + 1e-9)
        self.threshold_ = float(np.quantile(self.combine(e, d), self.tpr))
        self.n_features_in_ = self.knn_.n_features_in_
        return self

    score_name = "energy+knn"

    def window_scores(self, energy: np.ndarray, embeddings: Any) -> np.ndarray:
        """The prediction path's window score from the window energies and embeddings."""
        return self.combine(energy, self.knn_.decision_function(embeddings))

    def combine(self, energy: np.ndarray, distance: np.ndarray) -> np.ndarray:
        """Window scores from the two raw scores, window energies and k-NN distances (what the
        prediction path calls)."""
        return combined_score(energy, distance, self.energy_loc_, self.energy_scale_, self.knn_loc_,
                              self.knn_scale_)

    def decision_function(self, embeddings: Any, logits: Any) -> np.ndarray:
        check_is_fitted(self, "knn_")
        return self.combine(EnergyOOD.score(logits, self.temperature), self.knn_.decision_function(embeddings))

    def predict(self, embeddings: Any, logits: Any) -> np.ndarray:
        return self.decision_function(embeddings, logits) > self.threshold_

    def to_dict(self) -> dict[str, Any]:
        """The JSON half (the bank of embeddings is stored apart, see :meth:`bank`)."""
        check_is_fitted(self, "knn_")
        return {"score": "energy+knn", "k": self.k, "tpr": self.tpr, "temperature": self.temperature,
                "energy_loc": self.energy_loc_, "energy_scale": self.energy_scale_,
                "knn_loc": self.knn_loc_, "knn_scale": self.knn_scale_, "threshold": self.threshold_,
                "n_bank": int(len(self.knn_.bank_)), "dim": int(self.n_features_in_)}

    @property
    def bank(self) -> np.ndarray:
        check_is_fitted(self, "knn_")
        return self.knn_.bank_

    @classmethod
    def from_dict(cls, data: dict[str, Any], bank: np.ndarray) -> CombinedOOD:
        obj = cls(k=int(data["k"]), tpr=float(data["tpr"]), temperature=float(data.get("temperature", 1.0)))
        obj.knn_ = KNNOOD(k=obj.k, tpr=obj.tpr).fit(bank)
        obj.energy_loc_, obj.energy_scale_ = float(data["energy_loc"]), float(data["energy_scale"])
        obj.knn_loc_, obj.knn_scale_ = float(data["knn_loc"]), float(data["knn_scale"])
        obj.threshold_ = float(data["threshold"])
        obj.n_features_in_ = obj.knn_.n_features_in_
        return obj


__all__ += ["CombinedOOD"]


class ProbeOOD(BaseEstimator):
    """A linear probe on the frozen embedding that tells training audio from known outliers.

    Outlier exposure (Hendrycks, Mazeika, Dietterich, "Deep Anomaly Detection with Outlier
    Exposure", ICLR 2019) with the network frozen: a logistic regression (scikit-learn) on
    standardised embeddings, in-distribution = training-fold windows, out = the development split
    of a real OOD set (speech, music, UI sounds, generated tones and noise). Score = the probe's
    log-odds of "out"; the threshold keeps ``tpr`` of held-out in-distribution windows. It is
    judged only on OOD sources it never saw (other voices, soundfonts, sound themes).
    """

    score_name = "probe"

    def __init__(self, C: float = 0.1, tpr: float = 0.95) -> None:
        self.C = C
        self.tpr = tpr

    def fit(self, X_in: Any, X_out: Any, *, heldout: Any) -> Self:
        from tympan.stats.probe import LinearProbe

        a, b = _as_embeddings(X_in), _as_embeddings(X_out)
        self.probe_ = LinearProbe.fit(np.vstack([a, b]), np.r_[np.zeros(len(a)), np.ones(len(b))],
                                      C=self.C, max_iter=3000)
        self.n_features_in_ = a.shape[1]
        self.threshold_ = float(np.quantile(self.decision_function(heldout), self.tpr))
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "probe_")
        return self.probe_.log_odds(_as_embeddings(X))

    def window_scores(self, energy: np.ndarray, embeddings: Any) -> np.ndarray:
        """The prediction path's window score (the energy is not used by this score)."""
        del energy
        return self.decision_function(embeddings)

    def predict(self, X: Any) -> np.ndarray:
        return self.decision_function(X) > self.threshold_

    def to_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "probe_")
        return {"score": self.score_name, "C": self.C, "tpr": self.tpr, "threshold": self.threshold_,
                **self.probe_.to_dict(), "dim": int(self.n_features_in_)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeOOD:
        from tympan.stats.probe import LinearProbe

        obj = cls(C=float(data.get("C", 0.1)), tpr=float(data.get("tpr", 0.95)))
        obj.probe_ = LinearProbe.from_dict(data)
        obj.threshold_ = float(data["threshold"])
        obj.n_features_in_ = int(data["dim"])
        return obj


__all__ += ["ProbeOOD"]
