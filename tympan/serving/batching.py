"""Micro-batching: concurrent requests share one forward pass, without waiting when alone.

A request's worker thread (the one that decoded it) puts its windows on a queue and, if no
forward pass is running, runs one itself over everything queued (up to ``max_batch_size``
windows, its own first in line): flat combining. So a lone request goes decode -> front end ->
network -> response in the thread it was decoded in, with no hand-over and no wait; under load,
requests that arrive while a pass runs queue up and the next pass takes them together, so
batches grow by themselves. A request whose pass is run by another thread waits on a future
(``submit``), not on a thread.

``max_wait_ms`` > 0 lets a pass that is not full wait that long for requests that are being
decoded right now (``incoming``); with nothing on its way it never waits. On a CPU, a batch
costs about as much per window as single windows do, so the default is not to wait; a GPU
gains from bigger batches (the Modal app waits a few ms).

After a thread's own request is answered it stops combining: what is still queued is handed to
the batcher's own inference thread(s), so no request pays for a long queue behind it. With a
compiled copy of the network (ONNX Runtime, TorchScript: thread-safe, separate from the eager
model) up to ``passes`` threads run passes at once, e.g. two one-thread passes on two cores; an
eager model runs one pass at a time (``explain``'s hooks share it). The event loop's thread runs
a pass only for a short request that found the server idle (``Settings.inline_max_seconds``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from tympan.inference import Predictor, Prepared
from tympan.serving.metrics import Metrics

log = logging.getLogger("tympan.serving")


@dataclass
class _Item:
    prepared: Prepared
    future: Future = field(default_factory=Future, repr=False)

    @property
    def size(self) -> int:
        return int(self.prepared.windows.shape[0])


class MicroBatcher:
    """Gathers requests' windows into batches for :meth:`Predictor.forward_many`."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 0.0,
        metrics: Metrics | None = None,
        torch_threads: int | None = None,
        incoming: Callable[[], int] | None = None,
        passes: int = 1,
    ) -> None:
        self.predictor = predictor
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.metrics = metrics
        self.torch_threads = torch_threads
        #: how many requests are on their way (being decoded); with none, waiting is pointless
        self.incoming = incoming
        self._items: collections.deque[_Item] = collections.deque()
        self._arrived = threading.Condition()
        #: forward passes that may run at once (threads combining now); 1 for an eager model
        self.passes = max(1, int(passes)) if predictor.fast_model is not None else 1
        self._combiner = threading.BoundedSemaphore(self.passes)
        self._gathering = 0  # passes waiting (max_wait) for requests being decoded
        self._running_passes = 0  # threads combining now (read by ``idle``)
        self._running = False
        # runs what a combining thread leaves queued, and explain (hooks need the eager model)
        self._executor = ThreadPoolExecutor(max_workers=self.passes, thread_name_prefix="tympan-infer",
                                            initializer=self._init_thread)
        self.batches = 0

    def _init_thread(self) -> None:
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self._executor

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False
        while self._items:
            item = self._items.popleft()
            item.future.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return len(self._items)

    @property
    def idle(self) -> bool:
        """Nothing queued and no forward pass running (a snapshot: for the inline fast path)."""
        return not self._items and self._running_passes == 0

    # ------------------------------------------------------------------- request side
    def enqueue(self, prepared: Prepared) -> Future:
        """Queue one request and run passes if none is running (call from a worker thread).

        Returns a future of ``(embeddings, logits)``: already done when this thread ran the
        pass that answered it, the common case when the server is not saturated.
        """
        if not self._running:
            raise RuntimeError("batcher is not running")
        item = _Item(prepared)
        self._items.append(item)
        if self.metrics:
            self.metrics.queue.set(len(self._items))
        if self.max_wait:
            with self._arrived:
                self._arrived.notify_all()
                gathering = self._gathering
            if gathering:  # a pass is waiting for requests like this one: join it
                return item.future
        self._combine(until=item)
        return item.future

    def run(self, prepared: Prepared) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings, logits)`` of one request, blocking this (worker) thread until done."""
        return self.enqueue(prepared).result()

    async def submit(self, prepared: Prepared) -> np.ndarray:
        """Logits ``(n_windows, n_classes)`` of one request (from the event loop: one thread hop)."""
        loop = asyncio.get_running_loop()
        fut = await loop.run_in_executor(self._executor, self.enqueue, prepared)
        return (await asyncio.wrap_future(fut))[1]

    # ------------------------------------------------------------------- passes
    def _combine(self, until: _Item | None) -> None:
        """Run passes over the queue while no other thread does; stop once ``until`` is answered
        (None: until the queue is empty), then hand what is left to the inference thread."""
        while self._items and self._combiner.acquire(blocking=False):
            self._running_passes += 1
            try:
                while self._items and not (until is not None and until.future.done()):
                    self._pass()
            finally:
                self._running_passes -= 1
                self._combiner.release()
            if until is not None and until.future.done():
                break  # the queue (if any) goes to the inference thread, checked below
        if self._items and until is not None and self._running:
            try:
                self._executor.submit(self._combine, None)
            except RuntimeError:  # shut down: stop() cancels what is queued
                pass

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        total = 0
        deadline = None
        while True:
            while self._items and (not batch or total + self._items[0].size <= self.max_batch_size):
                item = self._items.popleft()
                if item.future.done() or not item.future.set_running_or_notify_cancel():
                    continue  # cancelled: the client went away
                batch.append(item)
                total += item.size
            if not batch or total >= self.max_batch_size or self._items or not self.max_wait:
                return batch
            if self.incoming is None or self.incoming() == 0:
                return batch  # nobody else is coming: do not make this request wait
            deadline = deadline or time.monotonic() + self.max_wait
            left = deadline - time.monotonic()
            if left <= 0:
                return batch
            with self._arrived:
                if not self._items:
                    self._gathering += 1
                    try:
                        self._arrived.wait(left)
                    finally:
                        self._gathering -= 1

    def _pass(self) -> None:
        batch = self._take()
        if self.metrics:
            self.metrics.queue.set(len(self._items))
        if not batch:
            return
        try:
            start = time.perf_counter()
            results = self.predictor.forward_many([b.prepared for b in batch])
            if self.metrics:
                self.metrics.inference.observe(time.perf_counter() - start)
                self.metrics.batch_requests.observe(len(batch))
                self.metrics.batch_windows.observe(sum(b.size for b in batch))
            self.batches += 1
        except BaseException as exc:  # a bug: every waiter gets it (and a 500), the batcher lives on
            log.exception("inference failed for a batch of %d requests", len(batch))
            for b in batch:
                if not b.future.done():
                    b.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for b, r in zip(batch, results, strict=True):
            if not b.future.done():
                b.future.set_result(r)

