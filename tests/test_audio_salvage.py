"""What a field recorder leaves behind decodes: real files, corrupted the way recorders do.

Every file here is written by soundfile, then damaged with plain byte edits, then decoded by
the one decoder (:func:`tympan.audio.load_audio`); no mocks.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.audio import load_audio
from tympan.errors import (
    AudioError,
    AudioTooLongError,
    NotAudioError,
    SampleRangeError,
    SampleRateError,
    TruncatedAudioError,
)

SR = 16_000
REPO = Path(__file__).resolve().parents[1]


def tone(seconds: float = 1.0, sr: int = SR, freq: float = 440.0) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)


def pcm16(y: np.ndarray) -> np.ndarray:
    """What a PCM_16 file holds for ``y``, as libsndfile decodes it."""
    buf = io.BytesIO()
    sf.write(buf, y, SR, format="WAV", subtype="PCM_16")
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0]


def flac_values(y: np.ndarray) -> np.ndarray:
    """What an intact PCM_16 FLAC holds for ``y``, as libsndfile decodes it."""
    buf = io.BytesIO()
    sf.write(buf, y, SR, format="FLAC", subtype="PCM_16")
    buf.seek(0)
    return sf.read(buf, dtype="float32")[0]


def data_offset(raw: bytes) -> int:
    """Offset of the data chunk's size field in a WAV soundfile wrote."""
    i = raw.index(b"data")
    return i + 4


# ---------------------------------------------------------------- 1. power lost mid-recording
def test_wav_cut_short_decodes_what_is_there_with_salvage(tmp_path: Path) -> None:
    y = tone(2.0)
    path = tmp_path / "cut.wav"
    sf.write(path, y, SR, subtype="PCM_16")
    raw = path.read_bytes()
    header = data_offset(raw) + 4
    keep = 12_345  # frames really written before the power went
    path.write_bytes(raw[: header + 2 * keep])

    d = load_audio(path, None, salvage=True)
    assert d.source_frames == keep and d.waveform.shape == (keep,)
    assert d.source_duration == pytest.approx(keep / SR)
    np.testing.assert_array_equal(d.waveform, pcm16(y)[:keep])
    assert any("truncated" in w and "declares 64000 bytes" in w for w in d.warnings)
    with pytest.raises(TruncatedAudioError):  # salvage=False: refused as a cut-off upload
        load_audio(path, None, salvage=False)


def test_wav_cut_short_limit_uses_the_real_length(tmp_path: Path) -> None:
    path = tmp_path / "planned12s.wav"
    sf.write(path, tone(12.0), SR, subtype="PCM_16")
    raw = path.read_bytes()
    path.write_bytes(raw[: data_offset(raw) + 4 + 2 * 5 * SR])  # 5 s of a planned 12 s
    d = load_audio(path, SR, max_seconds=10, salvage=True)
    assert d.source_duration == pytest.approx(5.0) and d.warnings


@pytest.mark.parametrize(
    ("riff", "data"),
    [(0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (None, 0), (0, None), (0xFFFFFFFF, None), (0, 0xFFFFFFFF)],
)
def test_unfinalised_wav_sizes_decode_in_full(tmp_path: Path, riff: int | None, data: int | None) -> None:
    y = tone(1.5)
    path = tmp_path / "unfinalised.wav"
    sf.write(path, y, SR, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    if riff is not None:
        raw[4:8] = struct.pack("<I", riff)
    if data is not None:
        at = data_offset(raw)
        raw[at : at + 4] = struct.pack("<I", data)
    path.write_bytes(bytes(raw))

    d = load_audio(path, None)  # no salvage needed: nothing is missing
    assert d.source_frames == len(y)
    np.testing.assert_array_equal(d.waveform, pcm16(y))
    assert d.warnings and any("finalis" in w for w in d.warnings)
    assert load_audio(bytes(raw), None).source_frames == len(y)  # bytes as well as paths


def test_unfinalised_wav_cut_mid_sample(tmp_path: Path) -> None:
    y = tone(1.0)
    path = tmp_path / "odd.wav"
    sf.write(path, y, SR, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    at = data_offset(raw)
    raw[at : at + 4] = b"\0\0\0\0"
    raw[4:8] = b"\0\0\0\0"
    path.write_bytes(bytes(raw[: at + 4 + 2 * 1000 + 1]))  # half a sample at the end
    d = load_audio(path, None)
    assert d.source_frames == 1000
    np.testing.assert_array_equal(d.waveform, pcm16(y)[:1000])


def _flac_unknown_length(y: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y, SR, format="FLAC", subtype="PCM_16")
    raw = bytearray(buf.getvalue())
    assert raw[:4] == b"fLaC" and raw[4] & 0x7F == 0  # STREAMINFO first
    si = 8  # total samples: the low 36 bits of STREAMINFO bytes 10..17
    raw[si + 13] &= 0xF0
    raw[si + 14 : si + 18] = b"\0\0\0\0"
    return bytes(raw)


def test_flac_with_unknown_total_samples(tmp_path: Path) -> None:
    y = tone(3.0)
    path = tmp_path / "stream.flac"
    path.write_bytes(_flac_unknown_length(y))
    assert sf.info(str(path)).frames > 10**15  # what libsndfile reports: the absurd duration

    d = load_audio(path, None)
    assert d.source_frames == len(y)
    assert d.source_duration == pytest.approx(3.0)
    np.testing.assert_array_equal(d.waveform, flac_values(y))
    assert any("does not give the length" in w for w in d.warnings)
    # the limit applies to what decodes, while decoding
    with pytest.raises(AudioTooLongError, match="longer than 2 s"):
        load_audio(path, None, max_seconds=2)


@pytest.mark.parametrize("fraction", [0.34, 0.5, 0.93])
def test_truncated_flac_decodes_the_frames_that_decode(tmp_path: Path, fraction: float) -> None:
    y = np.random.default_rng(0).uniform(-0.5, 0.5, SR * 3)
    full = tmp_path / "full.flac"
    sf.write(full, y, SR, subtype="PCM_16")
    raw = full.read_bytes()
    block = int.from_bytes(raw[8:10], "big")  # STREAMINFO min block size (frames per FLAC frame)
    path = tmp_path / "cut.flac"
    path.write_bytes(raw[: int(len(raw) * fraction)])

    d = load_audio(path, None, salvage=True)
    n = d.source_frames
    # white noise compresses evenly: the cut falls ~fraction of the way through the frames
    assert n % block == 0 and n > 0
    assert fraction * len(y) - 2 * block < n <= fraction * len(y)
    np.testing.assert_array_equal(d.waveform, flac_values(y)[:n])
    assert any("truncated" in w for w in d.warnings)
    with pytest.raises(TruncatedAudioError):
        load_audio(path, None, salvage=False)


def test_unknown_length_flac_cut_short_decodes_without_salvage_flag(tmp_path: Path) -> None:
    """A streaming recorder that lost power: no length in the header and a torn last frame."""
    y = np.random.default_rng(1).uniform(-0.5, 0.5, SR * 2)
    raw = _flac_unknown_length(y)
    path = tmp_path / "torn.flac"
    path.write_bytes(raw[: int(len(raw) * 0.6)])
    d = load_audio(path, None)
    assert 0 < d.source_frames < len(y)
    np.testing.assert_array_equal(d.waveform, flac_values(y)[: d.source_frames])
    assert d.warnings


# -------------------------------------------------------------- 2. codecs read only forwards
STREAM_CODECS = [
    ("WAV", "GSM610"), ("W64", "GSM610"), ("AIFF", "GSM610"),
    ("WAV", "IMA_ADPCM"), ("WAV", "MS_ADPCM"), ("W64", "IMA_ADPCM"), ("W64", "MS_ADPCM"),
    ("AIFF", "IMA_ADPCM"),
    ("WAV", "G721_32"), ("AU", "G721_32"), ("AU", "G723_24"), ("AU", "G723_40"),
    ("WAV", "NMS_ADPCM_16"), ("WAV", "NMS_ADPCM_24"), ("WAV", "NMS_ADPCM_32"),
    ("XI", "DPCM_8"), ("XI", "DPCM_16"),
    ("WAV", "VOX_ADPCM"),
]


@pytest.mark.parametrize(("fmt", "subtype"), STREAM_CODECS)
def test_codecs_read_only_forwards_decode(tmp_path: Path, fmt: str, subtype: str) -> None:
    sr = 44_100 if fmt == "XI" else 8000  # XI files always say 44.1 kHz
    y = tone(1.0, sr=sr)
    path = tmp_path / f"x.{fmt.lower()}"
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"libsndfile has no {fmt}/{subtype}")
    try:
        sf.write(path, y, sr, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, TypeError, ValueError, RuntimeError) as exc:
        pytest.skip(f"libsndfile cannot write {fmt}/{subtype}: {exc}")
    d = load_audio(path, None)
    assert d.subtype == subtype and d.source_sample_rate == sr
    assert abs(len(d.waveform) - len(y)) < 0.05 * sr  # codec block padding only
    spectrum = np.abs(np.fft.rfft(d.waveform))
    assert abs(np.argmax(spectrum) * sr / len(d.waveform) - 440) < 5
    assert load_audio(path.read_bytes(), SR).waveform.shape[0] == pytest.approx(len(d.waveform) * SR / sr, abs=2)


def test_dwvw_decodes(tmp_path: Path) -> None:
    """soundfile's own read fails on AIFF/DWVW (libsndfile flags a failed seek); ours does not."""
    path = tmp_path / "dwvw.aiff"
    y = tone(1.0, sr=8000)
    try:
        sf.write(path, y, 8000, format="AIFF", subtype="DWVW_16")
    except (sf.LibsndfileError, TypeError, ValueError) as exc:
        pytest.skip(f"libsndfile cannot write AIFF/DWVW_16: {exc}")
    d = load_audio(path, None)
    np.testing.assert_allclose(d.waveform, y, atol=1e-4)


def test_salvage_without_raw_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback for a soundfile without its C handles: re-open and read in smaller blocks."""
    import tympan.audio

    monkeypatch.setattr(tympan.audio, "_RAW_READ", False)
    y = np.random.default_rng(2).uniform(-0.5, 0.5, SR * 2)
    full = tmp_path / "full.flac"
    sf.write(full, y, SR, subtype="PCM_16")
    raw = full.read_bytes()
    path = tmp_path / "cut.flac"
    path.write_bytes(raw[: len(raw) // 2])
    d = load_audio(path, None, salvage=True)
    assert 0 < d.source_frames <= len(y) // 2 and d.warnings
    np.testing.assert_array_equal(d.waveform, flac_values(y)[: d.source_frames])
    assert load_audio(tmp_path / "full.flac", None).source_frames == len(y)


# ------------------------------------------------------------------ 3. values and rates
@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_huge_float_samples_are_refused(tmp_path: Path, subtype: str) -> None:
    y = tone() * 2e20
    path = tmp_path / "huge.wav"
    sf.write(path, y, SR, subtype=subtype)
    with pytest.raises(SampleRangeError, match=r"1e\+20") as info:
        load_audio(path, SR)
    assert info.value.code == "samples_out_of_range"


def test_hot_but_plausible_float_audio_decodes(tmp_path: Path) -> None:
    path = tmp_path / "hot.wav"
    sf.write(path, tone() * 6.0, SR, subtype="FLOAT")  # clipped float mixes exceed 1.0
    assert np.abs(load_audio(path, SR).waveform).max() == pytest.approx(3.0, rel=1e-3)


@pytest.mark.parametrize("rate", [0, 4_000_000_000])
def test_wav_sample_rate_zero_is_bad_sample_rate(tmp_path: Path, rate: int) -> None:
    path = tmp_path / "rate.wav"
    sf.write(path, tone(), SR, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    raw[24:28] = struct.pack("<I", rate)
    path.write_bytes(bytes(raw))
    with pytest.raises(SampleRateError) as info:
        load_audio(path, SR)
    assert info.value.code == "bad_sample_rate"


@pytest.mark.parametrize("rate", [0, 7])
def test_flac_absurd_sample_rate_is_bad_sample_rate(tmp_path: Path, rate: int) -> None:
    buf = io.BytesIO()
    sf.write(buf, tone(), SR, format="FLAC")
    raw = bytearray(buf.getvalue())
    v = int.from_bytes(raw[18:26], "big")
    raw[18:26] = ((v & ((1 << 44) - 1)) | (rate << 44)).to_bytes(8, "big")
    with pytest.raises(SampleRateError) as info:
        load_audio(bytes(raw), SR)
    assert info.value.code == "bad_sample_rate"


# --------------------------------------------------------- 4. what libsndfile prints itself
def _bad_sds(path: Path, seconds: float = 4.0) -> None:
    """An SDS file whose every 127-byte block has a wrong header byte (libsndfile: 'Error A')."""
    y = np.random.default_rng(0).uniform(-0.5, 0.5, int(SR * seconds))
    sf.write(path, y, SR, format="SDS", subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    for i in range(21, len(raw), 127):
        raw[i] = 0
        if i + 1 < len(raw):
            raw[i + 1] = 0
    path.write_bytes(bytes(raw))


def _run(code: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, cwd=REPO,
                          timeout=120, check=False)


def test_malformed_sds_prints_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.sds"
    _bad_sds(path)
    # the file does provoke libsndfile's printing (to stdout, one line per bad block) ...
    raw = _run(f"import soundfile as sf; sf.read({str(path)!r})")
    assert raw.stdout.count(b"Error A") > 1000
    # ... which the decoder keeps out of the process's output; the caller's own output stays
    out = _run(f"""
        import os
        from tympan.audio import load_audio
        print("before", flush=True)
        try:
            d = load_audio({str(path)!r}, None)
            print("decoded", d.source_frames, flush=True)
        except Exception as exc:
            print("error", type(exc).__name__, flush=True)
        print("after", flush=True)
    """)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert len(out.stdout) + len(out.stderr) < 500, (out.stdout[:300], out.stderr[:300])
    assert out.stdout.startswith(b"before\n") and out.stdout.endswith(b"after\n")


def test_corrupt_mp3_notes_stay_out_of_stderr(tmp_path: Path) -> None:
    buf = io.BytesIO()
    sf.write(buf, tone(5.0) * 0.6, SR, format="MP3")
    raw = bytearray(buf.getvalue())
    rng = np.random.default_rng(1)
    for i in range(2000, len(raw), 400):
        raw[i : i + 40] = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    path = tmp_path / "bad.mp3"
    path.write_bytes(bytes(raw))
    noisy = _run(f"import soundfile as sf; sf.read({str(path)!r})")
    if b"Note:" not in noisy.stderr:
        pytest.skip("this mpg123 does not print on resync")
    out = _run(f"""
        from tympan.audio import load_audio
        from tympan.errors import AudioError
        try:
            load_audio({str(path)!r}, None)
        except AudioError:
            pass
    """)
    assert out.returncode == 0 and out.stderr == b"" and out.stdout == b""


def test_other_output_during_a_quiet_decode_is_passed_on() -> None:
    out = _run("""
        import os
        from tympan.audio import _quiet_native_output
        with _quiet_native_output():
            os.write(1, b"Error A : 00\\nmine on stdout\\n")
            os.write(2, b"Note: Trying to resync...\\nmine on stderr\\n")
        os.write(1, b"done\\n")
    """)
    assert out.stdout == b"mine on stdout\ndone\n"
    assert out.stderr == b"mine on stderr\n"


# ------------------------------------------------------------------------- the HTTP API
def test_api_refuses_huge_float_audio_with_a_4xx(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tympan.serving.app import create_app

    path = tmp_path / "huge.wav"
    sf.write(path, tone(2.0) * 1e20, SR, subtype="FLOAT")
    app = create_app(REPO / "tympan" / "assets" / "default")
    with TestClient(app) as client:
        for _ in range(600):
            if client.get("/ready").status_code == 200:
                break
            import time

            time.sleep(0.1)
        assert client.get("/ready").status_code == 200
        for endpoint in ("/predict/file", "/explain/file"):
            r = client.post(endpoint, files={"file": ("huge.wav", path.read_bytes(), "audio/wav")})
            assert 400 <= r.status_code < 500, (endpoint, r.status_code, r.text[:300])
            body = r.json()
            assert body["error"] == "samples_out_of_range" and "samples reach" in body["detail"]
            assert "label" not in body and "predictions" not in body


def test_typed_errors_are_audio_errors() -> None:
    for cls in (SampleRangeError, SampleRateError, TruncatedAudioError, NotAudioError):
        assert issubclass(cls, AudioError)
