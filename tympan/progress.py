"""The progress line of long jobs: files and audio hours done, x real time, ETA, failures so far.

One helper for every command that works through many recordings (``predict``, ``diagnose``,
``calibrate``, ``adapt``; see the module's users), so a field user reads the same figures
everywhere; ``train`` shows its epochs with the same ETA format (:func:`format_eta`). It writes to
stderr through tqdm and is silent with ``quiet`` or when stderr is not a terminal (logs and
pipes get the commands' one-line summaries instead).
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Self


def format_eta(seconds: float | None) -> str:
    """``ETA 12:05`` under an hour, ``ETA 2:05:03`` beyond (``ETA ?`` while unknown): one format
    for every progress line, so a long run reads in hours rather than hundreds of minutes."""
    if seconds is None:
        return "ETA ?"
    s = max(int(seconds), 0)
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    return f"ETA {h}:{m:02d}:{sec:02d}" if h else f"ETA {m}:{sec:02d}"


class JobProgress:
    """``with JobProgress(n_files, "diagnose") as p: ... p.done(seconds, ok=...)``.

    ``total_audio_s``: the audio the job will read, when known (file headers), so the ETA
    follows audio rather than file counts (one 2-hour file among 5-s clips). ``unit``: what one
    ``done`` counts (a ``file``; a ``corruption`` of the robustness sweep, each over every clip).
    """

    def __init__(self, total_files: int, desc: str = "", *, quiet: bool = False,
                 total_audio_s: float | None = None, leave: bool = True, unit: str = "file") -> None:
        from tqdm import tqdm

        self.total_files, self.total_audio_s = int(total_files), total_audio_s
        self.files = self.failed = 0
        self.audio_s = 0.0
        self.quiet = quiet
        self.started = time.perf_counter()
        # disable=None: tqdm stays quiet when stderr is not a TTY
        self.bar = tqdm(total=self.total_files, desc=desc or None, unit=unit, file=sys.stderr,
                        disable=True if quiet else None, dynamic_ncols=True, leave=leave)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def speed(self) -> float:
        """Audio seconds per wall second so far (x real time)."""
        return self.audio_s / max(time.perf_counter() - self.started, 1e-9)

    def eta_s(self) -> float | None:
        """Seconds left: by audio when its total is known, else by files."""
        wall = time.perf_counter() - self.started
        if self.total_audio_s and self.audio_s > 0:
            return max(self.total_audio_s - self.audio_s, 0.0) / max(self.speed, 1e-9)
        if self.files:
            return (self.total_files - self.files) * wall / self.files
        return None

    def status(self) -> str:
        """``0.52 h audio, 640x real time, ETA 0:12, 1 failed``."""
        eta = self.eta_s()
        parts = [f"{self.audio_s / 3600:.2f} h audio", f"{self.speed:.0f}x real time"]
        if eta is not None:
            parts.append(format_eta(eta))
        parts.append(f"{self.failed} failed")
        return ", ".join(parts)

    def done(self, audio_s: float = 0.0, *, ok: bool = True, error: str | None = None) -> None:
        """One file finished (``ok=False``: it could not be analysed; ``error`` is printed unless
        quiet, where the closing list names each failure once)."""
        self.files += 1
        self.audio_s += float(audio_s or 0.0)
        if not ok:
            self.failed += 1
            if error and not self.quiet:
                self.write(f"tympan: error: {error}")
        self.bar.set_postfix_str(self.status(), refresh=False)
        self.bar.update(1)

    def write(self, line: str) -> None:
        """A line above the bar (or plain to stderr when the bar is off)."""
        self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()

