"""The OOD set builder writes real, decodable, non-ESC-50 audio with a manifest."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.audio import load_audio
from tympan.datasets.ood import _ui_sounds, build_ood_set


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


#: packages the project's evaluators hold out (issue #20 item 6): never installed, never read
RESERVED_PACKAGES = {
    "freecol", "frozen-bubble-data", "hedgewars-data", "lincity-ng-data", "lomiri-sounds", "megaglest-data",
    "scorched3d-data", "simutrans-pak64", "tuxpaint-data", "tuxpaint-stamps-default", "ufoai-sound",
    "wesnoth-1.16-data", "asterisk-core-sounds-en-wav", "deepin-sound-theme", "extremetuxracer-data",
    "ktuberling-data", "pocketsphinx-testdata", "psi-plus-sounds", "warzone2100-data", "xmoto-data"}


def test_reserved_evaluation_packages_are_neither_installed_nor_read(tmp_path: Path) -> None:
    """A theme of a reserved package is skipped even where some other tool installed it."""
    from tympan.datasets.ood import RESERVED_THEMES, SOURCES

    root = Path(__file__).resolve().parents[1]
    scripts = " ".join((root / "scripts" / name).read_text() for name in ("ood-packages.txt", "setup.sh",
                                                                          "build_ood_set.sh"))
    assert not {p for p in RESERVED_PACKAGES if p in scripts.split()}
    assert not RESERVED_PACKAGES & {pkg for _, _, pkg, _ in SOURCES}
    themes = tmp_path / "sounds"
    for theme in (*RESERVED_THEMES, "open"):
        (themes / theme / "stereo").mkdir(parents=True)
        sf.write(themes / theme / "stereo" / f"{theme}-bell.wav",
                 0.3 * np.sin(np.linspace(0, 2000, 16_000)).astype(np.float32), 16_000)
    (tmp_path / "out" / "notification").mkdir(parents=True)
    rows = _ui_sounds(tmp_path / "out", 16_000, 5.0, sound_dirs=[str(themes)])
    assert [Path(r["source"]).parts[-3] for r in rows] == ["open"]
