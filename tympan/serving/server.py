"""uvicorn set-up shared by ``tympan serve``, ``tympan up`` and the tests.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and the size of request
headers (h11's 16 kB), but not how long a client may take to send its headers: a connection
that sends nothing, or one header byte now and then, is held for ever (slowloris).
:class:`TimedH11Protocol` closes such a connection after ``read_timeout_s`` (408 when part of a
request arrived). The body's read timeouts are enforced in the app (``BodyLimitMiddleware``),
where the bytes are read.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tympan.serving.settings import Settings

_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_TIMEOUT_BODY = b'{"error": "read_timeout", "detail": "request headers did not arrive in time"}'


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers.

    The clock starts when the connection opens or when the first byte of a new request arrives
    after a response (until then, uvicorn's keep-alive timeout applies), and stops once h11
    has parsed the request line and headers.
    """

    #: the deadline used when the Config does not carry one (``tympan_read_timeout_s``)
    default_timeout: float | None = None

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        timeout = getattr(config, "tympan_read_timeout_s", None)
        if timeout is None:
            if TimedH11Protocol.default_timeout is None:  # workers: settings come from TYMPAN_*
                TimedH11Protocol.default_timeout = Settings.from_env().read_timeout_s
            timeout = TimedH11Protocol.default_timeout
        self.header_timeout = float(timeout)
        self._header_timer: asyncio.TimerHandle | None = None
        self._partial = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
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

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle time
        self._cancel_header_timer()
        self._partial = False

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self._partial and self.conn.our_state is h11.IDLE:
            self.transport.write(_TIMEOUT_RESPONSE % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))
        self.transport.close()


def uvicorn_config(app: Any, settings: Settings, host: str, port: int, **kwargs: Any):
    """A ``uvicorn.Config`` with tympan's connection timeouts (header, keep-alive)."""
    import uvicorn

    kwargs.setdefault("log_level", settings.log_level)
    config = uvicorn.Config(app, host=host, port=port, http=TimedH11Protocol,
                            timeout_keep_alive=settings.keep_alive_timeout_s, **kwargs)  # type: ignore[arg-type]
    config.tympan_read_timeout_s = settings.read_timeout_s  # type: ignore[attr-defined]
    return config
