"""A background-only audio set: what a continuous field recording holds between sound events.

Recorder self-noise (white and pink hiss at -75 to -45 dBFS), mains hum (50/60 Hz and
harmonics), sub-bass rumble, ultrasound-only recordings (a bat detector at 384 kHz: all energy
above 20 kHz), digital silence and dither, and, when an ESC-50 folder is given, the quiet
stretches of ESC-50's own clips (room tone between events), tiled to the clip length with a
little hiss. None of it holds a foreground sound event, so a trustworthy model must call it
background (or out of distribution), never "crickets 0.9".

Every clip is listed in ``manifest.csv`` with its kind, level and split: ``dev`` material fits
the background detector, ``eval`` material (other seeds, other ESC-50 folds) only reports.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf

from tympan.audio import load_audio
from tympan.errors import AudioError
from tympan.io import atomic_dir

__all__ = ["KINDS", "build_background_set", "pink_noise", "quiet_stretch"]

KINDS = ("hiss", "hum", "rumble", "ultrasound", "silence", "esc50-quiet")


def _at_dbfs(y: np.ndarray, dbfs: float) -> np.ndarray:
    """``y`` scaled to an RMS level of ``dbfs`` (dB re full scale)."""
    rms = float(np.sqrt(np.mean(np.square(y)))) or 1.0
    return (y / rms * 10 ** (dbfs / 20)).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise by spectral shaping of white noise (unit RMS)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    y = np.fft.irfft(spec / np.sqrt(np.maximum(np.arange(len(spec)), 1)), n)
    return y / np.sqrt(np.mean(y**2))


def _lowpass_noise(n: int, sr: int, cutoff: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    sos = butter(4, cutoff, btype="low", fs=sr, output="sos")
    y = sosfilt(sos, rng.standard_normal(n + sr))[sr:]  # drop the filter's settling second
    return y / np.sqrt(np.mean(y**2))


def _hum(n: int, sr: int, mains: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sr
    y = sum(np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 2 * np.pi)) / h**1.5 for h in range(1, 8))
    return y / np.sqrt(np.mean(y**2))


def _ultrasound(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Bat-like FM sweeps (80 -> 30 kHz, 5 ms, ~10 per second) over ultrasonic noise."""
    from scipy.signal import butter, sosfilt

    y = np.zeros(n)
    call = int(0.005 * sr)
    tc = np.arange(call) / sr
    f0, f1 = rng.uniform(60e3, 90e3), rng.uniform(25e3, 40e3)
    sweep = np.sin(2 * np.pi * (f0 * tc + (f1 - f0) / (2 * tc[-1]) * tc**2)) * np.hanning(call)
    for start in np.arange(int(rng.uniform(0, 0.1) * sr), n - call, int(rng.uniform(0.08, 0.12) * sr)):
        y[start : start + call] += sweep * rng.uniform(0.3, 1.0)
    sos = butter(6, 22_000, btype="high", fs=sr, output="sos")
    y += 0.05 * sosfilt(sos, rng.standard_normal(n))
    return y / np.sqrt(np.mean(y**2))


def quiet_stretch(y: np.ndarray, sr: int, seconds: float, *, frame_s: float = 0.05) -> tuple[np.ndarray, float]:
    """The quietest ``seconds``-long stretch of ``y`` (by mean frame energy) and its RMS dBFS."""
    n = int(seconds * sr)
    if len(y) <= n:
        return y.copy(), float(10 * np.log10(np.mean(y**2) + 1e-20))
    hop = int(frame_s * sr)
    c = np.concatenate([[0.0], np.cumsum(np.asarray(y, np.float64) ** 2)])
    energy = (c[n:] - c[:-n])[::hop] / n  # mean power of every n-sample stretch, hop apart
    start = int(np.argmin(energy)) * hop
    seg = y[start : start + n]
    return seg.copy(), float(10 * np.log10(np.mean(seg**2) + 1e-20))


def _esc50_quiet(dest: Path, esc50_dir: str | Path, sr: int, seconds: float, rng: np.random.Generator,
                 per_fold: int, max_dbfs: float) -> list[dict]:
    """Room tone cut from ESC-50 clips: stretches of >= 1 s quieter than ``max_dbfs``, tiled."""
    from tympan.datasets.esc50 import load_esc50

    ds = load_esc50(esc50_dir)
    rows = []
    for fold in sorted(set(ds.folds.tolist())):
        idx = rng.permutation(np.flatnonzero(ds.folds == fold))
        taken = 0
        for i in idx:
            if taken >= per_fold:
                break
            try:
                y = load_audio(ds.files[i], sr).waveform
            except AudioError:
                continue
            seg, level = quiet_stretch(y, sr, 1.0)
            if not (-90.0 < level < max_dbfs):  # digital silence is its own kind; loud is not quiet
                continue
            reps = int(np.ceil(seconds / 1.0))
            fade = np.minimum(1, np.minimum(np.arange(len(seg)), np.arange(len(seg))[::-1]) / (0.02 * sr))
            tiled = np.tile(seg * fade, reps)[: int(seconds * sr)]
            tiled = tiled + _at_dbfs(rng.standard_normal(len(tiled)), -80.0)
            name = f"esc50-quiet/fold{fold}-{ds.clip_ids[i]}.flac"
            sf.write(dest / name, tiled.astype(np.float32), sr, format="FLAC")
            rows.append({"file": name, "kind": "esc50-quiet", "level_dbfs": round(level, 1),
                         "split": "eval" if fold == max(ds.folds) else "dev",
                         "source": f"quietest 1 s of ESC-50 {ds.clip_ids[i]}, tiled, + hiss at -80 dBFS"})
            taken += 1
    return rows


def build_background_set(
    dest: str | Path,
    *,
    sample_rate: int = 16_000,
    seconds: float = 5.0,
    n_per_kind: int = 24,
    esc50_dir: str | Path | None = None,
    esc50_per_fold: int = 12,
    seed: int = 0,
) -> Path:
    """Write the background set to ``dest`` (atomically). Even-numbered variants are ``dev``."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    rows: list[dict] = []
    with atomic_dir(dest) as tmp:
        for kind in KINDS:
            (tmp / kind).mkdir()

        def write(kind: str, i: int, y: np.ndarray, level: float, source: str, sr: int = sample_rate) -> None:
            name = f"{kind}/{kind}-{i:03d}.flac"
            sf.write(tmp / name, np.clip(y, -1, 1).astype(np.float32), sr, format="FLAC", subtype="PCM_24")
            rows.append({"file": name, "kind": kind, "level_dbfs": round(level, 1),
                         "split": "dev" if i % 2 == 0 else "eval", "source": source})

        for i in range(n_per_kind):
            level = float(rng.uniform(-75, -45))
            colour = "white" if i % 4 < 2 else "pink"
            y = rng.standard_normal(n) if colour == "white" else pink_noise(n, rng)
            write("hiss", i, _at_dbfs(y, level), level, f"{colour} hiss at {level:.1f} dBFS")
        for i in range(n_per_kind):
            level, mains = float(rng.uniform(-65, -35)), (50.0, 60.0)[(i // 2) % 2]
            y = _at_dbfs(_hum(n, sample_rate, mains, rng), level) + _at_dbfs(rng.standard_normal(n), level - 20)
            write("hum", i, y, level, f"{mains:.0f} Hz mains hum + harmonics at {level:.1f} dBFS, hiss 20 dB below")
        for i in range(n_per_kind):
            level, cutoff = float(rng.uniform(-55, -30)), float(rng.uniform(20, 60))
            y = _at_dbfs(_lowpass_noise(n, sample_rate, cutoff, rng), level)
            write("rumble", i, y, level, f"noise below {cutoff:.0f} Hz at {level:.1f} dBFS")
        ultra_sr = 384_000
        for i in range(max(4, n_per_kind // 3)):
            level = float(rng.uniform(-40, -20))
            y = _at_dbfs(_ultrasound(int(seconds * ultra_sr), ultra_sr, rng), level)
            write("ultrasound", i, y, level, f"bat-detector recording at 384 kHz, energy above 20 kHz, {level:.1f} dBFS",
                  sr=ultra_sr)
        for i in range(max(4, n_per_kind // 3)):
            level = -120.0 if i % 3 == 0 else float(rng.uniform(-95, -80))
            y = np.zeros(n, np.float32) if level <= -120 else _at_dbfs(rng.standard_normal(n), level)
            write("silence", i, y, level, "digital silence" if level <= -120 else f"dither at {level:.1f} dBFS")
        if esc50_dir is not None:
            rows += _esc50_quiet(tmp, esc50_dir, sample_rate, seconds, rng, esc50_per_fold, max_dbfs=-45.0)
        with open(tmp / "manifest.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["file", "kind", "level_dbfs", "split", "source"])
            w.writeheader()
            w.writerows(rows)
    return Path(dest)
