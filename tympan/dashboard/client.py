"""A small HTTP client for the tympan API (``docs/api.md``), with errors a person can read.

Every failure becomes an :class:`ApiError` whose message says what went wrong in one line:
the server is not reachable at URL, it timed out, or it answered ``415 not_audio: <detail>``.
The dashboard shows that message with ``st.error`` and keeps running.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

ENV_VAR = "TYMPAN_API_URL"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0


def default_api_url() -> str:
    """``$TYMPAN_API_URL``, else ``http://127.0.0.1:8000``."""
    return (os.environ.get(ENV_VAR) or DEFAULT_URL).rstrip("/")


class ApiError(Exception):
    """The API could not be reached or answered with an error; ``str()`` is one plain line."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 detail: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass
class ApiClient:
    """Calls the tympan HTTP API; one method per endpoint the dashboard uses."""

    base_url: str = DEFAULT_URL
    timeout: float = DEFAULT_TIMEOUT_S
    token: str | None = None

    def __post_init__(self) -> None:
        url = (self.base_url or "").strip().rstrip("/")
        if not url:
            raise ApiError("no API URL given: enter one in the sidebar or set TYMPAN_API_URL")
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        self.base_url = url

    # -- plumbing -------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> Any:
        url = self.base_url + path
        try:
            with httpx.Client(timeout=timeout or self.timeout, headers=self._headers()) as client:
                response = client.request(method, url, **kwargs)
        except httpx.ConnectError:
            raise ApiError(
                f"cannot reach the tympan API at {self.base_url} (connection refused or host unknown); "
                f"start it with `tympan serve --bundle DIR` or fix the URL in the sidebar"
            ) from None
        except httpx.TimeoutException:
            raise ApiError(f"the tympan API at {self.base_url} did not answer {method} {path} "
                           f"within {timeout or self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise ApiError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise _error_from_response(method, path, response)
        try:
            return response.json()
        except ValueError:
            raise ApiError(f"{method} {path}: the API answered {response.status_code} "
                           f"but not with JSON ({response.text[:120]!r})",
                           status=response.status_code) from None

    # -- endpoints ------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health", timeout=5.0)

    def ready(self) -> dict[str, Any]:
        return self._request("GET", "/ready", timeout=5.0)

    def model(self) -> dict[str, Any]:
        """``GET /model``: classes, front end, temperature, OOD, metrics, diagnostics."""
        return self._request("GET", "/model", timeout=10.0)

    def predict(self, audio: bytes, filename: str = "clip.wav", *, top_k: int = 5,
                return_logits: bool = False) -> dict[str, Any]:
        """``POST /predict/file`` (multipart), falling back to the JSON ``/predict`` on 404/405."""
        return self._audio_call("/predict", audio, filename, top_k=top_k, return_logits=return_logits)

    def explain(self, audio: bytes, filename: str = "clip.wav", *, top_k: int = 5) -> dict[str, Any]:
        """``POST /explain/file``: log-mel, waveform, feature maps and saliency of the first window."""
        return self._audio_call("/explain", audio, filename, top_k=top_k)

    def _audio_call(self, path: str, audio: bytes, filename: str, *, top_k: int,
                    return_logits: bool = False) -> dict[str, Any]:
        if not audio:
            raise ApiError("no audio to send (the file is empty)")
        data = {"top_k": str(int(top_k))}
        if return_logits:
            data["return_logits"] = "true"
        try:
            return self._request("POST", path + "/file", files={"file": (filename, audio)}, data=data)
        except ApiError as exc:
            if exc.status not in (404, 405):
                raise
        body = {"audio_base64": base64.b64encode(audio).decode("ascii"), "top_k": int(top_k),
                "return_logits": bool(return_logits)}
        return self._request("POST", path, json=body)


    def stream(self, pcm: bytes, sample_rate: int, *, channels: int = 1, frame_s: float = 0.5,
               speed: float = 1.4, on_message: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """16-bit PCM through ``WebSocket /stream`` at ``speed`` x real time after the server's
        burst allowance; every message (window, event, end) in order. A close other than
        1000 is an :class:`ApiError` with the server's reason."""
        import time

        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        url = "ws" + self.base_url[len("http"):] + f"/stream?sample_rate={int(sample_rate)}&channels={channels}&format=s16le"
        frame = max(2 * channels, int(frame_s * sample_rate) * 2 * channels)
        out: list[dict[str, Any]] = []

        def take(ws: Any, timeout: float) -> None:
            while True:
                try:
                    m = json.loads(ws.recv(timeout=timeout))
                except TimeoutError:
                    return
                out.append(m)
                if on_message is not None:
                    on_message(m)
                timeout = 0

        try:
            with connect(url, additional_headers=self._headers(), open_timeout=self.timeout, close_timeout=5) as ws:
                t0 = time.monotonic()
                burst = 20 * frame  # well inside the server's default 30 s
                for i in range(0, len(pcm), frame):
                    ws.send(pcm[i : i + frame])
                    ahead = (i - burst) / (2 * channels * sample_rate) / speed - (time.monotonic() - t0)
                    take(ws, max(0.0, ahead))
                ws.send(json.dumps({"type": "end"}))
                deadline = time.monotonic() + self.timeout
                while not out or out[-1].get("type") != "end":
                    if time.monotonic() > deadline:
                        raise ApiError(f"/stream: no end message in {self.timeout:g} s")
                    take(ws, 0.5)
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            if rcvd is None or rcvd.code != 1000:
                raise ApiError(f"/stream closed: {rcvd.reason if rcvd else 'connection lost'}"
                               f"{f' ({rcvd.code})' if rcvd else ''}") from None
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise ApiError(f"/stream: cannot connect to {self.base_url}: {exc}") from None
        return out


def _error_from_response(method: str, path: str, response: httpx.Response) -> ApiError:
    """``{"error", "detail"}`` bodies (the contract), FastAPI's ``{"detail": ...}`` or plain text."""
    status = response.status_code
    code = detail = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("error") if isinstance(body.get("error"), str) else None
        raw = body.get("detail", body.get("message"))
        if isinstance(raw, list):  # FastAPI validation errors: [{"loc", "msg", ...}]
            raw = "; ".join(
                f"{'.'.join(str(x) for x in item.get('loc', []))}: {item.get('msg')}" if isinstance(item, dict)
                else str(item) for item in raw
            )
        detail = None if raw is None else str(raw)
    if detail is None:
        detail = (response.text or response.reason_phrase or "").strip()[:300] or "no detail"
    label = f"{status} {code}" if code else f"{status} {response.reason_phrase}".strip()
    return ApiError(f"the API refused {method} {path}: {label}: {detail}", status=status, code=code, detail=detail)
