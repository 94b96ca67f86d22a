"""Deploy the tympan API on Modal: ``modal deploy tympan/serving/modal_app.py``.

The image installs this checkout (``tympan[serve]``, CUDA torch from PyPI), so the shipped
default bundle (``tympan/assets/default``, package data) is baked in. To serve another
bundle, point ``TYMPAN_MODAL_BUNDLE`` at its folder when deploying; it is copied into the
image and served instead::

    TYMPAN_MODAL_BUNDLE=runs/resnet18/bundle modal deploy tympan/serving/modal_app.py

Secrets: create a Modal secret ``tympan-api`` holding ``TYMPAN_API_KEY`` and set
``API_SECRET = "tympan-api"`` below to require a bearer token.

Every autoscaling knob is a module-level constant in the block below, and nowhere else. The
container serves with ``device="cuda"`` (as ``tympan serve --device cuda``): the network runs on
the GPU (TorchScript or eager, chosen by measurement at load, TF32 off so the logits match CPU
evaluation to 1e-4, as ``tests/test_parity.py`` checks where a GPU is present).
"""

from __future__ import annotations

import os
from pathlib import Path

import modal

# --------------------------------------------------------------------- deployment knobs
APP_NAME = "tympan-serve"
GPU = "A10G"
MIN_CONTAINERS = 0  # 1 keeps one warm container (no cold starts, billed while idle)
MAX_CONTAINERS = 4  # upper bound on scale-out
SCALEDOWN_WINDOW = 300  # seconds a container idles before it is stopped
MAX_INPUTS = 64  # concurrent requests per container (they share micro-batches)
TARGET_INPUTS = 32  # autoscaler adds containers above this many in flight per container
TIMEOUT = 120  # seconds per request
MAX_BATCH_SIZE = 64  # windows per forward pass: a GPU profits from bigger batches than a CPU
MAX_WAIT_MS = 5.0  # a pass that is not full waits this long for requests being decoded
BACKEND = "auto"  # on the GPU: the faster of TorchScript and eager, each checked against eager to 1e-4
API_SECRET: str | None = None  # name of a Modal secret with TYMPAN_API_KEY, or None for an open API
PYTHON_VERSION = "3.11"
TORCH_VERSION = "2.13.0"
# ---------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
REMOTE_SRC = "/opt/tympan/src"
REMOTE_BUNDLE = "/opt/tympan/bundle"
LOCAL_BUNDLE = os.environ.get("TYMPAN_MODAL_BUNDLE")

_IGNORE = [".git", ".venv", "**/__pycache__", "**/*.pyc", "runs", "outputs", ".pytest_cache",
           "**/.ipynb_checkpoints", "*.egg-info", "build", "dist"]

image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .pip_install(f"torch=={TORCH_VERSION}")
    .add_local_dir(REPO, REMOTE_SRC, copy=True, ignore=_IGNORE)
    .run_commands(f"pip install '{REMOTE_SRC}[serve]'")
    .env({"TYMPAN_DEVICE": "cuda", "TYMPAN_LOAD_IN_BACKGROUND": "0"})
)
if LOCAL_BUNDLE:
    image = image.add_local_dir(LOCAL_BUNDLE, REMOTE_BUNDLE, copy=True).env({"TYMPAN_BUNDLE": REMOTE_BUNDLE})

app = modal.App(APP_NAME, image=image)


@app.function(
    gpu=GPU,
    min_containers=MIN_CONTAINERS,
    max_containers=MAX_CONTAINERS,
    scaledown_window=SCALEDOWN_WINDOW,
    timeout=TIMEOUT,
    secrets=[modal.Secret.from_name(API_SECRET)] if API_SECRET else [],
)
@modal.concurrent(max_inputs=MAX_INPUTS, target_inputs=TARGET_INPUTS)
@modal.asgi_app(label=APP_NAME)
def web():
    """Our FastAPI app; start-up blocks until the model is loaded and warmed on the GPU."""
    import torch

    from tympan.serving.app import create_app
    from tympan.serving.settings import Settings

    device = os.environ.get("TYMPAN_DEVICE", "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        device = "cpu"
    settings = Settings.from_env(device=device, max_batch_size=MAX_BATCH_SIZE, max_wait_ms=MAX_WAIT_MS,
                                 backend=BACKEND, load_in_background=False)
    return create_app(os.environ.get("TYMPAN_BUNDLE") or None, settings)
