"""The diagnostics block and report.json contracts, and the one figures module drawn from them."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from pydantic import ValidationError

from tympan import figures
from tympan.contracts.diagnostics import (
    Confusion,
    Diagnostics,
    Histogram,
    OODDiagnostics,
    Reliability,
    ReliabilityBins,
)
from tympan.contracts.report import DiagnoseReport, Robustness

# the tiny fitted bundle and the field folder of the diagnose tests (module-scoped fixtures)
from helpers import run_diagnose

SHIPPED = Path(__file__).resolve().parents[1] / "tympan" / "assets" / "default" / "bundle.json"


def shipped_diagnostics() -> dict:
    return json.loads(SHIPPED.read_text())["extra"]["diagnostics"]


# --------------------------------------------------------------------------- the diagnostics block
def test_shipped_bundle_diagnostics_validate_and_round_trip() -> None:
    raw = shipped_diagnostics()
    doc = Diagnostics.model_validate(raw)
    assert doc.version == 1 and len(doc.confusion.class_names) == 50
    assert doc.reliability.after.cross_fitted and set(doc.ood.histograms) == {"in", "out"}
    # the same keys come back out: field names are the JSON keys written today
    assert doc.model_dump(mode="json", exclude_unset=True) == raw


def test_producer_writes_what_the_model_validates() -> None:
    from tympan.diagnostics import heldout
    from tympan.stats.ood import EnergyOOD
    from tympan.stats.temperature import calibrate_heldout

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 15)
    logits = rng.normal(size=(60, 4)) + 3 * np.eye(4)[y]
    raw = heldout.heldout_diagnostics(logits, y, [f"c{i}" for i in range(60)], list("abcd"),
                                      calibration=calibrate_heldout(logits, y), detector=EnergyOOD().fit(logits),
                                      evaluated_on="test")
    assert heldout.Diagnostics is Diagnostics
    doc = Diagnostics.model_validate(raw)
    assert doc.version == 1 and doc.ood.metrics is None and "out" not in doc.ood.histograms  # no --ood-dir
    json.dumps(raw, allow_nan=False)


def test_a_wrong_type_fails_naming_the_field() -> None:
    raw = shipped_diagnostics()
    bad = copy.deepcopy(raw)
    bad["n_clips"] = "four hundred"
    with pytest.raises(ValidationError, match="n_clips"):
        Diagnostics.model_validate(bad)
    bad = copy.deepcopy(raw)
    bad["confusion"]["matrix"][3][1] = "x"
    with pytest.raises(ValidationError) as info:
        Diagnostics.model_validate(bad)
    assert info.value.errors()[0]["loc"] == ("confusion", "matrix", 3, 1)
    bad = copy.deepcopy(raw)
    bad["reliability"]["after"]["count"] = bad["reliability"]["after"]["count"][:-1]
    with pytest.raises(ValidationError, match="count has 14 bins"):
        Diagnostics.model_validate(bad)
    # a version 1 block is complete; unknown keys are refused
    bad = copy.deepcopy(raw)
    del bad["calibration"]
    with pytest.raises(ValidationError, match="needs calibration"):
        Diagnostics.model_validate(bad)
    with pytest.raises(ValidationError, match="surprise"):
        Diagnostics.model_validate({**raw, "surprise": 1})

    # the dashboard says which field, in one line
    from tympan.dashboard.reports import ContractError, parse_diagnostics

    bad = copy.deepcopy(raw)
    bad["ood"]["threshold"] = "high"
    with pytest.raises(ContractError, match=r"ood\.threshold") as err:
        parse_diagnostics(bad)
    assert "\n" not in str(err.value)


def test_report_with_a_wrong_type_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    from tympan.dashboard.reports import ContractError, parse_drift_report
    from tympan.diagnostics.report import write_report

    report = {"tympan_report": 1, "generated": "2026-01-01T00:00:00+00:00", "kind": "model",
              "model": {"name": "m", "arch": "cnn", "version": "abc", "bundle": "b", "temperature": 1.0,
                        "ood": {}, "classes": ["a"], "metrics": {}},
              "model_diagnostics": None, "exit_code": "zero", "fail_on": "any"}
    with pytest.raises(ValueError, match="exit_code"):
        write_report(tmp_path / "out", report)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ContractError, match="exit_code"):
        parse_drift_report(report)
    with pytest.raises(ValidationError, match="needs verdict, overall"):
        DiagnoseReport.model_validate({**report, "exit_code": 0, "kind": "field"})
    paths = write_report(tmp_path / "ok", {**report, "exit_code": 0})
    assert DiagnoseReport.model_validate_json(Path(paths["json"]).read_text()).kind == "model"


def test_report_of_a_real_diagnose_run_validates(fitted_bundle: Path, clean_dir: Path,  # noqa: F811
                                                 synthetic_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    code = run_diagnose("--field-dir", str(clean_dir), "--bundle", str(fitted_bundle), "--robustness",
                     "--data-dir", str(synthetic_dir), "--max-clips", "10", "--out", str(out))
    assert code in (0, 1)
    raw = json.loads((out / "report.json").read_text())
    rep = DiagnoseReport.model_validate(raw)
    assert rep.kind == "field+robustness" and rep.exit_code == code
    assert rep.checks.acoustic is not None and len(rep.features) == len(rep.checks.acoustic.features)
    assert rep.field.n_analysed == 40 and len(rep.per_file) == 40
    assert rep.robustness.n_clips == 10 and rep.model_diagnostics.version == 1
    assert rep.model_dump(mode="json", exclude_unset=True) == raw  # nothing dropped or renamed

    from tympan.dashboard.reports import parse_drift_report

    parsed = parse_drift_report(raw)
    assert isinstance(parsed.report, DiagnoseReport) and len(parsed.rows) == len(raw["features"])
    assert parsed.min_effect == pytest.approx(0.1) and "ood_rate" in parsed.checks


def test_dashboard_and_producers_use_the_same_models() -> None:
    from tympan.dashboard import reports
    from tympan.diagnostics import report

    assert reports.Diagnostics is Diagnostics and reports.DiagnoseReport is DiagnoseReport
    assert report.DiagnoseReport is DiagnoseReport


# --------------------------------------------------------------------------- figures
def _bins(acc_scale: float, **extra: object) -> ReliabilityBins:
    conf = [None, 0.3, 0.5, 0.7, 0.9]
    return ReliabilityBins(strategy="uniform", confidence=conf,
                           accuracy=[None if c is None else c * acc_scale for c in conf],
                           count=[0, 2, 5, 10, 40], **extra)


def test_reliability_diagram() -> None:
    rel = Reliability(before=_bins(0.8, ece=0.1, temperature=1.0),
                      after=_bins(1.0, ece=0.01, temperature=1.4, cross_fitted=True))
    fig = figures.reliability_diagram(rel)
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == ["perfect calibration", "before temperature scaling, ECE 0.100",
                                          "after temperature scaling (T = 1.40, cross-fitted), ECE 0.010"]
    before = fig.data[1]
    assert len(before.x) == 4  # the empty bin is not drawn
    sizes = np.asarray(before.marker.size)
    assert sizes.argmax() == 3 and sizes.min() < sizes.max()  # marker size grows with the bin count
    assert len(figures.reliability_diagram(Reliability(before=rel.before)).data) == 2


def test_ood_and_score_histograms() -> None:
    ood = OODDiagnostics(score_name="energy", threshold=-4.0, histograms={
        "in": Histogram(edges=[-10, -5, 0], counts=[30, 10], label="held-out"),
        "out": Histogram(edges=[-10, -5, 0], counts=[2, 8], label="oodset")})
    fig = figures.ood_histograms(ood)
    assert [type(t).__name__ for t in fig.data] == ["Bar", "Bar"]
    assert fig.data[0].name.startswith("held-out") and fig.data[1].name.startswith("oodset")
    assert np.allclose(fig.data[1].y, [0.2, 0.8])  # shares of each set's own clips
    assert [s.x0 for s in fig.layout.shapes] == [-4.0]  # the threshold line
    fig = figures.score_histograms(np.zeros(10), np.ones(5), title="t", xlabel="x", threshold=0.5)
    assert len(fig.data) == 2 and len(fig.layout.shapes) == 1
    assert len(figures.score_histograms(None, [1.0, 2.0], title="t", xlabel="x").data) == 1


def test_confusion_heatmap_for_50_classes() -> None:
    names = [f"class_{i:02d}" for i in range(50)]
    m = (np.eye(50, dtype=int) * 8).tolist()
    m[0][1] = 3
    fig = figures.confusion_heatmap(Confusion(class_names=names, matrix=m))
    (heat,) = fig.data
    assert heat.z.shape == (50, 50) and heat.z[0][0] == pytest.approx(8 / 11)
    assert list(fig.layout.xaxis.tickvals) == names and list(fig.layout.yaxis.tickvals) == names  # every label
    assert fig.layout.height >= 15 * 50
    raw = figures.confusion_heatmap(Confusion(class_names=names, matrix=m), normalize=False)
    assert raw.data[0].z[0][1] == 3
    with pytest.raises(ValidationError, match="class_names has 2 names"):
        Confusion(class_names=["a", "b"], matrix=[[1]])


def test_drift_and_other_figures() -> None:
    fig = figures.drift_effects(["rms", "zcr", "flat"], [0.9, 0.02, None], ["drift", "no drift", "no drift"],
                                min_effect=0.1)
    (bars,) = fig.data
    assert list(bars.y) == ["zcr", "rms"] and list(bars.marker.color) == [figures.VERDICT_COLOURS["no drift"],
                                                                          figures.VERDICT_COLOURS["drift"]]
    assert [s.x0 for s in fig.layout.shapes] == [0.1]
    assert len(figures.per_class_accuracy({"a": 0.5, "b": 1.0, "c": None}).data[0].y) == 2
    assert [t.name.split(" ")[0] for t in figures.class_mix(["a", "b"], [3, 1], [0, 4]).data] == ["reference",
                                                                                                 "field"]
    rob = Robustness(evaluated_on="x", n_clips=2, sample_rate=16000, temperature=1.0, ood_threshold=None, seed=0,
                     notes="", rows=[{"corruption": "clean", "name": None, "params": {}, "description": "clean",
                                      "accuracy": 1.0, "accuracy_drop": 0.0, "ece": 0.1, "nll": 0.2, "brier": 0.1,
                                      "mean_confidence": 0.9, "ood_flagged": None}])
    assert [t.name for t in figures.robustness_sweep(rob).data] == ["accuracy", "ECE"]


def test_figures_sit_low_in_the_layer_order() -> None:
    import tympan.figures as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module)
    outside = {r for r in roots if not (r.split(".")[0] in {"plotly", "numpy", "__future__", "collections", "typing"}
                                        or r.startswith("tympan.contracts"))}
    assert not outside, outside


def test_dashboard_pages_show_an_invalid_document_as_an_error(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("streamlit")
    pytest.importorskip("uvicorn")
    from streamlit.testing.v1 import AppTest
    from test_dashboard import CLASSES, ENTRY, TIMEOUT, diagnostics_fixture, goto, make_bundle, serve, texts

    bad = {**diagnostics_fixture(), "n_clips": "many"}
    assert bad["confusion"]["class_names"] == CLASSES
    with serve(make_bundle(tmp_path / "bad", bad)) as url:
        monkeypatch.setenv("TYMPAN_API_URL", url)
        at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT).run()
        goto(at, "diagnostics")
        assert not at.exception
        assert len(at.error) == 1 and "n_clips" in at.error[0].value and "Input should be a valid integer" in texts(at)
        assert not at.get("plotly_chart")

        # an older report.json on the Field drift page
        goto(at, "drift")
        old = {"tympan_report": 1, "generated": "x", "kind": "field", "verdict": "drift", "features": []}
        at.file_uploader(key="drift_report").upload("old.json", json.dumps(old).encode(), "application/json")
        at.run()
        assert not at.exception
        assert any("old.json" in e.value and "DiagnoseReport" in e.value for e in at.error)
