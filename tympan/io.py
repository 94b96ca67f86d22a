"""Atomic writes: an interrupted run never leaves a file or folder that later reads as valid."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tympan.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(path: Path, directory: bool) -> None:
    """Give a temporary file or folder the mode a plain ``open``/``mkdir`` would have.

    mkstemp/mkdtemp create them owner-only (0600/0700); once renamed into place they must be
    readable as any other output (e.g. a bundle served by another user).
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def check_replaceable(target: str | Path) -> None:
    """Raise ``OutputError`` unless ``target`` is absent or a regular file (never a link, device, FIFO, folder).

    Renaming over a symbolic link to ``/proc/self/fd/1`` or over ``/dev/null`` would replace the
    node itself; a folder would give a traceback.
    """
    target = Path(target)
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        return
    kind = ("a folder" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode) else
            "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")
    name = os.fsencode(target).decode("utf-8", "backslashreplace")
    raise OutputError(f"{name}: is {kind}; refusing to replace it with an output file")


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    ``target`` must be absent or a regular file (:func:`check_replaceable`), checked before and
    again just before the rename.
    """
    target = Path(target)
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = target.parent / _temp_name(target, "tmp")
    tmp_path.touch(exist_ok=False)
    _default_mode(tmp_path, directory=False)
    try:
        yield tmp_path
        check_replaceable(target)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_npz_atomic(target: str | Path, **arrays: Any) -> None:
    """``numpy.savez`` to ``target`` atomically (no pickles: plain arrays only)."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def write_json_atomic(target: str | Path, data: Any) -> None:
    write_text_atomic(target, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _temp_name(target: Path, suffix: str) -> str:
    """``.NAME.<pid>.<random>.<suffix>``: the pid tells a later run whether the writer is gone."""
    return f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.{suffix}"


def _siblings(target: Path, suffix: str) -> list[Path]:
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(\d+)\.[0-9a-f]+\.{suffix}$")
    try:
        return [p for p in target.parent.iterdir() if pattern.match(p.name)]
    except OSError:
        return []


def _writer_pid(path: Path) -> int:
    return int(path.name.rsplit(".", 3)[-3])


def recover_dir(target: str | Path) -> bool:
    """Undo an interrupted :func:`replace_dir`; True when something was recovered or cleaned.

    After a kill between the two renames of the fallback switch, ``target`` is missing and the
    previous folder waits as ``.NAME.<pid>.<rand>.old``: it is moved back. Temporaries
    (``.tmp``/``.old``) whose writer process is gone are removed. Never raises (read-only
    locations are left as they are).
    """
    target = Path(target)
    changed = False
    try:
        if not target.exists():
            olds = sorted(_siblings(target, "old"), key=lambda p: p.stat().st_mtime)
            if olds and not any(_pid_alive(_writer_pid(p)) for p in olds):
                os.rename(olds[-1], target)
                changed = True
        for p in _siblings(target, "tmp") + _siblings(target, "old"):
            if not _pid_alive(_writer_pid(p)):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                changed = True
    except OSError:
        pass
    return changed


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), _RENAME_EXCHANGE)
    return rc == 0


def replace_dir(new: str | Path, target: str | Path) -> None:
    """Put the complete folder ``new`` at ``target`` so that ``target`` is never missing.

    With an existing ``target`` the two are swapped in one atomic ``renameat2`` exchange where
    the kernel and file system allow it; elsewhere the old folder is renamed aside
    (``.NAME.<pid>.<rand>.old``) and the new one renamed in, and a kill between the two is
    undone by :func:`recover_dir` on the next save or load. The old folder is removed last.
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # now holds the old folder
        return
    old = target.parent / _temp_name(target, "old")
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _normal_modes(root: Path) -> None:
    """Files and folders under ``root`` get the modes a plain ``open``/``mkdir`` gives them."""
    _default_mode(root, directory=True)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            _default_mode(Path(dirpath) / d, directory=True)
        for f in filenames:
            _default_mode(Path(dirpath) / f, directory=False)


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target``; on success it replaces ``target``.

    At every moment ``target`` is either the complete old folder or the complete new one
    (:func:`replace_dir`); every file in it is readable as a normal output (not mkdtemp's
    0700/0600); leftovers of killed runs are recovered or removed first (:func:`recover_dir`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = target.parent / _temp_name(target, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        _normal_modes(tmp)
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

# --------------------------------------------------------------------------- JSON values
def json_float(value: Any) -> float | None:
    """Plain Python float, or ``None`` for NaN/inf (strict JSON has neither)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def to_jsonable(obj: Any) -> Any:
    """Recursively turn numpy scalars/arrays into plain Python, NaN/inf into ``None``."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return json_float(obj)
    return obj


def encode_array(a: np.ndarray, dtype: str = "float32") -> dict[str, Any]:
    """``{"dtype", "shape", "base64"}`` with little-endian raw bytes (exact, ~1.33 B/byte)."""
    arr = np.ascontiguousarray(np.asarray(a).astype(np.dtype(dtype).newbyteorder("<")))
    return {
        "dtype": str(np.dtype(dtype)),
        "shape": list(arr.shape),
        "base64": base64.b64encode(arr.tobytes()).decode("ascii"),
    }


def decode_array(data: Mapping[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_array`."""
    dt = np.dtype(data["dtype"]).newbyteorder("<")
    raw = base64.b64decode(data["base64"])
    return np.frombuffer(raw, dtype=dt).reshape(data["shape"]).astype(np.dtype(data["dtype"]))
