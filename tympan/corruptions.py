"""Seeded waveform corruptions: the field's ways of changing audio, one signature for all.

Every corruption is ``fn(y, sr, rng, **params) -> np.ndarray``: a mono float waveform ``y`` at
``sr`` Hz, a ``numpy.random.Generator`` (the only source of randomness, so a seed reproduces
the output bit for bit) and the corruption's parameters; it returns a new float32 array of
the same length (the input is never modified). Corruptions are registered by name with
their default parameters (:data:`CORRUPTIONS`, :func:`apply`), so a sweep or a report can
name "lowpass(cutoff_hz=4000)" and rebuild it.

Who uses it: the diagnostics robustness sweep, the adaptation benchmark
(``benchmarks/adaptation.py``) and robust training (:func:`random_field_augment`, via
``tympan.training.field_augment.augmented_feature_copies``). :data:`SHIFTS` lists the named
standard shifts those share.

Conventions: SNR and gain in dB; filters are zero-phase (``scipy.signal.sosfiltfilt``), so
they change the spectrum and not the timing; the codec round trip goes through libsndfile
(``soundfile``) in memory and back through the one decoder, :func:`tympan.audio.load_audio`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
from scipy import signal

from tympan.audio import fit_length, load_audio, resample

Corruption = Callable[..., np.ndarray]

__all__ = [
    "CORRUPTIONS",
    "SHIFTS",
    "CorruptionSpec",
    "Shift",
    "apply",
    "clipping",
    "codec",
    "eq",
    "gain",
    "highpass",
    "lowpass",
    "measured_snr_db",
    "pink_noise",
    "random_field_augment",
    "resample_roundtrip",
    "reverb",
    "room_impulse_response",
    "telephone",
    "time_shift",
    "white_noise",
]


@dataclass(frozen=True)
class CorruptionSpec:
    """A registered corruption: the function, its default parameters, one line of what it does."""

    name: str
    fn: Corruption
    defaults: dict[str, Any]
    description: str


CORRUPTIONS: dict[str, CorruptionSpec] = {}


def _register(name: str, description: str, **defaults: Any) -> Callable[[Corruption], Corruption]:
    def wrap(fn: Corruption) -> Corruption:
        if name in CORRUPTIONS:
            raise ValueError(f"corruption {name!r} is registered twice")
        CORRUPTIONS[name] = CorruptionSpec(name, fn, dict(defaults), description)
        return fn

    return wrap


def apply(name: str, y: np.ndarray, sr: int, rng: np.random.Generator | int | None = None,
          **params: Any) -> np.ndarray:
    """Apply corruption ``name`` with its defaults overridden by ``params``."""
    try:
        spec = CORRUPTIONS[name]
    except KeyError:
        raise KeyError(f"unknown corruption {name!r}; known: {', '.join(sorted(CORRUPTIONS))}") from None
    unknown = sorted(set(params) - set(spec.defaults))
    if unknown:
        raise TypeError(f"corruption {name!r} has no parameter(s) {', '.join(unknown)}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return spec.fn(y, sr, gen, **{**spec.defaults, **params})


def _as_wave(y: np.ndarray) -> np.ndarray:
    x = np.asarray(y, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (n,), got {x.shape}")
    return x


def _out(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0


def measured_snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR of ``noisy`` against ``clean`` in dB: ``10 log10(P_clean / P_(noisy - clean))``."""
    c = np.asarray(clean, np.float64)
    n = np.asarray(noisy, np.float64) - c
    return float(10 * np.log10(_power(c) / max(_power(n), 1e-30)))


# ----------------------------------------------------------------------------- additive noise
def _add_at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Scale ``noise`` so that the realised power ratio is exactly ``snr_db`` and add it.

    A silent input has no SNR to speak of; it is returned unchanged.
    """
    ps, pn = _power(x), _power(noise)
    if ps == 0.0 or pn == 0.0:
        return x.copy()
    return x + noise * np.sqrt(ps / (pn * 10 ** (snr_db / 10)))


@_register("white_noise", "additive white Gaussian noise at a given SNR (dB)", snr_db=10.0)
def white_noise(y: np.ndarray, sr: int, rng: np.random.Generator, *, snr_db: float = 10.0) -> np.ndarray:
    x = _as_wave(y)
    return _out(_add_at_snr(x, rng.standard_normal(x.shape[0]), snr_db))


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f power) noise by shaping white noise's spectrum with 1/sqrt(f)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.shape[0], dtype=np.float64)
    f[0] = 1.0  # keep DC finite; it is removed below
    spec /= np.sqrt(f)
    spec[0] = 0.0
    return np.fft.irfft(spec, n)


@_register("pink_noise", "additive pink (1/f) noise at a given SNR (dB)", snr_db=10.0)
def pink_noise(y: np.ndarray, sr: int, rng: np.random.Generator, *, snr_db: float = 10.0) -> np.ndarray:
    x = _as_wave(y)
    return _out(_add_at_snr(x, _pink(x.shape[0], rng), snr_db))


# ---------------------------------------------------------------------------------- level
@_register("gain", "level change by a fixed number of dB (no clipping: float audio)", db=-20.0)
def gain(y: np.ndarray, sr: int, rng: np.random.Generator, *, db: float = -20.0) -> np.ndarray:
    return _out(_as_wave(y) * 10 ** (db / 20))


@_register("clipping", "hard clipping at a fraction of the clip's peak", fraction=0.3)
def clipping(y: np.ndarray, sr: int, rng: np.random.Generator, *, fraction: float = 0.3) -> np.ndarray:
    if not 0 < fraction <= 1:
        raise ValueError("clipping fraction must be in (0, 1]")
    x = _as_wave(y)
    limit = fraction * float(np.max(np.abs(x))) if x.size else 0.0
    return _out(np.clip(x, -limit, limit))


# -------------------------------------------------------------------------------- filters
def _filter(x: np.ndarray, sos: np.ndarray) -> np.ndarray:
    # sosfiltfilt needs the signal longer than its padding; very short clips pass unfiltered
    padlen = 3 * (2 * len(sos) + 1)
    if x.shape[0] <= padlen:
        return x.copy()
    return signal.sosfiltfilt(sos, x)


@_register("lowpass", "Butterworth low-pass (zero-phase) at a cutoff in Hz", cutoff_hz=4000.0, order=8)
def lowpass(y: np.ndarray, sr: int, rng: np.random.Generator, *, cutoff_hz: float = 4000.0,
            order: int = 8) -> np.ndarray:
    x = _as_wave(y)
    if cutoff_hz >= sr / 2:
        return _out(x)
    return _out(_filter(x, signal.butter(order, cutoff_hz, btype="lowpass", fs=sr, output="sos")))


@_register("highpass", "Butterworth high-pass (zero-phase) at a cutoff in Hz", cutoff_hz=300.0, order=4)
def highpass(y: np.ndarray, sr: int, rng: np.random.Generator, *, cutoff_hz: float = 300.0,
             order: int = 4) -> np.ndarray:
    x = _as_wave(y)
    if cutoff_hz <= 0:
        return _out(x)
    return _out(_filter(x, signal.butter(order, cutoff_hz, btype="highpass", fs=sr, output="sos")))


@_register("telephone", "telephone band: band-pass 300-3400 Hz", low_hz=300.0, high_hz=3400.0, order=4)
def telephone(y: np.ndarray, sr: int, rng: np.random.Generator, *, low_hz: float = 300.0,
              high_hz: float = 3400.0, order: int = 4) -> np.ndarray:
    x = _as_wave(y)
    high = min(high_hz, 0.49 * sr)
    sos = signal.butter(order, [low_hz, high], btype="bandpass", fs=sr, output="sos")
    return _out(_filter(x, sos))


@_register("eq", "random smooth equaliser: gains of up to +-max_db at log-spaced bands",
           max_db=6.0, n_bands=6)
def eq(y: np.ndarray, sr: int, rng: np.random.Generator, *, max_db: float = 6.0,
       n_bands: int = 6) -> np.ndarray:
    """A random, smooth magnitude response (what a cheap microphone or a room does to timbre).

    ``n_bands`` gains drawn uniformly in ``[-max_db, max_db]`` at log-spaced centre
    frequencies between 50 Hz and Nyquist, interpolated in log-frequency; zero phase.
    """
    x = _as_wave(y)
    gains = rng.uniform(-max_db, max_db, size=n_bands)
    if x.shape[0] < 2:
        return _out(x)
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.shape[0], 1 / sr)
    centres = np.geomspace(50.0, sr / 2, n_bands)
    curve_db = np.interp(np.log(np.maximum(f, 1.0)), np.log(centres), gains)
    return _out(np.fft.irfft(spec * 10 ** (curve_db / 20), x.shape[0]))


# ------------------------------------------------------------------------- sample rate, codec
@_register("resample", "resample down to a lower rate and back (band-limits to rate/2)", rate=8000)
def resample_roundtrip(y: np.ndarray, sr: int, rng: np.random.Generator, *, rate: int = 8000) -> np.ndarray:
    x = _as_wave(y)
    if rate >= sr:
        return _out(x)
    down = resample(x.astype(np.float32), sr, int(rate))
    return _out(fit_length(resample(down, int(rate), sr), x.shape[0]))


_CODECS = {
    "ogg": ("OGG", "VORBIS", None),
    "vorbis": ("OGG", "VORBIS", None),
    "opus": ("OGG", "OPUS", (8000, 12000, 16000, 24000, 48000)),
    "mp3": ("MP3", "MPEG_LAYER_III", (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
}


@_register("codec", "lossy codec round trip in memory (ogg/vorbis, opus, mp3)",
           format="mp3", compression_level=0.5)
def codec(y: np.ndarray, sr: int, rng: np.random.Generator, *, format: str = "mp3",
          compression_level: float = 0.5) -> np.ndarray:
    """Encode with libsndfile to an in-memory file and decode with :func:`load_audio`.

    ``compression_level`` is libsndfile's 0 (best quality) .. 1 (smallest file). Rates a codec
    cannot carry (Opus: 8/12/16/24/48 kHz; MP3: the MPEG rates) are resampled to the nearest
    higher supported one for encoding; the decoder brings the audio back to ``sr``. The output
    has the input's length (libsndfile's decoders here add no delay; tests check it).
    """
    try:
        fmt, subtype, rates = _CODECS[format.lower()]
    except KeyError:
        raise ValueError(f"unknown codec {format!r}; known: {', '.join(sorted(_CODECS))}") from None
    x = _as_wave(y).astype(np.float32)
    enc_sr = sr
    if rates is not None and sr not in rates:
        enc_sr = next((r for r in rates if r >= sr), rates[-1])
    data = resample(x, sr, enc_sr)
    peak = float(np.max(np.abs(data))) if data.size else 0.0
    scale = 0.99 / peak if peak > 0.99 else 1.0  # codecs take [-1, 1]; undo the scaling after
    buf = io.BytesIO()
    sf.write(buf, data * scale, enc_sr, format=fmt, subtype=subtype, compression_level=compression_level)
    decoded = load_audio(buf.getvalue(), sr, max_seconds=None).waveform / scale
    return _out(fit_length(decoded, x.shape[0]))


# --------------------------------------------------------------------------- time, rooms
@_register("time_shift", "shift in time by `seconds` (random in +-max_seconds if None), circular or padded",
           seconds=None, max_seconds=1.0, mode="circular")
def time_shift(y: np.ndarray, sr: int, rng: np.random.Generator, *, seconds: float | None = None,
               max_seconds: float = 1.0, mode: str = "circular") -> np.ndarray:
    x = _as_wave(y)
    if seconds is None:
        seconds = float(rng.uniform(-max_seconds, max_seconds))
    k = int(round(seconds * sr))
    if mode == "circular":
        return _out(np.roll(x, k))
    if mode != "pad":
        raise ValueError("time_shift mode must be 'circular' or 'pad'")
    out = np.zeros_like(x)
    if k >= 0:
        out[k:] = x[: max(0, x.shape[0] - k)]
    else:
        out[: x.shape[0] + k] = x[-k:]
    return _out(out)


def room_impulse_response(sr: int, rng: np.random.Generator, rt60: float = 0.5,
                          drr_db: float = 0.0, predelay_s: float = 0.005) -> np.ndarray:
    """A synthetic room impulse response: a direct path, then exponentially decaying noise.

    The tail's amplitude envelope is ``exp(-3 ln(10) t / rt60)`` (60 dB of energy decay in
    ``rt60`` seconds), it starts ``predelay_s`` after the direct path, and the tail-to-direct
    energy ratio is ``-drr_db`` dB (direct-to-reverberant ratio). Length ``1.2 rt60``.
    """
    if rt60 <= 0:
        raise ValueError("rt60 must be positive")
    n = max(2, int(1.2 * rt60 * sr))
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-3 * np.log(10) * t / rt60)
    tail[: int(predelay_s * sr) + 1] = 0.0
    e_tail = float(np.sum(tail**2))
    if e_tail > 0:
        tail *= np.sqrt(10 ** (-drr_db / 10) / e_tail)
    tail[0] = 1.0  # the direct path (energy 1)
    return tail


@_register("reverb", "room reverberation from a generated impulse response (RT60 in s)",
           rt60=0.5, drr_db=0.0)
def reverb(y: np.ndarray, sr: int, rng: np.random.Generator, *, rt60: float = 0.5,
           drr_db: float = 0.0) -> np.ndarray:
    """Convolve with :func:`room_impulse_response`; keep the input's length and RMS level."""
    x = _as_wave(y)
    h = room_impulse_response(sr, rng, rt60, drr_db)
    wet = signal.fftconvolve(x, h)[: x.shape[0]]
    p_in, p_out = _power(x), _power(wet)
    if p_out > 0:
        wet *= np.sqrt(p_in / p_out)
    return _out(wet)


# ------------------------------------------------------------------------ named shifts
@dataclass(frozen=True)
class Shift:
    """A named, fixed corruption the benchmarks sweep over; iterable as ``(name, fn, params)``."""

    name: str
    fn: Corruption
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __iter__(self):
        return iter((self.name, self.fn, self.params))

    def __call__(self, y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
        return self.fn(y, sr, rng, **self.params)


#: The standard shifts of the robustness sweep and the adaptation benchmark.
SHIFTS: list[Shift] = [
    Shift("noise_10db", white_noise, {"snr_db": 10.0}, "white noise at 10 dB SNR"),
    Shift("lowpass_4k", lowpass, {"cutoff_hz": 4000.0, "order": 8}, "8th-order Butterworth low-pass at 4 kHz"),
    Shift("resample_8k", resample_roundtrip, {"rate": 8000}, "resampled to 8 kHz and back"),
    Shift("gain_-20db", gain, {"db": -20.0}, "level -20 dB"),
    Shift("gain_+12db", gain, {"db": 12.0}, "level +12 dB (float: no clipping)"),
    Shift("gain_-12db", gain, {"db": -12.0}, "level -12 dB"),
    Shift("codec_mp3", codec, {"format": "mp3", "compression_level": 0.9},
          "low-bitrate MP3 round trip (libsndfile level 0.9: ~10 kbit/s at 16 kHz)"),
]


def get_shift(name: str) -> Shift:
    """The standard shift called ``name``."""
    for s in SHIFTS:
        if s.name == name:
            return s
    raise KeyError(f"unknown shift {name!r}; known: {', '.join(s.name for s in SHIFTS)}")


# ------------------------------------------------------------------- training augmentation
def random_field_augment(y: np.ndarray, sr: int, rng: np.random.Generator, p: float = 0.5,
                         *, codec_p: float | None = None) -> np.ndarray:
    """A random chain of field conditions, each applied with probability ``p`` (robust training).

    In order, as a recording chain would: room reverb (RT60 0.2-1.0 s, DRR 0-10 dB);
    colouration by one of a random EQ (+-6 dB), a low-pass (2-7 kHz), the telephone band or
    8 kHz resampling; background noise (white or pink, SNR 0-30 dB); a level change (-24 to
    +12 dB); a lossy codec round trip (ogg/opus/mp3 at a random level; probability
    ``codec_p``, default ``p / 2`` because it is the slowest step). Same ``rng`` state, same
    output.
    """
    x = np.asarray(y, dtype=np.float32)
    codec_p = p / 2 if codec_p is None else codec_p
    if rng.random() < p:
        x = reverb(x, sr, rng, rt60=float(rng.uniform(0.2, 1.0)), drr_db=float(rng.uniform(0.0, 10.0)))
    if rng.random() < p:
        kind = int(rng.integers(4))
        if kind == 0:
            x = eq(x, sr, rng, max_db=6.0, n_bands=6)
        elif kind == 1:
            x = lowpass(x, sr, rng, cutoff_hz=float(rng.uniform(2000.0, 7000.0)), order=8)
        elif kind == 2:
            x = telephone(x, sr, rng)
        else:
            x = resample_roundtrip(x, sr, rng, rate=8000)
    if rng.random() < p:
        snr = float(rng.uniform(0.0, 30.0))
        x = (white_noise if rng.random() < 0.5 else pink_noise)(x, sr, rng, snr_db=snr)
    if rng.random() < p:
        x = gain(x, sr, rng, db=float(rng.uniform(-24.0, 12.0)))
    if rng.random() < codec_p:
        fmt = ("ogg", "opus", "mp3")[int(rng.integers(3))]
        x = codec(x, sr, rng, format=fmt, compression_level=float(rng.uniform(0.3, 0.9)))
    return _out(x)
