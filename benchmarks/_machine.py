"""What every benchmark records about the machine it ran on, and how it names paths on it
(shared by the scripts here)."""

from __future__ import annotations

from pathlib import Path

from tympan.machine import cpu_model  # noqa: F401  (re-exported for the scripts here)

REPO = Path(__file__).resolve().parents[1]


def repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository if inside it, else only its last component: results
    files carry no path of the machine they were measured on."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return p.name
