"""``tympan up``: the API and the dashboard together, on the shipped model (the README's main job).

Starts ``tympan serve`` and ``tympan dashboard`` as child processes, waits until the API is
ready, classifies one example clip through it so the user sees the whole path work, prints
the URLs, and stops both on Ctrl-C. ``--check`` exits after that first prediction.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tympan.errors import TympanError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start the API and the dashboard on the shipped model")
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: the shipped one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--api-port", type=int, default=8000)
    p.add_argument("--dashboard-port", type=int, default=8501)
    p.add_argument("--example", type=Path, default=None, help="clip to classify once the API is up")
    p.add_argument("--check", action="store_true", help="exit after the first prediction (for scripts and CI)")
    p.add_argument("--no-dashboard", action="store_true")
    p.set_defaults(func=cmd_up)


def _wait_ready(url: str, procs: list[subprocess.Popen], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise TympanError(f"{' '.join(map(str, p.args[:4]))} exited with code {p.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TympanError(f"{url} not ready after {timeout:.0f} s")


def _example_clip(explicit: Path | None) -> Path | None:
    if explicit:
        return explicit
    data = os.environ.get("TYMPAN_ESC50_DIR")
    candidates = [Path(data)] if data else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data" / "esc50")
    for root in candidates:
        clips = sorted((root / "audio").glob("*-0.*")) if (root / "audio").is_dir() else []
        if clips:
            return clips[0]
    return None


def cmd_up(args: argparse.Namespace) -> int:
    api = f"http://{args.host}:{args.api_port}"
    serve = [sys.executable, "-m", "tympan", "serve", "--host", args.host, "--port", str(args.api_port)]
    if args.bundle:
        serve += ["--bundle", str(args.bundle)]
    procs = [subprocess.Popen(serve)]
    try:
        if not args.no_dashboard:
            procs.append(subprocess.Popen([
                sys.executable, "-m", "tympan", "dashboard", "--port", str(args.dashboard_port),
                "--api-url", api,
            ]))
        _wait_ready(f"{api}/ready", procs)
        print(f"API        {api}  (docs: {api}/docs)")
        if not args.no_dashboard:
            _wait_ready(f"http://{args.host}:{args.dashboard_port}/_stcore/health", procs)
            print(f"dashboard  http://{args.host}:{args.dashboard_port}")
        clip = _example_clip(args.example)
        if clip is not None:
            body = json.dumps({"audio_base64": base64.b64encode(clip.read_bytes()).decode(), "top_k": 3}).encode()
            req = urllib.request.Request(f"{api}/predict", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                result = json.load(r)
            top = ", ".join(f"{c['label']} {c['probability']:.2f}" for c in result["top_k"])
            flag = " [out of distribution]" if result["ood"]["out_of_distribution"] else ""
            print(f"example    {clip.name}: {top}{flag}")
        if args.check:
            return 0
        print("Ctrl-C stops both.")
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
