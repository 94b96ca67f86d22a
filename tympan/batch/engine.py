"""The batch engine: recordings in, per-file window logits out, as files finish.

Each recording is decoded as a stream (:func:`tympan.audio.iter_audio_blocks`) and cut into
model windows (:func:`tympan.batch.stream.iter_window_batches`); nothing holds more than a
block and a batch of windows, whatever the length. With ``jobs == 1`` everything runs here,
windows through :meth:`tympan.inference.Predictor.forward` (bundle front end + network). With
``jobs > 1``, worker processes decode and compute the bundle's front end
(:class:`tympan.features.LogMel` from the bundle's ``FrontendConfig``), and this process
batches their features, across files, through :meth:`Predictor.forward_features`: the same
two steps :meth:`Predictor.forward` chains, so the logits are the same.

A file that cannot be decoded gives a failed :class:`FileResult` with the reason; the run goes
on. Results come back in the order files finish.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import queue
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from tympan.audio import StreamInfo, iter_audio_blocks
from tympan.batch.sources import Source
from tympan import warnlog
from tympan.batch.stream import default_hop, iter_window_batches

__all__ = ["BatchOptions", "FileResult", "run_batch"]


@dataclass(frozen=True)
class BatchOptions:
    hop_s: float | None = None  # window step in seconds; None = the model's 50 % overlap
    jobs: int = 1  # worker processes for decoding and features (1 = all in this process)
    batch: int = 8  # windows per forward pass: as fast as 16-64 for mn04 on CPU, and less peak memory
    block_seconds: float = 30.0  # decoder block
    with_embeddings: bool = False
    #: acoustic descriptors (diagnose): files up to this long are measured whole, longer ones
    #: on ``acoustic_quota[i]`` evenly spread windows
    whole_seconds: float = 60.0


@dataclass
class FileResult:
    index: int
    source: Source
    ok: bool
    error: str | None = None
    info: StreamInfo | None = None
    start_time: datetime | None = None
    start_time_source: str | None = None
    sample_rate: int = 0
    clip_seconds: float = 0.0
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # samples at sample_rate
    logits: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    embeddings: np.ndarray | None = None
    levels: np.ndarray | None = None  # (n_windows, 3) tympan.stats.background.level_features
    #: (window index, descriptor values in tympan.stats.acoustic.FEATURE_NAMES order); -1 = whole file
    acoustic: list[tuple[int, list[float]]] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def duration_s(self) -> float:
        return 0.0 if self.info is None else float(self.info.source_duration)

    @property
    def n_windows(self) -> int:
        return int(len(self.starts))

    @property
    def starts_s(self) -> np.ndarray:
        return np.asarray(self.starts, np.float64) / self.sample_rate

    @property
    def ends_s(self) -> np.ndarray:
        return np.minimum(self.starts_s + self.clip_seconds, self.duration_s)

    @property
    def warnings(self) -> list[str]:
        return [] if self.info is None else list(self.info.warnings)


@dataclass(frozen=True)
class _Config:
    """What a worker needs (picklable)."""

    frontend: dict[str, Any]
    sample_rate: int
    n_samples: int
    hop: int
    batch: int
    block_seconds: float
    whole_seconds: float


def _config(predictor: Any, options: BatchOptions) -> _Config:
    cfg = predictor.config
    n = int(cfg.clip_samples)
    hop = default_hop(n) if options.hop_s is None else int(round(options.hop_s * cfg.sample_rate))
    if hop <= 0:
        raise ValueError("--hop must be positive")
    return _Config(cfg.to_dict(), int(cfg.sample_rate), n, hop, max(1, int(options.batch)),
                   float(options.block_seconds), float(options.whole_seconds))


def _estimated_windows(info: StreamInfo, cfg: _Config) -> int | None:
    if info.declared_frames is None:
        return None
    total = int(round(info.declared_frames * cfg.sample_rate / info.source_sample_rate))
    if total <= cfg.n_samples:
        return 1
    return (total - cfg.n_samples) // cfg.hop + 1 + (1 if (total - cfg.n_samples) % cfg.hop else 0)


def _stream_file(cfg: _Config, path: str, quota: int):
    """Generator: yields ``(starts, windows, levels)`` batches; returns the file's summary dict."""
    from tympan.recording_meta import read_recording_metadata
    from tympan.stats.scorers import level_features
    from tympan.stats.acoustic import FEATURE_NAMES, acoustic_features

    blocks = iter_audio_blocks(path, cfg.sample_rate, cfg.block_seconds)
    info = blocks.info
    start_time = source = None
    try:
        meta = read_recording_metadata(path)
        start_time, source = meta.start_time, meta.start_time_source
    except Exception:  # noqa: BLE001 - metadata is optional; the decoder names real problems
        pass
    dur = info.declared_duration
    whole = quota > 0 and dur is not None and dur <= cfg.whole_seconds
    kept: list[np.ndarray] = []
    picks: set[int] = set()
    if quota > 0 and not whole:
        est = _estimated_windows(info, cfg)
        picks = (set(np.linspace(0, est - 1, min(quota, est)).round().astype(int).tolist())
                 if est else set(range(quota)))

    def tee():
        for b in blocks:
            if whole:
                kept.append(b)
            yield b

    rows: list[tuple[int, list[float]]] = []
    done = 0
    for starts, wins in iter_window_batches(tee(), cfg.n_samples, cfg.hop, cfg.batch):
        for j in range(len(wins)):
            if done + j in picks:
                f = acoustic_features(wins[j], cfg.sample_rate, source_sr=info.source_sample_rate)
                rows.append((done + j, [f[k] for k in FEATURE_NAMES]))
        done += len(wins)
        yield starts, wins, level_features(wins, cfg.sample_rate)
    if whole and kept:
        y = np.concatenate(kept)
        f = acoustic_features(y, cfg.sample_rate, source_sr=info.source_sample_rate,
                              duration=info.source_duration)
        rows.append((-1, [f[k] for k in FEATURE_NAMES]))
    return {"info": info, "start_time": start_time, "start_time_source": source, "acoustic": rows}


def _failure(exc: BaseException) -> str:
    from tympan.errors import TympanError

    if isinstance(exc, TympanError | OSError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _local_messages(cfg: _Config, jobs: Sequence[tuple[int, str, int]],
                    frontend: Callable[[np.ndarray], Any] | None = None) -> Iterator[tuple]:
    """Decode (and with ``frontend``, featurise) the files in this process, in order."""
    for idx, path, quota in jobs:
        gen = _stream_file(cfg, path, quota)
        t0 = time.perf_counter()
        try:
            while True:
                try:
                    starts, wins, levels = next(gen)
                except StopIteration as stop:
                    yield ("done", idx, {**stop.value, "wall_s": time.perf_counter() - t0})
                    break
                yield ("batch", idx, starts, wins if frontend is None else frontend(wins), levels)
        except Exception as exc:  # noqa: BLE001 - an unreadable file never stops the run
            yield ("error", idx, _failure(exc))


def _prefetched(messages: Iterator[tuple], depth: int = 4) -> Iterator[tuple]:
    """``messages`` produced by a decode thread ``depth`` ahead: decoding and resampling (soxr,
    libsndfile) and the forward pass (ONNX Runtime) release the GIL, so they overlap on two
    cores. Same messages, same order; closing this generator stops the thread."""
    import threading

    out: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for msg in messages:
                if not put(msg):
                    break
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            put(("raise", exc))
        finally:
            close = getattr(messages, "close", None)
            if stop.is_set() and close is not None:
                close()
            put(end)

    thread = threading.Thread(target=produce, name="tympan-decode", daemon=True)
    thread.start()
    try:
        while True:
            msg = out.get()
            if msg is end:
                return
            if msg[0] == "raise":
                raise msg[1]
            yield msg
    finally:
        stop.set()
        thread.join(5)


def _worker(cfg: _Config, tasks: Any, results: Any) -> None:
    """Worker process: decode + the bundle's front end; features go back to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    import torch

    from tympan.features import FrontendConfig, LogMel

    torch.set_num_threads(1)
    warnlog.install()  # counted here, sent back with each finished file, printed once by the parent
    frontend = LogMel(FrontendConfig.from_dict(cfg.frontend)).eval()
    while True:
        job = tasks.get()
        if job is None:
            return
        idx, path, quota = job
        results.put(("start", idx, mp.current_process().pid))
        t0 = time.perf_counter()
        try:
            gen = _stream_file(cfg, path, quota)
            while True:
                try:
                    starts, wins, levels = next(gen)
                except StopIteration as stop:
                    results.put(("done", idx, {**stop.value, "wall_s": time.perf_counter() - t0,
                                               "lib_warnings": warnlog.drain()}))
                    break
                with torch.inference_mode():
                    feats = frontend(torch.from_numpy(wins)).numpy()
                results.put(("batch", idx, starts, feats, levels))
        except Exception as exc:  # noqa: BLE001 - an unreadable file never stops the run
            results.put(("error", idx, _failure(exc)))


def _worker_messages(cfg: _Config, jobs: Sequence[tuple[int, str, int]], n: int) -> Iterator[tuple]:
    ctx = mp.get_context("spawn")  # torch and OpenMP do not survive fork
    tasks, results = ctx.Queue(), ctx.Queue(maxsize=4 * n)
    for j in jobs:
        tasks.put(j)
    procs: list[Any] = []

    def spawn() -> None:
        p = ctx.Process(target=_worker, args=(cfg, tasks, results), daemon=True)
        p.start()
        procs.append(p)
        tasks.put(None)  # one stop sign per worker, after the jobs

    for _ in range(n):
        spawn()
    remaining = len(jobs)
    current: dict[int, int] = {}  # pid -> job index
    try:
        while remaining:
            try:
                msg = results.get(timeout=0.05)
            except queue.Empty:
                for p in list(procs):
                    if p.exitcode not in (None, 0):  # died (a decoder crash): fail its file, replace it
                        procs.remove(p)
                        idx = current.pop(p.pid, None)
                        if idx is not None:
                            remaining -= 1
                            yield ("error", idx, f"the worker process died (exit code {p.exitcode}) "
                                                 "while decoding this file")
                        if remaining:
                            spawn()
                if not procs:
                    raise RuntimeError("all worker processes ended before the work was done")
                yield ("idle",)
                continue
            if msg[0] == "start":
                current[msg[2]] = msg[1]
                continue
            if msg[0] in ("done", "error"):
                remaining -= 1
                current = {pid: i for pid, i in current.items() if i != msg[1]}
            yield msg
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
        tasks.cancel_join_thread()
        results.cancel_join_thread()


@dataclass
class _Acc:
    starts: list[np.ndarray] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    levels: list[np.ndarray] = field(default_factory=list)


def run_batch(
    predictor: Any,
    sources: Sequence[Source],
    options: BatchOptions | None = None,
    *,
    acoustic_quota: Sequence[int] | None = None,
    skip: set[int] | None = None,
) -> Iterator[FileResult]:
    """Analyse ``sources``; yield one :class:`FileResult` per file as each finishes.

    ``acoustic_quota[i]``: how many windows of file ``i`` get acoustic descriptors (0: none;
    files up to ``options.whole_seconds`` are measured whole instead). ``skip``: indices not
    to analyse (resume).
    """
    import torch

    options = options or BatchOptions()
    cfg = _config(predictor, options)
    quota = list(acoustic_quota) if acoustic_quota is not None else [0] * len(sources)
    jobs = [(i, str(s.path), int(quota[i])) for i, s in enumerate(sources) if not skip or i not in skip]
    if not jobs:
        return
    workers = max(1, int(options.jobs)) > 1 and len(jobs) > 0
    # on a CPU the decode thread also computes the log-mels, so the front end of the next batch
    # overlaps the network's pass on this one (both release the GIL); a GPU keeps them together
    featurise = workers or str(getattr(predictor, "device", "cpu")).startswith("cpu")
    if workers:
        messages = _worker_messages(cfg, jobs, min(int(options.jobs), len(jobs)))
    else:
        def frontend(wins: np.ndarray) -> Any:
            with torch.inference_mode():
                return predictor.features(wins)

        messages = _prefetched(_local_messages(cfg, jobs, frontend if featurise else None))
    acc: dict[int, _Acc] = {}
    pending: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    keep_embeddings = bool(options.with_embeddings or getattr(predictor.params, "needs_embeddings", False))
    waiting: list[tuple[int, dict]] = []

    def flush() -> None:
        if not pending:
            return
        parts = [p[2] for p in pending]
        if featurise:
            e, z = predictor.forward_features(torch.cat([torch.as_tensor(f) for f in parts]))
        else:
            e, z = predictor.forward(np.concatenate(parts))
        lo = 0
        for idx, starts, part, levels in pending:
            a = acc.setdefault(idx, _Acc())
            hi = lo + len(part)
            a.starts.append(starts)
            a.logits.append(z[lo:hi])
            a.levels.append(levels)
            if keep_embeddings:
                a.embeddings.append(e[lo:hi])
            lo = hi
        pending.clear()

    def result(idx: int, summary: dict) -> FileResult:
        a = acc.pop(idx, _Acc())
        k = int(predictor.n_classes)
        return FileResult(
            idx, sources[idx], True, None, summary["info"], summary["start_time"], summary["start_time_source"],
            cfg.sample_rate, float(predictor.config.clip_seconds),
            np.concatenate(a.starts) if a.starts else np.zeros(0, np.int64),
            np.concatenate(a.logits) if a.logits else np.zeros((0, k), np.float32),
            np.concatenate(a.embeddings) if a.embeddings else None,
            np.concatenate(a.levels) if a.levels else None,
            summary["acoustic"], float(summary.get("wall_s", 0.0)))

    try:
        for msg in messages:
            kind = msg[0]
            if kind == "batch":
                pending.append((msg[1], msg[2], msg[3], msg[4]))
                if sum(len(p[2]) for p in pending) >= cfg.batch:
                    flush()
            elif kind == "done":
                warnlog.merge(msg[2].pop("lib_warnings", None))
                waiting.append((msg[1], msg[2]))
                if len(waiting) >= cfg.batch:
                    flush()
            elif kind == "error":
                pending[:] = [p for p in pending if p[0] != msg[1]]
                acc.pop(msg[1], None)
                yield FileResult(msg[1], sources[msg[1]], False, msg[2], sample_rate=cfg.sample_rate,
                                 clip_seconds=float(predictor.config.clip_seconds))
            elif kind == "idle":
                flush()
            if waiting:
                busy = {p[0] for p in pending}
                ready = [w for w in waiting if w[0] not in busy]
                if ready:
                    waiting[:] = [w for w in waiting if w[0] in busy]
                    for idx, summary in ready:
                        yield result(idx, summary)
        flush()
        for idx, summary in waiting:
            yield result(idx, summary)
    finally:
        close = getattr(messages, "close", None)
        if close is not None:
            close()


def acoustic_quotas(sources: Sequence[Source], sample: int, durations: Sequence[float | None]) -> list[int]:
    """Spread ``sample`` acoustic measurements evenly over files (and over a long file's windows).

    With more files than ``sample``, ``sample`` evenly spaced files get one each; otherwise
    every file gets a share proportional to its length (at least one).
    """
    n = len(sources)
    if n == 0 or sample <= 0:
        return [0] * n
    if n >= sample:
        picks = set(np.linspace(0, n - 1, sample).round().astype(int).tolist())
        return [1 if i in picks else 0 for i in range(n)]
    d = np.asarray([x if x and x > 0 else 1.0 for x in durations], np.float64)
    share = d / d.sum() * sample
    return [max(1, int(math.floor(s))) for s in share]
