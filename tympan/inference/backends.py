"""How the network runs: ONNX Runtime, a frozen TorchScript copy, or eager PyTorch.

:func:`select_backend` builds the candidates for a model (the ``EmbedAndClassify`` module: log-mels
in, embeddings and logits out, one graph), checks each against the eager module on a batch of
windows (every output within :data:`PARITY_ATOL`, else it is not used), times the ones that
agree on one window, interleaved so a busy machine slows them alike, and returns the fastest
(``backend="auto"``) or the one asked for. With a :class:`~.runtime_cache.RuntimeCache`, a clean
choice (no copy rejected) and the exported graph are kept, and the next start rebuilds the
runner from them, checked against the stored eager outputs, without exporting or timing. Any failure (onnxruntime or onnx not installed, an
export or a trace that fails, a copy that disagrees) falls back to eager with a log line: the
eager module is the reference and always works.

- ``onnx``: the module exported with ``torch.onnx.export`` at the first load (a few seconds; batch
  axis dynamic; cached) and run by ONNX Runtime's CPU execution provider, with ``threads`` intra-op
  threads and no spin-waiting (a server shares its cores with decoding and the event loop).
  CPU only; needs the ``serve`` extra (``onnxruntime`` and ``onnx``).
- ``torchscript``: ``torch.jit.trace`` + ``optimize_for_inference`` (freezes, folds BatchNorm
  into convolutions, fuses activations); CPU and CUDA.
- ``eager``: the module itself.

Every runner takes a float32 tensor ``(B, 1, n_mels, frames)`` on the model's device and returns
numpy float32 ``(embeddings (B, D), logits (B, K))``.
"""

from __future__ import annotations

import copy
import io
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tympan.inference.runtime_cache import RuntimeCache

log = logging.getLogger("tympan.inference")

BACKENDS = ("auto", "onnx", "torchscript", "eager")
#: a copy serves only if every embedding and logit is within this of the eager module's
PARITY_ATOL = 1e-4

Runner = Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


class EagerRunner:
    """The module as it is (the reference; also the only backend ``explain`` can hook into)."""

    name = "eager"

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            e, z = self.module(x)
        return _numpy(e), _numpy(z)


class TorchScriptRunner(EagerRunner):
    """A traced, frozen, conv/BN-folded copy (``torch.jit.optimize_for_inference``)."""

    name = "torchscript"

    @classmethod
    def build(cls, module: nn.Module, example: torch.Tensor) -> TorchScriptRunner:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # TorchScript is deprecated in recent torch
            traced = torch.jit.trace(copy.deepcopy(module).eval(), example[:1], check_trace=False)
            return cls(torch.jit.optimize_for_inference(traced.eval()))


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime and the ``onnx`` package (the exporter needs it) import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken: no ONNX backend
        return False
    return True


def export_onnx(module: nn.Module, example: torch.Tensor) -> bytes:
    """The module as an ONNX model (input ``logmel``, outputs ``embeddings`` and ``logits``,
    batch axis dynamic). The TorchScript-based exporter first (about 10x quicker to export),
    then the ``torch.export``-based one (needs ``onnxscript``) where the first is gone."""
    module = copy.deepcopy(module).eval().cpu()
    x = example[:1].detach().cpu().float()
    names = {"input_names": ["logmel"], "output_names": ["embeddings", "logits"]}
    errors = []
    for dynamo in (False, True):
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                if dynamo:
                    batch = torch.export.Dim("batch", min=1, max=4096)
                    program = torch.onnx.export(module, (x,), dynamo=True, dynamic_shapes=({0: batch},),
                                                optimize=True, verbose=False, **names)
                    return program.model_proto.SerializeToString()
                axes = {name: {0: "batch"} for name in ("logmel", "embeddings", "logits")}
                torch.onnx.export(module, (x,), buf, dynamo=False, dynamic_axes=axes, opset_version=17, **names)
                return buf.getvalue()
        except Exception as exc:  # noqa: BLE001 - try the other exporter, then give up
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(exc).__name__}: {exc}")
    raise RuntimeError("; ".join(e.splitlines()[0] for e in errors))


class OnnxRunner:
    """An ONNX Runtime session (CPU execution provider) of the exported module."""

    name = "onnx"

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name
        #: the serialised graph (kept for the runtime cache)
        self.model_bytes: bytes | None = None

    @classmethod
    def build(cls, module: nn.Module, example: torch.Tensor, threads: int | None = None) -> OnnxRunner:
        return cls.from_bytes(export_onnx(module, example), threads)

    @classmethod
    def from_bytes(cls, model: bytes, threads: int | None = None) -> OnnxRunner:
        """A session of an exported graph (``model``: the bytes :func:`export_onnx` gives)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads or torch.get_num_threads()))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # spin-waiting threads take the cores that decoding and the event loop need: off
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        runner = cls(ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]))
        runner.model_bytes = model
        return runner

    def __call__(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        feed = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        e, z = self.session.run(None, {self.input: feed})
        return e, z


@dataclass
class BackendChoice:
    """What :func:`select_backend` chose, and why."""

    runner: Runner
    name: str
    requested: str
    #: median milliseconds for one window, per backend timed (interleaved, same run)
    ms_per_window: dict[str, float] = field(default_factory=dict)
    #: largest |copy - eager| over embeddings and logits, per backend checked
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    #: backends not used, with the reason
    rejected: dict[str, str] = field(default_factory=dict)
    #: the runtime cache: ``hit`` (nothing exported or timed), ``miss``, ``off`` (no cache
    #: folder), or why an entry was rebuilt (``stale (...)``, ``corrupt (...)``, ``unusable (...)``)
    cache: str = "off"
    #: the eager module's embeddings and logits on the parity batch (stored with a cache entry)
    reference: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def summary(self) -> str:
        timed = ", ".join(f"{k} {v:.2f} ms" for k, v in sorted(self.ms_per_window.items(), key=lambda kv: kv[1]))
        out = f"backend {self.name} (asked: {self.requested}"
        out += f"; one window: {timed})" if timed else ")"
        if self.rejected:
            out += "; not used: " + "; ".join(f"{k}: {v}" for k, v in self.rejected.items())
        return out + f"; cache: {self.cache}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runners(runners: dict[str, Runner], x: torch.Tensor, *, rounds: int = 10, warmup: int = 2,
                 budget_s: float = 2.0) -> dict[str, float]:
    """Median milliseconds of each runner on ``x``, the runners interleaved round by round
    (``rounds`` rounds, or fewer, at least 3, once ``budget_s`` seconds have gone)."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    with torch.inference_mode():
        for _ in range(warmup):
            for run in runners.values():
                run(x)
        _sync(x.device)
        start = time.perf_counter()
        for i in range(rounds):
            if i >= 3 and time.perf_counter() - start > budget_s:
                break
            for k, run in runners.items():
                start = time.perf_counter()
                run(x)
                _sync(x.device)
                times[k].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def candidates(requested: str, device: torch.device) -> list[str]:
    """Backends to try for ``requested`` on ``device``, fastest first by expectation."""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} (got {requested!r})")
    if requested != "auto":
        return [requested]
    if device.type == "cpu":
        return ["onnx", "torchscript", "eager"] if onnxruntime_available() else ["torchscript", "eager"]
    return ["torchscript", "eager"]


def parity_diff(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray]) -> float:
    """Largest |got - want| over embeddings and logits (inf when a shape differs)."""
    return max(float(np.abs(g - w).max()) if g.shape == w.shape else float("inf")
               for g, w in zip(got, want, strict=True))


def cached_choice(module: nn.Module, example: torch.Tensor, cache: RuntimeCache, backend: str,
                  threads: int | None) -> tuple[BackendChoice | None, str]:
    """The choice a cache entry records, its runner rebuilt and checked; else None and why.

    The runner's outputs on ``example`` must match the eager outputs stored in the entry within
    :data:`PARITY_ATOL`, so a corrupt or foreign graph is rebuilt rather than served.
    """
    hit, why = cache.load()
    if hit is None:
        return None, why
    entry = hit.entry
    try:
        if entry.backend == "onnx":
            if hit.onnx is None:
                raise RuntimeError("the entry chose onnx but keeps no graph")
            runner: Runner = OnnxRunner.from_bytes(hit.onnx, threads)
        elif entry.backend == "torchscript":
            runner = TorchScriptRunner.build(module, example)
        else:
            runner = EagerRunner(module)
        with torch.inference_mode():
            diff = parity_diff(runner(example), hit.reference)
        if not diff <= PARITY_ATOL:
            raise RuntimeError(f"the cached {entry.backend} disagrees with the stored eager outputs by {diff:.2e}")
    except Exception as exc:  # noqa: BLE001 - an unusable entry is rebuilt, never trusted
        return None, f"unusable ({' '.join(str(exc).split())[:200] or type(exc).__name__})"
    return BackendChoice(runner, entry.backend, backend, dict(entry.ms_per_window), dict(entry.max_abs_diff),
                         dict(entry.rejected), cache="hit"), "hit"


def select_backend(module: nn.Module, example: torch.Tensor, *, backend: str = "auto",
                   threads: int | None = None, rounds: int = 10,
                   cache: RuntimeCache | None = None) -> BackendChoice:
    """The runner for ``module`` (an eval-mode ``EmbedAndClassify`` on its device).

    ``example``: log-mels ``(B >= 1, 1, n_mels, frames)`` on that device, used for the parity
    check (all of it) and the timing (its first window). ``cache``: where the exported graph
    and the choice are kept (:mod:`.runtime_cache`); a valid entry skips export and timing.
    """
    why = "off"
    if cache is not None:
        hit, why = cached_choice(module, example, cache, backend, threads)
        if hit is not None:
            return hit
    choice = _select(module, example, backend=backend, threads=threads, rounds=rounds)
    choice.cache = why
    # only a clean choice is kept: a rejected copy (a failed export, a parity miss) is retried
    # at the next start rather than remembered
    if cache is not None and not choice.rejected:
        onnx = getattr(choice.runner, "model_bytes", None)
        cache.save(backend=choice.name, ms_per_window=choice.ms_per_window, max_abs_diff=choice.max_abs_diff,
                   rejected=choice.rejected, onnx=onnx, reference=choice.reference)
    return choice


def _select(module: nn.Module, example: torch.Tensor, *, backend: str, threads: int | None,
            rounds: int) -> BackendChoice:
    """Build, check and time the candidates (no cache)."""
    device = example.device
    eager = EagerRunner(module)
    choice = BackendChoice(eager, "eager", backend)
    names = candidates(backend, device)
    with torch.inference_mode():
        want = eager(example)
    choice.reference = want
    runners: dict[str, Runner] = {}
    for name in names:
        if name == "eager":
            runners[name] = eager
            continue
        try:
            if name == "onnx":
                if device.type != "cpu":
                    raise RuntimeError(f"ONNX Runtime serves on CPU here, not {device.type}")
                if not onnxruntime_available():
                    raise RuntimeError("onnxruntime/onnx not installed (pip install 'tympan[serve]')")
                runner: Runner = OnnxRunner.build(module, example, threads)
            else:
                runner = TorchScriptRunner.build(module, example)
            with torch.inference_mode():
                diff = parity_diff(runner(example), want)
            choice.max_abs_diff[name] = diff
            if not diff <= PARITY_ATOL:
                raise RuntimeError(f"disagrees with eager by {diff:.2e} (> {PARITY_ATOL:g})")
            runners[name] = runner
        except Exception as exc:  # noqa: BLE001 - any failure: another backend, finally eager
            choice.rejected[name] = " ".join(str(exc).split())[:300] or type(exc).__name__
    if not runners:
        runners["eager"] = eager
    if len(runners) > 1:
        choice.ms_per_window = time_runners(runners, example[:1], rounds=rounds)
        best = min(choice.ms_per_window, key=choice.ms_per_window.__getitem__)
    else:
        best = next(iter(runners))
    choice.runner, choice.name = runners[best], best
    if backend not in ("auto", best):
        log.warning("backend %s unavailable (%s); serving eager", backend, choice.rejected.get(backend))
    return choice
