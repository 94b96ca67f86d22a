"""ESC-50 layout loading and verification, field folders, the generated set."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tympan.datasets import load_esc50, scan_field_dir, verify_esc50
from tympan.datasets.field import iter_field_audio
from tympan.errors import DataError


def test_synthetic_set_loads_in_esc50_layout(synthetic_dir: Path) -> None:
    ds = load_esc50(synthetic_dir)
    assert len(ds) == 100 and len(ds.classes) == 5
    assert sorted(set(ds.folds.tolist())) == [1, 2, 3, 4, 5]
    assert np.bincount(ds.labels).tolist() == [20] * 5
    only = load_esc50(synthetic_dir, folds=[2])
    assert len(only) == 20 and set(only.folds.tolist()) == {2}
    report = verify_esc50(synthetic_dir, expect_official=False)
    assert report.ok and report.sample_rates == {16000: 100}


def test_synthetic_fails_official_counts(synthetic_dir: Path) -> None:
    report = verify_esc50(synthetic_dir, decode=False)
    assert not report.ok and any("expected 2000" in p for p in report.problems)


def test_missing_and_broken_folders(tmp_path: Path, synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TYMPAN_ESC50_DIR", raising=False)
    with pytest.raises(DataError, match="--data-dir"):
        load_esc50(None)
    with pytest.raises(DataError, match="no such directory"):
        load_esc50(tmp_path / "nope")
    with pytest.raises(DataError, match="esc50.csv is missing"):
        load_esc50(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_dir, copy)
    victim = sorted((copy / "audio").iterdir())[0]
    victim.write_bytes(b"garbage")
    report = verify_esc50(copy, expect_official=False)
    assert not report.ok and len(report.decode_errors) == 1 and victim.name in report.decode_errors[0]
    victim.unlink()
    with pytest.raises(DataError, match="1 clips listed .* have no audio file"):
        load_esc50(copy)
    with pytest.raises(DataError, match="contain no clips"):
        load_esc50(synthetic_dir, folds=[9])


def test_env_var_points_at_the_data(synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TYMPAN_ESC50_DIR", str(synthetic_dir))
    assert len(load_esc50()) == 100


def test_field_scan_reports_unreadable_files(tmp_path: Path, synthetic_dir: Path) -> None:
    field = tmp_path / "field" / "site-a"
    field.mkdir(parents=True)
    for p in sorted((synthetic_dir / "audio").iterdir())[:3]:
        shutil.copy(p, field / p.name)
    (field / "broken.wav").write_bytes(b"RIFF????WAVEjunk")
    (field / "notes.txt").write_text("not audio")
    scan = scan_field_dir(tmp_path / "field")
    assert len(scan.files) == 4 and [p.name for p, _ in scan.skipped] == ["notes.txt"]
    results = list(iter_field_audio(scan, 16_000))
    errors = [(p.name, why) for p, d, why in results if d is None]
    assert len(errors) == 1 and errors[0][0] == "broken.wav"
    with pytest.raises(DataError, match="no such directory"):
        scan_field_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no audio files"):
        scan_field_dir(tmp_path / "empty")


@pytest.mark.slow
def test_real_esc50_layout(esc50_dir: Path) -> None:
    report = verify_esc50(esc50_dir, decode=False)
    assert report.ok, report.problems
    ds = load_esc50(esc50_dir, folds=[1])
    assert len(ds) == 400 and len(ds.classes) == 50 and ds.classes[0] == "dog"
