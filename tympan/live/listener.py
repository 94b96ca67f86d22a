"""The live listener: blocks of a source -> model windows as they fill -> the one prediction
path -> the one event definition; events go to the callers and the alert rules when they are
confirmed (``on_open``: opened and lasted their minimum duration) and, with their final figures,
to the store, the callers and the alerts again when they close.

A reader thread pulls the source into a queue; the classifying loop takes every window that
has filled and runs them through :meth:`tympan.inference.Predictor.forward` in one pass (so a
loop that fell behind catches up in bigger batches). When the queue holds more than
``max_lag_s`` of audio (the CPU cannot keep up with a live source), the oldest audio is dropped
and counted in windows (``dropped_windows``), never silently; ``lag_s`` reports how far
behind the loop is. At the end of the source (or on Ctrl-C / SIGTERM) the last windows are
classified and open events are closed and stored: no event is lost.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from tympan.audio import fit_length
from tympan.batch.stream import default_hop
from tympan.contracts.events import Event, Window
from tympan.inference.events import EventConfig, EventDetector, window_scores
from tympan.live.sources import Block
from tympan.stats.scorers import level_features

__all__ = ["ListenStats", "Listener", "WindowInfo"]


@dataclass
class ListenStats:
    windows: int = 0
    dropped_windows: int = 0
    events: int = 0
    audio_s: float = 0.0
    lag_s: float = 0.0  # audio waiting in the queue when the last window was classified
    max_lag_s: float = 0.0
    gaps: int = 0  # jumps in the stream (reconnects, drops)


#: a window's prediction and trust flags (the contract: :class:`tympan.contracts.events.Window`)
WindowInfo = Window


class _Windower:
    """Model windows from blocks with stream sample indices: regular starts every hop; a gap
    restarts the grid at the first sample after it; at the end, as the batch engine cuts them
    (the last window aligned to the end, a stream shorter than a window zero-padded)."""

    def __init__(self, n: int, hop: int) -> None:
        self.n, self.hop = n, hop
        self.buf = np.zeros(0, np.float32)
        self.buf_start = 0
        self.next = 0
        self.last = -1  # start of the last window cut
        self.seg_start = 0  # where the stream (re)started: after a gap, a new grid

    def add(self, start: int, block: np.ndarray) -> tuple[list[int], list[np.ndarray], int]:
        """Windows that filled; and the samples skipped by a gap before this block."""
        skipped = 0
        end = self.buf_start + len(self.buf)
        if start != end:
            skipped = max(0, start - end)
            self.buf, self.buf_start, self.next, self.seg_start = np.zeros(0, np.float32), start, start, start
        self.buf = block if not len(self.buf) else np.concatenate([self.buf, block])
        starts, wins = [], []
        while self.next + self.n <= self.buf_start + len(self.buf):
            o = self.next - self.buf_start
            starts.append(self.next)
            wins.append(self.buf[o : o + self.n].copy())
            self.last = self.next
            self.next += self.hop
        keep = min(self.next, self.buf_start + len(self.buf) - self.n)
        if keep > self.buf_start:
            self.buf = self.buf[keep - self.buf_start :]
            self.buf_start = keep
        return starts, wins, skipped

    def finish(self) -> tuple[list[int], list[np.ndarray]]:
        end = self.buf_start + len(self.buf)
        if not len(self.buf):
            return [], []
        if self.last < self.seg_start:  # no window since the stream (re)started: one padded window
            return [self.buf_start], [fit_length(self.buf, self.n)]
        if self.last + self.n < end:
            s = end - self.n
            return [s], [self.buf[s - self.buf_start :].copy()]
        return [], []


class Listener:
    """Classify a live source window by window; events out as they close."""

    def __init__(self, predictor: Any, config: EventConfig | None = None, *, hop_s: float | None = None,
                 source: str = "stream", store: Any = None, store_windows: bool = False,
                 on_event: Callable[[Event], None] | None = None,
                 on_window: Callable[[WindowInfo, ListenStats], None] | None = None,
                 start_time: datetime | None = None, max_lag_s: float = 30.0, drop: bool = True,
                 max_batch: int = 32, alerts: Any = None, keep_audio_s: float = 0.0,
                 keep_events: bool = True, drift: Any = None,
                 on_drift: Callable[[Any], None] | None = None,
                 on_open: Callable[[Event], None] | None = None) -> None:
        self.predictor = predictor
        self.sr = int(predictor.config.sample_rate)
        self.n = int(predictor.config.clip_samples)
        self.hop = default_hop(self.n) if hop_s is None else max(1, int(round(hop_s * self.sr)))
        self.source = source
        self.start_time = start_time
        self.detector = EventDetector(predictor.classes, config, hop_s=self.hop / self.sr, source=source,
                                      start_time=start_time, on_open=self._opened)
        self.store, self.store_windows = store, store_windows
        self.on_event, self.on_window, self.on_open = on_event, on_window, on_open
        self.max_lag_s, self.drop, self.max_batch = float(max_lag_s), bool(drop), int(max_batch)
        self.stats = ListenStats()
        #: the events so far (``keep_events=False``: not kept, for streams that never end)
        self.events: list[Event] = []
        self.keep_events = bool(keep_events)
        #: the sliding-window check (:class:`tympan.live.drift.DriftMonitor`); a change of its
        #: verdict goes to ``on_drift`` and, when affected, to the alert sinks
        self.drift, self.on_drift = drift, on_drift
        self.interrupted = False
        self.wall_s = 0.0
        #: alert rules and sinks (:class:`tympan.live.alerts.AlertManager`), handed each closed event
        self.alerts = alerts
        #: the last ``keep_audio_s`` of audio, for the clips of alerts
        self.keep = int(keep_audio_s * self.sr)
        self._ring: deque[tuple[int, np.ndarray]] = deque()
        self._ring_n = 0

    # ------------------------------------------------------------------ classify
    def _emit(self, events: list[Event]) -> None:
        for e in events:
            self.stats.events += 1
            if self.keep_events:
                self.events.append(e)
            if self.store is not None:
                self.store.add_event(e)
            if self.on_event is not None:
                self.on_event(e)
            if self.alerts is not None:
                self.alerts.handle(e, self.audio_between, self.sr)

    def _opened(self, e: Event) -> None:
        """A confirmed event (the detector's ``on_open``, during the push of its window)."""
        if self.on_open is not None:
            self.on_open(e)
        if self.alerts is not None:
            self.alerts.handle_open(e)

    def _drift(self, status: Any) -> None:
        if status is None:
            return
        if status.affected and self.alerts is not None:
            self.alerts.model_affected(status, self.source)
        if self.on_drift is not None:
            self.on_drift(status)

    def _remember(self, pos: int, block: np.ndarray) -> None:
        if self.keep <= 0:
            return
        self._ring.append((pos, block))
        self._ring_n += len(block)
        while self._ring and self._ring_n - len(self._ring[0][1]) >= self.keep:
            self._ring_n -= len(self._ring.popleft()[1])

    def audio_between(self, a_s: float, b_s: float) -> np.ndarray | None:
        """The kept audio between two stream times (what is left of it), None when none is."""
        a, b = int(a_s * self.sr), int(b_s * self.sr)
        parts = [blk[max(0, a - p) : max(0, b - p)] for p, blk in self._ring if p < b and p + len(blk) > a]
        return np.concatenate(parts) if parts else None

    def classify(self, starts: list[int], wins: list[np.ndarray]) -> None:
        """One forward pass over filled windows, then the event detector, window by window."""
        if not wins:
            return
        x = np.stack(wins)
        emb, logits = self.predictor.forward(x)
        sc = window_scores(logits, self.predictor.params, embeddings=emb, levels=level_features(x, self.sr))
        rows = []
        for i, s in enumerate(starts):
            a = s / self.sr
            b = a + self.n / self.sr
            if self.stats.audio_s > a:  # a zero-padded last window ends with the audio
                b = min(b, self.stats.audio_s)
            self._emit(self.detector.push(a, b, sc.probabilities[i], **sc.flags(i)))
            self.stats.windows += 1
            if self.drift is not None:
                self._drift(self.drift.add(a, sc.probabilities[i], bool(sc.ood[i]), bool(sc.background[i])))
            if self.on_window is not None or self.store_windows:
                k = int(sc.probabilities[i].argmax())
                when = None if self.start_time is None else (self.start_time + timedelta(seconds=a)).isoformat()
                w = Window(start_s=round(a, 3), end_s=round(b, 3), label=self.predictor.classes[k],
                           probability=round(float(sc.probabilities[i, k]), 4), ood_score=round(float(sc.ood_score[i]), 4),
                           out_of_distribution=bool(sc.ood[i]), background=bool(sc.background[i]),
                           uncertain=bool(sc.uncertain[i]), start_time=when)
                if self.on_window is not None:
                    self.on_window(w, self.stats)
                rows.append((self.source, w.start_s, w.end_s, w.label, w.probability, w.ood_score,
                             int(w.out_of_distribution), int(w.background), int(w.uncertain), w.start_time))
        if rows and self.store is not None and self.store_windows:
            self.store.add_windows(rows)
        if self.alerts is not None:
            self.alerts.tick(self.stats.audio_s, self.audio_between, self.sr, source=self.source)

    # ------------------------------------------------------------------ run
    def run(self, blocks: Iterable[Block], *, stop: threading.Event | None = None) -> ListenStats:
        """Read ``blocks`` (in a thread) and classify until they end, ``stop`` is set or Ctrl-C."""
        q: queue.Queue = queue.Queue()
        queued = [0]  # samples waiting
        lock = threading.Lock()
        errors: list[BaseException] = []
        stop = stop or threading.Event()
        room = threading.Semaphore(256)  # without dropping, the reader waits for the loop

        def read() -> None:
            try:
                for item in blocks:
                    if stop.is_set():
                        break
                    if not self.drop:
                        while not room.acquire(timeout=0.2):
                            if stop.is_set():
                                return
                    with lock:
                        queued[0] += len(item[1])
                    q.put(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, raised there
                errors.append(exc)
            finally:
                q.put(None)

        reader = threading.Thread(target=read, daemon=True, name="tympan-listen-reader")
        reader.start()
        self.begin()
        try:
            while True:
                item = q.get()
                if item is None:
                    break
                if not self.drop:
                    room.release()
                with lock:
                    queued[0] -= len(item[1])
                    backlog = queued[0] / self.sr
                self.feed(*item, backlog=backlog)
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            stop.set()
            self.end()
        if errors:
            raise errors[0]
        return self.stats

    # ------------------------------------------------------------------ push interface
    def begin(self) -> None:
        """Start a stream fed by :meth:`feed` (what :meth:`run` does with its reader's blocks)."""
        self._win = _Windower(self.n, self.hop)
        self._t0 = time.perf_counter()

    def feed(self, pos: int, block: np.ndarray, *, backlog: float = 0.0) -> None:
        """One block at stream sample ``pos``: classify every window it fills (events and
        windows go to the callbacks). ``backlog``: seconds of audio still waiting behind it."""
        if self.drop and backlog > self.max_lag_s:
            # behind a live source: drop this block (its windows are counted), keep the newest
            self.stats.dropped_windows += max(1, math.ceil(len(block) / self.hop))
            self.stats.audio_s = (pos + len(block)) / self.sr
            return
        starts, wins, skipped = self._win.add(pos, block)
        self._remember(pos, block)
        if skipped:
            self.stats.gaps += 1
        self.stats.audio_s = (pos + len(block)) / self.sr
        self.stats.lag_s = backlog
        self.stats.max_lag_s = max(self.stats.max_lag_s, backlog)
        for lo in range(0, len(wins), self.max_batch):
            self.classify(starts[lo : lo + self.max_batch], wins[lo : lo + self.max_batch])

    def end(self) -> None:
        """The last windows, then every open event closed (no event is lost)."""
        s, w = self._win.finish()
        self.classify(s, w)
        self._emit(self.detector.flush())
        self.wall_s = time.perf_counter() - self._t0
