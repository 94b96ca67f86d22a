"""The drift reference of a bundle (``bundle.reference``): what field recordings are compared with.

Acoustic features and penultimate embeddings of the TRAINING clips (the folds the bundle's
provenance names), the held-out predicted-class mix, calibrated confidence and energy scores,
the expected OOD rate and the file formats seen in training.

Acoustic features cost ~0.1-0.3 s per clip (librosa), so those of ESC-50 clips are cached
under ``$TYMPAN_CACHE_DIR/diagnostics`` keyed by the clips' bytes and the model's sample rate
(atomic writes); model outputs are cached keyed also by the weights' fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from tympan.bundle import weights_fingerprint
from tympan.cache import diagnostics_cache_dir
from tympan.diagnostics.field import ALPHA_PER_CHECK, CONTENT_FEATURES, ClipSet, analyse_sources, format_summary
from tympan.errors import DataError
from tympan.inference import Predictor
from tympan.io import encode_array, save_npz_atomic
from tympan.stats.acoustic import FEATURE_NAMES, acoustic_features
from tympan.stats.describe import describe
from tympan.stats.drift import EmbeddingDriftDetector, FeatureDriftDetector
from tympan.stats.ood import EnergyOOD

__all__ = ["build_reference", "esc50_acoustic", "esc50_clipset", "train_folds_of"]

REFERENCE_VERSION = 1
ACOUSTIC_CACHE_VERSION = 1


def esc50_acoustic(dataset: Any, sample_rate: int, *, progress: bool = True,
                   transform: Any = None, transform_key: str = "") -> np.ndarray:
    """Acoustic features ``(n, len(FEATURE_NAMES))`` of ESC-50 clips at ``sample_rate``, cached.

    The key covers every clip's bytes (``ESC50.fingerprint``), the rate and ``transform_key``
    (name the corruption when ``transform`` is given); the file is written atomically.
    """
    from tympan.audio import load_audio  # noqa: PLC0415 - decoding only when the cache misses

    h = hashlib.sha256(f"acoustic-v{ACOUSTIC_CACHE_VERSION}|{sample_rate}|{transform_key}|"
                       f"{','.join(FEATURE_NAMES)}|{dataset.fingerprint()}".encode()).hexdigest()[:20]
    path = diagnostics_cache_dir() / f"acoustic-{h}.npz"
    if path.is_file():
        with np.load(path) as data:
            return data["features"]
    from tympan.progress import JobProgress

    rows = []
    bar = JobProgress(len(dataset.files), "acoustic features", quiet=not progress)
    for pos, p in enumerate(dataset.files):
        d = load_audio(p, sample_rate, max_seconds=None)
        bar.done(d.source_duration)
        y = d.waveform
        if transform is not None:
            y = np.asarray(transform(y, sample_rate, np.random.default_rng([0, pos])), np.float32)
        f = acoustic_features(y, sample_rate, source_sr=d.source_sample_rate, duration=d.source_duration)
        rows.append([f[k] for k in FEATURE_NAMES])
    bar.close()
    feats = np.asarray(rows, np.float64).reshape(len(rows), len(FEATURE_NAMES))
    save_npz_atomic(path, features=feats)
    return feats


def esc50_clipset(predictor: Predictor, dataset: Any, *, progress: bool = True) -> ClipSet:
    """:class:`ClipSet` of ESC-50 clips (acoustic + model outputs), cached by data + weights + front end."""
    cfg = predictor.config
    acoustic = esc50_acoustic(dataset, int(cfg.sample_rate), progress=progress)
    key = hashlib.sha256(f"clipset-v1|{cfg.fingerprint()}|{weights_fingerprint(predictor.model)}|"
                         f"{predictor.temperature}|{predictor.ood_temperature}|{dataset.fingerprint()}"
                         .encode()).hexdigest()[:20]
    path = diagnostics_cache_dir() / f"model-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as d:
            arrays = {k: d[k] for k in d.files}
        formats = json.loads(str(arrays.pop("formats")))
    else:
        cs = analyse_sources(predictor, list(zip(dataset.clip_ids, dataset.files)), progress=progress,
                             desc="model outputs", with_acoustic=False)
        if cs.unreadable:
            raise DataError(f"{dataset.root}: {len(cs.unreadable)} clips cannot be decoded "
                            f"(first: {cs.unreadable[0]['reason']})")
        arrays = {"embeddings": cs.embeddings, "logits": cs.logits, "probabilities": cs.probabilities,
                  "energy": cs.energy, "n_windows": cs.n_windows}
        formats = cs.formats
        save_npz_atomic(path, formats=np.asarray(json.dumps(formats)), **arrays)
    return ClipSet(list(dataset.clip_ids), acoustic, arrays["embeddings"], arrays["logits"],
                   arrays["probabilities"], arrays["energy"], arrays["n_windows"], formats)


def train_folds_of(bundle: Any, heldout_fold: int | None, all_folds: Sequence[int]) -> list[int]:
    tf = (bundle.provenance or {}).get("train_folds")
    if isinstance(tf, list) and tf:
        return sorted(int(f) for f in tf)
    if heldout_fold is None:
        raise DataError("the bundle's provenance names neither its training folds nor its held-out fold; "
                        "pass --train-folds")
    return [int(f) for f in all_folds if int(f) != int(heldout_fold)]


def build_reference(
    train: ClipSet | None,
    *,
    heldout_probs: np.ndarray,
    heldout_energy: np.ndarray,
    detector: EnergyOOD,
    classes: Sequence[str],
    fitted_on: str,
    heldout_on: str,
    embedding_source: ClipSet | None = None,
) -> dict[str, Any]:
    """``bundle.reference``: the statistics field recordings are compared with."""
    ref: dict[str, Any] = {"version": REFERENCE_VERSION, "fitted_on": fitted_on}
    if train is not None and len(train):
        det = FeatureDriftDetector(alpha=ALPHA_PER_CHECK).fit(train.content_features(), list(CONTENT_FEATURES))
        ref["acoustic"] = {**det.to_dict(), "fitted_on": fitted_on}
        emb_src = embedding_source if embedding_source is not None else train
        ref["embedding"] = EmbeddingDriftDetector(alpha=ALPHA_PER_CHECK).fit(emb_src.embeddings).to_dict()
        ref["embedding"]["fitted_on"] = fitted_on if embedding_source is None else heldout_on
        ref["format"] = {**format_summary(train.formats), "fitted_on": fitted_on}
    conf = heldout_probs.max(axis=1)
    counts = np.bincount(heldout_probs.argmax(axis=1), minlength=len(classes))
    ref["predictions"] = {"counts": [int(c) for c in counts], "classes": list(classes),
                          "n": int(len(conf)), "fitted_on": heldout_on}
    ref["confidence"] = {**describe(conf), "values": encode_array(conf, "float32"),
                         "what": "calibrated top-1 probability", "fitted_on": heldout_on}
    ref["energy"] = {**describe(heldout_energy), "values": encode_array(heldout_energy, "float32"),
                     "fitted_on": heldout_on}
    ref["ood_rate"] = {"expected": round(1.0 - float(detector.tpr), 6),
                       "observed_heldout": float(np.mean(heldout_energy > detector.threshold_)),
                       "n": int(len(heldout_energy)), "fitted_on": heldout_on}
    return ref
