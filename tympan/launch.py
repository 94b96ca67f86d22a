"""``tympan up``: the API and the dashboard together, on the shipped model (the README's main job).

Starts ``tympan serve`` and ``tympan dashboard`` as child processes, waits until the API is
ready, classifies one example clip through it so the user sees the whole path work, prints
the URLs, and stops both on Ctrl-C. ``--check`` exits after that first prediction.

Both ports are checked before anything starts (one line and exit 2 when one is taken). The
readiness checks and the example prediction only trust the processes started here: the API
child gets a random ``TYMPAN_INSTANCE_TOKEN`` that every response of it carries in
``X-Tympan-Instance``, and on Linux the listening sockets must belong to the children.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tympan.errors import TympanError
from tympan.ports import check_port_free, listened_by

INSTANCE_HEADER = "X-Tympan-Instance"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up", help="start the API and the dashboard on the shipped model",
        description="Starts `tympan serve` and `tympan dashboard` together, waits until the API is ready, "
                    "classifies one example clip (of the bundle's held-out fold when an ESC-50 folder is found) "
                    "and prints the URLs; Ctrl-C stops both. The dashboard is given the same bundle and "
                    "ESC-50 folder, so its examples, training-data views and drift page use them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", type=Path, default=None,
                   help="model bundle (default: $TYMPAN_BUNDLE, else the shipped one)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="ESC-50 folder for the example clip and the dashboard "
                        "(default: $TYMPAN_ESC50_DIR, else ../shared/data/esc50 beside the checkout when present)")
    p.add_argument("--host", default="127.0.0.1", help="address both servers listen on")
    p.add_argument("--api-port", type=int, default=8000, help="port of the API")
    p.add_argument("--dashboard-port", type=int, default=8501, help="port of the dashboard")
    p.add_argument("--example", type=Path, default=None, help="clip to classify once the API is up")
    p.add_argument("--check", action="store_true", help="exit after the first prediction (for scripts and CI)")
    p.add_argument("--no-dashboard", action="store_true")
    p.add_argument("--max-body-bytes", type=int, default=None,
                   help="largest upload, for the API and the dashboard's upload widget alike (20 MiB)")
    p.set_defaults(func=cmd_up)


def _check_alive(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is not None:
            raise TympanError(f"{' '.join(map(str, p.args[:5]))} exited with code {p.returncode}")


def _check_ours(child: subprocess.Popen, port: int, response, token: str | None) -> None:
    """Refuse to go on talking to a server that is not ``child`` (another process on the port)."""
    if token is not None and response.headers.get(INSTANCE_HEADER) != token:
        raise TympanError(f"port {port} is answered by another server, not the one `tympan up` started")
    if listened_by(port, child.pid) is False:
        raise TympanError(f"port {port} is held by another process, not the one `tympan up` started")


def _wait_ready(url: str, procs: list[subprocess.Popen], child: subprocess.Popen, port: int,
                token: str | None = None, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(procs)
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    _check_ours(child, port, r, token)
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TympanError(f"{url} not ready after {timeout:.0f} s")


def _data_dir(explicit: Path | None) -> Path | None:
    """``--data-dir``, else ``$TYMPAN_ESC50_DIR``, else the copy a development checkout has beside it."""
    from tympan.datasets import locate_data_dir

    return locate_data_dir(explicit, Path(__file__).resolve().parents[2] / "shared" / "data" / "esc50")


def _example_clip(explicit: Path | None, bundle: str | Path | None = None,
                  root: Path | None = None) -> Path | None:
    """``--example``, else the first dog clip of the bundle's held-out fold (one it never trained on)."""
    if explicit:
        return explicit
    from tympan.bundle import read_metadata, resolve_bundle_dir

    clips = sorted((root / "audio").glob("*-0.*")) if root is not None and (root / "audio").is_dir() else []
    try:
        fold = (read_metadata(resolve_bundle_dir(bundle)).get("provenance") or {}).get("heldout_fold")
    except Exception:  # noqa: BLE001 - no bundle info: any clip will do as an example
        fold = None
    held = [c for c in clips if fold is not None and c.name.startswith(f"{fold}-")]
    return (held or clips or [None])[0]


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # `kill` stops both children as Ctrl-C does, leaving no orphaned server


def cmd_up(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    check_port_free(args.host, args.api_port, "--api-port")
    if not args.no_dashboard:
        if args.dashboard_port == args.api_port:
            raise TympanError(f"--api-port and --dashboard-port are both {args.api_port}; choose two ports")
        check_port_free(args.host, args.dashboard_port, "--dashboard-port")
    from tympan.bundle import resolve_bundle_dir

    bundle = resolve_bundle_dir(args.bundle).resolve()  # fails here, in one line, before anything starts
    data_dir = _data_dir(args.data_dir)
    api = f"http://{args.host}:{args.api_port}"
    token = secrets.token_hex(16)
    env = {**os.environ, "TYMPAN_INSTANCE_TOKEN": token}
    if args.max_body_bytes is not None:  # one setting for the API's limit and the upload widget's
        env["TYMPAN_MAX_BODY_BYTES"] = str(args.max_body_bytes)
    serve = [sys.executable, "-m", "tympan", "serve", "--host", args.host, "--port", str(args.api_port),
             "--bundle", str(bundle)]
    server = subprocess.Popen(serve, env=env)
    procs = [server]
    try:
        if not args.no_dashboard:
            dashboard = [sys.executable, "-m", "tympan", "dashboard", "--port", str(args.dashboard_port),
                         "--address", args.host, "--api-url", api, "--bundle", str(bundle)]
            if data_dir is not None:  # the same folder the example comes from: never retyped in the browser
                dashboard += ["--data-dir", str(data_dir.resolve())]
            procs.append(subprocess.Popen(
                dashboard, env={k: v for k, v in env.items() if k != "TYMPAN_INSTANCE_TOKEN"}))
        _wait_ready(f"{api}/ready", procs, server, args.api_port, token)
        print(f"API        {api}  (docs: {api}/docs)")
        if not args.no_dashboard:
            _wait_ready(f"http://{args.host}:{args.dashboard_port}/_stcore/health", procs, procs[1],
                        args.dashboard_port)
            print(f"dashboard  http://{args.host}:{args.dashboard_port}")
        clip = _example_clip(args.example, bundle, data_dir)
        if clip is not None:
            body = json.dumps({"audio_base64": base64.b64encode(clip.read_bytes()).decode(), "top_k": 3}).encode()
            req = urllib.request.Request(f"{api}/predict", data=body, headers={"Content-Type": "application/json"})
            _check_alive(procs)
            with urllib.request.urlopen(req, timeout=60) as r:
                _check_ours(server, args.api_port, r, token)
                result = json.load(r)
            top = ", ".join(f"{c['label']} {c['probability']:.2f}" for c in result["top_k"])
            flag = " [out of distribution]" if result["ood"]["out_of_distribution"] else ""
            if (result.get("background") or {}).get("background"):
                flag += " [background only]"
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
