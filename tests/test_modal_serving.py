"""The Modal deployment module: imports with modal installed, knobs in one place, and the ASGI
app its web function builds (called locally, no Modal account needed) is our FastAPI app."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

modal = pytest.importorskip("modal")
pytest.importorskip("fastapi")

import httpx  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from tympan.bundle import Bundle  # noqa: E402
from tympan.features import FrontendConfig  # noqa: E402
from tympan.models import build_model  # noqa: E402
from tympan.serving.app import create_app  # noqa: E402


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("cnn", n_classes=3, width=8).eval()
    return Bundle(model=model, arch="cnn", arch_params={"width": 8}, classes=["a", "b", "c"],
                  frontend=FrontendConfig(clip_seconds=1.0)).save(tmp_path / "bundle")


def test_module_defines_app_and_autoscaling_knobs() -> None:
    from tympan.serving import modal_app as m

    assert isinstance(m.app, modal.App) and m.app.name == "tympan-serve"
    assert m.GPU == "A10G"
    assert 0 <= m.MIN_CONTAINERS <= m.MAX_CONTAINERS and m.SCALEDOWN_WINDOW > 0
    assert isinstance(m.web, modal.Function)


def test_web_function_builds_our_fastapi_app(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tympan.serving import modal_app as m

    monkeypatch.setenv("TYMPAN_BUNDLE", str(bundle_dir))
    monkeypatch.setenv("TYMPAN_DEVICE", "cpu")
    monkeypatch.setenv("TYMPAN_TORCH_THREADS", "1")
    asgi = m.web.local()  # the underlying function, run here
    assert isinstance(asgi, FastAPI)
    ours = create_app(bundle_dir)
    paths = lambda a: sorted((getattr(r, "path", type(r).__name__), tuple(sorted(getattr(r, "methods", ()) or ()))) for r in a.routes)  # noqa: E731
    assert paths(asgi) == paths(ours)
    assert asgi.state.settings.load_in_background is False  # Modal routes traffic once start-up ends
    assert asgi.state.settings.max_batch_size == m.MAX_BATCH_SIZE

    async def serve_once() -> tuple[dict, dict]:
        async with asgi.router.lifespan_context(asgi):  # start-up loads and warms first
            transport = httpx.ASGITransport(app=asgi)
            async with httpx.AsyncClient(transport=transport, base_url="http://modal.local") as client:
                return (await client.get("/ready")).json(), (await client.get("/model")).json()

    ready, model = asyncio.run(serve_once())
    assert ready == {"status": "ready"} and model["classes"] == ["a", "b", "c"]
