"""Field recordings: every audio file under a folder; unreadable ones are reported, not fatal."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tympan.audio import AUDIO_EXTENSIONS, Decoded, file_problem, load_audio
from tympan.errors import AudioError, DataError


@dataclass
class FieldScan:
    """Audio files found under a folder, and the files that could not be used (with why)."""

    root: Path
    files: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # non-audio extensions
    #: hidden files and folders (names starting with "."), not searched; counted
    hidden: int = 0


def scan_field_dir(root: str | Path, *, require_audio: bool = True) -> FieldScan:
    """List audio files under ``root`` recursively (sorted, so runs are reproducible).

    Hidden files and folders (``.name``: recorder indexes, ``.Trashes``, editors' temporaries)
    are not searched and only counted; other files whose extension is not audio are listed in
    ``skipped`` with the reason. ``require_audio=False`` returns an empty list instead of
    raising when the folder holds no audio.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such directory")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    files, skipped, hidden = [], [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        visible = sorted(d for d in dirnames if not d.startswith("."))
        hidden += len(dirnames) - len(visible)
        dirnames[:] = visible
        for name in filenames:
            p = Path(dirpath) / name
            if name.startswith("."):
                hidden += 1
            elif p.suffix.lower() in AUDIO_EXTENSIONS:  # a FIFO/device/link loop is refused by the decoder
                files.append(p)
            elif (why := file_problem(p)) is not None:
                skipped.append((p, why))
            else:
                skipped.append((p, f"not an audio file extension ({p.suffix or 'none'})"))
    files.sort()
    skipped.sort()
    if not files and require_audio:
        raise DataError(f"{root}: contains no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
    return FieldScan(root, files, skipped, hidden)


def iter_field_audio(
    scan: FieldScan, sample_rate: int, *, max_seconds: float | None = 600.0
) -> Iterator[tuple[Path, Decoded | None, str | None]]:
    """Decode each file; yield ``(path, decoded, None)`` or ``(path, None, reason)``."""
    for p in scan.files:
        try:
            yield p, load_audio(p, sample_rate, max_seconds=max_seconds), None
        except (AudioError, OSError) as exc:
            yield p, None, str(exc)
