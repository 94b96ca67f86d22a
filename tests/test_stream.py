"""WebSocket ``/stream`` on a real uvicorn server with a real ``websockets`` client: the events
over the socket equal ``tympan predict --format events`` on the same audio; a wrong token,
garbage, PCM before the format, an oversized frame, an idle client, a too-fast client and one
stream too many each get a close with a code and a reason, never a server error."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from helpers import LiveServer
from test_live_listen import _batch_events, recording  # noqa: F401 - the shared fixture
from tympan.serving.app import create_app
from tympan.serving.settings import Settings

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
SR = 16_000


def _settings(**kw) -> Settings:
    base = dict(api_key=KEY, backend="eager", warmup_batch_sizes=(1,), stream_idle_s=1.0,
                stream_max_frame_bytes=64 * 1024, max_streams=2, stream_burst_s=600.0, stream_max_speed=1.5)
    return Settings(**{**base, **kw})


@pytest.fixture(scope="module")
def server(fitted_bundle: Path):
    with LiveServer(create_app(fitted_bundle, _settings())) as srv:
        yield srv


def _ws(server, query: str = "?sample_rate=16000&format=s16le", headers=AUTH):
    return connect(server.url.replace("http", "ws") + "/stream" + query, additional_headers=headers,
                   open_timeout=10, close_timeout=10)


def _drain(ws, timeout: float = 30) -> tuple[list[dict], int, str]:
    """Messages until the server closes; its close code and reason."""
    msgs, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msgs.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
        except ConnectionClosed as exc:
            return msgs, exc.rcvd.code, exc.rcvd.reason
    raise AssertionError("the server did not close the stream")


def test_events_over_the_socket_equal_batch_events(server, fitted_bundle: Path, recording: Path,  # noqa: F811
                                                   tmp_path: Path) -> None:
    want = _batch_events(fitted_bundle, recording, tmp_path)
    assert len(want) >= 3
    pcm = sf.read(recording, dtype="int16")[0].astype("<i2").tobytes()
    with _ws(server) as ws:
        for i in range(0, len(pcm), 16_000):  # 0.5 s frames
            ws.send(pcm[i : i + 16_000])
        ws.send(json.dumps({"type": "end"}))
        msgs, code, _ = _drain(ws, timeout=120)
    assert code == 1000
    assert msgs[0]["type"] == "ready" and msgs[0]["sample_rate"] == SR
    got = [(m["event"]["label"], m["event"]["start_s"], m["event"]["end_s"], m["event"]["windows"],
            m["event"]["peak_probability"]) for m in msgs if m["type"] == "event"]
    assert got == want
    # each event is confirmed (event_open) before it closes, with the same label and start
    opens = [i for i, m in enumerate(msgs) if m["type"] == "event_open"]
    closes = [i for i, m in enumerate(msgs) if m["type"] == "event"]
    assert [(msgs[i]["event"]["label"], msgs[i]["event"]["start_s"]) for i in opens] == [w[:2] for w in want]
    assert all(o < c for o, c in zip(opens, closes, strict=True))
    assert all(msgs[o]["event"]["end_s"] <= w[2] for o, w in zip(opens, want, strict=True))
    windows = [m for m in msgs if m["type"] == "window"]
    assert msgs[-1]["type"] == "end" and msgs[-1]["windows"] == len(windows) and msgs[-1]["events"] == len(want)
    # events come as they close, interleaved with the windows, not all at the end
    first_event = next(i for i, m in enumerate(msgs) if m["type"] == "event")
    assert first_event < len(msgs) - 2 - 2 * len(want)
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    assert "tympan_streams_total" in text and "tympan_stream_windows_total" in text
    assert f"tympan_stream_events_total {float(len(want))}" in text


def test_start_message_with_stereo_float_at_48k_finds_the_same_sounds(server, fitted_bundle: Path,
                                                                       recording: Path, tmp_path: Path) -> None:  # noqa: F811
    import soxr

    want = [w[0] for w in _batch_events(fitted_bundle, recording, tmp_path)]
    y48 = soxr.resample(sf.read(recording, dtype="float32")[0], SR, 48_000)
    pcm = np.stack([y48, y48], 1).astype("<f4").tobytes()
    with _ws(server, query="") as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": 48_000, "channels": 2, "format": "f32le",
                            "windows": False}))
        for i in range(0, len(pcm), 48_000):  # 0.125 s frames
            ws.send(pcm[i : i + 48_000])
        ws.send(json.dumps({"type": "end"}))
        msgs, code, _ = _drain(ws, timeout=120)
    assert code == 1000
    assert not [m for m in msgs if m["type"] == "window"]
    assert [m["event"]["label"] for m in msgs if m["type"] == "event"] == want


@pytest.mark.parametrize(("query", "headers", "send", "code", "reason"), [
    ("?sample_rate=16000", {"Authorization": "Bearer wrong"}, None, 1008, "token"),
    ("?sample_rate=16000", {}, None, 1008, "token"),
    ("?sample_rate=16000&token=wrong", {}, None, 1008, "token"),
    ("?sample_rate=16000", AUTH, "hello", 1007, "JSON"),
    ("", AUTH, '{"type": "start", "sample_rate": -5}', 1007, "sample_rate"),
    ("?sample_rate=abc", AUTH, None, 1007, "sample_rate"),
    ("", AUTH, b"\x00\x01" * 100, 1003, "start message"),
    ("?sample_rate=16000", AUTH, b"\x00" * (64 * 1024 + 2), 1009, "limit"),
    ("?sample_rate=16000", AUTH, '{"type": "start"}', 1007, "already started"),
    ("?sample_rate=16000", AUTH, None, 1008, "no data"),  # idle: nothing sent
])
def test_refusals_close_with_a_code_and_a_reason(server, query, headers, send, code, reason) -> None:
    with _ws(server, query=query, headers=headers) as ws:
        if send is not None:
            ws.send(send)
        _, got_code, got_reason = _drain(ws, timeout=15)
    assert (got_code, reason in got_reason) == (code, True), got_reason


def test_query_token_opens_the_stream(server) -> None:
    with _ws(server, query=f"?sample_rate=16000&token={KEY}", headers={}) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"


def test_one_stream_too_many_is_told_to_come_back(server) -> None:
    with _ws(server) as a, _ws(server) as b:
        assert json.loads(a.recv(timeout=10))["type"] == json.loads(b.recv(timeout=10))["type"] == "ready"
        with _ws(server) as c:
            _, code, reason = _drain(c, timeout=10)
        assert code == 1013 and "streams are open" in reason
    # the slots are given back when streams end
    time.sleep(0.5)
    with _ws(server) as d:
        assert json.loads(d.recv(timeout=10))["type"] == "ready"


def test_a_client_sending_much_faster_than_real_time_is_closed(fitted_bundle: Path) -> None:
    with LiveServer(create_app(fitted_bundle, _settings(stream_burst_s=2.0, stream_max_speed=1.0))) as srv:
        with _ws(srv) as ws:
            for _ in range(10):  # 10 x 0.5 s at once, the burst is 2 s
                try:
                    ws.send(b"\x00" * 16_000)
                except ConnectionClosed:
                    break
            _, code, reason = _drain(ws, timeout=15)
        assert code == 1008 and "real time" in reason
        text = httpx.get(srv.url + "/metrics", headers=AUTH).text
        assert 'tympan_stream_closes_total{reason="too_fast"} 1.0' in text
        assert 'reason="internal"' not in text
