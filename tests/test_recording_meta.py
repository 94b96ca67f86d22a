"""Recording metadata from real files: GUANO, AudioMoth comments, bext, file names, lying extensions."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.datasets.cli import cmd_inspect
from tympan.recording_meta import read_recording_metadata, recording_statistics

SR = 16_000


def tone(seconds: float = 1.0, sr: int = SR, freq: float = 440.0) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)


def chunk(cid: bytes, payload: bytes) -> bytes:
    return cid + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


def wav_with_chunks(path: Path, *, before: bytes = b"", after: bytes = b"", sr: int = SR) -> Path:
    """A PCM_16 WAV from soundfile with extra chunks inserted before/after the data chunk."""
    sf.write(path, tone(sr=sr), sr, subtype="PCM_16")
    raw = path.read_bytes()
    i = raw.index(b"data")
    body = raw[12:i] + before + raw[i:] + after
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)
    return path


def test_guano_timestamp(tmp_path: Path) -> None:
    guano = "GUANO|Version: 1.0\nTimestamp: 2024-03-05T21:14:07+02:00\nMake: Wildlife Acoustics\nLoc Position: 52.1 4.3\n"
    path = wav_with_chunks(tmp_path / "bat.wav", after=chunk(b"guan", guano.encode()))
    m = read_recording_metadata(path)
    assert m.start_time == datetime(2024, 3, 5, 21, 14, 7, tzinfo=timezone(timedelta(hours=2)))
    assert m.start_time_source == "guano"
    assert m.guano["Make"] == "Wildlife Acoustics" and m.guano["GUANO|Version"] == "1.0"
    assert m.sample_rate == SR and m.channels == 1 and m.frames == SR and m.duration == pytest.approx(1.0)
    assert m.format == "WAV" and m.subtype == "PCM_16" and not m.extension_lies


def test_audiomoth_comment(tmp_path: Path) -> None:
    comment = (b"Recorded at 12:00:00 01/02/2024 (UTC) by AudioMoth 24F31901603A9B1E at medium gain "
               b"while battery was 4.1V and temperature was 20.0C.\0")
    info = b"INFO" + chunk(b"ICMT", comment) + chunk(b"IART", b"AudioMoth 24F31901603A9B1E\0")
    path = wav_with_chunks(tmp_path / "moth.wav", before=chunk(b"LIST", info))
    m = read_recording_metadata(path)
    assert m.start_time == datetime(2024, 2, 1, 12, 0, 0, tzinfo=UTC)  # DD/MM/YYYY
    assert m.start_time_source == "audiomoth_comment"
    assert m.info["IART"] == "AudioMoth 24F31901603A9B1E" and m.info["ICMT"].startswith("Recorded at")


def test_audiomoth_comment_with_offset(tmp_path: Path) -> None:
    info = b"INFO" + chunk(b"ICMT", b"Recorded at 23:30:05 31/12/2023 (UTC+1) by AudioMoth 1\0")
    m = read_recording_metadata(wav_with_chunks(tmp_path / "m.wav", before=chunk(b"LIST", info)))
    assert m.start_time == datetime(2023, 12, 31, 23, 30, 5, tzinfo=timezone(timedelta(hours=1)))


def test_bext_origination(tmp_path: Path) -> None:
    bext = (b"field recorder".ljust(256, b"\0") + b"Zoom F3".ljust(32, b"\0") + b"ref".ljust(32, b"\0")
            + b"2023-07-14" + b"05:30:00" + bytes(8) + bytes(2) + bytes(254))
    path = wav_with_chunks(tmp_path / "bwf.wav", before=chunk(b"bext", bext))
    m = read_recording_metadata(path)
    assert m.start_time == datetime(2023, 7, 14, 5, 30, 0) and m.start_time.tzinfo is None
    assert m.start_time_source == "bext" and m.bext["Originator"] == "Zoom F3"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SITE3_20240615_043000.wav", datetime(2024, 6, 15, 4, 30, 0)),
        ("20240615_043000.WAV", datetime(2024, 6, 15, 4, 30, 0)),
        ("x_20240615_043000Z.wav", datetime(2024, 6, 15, 4, 30, 0, tzinfo=UTC)),
        ("notes_2024.wav", None),
    ],
)
def test_file_name_timestamp(tmp_path: Path, name: str, expected: datetime | None) -> None:
    path = tmp_path / name
    sf.write(path, tone(), SR)
    m = read_recording_metadata(path)
    assert m.start_time == expected
    assert m.start_time_source == ("filename" if expected else None)


def test_guano_wins_over_file_name(tmp_path: Path) -> None:
    path = wav_with_chunks(tmp_path / "A_20200101_000000.wav",
                           after=chunk(b"guan", b"GUANO|Version: 1.0\nTimestamp: 2024-01-01T00:00:00Z\n"))
    assert read_recording_metadata(path).start_time_source == "guano"


def test_lying_extension(tmp_path: Path) -> None:
    path = tmp_path / "really_flac.wav"
    sf.write(path, tone(), SR, format="FLAC")
    m = read_recording_metadata(path)
    assert m.extension_lies and m.container == "FLAC" and "FLAC" in m.extension_warning
    honest = tmp_path / "ok.flac"
    sf.write(honest, tone(), SR)
    assert not read_recording_metadata(honest).extension_lies


def test_unfinalised_and_garbage_headers_do_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "unfinalised.wav"
    sf.write(path, tone(), SR, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    raw[4:8] = raw[40:44] = b"\0\0\0\0"
    path.write_bytes(bytes(raw))
    m = read_recording_metadata(path)
    assert any("finalised" in w for w in m.warnings)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF\xff\xff\xff\xffWAVE" + b"LIST\xff\xff\xff\x7f" + b"INFO" + bytes(30))
    m = read_recording_metadata(junk)
    assert m.error is not None and m.start_time is None


def test_statistics(tmp_path: Path) -> None:
    sr = 48_000
    y = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(sr) / sr) + 0.5 * np.sin(2 * np.pi * 12_000 * np.arange(sr) / sr)
    s = recording_statistics(y, sr)
    assert s.share_above_band == pytest.approx(0.5, abs=0.02) and s.clipping_share == 0.0
    clipped = np.clip(3 * tone(), -1, 1)
    s = recording_statistics(clipped, SR)
    assert 0.3 < s.clipping_share < 0.9 and s.share_above_band is None


def test_inspect_prints_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    info = b"INFO" + chunk(b"ICMT", b"Recorded at 12:00:00 01/02/2024 (UTC) by AudioMoth 1\0")
    moth = wav_with_chunks(tmp_path / "moth.wav", before=chunk(b"LIST", info), sr=48_000)
    lying = tmp_path / "lying.wav"
    sf.write(lying, tone(), SR, format="FLAC")
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio at all\n" * 10)
    status = cmd_inspect(argparse.Namespace(files=[moth, lying, bad], bundle=None))
    out = capsys.readouterr().out
    assert status == 2
    assert len(out.splitlines()) == 3  # one line per file
    assert f"{moth}: WAV/PCM_16, 48000 Hz, 1 ch, 1.000 s, peak 0.500" in out
    assert "start time 2024-02-01T12:00:00+00:00 (from the AudioMoth comment)" in out
    assert "ICMT" in out and "clipping" in out
    # the shipped model's band reaches 15 kHz (its front end's f_max), not 8 kHz
    assert "content above the band of tympan-default-mn04-esc50 (0-15 kHz)" in out
    assert "none, a 16000 Hz file holds nothing above 8 kHz" in out
    assert "the extension .wav names another container: the file is FLAC" in out
    assert f"{bad}: error: NotAudioError" in out
