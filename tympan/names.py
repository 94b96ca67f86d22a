"""File names and text cells as outputs show them: printable, lossless, spreadsheet-safe.

A POSIX file name is bytes. Python hands undecodable bytes over as lone surrogates
(``surrogateescape``), which no UTF-8 writer accepts, and a name may hold a newline or start
with ``=``. Outputs therefore carry a *display form* (valid UTF-8 on one line: undecodable bytes
as ``\\xNN``, control characters escaped) and, where that form is not the name itself, the exact
bytes in base64 (:func:`raw_name_b64`), so no name is lost and none stops a run.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["FORMULA_PREFIXES", "display_name", "name_fields", "printable", "printable_streams", "raw_name_b64",
           "spreadsheet_cell"]

#: OWASP CSV injection: a cell starting with one of these is taken as a formula by spreadsheets
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def display_name(name: str | os.PathLike[str]) -> str:
    """``name`` as valid UTF-8 on one line: undecodable bytes as ``\\xNN``, controls as ``\\n``/``\\xNN``."""
    text = os.fspath(name)
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file system byte gives: escape it as text
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def raw_name_b64(name: str | os.PathLike[str]) -> str | None:
    """Base64 of the name's bytes when :func:`display_name` changed it (None: the name is its display)."""
    text = os.fspath(name)
    if display_name(text) == text:
        return None
    try:
        raw = os.fsencode(text)
    except UnicodeEncodeError:  # not a name a file system gave: keep what can be kept
        raw = text.encode("utf-8", "surrogatepass")
    return base64.b64encode(raw).decode("ascii")


def name_fields(name: str | Path) -> dict[str, Any]:
    """The ``file`` / ``file_b64`` pair every table and report row carries."""
    return {"file": display_name(name), "file_b64": raw_name_b64(name)}


def spreadsheet_cell(value: Any) -> Any:
    """A text cell that starts like a formula gets a leading ``'`` (OWASP); other values pass as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def printable(obj: Any) -> Any:
    """``obj`` with every string that no UTF-8 writer takes (lone surrogates) in its display form."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return display_name(obj)
        return obj
    if isinstance(obj, dict):
        return {printable(k): printable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [printable(v) for v in obj]
    return obj


def printable_streams() -> None:
    """stdout/stderr print an undecodable name as ``\\xNN`` instead of failing the command."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a closed or non-text stream
                pass
