"""#22: ``adapt``, ``train`` and ``diagnose --robustness`` show the shared progress line on a
terminal (audio hours, x real time, ETA, failures; train: epoch, clips/s, fold and run ETA),
and nothing of it when piped or with ``--quiet``. Real subprocesses, stderr on a pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tympan.features import FrontendConfig

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    # every tqdm update drawn (the default 0.1 s between draws skips all of a test-sized job)
    return {**os.environ, "PYTHONPATH": str(REPO), "TQDM_MININTERVAL": "0", "COLUMNS": "220"}


def _run_on_tty(argv: list[str], timeout: float = 240) -> tuple[int, str, str]:
    """Run ``python -m tympan *argv`` with stderr on a 220-column pseudo-terminal; (rc, stdout, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 220, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "tympan", *argv], env=_env(), stdout=subprocess.PIPE,
                            stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:  # drain the terminal while the command runs (its buffer is small)
            if select.select([master], [], [], 0.1)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed its end
                    data = b""
                if data:
                    chunks.append(data)
                    continue
            if proc.poll() is not None:
                break
        out = proc.stdout.read().decode() if proc.stdout else ""
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return rc, out, b"".join(chunks).decode(errors="replace")


def _run_piped(argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tympan", *argv], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _no_bar(text: str) -> None:
    for piece in ("h audio", "x real time", "it/s", "file/s", "clips,", "\r"):
        assert piece not in text, f"{piece!r} in {text[-800:]!r}"


@pytest.fixture(scope="module")
def field_with_a_bad_file(shifted_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("field") / "with-bad"
    shutil.copytree(shifted_dir, dest)
    (dest / "a" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00not a wave file at all")
    return dest


def test_adapt_shows_audio_speed_eta_and_failures_on_a_terminal_only(
        fitted_bundle: Path, field_with_a_bad_file: Path, tmp_path: Path) -> None:
    base = ["adapt", "--bundle", str(fitted_bundle), "--field-dir", str(field_with_a_bad_file)]
    rc, out, err = _run_on_tty([*base, "--out", str(tmp_path / "tty")])
    assert rc == 0, err
    assert "field files" in err and "h audio" in err and "x real time" in err and "ETA " in err
    assert "1 failed" in err and "41/41" in err  # 40 clips and the broken one, counted as it failed
    assert "adabn on 40 field files" in out
    piped = _run_piped([*base, "--out", str(tmp_path / "piped")])  # not a terminal: no bar
    assert piped.returncode == 0 and "adabn on 40 field files" in piped.stdout, piped.stderr
    _no_bar(piped.stderr)


def test_diagnose_robustness_reports_through_the_shared_line(fitted_bundle: Path, synthetic_dir: Path,
                                                             tmp_path: Path) -> None:
    base = ["diagnose", "--bundle", str(fitted_bundle), "--robustness", "--data-dir", str(synthetic_dir),
            "--max-clips", "8"]
    rc, out, err = _run_on_tty([*base, "--out", str(tmp_path / "tty")])
    assert rc in (0, 1), err
    assert "decoding" in err and "robustness" in err and "corruption" in err
    assert "h audio" in err and "x real time" in err and "0 failed" in err
    rc, out, err = _run_on_tty([*base, "--out", str(tmp_path / "quiet"), "--quiet"])
    assert rc in (0, 1) and (tmp_path / "quiet" / "report.json").is_file()
    _no_bar(err)


def test_train_shows_epoch_clips_per_second_and_fold_and_run_eta(synthetic_dir: Path, tmp_path: Path) -> None:
    fe = tmp_path / "fe.json"
    fe.write_text(json.dumps(FrontendConfig(clip_seconds=2.0).to_dict()))
    base = ["train", "--data-dir", str(synthetic_dir), "--arch", "cnn", "--arch-param", "width=8", "--frontend",
            str(fe), "--epochs", "1", "--batch-size", "16", "--folds", "1,2", "--lr", "3e-3",
            "--threads", "1"]
    rc, out, err = _run_on_tty([*base, "--run-dir", str(tmp_path / "tty")])
    assert rc == 0, err
    assert "fold 1 epoch 1/1" in err and "fold 2 epoch 1/1" in err and "clips/s" in err
    assert "fold ETA " in err and "run ETA " in err and "(1 more fold)" in err
    # the epoch's log line (stdout, also in logs) carries the same figures
    assert "clips/s, fold ETA 0:00, run ETA" in out
    rc, out, err = _run_on_tty([*base, "--run-dir", str(tmp_path / "quiet"), "--quiet"])
    assert rc == 0 and "mean accuracy" in out
    _no_bar(err)
