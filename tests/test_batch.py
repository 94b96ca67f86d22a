"""The batch engine behind ``tympan predict PATH... --out``: streaming, tables, resume, exit codes."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tympan.audio import frame_windows, iter_audio_blocks, load_audio
from tympan.batch import BatchOptions, run_batch, scan_sources
from tympan.batch.stream import iter_window_batches
from tympan.batch.tables import read_window_table, window_columns
from tympan.bundle import Bundle
from tympan.cli import main
from tympan.contracts.prediction import WindowPrediction
from tympan.features import FrontendConfig
from tympan.inference import Predictor
from tympan.models import build_model

SR = 16_000


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import untrained_bundle

    return untrained_bundle(tmp_path_factory.mktemp("b") / "bundle")


def noise(seconds: float, seed: int = 0, sr: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return (0.1 * np.sin(2 * np.pi * (300 + 200 * seed) * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize("n", [1, 700, 1000, 1001, 1500, 4321, 10_000])
@pytest.mark.parametrize("hop", [None, 250, 1000, 1700])
def test_stream_cuts_the_windows_frame_windows_cuts(n: int, hop: int | None) -> None:
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    want_w, want_s = frame_windows(x, 1000, hop)
    blocks = [x[i : i + 333] for i in range(0, n, 333)]
    got = list(iter_window_batches(blocks, 1000, hop, batch=7))
    assert np.array_equal(np.concatenate([g[0] for g in got]), want_s)
    assert np.array_equal(np.concatenate([g[1] for g in got]), want_w)


def test_twenty_minute_file_streams_with_flat_memory_and_matches_whole_decode(
        bundle_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "long_20240501_063000.wav"
    with sf.SoundFile(path, "w", SR, 1, "PCM_16") as f:
        for minute in range(20):
            f.write(noise(60.0, seed=minute % 3))
    predictor = Predictor(bundle_dir, max_seconds=None)
    src = scan_sources([path]).sources
    tracemalloc.start()
    try:
        (res,) = list(run_batch(predictor, src, BatchOptions(block_seconds=10.0)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    whole_bytes = 20 * 60 * SR * 4
    assert res.ok and res.duration_s == pytest.approx(1200.0)
    assert peak < whole_bytes / 4, f"streaming peaked at {peak / 1e6:.1f} MB (whole file {whole_bytes / 1e6:.0f} MB)"
    assert res.start_time is not None and res.start_time.isoformat().startswith("2024-05-01T06:30:00")
    # the same windows, and the same logits, as decoding the file whole
    decoded = load_audio(path, SR, max_seconds=None)
    windows, starts = frame_windows(decoded.waveform, predictor.config.clip_samples)
    assert np.array_equal(res.starts, starts)
    pick = np.r_[0:len(starts):7, len(starts) - 1]  # every 7th window and the last (time)
    _, z = predictor.forward(windows[pick])
    np.testing.assert_allclose(res.logits[pick], z, rtol=1e-5, atol=1e-5)


def test_audio_blocks_equal_load_audio_with_resampling_and_salvage(tmp_path: Path) -> None:
    x = np.stack([noise(3.3, 1, 44_100), noise(3.3, 2, 44_100)], axis=1)
    full = tmp_path / "s.wav"
    sf.write(full, x, 44_100, subtype="PCM_24")
    raw = full.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(raw[: len(raw) * 2 // 3])
    for p in (full, cut):
        want = load_audio(p, SR, max_seconds=None)
        blocks = iter_audio_blocks(p, SR, block_seconds=0.25)
        got = np.concatenate(list(blocks))
        assert np.array_equal(got, want.waveform)
        assert blocks.info.warnings == want.warnings and blocks.info.source_frames == want.source_frames
    assert any("truncated" in w for w in iter_audio_blocks(cut, SR).info.warnings) or want.warnings


def _archive(root: Path) -> Path:
    (root / "site_a" / "deep").mkdir(parents=True)
    (root / "site_b").mkdir()
    (root / ".hidden_dir").mkdir()
    sf.write(root / "site_a" / "rec_20240301_101500.wav", noise(7.5, 0), SR)
    sf.write(root / "site_a" / "deep" / "b.flac", noise(2.0, 1), SR)
    sf.write(root / "site_b" / "c.wav", noise(0.6, 2), SR)
    sf.write(root / "top.wav", noise(3.0, 1), SR)
    full = root / "site_b" / "cut.wav"
    sf.write(full, noise(4.0, 2), SR)
    full.write_bytes(full.read_bytes()[:40_000])  # power lost mid-recording: salvaged with a warning
    (root / "site_b" / "bad.wav").write_text("this is not audio")
    (root / "site_b" / "notes.txt").write_text("field notes")
    (root / ".DS_Store").write_bytes(b"\0" * 10)
    sf.write(root / ".hidden_dir" / "x.wav", noise(1.0), SR)
    return root


def test_folder_gives_table_summary_with_reasons_and_exit_code(bundle_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    root = _archive(tmp_path / "archive")
    out, summary = tmp_path / "res.csv", tmp_path / "sum.csv"
    args = ["predict", str(root), "--bundle", str(bundle_dir), "--out", str(out), "--summary", str(summary)]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err  # one file could not be analysed
    assert "1 could not be analysed" in err and "bad.wav" in err
    rows = read_window_table(out)
    assert list(rows[0]) == window_columns()
    assert {f for f in WindowPrediction.model_fields if f != "top_k"} <= set(rows[0])
    files = {r["file"] for r in rows}
    assert files == {str(root / p) for p in ("site_a/rec_20240301_101500.wav", "site_a/deep/b.flac",
                                             "site_b/c.wav", "top.wav", "site_b/cut.wav")}
    rec = [r for r in rows if r["file"].endswith("rec_20240301_101500.wav")]
    assert [float(r["start_s"]) for r in rec] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5]
    assert rec[2]["start_time"] == "2024-03-01T10:15:01"
    for r in rows:
        assert r["label"] in ("a", "b", "c") and 0 < float(r["probability"]) <= 1
        assert r["out_of_distribution"] in ("true", "false") and r["uncertain"] in ("true", "false")
    with open(summary, newline="") as f:
        s = {r["file"].split("/")[-1]: r for r in csv.DictReader(f)}
    assert set(s) == {"rec_20240301_101500.wav", "b.flac", "c.wav", "top.wav", "cut.wav", "bad.wav"}
    assert s["bad.wav"]["status"] == "failed" and "not a recognised audio format" in s["bad.wav"]["error"]
    assert s["cut.wav"]["status"] == "ok" and "truncated" in s["cut.wav"]["warnings"]
    assert s["rec_20240301_101500.wav"]["windows"] == "14" and s["rec_20240301_101500.wav"]["start_time"]
    assert float(s["top.wav"]["duration_s"]) == pytest.approx(3.0)
    # the failed share is allowed: exit 0
    assert main(args + ["--max-failed-share", "0.2", "--quiet"]) == 0
    scan = scan_sources([root])
    assert scan.hidden == 2 and [n for n, _ in scan.skipped] == [str(root / "site_b" / "notes.txt")]


def _rows_key(rows):
    return sorted((r["file"], float(r["start_s"])) for r in rows)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_resume_after_interruption_writes_each_window_once(bundle_dir: Path, tmp_path: Path, suffix: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import tympan.batch.tables as tables

    root = tmp_path / "a"
    root.mkdir()
    for i in range(6):
        sf.write(root / f"f{i}.wav", noise(1.0 + i, i), SR)
    base = ["predict", str(root), "--bundle", str(bundle_dir), "--quiet"]
    full = tmp_path / f"full{suffix}"
    assert main(base + ["--out", str(full)]) == 0
    want = read_window_table(full)

    out = tmp_path / f"part{suffix}"
    calls = {"n": 0}
    real = tables.TableWriter.append

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(tables.TableWriter, "append", flaky)
    assert main(base + ["--out", str(out)]) == 130
    monkeypatch.setattr(tables.TableWriter, "append", real)
    partial = read_window_table(out)  # valid after Ctrl-C, three files in it
    assert len({r["file"] for r in partial}) == 3
    if suffix == ".csv":  # and a crash in the middle of the next append
        with open(out, "a") as f:
            f.write(f"{root}/f5.wav,0.0,0.5,,a,0.4")
    assert main(base + ["--out", str(out), "--resume", "--summary", str(tmp_path / "s.jsonl")]) == 0
    got = read_window_table(out)
    assert _rows_key(got) == _rows_key(want)  # every window exactly once
    summary = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert len(summary) == 6 and all(s["status"] == "ok" for s in summary)
    assert main(base + ["--out", str(out), "--resume"]) == 0  # nothing left to do, nothing duplicated
    assert _rows_key(read_window_table(out)) == _rows_key(want)


def test_raven_and_audacity_outputs_parse_back(bundle_dir: Path, tmp_path: Path) -> None:
    root = _archive(tmp_path / "archive")
    (root / "site_b" / "bad.wav").unlink()
    base = ["predict", str(root), "--bundle", str(bundle_dir), "--quiet"]
    assert main(base + ["--out", str(tmp_path / "t.csv")]) == 0
    table = read_window_table(tmp_path / "t.csv")
    assert main(base + ["--out", str(tmp_path / "raven"), "--format", "raven", "--min-probability", "0.34"]) == 0
    assert main(base + ["--out", str(tmp_path / "aud"), "--format", "audacity"]) == 0
    sel = tmp_path / "raven" / "site_a" / "rec_20240301_101500.selection.table.txt"
    with open(sel, newline="") as f:
        raven = list(csv.DictReader(f, delimiter="\t"))
    want = [r for r in table if r["file"].endswith("rec_20240301_101500.wav") and float(r["probability"]) >= 0.34]
    assert [int(r["Selection"]) for r in raven] == list(range(1, len(want) + 1))
    assert [(float(r["Begin Time (s)"]), r["Label"]) for r in raven] == [(float(r["start_s"]), r["label"]) for r in want]
    assert all(r["View"] == "Spectrogram 1" and float(r["End Time (s)"]) > float(r["Begin Time (s)"]) for r in raven)
    lab = (tmp_path / "aud" / "site_a" / "deep" / "b.labels.txt").read_text().splitlines()
    want = [r for r in table if r["file"].endswith("b.flac")]
    parsed = [line.split("\t") for line in lab]
    assert [(float(a), float(b), t.split(" ")[0]) for a, b, t in parsed] == [
        (float(r["start_s"]), float(r["end_s"]), r["label"]) for r in want]


def test_jobs_in_worker_processes_give_the_same_rows(bundle_dir: Path, tmp_path: Path) -> None:
    root = _archive(tmp_path / "archive")
    base = ["predict", str(root), "--bundle", str(bundle_dir), "--quiet", "--max-failed-share", "1"]
    assert main(base + ["--out", str(tmp_path / "one.parquet")]) == 0
    assert main(base + ["--out", str(tmp_path / "two.parquet"), "--jobs", "2", "--hop", "0.25"]) == 0
    one = {(r["file"], r["start_s"]): r for r in read_window_table(tmp_path / "one.parquet")}
    two = {(r["file"], r["start_s"]): r for r in read_window_table(tmp_path / "two.parquet")}
    assert set(one) <= set(two) and len(two) > len(one)
    for k, r in one.items():
        assert two[k]["label"] == r["label"]
        assert two[k]["probability"] == pytest.approx(r["probability"], abs=1e-5)


def test_plain_predict_prints_long_files_by_share_of_windows(bundle_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    short, long = tmp_path / "s.wav", tmp_path / "l.wav"
    sf.write(short, noise(2.0), SR)
    sf.write(long, np.tile(noise(10.0), 61), SR)  # 610 s: over the plain mode's 600 s
    assert main(["predict", "--bundle", str(bundle_dir), "--json", "--top-k", "2", str(short)]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["file"] == str(short) and len(body["top_k"]) == 2 and "audio" in body
    assert main(["predict", "--bundle", str(bundle_dir), str(long)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{long}: 1219 windows over 0.17 h; labels by share of windows:")


@pytest.mark.slow
def test_shipped_bundle_rows_equal_the_api_windows(esc50_dir: Path, tmp_path: Path) -> None:
    """Every per-window field of the /predict body (whatever the bundle's trust parts) is in the table."""
    clip = tmp_path / "two.wav"
    clips = sorted((esc50_dir / "audio").glob("5-*"))[:2]
    sf.write(clip, np.concatenate([load_audio(c, 16_000).waveform for c in clips]), 16_000)
    assert main(["predict", str(clip), "--out", str(tmp_path / "t.parquet"), "--quiet"]) == 0
    rows = read_window_table(tmp_path / "t.parquet")
    from tympan.bundle import resolve_bundle_dir

    body = Predictor(resolve_bundle_dir(None)).predict(clip)
    assert len(rows) == len(body["windows"]) == 3
    for r, w in zip(rows, body["windows"], strict=True):
        assert r["label"] == w["top_k"][0]["label"] and r["probability"] == pytest.approx(w["top_k"][0]["probability"], abs=1e-5)
        for k, v in w.items():
            if k != "top_k":
                assert r[k] == (pytest.approx(v, abs=1e-3) if isinstance(v, float) else v), k


@pytest.mark.parametrize("fmt,subtype", [("WAV", "GSM610"), ("WAV", "G721_32"), ("WAV", "IMA_ADPCM"),
                                         ("WAV", "MS_ADPCM"), ("AU", "G723_24"), ("FLAC", "PCM_24"),
                                         ("OGG", "VORBIS")])
def test_streaming_decoder_keeps_the_decoders_guarantees(tmp_path: Path, fmt: str, subtype: str) -> None:
    """Forward-only codecs, and unfinalised or cut files, stream to the samples load_audio gives."""
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"libsndfile has no {fmt}/{subtype}")
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, noise(3.0, 1, 8000), 8000, format=fmt, subtype=subtype)
    cases = [path]
    raw = path.read_bytes()
    if fmt == "WAV":
        unfinished = tmp_path / "unfinished.wav"  # data size left at 0: the header was never finalised
        b = bytearray(raw)
        i = b.find(b"data")
        b[i + 4 : i + 8] = (0).to_bytes(4, "little")
        unfinished.write_bytes(bytes(b))
        cases.append(unfinished)
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(raw[: len(raw) * 3 // 4])
    cases.append(cut)
    for p in cases:
        try:
            want = load_audio(p, SR, max_seconds=None)
        except Exception as exc:  # noqa: BLE001 - the streaming decoder must refuse it too
            with pytest.raises(type(exc)):
                list(iter_audio_blocks(p, SR, block_seconds=0.3))
            continue
        blocks = iter_audio_blocks(p, SR, block_seconds=0.3)
        got = np.concatenate(list(blocks))
        assert np.array_equal(got, want.waveform), p.name
        assert blocks.info.warnings == want.warnings, p.name


def test_raven_high_freq_is_the_band_the_model_saw_of_the_file(tmp_path: Path) -> None:
    """A 32 kHz front end reaching 15 kHz sees a 16 kHz file only up to its Nyquist, 8 kHz."""
    torch.manual_seed(0)
    bundle = Bundle(model=build_model("cnn", n_classes=3, width=8).eval(), arch="cnn", arch_params={"width": 8},
                    classes=["a", "b", "c"], frontend=FrontendConfig(sample_rate=32_000, f_max=15_000.0,
                                                                     clip_seconds=1.0),
                    ood={"score": "energy", "threshold": -0.5, "temperature": 1.0}).save(tmp_path / "bundle")
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "low.wav", noise(2.0), SR)
    sf.write(tmp_path / "in" / "high.wav", noise(2.0, sr=44_100), 44_100)
    assert main(["predict", str(tmp_path / "in"), "--bundle", str(bundle), "--quiet", "--out",
                 str(tmp_path / "raven"), "--format", "raven"]) == 0
    high = {}
    for name in ("low", "high"):
        with open(tmp_path / "raven" / f"{name}.selection.table.txt", newline="") as f:
            high[name] = {float(r["High Freq (Hz)"]) for r in csv.DictReader(f, delimiter="\t")}
    assert high == {"low": {8000.0}, "high": {15000.0}}
