"""The JSON messages of the server's WebSocket ``/stream`` (contract: ``docs/api.md``).

Client -> server: binary frames of raw interleaved PCM; text frames :class:`StreamStart` (the
format, unless the query string gives it) and :class:`StreamEnd` (flush: the last windows and
open events come back, then the server closes with 1000). Server -> client: text frames
:class:`StreamReady`, :class:`StreamWindow`, :class:`StreamEventOpen` (an event confirmed: opened
and lasted its minimum duration; figures so far), :class:`StreamEventMessage` (an event closed:
final figures; the same ``label`` and ``start_s`` as its open), :class:`StreamWarning`
and, last, :class:`StreamSummary`. Anything wrong closes the socket with a code and a reason.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tympan.contracts.events import Event, Window

__all__ = ["StreamEnd", "StreamEventMessage", "StreamEventOpen", "StreamReady", "StreamStart", "StreamSummary", "StreamWarning",
           "StreamWindow"]


class StreamStart(BaseModel):
    """The PCM the client will send (also accepted as query parameters of the same names)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["start"] = "start"
    sample_rate: int = Field(16_000, ge=1_000, le=384_000, description="Hz of the PCM sent")
    channels: int = Field(1, ge=1, le=32, description="interleaved channels (downmixed to mono)")
    format: Literal["s16le", "f32le"] = Field("s16le", description="little-endian 16-bit ints or 32-bit floats")
    windows: bool = Field(True, description="send a message per model window (False: events only)")


class StreamEnd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["end"] = "end"


class StreamReady(BaseModel):
    type: Literal["ready"] = "ready"
    sample_rate: int = Field(description="the model's rate (the PCM is resampled to it)")
    window_s: float
    hop_s: float
    classes: int


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


class StreamWarning(BaseModel):
    type: Literal["warning"] = "warning"
    detail: str


class StreamSummary(BaseModel):
    type: Literal["end"] = "end"
    windows: int
    events: int
    audio_s: float
    trailing_bytes: int = Field(0, description="bytes of a last, incomplete PCM frame (dropped)")
