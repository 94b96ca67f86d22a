"""Field recordings against the training reference: one analysis per clip, then every drift check.

One audio path. Every clip (a training clip for the reference, a held-out clip for the
benchmark, a field recording for ``diagnose --field-dir``) goes through :func:`analyse_sources`:

    file --tympan.audio.load_audio (Predictor.decode)--> waveform at the model's rate
         --[optional corruption]--> acoustic descriptors (librosa, whole recording)
         --Predictor.prepare--> 50%-overlapping model windows --bundle front end--> model.embed
         --model.classify--> logits per window

Per recording, through the one prediction path (:func:`tympan.inference.aggregate`, as the HTTP
API aggregates it): calibrated probabilities = mean over windows of ``softmax(z / T)``; energy OOD
score = mean over windows of ``-T_E logsumexp(z / T_E)``; embedding = mean over windows of the
penultimate embedding.

Checks (:func:`drift_checks`), each with a plain verdict and a minimum sample size:

* ``acoustic``: :class:`~tympan.stats.drift.FeatureDriftDetector` per acoustic feature
  (KS with Benjamini-Hochberg correction, Wasserstein in reference-std units, PSI).
  ``source_sr`` and ``duration_s`` describe the file, not the sound, and are reported in
  ``recording_format`` instead (the model resamples and windows every recording).
* ``embedding``: MMD^2 permutation test on penultimate embeddings.
* ``predictions``: shift of the predicted-class mix (chi-square + total variation).
* ``confidence``: shift of the calibrated top-1 probability distribution.
* ``ood_rate``: share of clips over the bundle's energy threshold vs the expected rate.

Each check runs at ``alpha = 0.05 / 5 = 0.01`` (Bonferroni over the five checks), so the
overall "drift" verdict has a family-wise false-alarm rate of at most 5% on clean data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tympan.inference import Predictor, aggregate
from tympan.stats.background import level_features
from tympan.io import to_jsonable
from tympan.stats.acoustic import FEATURE_NAMES, acoustic_features
from tympan.stats.drift import (
    DRIFT,
    INSUFFICIENT,
    NEGLIGIBLE,
    NO_DRIFT,
    EmbeddingDriftDetector,
    FeatureDriftDetector,
    confidence_shift,
    label_shift,
    ood_rate_shift,
    overall_verdict,
    prediction_counts,
)
from tympan.stats.performance import ACCURACY_MARGIN  # the margin of "the model is affected"
from tympan.io import decode_array

__all__ = [
    "ALPHA_PER_CHECK",
    "CONTENT_FEATURES",
    "FORMAT_FEATURES",
    "ClipSet",
    "analyse_folder",
    "analyse_sources",
    "drift_checks",
    "exit_code_for",
    "format_summary",
    "make_predictor",
]

#: Family-wise 5% over the five checks (Bonferroni).
N_CHECKS = 5
ALPHA_PER_CHECK = 0.05 / N_CHECKS
#: Descriptors of the file rather than the sound: reported, not tested.
FORMAT_FEATURES: tuple[str, ...] = ("source_sr", "duration_s")
CONTENT_FEATURES: tuple[str, ...] = tuple(f for f in FEATURE_NAMES if f not in FORMAT_FEATURES)
MIN_FIELD_SAMPLES = 20

Transform = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


@dataclass
class ClipSet:
    """Per-recording analysis of a set of audio files (readable ones), plus the unreadable ones."""

    ids: list[str]
    acoustic: np.ndarray  # (n, len(FEATURE_NAMES)) float64
    embeddings: np.ndarray  # (n, D) float32, mean over windows
    logits: np.ndarray  # (n, K) float32, mean over windows (raw, before temperature)
    probabilities: np.ndarray  # (n, K) float64, mean over windows of softmax(z / T)
    energy: np.ndarray  # (n,) float64, mean over windows of the energy score
    n_windows: np.ndarray  # (n,) int
    formats: list[dict[str, Any]]  # per recording: sample_rate, channels, duration_s, format, subtype
    unreadable: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}
    skipped: list[dict[str, str]] = field(default_factory=list)  # non-audio files: {"file", "reason"}
    #: when ``acoustic`` was measured on a sample of the units: the unit of each of its rows
    #: (None: one row per unit). Set by :func:`tympan.diagnostics.archive.analyse_archive`.
    acoustic_index: np.ndarray | None = None
    #: per unit: file, offset_s, site, start_time (archive analysis; empty otherwise)
    units: list[dict[str, Any]] = field(default_factory=list)
    #: how much of the folder was analysed (archive analysis; empty otherwise)
    coverage: dict[str, Any] = field(default_factory=dict)
    #: per unit: the bundle's deciding OOD score (energy, energy+knn or probe) and whether the
    #: unit holds only background (None: the bundle has no embedding score / no background detector)
    ood_score: np.ndarray | None = None
    background: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1) if len(self) else np.zeros(0)

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1) if len(self) else np.zeros(0, dtype=int)

    def content_features(self) -> np.ndarray:
        cols = [FEATURE_NAMES.index(f) for f in CONTENT_FEATURES]
        return self.acoustic[:, cols]

    def subset(self, idx: Sequence[int] | np.ndarray) -> ClipSet:
        idx = np.asarray(idx, dtype=int)
        acoustic, acoustic_index = self.acoustic[idx] if self.acoustic_index is None else None, None
        if self.acoustic_index is not None:  # the sampled rows that belong to the chosen units
            where = {int(u): j for j, u in enumerate(idx)}
            rows = [r for r, u in enumerate(self.acoustic_index) if int(u) in where]
            acoustic = self.acoustic[rows]
            acoustic_index = np.asarray([where[int(self.acoustic_index[r])] for r in rows], np.int64)
        return ClipSet(
            [self.ids[i] for i in idx], acoustic, self.embeddings[idx], self.logits[idx],
            self.probabilities[idx], self.energy[idx], self.n_windows[idx],
            [self.formats[i] for i in idx], [], [], acoustic_index,
            [self.units[i] for i in idx] if self.units else [],
            ood_score=None if self.ood_score is None else self.ood_score[idx],
            background=None if self.background is None else self.background[idx],
        )


def make_predictor(bundle: Any) -> Predictor:
    """The serving :class:`tympan.inference.Predictor` for ``bundle`` (a Bundle or a folder)."""
    return bundle if isinstance(bundle, Predictor) else Predictor(bundle)


def analyse_sources(
    predictor: Any,
    sources: Iterable[tuple[str, Any]],
    *,
    transform: Transform | None = None,
    seed: int = 0,
    progress: bool = False,
    desc: str = "analysing",
    total: int | None = None,
    with_model: bool = True,
    with_acoustic: bool = True,
) -> ClipSet:
    """Analyse ``(id, path-or-bytes)`` recordings; unreadable ones are listed with the reason.

    ``transform(y, sr, rng)`` (e.g. a :mod:`tympan.corruptions` shift) is applied to the
    decoded waveform at the model's rate before anything is measured; ``rng`` is seeded per
    clip from ``seed`` and the clip's position, so runs are reproducible.
    """
    from tympan.errors import AudioError
    from tympan.progress import JobProgress

    sr = int(predictor.config.sample_rate)
    ids, acoustic, embs, logits, probs, energy, nwin, formats, bad = [], [], [], [], [], [], [], [], []
    ood_scores: list[float] = []
    backgrounds: list[bool | None] = []
    items = list(sources) if total is None else sources
    bar = JobProgress(total or len(items), desc, quiet=not progress, leave=False)
    for pos, (clip_id, src) in enumerate(items):
        try:
            decoded = predictor.decode(src)
        except (AudioError, OSError) as exc:
            bad.append({"file": str(clip_id), "reason": str(exc)})
            bar.done(ok=False)
            continue
        y = decoded.waveform
        if transform is not None:
            y = np.asarray(transform(y, sr, np.random.default_rng([seed, pos])), dtype=np.float32)
        if with_acoustic:
            feats = acoustic_features(y, sr, source_sr=decoded.source_sample_rate,
                                      duration=decoded.source_duration)
            acoustic.append([feats[k] for k in FEATURE_NAMES])
        if with_model:
            prepared = predictor.prepare(dataclasses.replace(decoded, waveform=y))
            e, z = predictor.forward(prepared.windows)
            scores = aggregate(z, predictor.params, embeddings=e,  # the one prediction path
                               levels=level_features(prepared.windows, sr) if predictor.params.background else None)
            ood_scores.append(float(scores.ood_score[0]))
            backgrounds.append(None if scores.background is None else bool(scores.background[0]))
            embs.append(scores.embeddings[0])
            logits.append(z.mean(axis=0))
            probs.append(scores.probabilities[0])
            energy.append(float(scores.energy[0]))
            nwin.append(len(z))
        ids.append(str(clip_id))
        formats.append({
            "sample_rate": int(decoded.source_sample_rate),
            "channels": int(decoded.source_channels),
            "duration_s": float(decoded.source_duration),
            "format": str(decoded.format),
            "subtype": str(decoded.subtype),
        })
        bar.done(decoded.source_duration)
    bar.close()
    n = len(ids)
    k = int(predictor.n_classes)
    return ClipSet(
        ids=ids,
        acoustic=np.asarray(acoustic, np.float64).reshape(n, len(FEATURE_NAMES))
        if with_acoustic else np.full((n, len(FEATURE_NAMES)), np.nan),
        embeddings=np.asarray(embs, np.float32) if embs else np.zeros((n, 0), np.float32),
        logits=np.asarray(logits, np.float32) if logits else np.zeros((n, k), np.float32),
        probabilities=np.asarray(probs, np.float64) if probs else np.zeros((n, k)),
        energy=np.asarray(energy, np.float64) if energy else np.zeros(n),
        n_windows=np.asarray(nwin, np.int64) if nwin else np.zeros(n, np.int64),
        formats=formats,
        unreadable=bad,
        ood_score=np.asarray(ood_scores, np.float64) if ood_scores else None,
        background=(np.asarray(backgrounds, bool) if backgrounds and backgrounds[0] is not None else None),
    )


def analyse_folder(
    predictor: Any, folder: str | Path, *, progress: bool = True, transform: Transform | None = None,
    jobs: int = 1, hop: float | None = None, acoustic_sample: int | None = None,
) -> ClipSet:
    """Every audio file under ``folder`` (recursively, sorted), of any length.

    Without ``transform``: streamed through the batch engine
    (:func:`tympan.diagnostics.archive.analyse_archive`: long recordings count by their windows,
    ``jobs`` worker processes, acoustic descriptors on a bounded sample). With ``transform``
    (a corruption applied to whole waveforms): decoded whole, see :func:`analyse_sources`.
    Raises :class:`tympan.errors.DataError` for a missing folder or one without audio files.
    """
    from tympan.datasets.field import scan_field_dir

    if transform is None:
        from tympan.diagnostics.archive import DEFAULT_ACOUSTIC_SAMPLE, analyse_archive

        return analyse_archive(predictor, folder, progress=progress, jobs=jobs, hop=hop,
                               acoustic_sample=DEFAULT_ACOUSTIC_SAMPLE if acoustic_sample is None
                               else acoustic_sample)

    scan = scan_field_dir(folder)
    root = scan.root
    sources = [(str(p.relative_to(root)), p) for p in scan.files]
    clips = analyse_sources(predictor, sources, transform=transform, progress=progress,
                            desc=f"diagnose {root.name}", total=len(sources))
    # report paths relative to the folder (what the user can find)
    clips.skipped = [{"file": str(p.relative_to(root)), "reason": why} for p, why in scan.skipped]
    return clips


# --------------------------------------------------------------------------- the checks
def format_summary(formats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    rates: dict[str, int] = {}
    chans: dict[str, int] = {}
    kinds: dict[str, int] = {}
    for f in formats:
        rates[str(f["sample_rate"])] = rates.get(str(f["sample_rate"]), 0) + 1
        chans[str(f["channels"])] = chans.get(str(f["channels"]), 0) + 1
        k = f"{f['format']}/{f['subtype']}"
        kinds[k] = kinds.get(k, 0) + 1
    d = np.asarray([f["duration_s"] for f in formats], dtype=np.float64)
    return {
        "n": len(formats),
        "sample_rates": rates,
        "channels": chans,
        "formats": kinds,
        "duration_s": None if d.size == 0 else {
            "min": float(d.min()), "median": float(np.median(d)), "max": float(d.max()),
            "total": float(d.sum()),
        },
    }


def recording_format(field: ClipSet, reference: Mapping[str, Any] | None) -> dict[str, Any]:
    """File-level differences (sample rate, length): informative, not part of the verdict."""
    ref = dict((reference or {}).get("format") or {})
    fld = format_summary(field.formats)
    notes = []
    ref_rates = set(ref.get("sample_rates", {}))
    new_rates = sorted(set(fld["sample_rates"]) - ref_rates, key=float) if ref_rates else []
    if new_rates:
        notes.append(f"sample rates not in training: {', '.join(new_rates)} Hz (all audio is resampled to "
                     "the model's rate; a higher source rate can carry content above what training "
                     "audio held)")
    rd, fd = ref.get("duration_s"), fld["duration_s"]
    if rd and fd and (fd["median"] > 1.5 * rd["median"] or fd["median"] < rd["median"] / 1.5):
        notes.append(f"median length {fd['median']:.1f} s vs {rd['median']:.1f} s in training (long "
                     "recordings are cut into 50%-overlapping windows)")
    return {"check": "recording_format", "reference": ref or None, "field": fld, "notes": notes,
            "message": "; ".join(notes) if notes else "file formats like the training data"}


def _reference_values(ref: Mapping[str, Any] | None) -> np.ndarray | None:
    if not ref or "values" not in ref:
        return None
    v = ref["values"]
    return decode_array(v).astype(np.float64) if isinstance(v, Mapping) else np.asarray(v, np.float64)


def drift_checks(
    reference: Mapping[str, Any],
    ood: Mapping[str, Any],
    classes: Sequence[str],
    field: ClipSet,
    *,
    alpha: float = ALPHA_PER_CHECK,
    performance: Mapping[str, Any] | None = None,
    accuracy_margin: float | None = None,
    background: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every check the bundle's reference allows; returns ``{"overall", "checks", "gate", ...}``.

    A check without a reference (bundle not fitted) is ``"not available"`` and does not vote.
    ``background`` is the bundle's background detector block; with it (and a ClipSet analysed
    with it), ``background_rate`` tests whether more units are background-only than the
    detector calls on held-out foreground clips.
    ``performance`` is the bundle's ``extra["performance"]`` block (the label-free accuracy
    estimator); with it, the ``performance`` check estimates the accuracy on ``field``.
    """
    checks: dict[str, Any] = {}
    missing: list[str] = []
    n = len(field)
    if reference.get("acoustic"):
        det = FeatureDriftDetector.from_dict(reference["acoustic"])
        det.set_params(alpha=alpha)
        names = [str(s) for s in det.feature_names_in_]
        cols = [FEATURE_NAMES.index(f) for f in names]
        checks["acoustic"] = det.test(field.acoustic[:, cols]).to_dict()
    else:
        missing.append("acoustic")
    if reference.get("embedding") and field.embeddings.shape[1]:
        det_e = EmbeddingDriftDetector.from_dict(reference["embedding"])
        det_e.set_params(alpha=alpha)
        checks["embedding"] = det_e.test(field.embeddings).to_dict()
    else:
        missing.append("embedding")
    preds = reference.get("predictions")
    if preds and preds.get("counts") is not None:
        checks["predictions"] = label_shift(
            np.asarray(preds["counts"]), prediction_counts(field.predictions, len(classes)),
            class_names=classes, alpha=alpha, min_field_samples=MIN_FIELD_SAMPLES,
        )
    else:
        missing.append("predictions")
    ref_conf = _reference_values(reference.get("confidence"))
    if ref_conf is not None and n:
        checks["confidence"] = confidence_shift(
            ref_conf, field.confidence, name="confidence", alpha=alpha, min_field_samples=MIN_FIELD_SAMPLES
        )
        checks["confidence"]["what"] = "calibrated top-1 probability per recording"
    elif ref_conf is not None:
        checks["confidence"] = {"check": "confidence_shift", "verdict": INSUFFICIENT, "n_field": 0,
                                "message": "no readable field clips"}
    else:
        missing.append("confidence")
    thr = (ood or {}).get("threshold")
    emb_ood = (ood or {}).get("embedding") or {}
    if emb_ood.get("threshold") is not None and field.ood_score is not None:
        # the score that decides OOD in /predict: its own threshold, its own false-alarm rate
        flagged = int(np.sum(field.ood_score > float(emb_ood["threshold"])))
        checks["ood_rate"] = ood_rate_shift(flagged, n, expected_rate=1.0 - float(emb_ood.get("tpr", 0.95)),
                                            alpha=alpha, min_field_samples=MIN_FIELD_SAMPLES)
        checks["ood_rate"]["threshold"] = float(emb_ood["threshold"])
        checks["ood_rate"]["score"] = str(emb_ood.get("score", "embedding"))
    elif thr is not None:
        flagged = int(np.sum(field.energy > float(thr)))
        expected = (reference.get("ood_rate") or {}).get("expected")
        if expected is None:
            expected = 1.0 - float((ood or {}).get("tpr", 0.95))
        checks["ood_rate"] = ood_rate_shift(flagged, n, expected_rate=float(expected), alpha=alpha,
                                            min_field_samples=MIN_FIELD_SAMPLES)
        checks["ood_rate"]["threshold"] = float(thr)
        checks["ood_rate"]["score"] = str((ood or {}).get("score", "energy"))
    else:
        missing.append("ood_rate")
    if background and field.background is not None:
        # windows called background on held-out foreground clips: at most max_foreground_rate
        expected_bg = float(background.get("max_foreground_rate", 0.02))
        # continuous recordings hold background; it speaks for the model only when a large share
        # (a quarter more than held-out clips get) has no sound event for it to classify
        bg = ood_rate_shift(int(np.sum(field.background)), n, expected_rate=expected_bg, alpha=alpha,
                            min_excess=0.25, min_field_samples=MIN_FIELD_SAMPLES)
        bg["check"] = "background_rate"
        bg["threshold"] = float(background.get("threshold", 0.5))
        bg["score"] = "background probability"
        bg["message"] = bg["message"].replace("flagged OOD", "background only (no sound event)")
        checks["background_rate"] = bg
    if performance and (performance.get("estimator") or {}).get("method"):
        checks["performance"] = performance_check(performance, field, margin=accuracy_margin)
    else:
        missing.append("performance")
    overall = overall_verdict(checks) if checks else {
        "verdict": "not available", "components": {}, "drifting_checks": [], "negligible_checks": [],
        "insufficient_checks": [], "reasons": []}
    overall["alpha_per_check"] = alpha
    overall["family_wise_alpha"] = alpha * N_CHECKS
    overall["not_available"] = missing
    if n < MIN_FIELD_SAMPLES:
        overall["note"] = (f"only {n} readable recordings; every check needs at least "
                           f"{MIN_FIELD_SAMPLES} (insufficient data, nothing can be concluded)")
    fmt = recording_format(field, reference)
    checks = to_jsonable(checks)
    return {"overall": overall, "checks": checks, "recording_format": fmt,
            "gate": gate_summary(checks, fmt, n=n)}




def performance_check(performance: Mapping[str, Any], field: ClipSet, *, margin: float | None = None) -> dict[str, Any]:
    """Estimated accuracy on ``field`` (no labels) against the held-out accuracy.

    ``drift`` = the whole interval lies more than ``margin`` below the held-out accuracy: the
    accuracy has dropped by more than the margin, beyond the sampling error and the estimator's own
    validated error (so a harmless shift that fools the estimator by less than its validated error
    does not fail the gate); ``negligible`` = significantly below the held-out accuracy (the
    interval's upper end is below it) but not by more than the margin. A stale estimator (fitted for another model, e.g. before ``tympan
    adapt``) is still reported, with ``stale`` and its reason, but never votes.
    """
    from tympan.stats.performance import estimator_from_dict

    margin = ACCURACY_MARGIN if margin is None else float(margin)
    est = estimator_from_dict(performance["estimator"])
    heldout = float(performance.get("heldout_accuracy", est.heldout_accuracy_))
    n = len(field)
    e = est.estimate(field.probabilities if n else np.zeros((0, 1)), systematic=performance.get("systematic_error"))
    stale = bool(performance.get("stale"))
    out: dict[str, Any] = {
        "check": "performance", "n_field": n, "heldout_accuracy": heldout, "margin": margin,
        "estimated_accuracy": e.to_dict() if n else None, "fitted_on": performance.get("fitted_on"),
        "method_description": (performance.get("estimator") or {}).get("description"),
        "stale": stale, "stale_reason": performance.get("stale_reason"),
        "criteria": {"rule": "drift when the interval's upper end < held-out accuracy - margin; negligible when it is "
                             "< held-out accuracy only", "margin": margin,
                     "interval": "95% sampling interval (Wilson for ATC) widened by the validated systematic error"},
    }
    if n < MIN_FIELD_SAMPLES:
        out.update(verdict=INSUFFICIENT, drop=None,
                   message=f"only {n} recordings; the accuracy estimate needs at least {MIN_FIELD_SAMPLES}")
        return out
    drop = heldout - e.value
    verdict = DRIFT if e.high < heldout - margin else NEGLIGIBLE if e.high < heldout else NO_DRIFT
    msg = (f"estimated accuracy {e.value:.1%} (95% interval {e.low:.1%}-{e.high:.1%}, {e.method}) vs "
           f"{heldout:.1%} held-out")
    if stale:
        msg += f"; STALE: {performance.get('stale_reason') or 'fitted for another model'} (reported, does not vote)"
        verdict = NO_DRIFT if verdict == DRIFT else verdict
    out.update(verdict=verdict, drop=drop, message=msg)
    return out


def _rate_of(check: Mapping[str, Any] | None) -> float | None:
    if not check:
        return None
    v = check.get("observed_rate")
    return float(v) if isinstance(v, int | float) else None


def gate_summary(checks: Mapping[str, Any], fmt: Mapping[str, Any] | None, *, n: int) -> dict[str, Any]:
    """Split the checks into "the audio differs" and "the model is affected", and say it in one sentence.

    * audio differs: acoustic feature drift, the predicted-class mix, recording format notes;
    * model affected: the estimated accuracy (``performance``), the OOD rate, any background-rate
      check, and the embedding check when no informative accuracy estimate is available (none, stale,
      or validated only to worse than the margin) or when the embeddings moved by at least
      :data:`LARGE_EMBEDDING_MMD2`; otherwise the estimate is the direct measure and smaller
      embedding drift is reported as supporting evidence.

    ``--fail-on model`` (default) fails on the second group only.
    """
    verdict = {k: (v or {}).get("verdict") for k, v in checks.items()}
    audio = [c for c in AUDIO_CHECKS if verdict.get(c) == DRIFT]
    notes = list((fmt or {}).get("notes") or [])
    informative = _informative(checks)
    large = _large_embedding_shift(checks)
    model_checks = [c for c in checks if _is_model_check(c, has_performance=informative, large_embedding=large)]
    model = [c for c in model_checks if verdict.get(c) == DRIFT]
    evidence = [c for c in ("embedding", "confidence") if verdict.get(c) == DRIFT and c not in model]
    perf = checks.get("performance") or {}
    ea = perf.get("estimated_accuracy")
    parts = []
    n_txt = f"{n:,}"
    if ea and perf.get("verdict") != INSUFFICIENT and not informative:
        parts.append(f"On these {n_txt} recordings the model's accuracy cannot be estimated reliably (its estimator "
                     f"is off by up to {perf['estimated_accuracy']['systematic_error']:.0%} on validation shifts"
                     + (", and stale" if perf.get("stale") else "") + "; embedding drift stands in for it)")
    elif ea and perf.get("verdict") != INSUFFICIENT:
        held = perf["heldout_accuracy"]
        diff = (held - ea["value"]) * 100
        pts = "point" if round(abs(diff)) == 1 else "points"
        rel = (f"{diff:.0f} {pts} below its held-out accuracy of {held:.0%}" if diff >= 0.5 else
               f"{-diff:.0f} {pts} above its held-out accuracy of {held:.0%}" if diff <= -0.5 else
               f"like its held-out accuracy of {held:.0%}")
        parts.append(f"On these {n_txt} recordings the model is probably about {ea['value']:.0%} accurate "
                     f"(95% interval {ea['low']:.0%}-{ea['high']:.0%}), {rel}")
        if perf.get("stale"):
            parts[-1] += " (estimator stale: " + str(perf.get("stale_reason") or "fitted for another model") + ")"
    else:
        parts.append(f"On these {n_txt} recordings the model's accuracy cannot be estimated"
                     + (" (too few recordings)" if n < MIN_FIELD_SAMPLES else " (the bundle has no accuracy estimator; "
                                                                              "run tympan calibrate)"))
    ood = _rate_of(checks.get("ood_rate"))
    if ood is not None:
        parts.append(f"{ood:.0%} of the audio is unlike its training data")
    for name in checks:
        if "background" in name:
            r = _rate_of(checks[name])
            if r is not None:
                parts.append(f"{r:.0%} is background without a sound event")
    sentence = "; ".join(parts) + "."
    if n < MIN_FIELD_SAMPLES:
        action = "Too few recordings to judge; analyse at least 20."
    elif model:
        action = ("The model is affected (" + ", ".join(model) + "): check its predictions by ear before relying on "
                  "them, and consider `tympan adapt` or recording closer to the source.")
    elif audio or notes:
        action = ("The audio differs from the training audio (" + ", ".join(audio + (["format"] if notes else []))
                  + ") but the model is not measurably affected: safe to use as is.")
    else:
        action = "The recordings look like the training audio: the held-out figures apply."
    return {"summary": f"{sentence} {action}", "model_affected": bool(model), "audio_differs": bool(audio or notes),
            "large_embedding_shift": large, "large_embedding_mmd2": LARGE_EMBEDDING_MMD2,
            "model_checks": model_checks, "model_failing": model, "audio_checks": [c for c in AUDIO_CHECKS if c in checks],
            "audio_failing": audio, "format_notes": notes, "supporting_evidence": evidence}


#: An accuracy estimator validated to be off by more than this (held-out clips under shifts) cannot speak
#: for the model; embedding drift then votes in its place.
MAX_SYSTEMATIC_ERROR = 0.10


def _informative(checks: Mapping[str, Any]) -> bool:
    """Whether the accuracy estimate can speak for the model: present, not stale, validated to within 10 points."""
    perf = checks.get("performance") or {}
    ea = perf.get("estimated_accuracy") or {}
    if not ea or perf.get("stale"):
        return False
    return float(ea.get("systematic_error", 1.0)) <= MAX_SYSTEMATIC_ERROR


#: Embedding drift this large (unbiased MMD², RBF kernel with the median bandwidth) votes for "the
#: model is affected" even beside a trustworthy accuracy estimate: the estimate can be fooled by a
#: model that stays confident on audio it gets wrong (a model trained on noisy copies, under 0 dB
#: noise: 20 points lost, estimate +15). Set at twice the largest MMD² of any shift that cost the
#: shipped model ≤ 3.5 points (0.014, fold 5, 29 shifts); checked on five other mn04 models (robust
#: recipe, their own held-out folds): no shift costing ≤ 3.5 points above 0.021, every shift above
#: 0.04 cost 12-37 points (benchmarks/results/trust_performance*.json, ``embedding_mmd2``).
LARGE_EMBEDDING_MMD2 = 0.03


def _large_embedding_shift(checks: Mapping[str, Any]) -> bool:
    emb = checks.get("embedding") or {}
    mmd2 = emb.get("mmd2")
    return emb.get("verdict") == DRIFT and mmd2 is not None and float(mmd2) >= LARGE_EMBEDDING_MMD2


def _is_model_check(name: str, *, has_performance: bool, large_embedding: bool = False) -> bool:
    if name in ("performance", "ood_rate") or name.startswith("ood") or "background" in name:
        return True
    return name == "embedding" and (not has_performance or large_embedding)


#: ``--fail-on``: ``model`` (default) = the model is affected (estimated accuracy, OOD / background
#: rate; embedding drift without an estimator); ``audio`` = the audio differs (acoustic drift,
#: predicted-class mix); ``drift`` = any of the acoustic / embedding / predicted-class / confidence
#: checks (the pre-gate behaviour); ``ood`` = the OOD-rate check; ``any`` = any check; ``never``.
FAIL_ON = ("model", "audio", "drift", "ood", "any", "never")
DEFAULT_FAIL_ON = "model"
DRIFT_CHECKS = ("acoustic", "embedding", "predictions", "confidence")
AUDIO_CHECKS = ("acoustic", "predictions")


def exit_code_for(result: Mapping[str, Any], fail_on: str = DEFAULT_FAIL_ON) -> int:
    """0 = nothing above threshold, 1 = above threshold per ``fail_on`` (see :data:`FAIL_ON`)."""
    if fail_on not in FAIL_ON:
        raise ValueError(f"--fail-on must be one of {', '.join(FAIL_ON)}")
    checks = result.get("checks") or {}
    verdicts = {k: (v or {}).get("verdict") for k, v in checks.items()}
    has_perf = _informative(checks)
    large = _large_embedding_shift(checks)
    model = any(verdicts.get(c) == DRIFT for c in checks
                if _is_model_check(c, has_performance=has_perf, large_embedding=large))
    audio = any(verdicts.get(c) == DRIFT for c in AUDIO_CHECKS)
    drift = any(verdicts.get(c) == DRIFT for c in DRIFT_CHECKS)
    ood = verdicts.get("ood_rate") == DRIFT
    anything = any(v == DRIFT for v in verdicts.values())
    hit = {"model": model, "audio": audio, "drift": drift, "ood": ood, "any": anything, "never": False}[fail_on]
    return 1 if hit else 0


__all__ += ["ACCURACY_MARGIN", "AUDIO_CHECKS", "LARGE_EMBEDDING_MMD2", "DEFAULT_FAIL_ON", "DRIFT", "INSUFFICIENT", "NEGLIGIBLE", "NO_DRIFT",
            "FAIL_ON", "gate_summary", "performance_check", "recording_format"]
