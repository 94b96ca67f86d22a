"""Micro-batching: concurrent requests share one forward pass (like Triton's dynamic batcher).

Requests put their prepared windows on an asyncio queue and await a future. One loop takes
the first waiting request, then gathers more until ``max_batch_size`` windows are collected or
``max_wait_ms`` has passed since the first, and hands the lot to a single inference thread.
While that thread runs, new requests queue up and form the next batch, so under load batches
grow by themselves and at low load a request waits at most ``max_wait_ms`` (and not at all when
no other request is being decoded, given an ``incoming`` counter). The event loop never runs
the model.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from tympan.inference import Predictor, Prepared
from tympan.serving.metrics import Metrics

log = logging.getLogger("tympan.serving")


@dataclass
class _Item:
    prepared: Prepared
    future: asyncio.Future = field(repr=False)

    @property
    def size(self) -> int:
        return int(self.prepared.windows.shape[0])


class MicroBatcher:
    """Gathers requests' windows into batches for :meth:`Predictor.logits_many`."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 2.0,
        metrics: Metrics | None = None,
        torch_threads: int | None = None,
        incoming: Callable[[], int] | None = None,
    ) -> None:
        self.predictor = predictor
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.metrics = metrics
        self.torch_threads = torch_threads
        #: how many requests are on their way (being decoded); with none, waiting is pointless
        self.incoming = incoming
        self._task: asyncio.Task | None = None
        # one thread owns the model: forward passes never overlap and never touch the event loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tympan-infer",
                                            initializer=self._init_thread)
        self.batches = 0

    def _init_thread(self) -> None:
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self._executor

    async def start(self) -> None:
        self._items: collections.deque[_Item] = collections.deque()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="tympan-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for item in list(getattr(self, "_items", ())):
            if not item.future.done():
                item.future.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def depth(self) -> int:
        return len(getattr(self, "_items", ()))

    async def submit(self, prepared: Prepared) -> np.ndarray:
        """Logits ``(n_windows, n_classes)`` of one request, computed in a shared batch."""
        if self._task is None or self._task.done():
            raise RuntimeError("batcher is not running")
        fut = asyncio.get_running_loop().create_future()
        self._items.append(_Item(prepared, fut))
        self._wake.set()
        if self.metrics:
            self.metrics.queue.set(len(self._items))
        return await fut

    async def _next(self, timeout: float | None) -> _Item | None:
        """The oldest waiting request, waiting up to ``timeout`` s (None: for ever)."""
        # a deque plus an Event instead of asyncio.Queue + wait_for: on Python 3.11,
        # wait_for(queue.get()) can drop an item when the timeout and the put coincide
        while not self._items:
            if timeout is not None and timeout <= 0:
                return None
            self._wake.clear()
            try:
                if timeout is None:
                    await self._wake.wait()
                else:
                    await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return None
            timeout = None if timeout is None else 0.0 if not self._items else timeout
        return self._items.popleft()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            assert first is not None
            batch, total = [first], first.size
            deadline = loop.time() + self.max_wait
            while total < self.max_batch_size:
                if not self._items and self.incoming is not None and self.incoming() == 0:
                    break  # nobody else is coming: do not make this request wait
                if self._items and total + self._items[0].size > self.max_batch_size:
                    break  # the next request starts the next batch; a batch never overshoots
                item = await self._next(max(0.0, deadline - loop.time()))
                if item is None:
                    break
                if total + item.size > self.max_batch_size:
                    self._items.appendleft(item)
                    break
                batch.append(item)
                total += item.size
            batch = [b for b in batch if not b.future.done()]  # clients that went away
            if not batch:
                continue
            total = sum(b.size for b in batch)
            if self.metrics:
                self.metrics.queue.set(len(self._items))
            try:
                start = time.perf_counter()
                results = await loop.run_in_executor(
                    self._executor, self.predictor.logits_many, [b.prepared for b in batch])
                if self.metrics:
                    self.metrics.inference.observe(time.perf_counter() - start)
                    self.metrics.batch_requests.observe(len(batch))
                    self.metrics.batch_windows.observe(total)
                self.batches += 1
            except asyncio.CancelledError:
                for b in batch:
                    if not b.future.done():
                        b.future.cancel()
                raise
            except Exception as exc:  # a bug: every waiter gets it (and a 500), the loop lives on
                log.exception("inference failed for a batch of %d requests", len(batch))
                for b in batch:
                    if not b.future.done():
                        b.future.set_exception(exc)
                continue
            for b, z in zip(batch, results, strict=True):
                if not b.future.done():
                    b.future.set_result(z)
