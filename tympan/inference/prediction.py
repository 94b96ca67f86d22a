"""The one path from window logits to a recording's answer.

Every consumer (the HTTP API, ``tympan predict``, ``diagnose``, adaptation, the robustness
sweep) hands its window logits here; nothing else computes calibrated probabilities, energy
scores, OOD flags or uncertainty. Per recording:

- calibrated probabilities: mean over the recording's windows of ``softmax(z / T)``;
- OOD score: mean over windows of the energy score ``-T_E logsumexp(z / T_E)`` (higher = more
  out of distribution; :meth:`tympan.stats.ood.EnergyOOD.score`), flagged above the bundle's
  threshold;
- ``uncertain`` when out of distribution, when the top-1 probability is below
  ``min_confidence`` or when the top-1/top-2 margin is below ``min_margin``
  (:class:`UncertaintyPolicy`); ``uncertain_reasons`` names each one, plus the note
  :data:`NO_THRESHOLD_NOTE` when the bundle has no threshold (no evidence either way).

:func:`aggregate` does it for many recordings at once (arrays, for tables and statistics);
:func:`predict_recording` for one, as the typed :class:`~tympan.contracts.prediction.Prediction`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tympan.contracts.prediction import ClassScore, OODInfo, Prediction, WindowPrediction
from tympan.stats.probabilities import logits_to_probabilities
from tympan.stats.ood import EnergyOOD

__all__ = [
    "AGGREGATE",
    "NO_THRESHOLD_NOTE",
    "RecordingScores",
    "TrustParams",
    "UncertaintyPolicy",
    "aggregate",
    "predict_recording",
    "uncertainty_reasons",
]

NO_THRESHOLD_NOTE = "no OOD threshold fitted"
AGGREGATE = "mean of window probabilities; OOD score = mean of window energy scores"
SCORE_NAME = "energy"


@dataclass(frozen=True)
class UncertaintyPolicy:
    """When a prediction is flagged ``uncertain`` (besides being out of distribution)."""

    min_confidence: float = 0.40
    min_margin: float = 0.10


@dataclass(frozen=True)
class TrustParams:
    """The fitted numbers that turn logits into a trustworthy answer (from a bundle)."""

    temperature: float = 1.0
    ood_temperature: float = 1.0
    #: energy threshold, or None when the bundle has none (or one fitted for another score)
    ood_threshold: float | None = None
    policy: UncertaintyPolicy = field(default_factory=UncertaintyPolicy)

    @classmethod
    def from_bundle(cls, bundle: Any, policy: UncertaintyPolicy | None = None) -> TrustParams:
        """Read a :class:`~tympan.bundle.Bundle`'s temperature and OOD block.

        A threshold fitted for another score than energy means nothing on the energy scale, so
        it is dropped (the prediction then carries :data:`NO_THRESHOLD_NOTE`).
        """
        ood: Mapping[str, Any] = getattr(bundle, "ood", None) or {}
        thr = ood.get("threshold")
        if str(ood.get("score", SCORE_NAME)).lower() != SCORE_NAME:
            thr = None
        thr = None if thr is None or not math.isfinite(float(thr)) else float(thr)
        return cls(temperature=float(getattr(bundle, "temperature", None) or 1.0),
                   ood_temperature=float(ood.get("temperature") or 1.0),
                   ood_threshold=thr, policy=policy or UncertaintyPolicy())


@dataclass
class RecordingScores:
    """Per-window and per-recording scores of a set of recordings (arrays)."""

    window_probabilities: np.ndarray  # (n_windows, K) float64, softmax(z / T)
    window_energy: np.ndarray  # (n_windows,) float64
    probabilities: np.ndarray  # (n, K) float64, mean over each recording's windows
    energy: np.ndarray  # (n,) float64, mean over each recording's windows
    n_windows: np.ndarray  # (n,) int64
    threshold: float | None
    embeddings: np.ndarray | None = None  # (n, D) float32, mean over windows, when given

    @property
    def out_of_distribution(self) -> np.ndarray:
        """(n,) bool; all False without a threshold."""
        return np.zeros(len(self.energy), bool) if self.threshold is None else self.energy > self.threshold

    @property
    def window_out_of_distribution(self) -> np.ndarray:
        return (np.zeros(len(self.window_energy), bool) if self.threshold is None
                else self.window_energy > self.threshold)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)


def aggregate(
    logits: np.ndarray,
    params: TrustParams,
    recording_index: np.ndarray | None = None,
    n_recordings: int | None = None,
    *,
    embeddings: np.ndarray | None = None,
) -> RecordingScores:
    """Window logits ``(n_windows, K)`` -> per-recording scores.

    ``recording_index[i]`` says which recording window ``i`` belongs to (default: all to one).
    Recordings without windows get zeros (callers never create them).
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"expected window logits of shape (n_windows, n_classes), got {z.shape}")
    idx = np.zeros(len(z), np.int64) if recording_index is None else np.asarray(recording_index, np.int64)
    n = int(n_recordings if n_recordings is not None else (idx.max() + 1 if len(idx) else 0))
    p = logits_to_probabilities(z, params.temperature) if len(z) else np.zeros((0, z.shape[1]))
    e = EnergyOOD.score(z, params.ood_temperature) if len(z) else np.zeros(0)
    counts = np.bincount(idx, minlength=n)
    denom = np.maximum(counts, 1).astype(np.float64)
    probs = np.zeros((n, z.shape[1]))
    np.add.at(probs, idx, p)
    probs /= denom[:, None]
    energy = np.bincount(idx, weights=e, minlength=n) / denom
    emb = None
    if embeddings is not None:
        x = np.asarray(embeddings, np.float64)
        emb = np.zeros((n, x.shape[1]))
        np.add.at(emb, idx, x)
        emb = (emb / denom[:, None]).astype(np.float32)
    return RecordingScores(p, e, probs, energy, counts.astype(np.int64), params.ood_threshold, emb)


def uncertainty_reasons(probabilities: np.ndarray, score: float, params: TrustParams) -> tuple[bool, list[str]]:
    """``(uncertain, reasons)`` for one recording's mean probabilities and OOD score."""
    thr, pol = params.ood_threshold, params.policy
    order = np.sort(np.asarray(probabilities, np.float64))[::-1]
    top1 = float(order[0])
    margin = float(order[0] - order[1]) if len(order) > 1 else 1.0
    reasons = []
    if thr is not None and score > thr:
        reasons.append(f"out of distribution: energy score {score:.3f} > threshold {thr:.3f}")
    if top1 < pol.min_confidence:
        reasons.append(f"top-1 probability {top1:.3f} < {pol.min_confidence:g}")
    if margin < pol.min_margin:
        reasons.append(f"top-1/top-2 margin {margin:.3f} < {pol.min_margin:g}")
    uncertain = bool(reasons)
    if thr is None:
        reasons.append(NO_THRESHOLD_NOTE)
    return uncertain, reasons


def _top(probs: np.ndarray, classes: Sequence[str], k: int) -> list[ClassScore]:
    idx = np.argsort(-probs, kind="stable")[:k]
    return [ClassScore(label=classes[i], index=int(i), probability=round(float(probs[i]), 6)) for i in idx]


def predict_recording(
    logits: np.ndarray,
    params: TrustParams,
    classes: Sequence[str],
    *,
    starts_s: Sequence[float],
    ends_s: Sequence[float],
    top_k: int = 3,
    return_logits: bool = False,
) -> Prediction:
    """One recording's window logits ``(n_windows, K)`` -> its typed :class:`Prediction`."""
    k = max(1, min(int(top_k), len(classes)))
    s = aggregate(logits, params)
    thr = params.ood_threshold
    win_ood = s.window_out_of_distribution
    windows = [
        WindowPrediction(start_s=round(float(a), 3), end_s=round(float(b), 3),
                         top_k=_top(s.window_probabilities[i], classes, k),
                         ood_score=round(float(s.window_energy[i]), 4),
                         out_of_distribution=bool(win_ood[i]))
        for i, (a, b) in enumerate(zip(starts_s, ends_s, strict=True))
    ]
    score = float(s.energy[0])
    uncertain, reasons = uncertainty_reasons(s.probabilities[0], score, params)
    return Prediction(
        top_k=_top(s.probabilities[0], classes, k),
        ood=OODInfo(score_name=SCORE_NAME, score=round(score, 4), threshold=thr,
                    out_of_distribution=bool(s.out_of_distribution[0])),
        uncertain=uncertain,
        uncertain_reasons=reasons,
        windows=windows,
        aggregate=AGGREGATE,
        logits=[[float(v) for v in row] for row in np.asarray(logits, np.float32)] if return_logits else None,
        temperature=params.temperature,
    )
