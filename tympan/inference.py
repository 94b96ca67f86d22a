"""The one place that turns audio into calibrated predictions: :class:`Predictor`.

decoded audio -> overlapping windows -> LogMel -> model -> logits -> calibrated probabilities
(softmax(logits / T), T = the bundle's fitted temperature) + energy OOD score and flag.

The HTTP server (``tympan.serving``) and ``tympan predict`` both call it, and the server's
micro-batcher hands it the windows of several requests at once (:meth:`Predictor.logits`), so
one forward pass serves many requests. The front end is built from the bundle's own
``FrontendConfig``, so serving cannot compute features the model was not trained on.

``uncertain`` is true when any of these holds (thresholds in :class:`UncertaintyPolicy`):

- the clip is out of distribution (energy score above the bundle's fitted threshold);
- the top-1 calibrated probability is below ``min_confidence`` (default 0.40);
- the gap between the top-1 and top-2 probabilities is below ``min_margin`` (default 0.10).

``uncertain_reasons`` names each one that fired, and also carries the note
``"no OOD threshold fitted"`` when the bundle has none (that note alone does not set
``uncertain``: there is no evidence either way).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from tympan.audio import DEFAULT_MAX_SECONDS, AudioSource, Decoded, frame_windows, load_audio
from tympan.bundle import META_FILE, Bundle, load_bundle
from tympan.errors import AudioTooLongError

NO_THRESHOLD_NOTE = "no OOD threshold fitted"
#: most decoded samples (frames x channels) one upload may hold: 600 s of 48 kHz stereo fits
DEFAULT_MAX_SAMPLES = 64_000_000
AGGREGATE = "mean of window probabilities; OOD score = mean of window energy scores"


@dataclass(frozen=True)
class UncertaintyPolicy:
    """When a prediction is flagged ``uncertain`` (besides being out of distribution)."""

    min_confidence: float = 0.40
    min_margin: float = 0.10


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Energy OOD score ``-T * logsumexp(z / T)`` per row (higher = more OOD; Liu et al. 2020).

    Same formula as ``tympan.diagnostics.ood.EnergyOOD.score``, in float64 for stability.
    """
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    m = z.max(axis=1, keepdims=True)
    return -float(temperature) * (m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Calibrated probabilities ``softmax(z / T)`` per row, float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def bundle_version(bundle: Bundle, directory: str | Path | None = None) -> str:
    """Short sha256 of ``bundle.json`` (the file when there is one, else its canonical text)."""
    if directory is not None and (Path(directory) / META_FILE).is_file():
        data = (Path(directory) / META_FILE).read_bytes()
    else:  # exactly the text save_bundle writes
        data = (json.dumps(bundle.metadata(), indent=2, allow_nan=False) + "\n").encode()
    return hashlib.sha256(data).hexdigest()[:12]


@dataclass
class Prepared:
    """A decoded request cut into model windows, ready for a (shared) forward pass."""

    decoded: Decoded
    windows: np.ndarray  # (n_windows, clip_samples) float32
    starts: np.ndarray  # start sample of each window, at the front end's rate


class Predictor:
    """Decoded audio in, calibrated predictions out. Thread-safe for concurrent ``logits`` calls.

    ``bundle`` is a :class:`Bundle` or a bundle directory. ``max_chunk`` bounds how many
    windows go through the network at once (memory), whatever the caller hands over.
    """

    def __init__(
        self,
        bundle: Bundle | str | Path,
        device: str | torch.device = "cpu",
        *,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
        max_samples: int | None = DEFAULT_MAX_SAMPLES,
        policy: UncertaintyPolicy | None = None,
        max_chunk: int = 64,
        optimize: bool = True,
    ) -> None:
        directory = None
        if not isinstance(bundle, Bundle):
            directory = Path(bundle)
            bundle = load_bundle(directory, device="cpu")
        self.bundle = bundle
        self.directory = directory
        self.device = torch.device(device)
        self.model = bundle.model.to(self.device).eval()
        self.frontend = bundle.frontend_module().to(self.device).eval()
        self.config = bundle.frontend
        self.classes = list(bundle.classes)
        self.n_classes = len(self.classes)
        self.temperature = float(bundle.temperature or 1.0)
        ood = bundle.ood or {}
        self.ood_temperature = float(ood.get("temperature") or 1.0)
        thr = ood.get("threshold")
        if str(ood.get("score", "energy")).lower() != "energy":
            thr = None  # a threshold for another score means nothing on the energy scale
        self.ood_threshold = None if thr is None or not math.isfinite(float(thr)) else float(thr)
        self.max_seconds = max_seconds
        self.max_samples = max_samples
        self.policy = policy or UncertaintyPolicy()
        self.max_chunk = max(1, int(max_chunk))
        self.version = bundle_version(bundle, directory)
        self._lock = threading.Lock()  # one forward at a time; hooks (explain) need it too
        #: a frozen, conv/BN-folded TorchScript copy for ``logits`` (CPU), or None: eager
        self.fast_model = self._optimized() if optimize and self.device.type == "cpu" else None

    def _optimized(self) -> torch.nn.Module | None:
        """Trace + freeze + ``optimize_for_inference`` a copy of the model, if it agrees.

        On CPU this folds BatchNorm into convolutions and fuses activations (about 1.3-2x
        faster for mn04 here). The copy must match the eager model on a batch to 1e-4 or it
        is not used; the eager model stays for ``explain`` (hooks, gradients). TorchScript
        is deprecated in recent torch, so any failure just means eager.
        """
        import copy
        import logging
        import warnings

        log = logging.getLogger("tympan.inference")
        try:
            rng = np.random.default_rng(0)
            x = self.features((rng.standard_normal((3, self.config.clip_samples)) * 0.05).astype(np.float32))
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(copy.deepcopy(self.model).eval(), x[:1], check_trace=False)
                fast = torch.jit.optimize_for_inference(traced.eval())
                want, got = self.model(x), fast(x)
            if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                log.warning("optimized model disagrees with the eager one; serving eager")
                return None
            return fast
        except Exception as exc:  # noqa: BLE001 - any failure: the eager model is the reference
            log.warning("model optimisation unavailable (%s); serving eager", exc)
            return None

    # ----------------------------------------------------------------- describing the model
    @property
    def model_info(self) -> dict[str, str]:
        return {"name": self.bundle.name, "arch": self.bundle.arch, "version": self.version}

    def describe(self) -> dict[str, Any]:
        """What ``GET /model`` returns."""
        b = self.bundle
        return {
            **self.model_info,
            "classes": self.classes,
            "frontend": self.config.to_dict(),
            "temperature": self.temperature,
            "ood": {**(b.ood or {}), "score_name": "energy",
                    "score_orientation": "higher = more out-of-distribution"},
            "metrics": b.metrics,
            "provenance": b.provenance,
            "diagnostics": (b.extra or {}).get("diagnostics"),
        }

    # ----------------------------------------------------------------------- the pipeline
    def decode(self, source: AudioSource) -> Decoded:
        """The one decoder, at the model's sample rate, with the duration and sample limits."""
        if self.max_samples is not None and isinstance(source, bytes | bytearray | memoryview):
            self._check_samples(bytes(source))
        return load_audio(source, self.config.sample_rate, max_seconds=self.max_seconds)

    def _check_samples(self, data: bytes) -> None:
        """Refuse decompression bombs: a few kB of FLAC can promise gigabytes of samples.

        The duration limit alone does not bound memory (600 s x 768 kHz x 8 channels is 14 GB
        of float32), so the header's frames x channels must fit ``max_samples`` too. Files whose
        header cannot be read are left to :func:`load_audio`, which names the problem.
        """
        try:
            info = sf.info(io.BytesIO(data))
        except Exception:  # noqa: BLE001 - load_audio classifies undecodable input
            return
        total = int(info.frames) * int(info.channels)
        if 0 < info.frames < 0x7FFF_FFFF and total > self.max_samples:
            raise AudioTooLongError(
                f"audio bytes: {info.frames} frames x {info.channels} channels = {total} samples; "
                f"the limit is {self.max_samples} samples"
            )

    def prepare(self, source: AudioSource | Decoded) -> Prepared:
        """Decode (if needed) and cut into 50%-overlapping model windows."""
        decoded = source if isinstance(source, Decoded) else self.decode(source)
        windows, starts = frame_windows(decoded.waveform, self.config.clip_samples)
        return Prepared(decoded, windows, starts)

    def features(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Log-mels ``(B, 1, n_mels, frames)`` of windows ``(B, clip_samples)``."""
        x = torch.as_tensor(np.asarray(windows, dtype=np.float32)).to(self.device)
        return self.frontend(x)

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """Raw logits ``(B, n_classes)`` of windows ``(B, clip_samples)``: one batched pass."""
        windows = np.asarray(windows, dtype=np.float32)
        out = []
        with self._lock, torch.inference_mode():
            for lo in range(0, windows.shape[0], self.max_chunk):
                feats = self.features(windows[lo : lo + self.max_chunk])
                out.append((self.fast_model or self.model)(feats).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.n_classes), np.float32)
        return np.concatenate(out)

    def logits_many(self, prepared: Sequence[Prepared]) -> list[np.ndarray]:
        """Logits of several requests' windows in one forward pass, split back per request."""
        if not prepared:
            return []
        sizes = [p.windows.shape[0] for p in prepared]
        z = self.logits(np.concatenate([p.windows for p in prepared]))
        return np.split(z, np.cumsum(sizes)[:-1])

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> float:
        """Run the network once per batch size (first calls pay for kernel set-up); seconds."""
        start = time.perf_counter()
        for b in batch_sizes:
            rng = np.random.default_rng(0)
            self.logits((rng.standard_normal((b, self.config.clip_samples)) * 0.01).astype(np.float32))
        return time.perf_counter() - start

    # -------------------------------------------------------------------- post-processing
    def _top(self, probs: np.ndarray, k: int) -> list[dict[str, Any]]:
        idx = np.argsort(-probs, kind="stable")[:k]
        return [{"label": self.classes[i], "index": int(i), "probability": round(float(probs[i]), 6)}
                for i in idx]

    def result(
        self,
        prepared: Prepared,
        logits: np.ndarray,
        *,
        top_k: int = 3,
        return_logits: bool = False,
    ) -> dict[str, Any]:
        """The ``/predict`` response body (less ``timing_ms``) from one request's logits."""
        k = max(1, min(int(top_k), self.n_classes))
        probs = softmax(logits, self.temperature)
        scores = energy_score(logits, self.ood_temperature)
        thr = self.ood_threshold
        cfg, d = self.config, prepared.decoded
        duration = d.source_duration
        windows = []
        for i, start in enumerate(prepared.starts):
            s = float(start) / cfg.sample_rate
            windows.append({
                "start_s": round(s, 3),
                "end_s": round(min(s + cfg.clip_seconds, duration), 3),
                "top_k": self._top(probs[i], k),
                "ood_score": round(float(scores[i]), 4),
                "out_of_distribution": bool(thr is not None and scores[i] > thr),
            })
        mean_p = probs.mean(axis=0)
        score = float(scores.mean())
        ood = bool(thr is not None and score > thr)
        order = np.sort(mean_p)[::-1]
        top1 = float(order[0])
        margin = float(order[0] - order[1]) if len(order) > 1 else 1.0
        reasons = []
        if ood:
            reasons.append(f"out of distribution: energy score {score:.3f} > threshold {thr:.3f}")
        if top1 < self.policy.min_confidence:
            reasons.append(f"top-1 probability {top1:.3f} < {self.policy.min_confidence:g}")
        if margin < self.policy.min_margin:
            reasons.append(f"top-1/top-2 margin {margin:.3f} < {self.policy.min_margin:g}")
        uncertain = bool(reasons)
        if thr is None:
            reasons.append(NO_THRESHOLD_NOTE)
        body: dict[str, Any] = {
            "model": self.model_info,
            "top_k": self._top(mean_p, k),
            "ood": {"score_name": "energy", "score": round(score, 4), "threshold": thr,
                    "out_of_distribution": ood},
            "uncertain": uncertain,
            "uncertain_reasons": reasons,
            "audio": {"duration_s": round(duration, 4), "sample_rate": d.source_sample_rate,
                      "channels": d.source_channels, "format": d.format, "subtype": d.subtype},
            "windows": windows,
            "aggregate": AGGREGATE,
            "temperature": self.temperature,
        }
        if return_logits:
            body["logits"] = [[float(v) for v in row] for row in np.asarray(logits, np.float32)]
        return body

    # ------------------------------------------------------------------------- offline use
    def predict(self, source: AudioSource, *, top_k: int = 3, return_logits: bool = False) -> dict[str, Any]:
        """Decode, window, run and post-process one recording (``tympan predict``)."""
        start = time.perf_counter()
        prepared = self.prepare(source)
        body = self.result(prepared, self.logits(prepared.windows), top_k=top_k, return_logits=return_logits)
        body["timing_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return body

    def predict_many(
        self, prepared: Sequence[Prepared], *, top_k: int = 3, return_logits: bool = False
    ) -> list[dict[str, Any]]:
        """Several already-prepared recordings in one batched forward pass."""
        return [self.result(p, z, top_k=top_k, return_logits=return_logits)
                for p, z in zip(prepared, self.logits_many(prepared), strict=True)]

    def explain(self, source: AudioSource | Decoded, *, top_k: int = 3) -> dict[str, Any]:
        """What the model saw for the first window, and where it looked (``/explain``)."""
        from tympan.diagnostics.interpret import explain_window

        prepared = self.prepare(source)
        with self._lock:
            out = explain_window(self.model, self.frontend, prepared.windows[0], self.classes,
                                 temperature=self.temperature, top_k=top_k, device=self.device)
        return out
