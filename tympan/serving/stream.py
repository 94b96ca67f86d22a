"""WebSocket ``/stream``: live PCM in, window predictions and events out (``docs/api.md``).

Each connection gets its own :class:`tympan.live.listener.Listener` (the one windowing and event
path of ``tympan listen`` and ``predict --format events``); its forward passes run on the
server's decode threads, never on the event loop. With ``tympan serve --store/--alerts``
(:mod:`tympan.serving.stream_outputs`) its closed events also go to the app's one event store and
alert rules, named by the stream (``name`` in the start message or query, else a generated one),
and a ``[drift]`` table gives it a drift check whose verdicts it sends (``{"type": "drift"}``). A
stream that ends without its end message (a disconnect, a refusal) is still flushed there, so
no event it opened is lost from the store. The socket is read one frame at a time and
each frame is classified before the next is read, so a slow model slows the client down (TCP
back-pressure) instead of growing a queue. Every refusal is a close with a code and a reason:

============  ======  ==================================================================
reason        code    when
============  ======  ==================================================================
unauthorized  1008    ``TYMPAN_API_KEY`` set and no matching ``token`` / Bearer header
busy          1013    ``max_streams`` streams open, or the model is still loading
invalid       1007    a text frame that is not a valid start / end message
unsupported   1003    PCM before the format is known
too_large     1009    a frame over ``stream_max_frame_bytes``
idle          1008    nothing received for ``stream_idle_s``
too_fast      1008    audio beyond ``stream_burst_s`` + ``stream_max_speed`` x real time
============  ======  ==================================================================
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from tympan.contracts import contract_errors
from tympan.contracts.events import DriftStatus, Event
from tympan.contracts.stream import (
    StreamDrift,
    StreamEnd,
    StreamEventMessage,
    StreamEventOpen,
    StreamReady,
    StreamStart,
    StreamSummary,
    StreamWarning,
    StreamWindow,
)
from tympan.live.listener import Listener, WindowInfo
from tympan.live.sources import PcmDecoder

log = logging.getLogger("tympan.serving")
router = APIRouter()

#: close codes by reason (RFC 6455 section 7.4.1); the reasons are the metric's label values
CLOSE_CODES = {"normal": 1000, "unauthorized": 1008, "busy": 1013, "invalid": 1007, "unsupported": 1003,
               "too_large": 1009, "idle": 1008, "too_fast": 1008, "internal": 1011}


class Refused(Exception):
    """End the stream with ``CLOSE_CODES[reason]`` and a one-line ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _authorized(ws: WebSocket, key: str | None) -> bool:
    if not key:
        return True
    token = ws.query_params.get("token")
    if token is None:
        scheme, _, token = ws.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
    return hmac.compare_digest(token.strip().encode(), key.encode())


def _start_from_query(ws: WebSocket) -> StreamStart | None:
    """The format from the query (None: a start message will say it); ``name`` alone does not start."""
    q = {k: ws.query_params[k] for k in ("sample_rate", "channels", "format", "windows") if k in ws.query_params}
    if not q:
        return None
    if "name" in ws.query_params:
        q["name"] = ws.query_params["name"]
    try:
        return StreamStart.model_validate(q)
    except ValidationError as exc:
        raise Refused("invalid", "query: " + contract_errors(exc)) from None


def _named(start: StreamStart, ws: WebSocket) -> StreamStart:
    """The start with its name: its own, the query's, else a generated one."""
    if start.name is not None:
        return start
    name = ws.query_params.get("name")
    if name is None:
        return start.model_copy(update={"name": f"stream-{uuid.uuid4().hex[:12]}"})
    try:
        return StreamStart.model_validate({**start.model_dump(), "name": name})
    except ValidationError as exc:
        raise Refused("invalid", "query: " + contract_errors(exc)) from None


def _parse_text(text: str) -> StreamStart | StreamEnd:
    try:
        body = json.loads(text)
    except ValueError:
        raise Refused("invalid", "a text frame must be a JSON start or end message") from None
    kind = body.get("type") if isinstance(body, dict) else None
    model = {"start": StreamStart, "end": StreamEnd}.get(kind)  # type: ignore[arg-type]
    if model is None:
        raise Refused("invalid", 'a text frame must be {"type": "start", ...} or {"type": "end"}')
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise Refused("invalid", contract_errors(exc)) from None


class _Session:
    """One stream: its decoder, listener, pacing check and the messages its last frame made."""

    def __init__(self, predictor: Any, start: StreamStart, settings: Any, metrics: Any,
                 outputs: Any = None) -> None:
        self.start, self.settings, self.metrics = start, settings, metrics
        self.name = start.name or "stream"
        self.out: list[str] = []
        on_window = self._window if start.windows else None
        store = outputs.writer if outputs is not None else None
        alerts = outputs.alerts if outputs is not None else None
        self.listener = Listener(predictor, source=self.name, drop=False, on_event=self._event, on_window=on_window,
                                 on_open=self._open, keep_events=False,  # a stream may last for days: events go out
                                 store=store, alerts=alerts, on_drift=self._drift)
        lis = self.listener
        if outputs is not None:
            lis.drift = outputs.drift_monitor(predictor.bundle, hop_s=lis.hop / lis.sr, clip_s=lis.n / lis.sr)
        #: whether the listener's store or alerts want the open events closed when the stream just stops
        self.flush_on_stop = store is not None or alerts is not None
        self.ended = self.gone = False
        self.lock = threading.RLock()  # a feed still running when its task was cancelled, and the flush
        self.decoder = PcmDecoder(start.sample_rate, start.channels, self.listener.sr, start.format)
        self.listener.begin()
        self.pos = 0
        self.received_s = 0.0  # audio received, at the client's rate
        self.t0: float | None = None
        self.warned = 0

    def _event(self, e: Event) -> None:
        if self.gone:  # flushed after the socket went: stored and alerted, not sent
            return
        self.metrics.stream_events.inc()
        self.out.append(StreamEventMessage(event=e).model_dump_json())

    def _open(self, e: Event) -> None:
        self.out.append(StreamEventOpen(event=e).model_dump_json())

    def _drift(self, status: DriftStatus) -> None:
        log.warning("tympan: stream %s: %s", self.name, ("the model is affected: " + "; ".join(status.reasons))
                    if status.affected else "the drift check no longer finds the model affected")
        self.out.append(StreamDrift(status=status).model_dump_json())

    def _window(self, w: WindowInfo, _stats: Any) -> None:
        self.out.append(StreamWindow(**w.model_dump()).model_dump_json())

    def pace(self, n_bytes: int) -> None:
        """Refuse audio arriving faster than a live source could send it."""
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        self.received_s += n_bytes / (self.decoder.frame * self.start.sample_rate)
        allowed = self.settings.stream_burst_s + self.settings.stream_max_speed * (now - self.t0)
        if self.received_s > allowed:
            raise Refused("too_fast", f"{self.received_s:.1f} s of audio in {now - self.t0:.1f} s: more than "
                          f"{self.settings.stream_burst_s:g} s ahead of {self.settings.stream_max_speed:g}x real time")

    def feed(self, data: bytes, last: bool = False) -> list[str]:
        """Decode and classify one frame (on a worker thread); the messages it produced."""
        with self.lock:
            self.out = []
            y = self.decoder.decode(data, last=last)
            if len(y):
                self.listener.feed(self.pos, y)
                self.pos += len(y)
            if self.decoder.nonfinite > self.warned:
                self.warned = self.decoder.nonfinite
                self.out.append(StreamWarning(detail="non-finite samples were set to zero").model_dump_json())
            if last:
                self.ended = True
                self.listener.end()
            return self.out

    def stop(self) -> None:
        """The stream stopped without its end message: its open events closed for the store and
        the alerts (on a worker thread, after any feed still running)."""
        with self.lock:
            if not self.ended:
                self.gone = True
                self.feed(b"", last=True)  # the resampler's tail too, as an end message would


@router.websocket("/stream")
async def stream(ws: WebSocket) -> None:
    app = ws.app
    service, settings, metrics = app.state.service, app.state.settings, app.state.metrics
    await ws.accept()
    session: _Session | None = None
    state = app.state
    reason, detail = "normal", "end of stream"
    counted = False
    try:
        if not _authorized(ws, settings.api_key):
            raise Refused("unauthorized", "missing or wrong token (?token=<key> or Authorization: Bearer <key>)")
        if getattr(state, "open_streams", 0) >= settings.max_streams:
            raise Refused("busy", f"{settings.max_streams} streams are open (the limit); retry later")
        if not service.ready or service.predictor is None:
            raise Refused("busy", "the model is still loading; retry when GET /ready is 200")
        state.open_streams = getattr(state, "open_streams", 0) + 1
        counted = True
        metrics.streams.inc()
        metrics.streams_active.inc()
        predictor = service.predictor
        start = _start_from_query(ws)

        async def begin(start: StreamStart) -> _Session:
            s = _Session(predictor, _named(start, ws), settings, metrics, getattr(state, "outputs", None))
            lis = s.listener
            await ws.send_text(StreamReady(sample_rate=lis.sr, window_s=lis.n / lis.sr, hop_s=lis.hop / lis.sr,
                                           classes=len(predictor.classes), name=s.name).model_dump_json())
            return s

        if start is not None:
            session = await begin(start)
        while True:
            try:
                msg = await asyncio.wait_for(ws.receive(), timeout=settings.stream_idle_s)
            except asyncio.TimeoutError:
                raise Refused("idle", f"no data for {settings.stream_idle_s:g} s") from None
            if msg["type"] == "websocket.disconnect":
                reason = "disconnected"
                break
            data, text = msg.get("bytes"), msg.get("text")
            size = len(data) if data is not None else len((text or "").encode())
            if size > settings.stream_max_frame_bytes:
                raise Refused("too_large", f"a {size}-byte frame; the limit is {settings.stream_max_frame_bytes}")
            if text is not None:
                parsed = _parse_text(text)
                if isinstance(parsed, StreamStart):
                    if session is not None:
                        raise Refused("invalid", "the stream has already started")
                    session = await begin(parsed)
                    continue
                if session is None:
                    raise Refused("invalid", "end before start")
                before = session.listener.stats.windows
                for m in await service.off_loop(session.feed, b"", True):
                    await ws.send_text(m)
                metrics.stream_windows.inc(session.listener.stats.windows - before)
                st = session.listener.stats
                await ws.send_text(StreamSummary(windows=st.windows, events=st.events, audio_s=round(st.audio_s, 3),
                                                 trailing_bytes=len(session.decoder.carry)).model_dump_json())
                break
            if session is None:
                raise Refused("unsupported", "PCM before the format: send a start message or ?sample_rate=...")
            if not data:
                continue
            session.pace(len(data))
            before = session.listener.stats.windows
            for m in await service.off_loop(session.feed, data):
                await ws.send_text(m)
            metrics.stream_windows.inc(session.listener.stats.windows - before)
    except Refused as exc:
        reason, detail = exc.reason, exc.detail
    except WebSocketDisconnect:
        reason = "disconnected"
    except Exception:  # a bug in tympan: the client still gets a close with a reason
        log.exception("tympan: internal error on /stream")
        reason, detail = "internal", "internal server error (a bug in tympan; it has been logged)"
    finally:
        if counted:
            state.open_streams -= 1
            metrics.streams_active.dec()
        metrics.stream_closes.labels(reason).inc()
    if reason != "disconnected":
        try:
            await ws.close(CLOSE_CODES[reason], detail.encode()[:123].decode(errors="ignore"))
        except (RuntimeError, WebSocketDisconnect):  # the client went first
            pass
    if session is not None and not session.ended and session.flush_on_stop:
        await _flush(service, session)


async def _flush(service: Any, session: _Session) -> None:
    """Close the open events of a stream that stopped without its end message (for the store and
    the alerts: the socket may be gone, so its messages are dropped)."""
    try:
        await service.off_loop(session.stop)
    except Exception:  # noqa: BLE001 - the server is shutting down (its pool is gone), or a bug: logged
        log.exception("tympan: stream %s: its open events could not be closed", session.name)
