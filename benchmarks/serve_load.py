"""Load test of the real ``tympan serve``: each network backend against the HTTP floor, then abuse.

Starts one ``tympan serve --backend B`` per backend (a subprocess each, so ``OMP_WAIT_POLICY``
and everything else are as in production) and the HTTP floor (``benchmarks/_floor_app.py``: the
same uvicorn/FastAPI stack and multipart upload, no model), all at once. Each concurrency level
is run in ``--rounds`` rounds that visit every server in turn, so a machine whose load changes
during the run slows them alike. Per server and level: p50/p95/p99 latency (client side, end
to end, real ESC-50 clips via ``POST /predict/file``), throughput, errors and the server's CPU
time per clip (user + system of its process: what a clip costs even when other processes share
the cores), and the ratio of each p50 to the floor's p50 at the same level.

Then the abuse scenarios against one server with tight limits (body limit 4 MiB, in-flight body
budget 12 MiB, read timeout 2 s): stalled uploads, concurrent large uploads, a FLAC of digital
silence that promises 590 s x 4 channels (decode bomb), a flood of unknown methods and paths
(metric labels), answered GETs whose declared body trickles in (connections must close; the
per-client cap answers 503), uploads that reserve the body limit and trickle (the pace rule and
the small-body share), a FLAC whose padding would buy decode budget, a 1 kHz FLAC whose
resampled windows would, and the redirect / ``top_k`` / chained-Ogg checks, each with the
server's memory (VmRSS) before, at the peak and after, and the statuses; then a storm of good
and malformed requests (no 5xx), ``/predict`` latency beside an ``/explain`` flood (p99 within
3 x idle), and 2,000 mixed requests with the server's RSS every 250. ``--only-abuse`` runs just
that part and merges it into ``--out``.

    .venv/bin/python benchmarks/serve_load.py                                  # all backends
    .venv/bin/python benchmarks/serve_load.py --backends onnx --requests 400 --no-abuse
    .venv/bin/python benchmarks/serve_load.py --out benchmarks/results/serving.json
    .venv/bin/python benchmarks/serve_load.py --only-abuse --backends onnx --out benchmarks/results/serving.json
    .venv/bin/python benchmarks/serve_load.py --table benchmarks/results/serving.json   # README table

Targets on a 2-core CPU, one 5-s clip: p50 <= 10 ms and p99 <= 25 ms at concurrency 1, >= 150
clips/s at concurrency 16. The client runs on the same machine and takes CPU too: the load
levels use a minimal keep-alive HTTP/1.1 client (:class:`KeepAliveClient`, ~0.1-0.25 ms of CPU
per upload against httpx's 1.4-1.6 ms), so the cores go to the server under test; each result
records the client's own CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import platform
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
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "esc50"
RESULTS = REPO / "benchmarks" / "results" / "serving.json"
TARGETS = {"p50_c1_ms": 10.0, "p99_c1_ms": 25.0, "clips_per_s_c16": 150.0}
MiB = 1024 * 1024

from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")


def machine() -> dict:
    import torch

    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {"cpu": cpu_model(), "cores": cores(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": ort, "load_average_start": load_average()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clips(data_dir: Path, n: int) -> list[tuple[str, bytes]]:
    audio = data_dir / "audio" if (data_dir / "audio").is_dir() else data_dir
    files = sorted(p for p in audio.iterdir() if p.suffix.lower() in {".wav", ".flac", ".ogg", ".mp3"}) \
        if audio.is_dir() else []
    if not files:
        raise SystemExit(f"{audio}: no audio clips (pass --data-dir or set TYMPAN_ESC50_DIR)")
    random.Random(0).shuffle(files)
    return [(p.name, p.read_bytes()) for p in files[:n]]


def describe_bundle(path: Path) -> str:
    from tympan.bundle import load_bundle

    b = load_bundle(path)
    n = sum(p.numel() for p in b.model.parameters())
    fe = b.frontend
    return (f"{b.name} ({b.arch}, {n / 1e6:.2f} M params; front end {fe.name}: {fe.sample_rate} Hz, "
            f"{fe.n_mels} mels x {fe.n_frames} frames per {fe.clip_seconds:g}-s clip)")


# --------------------------------------------------------------------------------- servers
class Server:
    """A server subprocess on a free port: ``tympan serve`` or the HTTP floor."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([*cmd, "--port", str(self.port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.backend_line = ""

    @classmethod
    def tympan(cls, name: str, bundle: Path, args: list[str], env: dict[str, str] | None = None) -> Server:
        return cls(name, [sys.executable, "-m", "tympan", "serve", "--bundle", str(bundle), "--log-level", "info",
                          *args], env)

    @classmethod
    def floor(cls) -> Server:
        return cls("floor", [sys.executable, str(REPO / "benchmarks" / "_floor_app.py")])

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name}: server exited: {self.proc.stderr.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    self._drain_log()
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name}: server did not become ready")

    def _drain_log(self) -> None:
        """Keep reading the server's stderr (a full pipe would block it); remember the backend line."""

        def pump() -> None:
            for line in self.proc.stderr:
                m = re.search(r"(backend \w+ \(asked.*?)(; warm-up|$)", line)
                if m:
                    self.backend_line = m.group(1)

        threading.Thread(target=pump, daemon=True).start()
        time.sleep(0.3)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux; NaN elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def memory(self) -> dict[str, int]:
        """VmRSS (now) and VmHWM (peak) of the server process, bytes."""
        out = {}
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
        except OSError:
            pass
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ------------------------------------------------------------------------------------ load
def multipart(name: str, body: bytes) -> tuple[bytes, str]:
    """``POST /predict/file``'s body and Content-Type for one upload, as httpx encodes ``files=``."""
    request = httpx.Request("POST", "http://x/predict/file", files={"file": (name, body)})
    return request.read(), request.headers["content-type"]


class KeepAliveClient:
    """A minimal HTTP/1.1 keep-alive client for the load levels (asyncio streams).

    The load generator shares the server's two cores: httpx spends about 1.4-1.6 ms of CPU per
    upload (measured against the HTTP floor), this about a tenth of it, so the cores go to the
    server under test. The server receives the same bytes httpx would send (the multipart body
    httpx encodes, encoded once per clip). The abuse scenarios below keep httpx.
    """

    def __init__(self, url: str) -> None:
        host_port = url.split("://", 1)[1].rstrip("/")
        self.host, _, port = host_port.partition(":")
        self.port = int(port or 80)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, head: bytes, body: bytes = b"") -> int:
        """Send one request (``head`` ends with the blank line); the response's status."""
        if self.writer is None or self.writer.is_closing():
            await self._connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(head + body)
        await self.writer.drain()
        line = await self.reader.readline()
        if not line:
            await self.close()
            raise ConnectionError("server closed the connection")
        status = int(line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.partition(b":")
            key = key.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"connection" and value.strip().lower() == b"close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def request_head(method: str, path: str, host: str, content_type: str | None = None, length: int = 0) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if content_type is not None:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def run_batch(url: str, data: list[tuple[str, bytes]], start: int, n: int, concurrency: int) -> dict:
    """``n`` requests at ``concurrency`` over ``concurrency`` keep-alive connections; latencies
    (ms), wall seconds, errors."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(start, start + n))
    host = url.split("://", 1)[1].rstrip("/")
    # encoded once: the server receives what httpx's files= would send
    uploads = []
    for name, body in data:
        content, content_type = multipart(name, body)
        uploads.append(request_head("POST", "/predict/file", host, content_type, len(content)) + content)
    clients = [KeepAliveClient(url) for _ in range(concurrency)]
    try:
        # open the connections first, so the timed requests do not pay for TCP set-up
        await asyncio.gather(*[c.request(request_head("GET", "/ready", host)) for c in clients])

        async def worker(client: KeepAliveClient) -> None:
            for i in counter:
                t = time.perf_counter()
                try:
                    status = str(await client.request(uploads[i % len(uploads)]))
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                    status = type(exc).__name__
                latencies.append((time.perf_counter() - t) * 1000)
                if status != "200":
                    errors[status] = errors.get(status, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*[worker(c) for c in clients])
        wall = time.perf_counter() - t0
    finally:
        await asyncio.gather(*[c.close() for c in clients])
    return {"latencies": latencies, "wall": wall, "errors": errors}


def measure(servers: list[Server], data: list[tuple[str, bytes]], levels: list[int], requests: int,
            rounds: int) -> dict[str, list[dict]]:
    """Per server, one row per level; servers visited in turn, ``rounds`` times per level."""
    out: dict[str, list[dict]] = {s.name: [] for s in servers}
    for c in levels:
        acc = {s.name: {"latencies": [], "wall": 0.0, "errors": {}, "cpu": 0.0, "client_cpu": 0.0} for s in servers}
        per_round = max(c, requests // rounds)
        loads = []
        for r in range(rounds):
            order = servers[r % len(servers):] + servers[: r % len(servers)]
            for s in order:
                cpu0, client0 = s.cpu_seconds(), time.process_time()
                res = asyncio.run(run_batch(s.url, data, r * per_round, per_round, c))
                a = acc[s.name]
                a["cpu"] += s.cpu_seconds() - cpu0
                a["client_cpu"] += time.process_time() - client0
                a["latencies"] += res["latencies"]
                a["wall"] += res["wall"]
                for k, v in res["errors"].items():
                    a["errors"][k] = a["errors"].get(k, 0) + v
            loads.append(load_average())
        for s in servers:
            a = acc[s.name]
            n = len(a["latencies"])
            q = np.percentile(a["latencies"], [50, 95, 99])
            out[s.name].append({"concurrency": c, "n": n, "p50_ms": round(float(q[0]), 2),
                                "p95_ms": round(float(q[1]), 2), "p99_ms": round(float(q[2]), 2),
                                "clips_per_s": round(n / a["wall"], 1),
                                "server_cpu_ms_per_clip": round(a["cpu"] * 1000 / n, 2),
                                "client_cpu_ms_per_request": round(a["client_cpu"] * 1000 / n, 2),
                                "errors": a["errors"], "load_average": loads})
        floor = next((row for row in out.get("floor", []) if row["concurrency"] == c), None)
        for s in servers:
            row = out[s.name][-1]
            if floor:
                row["p50_over_floor"] = round(row["p50_ms"] / floor["p50_ms"], 2)
                row["p99_over_floor"] = round(row["p99_ms"] / floor["p99_ms"], 2)
                row["clips_per_s_over_floor"] = round(row["clips_per_s"] / floor["clips_per_s"], 3)
            print(f"  c={c:<3d} {s.name:12s} p50 {row['p50_ms']:7.2f}  p95 {row['p95_ms']:7.2f}  "
                  f"p99 {row['p99_ms']:7.2f} ms  {row['clips_per_s']:6.1f} clips/s  "
                  f"CPU {row['server_cpu_ms_per_clip']:5.2f} ms/clip  x floor {row.get('p50_over_floor', 1.0):.2f}"
                  f"  errors {row['errors'] or 0}", flush=True)
    return out


# ----------------------------------------------------------------------------------- abuse
def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _head(port: int, path: str, length: int | None, ctype: str = "multipart/form-data; boundary=x") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {ctype}\r\n{framing}\r\n\r\n".encode()


def _status(sock: socket.socket, timeout: float) -> int | None:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError, OSError):
        pass
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else None


class PeakRss:
    def __init__(self, server: Server) -> None:
        self.server, self.peak, self._stop = server, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.memory().get("VmRSS", 0))
            self._stop.wait(0.02)

    def __enter__(self) -> PeakRss:
        self.before = self.server.memory().get("VmRSS", 0)
        self.peak = self.before
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        time.sleep(0.3)
        self.after = self.server.memory().get("VmRSS", 0)

    def report(self) -> dict[str, float]:
        return {"rss_before_mib": round(self.before / MiB, 1), "rss_peak_mib": round(self.peak / MiB, 1),
                "rss_after_mib": round(self.after / MiB, 1)}


def _counts(statuses: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in statuses:
        out[str(s)] = out.get(str(s), 0) + 1
    return dict(sorted(out.items()))


def abuse_stalled(server: Server, n: int = 6) -> dict:
    """``n`` uploads that declare 1.5 MiB, send 1 MiB and stall: each must get 408 and be released."""
    with PeakRss(server) as mem:
        socks = []
        for _ in range(n):
            s = _connect(server.port)
            s.sendall(_head(server.port, "/predict/file", 3 * MiB // 2))
            s.sendall(b"\0" * MiB)
            socks.append(s)
        t0 = time.monotonic()
        statuses = [_status(s, 15) for s in socks]
        took = time.monotonic() - t0
        for s in socks:
            s.close()
    ready = httpx.get(server.url + "/ready", timeout=10).status_code
    return {"scenario": f"{n} stalled uploads (1 of 1.5 MiB sent)", "statuses": _counts(statuses),
            "answered_within_s": round(took, 2), "ready_after": ready, **mem.report()}


def abuse_large(server: Server, n: int = 40, size: int = 3 * MiB) -> dict:
    """``n`` concurrent uploads of ``size`` bytes (Content-Length): the body budget admits a few."""
    block = b"\0" * (256 * 1024)
    statuses: list[int | None] = [None] * n

    def one(i: int) -> None:
        try:
            s = _connect(server.port)
            s.sendall(_head(server.port, "/predict/file", size))
            try:
                for _ in range(size // len(block)):
                    s.sendall(block)
            except OSError:  # refused before or while sending: the server closed the connection
                pass
            statuses[i] = _status(s, 30)
            s.close()
        except OSError:
            statuses[i] = None

    with PeakRss(server) as mem:
        t0 = time.monotonic()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        took = time.monotonic() - t0
    ready = httpx.get(server.url + "/ready", timeout=10).status_code
    return {"scenario": f"{n} concurrent uploads of {size // MiB} MiB ({n * size // MiB} MiB offered)",
            "statuses": _counts(statuses), "took_s": round(took, 2), "ready_after": ready, **mem.report()}


def silence_flac(seconds: float, sr: int, channels: int) -> bytes:
    buf = io.BytesIO()
    block = np.zeros((sr * 10, channels), np.int16)
    with sf.SoundFile(buf, "w", sr, channels, format="FLAC", subtype="PCM_16") as f:
        for _ in range(int(seconds // 10)):
            f.write(block)
    return buf.getvalue()


def _one_upload(server: Server, name: str, data: bytes, scenario: str, timeout: float = 60) -> dict:
    """One upload of ``data``: its status and error code, the time it took and the server's RSS."""
    with PeakRss(server) as mem:
        t0 = time.monotonic()
        r = httpx.post(server.url + "/predict/file", files={"file": (name, data)}, timeout=timeout)
        took = time.monotonic() - t0
    return {"scenario": scenario, "statuses": {f"{r.status_code} {r.json().get('error', '')}".strip(): 1},
            "took_s": round(took, 2), **mem.report()}


def abuse_decode_bomb(server: Server) -> dict:
    """A FLAC of digital silence: a few hundred kB promising 590 s x 16 kHz x 4 channels."""
    data = silence_flac(590, 16_000, 4)
    return _one_upload(server, "silence.flac", data,
                       f"silent FLAC decode bomb ({len(data) // 1024} kB promising {590 * 16_000 * 4:,} samples)")


def abuse_labels(server: Server, n: int = 2000) -> dict:
    """``n`` requests with random methods and paths: the metric series must stay bounded."""
    def series() -> int:
        text = httpx.get(server.url + "/metrics", timeout=10).text
        return sum(1 for line in text.splitlines() if line.startswith("tympan_requests_total{"))

    rng = random.Random(0)
    statuses = []
    series()
    before = series()
    with PeakRss(server) as mem, httpx.Client(base_url=server.url, timeout=10) as c:
        for i in range(n):
            method = "M" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=8)) if i % 3 else "GET"
            path = "/" + "".join(rng.choices(string.ascii_lowercase + string.digits, k=12))
            statuses.append(c.request(method, path).status_code)
    return {"scenario": f"metric-label flood ({n} random methods and paths)", "statuses": _counts(statuses),
            "request_series_before": before, "request_series_after": series(), **mem.report()}


def _fds(server: Server) -> int:
    try:
        return len(os.listdir(f"/proc/{server.proc.pid}/fd"))
    except OSError:
        return -1


def abuse_unread_bodies(server: Server, n: int = 100) -> dict:
    """``n`` connections that send a GET declaring a body, get their answer and then send a body
    byte every 0.5 s: each must be closed (or refused 503 beyond the per-client cap) in bounded time."""
    fds_before = _fds(server)
    socks, statuses = [], []
    with PeakRss(server) as mem:
        for _ in range(n):
            try:
                s = _connect(server.port)
                s.sendall(f"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".encode())
                statuses.append(_status(s, 5))
                socks.append(s)
            except OSError:
                statuses.append(None)
        fds_peak = _fds(server)
        t0, open_socks = time.monotonic(), list(socks)
        while open_socks and time.monotonic() - t0 < 20:
            still = []
            for s in open_socks:
                try:
                    s.sendall(b"x")
                    if select.select([s], [], [], 0)[0] and not s.recv(65536):
                        raise ConnectionResetError
                    still.append(s)
                except OSError:
                    pass
            open_socks = still
            time.sleep(0.5)
        took = time.monotonic() - t0
        for s in socks:
            s.close()
    time.sleep(0.5)
    return {"scenario": f"{n} answered GETs with an unread body, then a byte every 0.5 s",
            "statuses": _counts(statuses), "all_closed_within_s": round(took, 2), "still_open": len(open_socks),
            "server_fds_before_peak_after": [fds_before, fds_peak, _fds(server)], **mem.report()}


def abuse_squatters(server: Server, n: int = 3, size: int = 4 * MiB) -> dict:
    """``n`` uploads that declare the body limit and trickle a byte every 0.5 s, and a real small
    upload meanwhile: the share kept for small bodies admits it, the pace rule cuts the squatters."""
    socks = []
    for _ in range(n):
        s = _connect(server.port)
        s.sendall(_head(server.port, "/predict/file", size) + b"-")
        socks.append(s)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.5):
            for s in socks:
                with contextlib.suppress(OSError):
                    s.sendall(b"-")

    feeder = threading.Thread(target=trickle, daemon=True)
    with PeakRss(server) as mem:
        feeder.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        small = httpx.post(server.url + "/predict/file", files={"file": ("a.wav", _tone_wav())}, timeout=60)
        small_s = time.monotonic() - t0
        statuses = [_status(s, 40) for s in socks]
        cut = time.monotonic() - t0
        stop.set()
        feeder.join(5)
        for s in socks:
            s.close()
    return {"scenario": f"{n} uploads declaring {size // MiB} MiB, a byte every 0.5 s; a 1-s clip meanwhile",
            "statuses": {**{f"squatter {k}": v for k, v in _counts(statuses).items()},
                         f"clip {small.status_code}": 1},
            "clip_answered_s": round(small_s, 2), "squatters_cut_within_s": round(cut, 2), **mem.report()}


def _tone_wav(seconds: float = 1.0, sr: int = 16_000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * sr)) / sr), sr, format="WAV",
             subtype="PCM_16")
    return buf.getvalue()


def _worst_health(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            t0 = time.monotonic()
            c.get(url + "/health")
            out.append(time.monotonic() - t0)
            stop.wait(0.02)


def abuse_padded_flac(server: Server) -> dict:
    """10 s of 8-channel 384 kHz FLAC silence (30.7 M samples) with 1 MiB of PADDING: refused on
    the audio it holds, never decoded on the event loop (/health probed meanwhile)."""
    flac = silence_flac(10, 384_000, 8)
    flag, length = flac[4], int.from_bytes(flac[5:8], "big")
    pad = 1 << 20
    data = (b"fLaC" + bytes([flag & 0x7F]) + flac[5:8 + length] + bytes([0x01 | (flag & 0x80)])
            + pad.to_bytes(3, "big") + b"\0" * pad + flac[8 + length:])
    stop, lat = threading.Event(), []
    probe = threading.Thread(target=_worst_health, args=(server.url, stop, lat), daemon=True)
    with PeakRss(server) as mem:
        probe.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        r = httpx.post(server.url + "/predict/file", files={"file": ("padded.flac", data)}, timeout=60)
        took = time.monotonic() - t0
        time.sleep(0.2)
        stop.set()
        probe.join(35)
    return {"scenario": f"padded FLAC ({len(data) // 1024} kB, 1 MiB of it padding; 10 s x 8 ch x 384 kHz)",
            "statuses": {f"{r.status_code} {r.json().get('error', '')}".strip(): 1}, "took_s": round(took, 2),
            "health_worst_ms": round(max(lat, default=0) * 1000, 1), **mem.report()}


def abuse_low_rate(server: Server) -> dict:
    """1.9 kB of FLAC, 600 s at 1 kHz: 239 model windows once resampled; budgeted on that work."""
    data = silence_flac(600, 1000, 1)
    return _one_upload(server, "low.flac", data, f"low-rate FLAC ({len(data)} bytes, 600 s at 1 kHz)", 120)


def abuse_request_parsing(server: Server) -> dict:
    """An open redirect from the Host header, ``top_k=3_0``, a chained Ogg of 200 streams."""
    with _connect(server.port) as s:
        s.sendall(b"POST /predict/ HTTP/1.1\r\nHost: evil.example\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 2\r\n\r\n{}")
        redirect = _status(s, 10)
    top_k = httpx.post(server.url + "/predict/file", files={"file": ("t.wav", _tone_wav())},
                       data={"top_k": "3_0"}, timeout=60).status_code
    links = []
    for i in range(200):
        b = io.BytesIO()
        sf.write(b, 0.1 * np.sin(np.arange(1600) * (0.1 + i / 1000)), 16_000, format="OGG", subtype="VORBIS")
        links.append(b.getvalue())
    r = httpx.post(server.url + "/predict/file", files={"file": ("chain.ogg", b"".join(links))}, timeout=60)
    warned = any("chained Ogg" in w for w in r.json().get("warnings", []))
    return {"scenario": "POST /predict/ with Host: evil.example; top_k=3_0; chained Ogg of 200 streams",
            "statuses": {f"redirect {redirect}": 1, f"top_k {top_k}": 1,
                         f"chained ogg {r.status_code}{' (warned)' if warned else ' (no warning)'}": 1}}


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


def _flood_explain(url: str, clip: bytes, seconds: float, queue) -> None:
    """One flooding client (its own process, so its CPU and GIL are not the measured client's)."""
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=120) as c:
        while time.monotonic() < deadline:
            try:
                status = c.post("/explain/file", files={"file": ("c.wav", clip)}).status_code
            except httpx.HTTPError:
                status = 0
            statuses[status] = statuses.get(status, 0) + 1
            if status == 503:
                time.sleep(0.05)
    queue.put(statuses)


def explain_flood(server: Server, clip: bytes, n: int = 150, flooders: int = 4) -> dict:
    """/predict latency (one client, one request at a time) idle and beside ``flooders`` client
    processes sending /explain back to back (20 ms after each 503): explain's own limit keeps
    /predict's p99 within 3x."""
    import multiprocessing

    def run_predicts(c: httpx.Client) -> tuple[list[float], float]:
        out, t0 = [], time.monotonic()
        for _ in range(n):
            t = time.perf_counter()
            r = c.post("/predict/file", files={"file": ("c.wav", clip)})
            if r.status_code == 200:
                out.append(time.perf_counter() - t)
        return out, time.monotonic() - t0

    ctx = multiprocessing.get_context("spawn")
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for _ in range(10):  # warm
            c.post("/predict/file", files={"file": ("c.wav", clip)})
        idle, took = run_predicts(c)
        queue = ctx.Queue()
        procs = [ctx.Process(target=_flood_explain, args=(server.url, clip, 3 * took + 10, queue), daemon=True)
                 for _ in range(flooders)]
        with PeakRss(server) as mem:
            for p in procs:
                p.start()
            time.sleep(4.0)  # the flooders' interpreters start and their first explains run
            busy, _ = run_predicts(c)
            explain: dict[str, int] = {}
            for _ in procs:
                for k, v in queue.get(timeout=600).items():
                    explain[f"explain {k}"] = explain.get(f"explain {k}", 0) + v
            for p in procs:
                p.join(30)
    idle_p99, busy_p99 = _percentile(idle, 99), _percentile(busy, 99)
    return {"scenario": f"/predict beside {flooders} clients flooding /explain", "requests": n,
            "statuses": dict(sorted(explain.items())),
            "predict_idle_p50_ms": round(_percentile(idle, 50), 1), "predict_idle_p99_ms": round(idle_p99, 1),
            "predict_flood_p50_ms": round(_percentile(busy, 50), 1), "predict_flood_p99_ms": round(busy_p99, 1),
            "p99_ratio": round(busy_p99 / idle_p99, 2), "target_p99_ratio": 3.0, **mem.report()}


async def mixed_rss(server: Server, good: bytes, n: int = 2000, concurrency: int = 4) -> dict:
    """``n`` mixed requests (JSON and file predicts, explains, 4xx); the server's RSS every 250."""
    b64 = base64.b64encode(good).decode()
    kinds = [("predict json", "/predict", {"json": {"audio_base64": b64}}),
             ("predict file", "/predict/file", {"files": {"file": ("c.wav", good)}}),
             ("explain", "/explain/file", {"files": {"file": ("c.wav", good)}}),
             ("not audio", "/predict/file", {"files": {"file": ("x.wav", b"not audio " * 100)}}),
             ("top_k 0", "/predict", {"json": {"audio_base64": b64, "top_k": 0}}),
             ("unknown path", "/nowhere", {"json": {}})]
    weights = [35, 35, 10, 10, 5, 5]
    rng = random.Random(0)
    plan = iter(rng.choices(range(len(kinds)), weights=weights, k=n))
    by: dict[str, int] = {}
    trace: list[float] = []
    done = 0
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

        async def worker() -> None:
            nonlocal done
            for k in plan:
                name, path, kwargs = kinds[k]
                try:
                    status = str((await client.post(path, **kwargs)).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                key = f"{name} {status}"
                by[key] = by.get(key, 0) + 1
                done += 1
                if done % 250 == 0:
                    trace.append(round(server.memory().get("VmRSS", 0) / MiB, 1))

        with PeakRss(server) as mem:
            await asyncio.gather(*[worker() for _ in range(concurrency)])
    errors = sum(v for k, v in by.items() if k.split()[-1].startswith("5") and "explain 503" not in k
                 or not k.split()[-1].isdigit())
    return {"scenario": f"{n} mixed requests (predict JSON/file, explain, 4xx), {concurrency} at once",
            "statuses": dict(sorted(by.items())), "rss_every_250_mib": trace, "server_errors": errors, **mem.report()}


def malformed_cases(good: bytes) -> list[tuple[str, dict]]:
    """(name, httpx request kwargs) for good and malformed requests."""
    y, sr = sf.read(io.BytesIO(good), dtype="float32")
    buf = io.BytesIO()
    nan = y.copy()
    nan[10:20] = np.nan
    sf.write(buf, nan, sr, format="WAV", subtype="FLOAT")
    nan_wav = buf.getvalue()
    buf = io.BytesIO()
    sf.write(buf, y, sr, format="WAV", subtype="PCM_16")
    wav = bytearray(buf.getvalue())
    b64 = base64.b64encode(good).decode()
    f = lambda data: {"files": {"file": ("x.wav", data)}}  # noqa: E731
    return [
        ("good file", f(good)),
        ("good json", {"json": {"audio_base64": b64, "top_k": 5}}),
        ("text", f(b"definitely not audio " * 50)),
        ("random bytes", f(random.Random(1).randbytes(4000))),
        ("empty", f(b"")),
        ("truncated", f(bytes(wav[: len(wav) // 3]))),
        ("header only", f(bytes(wav[:44]))),
        ("nan float wav", f(nan_wav)),
        ("0 Hz header", f(bytes(wav[:24] + b"\0\0\0\0" + wav[28:]))),
        ("bad base64", {"json": {"audio_base64": "%%%not-base64%%%"}}),
        ("top_k 0", {"json": {"audio_base64": b64, "top_k": 0}}),
        ("broken json", {"content": b'{"audio_base64": ', "headers": {"content-type": "application/json"}}),
        ("wrong type", {"json": {"audio_base64": 42}}),
        ("no file field", {"data": {"top_k": "3"}}),
    ]


async def storm(url: str, good: bytes, n: int, concurrency: int = 8) -> dict:
    cases = malformed_cases(good)
    rng = random.Random(0)
    plan = iter([cases[rng.randrange(len(cases))] for _ in range(n)])
    by_status: dict[str, int] = {}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def worker() -> None:
            for _name, kwargs in plan:
                path = "/predict" if "json" in kwargs or "content" in kwargs else "/predict/file"
                try:
                    status = str((await client.post(path, **kwargs)).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                by_status[status] = by_status.get(status, 0) + 1

        await asyncio.gather(*[worker() for _ in range(concurrency)])
        ready = (await client.get("/ready")).status_code
    errors = sum(v for k, v in by_status.items() if k.startswith("5") or not k.isdigit())
    return {"scenario": f"{n} mixed good and malformed requests", "statuses": dict(sorted(by_status.items())),
            "server_errors": errors, "ready_after": ready}


ABUSE_ENV = {"TYMPAN_MAX_BODY_BYTES": str(4 * MiB), "TYMPAN_MAX_INFLIGHT_BODY_BYTES": str(12 * MiB),
             "TYMPAN_READ_TIMEOUT_S": "2", "TYMPAN_BODY_TIMEOUT_S": "30"}
SCENARIOS = (abuse_stalled, abuse_large, abuse_decode_bomb, abuse_labels, abuse_unread_bodies, abuse_squatters,
             abuse_padded_flac, abuse_low_rate, abuse_request_parsing)


def abuse(bundle: Path, backend: str, good: bytes, malformed: int, mixed: int = 2000) -> dict:
    server = Server.tympan("abuse", bundle, ["--backend", backend], ABUSE_ENV)
    try:
        server.wait_ready()
        out = {"server": f"tympan serve --backend {backend}; " + ", ".join(f"{k}={v}" for k, v in ABUSE_ENV.items()),
               "scenarios": []}
        for fn in SCENARIOS:
            res = fn(server)
            mem = (f"; RSS {res['rss_before_mib']} -> peak {res['rss_peak_mib']} -> {res['rss_after_mib']} MiB"
                   if "rss_before_mib" in res else "")
            print(f"  {res['scenario']}: {res['statuses']}{mem}", flush=True)
            out["scenarios"].append(res)
        if malformed:
            res = asyncio.run(storm(server.url, good, malformed))
            print(f"  {res['scenario']}: {res['statuses']}; 5xx or dropped: {res['server_errors']}; "
                  f"/ready after: {res['ready_after']}", flush=True)
            out["scenarios"].append(res)
        res = explain_flood(server, good)
        print(f"  {res['scenario']}: /predict p99 idle {res['predict_idle_p99_ms']} ms, beside the flood "
              f"{res['predict_flood_p99_ms']} ms ({res['p99_ratio']} x; target <= 3); {res['statuses']}", flush=True)
        out["explain_flood"] = res
        if mixed:
            res = asyncio.run(mixed_rss(server, good, mixed))
            print(f"  {res['scenario']}: RSS {res['rss_before_mib']} -> peak {res['rss_peak_mib']} -> "
                  f"{res['rss_after_mib']} MiB; every 250: {res['rss_every_250_mib']}; 5xx: {res['server_errors']}",
                  flush=True)
            out["mixed"] = res
        out["memory_end"] = {k: round(v / MiB, 1) for k, v in server.memory().items()}
        out["load_average_end"] = load_average()
        return out
    finally:
        server.stop()


# ---------------------------------------------------------------------------------- report
def readme_table(results: dict) -> str:
    """The README's serving table (markdown) from a results file's content."""
    lines = ["| server | concurrency | p50 ms | p95 ms | p99 ms | x floor (p50) | clips/s | server CPU ms/clip "
             "| client CPU ms/request |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rows in results["levels"].items():
        label = ("HTTP floor (no model)" if name == "floor" else f"tympan serve --backend {name}"
                 if name in ("onnx", "torchscript", "eager", "auto") else f"tympan serve ({name})")
        if name == "baseline":
            label = f"before this change ({results.get('baseline', 'baseline')}, defaults)"
        for r in rows:
            errors = sum(r["errors"].values()) if r["errors"] else 0
            err = f" ({errors} errors)" if errors else ""
            client = f"{r['client_cpu_ms_per_request']:.2f}" if "client_cpu_ms_per_request" in r else ""
            lines.append(f"| {label} | {r['concurrency']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} "
                         f"| {r.get('p50_over_floor', 1.0):.2f} | {r['clips_per_s']:.0f}{err} "
                         f"| {r['server_cpu_ms_per_clip']:.1f} | {client} |")
    m = results["machine"]
    lines.append("")
    lines.append(f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, onnxruntime {m['onnxruntime']}; load average "
                 f"{m['load_average_start']} at the start ({results['requests']} requests per level and server, "
                 f"{results['rounds']} interleaved rounds).")
    if results.get("abuse"):
        lines.append("")
        lines.append("| abuse scenario | statuses | server RSS before -> peak -> after (MiB) |")
        lines.append("|---|---|---|")
        for s in results["abuse"]["scenarios"]:
            mem = (f"{s['rss_before_mib']} -> {s['rss_peak_mib']} -> {s['rss_after_mib']}"
                   if "rss_before_mib" in s else "")
            statuses = ", ".join(f"{k}: {v}" for k, v in s["statuses"].items())
            if "request_series_after" in s:
                statuses += f" (request series {s['request_series_before']} -> {s['request_series_after']})"
            if "server_errors" in s:
                statuses += f" (5xx or dropped: {s['server_errors']})"
            for key, label in (("took_s", "in {} s"), ("all_closed_within_s", "all closed within {} s"),
                               ("still_open", "{} still open"), ("squatters_cut_within_s", "squatters cut within {} s"),
                               ("health_worst_ms", "slowest /health meanwhile {} ms")):
                if key in s:
                    statuses += f"; {label.format(s[key])}"
            lines.append(f"| {s['scenario']} | {statuses} | {mem} |")
        mixed, flood = results["abuse"].get("mixed"), results["abuse"].get("explain_flood")
        if mixed:
            statuses = ", ".join(f"{k}: {v}" for k, v in mixed["statuses"].items())
            lines.append(f"| {mixed['scenario']} | {statuses} (5xx other than explain's 503: "
                         f"{mixed['server_errors']}; RSS every 250: {', '.join(map(str, mixed['rss_every_250_mib']))})"
                         f" | {mixed['rss_before_mib']} -> {mixed['rss_peak_mib']} -> {mixed['rss_after_mib']} |")
        if flood:
            statuses = ", ".join(f"{k}: {v}" for k, v in flood["statuses"].items())
            lines.append(f"| {flood['scenario']} | /predict p50/p99 idle {flood['predict_idle_p50_ms']}/"
                         f"{flood['predict_idle_p99_ms']} ms, beside the flood {flood['predict_flood_p50_ms']}/"
                         f"{flood['predict_flood_p99_ms']} ms: p99 {flood['p99_ratio']} x (target <= 3); {statuses} | "
                         f"{flood['rss_before_mib']} -> {flood['rss_peak_mib']} -> {flood['rss_after_mib']} |")
        m2 = results["abuse"].get("machine")
        if m2:
            lines.append("")
            lines.append(f"Abuse scenarios run {'with the load levels' if not m2.get('separate') else 'on their own'}"
                         f" (`--only-abuse`): load average {m2['load_average_start']} at their start, "
                         f"{results['abuse'].get('load_average_end')} at their end.")
    return "\n".join(lines)


README_START, README_END = "<!-- serving-table: start -->", "<!-- serving-table: end -->"


def update_readme(results: dict, readme: Path = REPO / "README.md") -> bool:
    """Replace the text between the README's serving-table markers; True when it changed."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    new = text[:start] + "\n" + readme_table(results) + "\n" + text[end:]
    if new != text:
        readme.write_text(new, encoding="utf-8")
    return new != text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / "tympan" / "assets" / "default")
    ap.add_argument("--backends", default=None,
                    help="comma-separated backends to compare (default: onnx,torchscript,eager; onnx when installed)")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TYMPAN_ESC50_DIR", DEFAULT_DATA)))
    ap.add_argument("--requests", type=int, default=200, help="requests per concurrency level and server")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds per level")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--no-floor", action="store_true", help="skip the HTTP floor")
    ap.add_argument("--no-abuse", action="store_true", help="skip the abuse scenarios")
    ap.add_argument("--malformed", type=int, default=1000, help="mixed good/malformed requests (0: skip)")
    ap.add_argument("--mixed", type=int, default=2000,
                    help="mixed predict/explain/4xx requests with the server's RSS traced (0: skip)")
    ap.add_argument("--only-abuse", action="store_true",
                    help="run only the abuse scenarios, the explain flood and the mixed requests; with --out, "
                         "merge them into that results file (its load levels are kept)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                    help="also run tympan serve with these arguments under this name, e.g. "
                         "'onnx-1t=--backend onnx --torch-threads 1' (repeatable)")
    ap.add_argument("--baseline", type=Path, default=None, metavar="SRC",
                    help="also run the tympan of another checkout (e.g. `git archive <commit>` unpacked in SRC) "
                         "with its defaults, as 'baseline': before and after in the same run")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra argument for every tympan serve, e.g. --server-arg=--max-batch-size=8")
    ap.add_argument("--out", type=Path, default=None, help="write the results here (JSON)")
    ap.add_argument("--table", type=Path, default=None, metavar="RESULTS",
                    help="print the README table of a results file and exit")
    ap.add_argument("--update-readme", type=Path, default=None, metavar="RESULTS",
                    help="rewrite README.md's serving table from a results file and exit")
    args = ap.parse_args()

    if args.table or args.update_readme:
        results = json.loads((args.table or args.update_readme).read_text())
        if args.table:
            print(readme_table(results))
        else:
            print("README.md updated" if update_readme(results) else "README.md already up to date")
        return 0

    if args.backends:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    else:
        try:
            import onnxruntime  # noqa: F401

            backends = ["onnx", "torchscript", "eager"]
        except ImportError:
            backends = ["torchscript", "eager"]
    levels = [int(c) for c in args.concurrency.split(",")]
    data = clips(args.data_dir, 64)
    info = machine()
    if args.only_abuse:
        return only_abuse(args, backends[0], data[0][1], info)
    print(f"machine: {info}")
    print(f"bundle: {describe_bundle(args.bundle)}")
    print(f"clips: {len(data)} real ESC-50 clips from {args.data_dir} (POST /predict/file, multipart)")

    servers = [] if args.no_floor else [Server.floor()]
    servers += [Server.tympan(b, args.bundle, ["--backend", b, *args.server_arg]) for b in backends]
    if args.baseline:
        base = args.baseline.resolve()
        servers.append(Server("baseline", [sys.executable, "-m", "tympan", "serve", "--bundle", str(args.bundle),
                                           "--log-level", "warning"], {"PYTHONPATH": str(base)}))
    for v in args.variant:
        name, _, extra = v.partition("=")
        servers.append(Server.tympan(name.strip(), args.bundle, [*extra.split(), *args.server_arg]))
    try:
        for s in servers:
            s.wait_ready()
        for s in servers:
            if s.backend_line:
                print(f"{s.name}: {s.backend_line}")
        for s in servers:  # warm connections, caches and each thread's first calls
            asyncio.run(run_batch(s.url, data, 0, 32, 4))
        levels_out = measure(servers, data, levels, args.requests, args.rounds)
        chosen = {s.name: s.backend_line for s in servers if s.backend_line}
    finally:
        for s in servers:
            s.stop()

    results = {"machine": info, "bundle": describe_bundle(args.bundle), "requests": args.requests,
               "rounds": args.rounds, "server_args": args.server_arg, "targets": TARGETS,
               "backend_selection": chosen, "levels": levels_out,
               "baseline": os.environ.get("TYMPAN_BASELINE_LABEL", "baseline") if args.baseline else None,
               "load_average_end": load_average()}
    for name, rows in levels_out.items():
        if name == "floor":
            continue
        by_c = {r["concurrency"]: r for r in rows}
        checks = []
        if 1 in by_c:
            checks.append(f"p50 c1 {by_c[1]['p50_ms']:.1f} ms (target <= {TARGETS['p50_c1_ms']:g}; "
                          f"{by_c[1].get('p50_over_floor', float('nan')):.2f} x floor)")
            checks.append(f"p99 c1 {by_c[1]['p99_ms']:.1f} ms (target <= {TARGETS['p99_c1_ms']:g})")
        if 16 in by_c:
            checks.append(f"c16 {by_c[16]['clips_per_s']:.1f} clips/s (target >= {TARGETS['clips_per_s_c16']:g})")
        print(f"{name}: " + "; ".join(checks))
    if not args.no_abuse:
        print(f"abuse scenarios (tympan serve --backend {backends[0]}):")
        results["abuse"] = abuse(args.bundle, backends[0], data[0][1], args.malformed)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    print()
    print(readme_table(results))
    bad = any(s.get("server_errors") for s in (results.get("abuse") or {}).get("scenarios", []))
    return 1 if bad else 0


def only_abuse(args: argparse.Namespace, backend: str, good: bytes, info: dict) -> int:
    """``--only-abuse``: the abuse part alone, merged into ``--out`` when that file exists."""
    print(f"machine: {info}")
    print(f"abuse scenarios (tympan serve --backend {backend}):")
    res = abuse(args.bundle, backend, good, args.malformed, args.mixed)
    res["machine"] = {**info, "separate": True}
    results = json.loads(args.out.read_text()) if args.out and args.out.is_file() else {}
    results["abuse"] = res
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}" + (" (merged: load levels kept)" if "levels" in results else ""))
    bad = any(s.get("server_errors") for s in [*res["scenarios"], res.get("mixed") or {}])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
