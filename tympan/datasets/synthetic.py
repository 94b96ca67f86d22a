"""A small generated data set in the ESC-50 layout, so tests run the real code path in seconds.

Each class is a sound family a log-mel CNN separates easily (low hum, high whistle, noise
bursts, rising chirp, click train, ...), with random pitch, onset, level and background
noise, so the set is learnable but not trivial. Written as WAV files plus ``meta/esc50.csv``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from tympan.io import atomic_dir

CLASSES = ["hum", "whistle", "noise_burst", "chirp", "clicks", "warble"]


def _render(kind: str, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sr
    if kind == "hum":
        f0 = rng.uniform(90, 180)
        y = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 5))
    elif kind == "whistle":
        y = np.sin(2 * np.pi * rng.uniform(2500, 4500) * t)
    elif kind == "noise_burst":
        y = np.zeros(n)
        for _ in range(rng.integers(2, 5)):
            s, length = rng.integers(0, n // 2), rng.integers(n // 10, n // 4)
            y[s : s + length] += rng.standard_normal(len(y[s : s + length]))
    elif kind == "chirp":
        f = np.linspace(rng.uniform(300, 600), rng.uniform(3000, 6000), n)
        y = np.sin(2 * np.pi * np.cumsum(f) / sr)
    elif kind == "clicks":
        y = np.zeros(n)
        period = int(sr / rng.uniform(4, 12))
        y[rng.integers(0, period) :: period] = 1.0
        y = np.convolve(y, np.hanning(32), mode="same")
    elif kind == "warble":
        fc = rng.uniform(800, 1500)
        y = np.sin(2 * np.pi * fc * t + 8 * np.sin(2 * np.pi * rng.uniform(5, 9) * t))
    else:
        raise ValueError(kind)
    return np.asarray(y, dtype=np.float64)


def make_synthetic(
    dest: str | Path,
    *,
    n_classes: int = 5,
    clips_per_class: int = 20,
    n_folds: int = 5,
    sample_rate: int = 16_000,
    seconds: float = 2.0,
    seed: int = 0,
) -> Path:
    """Write a synthetic ESC-50-layout set to ``dest`` (atomically) and return it."""
    if not 1 <= n_classes <= len(CLASSES):
        raise ValueError(f"n_classes must be 1..{len(CLASSES)}")
    if clips_per_class % n_folds:
        raise ValueError("clips_per_class must be a multiple of n_folds")
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    rows = []
    with atomic_dir(dest) as tmp:
        (tmp / "audio").mkdir()
        (tmp / "meta").mkdir()
        for target, kind in enumerate(CLASSES[:n_classes]):
            for i in range(clips_per_class):
                fold = i % n_folds + 1
                y = _render(kind, n, sample_rate, rng)
                y *= np.clip(np.hanning(n) * 4, 0, 1)  # soft edges
                y = y / (np.abs(y).max() + 1e-9) * rng.uniform(0.1, 0.8)
                y += rng.standard_normal(n) * rng.uniform(0.001, 0.01)
                name = f"{fold}-{target:02d}{i:04d}-A-{target}.wav"
                sf.write(tmp / "audio" / name, y.astype(np.float32), sample_rate, subtype="PCM_16")
                rows.append({"filename": name, "fold": fold, "target": target, "category": kind,
                             "esc10": "False", "src_file": f"synthetic-{target}-{i}", "take": "A"})
        with open(tmp / "meta" / "esc50.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return Path(dest)
