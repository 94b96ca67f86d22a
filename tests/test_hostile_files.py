"""Hostile file trees and outputs for ``tympan predict`` and ``diagnose`` (issue #24, items 6-9a).

Real files written by the test (names as bytes), the real decoder, the real CLIs; every case
gets one clear line, the rest of the run completes and nothing already written is lost.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.batch.tables import read_window_table
from tympan.cli import main

SR = 16_000
ROOT = Path(__file__).resolve().parents[1]
BAD = b"bad\xff\xfename.wav"  # not valid UTF-8
FORMULA = "=cmd|' -C calc'!A0.wav"
XSS = "<img src=x onerror=alert(1)>.wav"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import untrained_bundle

    return untrained_bundle(tmp_path_factory.mktemp("b") / "bundle")


def tone(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.1 * np.sin(2 * np.pi * (300 + 50 * seed) * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def write_wav(folder: Path, name: bytes | str, seconds: float = 1.0, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    raw = os.path.join(os.fsencode(folder), os.fsencode(name))
    with open(raw, "wb") as f:
        sf.write(f, tone(seconds, seed), SR, format="WAV", subtype="PCM_16")
    return Path(os.fsdecode(raw))


def hostile_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    for i, name in enumerate([b"ok.wav", BAD, FORMULA, XSS, "-dash.wav", "new\nline.wav"]):
        write_wav(root, name, seed=i)
    return root


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """``tympan predict ARGV`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["predict", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def predict(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tympan", "predict", *argv], capture_output=True, text=True,
                          env=env, timeout=240, errors="backslashreplace")


# ----------------------------------------------------------------------------- 6: names
def test_name_that_is_not_utf8_is_analysed_and_stored_losslessly(bundle_dir: Path, tmp_path: Path) -> None:
    root = hostile_folder(tmp_path / "in")
    bad = Path(os.fsdecode(os.path.join(os.fsencode(root), BAD)))
    one = predict(str(bad), "--bundle", str(bundle_dir))
    assert one.returncode == 0, one.stderr
    assert "not a recognised audio format" not in one.stderr and "\\xff\\xfename.wav: " in one.stdout
    out, summary = tmp_path / "w.csv", tmp_path / "s.parquet"
    r = predict(str(root), "--bundle", str(bundle_dir), "--out", str(out), "--summary", str(summary), "--quiet")
    assert r.returncode == 0, r.stderr
    rows = read_window_table(out)  # valid UTF-8, one line per window (the newline name is escaped)
    assert len(rows) == 6 and len(out.read_text(encoding="utf-8").splitlines()) == 7
    by_b64 = {r["file_b64"]: r["file"] for r in rows if r["file_b64"]}
    raw = {base64.b64decode(k): v for k, v in by_b64.items()}
    assert raw[os.fsencode(bad)] == f"{root}/bad\\xff\\xfename.wav"
    assert raw[os.fsencode(root / "new\nline.wav")] == f"{root}/new\\nline.wav"
    import pyarrow.parquet as pq

    s = pq.read_table(summary).to_pylist()
    assert {base64.b64decode(x["file_b64"]) for x in s if x["file_b64"]} == {
        os.fsencode(bad), os.fsencode(root / "new\nline.wav")}
    assert all(x["status"] == "ok" for x in s)


# ------------------------------------------------------------------------ 7: injection
def test_formula_cells_are_neutralised_in_text_outputs_and_exact_in_parquet(bundle_dir: Path,
                                                                           tmp_path: Path) -> None:
    root = hostile_folder(tmp_path / "in")
    cwd = os.getcwd()
    os.chdir(root)  # names as given relative: the cell starts with the file name
    try:
        assert main(["predict", ".", "--bundle", str(bundle_dir), "--quiet", "--out", str(tmp_path / "w.csv"),
                     "--summary", str(tmp_path / "s.csv")]) == 0
        assert main(["predict", ".", "--bundle", str(bundle_dir), "--quiet", "--out", str(tmp_path / "w.parquet")]) == 0
        assert main(["predict", "--bundle", str(bundle_dir), "--quiet", "--out", str(tmp_path / "raven"),
                     "--format", "raven", "--", FORMULA, "-dash.wav"]) == 0
    finally:
        os.chdir(cwd)
    for table in (tmp_path / "w.csv", tmp_path / "s.csv"):
        with open(table, newline="", encoding="utf-8") as f:
            cells = [c for row in csv.reader(f) for c in row]
        assert "'" + FORMULA in cells and "'-dash.wav" in cells
        assert not [c for c in cells if c.startswith(("=", "+", "@", "\t", "\r"))]
        assert not [c for c in cells if c.startswith("-") and not _number(c)]  # negative scores stay numbers
    exact = {r["file"] for r in read_window_table(tmp_path / "w.parquet")}
    assert FORMULA in exact and "-dash.wav" in exact and XSS in exact
    sel = (tmp_path / "raven").rglob("*.selection.table.txt")
    paths = {r["Begin Path"] for p in sel for r in csv.DictReader(open(p, newline=""), delimiter="\t")}
    assert paths == {"'" + FORMULA, "'-dash.wav"}


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------- 6 + 7: diagnose report
def test_diagnose_report_survives_hostile_names_and_counts_warnings(fitted_bundle: Path, clean_dir: Path,
                                                                    tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    import shutil

    from helpers import run_diagnose

    field = tmp_path / "field"
    shutil.copytree(clean_dir, field)
    for i, name in enumerate([BAD, XSS.encode(), b"<script>alert(2)<!--.wav"]):
        write_wav(field / "a", name, seconds=2.0, seed=i)
    for i in range(30):  # tiny clips: librosa warns n_fft too large for each
        write_wav(field / "tiny", f"t{i}.wav", seconds=0.03 + 0.002 * i, seed=i)
    out = tmp_path / "rep"
    capsys.readouterr()
    code = run_diagnose("--field-dir", str(field), "--bundle", str(fitted_bundle), "--out", str(out),
                        "--fail-on", "never")
    err = capsys.readouterr().err
    assert code == 0, err
    n_fft = [line for line in err.splitlines() if "n_fft" in line]
    assert len(n_fft) == 1 and n_fft[0].startswith("diagnose: library warning ("), err
    assert int(n_fft[0].split("(")[1].split(" ")[0]) >= 30
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    files = {r["file"]: r for r in report["per_file"]}
    bad = files["a/bad\\xff\\xfename.wav"]
    assert base64.b64decode(bad["file_b64"]) == b"a/" + BAD
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<img src=x" not in page and "<script>alert(2)" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


# ------------------------------------------------------------------- 8: file-tree cases
def test_special_files_each_get_one_line_and_the_rest_completes(bundle_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "tree"
    root.mkdir()
    write_wav(root, "good.wav")
    write_wav(root, "-lead.wav", seed=1)
    os.mkfifo(root / "pipe.wav")
    (root / "loop.wav").symlink_to(root / "loop.wav")
    (root / "zero.wav").symlink_to("/dev/zero")
    (root / "x.wav").mkdir()  # a folder named like audio: searched, not read
    write_wav(root / "x.wav", "inner.wav", seed=2)
    (root / "dangling.flac").symlink_to(root / "missing.flac")
    out, summary = tmp_path / "w.csv", tmp_path / "s.jsonl"
    code, _, err = cli(capsys, str(root), "--bundle", str(bundle_dir), "--out", str(out), "--summary", str(summary),
                       "--max-failed-share", "1", "--quiet")
    assert code == 0, err
    assert "Traceback" not in err
    s = {Path(x["file"]).name: x for x in map(json.loads, summary.read_text().splitlines())}
    assert {k for k, v in s.items() if v["status"] == "ok"} == {"good.wav", "-lead.wav", "inner.wav"}
    assert "a FIFO" in s["pipe.wav"]["error"] and "symbolic link loop" in s["loop.wav"]["error"]
    assert "a device" in s["zero.wav"]["error"] and "no such file" in s["dangling.flac"]["error"]
    for name in ("pipe.wav", "loop.wav", "zero.wav", "dangling.flac"):
        assert sum(name in line for line in err.splitlines()) == 1, err  # one line each
    assert {Path(x["file"]).name for x in read_window_table(out)} == {"good.wav", "-lead.wav", "inner.wav"}


# ------------------------------------------------------------------------ 9a: outputs
def test_outputs_that_would_destroy_something_are_refused(bundle_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "in"
    root.mkdir()
    rec = write_wav(root, "rec.wav")
    before = rec.read_bytes()
    (tmp_path / "stdout.csv").symlink_to("/proc/self/fd/1")
    (tmp_path / "null.csv").symlink_to("/dev/null")
    os.mkfifo(tmp_path / "fifo.csv")
    (tmp_path / "folder.csv").mkdir()
    cases = [["--out", str(rec)], ["--summary", str(rec)], ["--out", str(tmp_path / "stdout.csv")],
             ["--summary", str(tmp_path / "null.csv")], ["--out", str(tmp_path / "fifo.csv")],
             ["--out", str(tmp_path / "folder.csv")], ["--summary", str(tmp_path / "folder.csv")],
             ["--out", str(tmp_path / "same.csv"), "--summary", str(tmp_path / "same.csv")]]
    for extra in cases:
        code, _, err = cli(capsys, str(root), "--bundle", str(bundle_dir), "--quiet", *extra)
        assert code == 2, (extra, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tympan: error:"), lines
    assert rec.read_bytes() == before
    assert (tmp_path / "stdout.csv").is_symlink() and (tmp_path / "null.csv").is_symlink()
    assert Path("/dev/null").is_char_device() and (tmp_path / "folder.csv").is_dir()
    assert not (tmp_path / "same.csv").exists()


def _resume_setup(bundle_dir: Path, tmp_path: Path) -> tuple[list[str], Path, list]:
    root = tmp_path / "a"
    root.mkdir()
    for i in range(6):
        write_wav(root, f"f{i}.wav", seconds=1.0 + i, seed=i)
    base = ["predict", str(root), "--bundle", str(bundle_dir), "--quiet"]
    full = tmp_path / "full.csv"
    assert main(base + ["--out", str(full)]) == 0
    return base, full, sorted((r["file"], float(r["start_s"])) for r in read_window_table(full))


@pytest.mark.parametrize("damage", ["cut_in_half", "nul_padding", "huge_offset", "garbage_line", "truncated_ledger"])
def test_resume_trusts_the_table_not_the_ledger(bundle_dir: Path, tmp_path: Path, damage: str,
                                                capsys: pytest.CaptureFixture) -> None:
    base, full, want = _resume_setup(bundle_dir, tmp_path)
    out = tmp_path / "t.csv"
    ledger = out.with_name(out.name + ".progress.jsonl")
    assert main(base + ["--out", str(out)]) == 0
    data = out.read_bytes()
    if damage == "cut_in_half":
        out.write_bytes(data[: len(data) // 2])
    elif damage == "nul_padding":
        with open(out, "ab") as f:
            f.write(b"\0" * 4096)
    elif damage == "huge_offset":
        entries = [json.loads(x) for x in ledger.read_text().splitlines()]
        entries[-1]["csv_end"] = 10**11
        ledger.write_text("".join(json.dumps(e) + "\n" for e in entries))
    elif damage == "garbage_line":
        with open(ledger, "a") as f:
            f.write('{"file": 3, "status": "ok"}\n[1, 2]\n\x00\x00garbage\n')
    elif damage == "truncated_ledger":
        text = ledger.read_text()
        ledger.write_text(text[: len(text) // 2])
    capsys.readouterr()
    assert main(base + ["--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert out.stat().st_size < 10 * len(data) and os.stat(out).st_blocks * 512 < 10 * len(data) + 65536
    assert sorted((r["file"], float(r["start_s"])) for r in read_window_table(out)) == want  # every row once
    assert b"\0" not in out.read_bytes()


def test_two_writers_on_one_out_the_second_refuses(bundle_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "a"
    root.mkdir()
    write_wav(root, "f.wav", seconds=2.0)
    out = tmp_path / "t.csv"
    from tympan.batch.tables import open_writer

    first = open_writer(out, "csv")  # the first run holds the lock while it writes
    try:
        r = predict(str(root), "--bundle", str(bundle_dir), "--quiet", "--out", str(out))
        assert r.returncode == 2 and "another tympan predict is writing" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        first.close()
    assert main(["predict", str(root), "--bundle", str(bundle_dir), "--quiet", "--out", str(out)]) == 0
    assert len(read_window_table(out)) == 3
