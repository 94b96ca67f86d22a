"""Audio in, a typed prediction out: :class:`Predictor`.

decoded audio -> overlapping windows -> LogMel -> model -> (embeddings, logits) per window ->
:func:`tympan.inference.prediction.predict_recording` (calibrated probabilities, energy OOD
score and flag, uncertainty).

The HTTP server (``tympan.serving``) and ``tympan predict`` both call it, and the server's
micro-batcher hands it the windows of several requests at once (:meth:`Predictor.logits`), so
one forward pass serves many requests. The front end is built from the bundle's own
``FrontendConfig``, so serving cannot compute features the model was not trained on.

How window logits become a recording's answer is defined once, in
:mod:`tympan.inference.prediction`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torch import nn

from tympan.audio import DEFAULT_MAX_SECONDS, AudioSource, Decoded, Header, HeaderCheck, frame_windows, load_audio
from tympan.bundle import META_FILE, Bundle, load_bundle
from tympan.contracts.prediction import AudioInfo, ModelRef, Prediction, PredictResponse
from tympan.errors import AudioTooLongError
from tympan.inference.backends import BackendChoice, select_backend
from tympan.inference.prediction import TrustParams, UncertaintyPolicy, predict_recording
from tympan.inference.runtime_cache import RuntimeCache, cache_folder
from tympan.inference.saliency import explain_window
from tympan.stats.scorers import level_features

#: most decoded samples (frames x channels) one upload may hold: 600 s of 48 kHz stereo fits
DEFAULT_MAX_SAMPLES = 64_000_000


def bundle_version(bundle: Bundle, directory: str | Path | None = None) -> str:
    """Short sha256 of ``bundle.json`` (the file when there is one, else its canonical text)."""
    if directory is not None and (Path(directory) / META_FILE).is_file():
        data = (Path(directory) / META_FILE).read_bytes()
    else:  # exactly the text save_bundle writes
        data = (json.dumps(bundle.metadata(), indent=2, allow_nan=False) + "\n").encode()
    return hashlib.sha256(data).hexdigest()[:12]


class EmbedAndClassify(nn.Module):
    """``x -> (embed(x), classify(embed(x)))``: one traced graph gives both (model protocol)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.model.embed(x)
        return e, self.model.classify(e)


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
        backend: str = "auto",
        threads: int | None = None,
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
        self.params = TrustParams.from_bundle(bundle, policy)
        self.max_seconds = max_seconds
        self.max_samples = max_samples
        self.max_chunk = max(1, int(max_chunk))
        self.version = bundle_version(bundle, directory)
        self._lock = threading.Lock()  # one forward at a time; hooks (explain) need it too
        if self.device.type == "cuda":  # TF32 convolutions would break parity with CPU evaluation
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        #: how the network runs (:mod:`tympan.inference.backends`): ``backend`` ("auto" = the
        #: fastest copy that agrees with the eager model to 1e-4, measured at load; ``optimize=False``
        #: = eager); ``threads``: ONNX Runtime's intra-op threads (default: torch's)
        self.backend_choice = self._select_backend(backend if optimize else "eager", threads)
        self.backend = self.backend_choice.name
        self._runner = self.backend_choice.runner
        #: the copy that serves ``forward`` (ONNX Runtime session or TorchScript), None: eager
        self.fast_model = None if self.backend == "eager" else self._runner
        #: the eager model is shared with ``explain``'s hooks: one pass at a time. The copies
        #: are separate graphs and thread-safe, so several threads may run passes at once
        self._runner_lock = self._lock if self.fast_model is None else contextlib.nullcontext()

    # the bundle's fitted numbers, read once into ``params``
    @property
    def temperature(self) -> float:
        return self.params.temperature

    @property
    def ood_temperature(self) -> float:
        return self.params.ood_temperature

    @property
    def ood_threshold(self) -> float | None:
        return self.params.ood_threshold

    @property
    def policy(self) -> UncertaintyPolicy:
        return self.params.policy

    def _select_backend(self, backend: str, threads: int | None) -> BackendChoice:
        """ONNX Runtime, TorchScript or eager for ``forward``, checked against the eager model.

        Each copy must give every embedding and logit within 1e-4 of the eager model on a batch
        of windows or it is not used; ``auto`` times the ones that agree on one window and keeps
        the fastest. The eager model stays for ``explain`` (hooks, gradients). The exported graph
        and the choice are cached (:mod:`tympan.inference.runtime_cache`): beside the bundle
        when its folder is writable, else in ``$TYMPAN_CACHE_DIR/runtime``.
        """
        import logging

        rng = np.random.default_rng(0)
        with torch.inference_mode():
            x = self.features((rng.standard_normal((3, self.config.clip_samples)) * 0.05).astype(np.float32))
        cache = None
        folder = cache_folder(self.directory) if backend != "eager" else None
        if folder is not None:
            cache = RuntimeCache.for_model(
                folder, weights=self.bundle.weights_fingerprint, frontend=self.config.fingerprint(), backend=backend,
                threads=max(1, int(threads or torch.get_num_threads())), device=str(self.device))
        choice = select_backend(EmbedAndClassify(self.model).eval(), x, backend=backend, threads=threads,
                                cache=cache)
        logging.getLogger("tympan.inference").debug("%s: %s", self.bundle.name, choice.summary())
        return choice

    # ----------------------------------------------------------------- describing the model
    @property
    def model_info(self) -> dict[str, str]:
        return {"name": self.bundle.name, "arch": self.bundle.arch, "version": self.version}

    @property
    def model_ref(self) -> ModelRef:
        return ModelRef(**self.model_info)

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
    def decode(self, source: AudioSource, *, check_header: HeaderCheck | None = None) -> Decoded:
        """The one decoder, at the model's sample rate, with the duration and sample limits.

        ``check_header`` (e.g. a server's decode budget) sees the header too, before any sample
        is decoded; the file is opened once for both.
        """
        limit = self.max_samples if isinstance(source, bytes | bytearray | memoryview) else None

        def check(header: Header) -> None:
            if limit is not None:
                self._check_samples(header, limit)
            if check_header is not None:
                check_header(header)

        return load_audio(source, self.config.sample_rate, max_seconds=self.max_seconds,
                          check_header=check if limit is not None or check_header is not None else None)

    @staticmethod
    def _check_samples(header: Header, limit: int) -> None:
        """Refuse decompression bombs: a few kB of FLAC can promise gigabytes of samples.

        The duration limit alone does not bound memory (600 s x 768 kHz x 8 channels is 14 GB
        of float32), so the header's frames x channels must fit ``max_samples`` too (uploads;
        files without a length are bounded by the duration limit while they decode).
        """
        total = header.samples
        if total is not None and total > limit:
            raise AudioTooLongError(
                f"audio bytes: {header.frames} frames x {header.channels} channels = {total} samples; "
                f"the limit is {limit} samples"
            )

    def prepare(self, source: AudioSource | Decoded, *, check_header: HeaderCheck | None = None) -> Prepared:
        """Decode (if needed) and cut into 50%-overlapping model windows."""
        decoded = source if isinstance(source, Decoded) else self.decode(source, check_header=check_header)
        windows, starts = frame_windows(decoded.waveform, self.config.clip_samples)
        return Prepared(decoded, windows, starts)

    def features(self, windows: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Log-mels ``(B, 1, n_mels, frames)`` of windows ``(B, clip_samples)``."""
        x = torch.as_tensor(np.asarray(windows, dtype=np.float32)).to(self.device)
        return self.frontend(x)

    def forward_features(self, features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``(B, D)`` and logits ``(B, K)`` of log-mels ``(B, 1, n_mels, frames)``."""
        embs, out = [], []
        with self._runner_lock, torch.inference_mode():
            for lo in range(0, features.shape[0], self.max_chunk):
                e, z = self._runner(features[lo : lo + self.max_chunk].to(self.device).float())
                embs.append(e)
                out.append(z)
        if not out:
            return np.zeros((0, 0), np.float32), np.zeros((0, self.n_classes), np.float32)
        return np.concatenate(embs), np.concatenate(out)

    def forward(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings ``(B, D)`` and logits ``(B, K)`` of windows ``(B, clip_samples)``, batched."""
        windows = np.asarray(windows, dtype=np.float32)
        embs, out = [], []
        for lo in range(0, windows.shape[0], self.max_chunk):
            with torch.inference_mode():
                feats = self.features(windows[lo : lo + self.max_chunk])
            e, z = self.forward_features(feats)
            embs.append(e)
            out.append(z)
        if not out:
            return np.zeros((0, 0), np.float32), np.zeros((0, self.n_classes), np.float32)
        return np.concatenate(embs), np.concatenate(out)

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """Raw logits ``(B, n_classes)`` of windows ``(B, clip_samples)``: one batched pass."""
        return self.forward(windows)[1]

    def forward_many(self, prepared: Sequence[Prepared]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Embeddings and logits of several requests' windows in one forward pass, split back."""
        if not prepared:
            return []
        sizes = np.cumsum([p.windows.shape[0] for p in prepared])[:-1]
        e, z = self.forward(np.concatenate([p.windows for p in prepared]))
        return list(zip(np.split(e, sizes), np.split(z, sizes), strict=True))

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
    def prediction(self, prepared: Prepared, logits: np.ndarray, *, top_k: int = 3,
                   return_logits: bool = False, embeddings: np.ndarray | None = None) -> Prediction:
        """The typed :class:`Prediction` of one request's window logits (the one path).

        Bundles that score OOD on the embedding or detect background also need the windows'
        embeddings (from :meth:`forward`; recomputed here when not given) and levels.
        """
        cfg, duration = self.config, prepared.decoded.source_duration
        starts = np.asarray(prepared.starts, np.float64) / cfg.sample_rate
        ends = np.minimum(starts + cfg.clip_seconds, duration)
        levels = None
        if self.params.needs_embeddings:
            if embeddings is None:
                embeddings = self.forward(prepared.windows)[0]
            levels = level_features(prepared.windows, cfg.sample_rate)
        return predict_recording(logits, self.params, self.classes, starts_s=starts, ends_s=ends,
                                 top_k=top_k, return_logits=return_logits, embeddings=embeddings, levels=levels)

    def response(self, prepared: Prepared, logits: np.ndarray, *, top_k: int = 3,
                 return_logits: bool = False, timing_ms: float = 0.0,
                 embeddings: np.ndarray | None = None) -> PredictResponse:
        """The validated ``/predict`` body: the prediction plus model, audio and timing."""
        d = prepared.decoded
        pred = self.prediction(prepared, logits, top_k=top_k, return_logits=return_logits, embeddings=embeddings)
        return PredictResponse(
            **dict(pred), model=self.model_ref,
            audio=AudioInfo(duration_s=round(d.source_duration, 4), sample_rate=d.source_sample_rate,
                            channels=d.source_channels, format=d.format, subtype=d.subtype),
            warnings=list(getattr(d, "warnings", None) or []),
            timing_ms=round(float(timing_ms), 2),
        )

    @staticmethod
    def body(response: PredictResponse) -> dict[str, Any]:
        """The ``/predict`` body as a JSON-ready dict (``logits`` only when they were asked for)."""
        return response.model_dump(exclude=None if response.logits is not None else {"logits"})

    # ------------------------------------------------------------------------- offline use
    def predict(self, source: AudioSource, *, top_k: int = 3, return_logits: bool = False) -> dict[str, Any]:
        """Decode, window, run and post-process one recording (``tympan predict``)."""
        start = time.perf_counter()
        prepared = self.prepare(source)
        e, z = self.forward(prepared.windows)
        response = self.response(prepared, z, top_k=top_k, return_logits=return_logits, embeddings=e)
        response.timing_ms = round((time.perf_counter() - start) * 1000, 2)
        return self.body(response)

    def predict_many(
        self, prepared: Sequence[Prepared], *, top_k: int = 3, return_logits: bool = False,
        prepare_ms: Sequence[float] | None = None,
    ) -> list[dict[str, Any]]:
        """Several already-prepared recordings in one batched forward pass.

        Each body's ``timing_ms`` is its share of the pass (by windows) plus its own
        post-processing, plus ``prepare_ms[i]`` (the caller's decode time) when given.
        """
        start = time.perf_counter()
        outputs = self.forward_many(prepared)
        pass_ms = (time.perf_counter() - start) * 1000
        total = sum(p.windows.shape[0] for p in prepared) or 1
        bodies = []
        for i, (p, (e, z)) in enumerate(zip(prepared, outputs, strict=True)):
            t0 = time.perf_counter()
            response = self.response(p, z, top_k=top_k, return_logits=return_logits, embeddings=e)
            own = (time.perf_counter() - t0) * 1000 + pass_ms * p.windows.shape[0] / total
            response.timing_ms = round(own + (prepare_ms[i] if prepare_ms is not None else 0.0), 2)
            bodies.append(self.body(response))
        return bodies

    def explain(self, source: AudioSource | Decoded, *, top_k: int = 3) -> dict[str, Any]:
        """What the model saw for the first window, and where it looked (``/explain``)."""
        prepared = self.prepare(source)
        with self._lock:
            out = explain_window(self.model, self.frontend, prepared.windows[0], self.classes,
                                 temperature=self.temperature, top_k=top_k, device=self.device)
        return out
