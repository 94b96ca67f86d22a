"""Load and warm the served model while the web stack is still importing.

``tympan serve`` spends about as long importing FastAPI, pydantic's schema machinery and uvicorn
as it does building the model (ONNX Runtime session, warm-up passes). The model's work is mostly
native code that releases the GIL, so running it in a thread from the first moment of the
command overlaps the two on a multi-core machine. This module imports no web framework, so the
thread can start before one is imported; the app then takes the finished :class:`Preloaded`.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tympan.serving.settings import Settings


@dataclass(frozen=True)
class Preloaded:
    """A built and warmed predictor, with what the server reports about it."""

    predictor: Any  # tympan.inference.Predictor (imported lazily: torch)
    warmup_s: float
    source: str


def warmup_sizes(settings: Settings) -> list[int]:
    """Batch sizes warmed before ``/ready``: the configured ones and the largest pass."""
    s = settings
    return sorted({b for b in (*s.warmup_batch_sizes, s.max_batch_size) if 1 <= b <= s.max_batch_size})


def build_predictor(source: Any, settings: Settings) -> Any:
    """The served :class:`~tympan.inference.Predictor`, its backends timed with the server's threads."""
    import torch

    from tympan.inference import Predictor, UncertaintyPolicy

    s = settings
    torch.set_num_threads(s.threads)
    return Predictor(source, s.device, max_seconds=s.max_audio_seconds, max_samples=s.max_audio_samples,
                     policy=UncertaintyPolicy(s.min_confidence, s.min_margin), max_chunk=max(s.max_batch_size, 1),
                     optimize=s.optimize, backend=s.backend, threads=s.threads)


def _load(source: Path, settings: Settings) -> Preloaded:
    predictor = build_predictor(source, settings)
    t0 = time.perf_counter()
    predictor.warmup(warmup_sizes(settings))
    return Preloaded(predictor, time.perf_counter() - t0, str(source))


def start_preload(source: Path, settings: Settings) -> Future[Preloaded]:
    """Build and warm the model in a background thread; the app awaits the future."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="tympan-preload")
    future = pool.submit(_load, source, settings)
    pool.shutdown(wait=False)  # the thread ends with the job
    return future
