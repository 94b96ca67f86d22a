"""diagnose / calibrate end to end on the generated data set (fast, no real data needed)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.bundle import load_bundle

from helpers import field_folder, run_diagnose, train_tiny_bundle  # noqa: F401


# --------------------------------------------------------------------------- fitting
def test_fit_sets_trust_parameters_and_round_trips(fitted_bundle: Path) -> None:
    from tympan.diagnostics import EmbeddingDriftDetector, FeatureDriftDetector
    from tympan.bundle import read_heldout

    b = load_bundle(fitted_bundle)
    assert b.temperature > 0 and b.temperature != 1.0
    # the energy threshold stays (drift reference, diagnostics); with an ESC-50 folder the score that
    # decides OOD is the energy + k-NN embedding score, with its own held-out threshold
    assert b.ood["score"] == "energy+knn" and b.ood["tpr"] == 0.95 and b.ood["temperature"] == 1.0
    assert np.isfinite(b.ood["embedding"]["threshold"]) and "held-out" in b.ood["embedding"]["fitted_on"]
    assert np.isfinite(b.ood["threshold"]) and "fold 5" in b.ood["fitted_on"]
    # the threshold keeps >= 95% of the held-out clips it was fitted on
    ho = read_heldout(fitted_bundle)
    from tympan.diagnostics import EnergyOOD

    assert np.mean(EnergyOOD.score(ho.logits) <= b.ood["threshold"]) >= 0.95
    ref = b.reference
    det = FeatureDriftDetector.from_dict(ref["acoustic"])
    assert det.n_reference_ == 80  # synthetic folds 1-4
    assert "source_sr" not in list(det.feature_names_in_)
    assert EmbeddingDriftDetector.from_dict(ref["embedding"]).n_features_in_ == 64
    assert sum(ref["predictions"]["counts"]) == 20 and ref["ood_rate"]["expected"] == pytest.approx(0.05)
    diag = b.extra["diagnostics"]
    assert set(diag["reliability"]) == {"before", "after"} and diag["reliability"]["after"]["cross_fitted"]
    assert "cross-fitted" in diag["calibration"]["protocol"]
    assert len(diag["confusion"]["matrix"]) == 5 and diag["ood"]["histograms"]["in"]["counts"]
    # held-out files survive the atomic rewrite; no temp folders are left beside the bundle
    assert (fitted_bundle / "heldout.safetensors").is_file() and (fitted_bundle / "heldout.json").is_file()
    assert not [p for p in fitted_bundle.parent.iterdir() if p.name.startswith(".")]
    # the dashboard can read what we store
    from tympan.dashboard.reports import parse_diagnostics

    parsed = parse_diagnostics(diag, b.classes)
    assert parsed is not None and not parsed.missing


def test_calibrate_cli_is_idempotent_on_temperature(fitted_bundle: Path, tmp_path: Path,
                                                    synthetic_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from tympan.cli import main

    out = tmp_path / "copy"
    assert main(["calibrate", "--bundle", str(fitted_bundle), "--data-dir", str(synthetic_dir),
                 "--out", str(out), "--quiet"]) == 0
    assert "temperature" in capsys.readouterr().out
    assert load_bundle(out).temperature == pytest.approx(load_bundle(fitted_bundle).temperature)
    assert (out / "heldout.json").is_file()


# --------------------------------------------------------------------------- diagnose --field-dir
def test_shifted_folder_is_flagged(fitted_bundle: Path, shifted_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    assert run_diagnose("--field-dir", str(shifted_dir), "--bundle", str(fitted_bundle), "--out", str(out)) == 1
    rep = json.loads((out / "report.json").read_text())
    assert rep["verdict"] == "drift" and rep["exit_code"] == 1
    drifted = rep["checks"]["acoustic"]["drifted_features"]
    assert {"rms_dbfs", "spectral_rolloff_mean"} <= set(drifted)
    assert rep["field"]["n_analysed"] == 40
    html = (out / "report.html").read_text()
    assert "rms_dbfs" in html and html.count("<script") >= 1 and "plotly" in html.lower()
    # the dashboard finds the per-feature table and the overall verdict
    from tympan.dashboard.reports import parse_drift_report

    parsed = parse_drift_report(rep)
    assert parsed is not None and parsed.verdict == "drift" and len(parsed.rows) == len(rep["features"])


def test_clean_folder_passes(fitted_bundle: Path, clean_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    code = run_diagnose("--field-dir", str(clean_dir), "--bundle", str(fitted_bundle), "--out", str(out))
    rep = json.loads((out / "report.json").read_text())
    assert code == 0, rep["overall"]
    assert rep["checks"]["acoustic"]["verdict"] == "no drift"
    assert rep["verdict"] == "no drift"


def test_fail_on_never_and_drift(fitted_bundle: Path, shifted_dir: Path, tmp_path: Path) -> None:
    assert run_diagnose("--field-dir", str(shifted_dir), "--bundle", str(fitted_bundle), "--out", str(tmp_path / "a"),
                     "--fail-on", "never") == 0
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["verdict"] == "drift" and rep["exit_code"] == 0


def test_some_unreadable_files_are_listed(fitted_bundle: Path, clean_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(clean_dir, folder)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (folder / "empty.flac").write_bytes(b"")
    (folder / "notes.txt").write_text("not audio")
    out = tmp_path / "rep"
    # files that could not be analysed fail the run (exit 2), the report is still written ...
    code = run_diagnose("--field-dir", str(folder), "--bundle", str(fitted_bundle), "--out", str(out))
    assert code == 2
    # ... unless --max-failed-share allows them (2 of 42 files here)
    code = run_diagnose("--field-dir", str(folder), "--bundle", str(fitted_bundle), "--out", str(out),
                     "--max-failed-share", "0.1")
    assert code in (0, 1)
    rep = json.loads((out / "report.json").read_text())
    bad = {b["file"] for b in rep["field"]["unreadable"]}
    assert bad == {"broken.wav", "empty.flac"}
    assert all(b["reason"] for b in rep["field"]["unreadable"])
    assert [s["file"] for s in rep["field"]["skipped"]] == ["notes.txt"]
    html = (out / "report.html").read_text()
    assert "broken.wav" in html and "empty.flac" in html


@pytest.mark.parametrize("case", ["missing", "empty", "all_unreadable", "bad_bundle"])
def test_bad_input_exits_2_with_one_line(case: str, fitted_bundle: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "f"
    bundle = fitted_bundle
    if case == "empty":
        folder.mkdir()
    elif case == "all_unreadable":
        folder.mkdir()
        for i in range(3):
            (folder / f"x{i}.wav").write_bytes(b"not really a wav file")
    elif case == "bad_bundle":
        folder.mkdir()
        sf.write(folder / "a.wav", np.zeros(16000, np.float32), 16000)
        bundle = tmp_path / "nobundle"
        bundle.mkdir()
    code = run_diagnose("--field-dir", str(folder), "--bundle", str(bundle), "--out", str(tmp_path / "o"))
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("diagnose: error:") and "Traceback" not in err
    assert not (tmp_path / "o" / "report.json").exists()


def test_tiny_folder_is_insufficient_data(fitted_bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(folder / f"{i}.wav", (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
    out = tmp_path / "rep"
    assert run_diagnose("--field-dir", str(folder), "--bundle", str(fitted_bundle), "--out", str(out)) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["verdict"] == "insufficient data" and "insufficient" in rep["overall"]["note"]


def test_reports_are_written_atomically_and_replaced_whole(fitted_bundle: Path, clean_dir: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.json").write_text('{"old": true, "padding": "' + "x" * 100000 + '"}')
    (out / "report.html").write_text("<html>old</html>" + "x" * 100000)
    run_diagnose("--bundle", str(fitted_bundle), "--out", str(out))
    rep = json.loads((out / "report.json").read_text())  # parses: replaced whole, not overwritten in place
    assert "old" not in rep and rep["kind"] == "model"
    assert "old" not in (out / "report.html").read_text()[:200]
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]  # no temp files left


def test_bundle_alone_reports_stored_diagnostics(fitted_bundle: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rep"
    assert run_diagnose("--bundle", str(fitted_bundle), "--out", str(out)) == 0
    text = capsys.readouterr().out
    assert "ECE" in text and "temperature" in text
    rep = json.loads((out / "report.json").read_text())
    assert rep["model_diagnostics"]["calibration"]["after"]["ece"] is not None
    html = (out / "report.html").read_text()
    assert "Reliability diagram" in html and "Confusion matrix" in html
    assert "<script src=" not in html and html.count("Plotly.newPlot") >= 2  # plotly.js inline once: offline
    assert len(html) < 8_000_000


def test_tympan_diagnose_is_the_same_command(fitted_bundle: Path, tmp_path: Path) -> None:
    from tympan.cli import main

    assert main(["diagnose", "--bundle", str(fitted_bundle), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert (tmp_path / "r" / "report.json").is_file()


def test_exit_code_policy() -> None:
    from tympan.diagnostics.field import exit_code_for

    res = {"checks": {"acoustic": {"verdict": "no drift"}, "ood_rate": {"verdict": "drift"}}}
    assert exit_code_for(res, "any") == 1 and exit_code_for(res, "ood") == 1
    assert exit_code_for(res, "drift") == 0 and exit_code_for(res, "never") == 0
    with pytest.raises(ValueError):
        exit_code_for(res, "sometimes")


def test_acoustic_cache_is_reused(synthetic_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tympan.datasets import load_esc50
    from tympan.diagnostics import reference as fit

    ds = load_esc50(synthetic_dir, folds=[1])
    first = fit.esc50_acoustic(ds, 16000, progress=False)
    monkeypatch.setattr(fit, "acoustic_features", lambda *a, **k: pytest.fail("cache miss"))
    assert np.array_equal(fit.esc50_acoustic(ds, 16000, progress=False), first)
    cache = Path(os.environ["TYMPAN_CACHE_DIR"]) / "diagnostics"
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_unfitted_bundle_is_an_error_not_a_silent_pass(fitted_bundle: Path, clean_dir: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    b = load_bundle(fitted_bundle)
    raw = b.replace(reference={}, ood={"score": "energy", "temperature": 1.0, "threshold": None}, extra={},
                    background={}, arrays={})  # nothing fitted
    raw.save(tmp_path / "raw")
    code = run_diagnose("--field-dir", str(clean_dir), "--bundle", str(tmp_path / "raw"), "--out", str(tmp_path / "o"))
    assert code == 2 and "tympan calibrate" in capsys.readouterr().err


def test_robustness_sweep(fitted_bundle: Path, synthetic_dir: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "rep"
    assert run_diagnose("--robustness", "--bundle", str(fitted_bundle), "--data-dir", str(synthetic_dir),
                     "--max-clips", "10", "--out", str(out)) == 0
    rep = json.loads((out / "report.json").read_text())
    rows = {r["corruption"]: r for r in rep["robustness"]["rows"]}
    assert {"clean", "white_0db", "lowpass_2k", "resample_8k", "mp3", "opus", "clipping_30"} <= set(rows)
    assert rows["clean"]["accuracy_drop"] == 0 and rep["robustness"]["n_clips"] == 10
    assert all(0 <= r["ece"] <= 1 for r in rows.values())
    assert "white_0db" in capsys.readouterr().out
    assert "Robustness under controlled corruptions" in (out / "report.html").read_text()


# --------------------------------------------------------------------------- trust: accuracy estimate, gate, adaptation
def test_accuracy_estimator_is_fitted_on_heldout_predictions_only(fitted_bundle: Path, synthetic_dir: Path) -> None:
    """Fails if a training fold leaks into the estimator: it must reproduce a fit on heldout.* alone."""
    from scipy.special import softmax

    from tympan.bundle import read_heldout
    from tympan.datasets import load_esc50
    from tympan.stats.performance import ATCEstimator, estimator_from_dict

    b = load_bundle(fitted_bundle)
    perf = b.extra["performance"]
    ho = read_heldout(fitted_bundle)
    est = estimator_from_dict(perf["estimator"])
    assert perf["estimator"]["n_fit"] == len(ho.labels) == int(np.sum(load_esc50(synthetic_dir).folds == 5))
    assert "fold 5" in perf["fitted_on"] and perf["weights_sha256"] == b.weights_fingerprint
    probs = softmax(ho.logits / b.temperature, axis=1)
    assert perf["heldout_accuracy"] == pytest.approx(np.mean(probs.argmax(1) == ho.labels))
    ref = ATCEstimator(perf["estimator"]["score"]).fit(probs, ho.labels)
    assert est.threshold_ == pytest.approx(ref.threshold_)
    # validated on held-out halves under the calibrate shifts (synthetic ESC-50 folder given)
    assert {"clean", "pink_10db", "gain_-20db"} <= set(perf["validation"]["shifts"])
    assert perf["systematic_error"] >= max(abs(v["bias"]) for v in perf["validation"]["shifts"].values())


def test_report_opens_with_estimated_accuracy(fitted_bundle: Path, shifted_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    run_diagnose("--field-dir", str(shifted_dir), "--bundle", str(fitted_bundle), "--out", str(out))
    rep = json.loads((out / "report.json").read_text())
    ea = rep["performance"]["estimated_accuracy"]
    assert set(ea) == {"value", "low", "high", "method"} and ea["low"] <= ea["value"] <= ea["high"]
    classes = rep["model"]["classes"]
    true = np.mean([int(Path(p["file"]).stem.split("-")[-1]) == classes.index(p["predicted"]) for p in rep["per_file"]])
    assert ea["low"] <= true <= ea["high"]  # the generated shift's true accuracy lies in the interval
    assert rep["summary"].startswith("On these 40 recordings the model")
    assert rep["gate"]["audio_differs"]
    html = (out / "report.html").read_text()
    assert "Estimated accuracy" in html and "On these 40 recordings" in html


def _adapt(*argv: str) -> int:
    from tympan.cli import main

    return main(["adapt", *argv])


def test_adapted_bundle_marks_trust_stale_or_refits(fitted_bundle: Path, shifted_dir: Path, clean_dir: Path,
                                                    synthetic_dir: Path, tmp_path: Path) -> None:
    stale_dir, refit_dir = tmp_path / "adapted", tmp_path / "refitted"
    assert _adapt("--bundle", str(fitted_bundle), "--field-dir", str(shifted_dir), "--out", str(stale_dir)) == 0
    a = load_bundle(stale_dir)
    assert a.extra["performance"]["stale"] and "tympan adapt" in a.extra["performance"]["stale_reason"]
    assert {"temperature", "performance", "reference.embedding"} <= set(a.extra["adaptation"]["stale"])
    # the OOD judges are carried over from the unadapted model (moment matching on the field windows)
    assert {"ood_threshold", "ood.embedding (energy + k-NN)"} <= set(a.extra["adaptation"]["refitted"])
    assert "ood_threshold" not in a.extra["adaptation"]["stale"]
    out = tmp_path / "rep"
    run_diagnose("--field-dir", str(clean_dir), "--bundle", str(stale_dir), "--out", str(out))
    rep = json.loads((out / "report.json").read_text())
    assert "adabn" in rep["adaptation"]["description"] and str(shifted_dir) in rep["adaptation"]["description"]
    assert "performance" in rep["adaptation"]["stale"]
    assert rep["performance"]["stale"] and rep["checks"]["performance"]["stale"]
    assert rep["checks"]["performance"]["verdict"] != "drift"  # a stale estimator never votes
    assert "stale" in rep["summary"]
    assert "adapted from" in (out / "report.html").read_text()

    # with --data-dir: refitted on the held-out clips with the adapted weights
    assert _adapt("--bundle", str(fitted_bundle), "--field-dir", str(shifted_dir), "--out", str(refit_dir),
                  "--data-dir", str(synthetic_dir)) == 0
    r = load_bundle(refit_dir)
    assert not r.extra["performance"]["stale"] and r.extra["performance"]["weights_sha256"] == r.weights_fingerprint
    assert {"temperature", "ood_threshold", "performance"} <= set(r.extra["adaptation"]["refitted"])
    assert not {"temperature", "ood_threshold", "performance"} & set(r.extra["adaptation"]["stale"])
    out2 = tmp_path / "rep2"
    run_diagnose("--field-dir", str(clean_dir), "--bundle", str(refit_dir), "--out", str(out2))
    rep2 = json.loads((out2 / "report.json").read_text())
    assert not rep2["performance"]["stale"] and "performance" in rep2["adaptation"]["refitted"]


def _ood_share(report_dir: Path) -> float:
    rows = json.loads((report_dir / "report.json").read_text())["per_file"]
    return sum(r["out_of_distribution"] for r in rows) / len(rows)


def test_adapted_bundle_does_not_flag_more_of_its_own_field_audio(fitted_bundle: Path, shifted_dir: Path,
                                                                  tmp_path: Path) -> None:
    """Issue #24 item 10: the judges fitted on the old embeddings must not judge the new ones as they are."""
    adapted = tmp_path / "adapted"
    assert _adapt("--bundle", str(fitted_bundle), "--field-dir", str(shifted_dir), "--out", str(adapted)) == 0
    for b, out in ((fitted_bundle, tmp_path / "before"), (adapted, tmp_path / "after")):
        run_diagnose("--field-dir", str(shifted_dir), "--bundle", str(b), "--out", str(out), "--fail-on", "never")
    before, after = _ood_share(tmp_path / "before"), _ood_share(tmp_path / "after")
    assert after <= before + 0.025, (before, after)
    rep = json.loads((adapted / "bundle.json").read_text())["extra"]["adaptation"]
    assert rep["checks"]["ood_rate_after"] <= rep["checks"]["ood_rate_before"] + 0.025
