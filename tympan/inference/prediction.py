"""The one path from window logits to a recording's answer.

Every consumer (the HTTP API, ``tympan predict``, ``diagnose``, adaptation, the robustness
sweep) hands its window logits here; nothing else computes calibrated probabilities, energy
scores, OOD flags or uncertainty. Per recording:

- calibrated probabilities: mean over the recording's windows of ``softmax(z / T)``;
- OOD score: mean over windows of the bundle's window score (higher = more out of
  distribution), flagged above the bundle's threshold. The score is the energy
  ``-T_E logsumexp(z / T_E)`` (:meth:`tympan.stats.ood.EnergyOOD.score`), or, for bundles
  calibrated with an ESC-50 folder, a score on the window embedding: the outlier probe
  (:class:`tympan.stats.ood.ProbeOOD`, when an OOD development set was given) or the larger of
  the standardised energy and k-NN distance (:class:`tympan.stats.ood.CombinedOOD`);
- background: whether each window holds only background (hiss, hum, rumble, room tone), from
  the bundle's :class:`tympan.stats.background.BackgroundDetector` on the window's embedding
  and level; a recording is background when every window is;
- ``uncertain`` when out of distribution, when it holds no foreground event, when the top-1
  probability is below ``min_confidence`` or when the top-1/top-2 margin is below
  ``min_margin`` (:class:`UncertaintyPolicy`); ``uncertain_reasons`` names each one, plus the
  note :data:`NO_THRESHOLD_NOTE` when the bundle has no threshold (no evidence either way).

:func:`aggregate` does it for many recordings at once (arrays, for tables and statistics);
:func:`predict_recording` for one, as the typed :class:`~tympan.contracts.prediction.Prediction`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tympan.contracts.prediction import BackgroundInfo, ClassScore, OODInfo, Prediction, WindowPrediction
from tympan.stats.probabilities import logits_to_probabilities
from tympan.stats.scorers import BackgroundScorer, CombinedScorer, ProbeScorer, energy_score

__all__ = [
    "AGGREGATE",
    "NO_THRESHOLD_NOTE",
    "RecordingScores",
    "TrustParams",
    "UncertaintyPolicy",
    "aggregate",
    "aggregate_text",
    "predict_recording",
    "uncertain_mask",
    "uncertainty_reasons",
]

NO_THRESHOLD_NOTE = "no OOD threshold fitted"
AGGREGATE = "mean of window probabilities; OOD score = mean of window energy scores"
SCORE_NAME = "energy"
#: how each deciding score is named in the ``aggregate`` text
SCORE_WORDS = {"energy": "energy", "energy+knn": "energy+knn (the larger of standardised energy and k-NN distance)",
               "probe": "outlier-probe"}


def aggregate_text(score_name: str) -> str:
    """The ``aggregate`` line of a prediction, naming the score that decided OOD."""
    return f"mean of window probabilities; OOD score = mean of window {SCORE_WORDS.get(score_name, score_name)} scores"


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
    #: a score on the embedding (energy + k-NN, or the outlier probe); when set, it decides OOD
    #: with its own threshold
    embedding_ood: CombinedScorer | ProbeScorer | None = None
    #: background detector on [embedding, level features]
    background: BackgroundScorer | None = None

    @property
    def score_name(self) -> str:
        return self.embedding_ood.score_name if self.embedding_ood is not None else SCORE_NAME

    @property
    def threshold(self) -> float | None:
        """Threshold of the score that decides OOD."""
        return self.embedding_ood.threshold_ if self.embedding_ood is not None else self.ood_threshold

    @property
    def needs_embeddings(self) -> bool:
        return self.embedding_ood is not None or self.background is not None

    @classmethod
    def from_bundle(cls, bundle: Any, policy: UncertaintyPolicy | None = None) -> TrustParams:
        """Read a :class:`~tympan.bundle.Bundle`'s temperature, OOD and background blocks.

        A threshold fitted for another score than energy means nothing on the energy scale, so
        it is dropped (the prediction then carries :data:`NO_THRESHOLD_NOTE`). The fitted blocks
        are read into NumPy scorers (:mod:`tympan.stats.scorers`): no scikit-learn import.
        """
        ood: Mapping[str, Any] = getattr(bundle, "ood", None) or {}
        thr = ood.get("threshold")
        if str(ood.get("score", SCORE_NAME)).lower() not in (SCORE_NAME, "energy+knn", "probe"):
            thr = None
        thr = None if thr is None or not math.isfinite(float(thr)) else float(thr)
        arrays = getattr(bundle, "arrays", None) or {}
        emb_ood: CombinedScorer | ProbeScorer | None = None
        block = ood.get("embedding") or {}
        if block.get("score") == "probe":
            emb_ood = ProbeScorer.from_dict(block)
        elif block.get("score") == "energy+knn" and "ood_bank" in arrays:
            emb_ood = CombinedScorer.from_dict(block, arrays["ood_bank"])
        bg_block = getattr(bundle, "background", None) or {}
        bg = BackgroundScorer.from_dict(bg_block) if bg_block.get("coef") else None
        return cls(temperature=float(getattr(bundle, "temperature", None) or 1.0),
                   ood_temperature=float(ood.get("temperature") or 1.0),
                   ood_threshold=thr, policy=policy or UncertaintyPolicy(), embedding_ood=emb_ood, background=bg)


@dataclass
class RecordingScores:
    """Per-window and per-recording scores of a set of recordings (arrays)."""

    window_probabilities: np.ndarray  # (n_windows, K) float64, softmax(z / T)
    window_energy: np.ndarray  # (n_windows,) float64
    probabilities: np.ndarray  # (n, K) float64, mean over each recording's windows
    energy: np.ndarray  # (n,) float64, mean over each recording's windows
    n_windows: np.ndarray  # (n,) int64
    threshold: float | None  # of the score that decides OOD
    embeddings: np.ndarray | None = None  # (n, D) float32, mean over windows, when given
    window_ood_score: np.ndarray | None = None  # (n_windows,) the deciding score; energy when None
    ood_score: np.ndarray | None = None  # (n,) mean over windows
    score_name: str = SCORE_NAME
    window_background_score: np.ndarray | None = None  # (n_windows,) probability of background
    window_background: np.ndarray | None = None  # (n_windows,) bool
    background_share: np.ndarray | None = None  # (n,) share of background windows

    def __post_init__(self) -> None:
        if self.window_ood_score is None:
            self.window_ood_score = self.window_energy
        if self.ood_score is None:
            self.ood_score = self.energy

    @property
    def out_of_distribution(self) -> np.ndarray:
        """(n,) bool; all False without a threshold."""
        return np.zeros(len(self.energy), bool) if self.threshold is None else self.ood_score > self.threshold

    @property
    def window_out_of_distribution(self) -> np.ndarray:
        return (np.zeros(len(self.window_energy), bool) if self.threshold is None
                else self.window_ood_score > self.threshold)

    @property
    def background(self) -> np.ndarray | None:
        """(n,) bool: no window holds a foreground event; None without a background detector."""
        return None if self.background_share is None else self.background_share >= 1.0

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
    levels: np.ndarray | None = None,
) -> RecordingScores:
    """Window logits ``(n_windows, K)`` -> per-recording scores.

    ``recording_index[i]`` says which recording window ``i`` belongs to (default: all to one).
    ``embeddings`` (n_windows, D) are needed when the bundle scores OOD on the embedding; with
    ``levels`` too (n_windows, 3, :func:`tympan.stats.background.level_features`) background is
    detected (without them the background fields stay None). Recordings without windows get
    zeros (callers never create them).
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"expected window logits of shape (n_windows, n_classes), got {z.shape}")
    idx = np.zeros(len(z), np.int64) if recording_index is None else np.asarray(recording_index, np.int64)
    n = int(n_recordings if n_recordings is not None else (idx.max() + 1 if len(idx) else 0))
    p = logits_to_probabilities(z, params.temperature) if len(z) else np.zeros((0, z.shape[1]))
    e = energy_score(z, params.ood_temperature) if len(z) else np.zeros(0)
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

    def mean(v: np.ndarray) -> np.ndarray:
        return np.bincount(idx, weights=v, minlength=n) / denom

    w_ood = ood = None
    if params.embedding_ood is not None:
        if embeddings is None:
            raise ValueError("this bundle scores OOD on the embedding: pass the window embeddings")
        w_ood = params.embedding_ood.window_scores(e, embeddings) if len(z) else np.zeros(0)
        ood = mean(w_ood)
    w_bg_score = w_bg = bg_share = None
    if params.background is not None and embeddings is not None and levels is not None:
        feats = np.hstack([np.asarray(embeddings, np.float64), np.asarray(levels, np.float64)])
        w_bg_score = params.background.decision_function(feats) if len(z) else np.zeros(0)
        w_bg = w_bg_score > params.background.threshold_
        bg_share = mean(w_bg.astype(np.float64))
    return RecordingScores(p, e, probs, energy, counts.astype(np.int64), params.threshold, emb,
                           w_ood, ood, params.score_name, w_bg_score, w_bg, bg_share)


def uncertainty_reasons(probabilities: np.ndarray, score: float, params: TrustParams,
                        background: bool = False) -> tuple[bool, list[str]]:
    """``(uncertain, reasons)`` for one recording's mean probabilities, OOD score and background flag."""
    thr, pol = params.threshold, params.policy
    order = np.sort(np.asarray(probabilities, np.float64))[::-1]
    top1 = float(order[0])
    margin = float(order[0] - order[1]) if len(order) > 1 else 1.0
    reasons = []
    if background:
        reasons.append("no foreground sound event: background only (hiss, hum, rumble or room tone)")
    if thr is not None and score > thr:
        reasons.append(f"out of distribution: {params.score_name} score {score:.3f} > threshold {thr:.3f}")
    if top1 < pol.min_confidence:
        reasons.append(f"top-1 probability {top1:.3f} < {pol.min_confidence:g}")
    if margin < pol.min_margin:
        reasons.append(f"top-1/top-2 margin {margin:.3f} < {pol.min_margin:g}")
    uncertain = bool(reasons)
    if thr is None:
        reasons.append(NO_THRESHOLD_NOTE)
    return uncertain, reasons


def uncertain_mask(probabilities: np.ndarray, ood: np.ndarray, background: np.ndarray,
                   policy: UncertaintyPolicy) -> np.ndarray:
    """(n,) bool: :func:`uncertainty_reasons`' flag for many windows at once (vectorised)."""
    p = np.sort(np.asarray(probabilities, np.float64), axis=1)[:, ::-1]
    margin = p[:, 0] - p[:, 1] if p.shape[1] > 1 else np.ones(len(p))
    return (np.asarray(ood, bool) | np.asarray(background, bool) | (p[:, 0] < policy.min_confidence)
            | (margin < policy.min_margin))


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
    embeddings: np.ndarray | None = None,
    levels: np.ndarray | None = None,
) -> Prediction:
    """One recording's window logits ``(n_windows, K)`` -> its typed :class:`Prediction`."""
    k = max(1, min(int(top_k), len(classes)))
    s = aggregate(logits, params, embeddings=embeddings, levels=levels)
    win_ood = s.window_out_of_distribution
    has_bg = s.window_background is not None
    windows = [
        WindowPrediction(start_s=round(float(a), 3), end_s=round(float(b), 3),
                         top_k=_top(s.window_probabilities[i], classes, k),
                         ood_score=round(float(s.window_ood_score[i]), 4),
                         out_of_distribution=bool(win_ood[i]),
                         background=bool(s.window_background[i]) if has_bg else None,
                         background_score=round(float(s.window_background_score[i]), 4) if has_bg else None)
        for i, (a, b) in enumerate(zip(starts_s, ends_s, strict=True))
    ]
    score = float(s.ood_score[0])
    background = bool(s.background[0]) if has_bg else False
    uncertain, reasons = uncertainty_reasons(s.probabilities[0], score, params, background)
    return Prediction(
        top_k=_top(s.probabilities[0], classes, k),
        ood=OODInfo(score_name=s.score_name, score=round(score, 4), threshold=params.threshold,
                    out_of_distribution=bool(s.out_of_distribution[0])),
        background=BackgroundInfo(background=background, share_of_windows=round(float(s.background_share[0]), 4),
                                  threshold=params.background.threshold_) if has_bg else None,
        uncertain=uncertain,
        uncertain_reasons=reasons,
        windows=windows,
        aggregate=aggregate_text(s.score_name),
        logits=[[float(v) for v in row] for row in np.asarray(logits, np.float32)] if return_logits else None,
        temperature=params.temperature,
    )
