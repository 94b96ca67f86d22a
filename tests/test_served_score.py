"""One name for the score that decides OOD, everywhere (issues #23 item 4, #24 item 11).

The shipped bundle decides OOD with the outlier probe (threshold -3.160); its ``ood`` block
also holds the energy threshold (-3.295). ``tympan predict``'s line, its JSON, the ``/predict``
``aggregate`` text, ``diagnose --bundle`` and report.html must name the probe and its threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.bundle import default_bundle_dir, read_metadata
from tympan.contracts.ood import served_ood

SHIPPED = default_bundle_dir()
OOD = read_metadata(SHIPPED)["ood"]
PROBE_THR = f"{OOD['embedding']['threshold']:.3f}"  # -3.160
ENERGY_THR = f"{OOD['threshold']:.3f}"  # -3.295


def tympan_help(*argv: str) -> str:
    import argparse
    import contextlib
    import io

    from tympan.cli import build_parser

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    del argparse
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor():
    from tympan.inference import Predictor

    return Predictor(SHIPPED, backend="eager", threads=1)  # eager: no backend timing (seconds, not a minute)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sr = 16_000
    t = np.arange(5 * sr) / sr
    y = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    path = tmp_path_factory.mktemp("clip") / "tone.wav"
    sf.write(path, y.astype(np.float32), sr, subtype="PCM_16")
    return path


def test_served_ood_reads_the_probe_not_the_energy_threshold() -> None:
    s = served_ood(OOD)
    assert s.score_name == "probe" and f"{s.threshold:.3f}" == PROBE_THR != ENERGY_THR
    assert s.headline() == f"outlier probe score (probe), threshold {PROBE_THR}"
    assert "100.0% of 123 windows" in s.figures_text()
    energy = served_ood({"score": "energy", "threshold": -4.0})
    assert energy.decides_by_energy and energy.threshold == -4.0


def predict_output(predictor, clip: Path, *extra: str, capsys: pytest.CaptureFixture) -> str:
    """``tympan predict CLIP`` as the command line runs it, on the eager backend."""
    from tympan.batch.cli import _print_mode
    from tympan.cli import build_parser

    args = build_parser().parse_args(["predict", str(clip), *extra])
    capsys.readouterr()
    assert _print_mode(args, predictor) == 0
    return capsys.readouterr().out


def test_predict_line_and_json_name_the_probe(predictor, clip: Path, capsys: pytest.CaptureFixture) -> None:
    line = predict_output(predictor, clip, capsys=capsys)
    assert "probe score " in line and f"(threshold {PROBE_THR})" in line, line
    assert "energy" not in line  # it printed "energy -9.052" while the probe decided
    body = json.loads(predict_output(predictor, clip, "--json", capsys=capsys).splitlines()[0])
    assert body["ood"]["score_name"] == "probe" and f"{body['ood']['threshold']:.3f}" == PROBE_THR
    assert "outlier-probe" in body["aggregate"] and "energy" not in body["aggregate"]
    assert body["timing_ms"] > 0  # was 0.0 for every file


def test_diagnose_bundle_and_report_name_the_probe(capsys: pytest.CaptureFixture) -> None:
    from tympan.diagnostics.cli import _print_model
    from tympan.diagnostics.report import render_html

    meta = read_metadata(SHIPPED)
    diag = meta["extra"]["diagnostics"]
    _print_model(diag, meta["ood"])  # what `diagnose --bundle` prints
    out = capsys.readouterr().out
    assert f"OOD decided by the outlier probe score (probe), threshold {PROBE_THR}" in out, out
    assert "energy threshold" in out and "for comparison; not served" in out  # energy figures say so
    report = {"tympan_report": 1, "generated": "now", "kind": "model", "exit_code": 0, "fail_on": "model",
              "model": {"name": meta["name"], "arch": meta["architecture"]["name"], "version": "v",
                        "bundle": str(SHIPPED), "temperature": meta["temperature"], "ood": meta["ood"],
                        "classes": meta["classes"], "metrics": meta["metrics"]},
              "model_diagnostics": diag}
    html = render_html(report)
    assert f"OOD decided by the outlier probe score (probe), threshold {PROBE_THR}" in html
    assert f"OOD threshold {float(ENERGY_THR):.4f}" not in html  # the energy's, under the probe's name


def test_calibrate_help_prints_one_percent_sign() -> None:
    out = tympan_help("calibrate")
    assert "95% TPR" in out and "%%" not in out


def test_dashboard_diagnostics_page_shows_the_served_score(monkeypatch: pytest.MonkeyPatch,
                                                           synthetic_dir: Path) -> None:
    pytest.importorskip("streamlit")
    serving_app = pytest.importorskip("tympan.serving.app", reason="tympan.serving is not available")
    from helpers import LiveServer
    from streamlit.testing.v1 import AppTest

    from tympan.serving.settings import Settings

    settings = Settings(backend="eager", torch_threads=1, warmup_batch_sizes=(1,), decode_threads=1)
    with LiveServer(serving_app.create_app(SHIPPED, settings)) as server:
        monkeypatch.setenv("TYMPAN_API_URL", server.url)
        monkeypatch.setenv("TYMPAN_ESC50_DIR", str(synthetic_dir))
        at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboard" / "streamlit_app.py"),
                               default_timeout=60).run()
        at.sidebar.radio(key="page").set_value("diagnostics")
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    metric = next(m for m in at.metric if m.label.startswith("OOD threshold"))
    assert metric.label == "OOD threshold (outlier probe score)" and metric.value == PROBE_THR
    captions = " ".join(c.value for c in at.caption)
    assert f"outlier probe score (probe), threshold {PROBE_THR}" in captions
    assert "flags 100.0% of 123 windows" in captions  # the probe's own figures, not only the energy's
    assert "kept for comparison" in captions
