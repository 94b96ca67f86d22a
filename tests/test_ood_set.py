"""The OOD set builder writes real, decodable, non-ESC-50 audio with a manifest."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from tympan.audio import load_audio
from tympan.datasets.ood import build_ood_set


def test_builds_decodable_clips_with_manifest(tmp_path: Path) -> None:
    root = build_ood_set(tmp_path / "ood", n_speech=14, n_music=3)
    with open(root / "manifest.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    kinds = {r["kind"] for r in rows}
    assert "generated" in kinds
    if shutil.which("espeak-ng"):
        assert "speech" in kinds
    if shutil.which("fluidsynth") and Path("/usr/share/sounds/sf2").is_dir():
        assert "music" in kinds
    for r in rows:
        d = load_audio(root / r["file"], None)
        assert d.source_sample_rate == 16_000 and d.waveform.shape == (80_000,)
    # evaluation clips never share a voice, soundfont or sound theme with development clips
    assert {r["split"] for r in rows} <= {"dev", "eval"} and {r["split"] for r in rows if r["kind"] == "generated"} == {
        "dev", "eval"}
    for kind, key in (("speech", lambda r: r["source"].split(" -s ")[0]), ("music", lambda r: r["source"].split()[1])):
        dev = {key(r) for r in rows if r["kind"] == kind and r["split"] == "dev"}
        ev = {key(r) for r in rows if r["kind"] == kind and r["split"] == "eval"}
        assert not dev & ev, (kind, dev & ev)
    speech = [r for r in rows if r["kind"] == "speech"]
    for r in speech:
        assert np.sqrt(np.mean(load_audio(root / r["file"]).waveform ** 2)) > 0.01


@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="espeak-ng not installed")
def test_same_seed_same_set(tmp_path: Path) -> None:
    a = build_ood_set(tmp_path / "a", n_speech=1, n_music=1, seed=3)
    b = build_ood_set(tmp_path / "b", n_speech=1, n_music=1, seed=3)
    for name in ("generated/pink-noise-0.1.flac", "music/music-000.flac"):
        if (a / name).exists():
            np.testing.assert_array_equal(load_audio(a / name).waveform, load_audio(b / name).waveform)


def test_set_up_installs_every_source_and_data_ood_names_the_missing(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """scripts/setup.sh installs every package the set is built from; a smaller set says why."""
    from tympan.datasets.cli import report_ood_set
    from tympan.datasets.ood import SOURCES, missing_sources

    listed = [line.strip() for line in (Path(__file__).resolve().parents[1] / "scripts" / "ood-packages.txt")
              .read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert sorted(listed) == sorted({pkg for _, _, pkg, _ in SOURCES})
    report_ood_set(build_ood_set(tmp_path / "ood", n_speech=2, n_music=2))  # what `tympan data ood` prints
    out = capsys.readouterr()
    missing = missing_sources()
    assert ("warning: a smaller set" in out.err) == bool(missing)
    for what, _, pkg in missing:  # each missing source is named with the package that brings it
        assert f"{what}" in out.err and pkg in out.err
    assert "dev: " in out.out and "eval: " in out.out
