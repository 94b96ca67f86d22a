"""The FastAPI app: ``create_app(bundle_or_path, settings)`` implements ``docs/api.md``.

- The event loop never decodes or runs the model: uploads are decoded in a small thread pool,
  and a :class:`~tympan.serving.batching.MicroBatcher` gathers concurrent requests' windows
  into one forward pass on a single model thread.
- The model is loaded and warmed in the lifespan (in the background by default, so ``/health``
  answers at once and ``/ready`` turns 200 when it can serve).
- Every way a client can get it wrong is a 4xx with ``{"error": code, "detail": one line}``;
  a 500 means a bug in tympan (logged, counted in ``tympan_requests_total{status="500"}``).
- Pure-ASGI middlewares, outermost first: metrics, CORS (optional), bearer auth (optional),
  the explain gate (503 while ``max_explain_in_flight`` run, before the body is read), body-size
  limit and in-flight body budget (Content-Length and while reading, before the app sees a byte).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tympan import __version__
from tympan.audio import Header
from tympan.bundle import META_FILE, Bundle, default_bundle_dir, read_metadata
from tympan.errors import AudioError, AudioTooLongError, BundleError, NotAudioError
from tympan.inference import Predictor, Prepared
from tympan.recording_meta import audio_payload_size
from tympan.serving.batching import MicroBatcher
from tympan.serving.docs import ASSETS_URL, add_docs
from tympan.serving.metrics import Metrics
from tympan.serving.schemas import (
    DigitsInt,
    ErrorResponse,
    ExplainResponse,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    Status,
)
from tympan.serving.preload import Preloaded, build_predictor, warmup_sizes
from tympan.serving.settings import Settings
from tympan.serving.stream import router as stream_router
from tympan.serving.stream_outputs import StreamOutputs

log = logging.getLogger("tympan.serving")

ENDPOINTS = frozenset({"/", "/predict", "/predict/file", "/explain", "/explain/file", "/health",
                       "/ready", "/model", "/metrics", "/docs", "/redoc", "/openapi.json",
                       "/docs/oauth2-redirect"})
#: the ``method`` label of ``tympan_requests_total``: anything else is "other" (bounded series)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: reachable without the bearer token (probes and the API's own documentation)
OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"})
INTERNAL_ERROR = {"error": "internal_error", "detail": "internal server error (a bug in tympan; it has been logged)"}
DEFAULT_TOP_K = 3
ERROR_STATUS = {NotAudioError: 415, AudioTooLongError: 413}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing or wrong bearer token (only when TYMPAN_API_KEY is set)"},
    408: {"model": ErrorResponse, "description": "the request body stalled (`read_timeout`)"},
    413: {"model": ErrorResponse, "description": "body or recording too large (`body_too_large`, `audio_too_long`, "
          "`decode_budget_exceeded`)"},
    415: {"model": ErrorResponse, "description": "not audio / unsupported format (`not_audio`)"},
    422: {"model": ErrorResponse, "description": "invalid request or unusable audio (`invalid_request`, "
          "`invalid_base64`, `empty_audio`, `truncated_audio`, `non_finite_samples`, `bad_sample_rate`)"},
    503: {"model": ErrorResponse, "description": "model still loading (`not_ready`) or too many requests "
          "or request-body bytes in flight (`overloaded`); both with Retry-After"},
}


class _HandOver(Exception):
    """The header says this request is too long to run on the event loop: hand it to a worker."""


#: uploads larger than this never run inline (their decode time is not small whatever they hold)
INLINE_MAX_BYTES = 4 * 1024 * 1024


class RequestError(Exception):
    """A client error with its HTTP status and code."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def default_bundle_path() -> Path:
    """The shipped default bundle, ``tympan/assets/default`` (clear error when absent)."""
    path = default_bundle_dir()
    if not (path / META_FILE).is_file():
        raise BundleError(f"no shipped default model bundle ({path} has no bundle.json); pass --bundle DIR")
    return path


def decode_base64(text: str) -> bytes:
    """Base64 (standard or URL-safe, line-wrapped or not, optionally a data: URI) to bytes."""
    s = text.strip()
    if s.startswith("data:") and "," in s[:200]:
        s = s.split(",", 1)[1]
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        pass
    s = "".join(s.split())
    try:
        if "-" in s or "_" in s:
            s = s.translate(str.maketrans("-_", "+/"))
        s += "=" * (-len(s) % 4)
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, "invalid_base64", "audio_base64 is not valid base64") from None


# ----------------------------------------------------------------------------- middlewares
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


async def _send_json(send: Callable, status: int, body: dict[str, Any], headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


class MetricsMiddleware:
    """Counts every response by endpoint and status (500 for exceptions) and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics, instance: str | None = None) -> None:
        self.app, self.metrics = app, metrics
        self.instance = instance.encode("latin-1") if instance else b""

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        scope.setdefault("state", {})["t0"] = start
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status, started = 500, False

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
                if self.instance:
                    message = {**message, "headers": [*message.get("headers", []), (b"x-tympan-instance", self.instance)]}
            await send(message)

        self.metrics.active_requests += 1
        self.metrics.active.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:  # a bug in tympan: answer JSON here, so the connection survives
            log.exception("tympan: internal error on %s %s", scope.get("method"), path)
            if started:
                raise
            status = 500
            await _send_json(send_wrapper, 500, INTERNAL_ERROR)
        finally:
            self.metrics.active_requests -= 1
            self.metrics.active.dec()
            method = scope.get("method", "")
            self.metrics.requests.labels(endpoint, method if method in METHODS else "other", str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


class AuthMiddleware:
    """``Authorization: Bearer <TYMPAN_API_KEY>`` on everything but probes and docs."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS or scope.get("method") == "OPTIONS" \
                or scope.get("path", "").startswith(ASSETS_URL + "/"):
            return await self.app(scope, receive, send)
        auth = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            return await _send_json(send, 401, {"error": "unauthorized",
                                                "detail": "missing or wrong bearer token (Authorization: Bearer <key>)"},
                                    [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


class BodyBudget:
    """Bytes of request bodies held by all requests at once (admission control).

    The last ``reserve`` bytes (``small_body_share`` of the budget) go only to requests whose
    whole body stays within ``small`` (a quarter of the reserve): when large uploads hold the
    rest, small ones (a few seconds of audio) still get in.
    """

    def __init__(self, limit: int, gauge: Any = None, small_share: float = 0.0) -> None:
        self.limit, self.held, self.gauge = int(limit), 0, gauge
        self.reserve = int(self.limit * small_share)
        self.small = self.reserve // 4

    def take(self, n: int, size: int | None = None) -> bool:
        """Hold ``n`` more bytes for a request whose body will then hold ``size`` (default ``n``)."""
        cap = self.limit if (n if size is None else size) <= self.small else self.limit - self.reserve
        if self.held + n > cap:
            return False
        self._set(self.held + n)
        return True

    def give(self, n: int) -> None:
        self._set(self.held - n)

    def _set(self, held: int) -> None:
        self.held = held
        if self.gauge is not None:
            self.gauge.set(held)


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes: by Content-Length up front, and while reading.

    The body is read here (it would be buffered by the app anyway) and replayed to the app,
    so an oversized or lying upload never reaches a parser. Before a byte is read, the declared
    Content-Length is reserved in the shared :class:`BodyBudget` (503 ``overloaded`` with
    Retry-After when all requests' bodies would exceed it; admitted uploads are never refused
    half-way for room); chunked bodies take from it as they arrive. Each read waits at most
    ``read_timeout`` seconds and the whole body at most ``body_timeout``: a stalled upload gets
    408 ``read_timeout`` and its connection is closed. With ``pace``, a reservation must also be
    earned: after ``read_timeout`` the bytes received must keep up with a straight line to the
    whole Content-Length at ``body_timeout``, so a client that declares the maximum and trickles
    a byte now and then loses its reservation (408) seconds after the grace, not at the body
    timeout.
    """

    def __init__(self, app: ASGIApp, limit: int, budget: BodyBudget | None = None,
                 read_timeout: float | None = None, body_timeout: float | None = None,
                 metrics: Metrics | None = None, pace: bool = False) -> None:
        self.app, self.limit = app, int(limit)
        self.budget = budget or BodyBudget(4 * self.limit)
        self.read_timeout, self.body_timeout, self.metrics = read_timeout, body_timeout, metrics
        self.pace = pace and body_timeout is not None

    def _refuse(self, send: Callable, status: int, code: str, detail: str,
                headers: list | None = None) -> Awaitable[None]:
        if self.metrics is not None:
            self.metrics.rejected.labels(code).inc()
        return _send_json(send, status, {"error": code, "detail": detail},
                          [(b"connection", b"close"), *(headers or [])])

    def _too_large(self, send: Callable, size: str) -> Awaitable[None]:
        return self._refuse(send, 413, "body_too_large", f"request body is {size}; the limit is {self.limit} bytes")

    def _busy(self, send: Callable, n: int) -> Awaitable[None]:
        return self._refuse(send, 503, "overloaded",
                            f"server busy: {self.budget.held} bytes of request bodies in flight, {n} more would "
                            f"exceed the budget of {self.budget.limit}; retry shortly", [(b"retry-after", b"1")])

    def _behind(self, start: float, received: int, declared: int | None) -> float | None:
        """When a declared body that has ``received`` bytes falls behind its pace (None: no pace)."""
        if not self.pace or not declared:
            return None
        assert self.body_timeout is not None
        grace = min(self.read_timeout or 0.0, self.body_timeout)
        return start + grace + (self.body_timeout - grace) * received / declared

    async def _receive(self, receive: Callable, deadline: float | None) -> dict[str, Any] | None:
        """The next message, or None when the client stalled past the read timeout or ``deadline``."""
        wait = self.read_timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            wait = left if wait is None else min(wait, left)
        if wait is None:
            return await receive()
        try:
            async with asyncio.timeout(max(wait, 0.0)):  # no task per read, unlike wait_for
                return await receive()
        except TimeoutError:
            return None

    def _stalled(self, send: Callable, start: float, total: int, declared: int | None,
                 behind: float | None) -> Awaitable[None]:
        took = time.monotonic() - start
        if behind is not None and time.monotonic() >= behind - 1e-3 and total < (declared or 0):
            detail = (f"the request body arrived too slowly: {total} of {declared} bytes after {took:.1f} s "
                      f"(a declared body must keep pace to arrive within {self.body_timeout:g} s)")
        else:
            detail = (f"the request body stalled (read {total} bytes; each read may wait {self.read_timeout:g} s, "
                      f"the whole body {self.body_timeout:g} s)")
        return self._refuse(send, 408, "read_timeout", detail)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        held, n = 0, None
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                return await _send_json(send, 400, {"error": "bad_request", "detail": "invalid Content-Length"})
            if n > self.limit:
                return await self._too_large(send, f"{n} bytes (Content-Length)")
            if not self.budget.take(n):
                return await self._busy(send, n)
            held = n
        try:
            start = time.monotonic()
            deadline = None if self.body_timeout is None else start + self.body_timeout
            chunks, total = [], 0
            while True:
                behind = self._behind(start, total, n)
                message = await self._receive(receive, deadline if behind is None else min(behind, deadline or behind))
                if message is None:
                    chunks.clear()
                    return await self._stalled(send, start, total, n, behind)
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                total += len(chunk)
                if total > self.limit:
                    chunks.clear()
                    return await self._too_large(send, f"over {self.limit} bytes (read so far: {total})")
                if total > held:  # chunked, or more than declared: count it as it arrives
                    if not self.budget.take(total - held, total):
                        chunks.clear()
                        return await self._busy(send, total - held)
                    held = total
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body, replayed = b"".join(chunks), False
            chunks.clear()

            async def replay() -> dict[str, Any]:
                nonlocal replayed, body
                if not replayed:
                    replayed = True
                    message, body = {"type": "http.request", "body": body, "more_body": False}, b""
                    return message
                return await receive()

            await self.app(scope, replay, send)
        finally:
            self.budget.give(held)


class ExplainGateMiddleware:
    """503 ``overloaded`` for ``/explain[/file]`` while ``max_explain_in_flight`` run, before the
    body is read: a flood of refused explains costs no upload read or multipart parse on the loop
    (:meth:`Service.admit_explain` still counts them, for requests that pass here together)."""

    PATHS = frozenset({"/explain", "/explain/file"})

    def __init__(self, app: ASGIApp, service: Service, metrics: Metrics | None = None) -> None:
        self.app, self.service, self.metrics = app, service, metrics

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope.get("path") in self.PATHS and scope.get("method") == "POST":
            busy = self.service.explain_busy()
            if busy is not None:
                if self.metrics is not None:
                    self.metrics.rejected.labels("overloaded").inc()
                # no Connection: close: closing with the body unread would reset the connection
                # under the client's feet; the body is dropped as it arrives, for at most
                # read_timeout_s (TimedH11Protocol's deadline for unread bodies)
                return await _send_json(send, 503, {"error": "overloaded", "detail": busy}, [(b"retry-after", b"1")])
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------------- service
class Service:
    """Model, batcher and thread pools of one app; loaded in the lifespan."""

    def __init__(self, source: Bundle | str | Path, settings: Settings, metrics: Metrics,
                 preload: Future[Preloaded] | None = None) -> None:
        self.source, self.settings, self.metrics = source, settings, metrics
        self.preload = preload
        self.predictor: Predictor | None = None
        self.batcher: MicroBatcher | None = None
        self.decode_pool: ThreadPoolExecutor | None = None
        self.explain_pool: ThreadPoolExecutor | None = None
        self.ready = False
        self.load_error: str | None = None
        self.warmup_s: float | None = None
        self.in_flight = 0
        self.explaining = 0
        self.decoding = 0  # requests between admission and the batcher's queue
        self._decoding_lock = threading.Lock()  # worker threads count them down

    async def start(self) -> None:
        # these threads also run forward passes (flat combining): torch's thread count is per thread
        threads = self.settings.threads
        self.decode_pool = ThreadPoolExecutor(max(self.settings.decode_threads, self.settings.concurrent_passes),
                                              thread_name_prefix="tympan-decode",
                                              initializer=torch.set_num_threads, initargs=(threads,))
        self.explain_pool = ThreadPoolExecutor(self.settings.max_explain_in_flight, thread_name_prefix="tympan-explain",
                                               initializer=_background_thread, initargs=(threads,))

    async def load(self) -> None:
        s = self.settings
        try:
            torch.set_num_threads(s.threads)
            loop = asyncio.get_running_loop()
            if self.preload is not None:  # built and warmed while the web stack imported
                pre = await asyncio.wrap_future(self.preload)
                self.predictor, warmup_s = pre.predictor, pre.warmup_s
            else:  # the backends are timed with the threads they will have
                self.predictor, warmup_s = await loop.run_in_executor(None, build_predictor, self.source, s), None
            self.batcher = MicroBatcher(self.predictor, max_batch_size=s.max_batch_size,
                                        max_wait_ms=s.max_wait_ms, metrics=self.metrics,
                                        torch_threads=s.threads, incoming=lambda: self.decoding,
                                        passes=s.concurrent_passes)
            await self.batcher.start()
            if warmup_s is None:
                warmup_s = await loop.run_in_executor(self.batcher.executor, self.predictor.warmup, warmup_sizes(s))
            self.warmup_s = warmup_s
            self.ready = True
            self.metrics.ready.set(1)
            log.info("tympan: model %s (%s) ready; %s; warm-up %.2f s", self.predictor.version,
                     self.predictor.bundle.arch, self.predictor.backend_choice.summary(), self.warmup_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("tympan: model failed to load")
            if not s.load_in_background:
                raise

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self.batcher is not None:
            await self.batcher.stop()
        for pool in (self.decode_pool, self.explain_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def require_ready(self) -> Predictor:
        if self.ready and self.predictor is not None:
            return self.predictor
        if self.load_error:
            raise RequestError(503, "model_unavailable", f"the model failed to load: {self.load_error}")
        raise RequestError(503, "not_ready", "the model is still loading; retry when GET /ready is 200",
                           {"Retry-After": "1"})

    async def off_loop(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, func, *args)

    @contextlib.contextmanager
    def _decoding(self) -> Iterator[list[bool]]:
        """Count a request as being decoded until its ticket ends (whichever ends it first: the
        thread once the audio is decoded, or this context when the coroutine leaves or is cancelled)."""
        with self._decoding_lock:
            self.decoding += 1
        ticket = [True]
        try:
            yield ticket
        finally:
            self._end_decoding(ticket)

    def _end_decoding(self, ticket: list[bool]) -> None:
        with self._decoding_lock:
            if ticket[0]:
                ticket[0] = False
                self.decoding -= 1

    def _prepare(self, predictor: Predictor, data: str | bytes, ticket: list[bool], *,
                 inline: bool = False) -> Prepared:
        """Base64 (str) or file bytes -> audio -> windows (in a worker thread, or inline on the
        loop's thread when idle; counted in ``decoding``)."""
        try:
            raw = decode_base64(data) if isinstance(data, str) else data
            rate = predictor.config.sample_rate
            budget = functools.partial(check_decode_budget, n_bytes=audio_payload_size(raw), settings=self.settings,
                                       sample_rate=rate)
            if inline:
                limit = self.settings.inline_work(rate)

                def check(header: Header) -> None:
                    budget(header)
                    if header.frames is None or decode_work(header, rate) > limit:
                        raise _HandOver  # much work or of unknown length: not on the event loop
            return predictor.prepare(raw, check_header=check if inline else budget)
        finally:
            self._end_decoding(ticket)

    def _inline_ok(self, data: str | bytes) -> bool:
        """Run this request on the loop's thread? Only when the server is otherwise idle (no
        other HTTP request inside the app: under a burst, several are being received at once) and
        the upload is small enough that its header can be trusted to bound the work (the decode
        budget: at most max(64 x bytes, 4 M) samples; the header check hands longer audio over)."""
        s, b = self.settings, self.batcher
        return (s.inline_max_seconds > 0 and self.metrics.active_requests <= 1 and self.in_flight == 1
                and self.decoding == 0 and b is not None and b.idle and len(data) <= INLINE_MAX_BYTES)

    async def prepare(self, data: str | bytes) -> Prepared:
        """Decode base64 (str) or file bytes, then audio, then windows: all off the event loop."""
        predictor = self.require_ready()
        with self._decoding() as ticket:
            return await self.off_loop(self._prepare, predictor, data, ticket)

    def check_top_k(self, top_k: int | None) -> int:
        """``top_k`` checked against the model (None: the default 3, or fewer classes)."""
        n = self.require_ready().n_classes
        if top_k is None:
            return min(DEFAULT_TOP_K, n)
        if not 1 <= top_k <= n:
            got = top_k if abs(top_k) < 10**9 else "a far larger number"
            raise RequestError(422, "invalid_request", f"top_k must be between 1 and {n} (got {got})")
        return top_k

    @contextlib.contextmanager
    def admit(self):
        """Count a request in flight; refuse with 503 beyond ``max_in_flight`` (back-pressure)."""
        if self.in_flight >= self.settings.max_in_flight:
            raise RequestError(503, "overloaded", f"server busy ({self.in_flight} requests in flight); retry shortly",
                               {"Retry-After": "1"})
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def predict(self, request: Request, data: str | bytes, top_k: int | None,
                      return_logits: bool) -> Response:
        """Decode, run and answer in one thread: the event loop's own when the server is idle and
        the audio short (``inline_max_seconds``: no hand-over at all), else one worker thread
        (no batching wait); when another thread's pass answers this request, await it here."""
        top_k = self.check_top_k(top_k)
        predictor = self.require_ready()
        batcher = self.batcher
        assert batcher is not None
        t0 = request.scope.get("state", {}).get("t0") or time.perf_counter()

        def work(ticket: list[bool], inline: bool = False) -> bytes | tuple[Prepared, Future]:
            prepared = self._prepare(predictor, data, ticket, inline=inline)
            if inline:
                self.metrics.inline.inc()
            fut = batcher.enqueue(prepared)
            if not fut.done():
                return prepared, fut  # a pass on another thread answers it
            return self._predict_body(predictor, prepared, fut.result(), top_k, return_logits, t0)

        with self.admit():
            out = None
            if self._inline_ok(data):
                # requests that have arrived but whose tasks have not run yet are not counted in
                # active_requests: let them enter the app first, so a burst is seen as one
                await asyncio.sleep(0)
            if self._inline_ok(data):  # idle: no hand-over to a worker thread and back
                with contextlib.suppress(_HandOver), self._decoding() as ticket:
                    out = work(ticket, inline=True)
            if out is None:
                with self._decoding() as ticket:
                    out = await self.off_loop(work, ticket)
            if isinstance(out, tuple):
                prepared, fut = out
                result = await asyncio.wrap_future(fut)
                if len(prepared.starts) > 8 or return_logits:
                    out = await self.off_loop(self._predict_body, predictor, prepared, result, top_k,
                                              return_logits, t0)
                else:
                    out = self._predict_body(predictor, prepared, result, top_k, return_logits, t0)
        return Response(out, media_type="application/json")

    def _predict_body(self, predictor: Predictor, prepared: Prepared, result: tuple[np.ndarray, np.ndarray],
                      top_k: int, return_logits: bool, t0: float) -> bytes:
        """The validated ``PredictResponse`` serialised straight to JSON bytes (one pass)."""
        embeddings, logits = result
        if not np.isfinite(logits).all():  # strict JSON has no NaN; a bug, never a silent null
            raise ValueError("the network returned non-finite logits")
        resp = predictor.response(prepared, logits, top_k=top_k, return_logits=return_logits,
                                  embeddings=embeddings)
        self.metrics.predictions.inc()
        if resp.ood.out_of_distribution:
            self.metrics.ood.inc()
        if resp.uncertain:
            self.metrics.uncertain.inc()
        resp.timing_ms = round((time.perf_counter() - t0) * 1000, 2)
        return resp.__pydantic_serializer__.to_json(resp, exclude=None if return_logits else {"logits"})

    async def render(self, body: dict[str, Any], large: bool) -> Response:
        """JSON response; big bodies (explain, long recordings) are serialised off the event loop."""
        if not large:
            return JSONResponse(body)
        content = await self.off_loop(_dumps, body)
        return Response(content, media_type="application/json")

    def explain_busy(self) -> str | None:
        """Why an /explain request is refused now (None: it may run)."""
        limit = self.settings.max_explain_in_flight
        if self.explaining < limit:
            return None
        return f"server busy: {self.explaining} /explain requests in flight (the limit is {limit}); retry shortly"

    @contextlib.contextmanager
    def admit_explain(self) -> Iterator[None]:
        """At most ``max_explain_in_flight`` Grad-CAM requests at once (503 beyond): a backward
        pass costs tens of predictions, and a flood of them would take the cores /predict needs."""
        busy = self.explain_busy()
        if busy is not None:
            raise RequestError(503, "overloaded", busy, {"Retry-After": "1"})
        self.explaining += 1
        try:
            yield
        finally:
            self.explaining -= 1

    async def explain(self, request: Request, data: str | bytes, top_k: int | None) -> JSONResponse:
        top_k = self.check_top_k(top_k)
        predictor = self.require_ready()
        with self.admit_explain(), self.admit():
            prepared = await self.prepare(data)

            def run() -> bytes:  # Grad-CAM, validation and JSON (1 MB) all at the explain threads' priority
                body = predictor.explain(prepared.decoded, top_k=top_k)
                resp = ExplainResponse.model_validate({"model": predictor.model_info, **body,
                                                       "timing_ms": _elapsed_ms(request)})
                # pydantic's Rust encoder holds the GIL a fifth as long as json.dumps (25 vs 140 ms
                # for 1.2 MB on a loaded 2-core machine), but writes NaN/inf as null: the strict
                # encoder then names them as the bug they are
                out = resp.__pydantic_serializer__.to_json(resp)
                return out if b"null" not in out else _dumps(resp.model_dump())

            content = await asyncio.get_running_loop().run_in_executor(self.explain_pool, run)
        return Response(content, media_type="application/json")


#: how much lower the explain threads' scheduling priority is (Linux nice): under contention a
#: Grad-CAM pass yields the cores to /predict's passes instead of sharing them evenly
EXPLAIN_NICE = 10


def _background_thread(threads: int) -> None:
    """Initialise an explain thread: torch's thread count, and a lower priority where the OS
    lets one thread have its own (Linux: setpriority on the thread id)."""
    torch.set_num_threads(threads)
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), EXPLAIN_NICE)


def decode_work(header: Header, sample_rate: int) -> int:
    """Samples a decode of this header costs: what is decoded (frames x channels) or what the
    resampler writes at the model's ``sample_rate``, whichever is more (0 when the length is
    unknown: such files are bounded by the duration limit as they decode)."""
    if header.frames is None or header.sample_rate <= 0:
        return 0
    return max(header.frames * header.channels, -(-header.frames * sample_rate // header.sample_rate))


def check_decode_budget(header: Header, *, n_bytes: int, settings: Settings, sample_rate: int) -> None:
    """Refuse uploads whose header promises far more work than their size can honestly hold.

    A 232 kB FLAC of silence decodes to 64 M samples (256 MB of float32, seconds of CPU), and a
    1.9 kB FLAC of 600 s at 1 kHz is 19 M samples (239 model windows) once resampled: the
    work (:func:`decode_work`: decoded or resampled samples, whichever is more) must fit
    ``max(max_samples_per_byte x n_bytes, min_decode_samples)`` (see
    :meth:`Settings.decode_budget`), where ``n_bytes`` counts the bytes that can hold audio
    (:func:`~tympan.recording_meta.audio_payload_size`: not a FLAC's padding). Called by the
    decoder with the header it opened, before any sample is decoded.
    """
    work, budget = decode_work(header, sample_rate), settings.decode_budget(n_bytes)
    if work > budget:
        windows = max(1, -(-work // max(sample_rate * 5 // 2, 1)))
        raise RequestError(
            413, "decode_budget_exceeded",
            f"{n_bytes} bytes of {header.format} audio promise {header.frames} frames x {header.channels} channels at "
            f"{header.sample_rate} Hz = {work} samples to decode and resample to {sample_rate} Hz (about {windows} "
            f"windows of 5 s; {work / max(n_bytes, 1):.0f} per byte); the limit is {budget} samples "
            f"(max({settings.max_samples_per_byte:g} per byte, {settings.min_decode_samples}))")


def strip_paths(value: Any) -> Any:
    """``value`` with absolute file-system paths (build-machine provenance) cut to their last part."""
    if isinstance(value, dict):
        return {k: strip_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_paths(v) for v in value]
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return _ABS_PATH.sub(lambda m: m.group("name") or "", value)
    return value


_ABS_PATH = re.compile(r"(?<![\w:/.~-])(?:~|[A-Za-z]:)?[/\\](?:[^\s/\\]+[/\\])*(?P<name>[^\s/\\]+)")


def describe_model(predictor: Predictor, include: str | None) -> dict[str, Any]:
    """``GET /model``: ``Predictor.describe()`` without local paths; the bundle's heavy drift
    ``reference`` only with ``?include=reference``."""
    body = dict(predictor.describe())
    reference = body.pop("reference", None)
    wanted = {part.strip() for part in (include or "").split(",") if part.strip()}
    unknown = wanted - {"reference"}
    if unknown:
        raise RequestError(422, "invalid_request",
                           f"include: unknown value(s) {', '.join(sorted(unknown))}; the only one is 'reference'")
    if "reference" in wanted:
        body["reference"] = reference if reference is not None else (predictor.bundle.reference or None)
    return strip_paths(body)


def _dumps(body: dict[str, Any]) -> bytes:
    """What JSONResponse renders (strict JSON: NaN/inf are an error, not invalid output)."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


_OBJECT_REPR = re.compile(r"<_io\.\w+ object at 0x[0-9a-fA-F]+>")


def _clean(message: str) -> str:
    """One line, without Python object reprs that libsndfile messages carry."""
    return " ".join(_OBJECT_REPR.sub("the upload", message).split())


def _elapsed_ms(request: Request) -> float:
    t0 = request.scope.get("state", {}).get("t0") or time.perf_counter()
    return round((time.perf_counter() - t0) * 1000, 2)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# ------------------------------------------------------------------------------------- app
def create_app(bundle_or_path: Bundle | str | Path | None = None, settings: Settings | None = None,
               preload: Future[Preloaded] | None = None, outputs: StreamOutputs | None = None) -> FastAPI:
    """The tympan HTTP API for one model bundle (a :class:`Bundle` or its directory).

    ``None`` serves the shipped default bundle. A path is checked at once (a missing or
    foreign folder fails here, with one line); the weights load in the lifespan, or come from
    ``preload`` (:func:`tympan.serving.preload.start_preload` of the same bundle and settings,
    started before the web stack was imported). ``outputs``: the event store and alerts of
    ``settings.store`` / ``settings.alerts`` already opened (else they are opened here, with
    a one-line error); the app closes them when it stops.
    """
    settings = settings or Settings.from_env()
    if bundle_or_path is None:
        bundle_or_path = default_bundle_path()
    if isinstance(bundle_or_path, Bundle):
        classes = list(bundle_or_path.classes)
    else:
        classes = read_metadata(bundle_or_path)["classes"]  # fail fast: raises BundleError naming the problem
    if outputs is None:
        outputs = StreamOutputs.open(settings.store, settings.alerts, classes)
    metrics = Metrics()
    service = Service(bundle_or_path, settings, metrics, preload)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        task = None
        if settings.load_in_background:
            task = asyncio.create_task(service.load(), name="tympan-load")
        else:
            await service.load()
        try:
            yield
        finally:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await service.stop()
            if outputs is not None:  # after the streams: their last events are stored and alerted
                await asyncio.get_running_loop().run_in_executor(None, outputs.close)

    app = FastAPI(
        title="tympan",
        version=__version__,
        summary="Environmental sound classification (ESC-50) with calibrated probabilities and OOD flags",
        description="HTTP contract: docs/api.md. Errors are `{\"error\": code, \"detail\": message}`.",
        lifespan=lifespan,
        # Starlette would answer /predict/ with a 307 to a URL built from the Host header (an open
        # redirect: Host: evil.example); a path is served as written or it is a 404
        redirect_slashes=False,
        docs_url=None,  # tympan.serving.docs adds /docs and /redoc on local assets (they work offline)
        redoc_url=None,
    )
    add_docs(app)
    app.state.service = service
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.outputs = outputs  # read by /stream (tympan/serving/stream.py)

    # ------------------------------------------------------------------ error handlers
    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        metrics.rejected.labels(exc.code).inc()
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(AudioError)
    async def _audio_error(_: Request, exc: AudioError) -> JSONResponse:
        metrics.rejected.labels(exc.code).inc()
        status = next((s for t, s in ERROR_STATUS.items() if isinstance(exc, t)), 422)
        return error_response(status, exc.code, _clean(str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.rejected.labels("invalid_request").inc()
        return error_response(422, "invalid_request", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # an unparsable body (multipart, JSON too deep): invalid input
            metrics.rejected.labels("invalid_request").inc()
            return error_response(422, "invalid_request", _clean(str(exc.detail)))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, _clean(str(exc.detail)), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:  # true bugs only
        log.error("tympan: internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(INTERNAL_ERROR, status_code=500)

    # ------------------------------------------------------------------------ endpoints
    @app.post("/predict", response_model=PredictResponse, responses=ERROR_RESPONSES, tags=["predict"],
              summary="Classify a recording sent as base64 JSON")
    async def predict(req: PredictRequest, request: Request) -> Response:
        top_k = req.top_k if "top_k" in req.model_fields_set else None
        return await service.predict(request, req.audio_base64, top_k, req.return_logits)

    @app.post("/predict/file", response_model=PredictResponse, responses=ERROR_RESPONSES, tags=["predict"],
              summary="Classify an uploaded audio file (multipart)")
    async def predict_file(
        request: Request,
        file: UploadFile = File(..., description="audio file (WAV, FLAC, OGG, Opus, MP3, ...)"),
        top_k: DigitsInt | None = Form(None, ge=1, description="1..n_classes (default 3)"),
        return_logits: bool = Form(False),
    ) -> Response:
        service.check_top_k(top_k)  # before reading the upload
        return await service.predict(request, await file.read(), top_k, return_logits)

    @app.post("/explain", response_model=ExplainResponse, responses=ERROR_RESPONSES, tags=["explain"],
              summary="Log-mel, feature maps and Grad-CAM saliency for the first window")
    async def explain(req: PredictRequest, request: Request) -> Response:
        top_k = req.top_k if "top_k" in req.model_fields_set else None
        return await service.explain(request, req.audio_base64, top_k)

    @app.post("/explain/file", response_model=ExplainResponse, responses=ERROR_RESPONSES, tags=["explain"],
              summary="As /explain, for an uploaded file")
    async def explain_file(
        request: Request,
        file: UploadFile = File(...),
        top_k: DigitsInt | None = Form(None, ge=1, description="1..n_classes (default 3)"),
    ) -> Response:
        service.check_top_k(top_k)
        return await service.explain(request, await file.read(), top_k)

    @app.get("/health", response_model=Status, tags=["ops"], summary="Process is up")
    @app.head("/health", tags=["ops"], summary="As GET /health, without a body (load balancers)")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})  # X-Tympan-Instance: added to every response when set

    @app.get("/ready", response_model=Status, tags=["ops"], summary="200 once the model is loaded and warmed",
             responses={503: {"model": ErrorResponse}})
    @app.head("/ready", tags=["ops"], summary="As GET /ready, without a body (load balancers)",
              responses={503: {"model": ErrorResponse}})
    async def ready() -> Response:
        if service.ready:
            return JSONResponse({"status": "ready"})
        if service.load_error:
            return error_response(503, "model_unavailable", f"the model failed to load: {service.load_error}")
        return error_response(503, "not_ready", "the model is loading", {"Retry-After": "1"})

    @app.get("/model", response_model=ModelInfo, tags=["ops"], summary="Model bundle description",
             responses={503: {"model": ErrorResponse}})
    async def model(include: str | None = Query(
            None, description="`reference`: also return the bundle's drift reference (large)")) -> Response:
        body = describe_model(service.require_ready(), include)
        return await service.render(body, large="reference" in body)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def root() -> dict[str, Any]:
        return {"service": "tympan", "version": __version__, "docs": "/docs", "contract": "docs/api.md"}

    app.include_router(stream_router)  # WebSocket /stream (tympan/serving/stream.py)

    # -------------------------------------------------------------- middleware (inner first)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes,
                       budget=BodyBudget(settings.inflight_body_budget, metrics.body_bytes, settings.small_body_share),
                       read_timeout=settings.read_timeout_s, body_timeout=settings.body_timeout_s, metrics=metrics,
                       pace=settings.pace_bodies)
    app.add_middleware(ExplainGateMiddleware, service=service, metrics=metrics)
    if settings.api_key:
        app.add_middleware(AuthMiddleware, api_key=settings.api_key)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(MetricsMiddleware, metrics=metrics, instance=settings.instance_token)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and multi-worker serving: ``TYMPAN_BUNDLE`` + ``TYMPAN_*``."""
    bundle = os.environ.get("TYMPAN_BUNDLE") or None
    return create_app(bundle, Settings.from_env())
