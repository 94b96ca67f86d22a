"""Which recordings a batch job analyses: files and folders in, a sorted list of sources out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tympan.datasets.field import scan_field_dir
from tympan.errors import DataError


@dataclass(frozen=True)
class Source:
    """One recording: where it is, how tables name it, and the site it was recorded at."""

    path: Path
    name: str  # as tables show it: the path as given, or folder/relative path
    rel: str  # relative to the folder it was found in (the file name for a file given alone)
    site: str | None = None  # first sub-folder under the folder given, None at its top


@dataclass
class SourceScan:
    sources: list[Source]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason): not audio
    hidden: int = 0  # hidden files and folders, not searched


def scan_sources(paths: list[str | Path], *, relative: bool = False) -> SourceScan:
    """Expand files and folders (recursively) into sources, each file once, in the order given.

    A file named on the command line is always tried (its extension is not checked: a decoder
    error names the problem). Inside folders, hidden entries are counted and not searched,
    and files without an audio extension are listed in ``skipped``. ``relative=True`` names
    files found in a folder by their path relative to it (what ``diagnose`` reports).
    """
    if not paths:
        raise DataError("no input files or folders given")
    out: list[Source] = []
    skipped: list[tuple[str, str]] = []
    hidden = 0
    seen: set[Path] = set()
    for arg in paths:
        p = Path(arg).expanduser()
        if p.is_dir():
            scan = scan_field_dir(p, require_audio=False)
            hidden += scan.hidden
            for f in scan.files:
                key = _identity(f)
                if key in seen:
                    continue
                seen.add(key)
                rel = f.relative_to(p)
                site = rel.parts[0] if len(rel.parts) > 1 else None
                out.append(Source(f, str(rel) if relative else str(p / rel), str(rel), site))
            skipped += [(str(f.relative_to(p)) if relative else str(f), why) for f, why in scan.skipped]
        else:
            key = _identity(p)
            if key in seen:
                continue
            seen.add(key)
            out.append(Source(p, str(arg), p.name, None))
    return SourceScan(out, skipped, hidden)


def _identity(p: Path) -> Path:
    """The file a path names, for counting it once; a link loop or a missing file is its own path."""
    try:
        return p.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop (Python < 3.13)
        return p.absolute()


def group_key(source: Source, start_time: datetime | None, by: str) -> str:
    """The group a recording belongs to for ``--by site|day|hour``."""
    if by == "site":
        return source.site or "(top level)"
    if start_time is None:
        return "(start time unknown)"
    if by == "day":
        return start_time.strftime("%Y-%m-%d")
    if by == "hour":
        return start_time.strftime("%Y-%m-%dT%H")
    raise ValueError(f"--by must be site, day or hour, not {by!r}")
