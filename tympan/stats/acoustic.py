"""Per-clip acoustic descriptors (librosa) used to compare training and field audio.

Conventions (so the numbers can be explained to a user):

* Frames: STFT with ``n_fft=2048``, ``hop_length=512``, Hann window, centred
  frames (librosa defaults); RMS and zero-crossing rate use the same framing.
* dBFS: ``20 * log10(rms)`` with a full-scale square wave at 0 dBFS (a
  full-scale sine is therefore -3.01 dBFS); levels are floored at
  ``DB_FLOOR = -120`` dBFS so digital silence stays finite.
* ``loudness_a_dbfs``: A-weighted RMS level in dBFS. The IEC 61672 A-curve
  (``librosa.A_weighting``) is applied to the STFT power spectrum and the
  resulting weighted/unweighted power ratio is added to ``rms_dbfs``. It is
  0 dB at 1 kHz, so a 1 kHz tone has ``loudness_a_dbfs == rms_dbfs``. Not
  calibrated to SPL and not LUFS/ITU-R BS.1770.
* ``silence_ratio``: share of frames whose RMS is below an ABSOLUTE
  ``SILENCE_DBFS = -60`` dBFS (ESC-50 pads clips with digital silence, so an
  absolute threshold measures exactly that padding).
* Spectral statistics, zero-crossing rate and MFCC means are computed over
  NON-silent frames only (so padding does not drag the centroid to 0 Hz); a
  fully silent clip gets 0 for them.
* ``clipping_rate``: share of samples with ``|x| >= 0.999``.
* ``source_sr`` / ``duration_s``: metadata of the original file (before the
  caller resampled/trimmed it); default to ``sr`` and ``len(y) / sr``.

Pass the waveform at the rate the model sees (spectral features in Hz depend
on it); the original rate belongs in ``source_sr``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import librosa
import numpy as np

__all__ = [
    "DB_FLOOR",
    "FEATURE_NAMES",
    "SILENCE_DBFS",
    "CLIP_LEVEL",
    "acoustic_feature_matrix",
    "acoustic_features",
]

N_FFT = 2048
HOP_LENGTH = 512
N_MFCC = 13
DB_FLOOR = -120.0
SILENCE_DBFS = -60.0
CLIP_LEVEL = 0.999
ROLL_PERCENT = 0.85

FEATURE_NAMES: tuple[str, ...] = (
    "rms_mean",
    "rms_std",
    "rms_dbfs",
    "loudness_a_dbfs",
    "spectral_centroid_mean",
    "spectral_centroid_std",
    "spectral_bandwidth_mean",
    "spectral_bandwidth_std",
    "spectral_rolloff_mean",
    "spectral_rolloff_std",
    "spectral_flatness_mean",
    "spectral_flatness_std",
    "zcr_mean",
    "zcr_std",
    "silence_ratio",
    "clipping_rate",
    *(f"mfcc_{i}_mean" for i in range(1, N_MFCC + 1)),
    "source_sr",
    "duration_s",
)


def _db(amplitude: float | np.ndarray) -> np.ndarray:
    floor = 10.0 ** (DB_FLOOR / 20.0)
    return 20.0 * np.log10(np.maximum(amplitude, floor))


def _stats(x: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    x = x[mask]
    if x.size == 0:
        return 0.0, 0.0
    return float(np.mean(x)), float(np.std(x))


def acoustic_features(
    y: np.ndarray,
    sr: int,
    *,
    source_sr: int | float | None = None,
    duration: float | None = None,
) -> dict[str, float]:
    """Acoustic descriptors of one mono float waveform in [-1, 1]; keys = ``FEATURE_NAMES``."""
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("empty waveform")
    if not np.all(np.isfinite(y)):
        raise ValueError("waveform contains NaN or inf")

    stft = librosa.stft(y, n_fft=N_FFT, hop_length=HOP_LENGTH)
    mag = np.abs(stft)
    power = mag**2
    rms = librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP_LENGTH)[0]
    n_frames = min(len(rms), mag.shape[1])
    rms, mag, power = rms[:n_frames], mag[:, :n_frames], power[:, :n_frames]
    voiced = _db(rms) >= SILENCE_DBFS

    centroid = librosa.feature.spectral_centroid(S=mag, sr=sr, n_fft=N_FFT)[0]
    bandwidth = librosa.feature.spectral_bandwidth(S=mag, sr=sr, n_fft=N_FFT)[0]
    rolloff = librosa.feature.spectral_rolloff(S=mag, sr=sr, n_fft=N_FFT, roll_percent=ROLL_PERCENT)[0]
    flatness = librosa.feature.spectral_flatness(S=mag)[0]
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP_LENGTH)[0][:n_frames]
    mel = librosa.feature.melspectrogram(S=power, sr=sr, n_fft=N_FFT)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), sr=sr, n_mfcc=N_MFCC)

    overall_rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    rms_dbfs = float(_db(overall_rms))
    freqs = librosa.fft_frequencies(sr=sr, n_fft=N_FFT)
    a_gain = np.zeros_like(freqs)  # the A-curve is -inf dB at DC
    a_gain[1:] = 10.0 ** (librosa.A_weighting(freqs[1:], min_db=None) / 10.0)
    total_power = float(power.sum())
    if total_power > 0 and rms_dbfs > DB_FLOOR:
        weighted = float((power * a_gain[:, None]).sum())
        loudness = max(DB_FLOOR, rms_dbfs + 10.0 * np.log10(max(weighted, 1e-300) / total_power))
    else:
        loudness = DB_FLOOR

    feats: dict[str, float] = {
        "rms_mean": float(np.mean(rms)),
        "rms_std": float(np.std(rms)),
        "rms_dbfs": rms_dbfs,
        "loudness_a_dbfs": float(loudness),
    }
    for name, values in (
        ("spectral_centroid", centroid),
        ("spectral_bandwidth", bandwidth),
        ("spectral_rolloff", rolloff),
        ("spectral_flatness", flatness),
        ("zcr", zcr),
    ):
        feats[f"{name}_mean"], feats[f"{name}_std"] = _stats(values, voiced)
    feats["silence_ratio"] = float(1.0 - np.mean(voiced))
    feats["clipping_rate"] = float(np.mean(np.abs(y) >= CLIP_LEVEL))
    for i in range(N_MFCC):
        feats[f"mfcc_{i + 1}_mean"] = _stats(mfcc[i], voiced)[0]
    feats["source_sr"] = float(sr if source_sr is None else source_sr)
    feats["duration_s"] = float(len(y) / sr if duration is None else duration)
    return {name: feats[name] for name in FEATURE_NAMES}


def acoustic_feature_matrix(
    waveforms: Sequence[np.ndarray],
    sr: int | Sequence[int],
    *,
    source_srs: Sequence[float | None] | None = None,
    durations: Sequence[float | None] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Stack :func:`acoustic_features` of many clips into ``(n_clips, n_features)``.

    Returns the float64 matrix and the column names (``FEATURE_NAMES``).
    """
    n = len(waveforms)
    srs = [sr] * n if np.isscalar(sr) else list(sr)  # type: ignore[arg-type]
    src: list[Any] = [None] * n if source_srs is None else list(source_srs)
    dur: list[Any] = [None] * n if durations is None else list(durations)
    if not (len(srs) == len(src) == len(dur) == n):
        raise ValueError("sr, source_srs and durations must match the number of waveforms")
    rows = [
        [acoustic_features(w, int(s), source_sr=ss, duration=d)[k] for k in FEATURE_NAMES]
        for w, s, ss, d in zip(waveforms, srs, src, dur)
    ]
    matrix = np.asarray(rows, dtype=np.float64).reshape(n, len(FEATURE_NAMES))
    return matrix, list(FEATURE_NAMES)
