"""``tympan predict --format events|raven-events|audacity-events``: the events of real files,
decoded by the real decoder, equal to the one event definition applied to the one prediction
path's window logits; CSV and Parquet agree; resume keeps the table whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tympan.audio import frame_windows, load_audio
from tympan.batch.event_tables import EVENT_COLUMNS, read_event_table
from tympan.bundle import Bundle
from tympan.cli import main
from tympan.features import FrontendConfig
from tympan.inference import Predictor
from tympan.inference.events import EventConfig, EventRule, events_from_logits

SR = 16_000


@pytest.fixture(scope="module")
def bundle_dir(fitted_bundle: Path) -> Path:
    return fitted_bundle


@pytest.fixture(scope="module")
def recordings(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two recordings of synthetic clips of different classes with quiet, noisy gaps between them."""
    d = tmp_path_factory.mktemp("rec")
    clips = sorted(synthetic_dir.rglob("*.wav"))
    rng = np.random.default_rng(0)
    for i, name in enumerate(["one.wav", "two.flac"]):
        parts = []
        for clip in clips[i * 37 :: 11][:6]:
            parts += [sf.read(clip, dtype="float32")[0], 0.003 * rng.standard_normal(3 * SR).astype(np.float32)]
        sf.write(d / name, np.concatenate(parts), SR)
    return d


def _expected(bundle_dir: Path, path: Path, cfg: EventConfig) -> list[dict]:
    pred = Predictor(bundle_dir)
    sr = pred.config.sample_rate
    y = load_audio(path, sr).waveform
    wins, starts = frame_windows(y, pred.config.clip_samples)
    emb, logits = pred.forward(wins)
    from tympan.stats.background import level_features

    s = starts / sr
    ev = events_from_logits(logits, pred.params, pred.classes, s, np.minimum(s + pred.config.clip_seconds, len(y) / sr),
                            cfg, embeddings=emb, levels=level_features(wins, sr), source=str(path))
    return [{"file": e.source, **e.model_dump(exclude={"source"})} for e in ev]


ON, OFF = 0.5, 0.3  # the tiny model is confident: its events open and close at these


def test_events_table_equals_the_one_definition(bundle_dir: Path, recordings: Path, tmp_path: Path) -> None:
    on, off = ON, OFF
    cfg = EventConfig(EventRule(on=round(on, 4), off=round(off, 4), merge_gap_s=0.6))
    flags = ["--bundle", str(bundle_dir), "--quiet", "--event-on", str(round(on, 4)), "--event-off",
             str(round(off, 4)), "--merge-gap", "0.6"]
    want = _expected(bundle_dir, recordings / "one.wav", cfg) + _expected(bundle_dir, recordings / "two.flac", cfg)
    assert len(want) >= 4
    out = tmp_path / "events.parquet"
    assert main(["predict", str(recordings), "--format", "events", "--out", str(out), *flags]) == 0
    got = read_event_table(out)
    assert list(got[0]) == EVENT_COLUMNS
    assert got == want
    csv_out = tmp_path / "events.csv"
    assert main(["predict", str(recordings), "--format", "events", "--out", str(csv_out), *flags]) == 0
    rows = read_event_table(csv_out)
    assert [(r["file"], r["label"], float(r["start_s"]), float(r["end_s"])) for r in rows] == \
        [(r["file"], r["label"], r["start_s"], r["end_s"]) for r in want]
    # resume: nothing to redo, the same table (from the ledger)
    before = csv_out.read_text()
    assert main(["predict", str(recordings), "--format", "events", "--out", str(csv_out), "--resume", *flags]) == 0
    assert csv_out.read_text() == before
    ledger = [json.loads(line) for line in (tmp_path / "events.csv.progress.jsonl").read_text().splitlines()]
    assert sorted(Path(e["file"]).name for e in ledger) == ["one.wav", "two.flac"]


def test_raven_and_audacity_event_tables(bundle_dir: Path, recordings: Path, tmp_path: Path) -> None:
    on, off = ON, OFF
    cfg = EventConfig(EventRule(on=round(on, 4), off=round(off, 4)))
    flags = ["--bundle", str(bundle_dir), "--quiet", "--event-on", str(round(on, 4)), "--event-off", str(round(off, 4))]
    want = _expected(bundle_dir, recordings / "one.wav", cfg)
    assert main(["predict", str(recordings), "--format", "raven-events", "--out", str(tmp_path / "r"), *flags]) == 0
    lines = (tmp_path / "r" / "one.events.selection.table.txt").read_text().splitlines()
    assert lines[0].startswith("Selection\tView")
    assert [(float(c[3]), float(c[4]), c[7]) for c in (line.split("\t") for line in lines[1:])] == \
        [(e["start_s"], e["end_s"], e["label"]) for e in want]
    assert main(["predict", str(recordings), "--format", "audacity-events", "--out", str(tmp_path / "a"), *flags]) == 0
    labels = (tmp_path / "a" / "one.events.labels.txt").read_text().splitlines()
    assert len(labels) == len(want) and labels[0].startswith(f"{want[0]['start_s']:.6f}\t")


def test_bad_event_settings_are_one_line_errors(bundle_dir: Path, recordings: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "e.csv")
    assert main(["predict", str(recordings), "--format", "events", "--out", out, "--bundle", str(bundle_dir),
                 "--event-on", "0.2", "--event-off", "0.5"]) == 2
    assert "off <= on" in capsys.readouterr().err
    cfg = tmp_path / "ev.toml"
    cfg.write_text("[events.classes.zebra]\non = 0.9\n")
    assert main(["predict", str(recordings), "--format", "events", "--out", out, "--bundle", str(bundle_dir),
                 "--events-config", str(cfg)]) == 2
    assert "unknown classes in the event settings: zebra" in capsys.readouterr().err
    assert main(["predict", str(recordings), "--format", "events", "--bundle", str(bundle_dir)]) == 2
