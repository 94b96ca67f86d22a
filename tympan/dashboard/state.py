"""What the pages share: the API client, the model description, the current clip and its results."""

from __future__ import annotations

import hashlib
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from tympan.bundle import BUNDLE_ENV  # noqa: F401 - the drift page reads it
from tympan.dashboard.client import ApiClient, ApiError
from tympan.datasets.esc50 import ENV_VAR as ESC50_ENV_VAR

ESC50_ENV = ESC50_ENV_VAR


@dataclass
class Context:
    api_url: str
    client: ApiClient | None
    model: dict[str, Any] | None  # GET /model, None when the API is unreachable
    model_error: str | None
    esc50_dir: str  # "" when none is set


@dataclass
class Clip:
    name: str
    data: bytes
    source: str  # "upload", "microphone", "example"

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.data).hexdigest()[:16]

    @property
    def mime(self) -> str:
        ext = Path(self.name).suffix.lower()
        return {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".opus": "audio/ogg",
                ".mp3": "audio/mpeg"}.get(ext) or mimetypes.guess_type(self.name)[0] or "audio/wav"


@st.cache_data(ttl=5, show_spinner=False)
def fetch_model(api_url: str, token: str | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """``GET /model`` (cached a few seconds): ``(model, None)`` or ``(None, error message)``."""
    try:
        return ApiClient(api_url, token=token or None).model(), None
    except ApiError as exc:
        return None, str(exc)


def valid_esc50_dir(path: str) -> bool:
    return bool(path) and (Path(path).expanduser() / "meta" / "esc50.csv").is_file()


def default_esc50_dir() -> str:
    return os.environ.get(ESC50_ENV, "")


def set_current(clip: Clip) -> None:
    st.session_state["current_clip"] = clip


def current() -> Clip | None:
    return st.session_state.get("current_clip")


def results_for(ctx: Context, clip: Clip, endpoint: str, top_k: int) -> tuple[dict[str, Any] | None, str | None]:
    """The API's answer for ``clip`` (``predict`` or ``explain``), asked once per clip, URL and k."""
    store: dict = st.session_state.setdefault("api_results", {})
    key = (endpoint, clip.sha, ctx.api_url, int(top_k))
    if key not in store:
        if ctx.client is None:
            return None, ctx.model_error or "no API client"
        try:
            call = ctx.client.predict if endpoint == "predict" else ctx.client.explain
            store[key] = (call(clip.data, clip.name, top_k=top_k), None)
        except ApiError as exc:
            return None, str(exc)  # not stored: a later rerun tries again
        if len(store) > 64:
            store.pop(next(iter(store)))
    return store[key]
