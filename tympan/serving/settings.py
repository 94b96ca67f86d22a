"""Server settings: defaults, overridable by ``TYMPAN_*`` environment variables and CLI flags."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

#: ``tympan.inference.backends.BACKENDS`` (kept here so settings import without torch)
BACKENDS = ("auto", "onnx", "torchscript", "eager")


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told; ``Settings.from_env()`` reads ``TYMPAN_<FIELD>``.

    ``api_key`` comes from ``TYMPAN_API_KEY``; ``cors_origins`` from ``TYMPAN_CORS_ORIGINS``
    (comma-separated, ``*`` for any).
    """

    #: largest request body accepted (413 beyond it), checked on Content-Length and while reading
    max_body_bytes: int = 20 * 1024 * 1024
    #: longest recording accepted, in seconds (413 beyond it)
    max_audio_seconds: float = 600.0
    #: most decoded samples (frames x channels) per upload (413 beyond it): bounds memory
    max_audio_samples: int = 64_000_000
    #: most model windows in one forward pass (requests are gathered up to it)
    max_batch_size: int = 16
    #: how long a forward pass that is not full waits for requests being decoded right now, in
    #: milliseconds (never when none is): 0 on CPU, where a batch costs as much per window as
    #: single windows; a GPU gains from a few ms
    max_wait_ms: float = 0.0
    #: requests decoded or waiting for the model at once; beyond it 503 `overloaded` (back-pressure)
    max_in_flight: int = 64
    #: request-body bytes held by all requests at once (admission control, before a byte is read:
    #: Content-Length is reserved up front, chunked bodies count as they arrive); beyond it 503
    #: `overloaded` with Retry-After. None = 4 x max_body_bytes
    max_inflight_body_bytes: int | None = None
    #: longest wait, in seconds, for a request's headers (from the connection or its first byte)
    #: and for each next piece of its body; beyond it the connection is closed (headers) or
    #: answered 408 `read_timeout` (body)
    read_timeout_s: float = 10.0
    #: longest time, in seconds, a whole request body may take to arrive (408 `read_timeout`)
    body_timeout_s: float = 120.0
    #: an idle keep-alive connection is closed after this many seconds (uvicorn's timeout_keep_alive)
    keep_alive_timeout_s: float = 5.0
    #: a declared body must keep pace: by ``read_timeout_s`` + f x (``body_timeout_s`` -
    #: ``read_timeout_s``) at least the fraction f of its Content-Length has arrived (a straight
    #: line to the body timeout), else 408 `read_timeout`. Its reservation in the in-flight
    #: budget is held only as long as its bytes come. False: only the read and body timeouts
    pace_bodies: bool = True
    #: the part of the in-flight body budget that large bodies may not reserve: kept for small
    #: ones (at most a quarter of it each), so uploads that reserve much and send little cannot
    #: lock everyone out
    small_body_share: float = 0.125
    #: open connections per client address (beyond it: 503 `overloaded` and closed)
    max_connections_per_client: int = 64
    #: open connections in all (beyond it: 503 `overloaded` and closed); None = 1024, or half
    #: the process's file-descriptor limit when that is lower
    max_connections: int | None = None
    #: /explain requests (Grad-CAM: a backward pass, tens of times a prediction's cost) at once;
    #: beyond it 503 `overloaded`, so an explain flood cannot take the cores /predict needs
    max_explain_in_flight: int = 1
    #: decode budget: an upload may decode to at most max(max_samples_per_byte x its size,
    #: min_decode_samples) samples (frames x channels, from its header); beyond it 413
    #: `decode_budget_exceeded`. Bounds what a tiny, highly compressible file can cost
    max_samples_per_byte: float = 64.0
    min_decode_samples: int = 4_000_000
    #: a token /health returns in the X-Tympan-Instance header (``tympan up`` checks it is
    #: talking to the server it started)
    instance_token: str | None = None
    #: torch (and ONNX Runtime) intra-op threads per forward pass; None = 1 (see ``threads``)
    torch_threads: int | None = None
    #: forward passes that may run at once (ONNX Runtime/TorchScript copies only; eager: 1);
    #: None = the cores this process may use / ``threads``
    passes: int | None = None
    #: threads that decode uploads (off the event loop) and run the passes they can
    decode_threads: int = 2
    #: a request that finds the server idle (nothing else in flight or queued) and whose audio
    #: is at most this many seconds of mono at the model's rate (judged on the work its header
    #: describes: decoded frames x channels and resampled samples, see ``inline_work``) is
    #: decoded and run on the event loop's own thread: no hand-over to a worker and back, which
    #: costs about 1 ms of latency on 2 cores (benchmarks/serve_load.py). Bounds how long such a
    #: request holds the loop (a 10-s clip: ~15 ms on 2 cores); anything more, or arriving under
    #: load, goes to the workers. 0: never
    inline_max_seconds: float = 10.0
    device: str = "cpu"
    #: how the network runs: auto (the fastest of onnx, torchscript and eager that agrees with
    #: the eager model to 1e-4, measured at load), onnx (ONNX Runtime, CPU; needs the serve
    #: extra), torchscript or eager; an unusable choice falls back to eager with a log line
    backend: str = "auto"
    #: False: eager whatever ``backend`` says
    optimize: bool = True
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    #: uncertainty policy (see tympan.inference)
    min_confidence: float = 0.40
    min_margin: float = 0.10
    #: load and warm the model in the background, so /health answers at once and /ready says
    #: when the model is usable (False: start-up blocks until ready, as Modal wants)
    load_in_background: bool = True
    #: batch sizes run once at start-up (kernel set-up costs the first call of each shape)
    warmup_batch_sizes: tuple[int, ...] = (1, 2, 4)
    workers: int = 1
    log_level: str = "info"
    #: WebSocket ``/stream``: open streams at once (beyond: closed with 1013)
    max_streams: int = 8
    #: a stream that sends nothing for this many seconds is closed (1008 ``idle``)
    stream_idle_s: float = 30.0
    #: largest frame a stream may send, in bytes (1009 beyond it)
    stream_max_frame_bytes: int = 1024 * 1024
    #: audio a stream may send ahead of real time, in seconds, and how much faster than real
    #: time it may send beyond that (1008 ``too_fast``): a live source, not an upload
    stream_burst_s: float = 30.0
    stream_max_speed: float = 1.5
    #: SQLite event store (``tympan/live/store.py``) every /stream session writes its closed
    #: events to, each named by its stream; created if missing; None: no store
    store: str | None = None
    #: alert rules and sinks (TOML, ``tympan listen --alerts``' format) for the events of every
    #: /stream session; its ``[drift]`` table runs the drift check per stream; None: no alerts
    alerts: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if self.max_body_bytes <= 0:
            problems.append("max_body_bytes must be positive")
        if self.max_audio_seconds <= 0:
            problems.append("max_audio_seconds must be positive")
        if self.max_batch_size < 1:
            problems.append("max_batch_size must be >= 1")
        if self.max_wait_ms < 0:
            problems.append("max_wait_ms must be >= 0")
        if self.backend not in BACKENDS:
            problems.append(f"backend must be one of {', '.join(BACKENDS)}")
        if self.torch_threads is not None and self.torch_threads < 1:
            problems.append("torch_threads must be >= 1")
        if self.passes is not None and self.passes < 1:
            problems.append("passes must be >= 1")
        if self.max_in_flight < 1:
            problems.append("max_in_flight must be >= 1")
        if self.max_inflight_body_bytes is not None and self.max_inflight_body_bytes < self.max_body_bytes:
            problems.append("max_inflight_body_bytes must be >= max_body_bytes")
        if min(self.read_timeout_s, self.body_timeout_s, self.keep_alive_timeout_s) <= 0:
            problems.append("read_timeout_s, body_timeout_s and keep_alive_timeout_s must be positive")
        if self.max_samples_per_byte <= 0 or self.min_decode_samples < 1:
            problems.append("max_samples_per_byte and min_decode_samples must be positive")
        if not 0 <= self.small_body_share < 1:
            problems.append("small_body_share must be in [0, 1)")
        if self.max_connections_per_client < 1 or (self.max_connections is not None and self.max_connections < 1):
            problems.append("max_connections and max_connections_per_client must be >= 1")
        if self.max_explain_in_flight < 1:
            problems.append("max_explain_in_flight must be >= 1")
        if self.inline_max_seconds < 0:
            problems.append("inline_max_seconds must be >= 0")
        if self.max_streams < 1 or self.stream_max_frame_bytes < 1:
            problems.append("max_streams and stream_max_frame_bytes must be >= 1")
        if min(self.stream_idle_s, self.stream_max_speed) <= 0 or self.stream_burst_s < 0:
            problems.append("stream_idle_s and stream_max_speed must be positive, stream_burst_s >= 0")
        if self.decode_threads < 1 or self.workers < 1:
            problems.append("decode_threads and workers must be >= 1")
        if problems:
            raise ValueError("invalid server settings: " + "; ".join(problems))

    @property
    def inflight_body_budget(self) -> int:
        """Bytes of request bodies all requests may hold at once (``max_inflight_body_bytes``)."""
        return self.max_inflight_body_bytes or 4 * self.max_body_bytes

    @property
    def connection_limit(self) -> int:
        """Open connections in all (``max_connections``, else 1024 or half the fd limit)."""
        if self.max_connections is not None:
            return self.max_connections
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):
            return 1024
        return 1024 if soft in (-1, resource.RLIM_INFINITY) else max(16, min(1024, soft // 2))

    def inline_work(self, sample_rate: int) -> int:
        """Most samples (decoded or resampled) a request may cost on the event loop's thread."""
        return int(self.inline_max_seconds * sample_rate)

    def decode_budget(self, n_bytes: int) -> int:
        """Most samples (frames x channels) an upload of ``n_bytes`` may decode to."""
        return max(int(self.max_samples_per_byte * n_bytes), self.min_decode_samples)

    @property
    def threads(self) -> int:
        """torch (and ONNX Runtime) threads per forward pass: the setting, else 1. Measured on 2
        cores: one thread per pass costs about half the CPU of two (5.4 vs 9.5 ms per 5-s clip for
        front end + ONNX network), and ``concurrent_passes`` puts the other cores to work."""
        return self.torch_threads or 1

    @property
    def concurrent_passes(self) -> int:
        """Forward passes at once: the setting, else as many ``threads``-thread passes as cores."""
        return self.passes or max(1, _cores() // self.workers // self.threads)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``TYMPAN_*`` variables, then ``overrides`` (None = keep)."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(f"TYMPAN_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, raw)
        if env.get("TYMPAN_CORS_ORIGINS"):
            values["cors_origins"] = tuple(o.strip() for o in env["TYMPAN_CORS_ORIGINS"].split(",") if o.strip())
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _parse(name: str, raw: str) -> Any:
    default = {f.name: f for f in dataclasses.fields(Settings)}[name].default
    try:
        if name in ("api_key", "device", "log_level", "instance_token", "backend", "store", "alerts"):
            return raw
        if name in ("torch_threads", "max_inflight_body_bytes", "passes", "max_connections"):
            return int(raw)
        if name == "warmup_batch_sizes":
            return tuple(int(v) for v in raw.split(",") if v.strip())
        if name == "cors_origins":
            return tuple(o.strip() for o in raw.split(",") if o.strip())
        if isinstance(default, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"TYMPAN_{name.upper()}={raw!r} is not a valid value") from None
    return raw
