"""``tympan listen``: a real ffmpeg subprocess reading a real file, raw PCM on the stdin of a real
``tympan`` process, a stream served over HTTP that drops (reconnect, then a clear error, with
every event kept), garbage input, and audio dropped with a counter when the loop falls behind."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.batch.event_tables import read_event_table
from tympan.cli import main
from tympan.live.listener import _Windower
from tympan.live.store import EventStore

REPO = Path(__file__).resolve().parents[1]
SR = 16_000
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


@pytest.fixture(scope="module")
def recording(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic clips of different classes with quiet gaps: a 16-bit WAV."""
    clips = sorted(synthetic_dir.rglob("*.wav"))[::9][:8]
    rng = np.random.default_rng(1)
    parts = []
    for c in clips:
        parts += [sf.read(c, dtype="float32")[0], 0.003 * rng.standard_normal(3 * SR).astype(np.float32)]
    path = tmp_path_factory.mktemp("live") / "rec.wav"
    sf.write(path, np.concatenate(parts), SR, subtype="PCM_16")
    return path


def _batch_events(bundle: Path, recording: Path, tmp: Path) -> list[tuple]:
    out = tmp / "batch_events.parquet"
    assert main(["predict", str(recording), "--format", "events", "--out", str(out), "--bundle", str(bundle),
                 "--quiet"]) == 0
    return [(r["label"], r["start_s"], r["end_s"], r["windows"], r["peak_probability"]) for r in read_event_table(out)]


def _closed(lines: list[str]) -> list[dict]:
    """The closed events of ``tympan listen --json``'s lines (an event_open line precedes each)."""
    out, opened = [], []
    for line in lines:
        m = json.loads(line)
        if m.get("type") == "event_open":
            opened.append((m["event"]["label"], m["event"]["start_s"]))
        else:
            assert (m["label"], m["start_s"]) in opened  # confirmed before it closed
            out.append(m)
    assert len(opened) == len(out)
    return out


def _key(e) -> tuple:
    return (e.label, e.start_s, e.end_s, e.windows, e.peak_probability)


def test_windower_cuts_what_the_batch_stream_cuts():
    from tympan.batch.stream import iter_window_batches

    for n_total in (700, 1000, 4321):
        x = np.random.default_rng(n_total).standard_normal(n_total).astype(np.float32)
        want = np.concatenate([s for s, _ in iter_window_batches([x[i : i + 333] for i in range(0, n_total, 333)],
                                                                  1000, 250, batch=4)])
        w, got = _Windower(1000, 250), []
        for i in range(0, n_total, 333):
            got += w.add(i, x[i : i + 333])[0]
        got += w.finish()[0]
        assert got == want.tolist()


@needs_ffmpeg
def test_listen_to_a_file_through_ffmpeg_equals_batch_events(fitted_bundle: Path, recording: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    want = _batch_events(fitted_bundle, recording, tmp_path)
    assert len(want) >= 3
    db = tmp_path / "events.db"
    capsys.readouterr()
    assert main(["listen", str(recording), "--bundle", str(fitted_bundle), "--store", str(db), "--json",
                 "--store-windows", "--verbose"]) == 0
    cap = capsys.readouterr()
    printed = _closed(cap.out.splitlines())
    assert [(e["label"], e["start_s"], e["end_s"], e["windows"], e["peak_probability"]) for e in printed] == want
    assert "dropped 0 windows" in cap.err and "s  " in cap.err  # the per-window lines
    with EventStore(db, readonly=True) as s:
        assert [_key(e) for e in s.events()] == want
        assert s.count("windows") == sum(1 for line in cap.err.splitlines() if line.strip()[:1].isdigit())


def _tympan(*args: str, stdin=None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "tympan", *args], input=stdin, capture_output=True,
                          env=env, timeout=timeout)


def test_stdin_pcm_closed_mid_frame_keeps_every_event(fitted_bundle: Path, recording: Path, tmp_path: Path) -> None:
    want = _batch_events(fitted_bundle, recording, tmp_path)
    pcm = sf.read(recording, dtype="int16")[0].astype("<i2").tobytes() + b"\x01"  # a cut-off last frame
    db = tmp_path / "stdin.db"
    r = _tympan("listen", "-", "--rate", "16000", "--bundle", str(fitted_bundle), "--store", str(db), "--no-drop",
                stdin=pcm)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "ended mid-frame: 1 trailing bytes dropped" in err
    with EventStore(db, readonly=True) as s:
        got = [_key(e) for e in s.events()]
        assert all(e.start_time is not None for e in s.events())
    assert got == want
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 2 * len(want) and sum(line.startswith("open  ") for line in lines) == len(want)
    # stereo 48 kHz: resampled and downmixed on the way in; the same sounds are found
    y = sf.read(recording, dtype="float32")[0]
    import soxr

    y48 = soxr.resample(y, SR, 48_000)
    stereo = np.stack([y48, y48], 1).astype("<f4").tobytes()
    r = _tympan("listen", "-", "--rate", "48000", "--channels", "2", "--pcm-format", "f32le", "--bundle",
                str(fitted_bundle), "--json", "--no-drop", stdin=stereo)
    assert r.returncode == 0, r.stderr.decode()
    labels = [e["label"] for e in _closed(r.stdout.decode().splitlines())]
    assert labels == [w[0] for w in want]


def test_a_loop_that_falls_behind_drops_windows_and_says_so(fitted_bundle: Path, recording: Path) -> None:
    y = sf.read(recording, dtype="int16")[0]
    pcm = np.tile(y, 6).astype("<i2").tobytes()  # far faster than any loop: stdin is treated as live
    r = _tympan("listen", "-", "--bundle", str(fitted_bundle), "--max-lag", "2", stdin=pcm)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    dropped = int(err.split("dropped ")[1].split()[0])
    windows = int(err.split("stdin: ")[1].split()[0])
    assert dropped > 0 and windows > 0
    assert "max lag" in err


def test_bad_sources_are_one_line_errors(fitted_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(os.urandom(5000))
    if shutil.which("ffmpeg"):
        assert main(["listen", str(garbage), "--bundle", str(fitted_bundle)]) == 2
        assert "ffmpeg could not read" in capsys.readouterr().err
    assert main(["listen", str(tmp_path / "missing.wav"), "--bundle", str(fitted_bundle)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["listen", "-", "--rate", "0", "--bundle", str(fitted_bundle)]) == 2
    assert "--rate and --channels must be positive" in capsys.readouterr().err


@needs_ffmpeg
def test_a_dropped_http_stream_is_reopened_then_given_up_with_every_event_kept(
        fitted_bundle: Path, recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    want = _batch_events(fitted_bundle, recording, tmp_path)
    body = recording.read_bytes()
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            hits.append(self.path)
            if len(hits) > 1:  # the stream is gone after the first connection
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    db = tmp_path / "http.db"
    try:
        capsys.readouterr()
        rc = main(["listen", f"http://127.0.0.1:{srv.server_address[1]}/cam.wav", "--bundle", str(fitted_bundle),
                   "--store", str(db), "--max-retries", "2", "--no-drop"])
    finally:
        srv.shutdown()
    err = capsys.readouterr().err
    assert rc == 2 and "gave up after 2 reconnects" in err, err
    assert "reconnecting in 1 s (attempt 1)" in err and "reconnecting in 2 s (attempt 2)" in err
    assert len(hits) == 3
    with EventStore(db, readonly=True) as s:
        assert [_key(e) for e in s.events()] == want
