"""The shared progress line of long jobs: the figures a field user needs, only on a terminal."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import sys
import termios

import pytest

from tympan.progress import JobProgress


def test_the_line_names_audio_speed_eta_and_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a 160-column terminal
    tty = os.fdopen(slave, "w", buffering=1)
    monkeypatch.setattr(sys, "stderr", tty)
    try:
        with JobProgress(4, "diagnose", total_audio_s=4 * 3600.0) as p:
            p.done(3600.0)
            p.done(0.0, ok=False, error="bad.wav: not audio")
            line = p.status()
            assert not p.bar.disable  # a terminal: the bar shows
        tty.flush()
        chunks = []
        while select.select([master], [], [], 0.2)[0]:  # everything written so far, in pieces
            chunks.append(os.read(master, 65536))
        shown = b"".join(chunks).decode(errors="replace")
    finally:
        tty.close()
        os.close(master)
    assert line.startswith("1.00 h audio, ") and "x real time" in line and "ETA " in line
    assert line.endswith("1 failed") and "tympan: error: bad.wav: not audio" in shown
    assert "2/4" in shown and "h audio" in shown and "1 failed" in shown


def test_quiet_and_not_a_terminal_show_no_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    for quiet in (True, False):  # a StringIO is not a TTY
        with JobProgress(2, quiet=quiet) as p:
            p.done(5.0)
            assert p.bar.disable and p.files == 1 and p.eta_s() is not None
    assert "it/s" not in pipe.getvalue() and "file/s" not in pipe.getvalue()


def test_eta_reads_in_minutes_then_hours() -> None:
    from tympan.progress import format_eta

    assert format_eta(None) == "ETA ?" and format_eta(-3) == "ETA 0:00"
    assert format_eta(725.9) == "ETA 12:05" and format_eta(2 * 3600 + 5 * 60 + 3) == "ETA 2:05:03"
