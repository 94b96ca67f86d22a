"""Feature cache: log-mels of a whole data set, computed once per (data, front end).

An entry is a folder ``<root>/<key>/`` holding ``features.npy`` (``(N, 1, n_mels, frames)``,
float16 by default, opened memory-mapped) and ``meta.json``. The key hashes the front-end
config and every clip's bytes, so a change of either makes a new entry. Entries are written
to a temporary folder and renamed into place, so an interrupted run leaves nothing that a
later run would read as valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from pathlib import Path

import numpy as np
import torch

from tympan.audio import fit_length, load_audio
from tympan.features import FrontendConfig, LogMel
from tympan.io import atomic_dir

CACHE_VERSION = 1
ENV_VAR = "TYMPAN_CACHE_DIR"


def cache_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$TYMPAN_CACHE_DIR``, else ``~/.cache/tympan/features``."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else Path.home() / ".cache" / "tympan" / "features"


def diagnostics_cache_dir(root: str | Path | None = None) -> Path:
    """Where diagnostics cache per-clip results (acoustic features, model outputs)."""
    return cache_root(root) / "diagnostics"


def runtime_cache_dir(root: str | Path | None = None) -> Path:
    """Where exported ONNX graphs and backend choices are kept for bundles that are read-only."""
    return cache_root(root) / "runtime"


@dataclass
class FeatureSet:
    """Cached log-mels of a data set, aligned with its clips."""

    features: np.ndarray  # (N, 1, n_mels, frames), memory-mapped
    clip_ids: list[str]
    labels: np.ndarray
    folds: np.ndarray
    classes: list[str]
    frontend: FrontendConfig
    path: Path
    info: dict

    def __len__(self) -> int:
        return len(self.clip_ids)

    def select_folds(self, folds: list[int] | np.ndarray) -> np.ndarray:
        """Indices of the clips in ``folds``."""
        return np.flatnonzero(np.isin(self.folds, np.asarray(folds)))


@runtime_checkable
class LabelledClips(Protocol):
    """What the cache needs of a data set (``tympan.datasets.ESC50`` is one): labelled clip files."""

    clip_ids: list[str]
    files: list[Path]
    labels: np.ndarray
    folds: np.ndarray
    classes: list[str]
    root: Path

    def __len__(self) -> int: ...

    def fingerprint(self) -> str: ...


def cache_key(dataset: LabelledClips, frontend: FrontendConfig, dtype: str) -> str:
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}|{dtype}|{frontend.fingerprint()}|{dataset.fingerprint()}".encode())
    return h.hexdigest()[:20]


def featurize(
    dataset: LabelledClips,
    frontend: FrontendConfig,
    *,
    root: str | Path | None = None,
    dtype: str = "float16",
    batch_size: int = 32,
    progress: bool = True,
    device: str = "cpu",
) -> FeatureSet:
    """Return the cached log-mels of ``dataset``, computing them on a miss."""
    if dtype not in ("float16", "float32"):
        raise ValueError("dtype must be float16 or float32")
    key = cache_key(dataset, frontend, dtype)
    entry = cache_root(root) / key
    if not (entry / "meta.json").is_file():
        _build(entry, dataset, frontend, dtype, batch_size, progress, device)
    return open_entry(entry)


def open_entry(entry: Path) -> FeatureSet:
    meta = json.loads((entry / "meta.json").read_text())
    feats = np.load(entry / "features.npy", mmap_mode="r")
    return FeatureSet(
        features=feats,
        clip_ids=meta["clip_ids"],
        labels=np.asarray(meta["labels"], np.int64),
        folds=np.asarray(meta["folds"], np.int64),
        classes=meta["classes"],
        frontend=FrontendConfig.from_dict(meta["frontend"]),
        path=entry,
        info=meta["info"],
    )


def _decode(path: Path, frontend: FrontendConfig) -> np.ndarray:
    wave = load_audio(path, frontend.sample_rate, max_seconds=None).waveform
    return fit_length(wave, frontend.clip_samples)


def _build(entry: Path, dataset: LabelledClips, frontend: FrontendConfig, dtype: str,
           batch_size: int, progress: bool, device: str) -> None:
    from tympan.progress import JobProgress

    start = time.perf_counter()
    logmel = LogMel(frontend).to(device)
    shape = (len(dataset), 1, frontend.n_mels, frontend.n_frames)
    with atomic_dir(entry) as tmp:
        out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=dtype, shape=shape)
        bar = JobProgress(len(dataset), "featurising", quiet=not progress)
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            for lo in range(0, len(dataset), batch_size):
                paths = dataset.files[lo : lo + batch_size]
                waves = np.stack(list(pool.map(lambda p: _decode(p, frontend), paths)))
                feats = logmel(torch.from_numpy(waves).to(device)).cpu().numpy()
                out[lo : lo + len(paths)] = feats.astype(dtype)
                for _ in paths:
                    bar.done(frontend.clip_seconds)
        bar.close()
        out.flush()
        del out
        seconds = time.perf_counter() - start
        meta = {
            "cache_version": CACHE_VERSION,
            "clip_ids": dataset.clip_ids,
            "labels": dataset.labels.tolist(),
            "folds": dataset.folds.tolist(),
            "classes": dataset.classes,
            "frontend": frontend.to_dict(),
            "info": {
                "dtype": dtype,
                "shape": list(shape),
                "seconds": round(seconds, 2),
                "bytes": (tmp / "features.npy").stat().st_size,
                "data_root": str(dataset.root),
                "data_fingerprint": dataset.fingerprint(),
            },
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
