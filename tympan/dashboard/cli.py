"""``tympan dashboard``: run the Streamlit dashboard from an install."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

from tympan.errors import TympanError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="open the Streamlit dashboard over a running tympan API",
                       description="Runs `python -m streamlit run` on the packaged dashboard app.")
    p.add_argument("--api-url", default=None,
                   help="the tympan API (default: $TYMPAN_API_URL or http://127.0.0.1:8000)")
    p.add_argument("--port", type=int, default=8501, help="port of the dashboard (default 8501)")
    p.add_argument("--address", default=None, help="address to listen on (default: Streamlit's)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="ESC-50 folder for examples and the training-data views (default: $TYMPAN_ESC50_DIR)")
    p.add_argument("--bundle", type=Path, default=None,
                   help="model bundle used by `diagnose` on the Field drift page (default: $TYMPAN_BUNDLE)")
    p.add_argument("--headless", action="store_true", help="do not open a browser")
    p.set_defaults(func=cmd_dashboard)


def upload_limit_mb(env: dict[str, str] | None = None) -> int:
    """The upload widget's limit (Streamlit's ``server.maxUploadSize``, MiB): the API's body limit.

    Both come from the same setting, ``TYMPAN_MAX_BODY_BYTES`` (default 20 MiB), so the
    dashboard never accepts a file the API would refuse as too large (rounded down to whole MiB).
    """
    from tympan.serving.settings import Settings

    return max(1, Settings.from_env(env).max_body_bytes // (1024 * 1024))


def build_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The ``streamlit run`` command line and environment for ``args``."""
    from tympan.dashboard import APP_PATH

    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_PATH), "--server.port", str(args.port),
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
           "--server.maxUploadSize", str(upload_limit_mb())]
    if args.address:
        cmd += ["--server.address", args.address]
    if args.headless:
        cmd += ["--server.headless", "true"]
    env = dict(os.environ)
    if args.api_url:
        env["TYMPAN_API_URL"] = args.api_url
    if args.data_dir:
        env["TYMPAN_ESC50_DIR"] = str(args.data_dir)
    if args.bundle:
        env["TYMPAN_BUNDLE"] = str(args.bundle)
    return cmd, env


def cmd_dashboard(args: argparse.Namespace) -> int:
    from tympan.ports import check_port_free

    check_port_free(args.address or "0.0.0.0", args.port, "--port")  # Streamlit's default: all interfaces
    if importlib.util.find_spec("streamlit") is None:
        raise TympanError("streamlit is not installed: pip install 'tympan[dashboard]'")
    if args.data_dir and not (args.data_dir / "meta" / "esc50.csv").is_file():
        raise TympanError(f"{args.data_dir}: not an ESC-50 folder (meta/esc50.csv is missing)")
    cmd, env = build_command(args)
    sys.stdout.flush()
    sys.stderr.flush()
    # Become Streamlit rather than wrap it: signals (Ctrl-C, `tympan up` stopping us, a test's
    # terminate()) then reach the server itself, and no orphaned Streamlit outlives us.
    os.execve(cmd[0], cmd, env)
    return 0  # not reached
