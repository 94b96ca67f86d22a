"""Train/serve parity: the served endpoint's logits equal offline evaluation's, file by file.

A tiny model is trained on the generated set through the training code path (or, if
``tympan.training`` is absent, a random-weights ``cnn`` bundle stands in: a bundle is a
bundle). Offline: ``tympan.cache.featurize(..., dtype="float32")`` + ``predict_logits``.
Served: a real uvicorn server, real WAV and FLAC uploads, ``return_logits``.
"""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from tympan.bundle import Bundle, load_bundle  # noqa: E402
from tympan.cache import featurize  # noqa: E402
from tympan.datasets import load_esc50  # noqa: E402
from tympan.features import FrontendConfig  # noqa: E402
from tympan.models import build_model  # noqa: E402
from tympan.serving.app import create_app  # noqa: E402
from tympan.serving.settings import Settings  # noqa: E402
from helpers import free_port  # noqa: E402

try:  # the training helper's API, when it is there
    from tympan.training import TrainConfig, bundle_from_run, predict_logits, run_cv
except ImportError:  # pragma: no cover - depends on the checkout
    TrainConfig = None

FRONTEND = FrontendConfig()  # the default front end: 2-s clips are zero-padded to 5 s, as in serving
ATOL = 1e-4


def make_bundle(synthetic_dir: Path, tmp: Path) -> tuple[Path, str]:
    if TrainConfig is not None:
        fs = featurize(load_esc50(synthetic_dir), FRONTEND, progress=False, root=tmp / "fcache")
        cfg = TrainConfig(arch="cnn", arch_params={"width": 8}, epochs=2, batch_size=16, lr=3e-3, seed=0,
                          device="cpu")
        run_cv(fs, cfg, [1], tmp / "run", progress=False, tensorboard=False, log=lambda *_: None)
        return bundle_from_run(tmp / "run", tmp / "bundle"), "trained"
    torch.manual_seed(0)
    model = build_model("cnn", n_classes=5, width=8).eval()
    classes = load_esc50(synthetic_dir).classes
    return Bundle(model=model, arch="cnn", arch_params={"width": 8}, classes=classes,
                  frontend=FRONTEND).save(tmp / "bundle"), "random"


def offline_logits(bundle_dir: Path, synthetic_dir: Path, cache: Path) -> tuple[list[Path], np.ndarray]:
    """The training/evaluation code path: float32 feature cache, then the model."""
    bundle = load_bundle(bundle_dir)
    dataset = load_esc50(synthetic_dir)
    fs = featurize(dataset, bundle.frontend, dtype="float32", progress=False, root=cache)
    if TrainConfig is not None:
        logits = predict_logits(bundle, fs)
    else:  # the model on the cached float32 log-mels, as evaluation would run it
        with torch.inference_mode():
            logits = bundle.model.eval()(torch.from_numpy(np.asarray(fs.features))).numpy()
    return list(dataset.files), logits


def test_served_logits_equal_offline_evaluation(synthetic_dir: Path, tmp_path: Path) -> None:
    bundle_dir, how = make_bundle(synthetic_dir, tmp_path)
    files, expected = offline_logits(bundle_dir, synthetic_dir, tmp_path / "cache32")
    assert expected.dtype == np.float32 and expected.shape == (len(files), 5)

    # the same clips as WAV (as stored) and re-encoded losslessly as FLAC
    picks = list(range(0, len(files), 7))  # 15 clips across classes and folds
    uploads = []
    for i in picks:
        wav = files[i].read_bytes()
        y, sr = sf.read(files[i], dtype="int16")
        flac = tmp_path / f"{files[i].stem}.flac"
        sf.write(flac, y, sr, subtype="PCM_16")
        uploads += [(i, "wav", wav), (i, "flac", flac.read_bytes())]

    port = free_port()
    app = create_app(bundle_dir, Settings(torch_threads=1, max_batch_size=8, max_wait_ms=5,
                                          warmup_batch_sizes=(1,)))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            worst = 0.0
            for n, (i, kind, data) in enumerate(uploads):
                if n % 2:  # both endpoints
                    r = client.post("/predict/file", files={"file": (f"clip.{kind}", data)},
                                    data={"return_logits": "true", "top_k": "5"})
                else:
                    r = client.post("/predict", json={"audio_base64": base64.b64encode(data).decode(),
                                                      "return_logits": True, "top_k": 5})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["audio"]["format"] == kind.upper()
                served = np.asarray(body["logits"], dtype=np.float32)
                assert served.shape == (1, 5)
                np.testing.assert_allclose(served[0], expected[i], rtol=0, atol=ATOL,
                                           err_msg=f"{files[i].name} ({kind}, {how} bundle)")
                worst = max(worst, float(np.abs(served[0] - expected[i]).max()))
                # and the calibrated probabilities are softmax(logits / T) of those logits
                t = body["temperature"]
                z = expected[i].astype(np.float64) / t
                p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                assert body["top_k"][0]["index"] == int(np.argmax(p))
                assert body["top_k"][0]["probability"] == pytest.approx(p.max(), abs=1e-4)
        runtime = app.state.service.predictor.backend
        print(f"parity ({how} bundle, {runtime} serving): {len(uploads)} uploads, "
              f"max |served - offline| = {worst:.2e}")
    finally:
        server.should_exit = True
        thread.join(15)


# ------------------------------------------------------------------ every backend, and the GPU
def _onnx_available() -> bool:
    from tympan.inference.backends import onnxruntime_available

    return onnxruntime_available()


BACKEND_CASES = [
    pytest.param("onnx", "cpu", marks=pytest.mark.skipif(not _onnx_available(),
                                                         reason="onnxruntime/onnx not installed (the serve extra)")),
    pytest.param("torchscript", "cpu"),
    pytest.param("eager", "cpu"),
    pytest.param("auto", "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


@pytest.fixture(scope="module")
def parity_setup(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("parity-backends")
    bundle_dir, how = make_bundle(synthetic_dir, tmp)
    files, expected = offline_logits(bundle_dir, synthetic_dir, tmp / "cache32")
    return bundle_dir, how, files, expected


@pytest.mark.parametrize(("backend", "device"), BACKEND_CASES)
def test_each_backend_serves_the_offline_logits(parity_setup, backend: str, device: str, tmp_path: Path) -> None:
    """The same check per backend (and on CUDA where there is one): served == offline to 1e-4."""
    bundle_dir, how, files, expected = parity_setup
    app = create_app(bundle_dir, Settings(torch_threads=1, max_batch_size=8, warmup_batch_sizes=(1,),
                                          backend=backend, device=device))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=(port := free_port()), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    worst = 0.0
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if client.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
            predictor = app.state.service.predictor
            assert predictor is not None and predictor.device.type == device
            if backend != "auto":
                assert predictor.backend == backend, predictor.backend_choice.summary()
            for i in range(0, len(files), 11):
                y, sr = sf.read(files[i], dtype="int16")
                flac = tmp_path / f"{files[i].stem}.flac"
                sf.write(flac, y, sr, subtype="PCM_16")
                r = client.post("/predict/file", files={"file": ("clip.flac", flac.read_bytes())},
                                data={"return_logits": "true", "top_k": "5"})
                assert r.status_code == 200, r.text
                served = np.asarray(r.json()["logits"], dtype=np.float32)
                np.testing.assert_allclose(served[0], expected[i], rtol=0, atol=ATOL,
                                           err_msg=f"{files[i].name} ({backend} on {device}, {how} bundle)")
                worst = max(worst, float(np.abs(served[0] - expected[i]).max()))
        print(f"parity ({how} bundle, {predictor.backend} on {device}): max |served - offline| = {worst:.2e}")
    finally:
        server.should_exit = True
        thread.join(15)
