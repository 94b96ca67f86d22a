"""Attacks on a REAL ``tympan serve`` (uvicorn, the shipped bundle) in its own process.

Each test talks raw sockets or httpx to the server on 127.0.0.1 and checks statuses and the
server process's memory (``/proc/<pid>/status``: VmRSS now, VmHWM the peak). Every loop is
bounded in count and in time. Measured numbers are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import select
import socket
import string
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from helpers import free_port, wait_ready  # noqa: E402

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

MiB = 1024 * 1024
BODY_LIMIT = 4 * MiB
BUDGET = 12 * MiB  # three full-size bodies at once
READ_TIMEOUT = 2.0
KEEP_ALIVE = 1.0
TOKEN = "abuse-test-instance"
PER_CLIENT = 44  # connections per client address (the 40-upload burst fits)
CONNECTIONS = 60  # connections in all


# ----------------------------------------------------------------------------- helpers
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def rss(pid: int) -> int:
    return proc_status(pid)["VmRSS"]


class RssSampler:
    """Peak RSS of ``pid`` sampled every 20 ms while the ``with`` block runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self.peak = rss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m and all(dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")).get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def series(text: str, name: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if line.startswith(name + "{")}


def read_response(sock: socket.socket, timeout: float) -> tuple[int | None, dict[str, str], float]:
    """(status or None when closed without one, headers, seconds until answered or closed)."""
    t0 = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    elapsed = time.monotonic() - t0
    if not data.startswith(b"HTTP/1.1 "):
        return None, {}, elapsed
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in head[1:]))
    return int(head[0].split()[1]), headers, elapsed


def closed_within(sock: socket.socket, timeout: float, poke: bytes = b"", every: float = 0.1) -> float | None:
    """Seconds until the server closes ``sock`` (reading and dropping what it sends, and sending
    ``poke`` every ``every`` s when given), or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if poke:
                sock.sendall(poke)
            if select.select([sock], [], [], every)[0] and not sock.recv(65536):
                return time.monotonic() - t0
        except OSError:  # reset, or a broken pipe while poking
            return time.monotonic() - t0
    return None


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def post_head(port: int, path: str, length: int | None, ctype: str = "application/octet-stream") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ctype}\r\n"
            f"{framing}\r\n\r\n").encode()


def tone_wav(seconds: float = 1.0, sr: int = 16_000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 440 * t), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ------------------------------------------------------------------------------ server
class ServeProcess:
    """``python -m tympan serve`` on a free port, with tight limits and timeouts."""

    def __init__(self, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "TYMPAN_MAX_BODY_BYTES": str(BODY_LIMIT),
                    "TYMPAN_MAX_INFLIGHT_BODY_BYTES": str(BUDGET), "TYMPAN_READ_TIMEOUT_S": str(READ_TIMEOUT),
                    "TYMPAN_BODY_TIMEOUT_S": "30", "TYMPAN_KEEP_ALIVE_TIMEOUT_S": str(KEEP_ALIVE),
                    "TYMPAN_TORCH_THREADS": "1", "TYMPAN_WARMUP_BATCH_SIZES": "1", "TYMPAN_MAX_BATCH_SIZE": "4",
                    "TYMPAN_INSTANCE_TOKEN": TOKEN, "TYMPAN_LOG_LEVEL": "warning",
                    "TYMPAN_MAX_CONNECTIONS_PER_CLIENT": str(PER_CLIENT), "TYMPAN_MAX_CONNECTIONS": str(CONNECTIONS),
                    **env}

    def __enter__(self) -> ServeProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "tympan", "serve", "--port", str(self.port)],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        def died() -> str | None:
            if self.proc.poll() is None:
                return None
            return f"tympan serve exited: {self.proc.stderr.read().decode()[-2000:]}"

        try:
            wait_ready(self.url, timeout=240, interval=0.2, died=died)
        except RuntimeError:
            self.proc.kill()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text


@pytest.fixture(scope="module")
def server():
    with ServeProcess() as live:
        yield live


def mb(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


# ---------------------------------------------------------------------------- /metrics
def test_unknown_methods_and_paths_add_no_series(server: ServeProcess) -> None:
    server.metrics()  # the scrape's own series exists before the baseline
    before = series(server.metrics(), "tympan_requests_total")
    rng = random.Random(0)
    statuses = set()
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for i in range(300):
            assert time.monotonic() < deadline, "300 requests took over 60 s"
            method = "M" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=8))
            path = "/" + "".join(rng.choices(string.ascii_lowercase, k=10)) if i % 2 else "/health"
            statuses.add(c.request(method, path).status_code)
    after = series(server.metrics(), "tympan_requests_total")
    new = after - before
    print(f"\n300 random methods: statuses {sorted(statuses)}, new series {sorted(new)}")
    assert statuses <= {404, 405} and len(new) <= 2
    assert all('method="other"' in s for s in new)
    assert not any(re.search(r'method="M[A-Z0-9]{8}"', s) for s in after)


# ---------------------------------------------------------------------------- timeouts
def test_stalled_bodies_get_408_and_are_released(server: ServeProcess) -> None:
    base = rss(server.pid)
    socks = []
    with RssSampler(server.pid) as sampler:
        for _ in range(6):  # 6 x 1.5 MiB declared = 9 MiB < budget: all admitted, all stall
            s = connect(server.port)
            s.sendall(post_head(server.port, "/predict/file", 3 * MiB // 2, "multipart/form-data; boundary=x"))
            s.sendall(b"\0" * MiB)  # 1 MiB of 1.5, then nothing
            socks.append(s)
        held = metric(server.metrics(), "tympan_inflight_body_bytes")
        answers = [read_response(s, READ_TIMEOUT + 8) for s in socks]
        closes = [closed_within(s, 5) for s in socks]
    for s in socks:
        s.close()
    time.sleep(0.3)
    after, gauge = rss(server.pid), metric(server.metrics(), "tympan_inflight_body_bytes")
    print(f"\nstalled bodies: held {mb(held)} while stalled; answers {[(a[0], round(a[2], 2)) for a in answers]}; "
          f"closed after {[round(c, 2) if c is not None else None for c in closes]} s; RSS {mb(base)} -> peak "
          f"{mb(sampler.peak)} -> after {mb(after)}; gauge after {gauge}")
    assert held == 6 * (3 * MiB // 2)
    assert [a[0] for a in answers] == [408] * 6 and all(a[2] < READ_TIMEOUT + 6 for a in answers)
    assert all(a[1].get("connection") == "close" for a in answers)
    assert all(c is not None for c in closes)
    assert gauge == 0
    assert sampler.peak - base < 64 * MiB and after - base < 32 * MiB
    assert httpx.get(server.url + "/ready", timeout=10).status_code == 200


def test_slow_headers_and_idle_connections_are_closed(server: ServeProcess) -> None:
    t0 = time.monotonic()
    silent = connect(server.port)  # connects, sends nothing
    slow = connect(server.port)  # starts a request, never finishes its headers
    slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty")
    idle = connect(server.port)  # one request, then keep-alive idle
    idle.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
    status, headers, _ = read_response(idle, 10)
    assert status == 200 and headers.get("x-tympan-instance") == TOKEN
    t_idle = closed_within(idle, KEEP_ALIVE + 5)
    status_slow, _, _ = read_response(slow, READ_TIMEOUT + 5)
    t_slow = time.monotonic() - t0  # since the connection opened
    t_silent = closed_within(silent, READ_TIMEOUT + 5)
    t_silent = None if t_silent is None else time.monotonic() - t0
    print(f"\nidle keep-alive closed after {t_idle} s (timeout {KEEP_ALIVE}); slow headers: {status_slow} after "
          f"{t_slow:.2f} s; silent connection closed after {t_silent:.2f} s (read timeout {READ_TIMEOUT})")
    for s in (silent, slow, idle):
        s.close()
    assert t_idle is not None and t_idle < KEEP_ALIVE + 2
    assert status_slow == 408 and READ_TIMEOUT - 0.5 < t_slow < READ_TIMEOUT + 3
    assert t_silent is not None and t_silent < READ_TIMEOUT + 3


# -------------------------------------------------------------------- admission control
def _upload_burst(port: int, n: int, size: int, chunked: bool) -> list[int | None]:
    """``n`` concurrent uploads of ``size`` bytes of garbage; their statuses."""
    socks = []
    for _ in range(n):
        s = connect(port)
        s.sendall(post_head(port, "/predict/file", None if chunked else size,
                            "multipart/form-data; boundary=x"))
        socks.append(s)
    statuses: list[int | None] = [None] * n
    if not chunked:  # those refused are answered before they send a byte of body
        for i, s in enumerate(socks):
            ready, _, _ = select.select([s], [], [], 0.5 if i == 0 else 0.05)
            if ready:
                statuses[i], headers, _ = read_response(s, 5)
                assert statuses[i] == 503 and headers.get("retry-after") == "1", (statuses[i], headers)
    block = b"\0" * (256 * 1024)

    def send_all(i: int, s: socket.socket) -> None:
        if statuses[i] is not None:
            return
        try:
            for _ in range(size // len(block)):
                s.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            if chunked:
                s.sendall(b"0\r\n\r\n")
        except OSError:  # refused mid-body: the server closed the connection
            pass
        statuses[i] = read_response(s, 30)[0]

    threads = [threading.Thread(target=send_all, args=(i, s)) for i, s in enumerate(socks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in socks:
        s.close()
    return statuses


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_concurrent_large_uploads_are_admitted_within_budget(server: ServeProcess, chunked: bool) -> None:
    size = 3 * MiB
    base = rss(server.pid)
    t0 = time.monotonic()
    with RssSampler(server.pid) as sampler:
        statuses = _upload_burst(server.port, 40, size, chunked)
    took = time.monotonic() - t0
    after = rss(server.pid)
    text = server.metrics()
    counts = {s: statuses.count(s) for s in set(statuses)}
    print(f"\n40 x {mb(size)} {'chunked' if chunked else 'Content-Length'} uploads in {took:.1f} s: {counts}; RSS "
          f"{mb(base)} -> peak {mb(sampler.peak)} (+{mb(sampler.peak - base)}) -> after {mb(after)}; "
          f"in-flight body bytes after: {metric(text, 'tympan_inflight_body_bytes')}")
    # how many are refused depends on how fast the admitted ones finish (a loaded machine lets
    # more through one after another); what must hold is that some are and memory stays bounded
    assert counts.get(503, 0) >= 1 and set(counts) <= {503, 415, 422, None}
    assert counts.get(415, 0) + counts.get(422, 0) >= 1  # some were admitted (and then refused as not audio)
    # 40 x 3 MiB = 120 MiB offered; the budget (12 MiB) and a few copies of it may be held
    assert sampler.peak - base < 5 * BUDGET, mb(sampler.peak - base)
    assert metric(text, "tympan_inflight_body_bytes") == 0
    r = httpx.post(server.url + "/predict/file", files={"file": ("a.wav", tone_wav())}, timeout=60)
    assert r.status_code == 200, r.text


# -------------------------------------------------------------------------- decode budget
def timed_upload(server: ServeProcess, name: str, data: bytes) -> tuple[httpx.Response, float]:
    """POST ``data`` to /predict/file; the response and the seconds it took."""
    t0 = time.monotonic()
    r = httpx.post(server.url + "/predict/file", files={"file": (name, data)}, timeout=60)
    return r, time.monotonic() - t0


def silence_flac(seconds: float, sr: int, channels: int) -> bytes:
    buf = io.BytesIO()
    block = np.zeros((sr * 10, channels), np.int16)
    with sf.SoundFile(buf, "w", sr, channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(seconds // 10)):
            f.write(block)
    return buf.getvalue()


def test_decode_budget_refuses_a_tiny_file_that_decodes_huge(server: ServeProcess) -> None:
    data = silence_flac(590, 16_000, 4)  # under 600 s and 64 M samples: only the budget stops it
    samples = 590 * 16_000 * 4
    base = rss(server.pid)
    with RssSampler(server.pid) as sampler:
        r, took = timed_upload(server, "silence.flac", data)
    print(f"\n{len(data)} bytes of FLAC silence promising {samples} samples ({samples / len(data):.0f} per byte): "
          f"{r.status_code} {r.json()['error']} in {took:.2f} s; RSS peak +{mb(sampler.peak - base)}")
    assert r.status_code == 413 and r.json()["error"] == "decode_budget_exceeded"
    assert "per byte" in r.json()["detail"] and "\n" not in r.json()["detail"]
    assert took < 5 and sampler.peak - base < 32 * MiB
    # a short silence stays under the floor and is classified
    small = silence_flac(10, 16_000, 1)
    assert httpx.post(server.url + "/predict/file", files={"file": ("s.flac", small)}, timeout=60).status_code == 200


# ------------------------------------------------------------------------- /model, HEAD
def test_model_has_no_local_paths_or_reference_unless_asked(server: ServeProcess) -> None:
    r = httpx.get(server.url + "/model", timeout=30)
    assert r.status_code == 200
    assert "reference" not in r.json() and len(r.content) < 200_000, len(r.content)
    assert not re.search(r'"(/work|/home|/root|/tmp|/Users)/', r.text), re.findall(r'"/[^"]*"', r.text)[:5]
    assert "mn04_as_mAP_432.pt" in r.text  # the file's name is kept, its directory is not
    full = httpx.get(server.url + "/model", params={"include": "reference"}, timeout=30)
    assert full.status_code == 200 and full.json()["reference"] and len(full.content) > 300_000
    assert not re.search(r"/work/", full.text)
    bad = httpx.get(server.url + "/model", params={"include": "everything"}, timeout=30)
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    print(f"\n/model {len(r.content)} bytes; with ?include=reference {len(full.content)} bytes")


def test_head_probes_answer_like_get(server: ServeProcess) -> None:
    for path in ("/health", "/ready"):
        get, head = httpx.get(server.url + path), httpx.head(server.url + path)
        assert head.status_code == get.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers.get("x-tympan-instance") == TOKEN
    with connect(server.port) as s:  # on the wire: headers, then nothing (not even the GET body)
        s.sendall(f"HEAD /ready HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        data, deadline = b"", time.monotonic() + 3
        while time.monotonic() < deadline and select.select([s], [], [], 0.3)[0]:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and rest == b"", data


# ------------------------------------------------------------- round two (issue 24)
def connect_from(port: int, source: str) -> socket.socket:
    """A connection to the server from another loopback address (another client to it)."""
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def test_answered_requests_with_unread_bodies_are_closed(server: ServeProcess) -> None:
    socks = {}
    for method in ("GET", "OPTIONS", "DELETE"):  # answered without the app reading the body
        s = connect(server.port)
        s.sendall(f"{method} /health HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Length: 100000\r\n\r\n"
                  .encode())
        status, _, _ = read_response(s, 10)
        assert status is not None, method
        socks[method] = s
    results = {}
    def poke(method: str, sock: socket.socket) -> None:  # a body byte every 0.3 s until closed
        results[method] = closed_within(sock, READ_TIMEOUT + 6, b"x", 0.3)

    threads = [threading.Thread(target=poke, args=item) for item in socks.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(READ_TIMEOUT + 10)
    for s in socks.values():
        s.close()
    print(f"\nanswered, then a body byte every 0.3 s: closed after {results} s (read timeout {READ_TIMEOUT})")
    assert all(v is not None and v < READ_TIMEOUT + 2 for v in results.values()), results
    # a client that sends the body it declared keeps its connection and is served again
    with connect(server.port) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        time.sleep(0.3)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data, deadline = b"", time.monotonic() + 5
        while data.count(b"HTTP/1.1 200") < 2 and time.monotonic() < deadline:
            if select.select([s], [], [], 0.2)[0]:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    assert data.count(b"HTTP/1.1 200") == 2, data


def test_connections_are_capped_per_client_and_in_all(server: ServeProcess) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(PER_CLIENT):
            held.append(connect(server.port))
        extra = connect(server.port)
        extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_response(extra, 5)
        closed = closed_within(extra, 5)
        extra.close()
        others = [connect_from(server.port, "127.0.0.2") for _ in range(CONNECTIONS - PER_CLIENT)]
        held += others
        other = connect_from(server.port, "127.0.0.2")  # the total limit, from another client
        other.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        status_all, _, _ = read_response(other, 5)
        other.close()
    finally:
        for s in held:
            s.close()
    print(f"\n{PER_CLIENT + 1}th connection from one client: {status} (closed after {closed} s); "
          f"{CONNECTIONS + 1}th in all: {status_all}")
    assert status == 503 and headers.get("retry-after") == "1" and closed is not None and closed < 3
    assert status_all == 503
    deadline = time.monotonic() + 5  # the closed connections are released: served again
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                break
        time.sleep(0.1)
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200


def test_trickled_reservations_do_not_lock_out_uploads(server: ServeProcess) -> None:
    squatters, admitted = [], 0
    for _ in range(3):  # 3 x the body limit = the whole in-flight budget, a byte at a time
        s = connect(server.port)
        s.sendall(post_head(server.port, "/predict/file", BODY_LIMIT, "multipart/form-data; boundary=x") + b"-")
        squatters.append(s)
    t0 = time.monotonic()
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.5):
            for s in squatters:
                with contextlib.suppress(OSError):
                    s.sendall(b"-")

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        time.sleep(0.3)
        small = httpx.post(server.url + "/predict/file", files={"file": ("a.wav", tone_wav())}, timeout=30)
        answers = [read_response(s, READ_TIMEOUT + 8) for s in squatters]
    finally:
        stop.set()
        feeder.join(5)
        for s in squatters:
            s.close()
    admitted = sum(a[0] == 408 for a in answers)
    took = time.monotonic() - t0
    big = httpx.post(server.url + "/predict/file", files={"file": ("big.wav", b"\0" * (3 * MiB))}, timeout=30)
    print(f"\n3 squatters declaring {mb(BODY_LIMIT)}: small upload {small.status_code} meanwhile; squatters "
          f"{[(a[0], round(a[2], 2)) for a in answers]} within {took:.1f} s; then a 3 MiB upload {big.status_code}")
    assert small.status_code == 200, small.text[:300]  # the share kept for small bodies
    assert admitted >= 1 and all(a[0] in (408, 503) for a in answers)
    assert all(a[2] < READ_TIMEOUT + 4 for a in answers)  # cut for falling behind, not at the 30-s body timeout
    assert big.status_code in (415, 422), big.text[:300]  # the budget is free again
    assert metric(server.metrics(), "tympan_inflight_body_bytes") == 0


def with_padding(flac: bytes, n: int) -> bytes:
    """``flac`` with a PADDING metadata block of ``n`` bytes after its STREAMINFO."""
    assert flac[:4] == b"fLaC"
    flag, length = flac[4], int.from_bytes(flac[5:8], "big")
    info_end = 8 + length
    padding = bytes([0x01 | (flag & 0x80)]) + n.to_bytes(3, "big") + b"\0" * n
    return b"fLaC" + bytes([flag & 0x7F]) + flac[5:info_end] + padding + flac[info_end:]


class HealthProbe:
    """Polls /health every 20 ms in a thread while the ``with`` block runs; the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url, self.worst, self._stop = url, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                c.get(self.url + "/health")
                self.worst = max(self.worst, time.monotonic() - t0)
                self._stop.wait(0.02)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        time.sleep(0.1)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.1)
        self._stop.set()
        self._thread.join(35)


def test_padding_buys_no_decode_budget_and_the_loop_stays_free(server: ServeProcess) -> None:
    # 10 s (the idle fast path's limit) of 8-channel 384 kHz silence: 30.7 M samples, made
    # "affordable" by 1 MiB of PADDING (64 samples per upload byte)
    data = with_padding(silence_flac(10, 384_000, 8), 1 << 20)
    with HealthProbe(server.url) as probe:
        r, took = timed_upload(server, "padded.flac", data)
    print(f"\n{len(data)} bytes of FLAC (1 MiB padding) promising 10 s x 8 ch x 384 kHz: {r.status_code} in "
          f"{took:.2f} s; slowest /health meanwhile {probe.worst * 1000:.0f} ms")
    # refused from the header, before a sample is decoded (today's code decoded 30.7 M samples on
    # the event loop's thread: /health stalled for seconds); how long /health waited is printed
    # and measured in benchmarks/serve_load.py, not asserted (the machine's load decides it)
    assert r.status_code == 413 and r.json()["error"] == "decode_budget_exceeded", r.text[:300]
    assert "384000 Hz" in r.json()["detail"]


def test_fast_path_is_judged_on_the_work_not_the_seconds(server: ServeProcess) -> None:
    def inline_count() -> float:
        return metric(server.metrics(), "tympan_inline_requests_total")

    before = inline_count()
    short = httpx.post(server.url + "/predict/file", files={"file": ("t.wav", tone_wav())}, timeout=30)
    mid = inline_count()
    # 2 s, but 8 channels at 48 kHz: 768 k samples to decode, more than 10 s at the model's rate (320 k)
    wide = io.BytesIO()
    sf.write(wide, np.random.default_rng(0).normal(0, 0.1, (96_000, 8)), 48_000, format="WAV", subtype="PCM_16")
    r = httpx.post(server.url + "/predict/file", files={"file": ("wide.wav", wide.getvalue())}, timeout=30)
    after = inline_count()
    print(f"\ninline requests: 1-s mono clip +{mid - before:g}; 2-s 8-channel 48 kHz clip +{after - mid:g}")
    assert short.status_code == 200 and r.status_code == 200, r.text[:300]
    assert mid - before == 1 and after - mid == 0


def test_low_sample_rate_cannot_bypass_the_decode_budget(server: ServeProcess) -> None:
    data = silence_flac(600, 1000, 1)  # 1.9 kB: 600 k samples, 19 M once resampled to 32 kHz (239 windows)
    r, took = timed_upload(server, "low.flac", data)
    print(f"\n{len(data)} bytes of FLAC, 600 s at 1 kHz: {r.status_code} in {took:.2f} s: {r.json().get('detail')}")
    assert r.status_code == 413 and r.json()["error"] == "decode_budget_exceeded", r.text[:300]
    assert "windows" in r.json()["detail"]


def test_explain_has_its_own_small_concurrency_limit(server: ServeProcess) -> None:
    clip = tone_wav(5.0)
    statuses: list[int] = []
    for _ in range(3):  # rounds until two explains overlap (bounded)
        barrier = threading.Barrier(4)
        out: list[httpx.Response] = []

        def one() -> None:
            barrier.wait(10)
            out.append(httpx.post(server.url + "/explain/file", files={"file": ("t.wav", clip)}, timeout=120))

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        statuses += [r.status_code for r in out]
        if 503 in statuses:
            break
    busy = [r for r in out if r.status_code == 503]
    print(f"\n4 concurrent /explain/file, up to 3 rounds: statuses {statuses}")
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}
    assert busy and busy[0].json()["error"] == "overloaded" and busy[0].headers.get("retry-after") == "1"


def test_no_redirect_built_from_the_host_header(server: ServeProcess) -> None:
    with connect(server.port) as s:
        s.sendall(b"POST /predict/ HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 2\r\n\r\n{}")
        status, headers, _ = read_response(s, 10)
    print(f"\nPOST /predict/ with Host: evil.example: {status}, location {headers.get('location')}")
    assert status == 404 and "location" not in headers


@pytest.mark.parametrize("value", ["3_0", " 3", "0x3", "3.5"])
def test_top_k_form_field_is_strict_decimal(server: ServeProcess, value: str) -> None:
    r = httpx.post(server.url + "/predict/file", files={"file": ("t.wav", tone_wav())}, data={"top_k": value},
                   timeout=30)
    assert r.status_code == 422 and r.json()["error"] == "invalid_request", (value, r.status_code, r.text[:200])
    j = httpx.post(server.url + "/predict", json={"audio_base64": "UklGRg==", "top_k": value}, timeout=30)
    assert j.status_code == 422 and j.json()["error"] == "invalid_request"
    ok = httpx.post(server.url + "/predict/file", files={"file": ("t.wav", tone_wav())}, data={"top_k": "5"},
                    timeout=30)
    assert ok.status_code == 200 and len(ok.json()["top_k"]) == 5


def test_chained_ogg_is_reported_not_silently_cut(server: ServeProcess) -> None:
    links = []
    for i in range(200):  # 200 logical streams of 0.1 s: 20 s of audio
        b = io.BytesIO()
        sf.write(b, 0.1 * np.sin(np.arange(1600) * (0.1 + i / 1000)), 16_000, format="OGG", subtype="VORBIS")
        links.append(b.getvalue())
    r = httpx.post(server.url + "/predict/file", files={"file": ("chain.ogg", b"".join(links))}, timeout=60)
    body = r.json()
    warnings = body.get("warnings", [])
    print(f"\nchained Ogg of 200 streams: {r.status_code}; duration {body.get('audio', {}).get('duration_s')}; "
          f"warnings {warnings}")
    assert r.status_code == 200
    assert any("chained Ogg" in w and "200 logical streams" in w for w in warnings), warnings
