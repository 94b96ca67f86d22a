"""uvicorn set-up shared by ``tympan serve``, ``tympan up`` and the tests.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and the size of request
headers (h11's 16 kB), but not how long a client may take to send its headers: a connection
that sends nothing, or one header byte now and then, is held for ever (slowloris).
:class:`TimedH11Protocol` closes such a connection after ``read_timeout_s`` (408 when part of a
request arrived). The body's read timeouts are enforced in the app (``BodyLimitMiddleware``),
where the bytes are read.

Two more ways to hold a connection for ever are closed here: a request whose body the app
never reads (a GET that declares a body) is answered, and then whatever the client sends, the
connection is closed ``read_timeout_s`` later unless that body ended (uvicorn's keep-alive timer
is cancelled by every byte, so a byte now and then used to keep it open); and connections are
capped per client address (``max_connections_per_client``) and in total (``max_connections``):
beyond either, the connection is answered 503 ``overloaded`` and closed, before it can hold a
file descriptor for longer than it takes to say so.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tympan.serving.settings import Settings

_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_TIMEOUT_BODY = b'{"error": "read_timeout", "detail": "request headers did not arrive in time"}'
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                  b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
#: how long a refused connection is kept (reading and dropping what it sends) so the client can
#: read the 503 before the socket closes (closing with unread input would reset it)
_REFUSED_LINGER_S = 1.0


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers.

    The clock starts when the connection opens or when the first byte of a new request arrives
    after a response (until then, uvicorn's keep-alive timeout applies), and stops once h11
    has parsed the request line and headers.
    """

    #: the settings used when the Config does not carry them (workers: from ``TYMPAN_*``)
    default_settings: Settings | None = None

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = getattr(config, "tympan_settings", None)
        if settings is None:
            if TimedH11Protocol.default_settings is None:  # workers: settings come from TYMPAN_*
                TimedH11Protocol.default_settings = Settings.from_env()
            settings = TimedH11Protocol.default_settings
        self.header_timeout = float(settings.read_timeout_s)
        self.max_connections = settings.connection_limit
        self.max_per_client = settings.max_connections_per_client
        self._header_timer: asyncio.TimerHandle | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._partial = False
        self._refused = self._counted = False
        self._peer: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = self.client[0] if self.client else None
        counts: dict[str | None, int] = self.server_state.__dict__.setdefault("tympan_clients", {})
        total = len(self.connections)
        mine = counts.get(peer, 0) + 1
        if total > self.max_connections or mine > self.max_per_client:
            which = (f"{mine - 1} connections from this client (the limit is {self.max_per_client})"
                     if mine > self.max_per_client
                     else f"{total - 1} connections (the limit is {self.max_connections})")
            self._refuse(f"server busy: {which}; retry shortly")
            return
        counts[peer], self._peer, self._counted = mine, peer, True
        self._arm_header_timer()

    def _refuse(self, detail: str) -> None:
        """503 and close: written before the request is read (a client reads it as the answer)."""
        self._refused = True
        body = json.dumps({"error": "overloaded", "detail": detail}).encode()
        self.transport.write(_BUSY_RESPONSE % (len(body), body))
        self._header_timer = self.loop.call_later(_REFUSED_LINGER_S, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._cancel_drain_timer()
        if self._counted:
            self._counted = False
            counts = self.server_state.__dict__.get("tympan_clients", {})
            left = counts.get(self._peer, 0) - 1
            if left > 0:
                counts[self._peer] = left
            else:
                counts.pop(self._peer, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # answered 503 already: drop what it sends until the linger ends
            return
        super().data_received(data)
        if self.transport.is_closing():
            self._cancel_header_timer()
        elif self.conn.their_state is h11.IDLE:  # (part of) the next request's headers
            self._partial = self._partial or bool(data)
            if self._header_timer is None:
                self._arm_header_timer()
        else:  # headers parsed: the body (if any) is the app's to time
            self._cancel_header_timer()
            self._partial = False
        if self._drain_timer is not None and self.conn.their_state is not h11.SEND_BODY:
            self._cancel_drain_timer()  # the unread body ended: the connection is reusable

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle time
        self._cancel_header_timer()
        self._partial = False
        if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            # answered before its body was read (a GET that declares one): every byte it sends
            # cancels the keep-alive timer, so this deadline, which bytes do not move, ends it
            self._cancel_drain_timer()
            self._drain_timer = self.loop.call_later(self.header_timeout, self._drain_timed_out)

    def _cancel_drain_timer(self) -> None:
        self._drain_timer = _cancelled(self._drain_timer)

    def _drain_timed_out(self) -> None:
        self._drain_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            self.transport.close()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        self._header_timer = _cancelled(self._header_timer)

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._partial and self.conn.our_state is h11.IDLE:
            self.transport.write(_TIMEOUT_RESPONSE % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))
        self.transport.close()


def _cancelled(timer: asyncio.TimerHandle | None) -> None:
    """Cancel ``timer`` if there is one; None, to store in its place."""
    if timer is not None:
        timer.cancel()


def uvicorn_config(app: Any, settings: Settings, host: str, port: int, **kwargs: Any):
    """A ``uvicorn.Config`` with tympan's connection timeouts (header, keep-alive)."""
    import uvicorn

    kwargs.setdefault("log_level", settings.log_level)
    config = uvicorn.Config(app, host=host, port=port, http=TimedH11Protocol,
                            timeout_keep_alive=settings.keep_alive_timeout_s, **kwargs)  # type: ignore[arg-type]
    config.tympan_settings = settings  # type: ignore[attr-defined]
    return config
