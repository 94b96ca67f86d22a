"""The fitted trust estimators' inference half, in NumPy only: what loading a bundle needs.

The estimators (:class:`~tympan.stats.background.BackgroundDetector`,
:class:`~tympan.stats.ood.ProbeOOD`, :class:`~tympan.stats.ood.CombinedOOD`) follow
scikit-learn's conventions and are fitted with it; importing scikit-learn (and with it SciPy's
stats, pandas, pyarrow) costs about 2.5 CPU s, ten times the work of predicting one clip. So the
prediction path (:mod:`tympan.inference.prediction`) reads a bundle's blocks into these frozen
scorers, and the estimators call the same functions here, so both give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tympan.stats.probe import LinearProbe

__all__ = ["LEVEL_FEATURES", "BackgroundScorer", "CombinedScorer", "ProbeScorer", "background_probability", "combined_score",
           "energy_score",
           "knn_distance", "level_features", "logsumexp", "softmax"]


#: what :func:`level_features` returns per window, in this order
LEVEL_FEATURES = ("rms_dbfs", "loud_frames_dbfs", "dynamic_range_db")
FLOOR_DB = -120.0


def level_features(windows: np.ndarray, sample_rate: int, frame_seconds: float = 0.05) -> np.ndarray:
    """``(n, 3)`` level descriptors of waveform windows ``(n, samples)`` (dB re full scale).

    RMS level; the 95th percentile of 50-ms frame levels (the loud part); that minus the 10th
    percentile (dynamic range: events rise above their floor, hiss and hum do not).
    """
    x = np.asarray(windows, np.float32)  # squares in float32, sums in float64: a serving hot path
    if x.ndim != 2:
        raise ValueError(f"expected windows of shape (n, samples), got {x.shape}")
    floor = 10 ** (FLOOR_DB / 10)
    sq = np.square(x)
    rms = 10 * np.log10(np.mean(sq, axis=1, dtype=np.float64) + floor)
    hop = max(1, int(frame_seconds * sample_rate))
    n = max(1, x.shape[1] // hop)
    frames = sq[:, : n * hop].reshape(len(x), n, hop) if x.shape[1] >= hop else sq[:, None, :]
    db = 10 * np.log10(np.mean(frames, axis=2, dtype=np.float64) + floor)
    loud, quiet = np.percentile(db, [95, 10], axis=1)
    return np.stack([rms, loud, loud - quiet], axis=1)


def logsumexp(z: np.ndarray, axis: int = 1) -> np.ndarray:
    """``log(sum(exp(z)))`` along ``axis``, shifted by the maximum (as ``scipy.special.logsumexp``)."""
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(z - m), axis=axis))


def softmax(z: np.ndarray, axis: int = 1) -> np.ndarray:
    """``exp(z) / sum(exp(z))`` along ``axis``, shifted by the maximum (as ``scipy.special.softmax``)."""
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def energy_score(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Energy ``-T * logsumexp(z / T)`` per row (Liu et al., NeurIPS 2020); higher = more OOD."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"expected logits of shape (n_samples, n_classes), got {z.shape}")
    return -temperature * logsumexp(z / temperature, axis=1)


def _unit(e: np.ndarray) -> np.ndarray:
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def as_embeddings(x: Any) -> np.ndarray:
    e = np.asarray(x, dtype=np.float64)
    if e.ndim != 2:
        raise ValueError(f"expected embeddings of shape (n_samples, dim), got {e.shape}")
    return e


def unit_bank(x: Any) -> np.ndarray:
    """L2-normalised reference embeddings, float32 (the k-NN bank)."""
    return _unit(as_embeddings(x)).astype(np.float32)


def knn_distance(bank: np.ndarray, k: int, X: Any) -> np.ndarray:
    """``1 - cos`` to the k-th closest row of the unit-norm ``bank`` (Sun et al., ICML 2022)."""
    e = unit_bank(X)
    out = np.empty(len(e))
    for lo in range(0, len(e), 512):  # (512 x n_bank) similarities at a time: bounded memory
        sim = e[lo : lo + 512] @ bank.T
        out[lo : lo + 512] = 1.0 - np.partition(sim, -k, axis=1)[:, -k]
    return out


def background_probability(probe: LinearProbe, X: Any) -> np.ndarray:
    """Probability of background per row of ``[embedding, level features]``."""
    z = probe.log_odds(X)
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def combined_score(energy: Any, knn: Any, energy_loc: float, energy_scale: float, knn_loc: float,
                   knn_scale: float) -> np.ndarray:
    """The larger of the standardised energy and k-NN distance per row (the ``energy+knn`` score)."""
    return np.maximum((np.asarray(energy) - energy_loc) / energy_scale, (np.asarray(knn) - knn_loc) / knn_scale)


@dataclass(frozen=True)
class BackgroundScorer:
    """A fitted background detector's arrays and threshold (see ``BackgroundDetector``)."""

    probe: LinearProbe
    threshold_: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackgroundScorer:
        return cls(LinearProbe.from_dict(data), float(data["threshold"]))

    def decision_function(self, X: Any) -> np.ndarray:
        return background_probability(self.probe, X)


@dataclass(frozen=True)
class ProbeScorer:
    """A fitted outlier probe's arrays and threshold (see ``ProbeOOD``)."""

    probe: LinearProbe
    threshold_: float
    score_name = "probe"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeScorer:
        return cls(LinearProbe.from_dict(data), float(data["threshold"]))

    def window_scores(self, energy: np.ndarray, embeddings: Any) -> np.ndarray:
        """Log-odds of "out" per window (the energy is not used by this score)."""
        del energy
        return self.probe.log_odds(as_embeddings(embeddings))


@dataclass(frozen=True)
class CombinedScorer:
    """A fitted energy+k-NN score: its bank, standardisation and threshold (see ``CombinedOOD``)."""

    bank: np.ndarray
    k: int
    energy_loc: float
    energy_scale: float
    knn_loc: float
    knn_scale: float
    threshold_: float
    score_name = "energy+knn"

    @classmethod
    def from_dict(cls, data: dict[str, Any], bank: np.ndarray) -> CombinedScorer:
        return cls(unit_bank(bank), int(data["k"]), float(data["energy_loc"]), float(data["energy_scale"]),
                   float(data["knn_loc"]), float(data["knn_scale"]), float(data["threshold"]))

    def combine(self, energy: np.ndarray, knn: np.ndarray) -> np.ndarray:
        return combined_score(energy, knn, self.energy_loc, self.energy_scale, self.knn_loc, self.knn_scale)

    def window_scores(self, energy: np.ndarray, embeddings: Any) -> np.ndarray:
        return self.combine(energy, knn_distance(self.bank, self.k, embeddings))
