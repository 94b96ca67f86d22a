"""The background set: every kind written, at the level it claims, split by seed and ESC-50 fold."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tympan.audio import load_audio
from tympan.datasets.background import KINDS, build_background_set, quiet_stretch


def test_background_set_kinds_levels_and_splits(synthetic_dir: Path, tmp_path: Path) -> None:
    root = build_background_set(tmp_path / "bg", n_per_kind=4, esc50_dir=synthetic_dir, esc50_per_fold=2)
    rows = list(csv.DictReader(open(root / "manifest.csv", encoding="utf-8")))
    assert {r["kind"] for r in rows} <= set(KINDS) and {"hiss", "hum", "rumble", "ultrasound", "silence"} <= {
        r["kind"] for r in rows}
    for r in rows:
        d = load_audio(root / r["file"], None, max_seconds=None)
        y = d.waveform.astype(np.float64)
        level = 10 * np.log10(np.mean(y**2) + 1e-20)
        if r["kind"] in ("hiss", "rumble"):
            assert abs(level - float(r["level_dbfs"])) < 0.5, r
        if r["kind"] == "ultrasound":  # a bat detector: all energy above 20 kHz
            assert d.source_sample_rate == 384_000
            spec = np.abs(np.fft.rfft(y)) ** 2
            f = np.fft.rfftfreq(len(y), 1 / d.source_sample_rate)
            assert spec[f < 20_000].sum() < 0.01 * spec.sum()
        if r["kind"] == "esc50-quiet":
            fold = int(r["file"].split("fold")[1].split("-")[0])
            assert r["split"] == ("eval" if fold == 5 else "dev")
    assert {r["split"] for r in rows} == {"dev", "eval"}


def test_quiet_stretch_finds_the_quietest_second() -> None:
    sr = 1000
    y = np.r_[np.ones(3000), 0.01 * np.ones(1000), np.ones(2000)]
    seg, level = quiet_stretch(y, sr, 1.0)
    assert np.allclose(seg, 0.01) and abs(level - (-40.0)) < 0.01
