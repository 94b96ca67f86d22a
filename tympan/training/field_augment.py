"""Robust training as prevention: featurised copies of the training clips under field conditions.

The training loop trains from a feature cache (log-mels computed once), so waveform-level
augmentation cannot run inside it. :func:`augmented_feature_copies` instead computes
``n_copies`` corrupted versions of every clip with :func:`tympan.corruptions.random_field_augment`
(reverb, EQ / band-limiting / 8 kHz, noise at a random SNR, gain, codec round trip), through the
bundle's own front end, and stores them like :mod:`tympan.cache` does (atomic folder, keyed by
the data, the front end, the seed, ``p`` and ``n_copies``; a second call is a cache hit).

Each copy keeps its clip's label and fold (clip id ``"<id>#aug<k>"``), so the training loop
can mix in exactly the copies of its *training* folds and never a copy of the held-out fold.
Clip ``i``'s copy ``k`` draws from ``numpy.random.default_rng([seed, k, i])``: the result
does not depend on order or threading.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from tympan.audio import fit_length, load_audio
from tympan.cache import CACHE_VERSION, FeatureSet, cache_root, open_entry
from tympan.corruptions import random_field_augment
from tympan.datasets.esc50 import ESC50
from tympan.features import FrontendConfig, LogMel
from tympan.io import atomic_dir

AUGMENT_VERSION = 1


def augment_key(dataset: ESC50, frontend: FrontendConfig, n_copies: int, seed: int, p: float, dtype: str) -> str:
    h = hashlib.sha256()
    h.update(f"field-augment-v{AUGMENT_VERSION}|cache-v{CACHE_VERSION}|{n_copies}|{seed}|{p!r}|{dtype}|"
             f"{frontend.fingerprint()}|{dataset.fingerprint()}".encode())
    return "aug-" + h.hexdigest()[:20]


def augmented_feature_copies(
    dataset: ESC50,
    frontend: FrontendConfig,
    n_copies: int,
    seed: int = 0,
    *,
    p: float = 0.5,
    root: str | Path | None = None,
    dtype: str = "float16",
    batch_size: int = 32,
    workers: int = 1,
    progress: bool = True,
) -> FeatureSet:
    """Log-mels of ``n_copies`` field-augmented copies of every clip of ``dataset`` (cached).

    Returns a :class:`tympan.cache.FeatureSet` of ``n_copies * len(dataset)`` rows, copy-major
    (rows ``k*N .. (k+1)*N - 1`` are copy ``k``), with labels and folds repeated.
    """
    if n_copies < 1:
        raise ValueError("n_copies must be at least 1")
    if dtype not in ("float16", "float32"):
        raise ValueError("dtype must be float16 or float32")
    entry = cache_root(root) / augment_key(dataset, frontend, n_copies, seed, p, dtype)
    if not (entry / "meta.json").is_file():
        _build(entry, dataset, frontend, n_copies, seed, p, dtype, batch_size, workers, progress)
    return open_entry(entry)


def _corrupted(path: Path, i: int, frontend: FrontendConfig, n_copies: int, seed: int, p: float) -> np.ndarray:
    wave = fit_length(load_audio(path, frontend.sample_rate, max_seconds=None).waveform, frontend.clip_samples)
    return np.stack([
        fit_length(random_field_augment(wave, frontend.sample_rate, np.random.default_rng([seed, k, i]), p=p),
                   frontend.clip_samples)
        for k in range(n_copies)
    ])


def _build(entry: Path, dataset: ESC50, frontend: FrontendConfig, n_copies: int, seed: int, p: float,
           dtype: str, batch_size: int, workers: int, progress: bool) -> None:
    from tqdm import tqdm

    start = time.perf_counter()
    n = len(dataset)
    logmel = LogMel(frontend)
    shape = (n_copies * n, 1, frontend.n_mels, frontend.n_frames)
    with atomic_dir(entry) as tmp:
        out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=dtype, shape=shape)
        bar = tqdm(total=n, desc=f"field-augmenting x{n_copies}", unit="clip", disable=not progress)
        with ThreadPoolExecutor(max_workers=max(1, min(workers, os.cpu_count() or 1))) as pool:
            for lo in range(0, n, batch_size):
                ids = range(lo, min(n, lo + batch_size))
                waves = list(pool.map(lambda i: _corrupted(dataset.files[i], i, frontend, n_copies, seed, p), ids))
                for k in range(n_copies):
                    batch = np.stack([w[k] for w in waves])
                    feats = logmel(torch.from_numpy(batch)).numpy()
                    out[k * n + lo : k * n + lo + len(batch)] = feats.astype(dtype)
                bar.update(len(waves))
        bar.close()
        out.flush()
        del out
        meta = {
            "cache_version": CACHE_VERSION,
            "clip_ids": [f"{cid}#aug{k}" for k in range(n_copies) for cid in dataset.clip_ids],
            "labels": np.tile(dataset.labels, n_copies).tolist(),
            "folds": np.tile(dataset.folds, n_copies).tolist(),
            "classes": dataset.classes,
            "frontend": frontend.to_dict(),
            "info": {
                "dtype": dtype,
                "shape": list(shape),
                "seconds": round(time.perf_counter() - start, 2),
                "bytes": (tmp / "features.npy").stat().st_size,
                "data_root": str(dataset.root),
                "data_fingerprint": dataset.fingerprint(),
                "augment": {"fn": "tympan.corruptions.random_field_augment", "version": AUGMENT_VERSION,
                            "n_copies": n_copies, "seed": seed, "p": p},
            },
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
