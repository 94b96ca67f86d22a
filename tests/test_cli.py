"""The command line as a user meets it: help, verify, inspect, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf


def tympan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tympan", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_subcommands() -> None:
    out = tympan("--help")
    assert out.returncode == 0 and "data" in out.stdout


def test_verify_synthetic(synthetic_dir: Path) -> None:
    out = tympan("data", "verify", str(synthetic_dir))
    assert out.returncode == 1 and "expected 2000" in out.stdout  # not the official counts
    out = tympan("data", "verify", "/definitely/not/here")
    assert out.returncode == 2
    assert out.stderr.strip() == "tympan: error: /definitely/not/here: no such directory (ESC-50 data folder)"


def test_inspect_names_each_problem(tmp_path: Path) -> None:
    good = tmp_path / "good.flac"
    sf.write(good, np.zeros(8000), 16_000)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "text.wav"
    text.write_text("hello" * 50)
    out = tympan("data", "inspect", str(good), str(empty), str(text), str(tmp_path / "missing.wav"))
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 4
    assert "16000 Hz, 1 ch, 0.500 s" in lines[0]
    assert "EmptyAudioError" in lines[1] and "NotAudioError" in lines[2] and "no such file" in lines[3]
    assert "Traceback" not in out.stderr


def test_diagnose_entry_point_exists() -> None:
    from tympan.cli import diagnose_main

    assert callable(diagnose_main)
