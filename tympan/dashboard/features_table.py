"""Per-clip acoustic features of a whole ESC-50-layout data set, computed once and cached.

Every clip is decoded with the one decoder (:func:`tympan.audio.load_audio`) at
``sample_rate`` (16 kHz, the default front end's rate) and described with
:func:`tympan.stats.acoustic.acoustic_features` (spectral centroid, bandwidth, roll-off,
flatness, RMS, zero-crossing rate, MFCCs, ...). Alongside, the time-averaged log-mel of each
clip (the default front end, 64 bands) feeds the dashboard's "mean log-mel per class" view.

The table is cached at ``$TYMPAN_CACHE_DIR/acoustic-<key>.npz`` (``~/.cache/tympan/features``
by default). The key hashes the data set's fingerprint (clip list and every file's bytes), the
feature names, the sample rate and :data:`TABLE_VERSION`, so changed audio or a changed feature
set makes a new entry. The file is written to a temporary name and renamed into place, and is
read with ``allow_pickle=False``: strings are stored as fixed-width unicode arrays.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tympan.audio import load_audio
from tympan.cache import cache_root
from tympan.datasets.esc50 import ESC50, load_esc50
from tympan.stats.acoustic import FEATURE_NAMES, acoustic_features
from tympan.io import atomic_path

TABLE_VERSION = 1
DEFAULT_SAMPLE_RATE = 16_000

#: The features the dashboard plots and explains: column -> (label, unit, (low word, high word)).
KEY_FEATURES: dict[str, tuple[str, str, tuple[str, str]]] = {
    "spectral_centroid_mean": ("spectral centroid", "Hz", ("dark (low centroid)", "bright (high centroid)")),
    "spectral_bandwidth_mean": ("spectral bandwidth", "Hz", ("narrow bandwidth", "wide bandwidth")),
    "rms_dbfs": ("RMS level", "dBFS", ("low RMS", "high RMS")),
    "spectral_rolloff_mean": ("roll-off (85 %)", "Hz", ("low roll-off", "high roll-off")),
    "spectral_flatness_mean": ("spectral flatness", "", ("tonal (low flatness)", "noise-like (high flatness)")),
    "zcr_mean": ("zero-crossing rate", "", ("low ZCR", "high ZCR")),
}
#: Features compared on a log scale (they span decades).
LOG_FEATURES = {"spectral_flatness_mean"}

ProgressFn = Callable[[int, int], None]


@dataclass
class FeaturesTable:
    """Acoustic features of every clip, aligned with its class and fold."""

    frame: pd.DataFrame  # columns: clip_id, fold, target, class, *FEATURE_NAMES
    logmel_mean: np.ndarray  # (n_clips, n_mels): time-averaged log-mel of each clip
    mel_freqs: np.ndarray  # (n_mels,) centre frequency of each band, Hz
    classes: list[str]
    sample_rate: int
    key: str
    path: Path | None
    data_dir: Path

    def __len__(self) -> int:
        return len(self.frame)

    def class_mean_logmel(self, mask: np.ndarray | None = None) -> np.ndarray:
        """``(n_classes, n_mels)`` mean log-mel per class over the selected clips (NaN if none)."""
        targets = self.frame["target"].to_numpy()
        keep = np.ones(len(targets), bool) if mask is None else np.asarray(mask, bool)
        out = np.full((len(self.classes), self.logmel_mean.shape[1]), np.nan)
        for c in range(len(self.classes)):
            sel = keep & (targets == c)
            if sel.any():
                out[c] = self.logmel_mean[sel].mean(axis=0)
        return out


def table_key(dataset: ESC50, sample_rate: int) -> str:
    h = hashlib.sha256()
    h.update(f"acoustic-v{TABLE_VERSION}|{sample_rate}|{','.join(FEATURE_NAMES)}|".encode())
    h.update(dataset.fingerprint().encode())
    return h.hexdigest()[:20]


def table_path(key: str, cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / f"acoustic-{key}.npz"


def _clip_row(path: Path, sample_rate: int, logmel) -> tuple[list[float], np.ndarray]:
    decoded = load_audio(path, sample_rate, max_seconds=120)
    feats = acoustic_features(decoded.waveform, sample_rate, source_sr=decoded.source_sample_rate,
                              duration=decoded.source_duration)
    import torch

    mel = logmel(torch.from_numpy(decoded.waveform))[0, 0].numpy()  # (n_mels, frames)
    return [feats[k] for k in FEATURE_NAMES], mel.mean(axis=1)


def compute_features_table(
    data_dir: str | Path | None = None,
    *,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    cache_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    workers: int = 2,
    use_cache: bool = True,
) -> FeaturesTable:
    """Return the acoustic-features table of ``data_dir`` (ESC-50 layout), computing it on a miss.

    ``progress(done, total)`` is called while computing. A cache hit reads one ``.npz`` file.
    """
    dataset = load_esc50(data_dir)
    key = table_key(dataset, sample_rate)
    path = table_path(key, cache_dir)
    if use_cache and path.is_file():
        try:
            return _read(path, dataset.root, key)
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # unreadable entry: recompute

    from tympan.features import FrontendConfig, LogMel

    config = FrontendConfig(sample_rate=sample_rate, f_max=min(8000.0, sample_rate / 2))
    logmel = LogMel(config)
    n = len(dataset)
    rows: list[list[float]] = [[]] * n
    mels: list[np.ndarray] = [np.zeros(0)] * n
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(_clip_row, p, sample_rate, logmel): i for i, p in enumerate(dataset.files)}
        for fut in futures:  # submission order; progress still moves steadily
            i = futures[fut]
            rows[i], mels[i] = fut.result()
            done += 1
            if progress is not None:
                progress(done, n)
    import librosa

    mel_freqs = librosa.mel_frequencies(n_mels=config.n_mels + 2, fmin=config.f_min, fmax=config.f_max,
                                        htk=config.mel_scale == "htk")[1:-1]
    arrays = {
        "version": np.asarray(TABLE_VERSION),
        "features": np.asarray(rows, dtype=np.float64).reshape(n, len(FEATURE_NAMES)),
        "feature_names": np.asarray(FEATURE_NAMES, dtype=str),
        "clip_ids": np.asarray(dataset.clip_ids, dtype=str),
        "labels": dataset.labels.astype(np.int64),
        "folds": dataset.folds.astype(np.int64),
        "classes": np.asarray(dataset.classes, dtype=str),
        "logmel_mean": np.asarray(mels, dtype=np.float32).reshape(n, config.n_mels),
        "mel_freqs": np.asarray(mel_freqs, dtype=np.float64),
        "sample_rate": np.asarray(sample_rate),
    }
    if use_cache:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return _from_arrays(arrays, dataset.root, key, path if use_cache else None)


def _read(path: Path, root: Path, key: str) -> FeaturesTable:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if int(arrays["version"]) != TABLE_VERSION or list(arrays["feature_names"]) != list(FEATURE_NAMES):
        raise ValueError("stale acoustic table")
    return _from_arrays(arrays, root, key, path)


def _from_arrays(a: Mapping[str, np.ndarray], root: Path, key: str, path: Path | None) -> FeaturesTable:
    classes = [str(c) for c in a["classes"]]
    labels = np.asarray(a["labels"], np.int64)
    frame = pd.DataFrame(np.asarray(a["features"]), columns=[str(c) for c in a["feature_names"]])
    frame.insert(0, "class", [classes[t] for t in labels])
    frame.insert(0, "target", labels)
    frame.insert(0, "fold", np.asarray(a["folds"], np.int64))
    frame.insert(0, "clip_id", [str(c) for c in a["clip_ids"]])
    return FeaturesTable(
        frame=frame,
        logmel_mean=np.asarray(a["logmel_mean"], np.float32),
        mel_freqs=np.asarray(a["mel_freqs"], np.float64),
        classes=classes,
        sample_rate=int(a["sample_rate"]),
        key=key,
        path=path,
        data_dir=Path(root),
    )


def features_of_audio(audio: bytes, sample_rate: int = DEFAULT_SAMPLE_RATE) -> dict[str, float]:
    """Acoustic features of a user's recording, measured exactly as the table's clips are."""
    decoded = load_audio(audio, sample_rate, max_seconds=600)
    return acoustic_features(decoded.waveform, sample_rate, source_sr=decoded.source_sample_rate,
                             duration=decoded.source_duration)


# -- "what does it look like" ------------------------------------------------------------------

def _transform(name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.log10(np.maximum(values, 1e-8)) if name in LOG_FEATURES else values


@dataclass
class Nearest:
    """Where a clip sits among the classes, in z-scores of :data:`KEY_FEATURES`."""

    z: dict[str, float]  # the clip's z-score per key feature (against all selected clips)
    ranking: list[tuple[str, float]]  # (class, distance) nearest first
    sentence: str


def describe_nearest(clip: Mapping[str, float], frame: pd.DataFrame,
                     features: list[str] | None = None) -> Nearest:
    """One line on what the clip sounds like and which class medians it is nearest to.

    Each key feature is z-scored against all clips in ``frame`` (flatness on a log scale);
    the clip's z-vector is compared with every class's median z-vector (Euclidean distance).
    The adjectives are the clip's two most extreme features with ``|z| >= 0.5``.
    """
    names = [f for f in (features or list(KEY_FEATURES)) if f in frame.columns and f in clip]
    if not names or frame.empty:
        return Nearest({}, [], "no reference clips to compare with")
    ref = np.column_stack([_transform(f, frame[f].to_numpy()) for f in names])
    mean, std = ref.mean(axis=0), ref.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    zref = (ref - mean) / std
    x = np.array([_transform(f, np.array([clip[f]]))[0] for f in names])
    zx = (x - mean) / std
    classes = frame["class"].to_numpy()
    medians = {c: np.median(zref[classes == c], axis=0) for c in pd.unique(classes)}
    ranking = sorted(((str(c), float(np.linalg.norm(zx - m))) for c, m in medians.items()), key=lambda t: t[1])
    order = np.argsort(-np.abs(zx))
    words = [KEY_FEATURES[names[j]][2][int(zx[j] > 0)] for j in order[:2] if abs(zx[j]) >= 0.5]
    looks = ", ".join(words) if words else "close to the average clip in every feature"
    runners = [c for c, _ in ranking[1:3]]
    tail = f" (then {' and '.join(runners)})" if runners else ""
    # "looks like X" read as a verdict and contradicted a correct classification: say what is compared
    sentence = f"{looks}; in these features nearest to the median {ranking[0][0]} clip{tail}"
    return Nearest({f: float(v) for f, v in zip(names, zx)}, ranking, sentence)
