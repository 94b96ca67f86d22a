"""Library warnings, counted: one line per kind at the end of a run, never one per file.

librosa warns ``n_fft=2048 is too large for input signal of length=1000`` for every short clip;
on 20,000 tiny files that buried the run's own output. :func:`counted` tallies every warning by
kind (category, module, message with its numbers blanked) and prints each kind once, with its
count. Worker processes tally their own (:func:`install`, :func:`drain`) and send the counts to
the parent (:func:`merge`).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["counted", "drain", "install", "merge"]

_TALLY: Counter[str] = Counter()
_NUMBER = re.compile(r"\d+(\.\d+)?")


def _kind(message: Warning | str, category: type[Warning], filename: str) -> str:
    module = re.sub(r"^.*?site-packages/", "", filename).split("/")[0].removesuffix(".py")
    text = _NUMBER.sub("N", str(message)).strip().splitlines()[0][:200] if str(message).strip() else ""
    return f"{module} {category.__name__}: {text}"


def _record(message: Warning | str, category: type[Warning], filename: str, lineno: int,
            file: Any = None, line: str | None = None) -> None:
    _TALLY[_kind(message, category, filename)] += 1


def install() -> None:
    """From now on every warning in this process is counted, not printed."""
    warnings.simplefilter("always")  # count each occurrence (the default filter would hide repeats)
    warnings.showwarning = _record


def drain() -> dict[str, int]:
    """The counts so far (and reset them): what a worker sends back with a finished file."""
    out = dict(_TALLY)
    _TALLY.clear()
    return out


def merge(counts: Mapping[str, int] | None) -> None:
    for k, n in (counts or {}).items():
        _TALLY[str(k)] += int(n)


@contextmanager
def counted(prog: str, stream: TextIO | None = None) -> Iterator[None]:
    """Count warnings while the block runs; then print each kind once (``prog: N x kind``)."""
    saved = warnings.showwarning
    with warnings.catch_warnings():
        install()
        try:
            yield
        finally:
            warnings.showwarning = saved
            counts = drain()
            out = stream or sys.stderr
            for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]):
                print(f"{prog}: library warning ({n} time{'s' if n != 1 else ''}): {kind}", file=out)
