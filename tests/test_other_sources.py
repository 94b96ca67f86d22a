"""The beyond-Freesound development set: reserved packages refused, Freesound-credited packages
skipped, real decodable clips with a manifest, a conservative label table."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.audio import load_audio
from tympan.datasets.other_sources import (
    ESC50_CLASSES, ESC_HINT, OOD_SET_PACKAGES, PACKAGES, RESERVED, RULES, build_other_sources, check_packages,
    classify, freesound_credit, is_reserved,
)

ISSUE_RESERVED = {"freecol", "frozen-bubble-data", "hedgewars-data", "lincity-ng-data", "lomiri-sounds",
                  "megaglest-data", "scorched3d-data", "simutrans-pak64", "tuxpaint-data", "tuxpaint-stamps-default",
                  "ufoai-sound", "wesnoth-1.16-data", "asterisk-core-sounds-en-wav", "deepin-sound-theme",
                  "extremetuxracer-data", "ktuberling-data", "pocketsphinx-testdata", "psi-plus-sounds",
                  "warzone2100-data", "xmoto-data"}
SR = 22_050


def _tone(seconds: float, f: float = 440.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def _package(root: Path, name: str, files: dict[str, np.ndarray], copyright_text: str = "Free to use.") -> Path:
    pkg = root / name
    doc = pkg / "usr/share/doc" / name
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(copyright_text)
    for rel, y in files.items():
        p = pkg / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, y, SR, format="OGG" if p.suffix == ".ogg" else "WAV")
    return pkg


def test_reserved_packages_are_refused(tmp_path: Path) -> None:
    assert ISSUE_RESERVED <= RESERVED
    assert not set(PACKAGES) & RESERVED and not any(is_reserved(p) for p in PACKAGES)
    assert not set(PACKAGES) & OOD_SET_PACKAGES
    listed = (Path(__file__).resolve().parents[1] / "scripts" / "ood-packages.txt").read_text().splitlines()
    assert OOD_SET_PACKAGES == {line.strip() for line in listed if line.strip() and not line.startswith("#")}
    for pkg in sorted(ISSUE_RESERVED) + ["asterisk-core-sounds-en-gsm"]:
        with pytest.raises(ValueError, match="reserved"):
            check_packages(["lugaru-data", pkg])
        (tmp_path / pkg).mkdir(exist_ok=True)
        with pytest.raises(ValueError, match="reserved"):  # refused before anything is read or written
            build_other_sources(tmp_path / "out", tmp_path, packages=[pkg], log=lambda _: None)
    with pytest.raises(ValueError, match="Freesound"):
        check_packages(["openttd-opensfx"])
    with pytest.raises(ValueError, match="OOD set"):
        check_packages(["espeak-ng"])
    assert not (tmp_path / "out").exists()
    script = (Path(__file__).resolve().parents[1] / "scripts" / "build_other_sources.sh").read_text()
    assert not any(p in script for p in ISSUE_RESERVED)


def test_freesound_credit_skips_the_package(tmp_path: Path) -> None:
    clean = _package(tmp_path, "lugaru-data", {"usr/share/games/lugaru/Sounds/Bark.ogg": _tone(0.5)})
    credited = _package(tmp_path, "tuxmath-data", {"usr/share/tuxmath/sounds/laser.wav": _tone(0.5)},
                        "Files: sounds/*\nSource: https://FreeSound.org/people/someone/\nLicense: CC-BY")
    assert freesound_credit(clean) is None
    assert freesound_credit(credited) == credited / "usr/share/doc/tuxmath-data/copyright"
    # a gzipped credits file beside the data counts too
    other = _package(tmp_path, "bzflag-data", {"usr/share/games/bzflag/boom.wav": _tone(0.5)})
    with gzip.open(other / "usr/share/games/bzflag/CREDITS.gz", "wt") as f:
        f.write("boom.wav from freesound user x")
    assert freesound_credit(other) is not None
    tagged = _package(tmp_path / "tags", "caveexpress-data", {})
    wav = tagged / "usr/share/games/caveexpress/click.wav"
    wav.parent.mkdir(parents=True)
    with sf.SoundFile(wav, "w", SR, 1, format="WAV") as f:
        f.comment = "from https://freesound.org/s/123/"  # a RIFF INFO tag
        f.write(_tone(0.5))
    assert freesound_credit(tagged) == wav
    said: list[str] = []
    root = build_other_sources(tmp_path / "out", tmp_path, packages=["lugaru-data", "tuxmath-data", "bzflag-data"],
                               log=said.append)
    rows = list(csv.DictReader(open(root / "manifest.csv", encoding="utf-8")))
    assert {r["package"] for r in rows} == {"lugaru-data"}
    assert any("tuxmath-data skipped" in m and "Freesound" in m for m in said)
    assert any("bzflag-data skipped" in m for m in said)
    skipped = {r["package"]: r["reason"] for r in csv.DictReader(open(root / "skipped.csv", encoding="utf-8"))}
    assert set(skipped) == {"tuxmath-data", "bzflag-data"} and "Freesound" in skipped["tuxmath-data"]


def test_builds_decodable_5s_16k_clips_with_manifest(tmp_path: Path) -> None:
    _package(tmp_path, "lugaru-data", {
        "usr/share/games/lugaru/Sounds/Bark.ogg": _tone(0.6, 600),
        "usr/share/games/lugaru/Sounds/Wind.ogg": _tone(30.0, 200),  # long: several clips, capped
        "usr/share/games/lugaru/Sounds/FootStepGrass1.ogg": _tone(0.2, 300),
        "usr/share/games/lugaru/Sounds/FootStepGrass2.ogg": _tone(0.2, 350),
        "usr/share/games/lugaru/Sounds/Clank1.ogg": _tone(0.4, 900),  # an effect that is no ESC-50 class
        "usr/share/games/lugaru/Sounds/Growl.ogg": _tone(0.4, 100),  # may be a dog: left out
        "usr/share/games/lugaru/Sounds/silent.ogg": np.zeros(SR, np.float32),
        "usr/share/games/lugaru/Music1Grass.ogg": _tone(16.0, 330),
    })
    _package(tmp_path, "klettres-data", {f"usr/share/klettres/en/alpha/{c}.ogg": _tone(1.0, 500 + i)
                                         for i, c in enumerate("abcdef")})
    root = build_other_sources(tmp_path / "out", tmp_path, packages=["lugaru-data", "klettres-data", "absent-pkg"],
                               max_clips_per_file=3, max_files_per_package=4, log=lambda _: None)
    rows = list(csv.DictReader(open(root / "manifest.csv", encoding="utf-8")))
    assert set(rows[0]) == {"file", "kind", "label", "package", "original_path", "split"}
    for r in rows:
        d = load_audio(root / r["file"], None)
        assert d.source_sample_rate == 16_000 and d.source_channels == 1 and d.waveform.shape == (80_000,)
        assert r["split"] == "dev" and (r["label"] in ESC50_CLASSES) == (r["kind"] == "esc-class")
    by = {(r["kind"], r["label"]): 0 for r in rows}
    for r in rows:
        by[r["kind"], r["label"]] += 1
    assert by[("esc-class", "dog")] == 1 and by[("esc-class", "wind")] == 3
    assert by[("esc-class", "footsteps")] >= 1 and by[("music", "")] == 3 and by[("sfx", "")] == 1
    assert by[("speech", "")] == 4  # capped per package, spread over the letters
    assert not any("Growl" in r["original_path"] or "silent" in r["original_path"] for r in rows)
    steps = next(r for r in rows if r["label"] == "footsteps")
    assert steps["original_path"].startswith("assembled from 2 recordings")


def test_label_table_maps_clear_names_and_leaves_unclear_ones_out() -> None:
    assert classify("lugaru-data", "usr/share/games/lugaru/Sounds/Bark2.ogg")[:2] == ("esc-class", "dog")
    assert classify("lugaru-data", "usr/share/games/lugaru/Sounds/Fire.ogg")[:2] == ("esc-class", "crackling_fire")
    assert classify("sound-icons", "usr/share/sounds/sound-icons/canary-long.wav")[:2] == ("esc-class",
                                                                                          "chirping_birds")
    assert classify("heroes-sound-effects", "usr/share/games/heroes/sfx/claxon.wav")[:2] == ("esc-class", "car_horn")
    assert classify("bucklespring-data", "usr/share/buckle/wav/3b-1.wav")[:2] == ("esc-class", "keyboard_typing")
    # unclear names: neither labelled nor counted as an outlier
    for pkg, rel in [("lugaru-data", "Sounds/Growl.ogg"), ("lugaru-data", "Sounds/Hawk.ogg"),
                     ("lugaru-data", "Sounds/DesertAmbient.ogg"), ("tuxmath-data", "sounds/towerclock.wav"),
                     ("tuxmath-data", "sounds/tock.wav"), ("heroes-sound-effects", "sfx/clock01.wav"),
                     ("pingus-data", "sounds/tick.wav"), ("moon-lander-data", "sounds/honk.wav"),
                     ("sound-icons", "sounds/sound-icons/gummy-cat-2.wav"), ("ri-li-data", "Sounds/wagon.wav"),
                     ("bucklespring-data", "usr/share/doc/readme.wav"), ("not-a-package", "x/boom.wav")]:
        assert classify(pkg, rel) is None, (pkg, rel)
    assert classify("lbreakout2-data", "sounds/excellent.wav")[:2] == ("speech", "")
    assert classify("lbreakout2-data", "sounds/reflect_paddle.wav")[:2] == ("sfx", "")
    assert len(set(ESC50_CLASSES)) == 50
    assert all(r.label in ESC50_CLASSES for r in RULES if r.kind == "esc-class") and all(
        not r.label for r in RULES if r.kind != "esc-class")
    assert all(r.package in PACKAGES for r in RULES)
    assert ESC_HINT.search("door creak") and not ESC_HINT.search("shot laser")
