"""``tympan serve``, ``tympan dashboard`` and ``tympan up`` on taken ports, and whom ``up`` trusts.

Ports are occupied by a plain listening socket; the commands run as subprocesses and must
exit 2 with ONE line naming the port and the option that changes it (no traceback).
"""

from __future__ import annotations

import argparse
import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from tympan.errors import TympanError
from helpers import free_port  # noqa: E402

MiB = 1024 * 1024


@pytest.fixture()
def occupied():
    """A port on 127.0.0.1 held by a plain listening socket (nothing answers HTTP on it)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def tympan(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tympan", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def assert_one_line(result: subprocess.CompletedProcess, port: int, option: str) -> None:
    err = result.stderr
    assert result.returncode == 2, (result.returncode, err[-2000:])
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("tympan: error: ") and f"port {port}" in err and option in err, err


def test_serve_on_a_taken_port(occupied: int) -> None:
    result = tympan("serve", "--host", "127.0.0.1", "--port", str(occupied))
    assert_one_line(result, occupied, "--port")
    assert "already in use" in result.stderr


def test_dashboard_on_a_taken_port(occupied: int) -> None:
    pytest.importorskip("streamlit")
    result = tympan("dashboard", "--headless", "--address", "127.0.0.1", "--port", str(occupied))
    assert_one_line(result, occupied, "--port")


def test_up_on_a_taken_api_port(occupied: int) -> None:
    result = tympan("up", "--check", "--no-dashboard", "--api-port", str(occupied))
    assert_one_line(result, occupied, "--api-port")


def test_up_on_a_taken_dashboard_port(occupied: int) -> None:
    result = tympan("up", "--check", "--api-port", str(free_port()), "--dashboard-port", str(occupied))
    assert_one_line(result, occupied, "--dashboard-port")


def test_dashboard_upload_limit_is_the_api_body_limit() -> None:
    from tympan.dashboard.cli import build_command, upload_limit_mb
    from tympan.serving.settings import Settings

    assert upload_limit_mb({}) * MiB == Settings.from_env({}).max_body_bytes  # 20 MiB both
    env = {"TYMPAN_MAX_BODY_BYTES": str(8 * MiB)}
    assert upload_limit_mb(env) * MiB == Settings.from_env(env).max_body_bytes
    args = argparse.Namespace(port=8599, address=None, headless=True, api_url=None, data_dir=None, bundle=None)
    cmd, _ = build_command(args)
    limit = int(cmd[cmd.index("--server.maxUploadSize") + 1])
    assert limit * MiB == Settings.from_env().max_body_bytes


class _Impostor(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = b'{"status": "ready"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_up_does_not_trust_another_server_on_its_port() -> None:
    """A server that answers /ready 200 but is not the child (no token, not its socket) is refused."""
    from tympan import launch

    impostor = http.server.HTTPServer(("127.0.0.1", 0), _Impostor)
    port = impostor.server_address[1]
    thread = threading.Thread(target=impostor.serve_forever, daemon=True)
    thread.start()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        t0 = time.monotonic()
        with pytest.raises(TympanError, match=f"port {port} is answered by another server"):
            launch._wait_ready(f"http://127.0.0.1:{port}/ready", [child], child, port, "the-token", timeout=20)
        with pytest.raises(TympanError, match=f"port {port} is held by another process"):  # no token check
            launch._wait_ready(f"http://127.0.0.1:{port}/ready", [child], child, port, None, timeout=20)
        assert time.monotonic() - t0 < 20
    finally:
        child.kill()
        child.wait(5)
        impostor.shutdown()
        impostor.server_close()


def test_up_check_talks_to_its_own_children() -> None:
    """The whole ``tympan up --check``: both children, the token, the example prediction."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("streamlit")
    api, dash = free_port(), free_port()
    result = tympan("up", "--check", "--api-port", str(api), "--dashboard-port", str(dash),
                    "--max-body-bytes", str(8 * MiB), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"API        http://127.0.0.1:{api}" in result.stdout
    assert f"dashboard  http://127.0.0.1:{dash}" in result.stdout
