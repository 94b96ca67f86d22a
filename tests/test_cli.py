"""The command line as a user meets it: help, verify, inspect, one-line errors."""

from __future__ import annotations

import os
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


def test_command_table_matches_what_the_modules_register() -> None:
    import argparse
    import importlib

    from tympan.cli import COMMAND_MODULES, COMMANDS, build_parser

    def listed(parser: argparse.ArgumentParser) -> dict[str, str]:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return {a.dest: a.help for a in sub._choices_actions}

    assert listed(build_parser()) == {name: help_line for name, (_, help_line) in COMMANDS.items()}
    for module in COMMAND_MODULES:  # each command is registered by the module the table names
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        assert set(sub.choices) == {name for name, (m, _) in COMMANDS.items() if m == module}
    # the lazy parser lists the same commands, in the same order, whichever one is asked for
    for command in COMMANDS:
        assert list(listed(build_parser([command]))) == list(COMMANDS)


def test_start_up_imports_only_the_command_asked_for() -> None:
    probe = ("import sys; from tympan.cli import build_parser; build_parser(sys.argv[1:]); "
             "heavy = ('torch', 'tympan.training', 'tympan.corruptions', 'scipy.signal', 'tympan.diagnostics', "
             "'tympan.adaptation', 'onnx'); print(' '.join(m for m in heavy if m in sys.modules))")

    def loaded(*argv: str) -> set[str]:
        out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return set(out.stdout.split())

    assert loaded("--help") == set()
    assert loaded("predict", "x.wav") == set()  # the model's modules load in the handler
    assert loaded("serve") == set()
    assert "tympan.training" in loaded("train")


def test_train_help_shows_the_defaults() -> None:
    out = " ".join(tympan("train", "--help").stdout.split())  # help lines wrap
    assert "(default: 0.3)" in out and "(default: auto)" in out and "(default: None)" not in out
    assert "cnn 40" in out and "with --init" in out  # --epochs: the architecture's defaults, named


def test_init_offline_fails_before_featurising(synthetic_dir: Path, tmp_path: Path) -> None:
    """No network: ``--init mn04_as`` fails at once and points at a local weights file."""
    from helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every download is refused at once
    env = {**os.environ, "TYMPAN_CACHE": str(tmp_path / "cache"), "TYMPAN_CACHE_DIR": str(tmp_path / "features"),
           "HTTPS_PROXY": dead, "https_proxy": dead, "HTTP_PROXY": dead, "http_proxy": dead}
    out = subprocess.run([sys.executable, "-m", "tympan", "train", "--data-dir", str(synthetic_dir), "--arch", "mn04",
                          "--init", "mn04_as", "--epochs", "1", "--quiet", "--run-dir", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode != 0
    assert "--init mn04_as:" in out.stderr and "without network, pass a local copy" in out.stderr, out.stderr
    assert "run dir" not in out.stdout and not (tmp_path / "features").exists()  # nothing was featurised


def test_up_help_describes_it_and_takes_the_data_folder() -> None:
    out = " ".join(tympan("up", "--help").stdout.split())
    assert "Starts `tympan serve` and `tympan dashboard` together" in out
    assert "--data-dir DATA_DIR" in out and "The dashboard is given the same bundle and ESC-50 folder" in out
    assert "(default: 8000)" in out and "(default: 8501)" in out
