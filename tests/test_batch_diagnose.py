"""``diagnose --field-dir`` on the batch engine: long files count by their windows, groups, failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import field_folder  # the clips of the diagnose tests (fitted_bundle: conftest.py)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("arch")
    clean = field_folder(base / "clean", seed=11, shift=False)
    root = base / "archive"
    files = sorted(clean.rglob("*.wav"), key=lambda p: p.name)
    for i, p in enumerate(files):
        site = root / ("north" if i % 2 else "south")
        site.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, site / p.name)
    # a 2-minute recording with its start time in the name, built from the same kind of clips
    long = np.concatenate([sf.read(p, dtype="float32")[0] for p in files[:30]] * 2)
    sf.write(root / "north" / "AM01_20240612_053000.wav", long, 16000)
    (root / "south" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return root


def _run(*args: str) -> int:
    from tympan.cli import diagnose_main

    return diagnose_main(["--quiet", *args])


def test_long_files_count_by_windows_groups_and_failed_files(fitted_bundle: Path, archive: Path,
                                                             tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rep"
    code = _run("--field-dir", str(archive), "--bundle", str(fitted_bundle), "--out", str(out), "--by", "site")
    printed = capsys.readouterr().out
    assert code == 2, printed  # a file could not be analysed and --max-failed-share is 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["exit_code"] == 2 and [u["file"] for u in rep["field"]["unreadable"]] == ["south/broken.wav"]
    field = json.loads((out / "field.json").read_text())
    cov = field["coverage"]
    assert cov["files"] == 42 and cov["files_failed"] == 1 and cov["failed_share"] == pytest.approx(1 / 42)
    assert cov["audio_seconds_analysed"] == pytest.approx(40 * 2.0 + 120.0)
    long_units = [u for u in field["units"] if u["file"] == "north/AM01_20240612_053000.wav"]
    assert len(long_units) == 60  # 120 s in non-overlapping 2-s windows
    assert long_units[1]["start_time"].startswith("2024-06-12T05:30:02")
    assert rep["n_field"] == 40 + 60 and len(rep["per_file"]) == 100
    assert cov["acoustic"]["measured_units"] <= 100 and "sample" in cov["acoustic"]["how"]
    groups = {g["group"]: g for g in field["groups"]}
    assert set(groups) == {"north", "south"}
    assert groups["north"]["units"] == 20 + 60 and groups["south"]["units"] == 20
    for g in groups.values():
        assert g["verdict"] and set(g["checks"]) >= {"embedding", "predictions", "confidence", "ood_rate"}
    assert "analysed 0.06 h of audio: 41 of 42 recordings" in printed and "site north:" in printed
    # report.json says how much audio was analysed and carries the per-group checks too
    assert rep["coverage"] == cov and rep["by"] == "site" and {g["group"] for g in rep["groups"]} == {"north", "south"}
    # allowed failures: the verdict decides again
    code = _run("--field-dir", str(archive), "--bundle", str(fitted_bundle), "--out", str(out),
                "--max-failed-share", "0.05", "--by", "day", "--jobs", "2")
    assert code in (0, 1)
    field = json.loads((out / "field.json").read_text())
    assert {g["group"] for g in field["groups"]} == {"2024-06-12", "(start time unknown)"}
