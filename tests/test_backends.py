"""Network backends (ONNX Runtime, TorchScript, eager) and the flat-combining micro-batcher.

Every backend must give the eager model's embeddings and logits to 1e-4 or it is not used;
``auto`` chooses by a measurement it reports; without onnxruntime everything still works. The
batcher answers a lone request in the thread that asks (no hand-over, no wait) and joins the
windows of requests that arrive while a pass runs. The README's serving table is the one the
benchmark script makes from the committed results file.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tympan.bundle import Bundle
from tympan.datasets.synthetic import CLASSES
from tympan.features import FrontendConfig
from tympan.inference import Predictor
from tympan.inference import backends as B
from tympan.models import build_model

REPO = Path(__file__).resolve().parents[1]
needs_onnx = pytest.mark.skipif(not B.onnxruntime_available(), reason="onnxruntime/onnx not installed (serve extra)")


def tiny_bundle(arch: str = "cnn") -> Bundle:
    torch.manual_seed(0)
    params = {"width": 8} if arch == "cnn" else {}
    model = build_model(arch, n_classes=5, **params).eval()
    frontend = FrontendConfig(clip_seconds=1.0) if arch == "cnn" else FrontendConfig.efficientat()
    return Bundle(model=model, arch=arch, arch_params=params, classes=CLASSES[:5], frontend=frontend, name="tiny")


def windows(p: Predictor, n: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, p.config.clip_samples)) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return tiny_bundle()


@pytest.fixture(scope="module")
def eager(bundle: Bundle) -> Predictor:
    return Predictor(bundle, backend="eager")


@pytest.mark.parametrize("backend", [pytest.param("onnx", marks=needs_onnx), "torchscript", "eager"])
def test_each_backend_equals_eager(bundle: Bundle, eager: Predictor, backend: str) -> None:
    p = Predictor(bundle, backend=backend, threads=1)
    assert p.backend == backend and (p.fast_model is None) == (backend == "eager")
    x = windows(p, 7)
    e, z = p.forward(x)
    e0, z0 = eager.forward(x)
    assert e.dtype == z.dtype == np.float32 and z.shape == (7, 5) and e.shape == e0.shape
    np.testing.assert_allclose(z, z0, rtol=0, atol=B.PARITY_ATOL)
    np.testing.assert_allclose(e, e0, rtol=0, atol=B.PARITY_ATOL)
    assert p.backend_choice.rejected == {}
    assert p.logits(x[:0]).shape == (0, 5)


def test_auto_chooses_the_fastest_by_measurement(bundle: Bundle) -> None:
    p = Predictor(bundle)  # backend="auto"
    choice = p.backend_choice
    expected = {"onnx", "torchscript", "eager"} if B.onnxruntime_available() else {"torchscript", "eager"}
    assert set(choice.ms_per_window) == expected
    assert p.backend == min(choice.ms_per_window, key=choice.ms_per_window.get)
    assert all(d <= B.PARITY_ATOL for d in choice.max_abs_diff.values())
    assert "asked: auto" in choice.summary() and p.backend in choice.summary()


def test_without_onnxruntime_everything_still_works(bundle: Bundle, eager: Predictor,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    assert not B.onnxruntime_available()
    auto = Predictor(bundle)
    assert auto.backend in ("torchscript", "eager") and "onnx" not in auto.backend_choice.ms_per_window
    asked = Predictor(bundle, backend="onnx")
    assert asked.backend == "eager" and "not installed" in asked.backend_choice.rejected["onnx"]
    x = windows(eager, 3)
    np.testing.assert_allclose(asked.logits(x), eager.logits(x), rtol=0, atol=0)


def test_a_copy_that_disagrees_is_not_used(bundle: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    build = B.TorchScriptRunner.build

    def off_by_a_little(module, example):
        runner = build(module, example)
        return lambda x: tuple(a + 1e-3 for a in runner(x))

    monkeypatch.setattr(B.TorchScriptRunner, "build", classmethod(lambda cls, m, x: off_by_a_little(m, x)))
    p = Predictor(bundle, backend="torchscript")
    assert p.backend == "eager" and "disagrees" in p.backend_choice.rejected["torchscript"]


def test_bad_backend_names_are_refused(bundle: Bundle) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        Predictor(bundle, backend="tensorrt")
    from tympan.serving.settings import BACKENDS, Settings

    assert BACKENDS == B.BACKENDS
    assert Settings.from_env({"TYMPAN_BACKEND": "onnx", "TYMPAN_PASSES": "2"}).backend == "onnx"
    assert Settings(passes=3).concurrent_passes == 3 and Settings(torch_threads=1).concurrent_passes >= 1
    with pytest.raises(ValueError, match="backend must be one of"):
        Settings(backend="fast")


@needs_onnx
def test_onnx_matches_eager_on_the_shipped_architecture() -> None:
    """mn04 (depthwise convolutions, hard-swish, squeeze-excitation): the exported graph agrees."""
    b = tiny_bundle("mn04")
    p, ref = Predictor(b, backend="onnx", threads=1), Predictor(b, backend="eager")
    assert p.backend == "onnx", p.backend_choice.summary()
    x = windows(p, 2)
    for got, want in zip(p.forward(x), ref.forward(x), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=B.PARITY_ATOL)


# ------------------------------------------------------------------------------ batcher
def _batcher(predictor: Predictor, **kw):
    import asyncio

    from tympan.serving.batching import MicroBatcher

    batcher = MicroBatcher(predictor, **kw)
    asyncio.run(batcher.start())
    return batcher


def test_a_lone_request_is_answered_in_its_own_thread(bundle: Bundle) -> None:
    p = Predictor(bundle, backend="torchscript")
    batcher = _batcher(p)
    prepared = p.prepare(_wav(p, 1.0))
    calls = []
    forward_many = p.forward_many
    p.forward_many = lambda items: (calls.append(threading.current_thread().name), forward_many(items))[1]
    fut = batcher.enqueue(prepared)
    assert fut.done() and calls == [threading.current_thread().name]  # no hand-over, no wait
    e, z = fut.result()
    np.testing.assert_allclose(z, p.logits(prepared.windows), rtol=0, atol=1e-6)
    assert batcher.batches == 1 and batcher.depth == 0


def test_requests_arriving_during_a_pass_share_the_next(bundle: Bundle) -> None:
    p = Predictor(bundle, backend="eager")  # eager: one pass at a time
    batcher = _batcher(p, max_batch_size=16)
    forward_many = p.forward_many
    sizes = []

    def slow(items):
        sizes.append(len(items))
        time.sleep(0.05)
        return forward_many(items)

    p.forward_many = slow
    preps = [p.prepare(_wav(p, 1.0, seed)) for seed in range(8)]
    results: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        results[i] = batcher.run(preps[i])[1]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
        time.sleep(0.005)
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(8)) and sum(sizes) == 8 and len(sizes) < 8, sizes
    for i, z in results.items():
        np.testing.assert_allclose(z, p.logits(preps[i].windows), rtol=0, atol=1e-5)


def test_compiled_copies_run_passes_in_parallel(bundle: Bundle) -> None:
    p = Predictor(bundle, backend="torchscript")
    batcher = _batcher(p, passes=2, max_batch_size=1)
    assert batcher.passes == 2
    forward_many = p.forward_many
    active, peak, lock = [0], [0], threading.Lock()

    def slow(items):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        try:
            return forward_many(items)
        finally:
            with lock:
                active[0] -= 1

    p.forward_many = slow
    preps = [p.prepare(_wav(p, 1.0, seed)) for seed in range(4)]
    threads = [threading.Thread(target=batcher.run, args=(x,)) for x in preps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert peak[0] == 2 and batcher.depth == 0
    assert _batcher(Predictor(bundle, backend="eager"), passes=4).passes == 1  # the eager model: one at a time


def _wav(p: Predictor, seconds: float, seed: int = 0) -> bytes:
    import io

    import soundfile as sf

    y = np.random.default_rng(seed).standard_normal(int(seconds * 16_000)) * 0.1
    buf = io.BytesIO()
    sf.write(buf, y, 16_000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ------------------------------------------------------------------------------- README
def test_readme_serving_table_is_made_from_the_results_file() -> None:
    results = REPO / "benchmarks" / "results" / "serving.json"
    if not results.is_file():
        pytest.skip("no committed benchmarks/results/serving.json")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from serve_load import README_END, README_START, readme_table
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    assert table == readme_table(json.loads(results.read_text())).strip(), (
        "README serving table is stale: python benchmarks/serve_load.py --update-readme benchmarks/results/serving.json")
