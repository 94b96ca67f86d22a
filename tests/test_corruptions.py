"""Waveform corruptions: each does what it says, measured, and a seed reproduces it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from tympan import corruptions as C

SR = 16_000


def _tones(seconds: float = 2.0, freqs=(440.0, 1000.0, 6000.0), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    y = sum(0.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in freqs)
    return (y + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def _band_power(y: np.ndarray, lo: float, hi: float) -> float:
    f, p = signal.welch(y, SR, nperseg=2048)
    return float(p[(f >= lo) & (f < hi)].sum())


@pytest.mark.parametrize("fn", [C.white_noise, C.pink_noise])
@pytest.mark.parametrize("snr", [0.0, 10.0, 25.0])
def test_noise_hits_target_snr(fn, snr):
    y = _tones()
    out = fn(y, SR, np.random.default_rng(1), snr_db=snr)
    assert abs(C.measured_snr_db(y, out) - snr) < 0.5


def test_pink_noise_is_pink():
    out = C.pink_noise(np.zeros(SR * 4, np.float32) + 1e-3, SR, np.random.default_rng(0), snr_db=-40)
    noise = out - 1e-3
    # 1/f: each octave carries about the same power, so 4-8 kHz ~ 500-1000 Hz (white: 8x)
    ratio = _band_power(noise, 4000, 8000) / _band_power(noise, 500, 1000)
    assert 0.5 < ratio < 2.0


@pytest.mark.parametrize("db", [-20.0, -12.0, 12.0, 3.5])
def test_gain_is_exact(db):
    y = _tones()
    out = C.gain(y, SR, np.random.default_rng(0), db=db)
    np.testing.assert_allclose(out, y * np.float32(10 ** (db / 20)), rtol=1e-6, atol=1e-9)
    assert 20 * np.log10(np.abs(out).max() / np.abs(y).max()) == pytest.approx(db, abs=1e-4)


@pytest.mark.parametrize("name,params,cut", [
    ("lowpass", {"cutoff_hz": 4000.0}, 4000.0),
    ("resample", {"rate": 8000}, 4000.0),
    ("telephone", {}, 3400.0),
])
def test_band_limiting_removes_energy_above_cutoff(name, params, cut):
    y = _tones(freqs=(440.0, 1000.0, 5000.0, 6000.0, 7000.0))
    out = C.apply(name, y, SR, 0, **params)
    assert out.shape == y.shape and out.dtype == np.float32
    above_before = _band_power(y, cut * 1.2, SR / 2)
    above_after = _band_power(out, cut * 1.2, SR / 2)
    assert above_after < 1e-3 * above_before  # >= 30 dB down
    # the pass band is kept (within 1 dB)
    assert _band_power(out, 900, 1100) == pytest.approx(_band_power(y, 900, 1100), rel=0.25)


def test_telephone_removes_low_end():
    y = _tones(freqs=(60.0, 1000.0))
    out = C.telephone(y, SR, np.random.default_rng(0))
    assert _band_power(out, 40, 90) < 0.01 * _band_power(y, 40, 90)


def _dominant_hz(y: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / SR)[np.argmax(spec)])


@pytest.mark.parametrize("fmt", ["ogg", "opus", "mp3"])
def test_codec_roundtrip_keeps_length_and_pitch(fmt):
    t = np.arange(2 * SR) / SR
    y = (0.4 * np.sin(2 * np.pi * 523.25 * t)).astype(np.float32)
    y[SR] = 0.9  # a click to measure any delay
    out = C.codec(y, SR, np.random.default_rng(0), format=fmt, compression_level=0.5)
    assert out.shape == y.shape and out.dtype == np.float32
    assert _dominant_hz(out) == pytest.approx(523.25, abs=2.0)
    lag = np.argmax(signal.correlate(out, y, mode="full", method="fft")) - (len(y) - 1)
    assert abs(lag) <= 32  # no audible delay (a full period of 523 Hz is 30 samples)
    assert C.measured_snr_db(y, out) > 5  # lossy, but the same signal


def test_codec_other_rates_and_loud_input():
    sr = 22_050
    t = np.arange(sr) / sr
    y = (2.0 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)  # beyond full scale
    out = C.codec(y, sr, np.random.default_rng(0), format="opus")
    assert out.shape == y.shape
    assert np.abs(out).max() == pytest.approx(2.0, rel=0.2)


def test_clipping_at_fraction_of_peak():
    y = _tones()
    out = C.clipping(y, SR, np.random.default_rng(0), fraction=0.5)
    assert np.abs(out).max() == pytest.approx(0.5 * np.abs(y).max(), rel=1e-6)
    small = np.abs(y) < 0.5 * np.abs(y).max()
    np.testing.assert_array_equal(out[small], y[small])


def test_time_shift_circular_and_padded():
    y = np.arange(16, dtype=np.float32) + 1
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(C.time_shift(y, 4, rng, seconds=1.0), np.roll(y, 4))
    padded = C.time_shift(y, 4, rng, seconds=1.0, mode="pad")
    np.testing.assert_array_equal(padded[:4], 0)
    np.testing.assert_array_equal(padded[4:], y[:-4])
    back = C.time_shift(y, 4, rng, seconds=-0.5, mode="pad")
    np.testing.assert_array_equal(back[:-2], y[2:])
    assert back[-2:].tolist() == [0, 0]


def test_reverb_decays_at_rt60_and_keeps_level():
    rng = np.random.default_rng(0)
    h = C.room_impulse_response(SR, rng, rt60=0.6, drr_db=0.0)
    tail = h[int(0.01 * SR):]
    # energy decay curve (Schroeder): slope of 60 dB per RT60
    edc = 10 * np.log10(np.cumsum(tail[::-1] ** 2)[::-1] + 1e-30)
    edc -= edc[0]
    t5, t25 = np.argmax(edc < -5), np.argmax(edc < -25)
    rt60_est = 3 * (t25 - t5) / SR  # T20 extrapolated to 60 dB
    assert rt60_est == pytest.approx(0.6, rel=0.2)
    y = _tones()
    out = C.reverb(y, SR, np.random.default_rng(1), rt60=0.6)
    assert out.shape == y.shape
    assert np.sqrt(np.mean(out**2)) == pytest.approx(np.sqrt(np.mean(y**2)), rel=1e-4)
    assert not np.allclose(out, y)


@pytest.mark.parametrize("name", sorted(C.CORRUPTIONS))
def test_every_corruption_is_deterministic_with_a_seed(name):
    y = _tones(seconds=1.0)
    params = {"max_seconds": 0.3} if name == "time_shift" else {}
    a = C.apply(name, y, SR, np.random.default_rng(7), **params)
    b = C.apply(name, y, SR, np.random.default_rng(7), **params)
    np.testing.assert_array_equal(a, b)
    assert a.shape == y.shape and a.dtype == np.float32 and np.isfinite(a).all()
    assert y.flags.writeable and np.array_equal(y, _tones(seconds=1.0))  # input untouched


def test_random_field_augment_is_seeded_and_varied():
    y = _tones(seconds=1.0)
    a = C.random_field_augment(y, SR, np.random.default_rng(3), p=0.8)
    b = C.random_field_augment(y, SR, np.random.default_rng(3), p=0.8)
    np.testing.assert_array_equal(a, b)
    outs = [C.random_field_augment(y, SR, np.random.default_rng(s), p=0.8) for s in range(6)]
    assert len({o.tobytes() for o in outs}) == 6
    assert all(o.shape == y.shape and np.isfinite(o).all() for o in outs)
    np.testing.assert_array_equal(C.random_field_augment(y, SR, np.random.default_rng(0), p=0.0), y)


def test_shifts_are_named_and_runnable():
    names = [s.name for s in C.SHIFTS]
    assert {"noise_10db", "lowpass_4k", "resample_8k", "gain_-20db", "gain_+12db", "gain_-12db",
            "codec_mp3"} <= set(names)
    y = _tones(seconds=1.0)
    for name, fn, params in C.SHIFTS:
        out = fn(y, SR, np.random.default_rng(0), **params)
        assert out.shape == y.shape, name
    assert C.get_shift("gain_-20db").params == {"db": -20.0}
    with pytest.raises(KeyError):
        C.apply("nope", y, SR)
    with pytest.raises(TypeError):
        C.apply("gain", y, SR, 0, snr_db=3)
