"""Load test of the real server: latency and throughput per bundle, then a malformed-input storm.

Starts ``tympan serve`` as a subprocess for each bundle, sends real ESC-50 clips with httpx
(``POST /predict/file``) at each concurrency level, and prints p50/p95/p99 latency (client
side, end to end), throughput, error counts and the server's CPU time per clip (user + system
of the server process: what a clip costs, even when other processes share the cores), with the
machine and the bundles. Then it
sends a mix of good and malformed requests and reports the 5xx count and whether the server
is still ready.

    .venv/bin/python benchmarks/serve_load.py                       # shipped default bundle
    .venv/bin/python benchmarks/serve_load.py --bundle runs/resnet18/bundle --requests 300
    .venv/bin/python benchmarks/serve_load.py --random cnn --random mn04   # random weights: the archs' cost

Targets on a 2-core CPU: p50 <= 20 ms and p99 <= 60 ms per 5-s clip at concurrency 1,
>= 100 clips/s at concurrency 16. The client runs on the same machine and takes CPU too.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "esc50"
TARGETS = {"p50_c1_ms": 20.0, "p99_c1_ms": 60.0, "clips_per_s_c16": 100.0}


from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def machine() -> str:
    cpu = cpu_model()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {cores} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"load average at start {load:.2f}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clips(data_dir: Path, n: int) -> list[tuple[str, bytes]]:
    audio = data_dir / "audio" if (data_dir / "audio").is_dir() else data_dir
    files = sorted(p for p in audio.iterdir() if p.suffix.lower() in {".wav", ".flac", ".ogg", ".mp3"})
    if not files:
        raise SystemExit(f"{audio}: no audio clips (pass --data-dir)")
    random.Random(0).shuffle(files)
    return [(p.name, p.read_bytes()) for p in files[:n]]


def random_bundle(dest: Path, arch: str) -> Path:
    """Random weights, 50 classes, the arch's usual front end: the cost of serving that arch."""
    import torch

    from tympan.bundle import Bundle
    from tympan.features import FrontendConfig
    from tympan.models import build_model

    torch.manual_seed(0)
    params = {"width": 32} if arch == "cnn" else {}
    model = build_model(arch, n_classes=50, **params).eval()
    frontend = FrontendConfig.efficientat() if arch == "mn04" else FrontendConfig()
    return Bundle(model=model, arch=arch, arch_params=params, classes=[f"class{i}" for i in range(50)],
                  frontend=frontend, name=f"random-{arch}").save(dest)


def describe_bundle(path: Path) -> str:
    from tympan.bundle import load_bundle

    b = load_bundle(path)
    n = sum(p.numel() for p in b.model.parameters())
    fe = b.frontend
    return (f"{b.name} ({b.arch} {b.arch_params}, {n / 1e6:.2f} M params; front end {fe.name}: "
            f"{fe.sample_rate} Hz, {fe.n_mels} mels x {fe.n_frames} frames per {fe.clip_seconds:g}-s clip)")


class Server:
    def __init__(self, bundle: Path, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "tympan", "serve", "--bundle", str(bundle), "--port", str(self.port),
               "--log-level", "warning", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: {self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit("server did not become ready")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux; NaN elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def run_level(url: str, data: list[tuple[str, bytes]], n: int, concurrency: int) -> dict:
    latencies: list[float] = []
    server_ms: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            for i in counter:
                name, body = data[i % len(data)]
                t = time.perf_counter()
                try:
                    r = await client.post("/predict/file", files={"file": (name, body)})
                    status = str(r.status_code)
                    if r.status_code == 200:
                        server_ms.append(r.json()["timing_ms"])
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                latencies.append((time.perf_counter() - t) * 1000)
                if status != "200":
                    errors[status] = errors.get(status, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - start
    q = np.percentile(latencies, [50, 95, 99])
    return {"concurrency": concurrency, "n": n, "p50": q[0], "p95": q[1], "p99": q[2],
            "server_p50": statistics.median(server_ms) if server_ms else float("nan"),
            "rps": n / wall, "errors": errors}


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
    zero_rate = bytes(wav[:24] + b"\0\0\0\0" + wav[28:])
    seven_hz = bytes(wav[:24] + (7).to_bytes(4, "little") + wav[28:])
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
        ("0 Hz header", f(zero_rate)),
        ("7 Hz header", f(seven_hz)),
        ("bad base64", {"json": {"audio_base64": "%%%not-base64%%%"}}),
        ("top_k 0", {"json": {"audio_base64": b64, "top_k": 0}}),
        ("top_k 1000", {"json": {"audio_base64": b64, "top_k": 1000}}),
        ("broken json", {"content": b'{"audio_base64": ', "headers": {"content-type": "application/json"}}),
        ("wrong type", {"json": {"audio_base64": 42}}),
        ("no file field", {"data": {"top_k": "3"}}),
    ]


async def storm(url: str, good: bytes, n: int, concurrency: int = 8) -> dict:
    cases = malformed_cases(good)
    rng = random.Random(0)
    plan = [cases[rng.randrange(len(cases))] for _ in range(n)]
    by_status: dict[str, int] = {}
    by_case: dict[str, set] = {}
    it = iter(plan)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def worker() -> None:
            for name, kwargs in it:
                path = "/predict" if "json" in kwargs or "content" in kwargs else "/predict/file"
                try:
                    r = await client.post(path, **kwargs)
                    status = str(r.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                by_status[status] = by_status.get(status, 0) + 1
                by_case.setdefault(name, set()).add(status)

        await asyncio.gather(*[worker() for _ in range(concurrency)])
        ready = (await client.get("/ready")).status_code
        metrics = (await client.get("/metrics")).text
    five = sum(v for k, v in by_status.items() if k.startswith("5") or not k.isdigit())
    served_500 = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                     if line.startswith("tympan_requests_total") and 'status="500"' in line)
    return {"n": n, "by_status": by_status, "by_case": {k: sorted(v) for k, v in by_case.items()},
            "server_errors": five, "server_500_metric": served_500, "ready_after": ready}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", type=Path, default=[],
                    help="bundle to test (repeatable); default: the shipped default bundle")
    ap.add_argument("--random", action="append", default=[], metavar="ARCH",
                    help="also test a random-weights bundle of ARCH (cnn: width 32 + default front end; "
                         "mn04: EfficientAT front end): what serving that arch costs; repeatable")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TYMPAN_ESC50_DIR", DEFAULT_DATA)))
    ap.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--malformed", type=int, default=1000, help="mixed good/malformed requests (0: skip)")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra argument for tympan serve, e.g. --server-arg=--max-batch-size=8")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    bundles: list[Path] = list(args.bundle)
    tmp = Path(tempfile.mkdtemp(prefix="tympan-bench-"))
    if not bundles and not args.random:
        default = REPO / "tympan" / "assets" / "default"
        if (default / "bundle.json").is_file():
            bundles.append(default)
        else:
            print("no shipped default bundle; using random-weights cnn and mn04 bundles")
            args.random = ["cnn", "mn04"]
    for arch in args.random:
        bundles.append(random_bundle(tmp / f"random-{arch}", arch))

    levels = [int(c) for c in args.concurrency.split(",")]
    data = clips(args.data_dir, max(64, args.requests))
    print(f"machine: {machine()}")
    print(f"server: tympan serve {' '.join(args.server_arg) or '(defaults)'}; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', 'PASSIVE (tympan serve default)')}")
    print(f"clips: {len(data)} real ESC-50 clips from {args.data_dir} (POST /predict/file, multipart)")
    results = []
    for bundle in bundles:
        print(f"bundle: {describe_bundle(bundle)}")
        server = Server(bundle, args.server_arg)
        try:
            server.wait_ready()
            asyncio.run(run_level(server.url, data, 20, 4))  # warm the connection pool and caches
            rows = []
            for c in levels:
                cpu0 = server.cpu_seconds()
                row = asyncio.run(run_level(server.url, data, args.requests, c))
                row["server_cpu_ms"] = (server.cpu_seconds() - cpu0) * 1000 / row["n"]
                rows.append(row)
            results.append({"bundle": str(bundle), "describe": describe_bundle(bundle), "levels": rows})
            s = asyncio.run(storm(server.url, data[0][1], args.malformed)) if args.malformed else None
            results[-1]["storm"] = s
        finally:
            server.stop()

    print()
    print("| bundle | concurrency | requests | p50 ms | p95 ms | p99 ms | server p50 ms | clips/s "
          "| server CPU ms/clip | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for res in results:
        name = Path(res["bundle"]).name
        for r in res["levels"]:
            err = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
            print(f"| {name} | {r['concurrency']} | {r['n']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} "
                  f"| {r['server_p50']:.1f} | {r['rps']:.1f} | {r['server_cpu_ms']:.1f} | {err} |")
    for res in results:
        rows = {r["concurrency"]: r for r in res["levels"]}
        checks = []
        if 1 in rows:
            checks.append(f"p50 c1 {rows[1]['p50']:.1f} ms (target <= {TARGETS['p50_c1_ms']:g})")
            checks.append(f"p99 c1 {rows[1]['p99']:.1f} ms (target <= {TARGETS['p99_c1_ms']:g})")
        if 16 in rows:
            checks.append(f"c16 {rows[16]['rps']:.1f} clips/s (target >= {TARGETS['clips_per_s_c16']:g})")
        print(f"{Path(res['bundle']).name}: " + "; ".join(checks))
        s = res.get("storm")
        if s:
            print(f"{Path(res['bundle']).name}: {s['n']} mixed good/malformed requests -> statuses {s['by_status']}; "
                  f"server errors (5xx or dropped): {s['server_errors']}; /ready afterwards: {s['ready_after']}")
            for case, statuses in sorted(s["by_case"].items()):
                print(f"    {case:16s} {', '.join(statuses)}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "results": results}, indent=2, default=str))
    shutil.rmtree(tmp, ignore_errors=True)
    bad = any((r.get("storm") or {}).get("server_errors", 0) for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
