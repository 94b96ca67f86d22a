"""The one audio decoder: every entry point (training, serving, diagnostics) calls it.

soundfile (libsndfile) decodes WAV/FLAC/OGG/Opus/MP3, soxr resamples. Bad input raises a
subclass of :class:`tympan.errors.AudioError` whose message names the problem, so the CLI and
the API can pass it on as it is.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from tympan.errors import (
    AudioTooLongError,
    EmptyAudioError,
    NonFiniteAudioError,
    NotAudioError,
    SampleRateError,
    TruncatedAudioError,
)

#: Sample rates outside this range are not plausible recordings (1 kHz .. 768 kHz).
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768_000
#: Default upper bound on a decoded recording, in seconds (a 10-minute field recording).
DEFAULT_MAX_SECONDS = 600.0

AudioSource = str | Path | bytes | bytearray | memoryview | BinaryIO


@dataclass(frozen=True)
class Decoded:
    """A decoded, mono, resampled waveform and what it was before."""

    waveform: np.ndarray  # float32, shape (n,), at ``sample_rate``
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    source_frames: int
    format: str
    subtype: str

    @property
    def source_duration(self) -> float:
        """Duration of the recording as received, in seconds."""
        return self.source_frames / self.source_sample_rate


def _describe(source: AudioSource) -> str:
    return str(source) if isinstance(source, str | Path) else "audio bytes"


def load_audio(
    source: AudioSource,
    sample_rate: int | None = None,
    *,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
) -> Decoded:
    """Decode ``source`` (path, bytes or binary file) to mono float32 at ``sample_rate``.

    ``sample_rate=None`` keeps the file's own rate. ``max_seconds`` bounds the recording's
    length *before* decoding it all, so a huge upload cannot exhaust memory.
    """
    name = _describe(source)
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")
        if path.is_dir():
            raise NotAudioError(f"{path}: is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise EmptyAudioError(f"{path}: file is empty (0 bytes)")
        handle: str | BinaryIO = str(path)
    elif isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise EmptyAudioError("audio is empty (0 bytes)")
        handle = io.BytesIO(bytes(source))
    else:
        handle = source

    try:
        with sf.SoundFile(handle) as f:
            sr, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            fmt, subtype = f.format, f.subtype
            _check_declared_length(name, f.extra_info)
            if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
                raise SampleRateError(
                    f"{name}: sample rate {sr} Hz is outside the supported range "
                    f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
                )
            if max_seconds is not None and frames > 0 and frames / sr > max_seconds:
                raise AudioTooLongError(
                    f"{name}: recording is {frames / sr:.1f} s long; the limit is {max_seconds:g} s"
                )
            data = f.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        raise _classify_libsndfile_error(name, exc) from None
    except (RuntimeError, TypeError) as exc:  # older soundfile raises RuntimeError
        raise _classify_libsndfile_error(name, exc) from None

    if data.shape[0] == 0:
        raise EmptyAudioError(f"{name}: contains no audio samples")
    if frames > 0 and data.shape[0] < frames:
        raise TruncatedAudioError(
            f"{name}: truncated: header promises {frames} frames, only {data.shape[0]} decode"
        )
    if max_seconds is not None and data.shape[0] / sr > max_seconds:  # streams without length
        raise AudioTooLongError(
            f"{name}: recording is {data.shape[0] / sr:.1f} s long; the limit is {max_seconds:g} s"
        )
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise NonFiniteAudioError(f"{name}: {bad} samples are NaN or infinite")

    mono = data.mean(axis=1) if channels > 1 else data[:, 0]
    target = sr if sample_rate is None else int(sample_rate)
    wave = resample(mono, sr, target)
    return Decoded(
        waveform=np.ascontiguousarray(wave, dtype=np.float32),
        sample_rate=target,
        source_sample_rate=sr,
        source_channels=channels,
        source_frames=data.shape[0],
        format=fmt,
        subtype=subtype,
    )


_SHOULD_BE = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _check_declared_length(name: str, log: str) -> None:
    """Refuse files whose header promises more data than the file holds.

    libsndfile quietly shortens such files to what is there; its header log says
    ``data : 32000 (should be 15978)``, which is how a cut-off upload shows itself.
    """
    for chunk, declared, actual in _SHOULD_BE.findall(log or ""):
        # streaming writers leave a placeholder length (0 or all ones): not truncation
        if int(actual) < int(declared) < 0x7FFF_0000:
            raise TruncatedAudioError(
                f"{name}: truncated: the {chunk} chunk declares {declared} bytes, the file holds {actual}"
            )


def _classify_libsndfile_error(name: str, exc: Exception) -> Exception:
    """Map libsndfile's messages onto tympan's typed errors."""
    msg = str(exc)
    low = msg.lower()
    if "format not recognised" in low or "unknown format" in low or "not a" in low:
        return NotAudioError(f"{name}: not a recognised audio format ({msg.strip()})")
    if "sample rate" in low or "samplerate" in low:
        return SampleRateError(f"{name}: invalid sample rate ({msg.strip()})")
    if "truncat" in low or "unexpected end" in low or "short" in low:
        return TruncatedAudioError(f"{name}: truncated or damaged file ({msg.strip()})")
    return NotAudioError(f"{name}: cannot decode audio ({msg.strip()})")


def resample(waveform: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample with soxr's high-quality filter; a no-op when the rates agree."""
    if sr_in == sr_out:
        return np.asarray(waveform, dtype=np.float32)
    if sr_out < MIN_SAMPLE_RATE or sr_out > MAX_SAMPLE_RATE:
        raise SampleRateError(f"target sample rate {sr_out} Hz is not supported")
    return soxr.resample(np.asarray(waveform, dtype=np.float32), sr_in, sr_out, quality="HQ")


def fit_length(waveform: np.ndarray, n_samples: int) -> np.ndarray:
    """Zero-pad at the end or crop from the start to exactly ``n_samples``.

    ESC-50 clips are zero-padded to 5 s at the end; padding the same way keeps field
    clips shorter than the model's window in the form the model saw in training.
    """
    x = np.asarray(waveform, dtype=np.float32)
    if x.shape[-1] >= n_samples:
        return x[..., :n_samples]
    pad = [(0, 0)] * (x.ndim - 1) + [(0, n_samples - x.shape[-1])]
    return np.pad(x, pad)


def frame_windows(
    waveform: np.ndarray, n_samples: int, hop: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a recording into overlapping windows of ``n_samples`` (default 50% overlap).

    Returns ``(windows, starts)``: windows ``(n_windows, n_samples)`` and their start sample.
    A recording no longer than one window gives one padded window; the last window is
    aligned to the end so no tail is lost.
    """
    x = np.asarray(waveform, dtype=np.float32)
    hop = hop or max(1, n_samples // 2)
    if x.shape[0] <= n_samples:
        return fit_length(x, n_samples)[None, :], np.zeros(1, dtype=np.int64)
    starts = list(range(0, x.shape[0] - n_samples + 1, hop))
    if starts[-1] + n_samples < x.shape[0]:
        starts.append(x.shape[0] - n_samples)
    idx = np.asarray(starts, dtype=np.int64)
    windows = np.stack([x[s : s + n_samples] for s in idx])
    return windows, idx


AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64"}
)
