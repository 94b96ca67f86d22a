"""The one decoder: every format libsndfile reads, and every kind of bad input, on real files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.audio import fit_length, frame_windows, load_audio, resample
from tympan.errors import (
    AudioTooLongError,
    EmptyAudioError,
    NonFiniteAudioError,
    NotAudioError,
    SampleRateError,
    TruncatedAudioError,
)

SR = 16_000


def tone(seconds: float = 1.0, sr: int = SR, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    y = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([y] * channels, axis=1) if channels > 1 else y


@pytest.mark.parametrize(
    ("ext", "fmt", "subtype", "tol"),
    [
        (".wav", "WAV", "PCM_U8", 1e-2),
        (".wav", "WAV", "PCM_16", 1e-4),
        (".wav", "WAV", "PCM_24", 1e-6),
        (".wav", "WAV", "PCM_32", 1e-6),
        (".wav", "WAV", "FLOAT", 1e-7),
        (".wav", "WAV", "DOUBLE", 1e-7),
        (".flac", "FLAC", "PCM_16", 1e-4),
        (".flac", "FLAC", "PCM_24", 1e-6),
        (".ogg", "OGG", "VORBIS", None),
        (".opus", "OGG", "OPUS", None),
        (".mp3", "MP3", "MPEG_LAYER_III", None),
    ],
)
def test_decodes_every_format(tmp_path: Path, ext: str, fmt: str, subtype: str, tol: float | None) -> None:
    sr = 48_000 if subtype == "OPUS" else SR
    y = tone(sr=sr)
    path = tmp_path / f"x{ext}"
    try:
        sf.write(path, y, sr, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, TypeError, ValueError) as exc:  # format missing from this libsndfile
        pytest.skip(f"libsndfile cannot write {fmt}/{subtype}: {exc}")
    d = load_audio(path, sr)
    assert d.source_sample_rate == sr and d.source_channels == 1
    assert d.waveform.dtype == np.float32
    if tol is not None:
        assert d.waveform.shape == y.shape
        np.testing.assert_allclose(d.waveform, y, atol=tol)
    else:  # lossy codecs: same length within codec padding, same pitch
        assert abs(len(d.waveform) - len(y)) < 0.1 * sr
        spectrum = np.abs(np.fft.rfft(d.waveform))
        assert abs(np.argmax(spectrum) * sr / len(d.waveform) - 440) < 5


def test_stereo_mixes_to_mono_and_resamples(tmp_path: Path) -> None:
    y = tone(seconds=2.0, sr=44_100, channels=2)
    y[:, 1] = 0.0
    path = tmp_path / "stereo.wav"
    sf.write(path, y, 44_100)
    d = load_audio(path, SR)
    assert d.source_channels == 2 and d.source_sample_rate == 44_100 and d.sample_rate == SR
    assert d.waveform.shape == (2 * SR,)
    assert np.abs(d.waveform).max() == pytest.approx(0.25, abs=0.01)  # mean of the two channels
    assert d.source_duration == pytest.approx(2.0)


def test_bytes_and_path_decode_identically(tmp_path: Path) -> None:
    path = tmp_path / "a.flac"
    sf.write(path, tone(), SR)
    a = load_audio(path, 32_000).waveform
    b = load_audio(path.read_bytes(), 32_000).waveform
    np.testing.assert_array_equal(a, b)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(EmptyAudioError, match="empty"):
        load_audio(path, SR)
    with pytest.raises(EmptyAudioError):
        load_audio(b"", SR)


def test_header_only_wav_has_no_samples(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0), SR)
    with pytest.raises(EmptyAudioError, match="no audio samples"):
        load_audio(path, SR)


def test_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is a text file pretending to be audio\n" * 20)
    with pytest.raises(NotAudioError, match="not a recognised audio format|cannot decode"):
        load_audio(path, SR)
    png = b"\x89PNG\r\n\x1a\n" + bytes(200)
    with pytest.raises(NotAudioError):
        load_audio(png, SR)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    sf.write(path, tone(seconds=1.0), SR, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedAudioError, match="truncated"):
        load_audio(path, SR, salvage=False)
    # by default what the file holds decodes, and the result says it was cut short
    d = load_audio(path, SR)
    assert 0 < d.waveform.size < SR and any("truncated" in w for w in d.warnings)


def test_streamed_wav_with_placeholder_length_is_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "stream.wav"
    sf.write(path, tone(), SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)  # data chunk size unknown while streaming
    path.write_bytes(bytes(data))
    assert load_audio(path, SR).waveform.shape == (SR,)


def test_truncated_flac(tmp_path: Path) -> None:
    path = tmp_path / "cut.flac"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, SR * 2), SR)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises((TruncatedAudioError, NotAudioError)):
        load_audio(path, SR, salvage=False)
    d = load_audio(path, SR)  # the frames that decode, with a warning
    assert 0 < d.waveform.size < 2 * SR and d.warnings


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path: Path, bad: float) -> None:
    y = tone()
    y[100] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, y, SR, subtype="FLOAT")
    with pytest.raises(NonFiniteAudioError, match="NaN or infinite"):
        load_audio(path, SR)


def _wav_with_rate(tmp_path: Path, rate: int) -> Path:
    """A valid 16-bit WAV whose header claims ``rate`` Hz (soundfile refuses to write those)."""
    path = tmp_path / f"rate{rate}.wav"
    sf.write(path, tone(), SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    assert data[24:28] == struct.pack("<I", SR)
    data[24:28] = struct.pack("<I", rate)
    data[28:32] = struct.pack("<I", (rate * 2) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("rate", [0, 7, 4_000_000_000])
def test_absurd_sample_rates(tmp_path: Path, rate: int) -> None:
    with pytest.raises((SampleRateError, NotAudioError), match="sample rate|Hz|decode|format"):
        load_audio(_wav_with_rate(tmp_path, rate), SR)


def test_too_long_is_refused_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(SR * 12), SR)
    with pytest.raises(AudioTooLongError, match="12.0 s long; the limit is 10 s"):
        load_audio(path, SR, max_seconds=10)
    assert load_audio(path, SR, max_seconds=None).waveform.shape == (SR * 12,)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_audio(tmp_path / "nope.wav", SR)
    with pytest.raises(NotAudioError, match="directory"):
        load_audio(tmp_path, SR)


def test_resample_keeps_pitch() -> None:
    y = tone(seconds=1.0, sr=44_100, freq=1000)
    z = resample(y, 44_100, SR)
    assert z.shape == (SR,)
    assert abs(np.argmax(np.abs(np.fft.rfft(z))) - 1000) <= 1
    with pytest.raises(SampleRateError):
        resample(y, 44_100, 0)


def test_fit_length_pads_and_crops() -> None:
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(x, 3), [0, 1, 2])
    np.testing.assert_array_equal(fit_length(x, 7), [0, 1, 2, 3, 4, 0, 0])


def test_frame_windows_cover_the_whole_recording() -> None:
    x = np.arange(25, dtype=np.float32)
    windows, starts = frame_windows(x, 10, 5)
    assert starts.tolist() == [0, 5, 10, 15]
    np.testing.assert_array_equal(windows[-1], x[15:25])
    x = np.arange(23, dtype=np.float32)
    windows, starts = frame_windows(x, 10, 5)
    assert starts[-1] == 13 and windows[-1][-1] == 22  # tail aligned to the end
    windows, starts = frame_windows(x[:4], 10)
    assert windows.shape == (1, 10) and starts.tolist() == [0]
