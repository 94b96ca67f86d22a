"""The JSON messages of the server's WebSocket ``/stream`` (contract: ``docs/api.md``).

Client -> server: binary frames of raw interleaved PCM; text frames :class:`StreamStart` (the
format, unless the query string gives it) and :class:`StreamEnd` (flush: the last windows and
open events come back, then the server closes with 1000). Server -> client: text frames
:class:`StreamReady`, :class:`StreamWindow`, :class:`StreamEventOpen` (an event confirmed: opened
and lasted its minimum duration; figures so far), :class:`StreamEventMessage` (an event closed:
final figures; the same ``label`` and ``start_s`` as its open), :class:`StreamWarning`,
:class:`StreamDrift` (the drift check's verdict changed; only with ``tympan serve --alerts`` and a
``[drift]`` table) and, last, :class:`StreamSummary`. Anything wrong closes the socket with a
code and a reason.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tympan.contracts.events import DriftStatus, Event, Window

__all__ = ["StreamDrift", "StreamEnd", "StreamEventMessage", "StreamEventOpen", "StreamReady", "StreamStart",
           "StreamSummary", "StreamWarning", "StreamWindow"]


class StreamStart(BaseModel):
    """The PCM the client will send (also accepted as query parameters of the same names)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["start"] = "start"
    sample_rate: int = Field(16_000, ge=1_000, le=384_000, description="Hz of the PCM sent")
    channels: int = Field(1, ge=1, le=32, description="interleaved channels (downmixed to mono)")
    format: Literal["s16le", "f32le"] = Field("s16le", description="little-endian 16-bit ints or 32-bit floats")
    windows: bool = Field(True, description="send a message per model window (False: events only)")
    name: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$",
                             examples=["front-door"],
                             description="the stream's name: its events' ``source`` in the messages, the server's "
                                         "event store and alerts (default: a generated ``stream-<12 hex digits>``)")


class StreamEnd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["end"] = "end"


class StreamReady(BaseModel):
    type: Literal["ready"] = "ready"
    sample_rate: int = Field(description="the model's rate (the PCM is resampled to it)")
    window_s: float
    hop_s: float
    classes: int
    name: str | None = Field(None, description="the stream's name (the start's, or the generated one)")


class StreamWindow(Window):
    """A model window (:class:`~tympan.contracts.events.Window`; ``start_time`` is null)."""

    type: Literal["window"] = "window"


class StreamEventMessage(BaseModel):
    type: Literal["event"] = "event"
    event: Event


class StreamEventOpen(BaseModel):
    """An event confirmed, about a window hop after its sound (its close follows)."""

    type: Literal["event_open"] = "event_open"
    event: Event


class StreamDrift(BaseModel):
    """The stream's drift check changed its verdict: ``status.affected`` true, the model is
    affected (the same check as ``tympan listen``: :mod:`tympan.live.drift`); false, recovered."""

    type: Literal["drift"] = "drift"
    status: DriftStatus


class StreamWarning(BaseModel):
    type: Literal["warning"] = "warning"
    detail: str


class StreamSummary(BaseModel):
    type: Literal["end"] = "end"
    windows: int
    events: int
    audio_s: float
    trailing_bytes: int = Field(0, description="bytes of a last, incomplete PCM frame (dropped)")
