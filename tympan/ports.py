"""Ports: fail early with one line when a server's port is taken; find who listens on one."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from tympan.errors import TympanError


def check_port_free(host: str, port: int, option: str) -> None:
    """Raise a one-line :class:`TympanError` naming ``port`` and ``option`` unless it can be bound."""
    if not 1 <= port <= 65535:
        raise TympanError(f"port {port} is not a valid port (1..65535); choose another with {option} PORT")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and tornado bind
        try:
            s.bind((host, port))
        except socket.gaierror as exc:
            raise TympanError(f"cannot resolve the address {host!r} ({exc.strerror or exc})") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise TympanError(f"port {port} on {host} is already in use; choose another with {option} PORT") from None
            raise TympanError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                              f"choose another with {option} PORT") from None


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(parts[9])
    return inodes


def listened_by(port: int, pid: int) -> bool | None:
    """Whether process ``pid`` holds a socket listening on ``port`` (None: cannot tell here).

    Linux only (``/proc``); elsewhere None, and the caller relies on the port check made
    before the process started.
    """
    if not Path("/proc/net/tcp").exists():
        return None
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False
