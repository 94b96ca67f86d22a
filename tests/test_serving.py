"""The HTTP API against a real uvicorn server on a free port, over real HTTP (httpx).

A tiny ``cnn`` bundle (width 8, 2-s clips) keeps the model cost negligible, so what is tested
is the server: every endpoint, every kind of bad input (none may reach the 500 handler),
micro-batching under concurrency, auth, CORS, size limits and the long-audio timeline.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import json
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from tympan.bundle import Bundle  # noqa: E402
from tympan.datasets.synthetic import CLASSES  # noqa: E402
from tympan.features import FrontendConfig  # noqa: E402
from tympan.inference import NO_THRESHOLD_NOTE, Predictor  # noqa: E402
from tympan.models import build_model  # noqa: E402
from tympan.serving.app import create_app  # noqa: E402
from tympan.serving.schemas import ExplainResponse, PredictResponse  # noqa: E402
from tympan.serving.settings import Settings  # noqa: E402
from helpers import LiveServer, free_port  # noqa: E402

SR = 16_000
LIMIT = 2 * 1024 * 1024
MAX_SECONDS = 60.0
MAX_SAMPLES = 1_500_000


# ----------------------------------------------------------------------------- helpers
def tiny_bundle(threshold: float | None = None) -> Bundle:
    torch.manual_seed(0)
    model = build_model("cnn", n_classes=5, width=8).eval()
    return Bundle(model=model, arch="cnn", arch_params={"width": 8}, classes=CLASSES[:5],
                  frontend=FrontendConfig(clip_seconds=2.0), name="tiny-test",
                  ood={"score": "energy", "temperature": 1.0, "threshold": threshold},
                  extra={"diagnostics": {"ece": {"before": 0.1, "after": 0.05}}})


def tone(seconds: float = 2.0, sr: int = SR, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    y = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    return np.stack([y] * channels, axis=1) if channels > 1 else y


def encode(y: np.ndarray, sr: int = SR, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample over series matching ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if not m:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle().save(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="module")
def server(bundle_dir: Path):
    settings = Settings(max_body_bytes=LIMIT, max_audio_seconds=MAX_SECONDS, max_audio_samples=MAX_SAMPLES,
                        max_batch_size=16,
                        max_wait_ms=20, torch_threads=1, warmup_batch_sizes=(1,))
    with LiveServer(create_app(bundle_dir, settings)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


# -------------------------------------------------------------------------- endpoints
def test_ops_endpoints(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}
    info = client.get("/model").json()
    assert info["classes"] == CLASSES[:5] and info["arch"] == "cnn" and info["name"] == "tiny-test"
    assert info["diagnostics"] == {"ece": {"before": 0.1, "after": 0.05}}
    assert len(info["version"]) == 12 and info["frontend"]["clip_seconds"] == 2.0
    assert {"temperature", "ood", "metrics", "provenance"} <= set(info)
    assert "tympan_requests_total" in client.get("/metrics").text
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/predict/file", "/explain", "/explain/file", "/model"} <= set(spec["paths"])
    assert "examples" in spec["components"]["schemas"]["PredictRequest"]
    nope = client.get("/nope")
    assert nope.status_code == 404 and nope.json()["error"] == "not_found"
    assert client.get("/predict").json()["error"] == "method_not_allowed"


def test_predict_json_matches_contract(client: httpx.Client, bundle_dir: Path) -> None:
    data = encode(tone(2.0, 44_100, channels=2), 44_100, subtype="PCM_16")
    r = client.post("/predict", json={"audio_base64": b64(data), "top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    PredictResponse.model_validate(body)
    assert set(body) == {"model", "top_k", "ood", "uncertain", "uncertain_reasons", "audio", "windows",
                         "aggregate", "temperature", "warnings", "timing_ms", "background"}  # no logits unless asked
    assert body["audio"] == {"duration_s": 2.0, "sample_rate": 44_100, "channels": 2, "format": "WAV",
                             "subtype": "PCM_16"}
    assert len(body["top_k"]) == 2 and body["top_k"][0]["probability"] >= body["top_k"][1]["probability"]
    assert body["ood"]["score_name"] == "energy" and body["ood"]["threshold"] is None
    assert body["ood"]["out_of_distribution"] is False and NO_THRESHOLD_NOTE in body["uncertain_reasons"]
    assert len(body["windows"]) == 1 and body["windows"][0]["start_s"] == 0.0
    assert body["timing_ms"] > 0 and body["model"]["arch"] == "cnn"
    # calibrated probabilities and the energy score follow from the returned logits
    r = client.post("/predict", json={"audio_base64": b64(data), "top_k": 5, "return_logits": True})
    body = r.json()
    z = np.asarray(body["logits"][0])
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert [c["index"] for c in body["top_k"]] == list(np.argsort(-p))
    assert np.allclose([c["probability"] for c in body["top_k"]], np.sort(p)[::-1], atol=1e-5)
    assert body["ood"]["score"] == pytest.approx(-np.log(np.exp(z).sum()), abs=1e-3)


def test_formats_all_decode(client: httpx.Client) -> None:
    y = tone(1.0)
    cases = [("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"),
             ("WAV", "DOUBLE"), ("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS"), ("OGG", "OPUS"),
             ("MP3", "MPEG_LAYER_III"), ("AIFF", "PCM_16")]
    for fmt, subtype in cases:
        data = encode(tone(1.0, channels=3) if fmt == "FLAC" else y, SR, fmt, subtype)
        r = client.post("/predict/file", files={"file": (f"x.{fmt.lower()}", data)}, data={"top_k": "1"})
        assert r.status_code == 200, (fmt, subtype, r.text)
        body = r.json()
        assert body["audio"]["format"] == fmt and body["audio"]["subtype"] == subtype
        assert len(body["top_k"]) == 1
        assert abs(body["audio"]["duration_s"] - 1.0) < 0.1  # lossy codecs may pad a little


def test_long_audio_timeline(client: httpx.Client) -> None:
    data = encode(tone(7.0), SR)
    body = client.post("/predict", json={"audio_base64": b64(data), "return_logits": True}).json()
    starts = [w["start_s"] for w in body["windows"]]
    assert starts == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # 2-s windows, 50% hop, last one ends at 7 s
    assert body["windows"][-1]["end_s"] == 7.0 and len(body["logits"]) == 6
    assert body["aggregate"].startswith("mean of window probabilities")
    mean = np.mean([[c["probability"] for c in sorted(w["top_k"], key=lambda c: c["index"])]
                    for w in client.post("/predict", json={"audio_base64": b64(data), "top_k": 5}).json()["windows"]],
                   axis=0)
    assert body["top_k"][0]["probability"] == pytest.approx(mean.max(), abs=1e-5)
    # 40 s: 39 windows, more than a batch (16): chunked through the model, one timeline
    r = client.post("/predict/file", files={"file": ("long.wav", encode(tone(40.0), SR))},
                    data={"return_logits": "true"})
    assert r.status_code == 200, r.text
    long = r.json()
    assert len(long["windows"]) == 39 and len(long["logits"]) == 39
    assert long["windows"][-1]["end_s"] == 40.0 and long["audio"]["duration_s"] == 40.0


def test_explain(client: httpx.Client) -> None:
    data = encode(tone(3.0), SR)
    r = client.post("/explain", json={"audio_base64": b64(data), "top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    ExplainResponse.model_validate(body)
    lm = body["logmel"]
    assert (lm["n_mels"], lm["frames"]) == (64, 101) and np.asarray(lm["data"]).shape == (64, 101)
    assert np.asarray(body["saliency"]["data"]).shape == (64, 101) and body["saliency"]["method"] == "grad-cam"
    sal = np.asarray(body["saliency"]["data"])
    assert 0 <= sal.min() and sal.max() <= 1
    assert body["saliency"]["target"] == body["top_k"][0]["label"] and len(body["top_k"]) == 2
    assert [m["stage"] for m in body["feature_maps"]] == ["stage1", "stage2", "stage3", "stage4"]
    assert body["feature_maps"][0]["shape"] == [8, 32, 50]
    assert len(body["waveform"]["data"]) <= 4000
    f = client.post("/explain/file", files={"file": ("a.flac", encode(tone(1.0), SR, "FLAC"))})
    assert f.status_code == 200 and f.json()["logmel"]["frames"] == 101


# -------------------------------------------------------------------------- bad inputs
def _wav_with_rate(rate: int) -> bytes:
    data = bytearray(encode(tone(0.5), SR, subtype="PCM_16"))
    assert data[:4] == b"RIFF" and data[12:16] == b"fmt "
    data[24:28] = struct.pack("<I", rate)
    return bytes(data)


def _bad_inputs() -> list[tuple[str, bytes, set[int], set[str]]]:
    good = encode(tone(1.0), SR, subtype="PCM_16")
    nan = tone(1.0).astype(np.float32)
    nan[100:110] = np.nan
    inf = tone(1.0).astype(np.float32)
    inf[5] = np.inf
    header_only = encode(np.zeros(0, np.float32), SR, subtype="PCM_16")
    rate_codes = {"bad_sample_rate", "not_audio"}
    return [
        ("text", b"this is not audio at all " * 20, {415}, {"not_audio"}),
        ("random", np.random.default_rng(1).bytes(5000), {415, 422}, {"not_audio", "truncated_audio"}),
        ("empty", b"", {422}, {"empty_audio"}),
        ("header only", header_only, {422}, {"empty_audio"}),
        ("header cut", good[:30], {415, 422}, {"not_audio", "truncated_audio"}),
        ("nan", encode(nan, SR, subtype="FLOAT"), {422}, {"non_finite_samples"}),
        ("inf", encode(inf, SR, subtype="FLOAT"), {422}, {"non_finite_samples"}),
        ("0 Hz", _wav_with_rate(0), {415, 422}, rate_codes),
        ("7 Hz", _wav_with_rate(7), {422}, {"bad_sample_rate"}),
        ("absurd rate", _wav_with_rate(50_000_000), {422}, {"bad_sample_rate"}),
        ("too long", encode(np.zeros(int(1000 * (MAX_SECONDS + 1)), np.int16), 1000, subtype="PCM_16"),
         {413}, {"audio_too_long"}),
        ("decompression bomb", encode(np.zeros((16_000 * 15, 8), np.int16), SR, "FLAC"), {413},
         {"audio_too_long"}),  # 15 s x 8 channels: tiny FLAC, 1.9 M samples > MAX_SAMPLES
        ("riff garbage", b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\xff" * 64, {415, 422},
         {"not_audio", "bad_sample_rate", "truncated_audio"}),
    ]


def test_bad_audio_is_4xx_never_500(client: httpx.Client) -> None:
    for name, data, statuses, codes in _bad_inputs():
        for r in (client.post("/predict/file", files={"file": ("x.wav", data)}),
                  client.post("/predict", json={"audio_base64": b64(data)}) if data else None,
                  client.post("/explain/file", files={"file": ("x.wav", data)})):
            if r is None:
                continue
            assert r.status_code in statuses, (name, r.status_code, r.text)
            body = r.json()
            assert set(body) == {"error", "detail"} and body["error"] in codes, (name, body)
            assert "\n" not in body["detail"] and "0x" not in body["detail"], body


def test_a_truncated_upload_is_salvaged_with_a_warning(client: httpx.Client) -> None:
    """A recorder that lost power leaves a WAV whose header promises more than it holds: what is
    there is classified, and the response says what was salvaged."""
    good = encode(tone(1.0), SR, subtype="PCM_16")
    r = client.post("/predict/file", files={"file": ("cut.wav", good[: len(good) // 2])})
    assert r.status_code == 200, r.text
    body = r.json()
    assert any("truncated" in w for w in body["warnings"]) and 0.4 < body["audio"]["duration_s"] < 0.6
    full = client.post("/predict/file", files={"file": ("full.wav", good)}).json()
    assert full["warnings"] == []


def test_bad_requests_are_4xx(client: httpx.Client) -> None:
    good = b64(encode(tone(1.0), SR))
    cases = [
        client.post("/predict", json={"audio_base64": "not base64 !!!"}),
        client.post("/predict", json={"audio_base64": ""}),
        client.post("/predict", json={"audio_base64": good, "top_k": 0}),
        client.post("/predict", json={"audio_base64": good, "top_k": 6}),
        client.post("/predict", json={"audio_base64": good, "top_k": "three"}),
        client.post("/predict", json={"audio_base64": 12345}),
        client.post("/predict", json={}),
        client.post("/predict", content=b"{not json", headers={"content-type": "application/json"}),
        client.post("/predict", content=b"", headers={"content-type": "application/json"}),
        client.post("/predict/file", data={"top_k": "1"}),
        client.post("/predict/file", json={"audio_base64": good}),
        client.post("/predict/file", files={"file": ("x.wav", b"abc")}, data={"top_k": "0"}),
        client.post("/explain", json={"audio_base64": good, "top_k": 99}),
        client.post("/predict", json={"audio_base64": good, "top_k": 10**100}),
        client.post("/predict", json={"audio_base64": "ééé"}),
        client.post("/predict", content=b"[" * 100_000 + b"]" * 100_000, headers={"content-type": "application/json"}),
        client.post("/predict/file", content=b"garbage", headers={"content-type": "multipart/form-data"}),
        client.post("/predict/file", files={"file": ("x.wav", b"abc")}, data={"top_k": "1" * 1_500_000}),
    ]
    for r in cases:
        assert r.status_code == 422, (r.request.url, r.text)
        assert r.json()["error"] in {"invalid_request", "invalid_base64"}, r.text
        assert len(r.json()["detail"]) < 300
    assert cases[0].json()["error"] == "invalid_base64"
    # whitespace-wrapped base64 and data: URIs are fine
    wrapped = "\n".join(good[i : i + 76] for i in range(0, len(good), 76))
    assert client.post("/predict", json={"audio_base64": wrapped}).status_code == 200
    assert client.post("/predict", json={"audio_base64": "data:audio/wav;base64," + good}).status_code == 200


def test_body_size_limit(client: httpx.Client) -> None:
    big = b"\0" * (LIMIT + 1024)
    r = client.post("/predict/file", files={"file": ("big.wav", big)})  # Content-Length says it
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"

    def chunks():  # no Content-Length: caught while reading
        for _ in range(LIMIT // 65536 + 2):
            yield b"A" * 65536

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert client.get("/ready").status_code == 200


def test_concurrent_requests_are_micro_batched(server: LiveServer, client: httpx.Client) -> None:
    before = client.get("/metrics").text
    data = encode(tone(1.0), SR)

    async def many() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as ac:
            return await asyncio.gather(*[
                ac.post("/predict/file", files={"file": ("x.wav", data)}) for _ in range(16)])

    responses = asyncio.run(many())
    assert [r.status_code for r in responses] == [200] * 16
    after = client.get("/metrics").text
    batches = metric(after, "tympan_batch_requests_count") - metric(before, "tympan_batch_requests_count")
    requests = metric(after, "tympan_batch_requests_sum") - metric(before, "tympan_batch_requests_sum")
    assert requests == 16 and batches < 16, (batches, requests)  # some batches served > 1 request
    single = (metric(after, "tympan_batch_requests_bucket", le="1.0")
              - metric(before, "tympan_batch_requests_bucket", le="1.0"))
    assert single < batches or batches < 16
    assert metric(after, "tympan_requests_total", endpoint="/predict/file", status="200") >= 16
    assert metric(after, "tympan_request_latency_seconds_count", endpoint="/predict/file") >= 16
    assert metric(after, "tympan_predictions_total") >= 16
    assert "tympan_ood_predictions_total" in after


def test_idle_requests_run_inline_and_answer_as_handed_over_ones(bundle_dir: Path) -> None:
    """The idle fast path (decode and run on the event loop's thread) gives the same answers as the
    worker path; audio longer than inline_max_seconds, or a disabled fast path, goes to the workers."""
    short, long = encode(tone(1.0), SR), encode(tone(12.0), SR)
    bodies, inline = {}, {}
    for limit in (10.0, 0.0):
        settings = Settings(torch_threads=1, warmup_batch_sizes=(1,), max_batch_size=4, inline_max_seconds=limit)
        with LiveServer(create_app(bundle_dir, settings)) as live, httpx.Client(base_url=live.url, timeout=30) as c:
            got = []
            for data in (short, short, long):
                before = metric(c.get("/metrics").text, "tympan_inline_requests_total")
                r = c.post("/predict/file", files={"file": ("x.wav", data)})
                assert r.status_code == 200, r.text
                got.append(metric(c.get("/metrics").text, "tympan_inline_requests_total") - before)
                body = r.json()
                body.pop("timing_ms")
                bodies.setdefault(limit, []).append(body)
            inline[limit] = got
    assert inline[10.0] == [1, 1, 0] and inline[0.0] == [0, 0, 0]
    assert bodies[10.0] == bodies[0.0]


def test_no_request_reached_the_500_handler(client: httpx.Client) -> None:
    text = client.get("/metrics").text
    assert metric(text, "tympan_requests_total", status="500") == 0
    assert metric(text, "tympan_requests_total") > 40
    assert client.get("/ready").status_code == 200


# ------------------------------------------------------- auth, CORS, readiness, true bugs
def test_auth_cors_not_ready_and_bug_handler(bundle_dir: Path) -> None:
    settings = Settings(api_key="s3cret", cors_origins=("https://dash.example",), torch_threads=1,
                        warmup_batch_sizes=(1,), max_batch_size=4)
    app = create_app(bundle_dir, settings)
    data = encode(tone(1.0), SR)
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = c.post("/predict/file", files={"file": ("x.wav", data)}, headers=headers)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert c.get("/model").status_code == 401 and c.get("/metrics").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert c.post("/predict/file", files={"file": ("x.wav", data)}, headers=auth).status_code == 200
        pre = c.options("/predict", headers={"Origin": "https://dash.example",
                                             "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://dash.example"

        service = app.state.service
        service.ready = False  # as while loading
        assert c.get("/ready").status_code == 503
        r = c.post("/predict/file", files={"file": ("x.wav", data)}, headers=auth)
        assert r.status_code == 503 and r.json()["error"] == "not_ready"
        service.ready = True
        service.in_flight = 10_000  # back-pressure: refuse rather than queue without bound
        r = c.post("/predict/file", files={"file": ("x.wav", data)}, headers=auth)
        assert r.status_code == 503 and r.json()["error"] == "overloaded" and r.headers["retry-after"] == "1"
        service.in_flight = 0

        original = service.predictor.response
        service.predictor.response = lambda *a, **k: 1 / 0  # a bug in tympan
        try:
            r = c.post("/predict/file", files={"file": ("x.wav", data)}, headers=auth)
        finally:
            service.predictor.response = original
        assert r.status_code == 500 and r.json()["error"] == "internal_error"
        assert c.post("/predict/file", files={"file": ("x.wav", data)}, headers=auth).status_code == 200
        assert metric(c.get("/metrics", headers=auth).text, "tympan_requests_total", status="500") == 1


# ------------------------------------------------------------------- predictor and CLI
def test_predictor_ood_and_uncertainty(tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    sf.write(wav, tone(1.0), SR)
    flagged = Predictor(tiny_bundle(threshold=-1e6)).predict(wav)
    assert flagged["ood"]["out_of_distribution"] and flagged["uncertain"]
    assert flagged["uncertain_reasons"][0].startswith("out of distribution")
    assert NO_THRESHOLD_NOTE not in flagged["uncertain_reasons"]
    kept = Predictor(tiny_bundle(threshold=1e6)).predict(wav)
    assert not kept["ood"]["out_of_distribution"] and not kept["windows"][0]["out_of_distribution"]


def test_cli_predict_and_serve_errors(bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tympan.cli import main

    wav, bad = tmp_path / "a.wav", tmp_path / "bad.wav"
    sf.write(wav, tone(1.0), SR)
    bad.write_text("not audio")
    code = main(["predict", str(wav), str(bad), "--bundle", str(bundle_dir), "--top-k", "2"])
    out = capsys.readouterr()
    assert code == 2, out.err
    assert out.out.startswith(f"{wav}: ") and "energy" in out.out and out.out.count("\n") == 1
    assert out.err.startswith("tympan: error:") and "not a recognised audio format" in out.err
    assert main(["predict", str(wav), "--bundle", str(bundle_dir), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["file"] == str(wav) and len(body["top_k"]) == 3
    assert main(["serve", "--bundle", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such bundle directory" in err


def test_settings_from_env_and_bad_bundle(tmp_path: Path) -> None:
    s = Settings.from_env({"TYMPAN_MAX_BATCH_SIZE": "8", "TYMPAN_MAX_WAIT_MS": "1.5", "TYMPAN_API_KEY": "k",
                           "TYMPAN_CORS_ORIGINS": "https://a.example, https://b.example",
                           "TYMPAN_LOAD_IN_BACKGROUND": "false", "TYMPAN_TORCH_THREADS": "3"}, max_batch_size=4)
    assert (s.max_batch_size, s.max_wait_ms, s.api_key, s.load_in_background, s.threads) == (4, 1.5, "k", False, 3)
    assert s.cors_origins == ("https://a.example", "https://b.example")
    assert Settings(workers=1).threads >= 1
    with pytest.raises(ValueError, match="TYMPAN_MAX_BATCH_SIZE"):
        Settings.from_env({"TYMPAN_MAX_BATCH_SIZE": "lots"})
    with pytest.raises(ValueError, match="max_batch_size"):
        Settings(max_batch_size=0)
    from tympan.errors import BundleError

    with pytest.raises(BundleError, match="no such bundle directory"):
        create_app(tmp_path / "missing")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_serve_on_cuda_without_a_gpu_is_one_line(bundle_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from tympan.cli import main

    assert main(["serve", "--bundle", str(bundle_dir), "--device", "cuda", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no usable CUDA device" in err
