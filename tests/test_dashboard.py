"""The Streamlit dashboard, driven by ``streamlit.testing.v1.AppTest`` against a REAL API server.

A tiny ``cnn`` bundle (5 classes, width 4, 2-s clips) is served by ``tympan.serving.app.create_app``
under uvicorn on a free local port; every page runs against it, then against a port where
nothing listens (the API is down: a plain error, no exception).
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("streamlit")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
serving_app = pytest.importorskip("tympan.serving.app", reason="tympan.serving is not available")

from streamlit.testing.v1 import AppTest  # noqa: E402

from tympan.dashboard.client import ApiClient, ApiError  # noqa: E402
from tympan.dashboard.reports import parse_diagnostics, parse_drift_report  # noqa: E402
from helpers import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENTRY = str(REPO / "dashboard" / "streamlit_app.py")
CLASSES = ["hum", "whistle", "noise_burst", "chirp", "clicks"]
TIMEOUT = 60


# -- a real server ------------------------------------------------------------------------------

def make_bundle(dest: Path, diagnostics: dict | None = None) -> Path:
    import torch

    from tympan.bundle import Bundle
    from tympan.features import FrontendConfig
    from tympan.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn", n_classes=len(CLASSES), width=4).eval()
    extra = {"diagnostics": diagnostics} if diagnostics is not None else {}
    bundle = Bundle(model=model, arch="cnn", arch_params={"width": 4}, classes=list(CLASSES),
                    frontend=FrontendConfig(clip_seconds=2.0), name="tiny-test",
                    ood={"score": "energy", "temperature": 1.0, "threshold": 0.0}, extra=extra)
    return bundle.save(dest)


@contextlib.contextmanager
def serve(bundle_dir: Path, **settings_kw) -> Iterator[str]:
    """Run the API for ``bundle_dir`` on a free port in a thread; yield its URL once ready."""
    import httpx
    import uvicorn

    from tympan.serving.settings import Settings

    settings = Settings(torch_threads=1, warmup_batch_sizes=(1,), decode_threads=1, **settings_kw)
    app = serving_app.create_app(bundle_dir, settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the API did not become ready within 60 s")
            time.sleep(0.1)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def diagnostics_fixture() -> dict:
    """The "diagnostics" shape the dashboard documents (reports.py), as the bundle stores it."""
    rng = np.random.default_rng(0)
    m = rng.integers(0, 4, (5, 5)) + np.diag([30, 25, 20, 28, 33])
    conf = np.linspace(0.05, 0.95, 10)
    return {
        "evaluated_on": "test fixture, 5 folds",
        "confusion": {"class_names": CLASSES, "matrix": m.tolist()},
        "reliability": {
            "before": {"confidence": conf.tolist(), "accuracy": (conf * 0.8).tolist(), "count": [10] * 10, "ece": 0.1},
            "after": {"confidence": conf.tolist(), "accuracy": conf.tolist(), "count": [10] * 10, "ece": 0.01,
                      "temperature": 1.7},
        },
        "ood": {"score_name": "energy", "threshold": -4.0,
                "histograms": {"in": {"edges": list(range(-10, 1)), "counts": [1, 3, 8, 12, 9, 5, 2, 1, 0, 0]},
                               "out": {"edges": list(range(-10, 1)), "counts": [0, 0, 0, 1, 2, 5, 9, 11, 6, 3]}},
                "metrics": {"auroc": 0.9}},
    }


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    bundle = make_bundle(tmp_path_factory.mktemp("bundle") / "tiny", diagnostics_fixture())
    with serve(bundle) as url:
        yield url


@pytest.fixture(scope="module")
def wav_bytes() -> bytes:
    sr = 16_000
    t = np.arange(int(2.5 * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * np.random.default_rng(1).standard_normal(len(t))
    buf = io.BytesIO()
    sf.write(buf, y.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.fixture()
def app(api_url: str, monkeypatch: pytest.MonkeyPatch, synthetic_dir: Path):
    monkeypatch.setenv("TYMPAN_API_URL", api_url)
    monkeypatch.setenv("TYMPAN_ESC50_DIR", str(synthetic_dir))
    at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT)
    return at.run()


def goto(at: AppTest, page: str) -> AppTest:
    at.sidebar.radio(key="page").set_value(page)
    return at.run()


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "success", "title",
                                  "subheader") for e in getattr(at, kind)]
    parts += [e.value for e in at.sidebar.error] + [e.value for e in at.sidebar.success]
    return "\n".join(str(p) for p in parts)


def plotly_count(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


# -- pages against a live API -------------------------------------------------------------------

def test_every_page_renders_with_the_api_up(app: AppTest) -> None:
    no_exception(app)
    assert "API up" in texts(app)
    for page, title in [("classify", "Classify a sound"), ("inside", "Inside the CNN"),
                        ("acoustic", "Acoustic features"), ("diagnostics", "Model diagnostics"),
                        ("drift", "Field drift")]:
        goto(app, page)
        no_exception(app)
        assert app.title[0].value == title


def test_uploaded_clip_is_classified_and_explained(app: AppTest, wav_bytes: bytes) -> None:
    app.radio(key="clip_source").set_value("upload").run()
    app.file_uploader(key="upload").upload("tone.wav", wav_bytes, "audio/wav")
    app.run()
    no_exception(app)
    assert not app.error, [e.value for e in app.error]
    prediction = app.metric[0]
    assert prediction.label == "Prediction" and prediction.value in CLASSES
    assert "probability" not in prediction.value
    assert "-badge[" in texts(app)  # in distribution / uncertain / out of distribution
    assert any(w in texts(app) for w in ("In distribution", "Uncertain", "Out of distribution"))
    assert plotly_count(app) >= 1  # top-k bar chart, then waveform and log-mel if /explain answers
    assert len(app.get("audio")) == 1

    goto(app, "inside")
    no_exception(app)
    assert "tone.wav" in texts(app)

    goto(app, "acoustic")
    no_exception(app)
    assert "in these features nearest to the median" in texts(app) and "looks like" not in texts(app)
    assert plotly_count(app) >= 5
    app.multiselect(key="ac_folds").set_value([1, 2]).run()
    no_exception(app)


def test_explain_views_show_what_the_model_saw(app: AppTest, api_url: str, wav_bytes: bytes) -> None:
    try:
        exp = ApiClient(api_url).explain(wav_bytes, "tone.wav")
    except ApiError as exc:
        pytest.skip(f"/explain is not available from this server yet: {exc}")
    assert exp["logmel"]["data"]
    app.radio(key="clip_source").set_value("upload").run()
    app.file_uploader(key="upload").upload("tone.wav", wav_bytes, "audio/wav")
    app.run()
    no_exception(app)
    assert plotly_count(app) >= 3  # top-k, waveform, log-mel
    goto(app, "inside")
    no_exception(app)
    assert not app.error and not app.warning, texts(app)
    assert plotly_count(app) >= 1 + len(exp.get("feature_maps") or [])


def test_long_recording_shows_the_window_timeline(app: AppTest) -> None:
    sr = 16_000
    t = np.arange(7 * sr) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sin(2 * np.pi * (200 + 300 * t) * t)).astype(np.float32), sr, format="WAV")
    app.radio(key="clip_source").set_value("upload").run()
    app.file_uploader(key="upload").upload("long.wav", buf.getvalue(), "audio/wav")
    app.run()
    no_exception(app)
    assert "Over time" in [s.value for s in app.subheader]


def test_microphone_recording_is_classified(app: AppTest, wav_bytes: bytes) -> None:
    app.radio(key="clip_source").set_value("microphone").run()
    app.audio_input(key="mic").set_value(("recording.wav", wav_bytes, "audio/wav"))
    app.run()
    no_exception(app)
    assert app.metric[0].value in CLASSES


def test_example_clip_from_the_data_folder(app: AppTest) -> None:
    app.radio(key="clip_source").set_value("example").run()
    no_exception(app)
    assert app.selectbox(key="example_class").options
    assert app.metric[0].value in CLASSES


def test_bad_upload_gets_the_apis_error(app: AppTest) -> None:
    app.radio(key="clip_source").set_value("upload").run()
    app.file_uploader(key="upload").upload("notes.wav", b"this is not audio at all" * 10, "audio/wav")
    app.run()
    no_exception(app)
    assert app.error and "415" in app.error[0].value


def test_diagnostics_page_draws_every_part(app: AppTest) -> None:
    goto(app, "diagnostics")
    no_exception(app)
    assert plotly_count(app) == 4  # confusion, reliability, per-class accuracy, OOD histograms
    assert len(app.dataframe) >= 1  # most-confused pairs


def test_diagnostics_page_without_diagnostics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(make_bundle(tmp_path / "bare")) as url:
        monkeypatch.setenv("TYMPAN_API_URL", url)
        at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT).run()
        goto(at, "diagnostics")
        no_exception(at)
        assert "no held-out diagnostics yet" in texts(at)


def test_drift_page_reads_a_diagnose_report(app: AppTest) -> None:
    from tympan.stats.drift import FeatureDriftDetector

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 3))
    fld = rng.normal(size=(80, 3)) + [0, 0.05, 1.0]
    report = FeatureDriftDetector().fit(ref, feature_names=["rms_dbfs", "zcr_mean", "spectral_centroid_mean"])
    data = {"bundle": "x", "field_dir": "y", "feature_drift": report.test(fld).to_dict()}
    goto(app, "drift")
    app.file_uploader(key="drift_report").upload("report.json", json.dumps(data).encode(), "application/json")
    app.run()
    no_exception(app)
    assert plotly_count(app) == 1 and len(app.dataframe) == 1
    assert app.metric[0].value == "drift"
    app.radio(key="drift_mode").set_value("Run diagnose on a folder").run()
    no_exception(app)


FAKE_DIAGNOSE = """
import argparse, json, pathlib, sys
p = argparse.ArgumentParser()
p.add_argument("--field-dir"); p.add_argument("--bundle"); p.add_argument("--out")
a, _ = p.parse_known_args()
if "--help" in sys.argv:
    print("usage: diagnose [--field-dir FIELD_DIR] [--bundle BUNDLE] [--out OUT]"); sys.exit(0)
out = pathlib.Path(a.out); out.mkdir(parents=True)
feats = [{"feature": "rms_dbfs", "verdict": "drift", "p_value_bh": 1e-6, "wasserstein_std": 0.9, "message": "louder"},
         {"feature": "zcr_mean", "verdict": "no drift", "p_value_bh": 0.6, "wasserstein_std": 0.02, "message": ""}]
report = {"verdict": "drift", "n_reference": 2000, "n_field": 12, "features": feats,
          "checks": {"acoustic": {"verdict": "drift", "criteria": {"min_effect_wasserstein_std": 0.1}},
                     "ood_rate": {"verdict": "no drift", "message": "0% flagged"}},
          "field": {"folder": a.field_dir}}
(out / "report.json").write_text(json.dumps(report))
sys.exit(1)  # 1 = drift found, the report is still there
"""


def test_drift_page_runs_diagnose_on_a_folder(app: AppTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from tympan.dashboard.views import drift

    script = tmp_path / "diagnose.py"
    script.write_text(FAKE_DIAGNOSE)
    monkeypatch.setattr(drift, "diagnose_command", lambda: [sys.executable, str(script)])
    drift.diagnose_available.clear()
    before = set(Path(tempfile.gettempdir()).glob("tympan-drift-*"))
    try:
        goto(app, "drift")
        app.radio(key="drift_mode").set_value("Run diagnose on a folder").run()
        app.text_input(key="field_dir").set_value(str(tmp_path)).run()
        app.text_input(key="bundle_dir").set_value(str(tmp_path)).run()
        app.button(key="run_diagnose").click().run()
        no_exception(app)
        assert not app.error, [e.value for e in app.error]
        assert app.metric[0].value == "drift" and app.metric[1].value == "1 / 2"
        assert len(app.dataframe) == 2  # per-feature table and the other checks
        # the run's report folder is gone once the report is read (each one held ~5 MB)
        assert set(Path(tempfile.gettempdir()).glob("tympan-drift-*")) <= before
    finally:
        drift.diagnose_available.clear()


def test_diagnostics_written_by_the_diagnostics_package_are_read() -> None:
    from tympan.diagnostics.heldout import heldout_diagnostics
    from tympan.stats.ood import EnergyOOD
    from tympan.stats.temperature import calibrate_heldout

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 20)
    logits = rng.normal(size=(100, 5)) + 3 * np.eye(5)[y]
    cal = calibrate_heldout(logits, y)
    det = EnergyOOD().fit(logits)
    raw = heldout_diagnostics(logits, y, [f"c{i}" for i in range(100)], CLASSES, calibration=cal,
                              detector=det, evaluated_on="test", ood_logits=rng.normal(size=(30, 5)))
    d = parse_diagnostics(json.loads(json.dumps(raw)))
    assert not d.missing and d.classes == CLASSES
    assert set(d.reliability) == {"before", "after"} and set(d.ood_histograms) == {"in", "out"}
    assert d.reliability["after"].temperature is not None and d.most_confused


def test_large_data_sets_are_measured_on_request(app: AppTest, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tympan.dashboard.views import acoustic

    monkeypatch.setenv("TYMPAN_CACHE_DIR", str(tmp_path / "fresh-cache"))
    monkeypatch.setattr(acoustic, "AUTO_COMPUTE_MAX_CLIPS", 10)
    goto(app, "acoustic")
    no_exception(app)
    assert "not cached yet" in app.info[0].value and plotly_count(app) == 0
    app.button(key="compute_table").click().run()
    no_exception(app)
    assert plotly_count(app) >= 5 and "not cached yet" not in texts(app)
    assert list((tmp_path / "fresh-cache").glob("acoustic-*.npz"))


def test_tympan_dashboard_serves_the_packaged_app(api_url: str) -> None:
    import subprocess
    import sys

    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tympan", "dashboard", "--headless", "--port", str(port),
                             "--address", "127.0.0.1", "--api-url", api_url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).text == "ok":
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        else:
            pytest.fail(f"tympan dashboard did not come up (exit code {proc.poll()})")
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_api_key_is_sent_as_a_bearer_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TYMPAN_API_KEY", raising=False)
    with serve(make_bundle(tmp_path / "locked"), api_key="s3cret") as url:
        monkeypatch.setenv("TYMPAN_API_URL", url)
        at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT).run()
        no_exception(at)
        assert "401" in at.sidebar.error[0].value
        at.sidebar.text_input(key="api_key").set_value("s3cret").run()
        no_exception(at)
        assert "API up" in at.sidebar.success[0].value


# -- the API is down ----------------------------------------------------------------------------

def test_api_down_is_a_plain_error_on_every_page(monkeypatch: pytest.MonkeyPatch, wav_bytes: bytes,
                                                synthetic_dir: Path) -> None:
    monkeypatch.setenv("TYMPAN_API_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("TYMPAN_ESC50_DIR", str(synthetic_dir))
    at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT).run()
    no_exception(at)
    assert "cannot reach the tympan API" in at.sidebar.error[0].value
    at.radio(key="clip_source").set_value("upload").run()
    at.file_uploader(key="upload").upload("tone.wav", wav_bytes, "audio/wav")
    at.run()
    no_exception(at)
    assert any("cannot reach the tympan API" in e.value for e in at.error)
    for page in ("inside", "acoustic", "diagnostics", "drift"):
        goto(at, page)
        no_exception(at)
    goto(at, "diagnostics")
    assert at.error and "cannot reach" in at.error[0].value


# -- pieces -------------------------------------------------------------------------------------

def test_client_errors_are_one_readable_line(api_url: str) -> None:
    client = ApiClient(api_url)
    assert client.health()["status"] == "ok"
    assert client.model()["classes"] == CLASSES
    with pytest.raises(ApiError) as err:
        client.predict(b"RIFF....WAVEfmt garbage", "x.wav")
    assert err.value.status == 415 and "415" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ApiError, match="cannot reach"):
        ApiClient(f"http://127.0.0.1:{free_port()}").model()
    with pytest.raises(ApiError, match="empty"):
        client.predict(b"", "x.wav")


def test_features_table_is_cached_on_disk_without_pickle(synthetic_dir: Path, tmp_path: Path) -> None:
    from tympan.dashboard.features_table import compute_features_table, describe_nearest, features_of_audio
    from tympan.stats.acoustic import FEATURE_NAMES

    calls = []
    t1 = compute_features_table(synthetic_dir, cache_dir=tmp_path, progress=lambda i, n: calls.append(i))
    assert len(t1) == 100 and calls[-1] == 100
    assert t1.path is not None and t1.path.name.startswith("acoustic-") and t1.path.suffix == ".npz"
    assert [p.name for p in tmp_path.iterdir()] == [t1.path.name]  # no temporary left behind
    np.load(t1.path, allow_pickle=False)["features"]
    t2 = compute_features_table(synthetic_dir, cache_dir=tmp_path, progress=lambda i, n: calls.append(-1))
    assert -1 not in calls  # read from the cache
    np.testing.assert_array_equal(t1.frame[list(FEATURE_NAMES)].to_numpy(), t2.frame[list(FEATURE_NAMES)].to_numpy())
    assert t2.logmel_mean.shape == (100, 64) and t2.class_mean_logmel().shape == (5, 64)

    # a clip of a class is nearest to its own class
    hum = next(p for p in sorted((synthetic_dir / "audio").iterdir()) if "-0." in p.name or p.stem.endswith("-0"))
    near = describe_nearest(features_of_audio(hum.read_bytes()), t2.frame)
    assert near.ranking[0][0] == "hum" and "nearest to the median hum clip" in near.sentence


def test_reports_are_read_tolerantly() -> None:
    assert parse_diagnostics(None) is None
    d = parse_diagnostics(diagnostics_fixture())
    assert d.classes == CLASSES and d.matrix.shape == (5, 5) and not d.missing
    assert set(d.reliability) == {"before", "after"} and set(d.ood_histograms) == {"in", "out"}
    assert d.most_confused and d.per_class_accuracy["hum"] > 0.5
    # the brief's spelling and partial content
    alt = parse_diagnostics({"confusion": {"matrix": [[3, 1], [2, 4]], "classes": ["a", "b"]},
                             "most_confused": [{"true": "b", "pred": "a", "count": 2}],
                             "reliability": {"before": {"bin_confidence": [0.5], "bin_accuracy": [0.4],
                                                        "bin_count": [6], "ece": 0.1}},
                             "ood_histograms": {"in": {"edges": [0, 1], "counts": [3]}}})
    assert alt.most_confused[0] == {"true": "b", "predicted": "a", "count": 2}
    assert alt.per_class_accuracy == {"a": 0.75, "b": 4 / 6}
    assert alt.reliability["before"].ece == 0.1 and "in" in alt.ood_histograms
    # diagnostics.confusion_report(...).to_dict() is accepted as the "confusion" part
    from tympan.diagnostics import confusion_report

    rep = confusion_report(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), class_names=["a", "b"]).to_dict()
    got = parse_diagnostics({"confusion": rep})
    assert got.classes == ["a", "b"] and got.most_confused and got.per_class_accuracy["a"] == 0.5

    assert parse_drift_report({"nothing": 1}) is None
    r = parse_drift_report({"results": {"acoustic": [{"name": "rms", "p": 0.01, "effect_size": 0.8,
                                                      "verdict": "drift"}]}, "verdict": "drift"})
    assert r.rows[0]["feature"] == "rms" and r.rows[0]["effect_size"] == 0.8 and r.verdict == "drift"
    only_checks = parse_drift_report({"verdict": "no drift", "features": [],
                                      "checks": {"ood_rate": {"verdict": "no drift", "message": "ok"}}})
    assert only_checks.rows == [] and "ood_rate" in only_checks.checks


def test_cli_runs_streamlit_on_the_packaged_app() -> None:
    from tympan.cli import build_parser
    from tympan.dashboard import APP_PATH
    from tympan.dashboard.cli import build_command

    args = build_parser().parse_args(["dashboard", "--api-url", "http://h:1", "--port", "8600", "--headless"])
    cmd, env = build_command(args)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(APP_PATH) and APP_PATH.is_file()
    assert "8600" in cmd and env["TYMPAN_API_URL"] == "http://h:1"
    at = AppTest.from_file(str(APP_PATH), default_timeout=TIMEOUT).run()  # the packaged script itself
    no_exception(at)
    assert at.title[0].value == "Classify a sound"


def test_background_only_audio_is_said_so_with_the_shipped_model(monkeypatch: pytest.MonkeyPatch,
                                                                  synthetic_dir: Path) -> None:
    """Recorder hiss through the real API on the shipped bundle: the page says there is no sound event."""
    shipped = Path(__file__).resolve().parents[1] / "tympan" / "assets" / "default"
    y = np.random.default_rng(2).standard_normal(16_000 * 5) * 10 ** (-60 / 20)
    buf = io.BytesIO()
    sf.write(buf, y.astype(np.float32), 16_000, format="WAV", subtype="PCM_24")
    with serve(shipped) as url:
        monkeypatch.setenv("TYMPAN_API_URL", url)
        monkeypatch.setenv("TYMPAN_ESC50_DIR", str(synthetic_dir))
        at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT).run()
        at.radio(key="clip_source").set_value("upload").run()
        at.file_uploader(key="upload").upload("hiss.wav", buf.getvalue(), "audio/wav")
        at.run()
    no_exception(at)
    assert "Background only" in texts(at) and "no foreground sound event" in texts(at)


def test_live_page_streams_a_clip_over_the_websocket(app: AppTest) -> None:
    at = goto(app, "live")
    no_exception(at)
    assert "Listen live" in texts(at)
    at.radio(key="clip_source").set_value("example")
    at = at.run()
    at.button(key="live_go").click()
    at = at.run()
    no_exception(at)
    done = [s.value for s in at.success if "windows" in str(s.value)]
    assert done and not done[0].startswith("0 windows"), texts(at)
    assert plotly_count(at) >= 1 and "Events" in texts(at)
    assert list(at.dataframe[-1].value.columns)[:3] == ["label", "start_s", "end_s"]
