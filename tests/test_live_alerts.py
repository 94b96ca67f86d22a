"""Alerts: rules (classes, probability, duration, cooldown, quiet hours, trusted only), a real
local HTTP server receiving the webhook (a 500 first: retried), a command sink, saved clips in
a size-bounded folder, and a sink that never answers not blocking the caller."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import socket
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from test_live_listen import _closed, recording  # noqa: F401 - the shared fixture
from tympan.cli import main
from tympan.contracts.events import Alert, Event
from tympan.errors import DataError
from tympan.live.alerts import AlertManager, AlertRule, ClipFolder, WebhookSink, load_alerts


def _event(label="siren", start=0.0, p=0.9, dur=3.0, ood=0, when=None, source=None) -> Event:
    return Event(label=label, index=0, start_s=start, end_s=start + dur, duration_s=dur, peak_s=start, peak_probability=p,
                 mean_probability=p, windows=2, ood_windows=ood, max_ood_score=0.0, start_time=when, source=source)


def test_rules():
    now = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
    r = AlertRule("r", classes=("siren",), min_probability=0.8, min_duration_s=2.0, cooldown_s=60,
                  quiet_hours=(22 * 60, 6 * 60), require_trusted=True)
    assert not r.matches(_event(label="dog"), now)
    assert not r.matches(_event(p=0.7), now)
    assert not r.matches(_event(dur=1.0), now)
    assert not r.matches(_event(ood=1), now)
    assert not r.matches(_event(when="2026-05-01T23:30:00+00:00"), now)  # quiet hours across midnight
    assert not r.matches(_event(when="2026-05-01T05:59:00+00:00"), now)
    assert r.matches(_event(start=100, when="2026-05-01T06:00:00+00:00"), now)
    assert not r.matches(_event(start=150), now)  # cooldown: 50 s after the last
    assert r.matches(_event(start=161), now)


def test_cooldowns_are_per_stream_and_a_clock_that_goes_back_is_a_new_stream():
    now = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
    r = AlertRule("r", cooldown_s=60)
    assert r.matches(_event(start=500, source="cam-a"), now)
    assert r.matches(_event(start=10, source="cam-b"), now)  # its own clock: not in cam-a's cooldown
    assert not r.matches(_event(start=530, source="cam-a"), now) and not r.matches(_event(start=40, source="cam-b"), now)
    assert r.matches(_event(start=5, source="cam-a"), now)  # cam-a reconnected: its clock restarted


def test_bad_rule_files(tmp_path: Path):
    f = tmp_path / "a.toml"
    for text, msg in [('[[rules]]\nname = "x"\nsinks = ["nope"]\n', "no sink named nope"),
                      ('[[rules]]\nclasses = ["zebra"]\n', "unknown classes zebra"),
                      ('[[rules]]\nquiet_hours = "late"\n', "quiet_hours must read like"),
                      ('[[rules]]\ncolor = 1\n', "unknown keys color"),
                      ('[[rules]]\non = "soon"\n', 'on must be "open" or "close"'),
                      ('[sinks.h]\ntype = "webhook"\n[[rules]]\n', "sink 'h' needs 'url'"),
                      ('[sinks.h]\ntype = "pager"\n[[rules]]\n', "unknown type 'pager'"),
                      ("", "no [[rules]]"), ("[[rules", "cannot read alert rules")]:
        f.write_text(text)
        with pytest.raises(DataError, match=re.escape(msg)):
            load_alerts(f, ["siren", "dog"])


def test_clip_folder_is_bounded(tmp_path: Path):
    clips = ClipFolder(tmp_path / "clips", max_bytes=100_000)
    for i in range(10):
        clips.save(f"c{i}.wav", np.zeros(16_000, np.float32), 16_000)  # 32 kB each
    names = sorted(p.name for p in (tmp_path / "clips").glob("*.wav"))
    assert names == ["c7.wav", "c8.wav", "c9.wav"]


def test_a_sink_that_never_answers_does_not_block(tmp_path: Path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)  # accepts (in the backlog) and never answers
    logs: list[str] = []
    sink = WebhookSink("slow", f"http://127.0.0.1:{srv.getsockname()[1]}/", logs.append, retries=0, timeout_s=30)
    alert = Alert(rule="r", event=_event(), trusted=True, raised_at="2026-05-01T00:00:00+00:00")
    for _ in range(300):
        sink.submit(alert)  # returns at once: the thread is stuck on the first POST
    assert sink.dropped >= 300 - 257 and sink.sent == 0
    assert any("queue full" in m for m in logs)
    srv.close()


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_listen_posts_alerts_to_a_local_webhook_with_clips(fitted_bundle: Path, recording: Path,  # noqa: F811
                                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    got: list[dict] = []
    codes: list[int] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            code = 500 if not codes else 200  # the first POST fails: the sink retries it
            codes.append(code)
            if code == 200:
                got.append(json.loads(body))
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    out = tmp_path / "cmd.jsonl"
    cfg = tmp_path / "alerts.toml"
    cmd = [sys.executable, "-c", f"import sys; open({str(out)!r}, 'ab').write(sys.stdin.buffer.read() + b'\\n')"]
    cfg.write_text(f'[sinks.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:{srv.server_address[1]}/a"\n'
                   f'backoff_s = 0.1\n[sinks.cmd]\ntype = "command"\nargv = {json.dumps(cmd)}\n'
                   '[[rules]]\nname = "everything"\nsinks = ["hook", "cmd"]\n'
                   '[[rules]]\nname = "confident, once per class"\nmin_probability = 0.99\ncooldown_s = 1e9\n'
                   'sinks = ["hook"]\n[[rules]]\nname = "at the close"\non = "close"\nsinks = ["hook"]\n')
    try:
        capsys.readouterr()
        assert main(["listen", str(recording), "--bundle", str(fitted_bundle), "--json", "--alerts", str(cfg),
                     "--clips-dir", str(tmp_path / "clips")]) == 0
    finally:
        srv.shutdown()
    events = [Event(**e) for e in _closed(capsys.readouterr().out.splitlines())]
    alerts = [Alert(**a) for a in got]
    assert len(events) >= 3 and codes[0] == 500
    keys = sorted((e.start_s, e.label) for e in events)
    everything = [a for a in alerts if a.rule == "everything"]
    # on = "open" (the default): an open alert when the event is confirmed, then a close update
    opens = [a for a in everything if a.phase == "open"]
    updates = [a for a in everything if a.phase == "close"]
    assert sorted((a.event.start_s, a.event.label) for a in opens) == keys and all(a.clip is None for a in opens)
    assert sorted((a.event.start_s, a.event.label) for a in updates) == keys and all(a.update for a in updates)
    final = {(e.start_s, e.label): e for e in events}
    assert all(a.event == final[(a.event.start_s, a.event.label)] for a in updates)
    assert all(a.event.end_s <= final[(a.event.start_s, a.event.label)].end_s for a in opens)
    at_close = [a for a in alerts if a.rule == "at the close"]
    assert sorted((a.event.start_s, a.event.label) for a in at_close) == keys
    assert all(a.phase == "close" and not a.update for a in at_close)
    once = [a.event.label for a in alerts if a.rule == "confident, once per class" and not a.update]
    assert len(once) == len(set(once))
    assert all(a.event.peak_probability >= 0.99 for a in alerts if a.rule == "confident, once per class")
    assert len(codes) == len(alerts) + 1
    by_cmd = [Alert(**json.loads(line)) for line in out.read_text().splitlines()]
    assert sorted((a.phase, a.event.start_s) for a in by_cmd) == sorted((a.phase, a.event.start_s) for a in everything)
    for a in updates:
        y, sr = sf.read(tmp_path / "clips" / a.clip)
        assert sr == 16_000 and 0 < len(y) / sr <= a.event.duration_s + 2.0 + 1e-6
        assert a.trusted == a.event.trusted


def test_open_alerts_then_a_close_update_with_the_clip_written_after_a_bounded_wait(tmp_path: Path) -> None:
    sr = 1000
    clips = ClipFolder(tmp_path / "clips", 10**7)
    audio = np.linspace(-1, 1, 200 * sr).astype(np.float32)  # 200 s kept
    manager = AlertManager([AlertRule("long", min_duration_s=2.0), AlertRule("closed", on="close")], {}, clips)
    manager.clip_wait_s = 30.0

    def between(a: float, b: float) -> np.ndarray:
        return audio[int(a * sr) : int(b * sr)]

    so_far = _event(start=10.0, dur=1.0)
    assert manager.handle_open(so_far) == []  # 1 s: "long" does not match yet; judged again at the close
    manager.tick(100.0, between, sr)  # nothing is waiting for a clip
    assert not list((tmp_path / "clips").iterdir())
    final = _event(start=10.0, dur=5.0)
    got = manager.handle(final, between, sr)
    assert [(a.rule, a.phase, a.update) for a in got] == [("long", "close", False), ("closed", "close", False)]
    # an event that goes on: its open alert, then its clip once 30 s of stream have passed
    e = _event(start=50.0, dur=2.5)
    [a] = manager.handle_open(e)
    assert (a.rule, a.phase, a.clip) == ("long", "open", None)
    manager.tick(79.0, between, sr)
    assert len(list((tmp_path / "clips").iterdir())) == 1  # only the first event's
    manager.tick(80.0, between, sr)
    wav = sorted((tmp_path / "clips").glob("*00050.00*.wav"))
    assert len(wav) == 1 and sf.info(wav[0]).duration == pytest.approx(80.0 - 50.0 + manager.pad_s)
    got = manager.handle(_event(start=50.0, dur=300.0), between, sr)  # closes much later
    assert [(a.rule, a.phase, a.update, a.clip) for a in got] == [("long", "close", True, wav[0].name),
                                                                   ("closed", "close", False, wav[0].name)]
    assert sf.info(wav[0]).duration == pytest.approx(31.0)  # bounded: not rewritten with 300 s
