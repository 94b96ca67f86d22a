"""``tympan serve --store --alerts``: a real ``tympan serve`` process (the store named by
``TYMPAN_STORE``, the rules by ``--alerts``), real ``websockets`` clients, a real local HTTP
server receiving the webhook and the SQLite file on disk read by a real ``tympan events`` process.
Two streams at once land in the one store under their own names, every event is alerted, a stream
that stops without its end message still has its open events stored, noise raises the drift
check's message and its alert, and a bad rules file or store stops the server before it starts."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from helpers import free_port, wait_ready
from test_live_listen import recording  # noqa: F401 - the shared fixture
from tympan.cli import main
from tympan.live.store import EventStore

SR = 16_000


class Hook:
    """A local HTTP server that keeps the JSON of every POST."""

    def __init__(self) -> None:
        got = self.got = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a) -> None:
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/alerts"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def wait_for(self, pred, timeout: float = 60.0) -> list[dict]:
        """The alerts received once ``pred(alerts)`` holds (a failure if it never does)."""
        deadline = time.monotonic() + timeout
        while not pred(list(self.got)):
            assert time.monotonic() < deadline, f"the webhook got {len(self.got)} alerts: {self.got[-3:]}"
            time.sleep(0.1)
        return list(self.got)


@pytest.fixture(scope="module")
def served(fitted_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("served")
    hook = Hook()
    rules = tmp / "alerts.toml"
    rules.write_text(f'[sinks.hook]\ntype = "webhook"\nurl = "{hook.url}"\nbackoff_s = 0.1\n\n'
                     '[[rules]]\nname = "every event"\non = "close"\nsinks = ["hook"]\n\n'
                     '[drift]\nwindow_s = 60\ncheck_every_s = 5\nmin_windows = 20\nsinks = ["hook"]\n')
    db = tmp / "store" / "events.db"
    port = free_port()
    env = {**os.environ, "TYMPAN_STORE": str(db), "TYMPAN_BACKEND": "eager", "TYMPAN_WARMUP_BATCH_SIZES": "1",
           "TYMPAN_STREAM_BURST_S": "600", "TYMPAN_LOG_LEVEL": "warning", "TYMPAN_TORCH_THREADS": "1"}
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "tympan", "serve", "--bundle", str(fitted_bundle), "--port",
                             str(port), "--alerts", str(rules)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=240, interval=0.2,
                   died=lambda: None if proc.poll() is None else (tmp / "serve.log").read_text()[-2000:])
        yield {"url": url, "db": db, "hook": hook, "log": tmp / "serve.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        hook.srv.shutdown()


def _ws(url: str, query: str):
    return connect(url.replace("http", "ws") + "/stream" + query, open_timeout=10, close_timeout=10)


def _drain(ws, timeout: float = 120) -> tuple[list[dict], int]:
    msgs, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msgs.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
        except ConnectionClosed as exc:
            return msgs, exc.rcvd.code
    raise AssertionError("the server did not close the stream")


def _pcm(recording: Path) -> bytes:  # noqa: F811
    return sf.read(recording, dtype="int16")[0].astype("<i2").tobytes()


def _send(url: str, query: str, pcm: bytes, start: dict | None = None) -> list[dict]:
    with _ws(url, query) as ws:
        if start is not None:
            ws.send(json.dumps(start))
        for i in range(0, len(pcm), 16_000):  # 0.5 s frames
            ws.send(pcm[i : i + 16_000])
        ws.send(json.dumps({"type": "end"}))
        msgs, code = _drain(ws)
    assert code == 1000
    return msgs


def _key(e: dict) -> tuple:
    return (e["source"], e["label"], e["start_s"], e["end_s"], e["windows"])


def test_two_streams_at_once_land_in_the_store_with_their_names_and_are_alerted(served, recording: Path) -> None:  # noqa: F811
    pcm = _pcm(recording)
    results: dict[str, list[dict]] = {}
    errors: list[BaseException] = []

    def client(name: str, how: str) -> None:
        try:
            if how == "query":
                results[name] = _send(served["url"], f"?sample_rate=16000&name={name}", pcm)
            else:
                results[name] = _send(served["url"], "", pcm, {"type": "start", "sample_rate": 16000, "name": name})
        except BaseException as exc:  # noqa: BLE001 - raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=a) for a in (("cam-a", "query"), ("cam-b", "start"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    sent = {}
    for name, msgs in results.items():
        assert msgs[0]["type"] == "ready" and msgs[0]["name"] == name
        events = [m["event"] for m in msgs if m["type"] == "event"]
        assert len(events) >= 3 and {e["source"] for e in events} == {name}
        sent[name] = [_key(e) for e in events]
    assert [k[1:] for k in sent["cam-a"]] == [k[1:] for k in sent["cam-b"]]  # the same audio
    # the one store holds both streams' events, each under its name, in the order they closed
    with EventStore(served["db"], readonly=True) as store:
        for name in ("cam-a", "cam-b"):
            assert [_key(e.model_dump()) for e in store.events(source=name)] == sent[name]
        assert store.integrity() == "ok"
    # every event reached the webhook once (the rule fires at the close)
    want = sorted(k for keys in sent.values() for k in keys)
    got = served["hook"].wait_for(lambda a: len([x for x in a if x["kind"] == "event"]) >= len(want))
    assert sorted(_key(a["event"]) for a in got if a["kind"] == "event") == want
    assert all(a["rule"] == "every event" and a["phase"] == "close" for a in got if a["kind"] == "event")
    # `tympan events list` (its own process, while the server writes) names the streams
    out = subprocess.run([sys.executable, "-m", "tympan", "events", "list", str(served["db"]), "--source", "cam-b"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(sent["cam-b"]) and all(line.startswith("cam-b ") for line in lines)
    out = subprocess.run([sys.executable, "-m", "tympan", "events", "list", str(served["db"]), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert {"cam-a", "cam-b"} <= {json.loads(line)["source"] for line in out.stdout.splitlines()}


def test_a_stream_that_stops_without_its_end_still_stores_its_open_events(served, recording: Path) -> None:  # noqa: F811
    pcm = _pcm(recording)
    opened: list[dict] = []
    closed: list[dict] = []
    with _ws(served["url"], "?sample_rate=16000&name=cut") as ws:
        assert json.loads(ws.recv(timeout=10))["name"] == "cut"
        for i in range(0, len(pcm), 16_000):
            ws.send(pcm[i : i + 16_000])
            while True:  # what this frame produced (the server answers each frame before reading the next)
                try:
                    m = json.loads(ws.recv(timeout=0.5))
                except TimeoutError:
                    break
                if m["type"] in ("event_open", "event"):
                    (opened if m["type"] == "event_open" else closed).append(m["event"])
            if len(opened) > len(closed):  # an event is open: go away without the end message
                break
    assert len(opened) == len(closed) + 1
    still_open = opened[-1]

    def stored() -> list:
        with EventStore(served["db"], readonly=True) as store:
            return [(e.label, e.start_s) for e in store.events(source="cut")]

    deadline = time.monotonic() + 60
    while (still_open["label"], still_open["start_s"]) not in stored():
        assert time.monotonic() < deadline, f"{still_open} was not stored: {stored()}"
        time.sleep(0.2)
    assert sorted(stored()) == sorted((e["label"], e["start_s"]) for e in opened)


def test_noise_raises_the_drift_message_and_alert_of_an_unnamed_stream(served) -> None:
    noise = (0.3 * np.random.default_rng(7).standard_normal(60 * SR)).clip(-1, 1)
    msgs = _send(served["url"], "?sample_rate=16000&windows=false", (noise * 32767).astype("<i2").tobytes())
    name = msgs[0]["name"]
    assert name.startswith("stream-") and len(name) == len("stream-") + 12  # generated
    drift = [m for m in msgs if m["type"] == "drift"]
    assert drift and drift[0]["status"]["affected"] and drift[0]["status"]["reasons"]
    assert len([d for d in drift if d["status"]["affected"]]) == 1  # one message per episode
    got = served["hook"].wait_for(lambda a: any(x["rule"] == f"drift ({name})" for x in a))
    [alert] = [a for a in got if a["rule"] == f"drift ({name})"]
    assert alert["kind"] == "model_affected" and alert["drift"] == drift[0]["status"]
    assert "the model is affected" in served["log"].read_text()


def test_a_bad_rules_file_or_store_stops_serve_before_it_starts(fitted_bundle: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nname = "x"\nsinks = ["nowhere"]\n')
    port = free_port()
    assert main(["serve", "--bundle", str(fitted_bundle), "--port", str(port), "--alerts", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "no sink named nowhere" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["serve", "--bundle", str(fitted_bundle), "--port", str(port),
                 "--store", str(blocker / "events.db")]) == 2
    err = capsys.readouterr().err
    assert "cannot create the event store's folder" in err and "Traceback" not in err
    assert main(["serve", "--bundle", str(fitted_bundle), "--port", str(port), "--store", str(tmp_path)]) == 2
    assert "is a folder, not an event store" in capsys.readouterr().err
    # the port was never bound
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
