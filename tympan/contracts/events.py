"""The JSON contract of a sound event: a run of windows in which one class was present.

Produced by :mod:`tympan.inference.events` (the one definition, used by ``tympan predict
--format events``, the live listener, its store and alerts, and the server's ``/stream``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = ["Alert", "DriftStatus", "Event", "Window"]


class Event(BaseModel):
    label: str = Field(examples=["siren"])
    index: int = Field(description="class index in the bundle's class list", examples=[42])
    start_s: float = Field(description="seconds from the start of the recording or stream", examples=[12.5])
    end_s: float = Field(examples=[20.0])
    duration_s: float = Field(examples=[7.5])
    peak_s: float = Field(description="centre of the window with the highest probability", examples=[15.0])
    peak_probability: float = Field(description="highest calibrated probability of the class in the event",
                                    examples=[0.93])
    mean_probability: float = Field(description="mean calibrated probability over the event's windows",
                                    examples=[0.81])
    windows: int = Field(description="model windows inside the event", examples=[3])
    ood_windows: int = Field(0, description="windows inside flagged out of distribution (they never open an event)")
    background_windows: int = Field(0, description="windows inside flagged background only (they never open one)")
    uncertain_windows: int = Field(0, description="windows inside flagged uncertain (low confidence or margin, "
                                                  "OOD or background)")
    max_ood_score: float = Field(description="highest OOD score of the windows inside (higher = more unusual)")
    source: str | None = Field(None, description="file or stream the event comes from")
    start_time: str | None = Field(None, description="ISO 8601 wall-clock start, when the source's start is known")

    @property
    def trusted(self) -> bool:
        """No window inside was out of distribution or background only."""
        return self.ood_windows == 0 and self.background_windows == 0


class Window(BaseModel):
    """One model window of a live stream (``tympan listen --verbose``, the store's window rows,
    ``/stream``'s window messages)."""

    start_s: float = Field(description="stream seconds (at the model's rate) from the first sample")
    end_s: float
    label: str = Field(description="the top class")
    probability: float = Field(description="its calibrated probability")
    ood_score: float
    out_of_distribution: bool
    background: bool
    uncertain: bool
    start_time: str | None = Field(None, description="ISO 8601 wall-clock start, when the stream's start is known")


class DriftStatus(BaseModel):
    """The listener's sliding-window check (:mod:`tympan.live.drift`): the rules of ``diagnose``'s
    "the model is affected" over the last ``window_s`` of windows."""

    window_s: float = Field(description="how far back the check looks, in stream seconds")
    start_s: float = Field(description="stream time of the oldest window counted")
    end_s: float
    windows: int
    affected: bool = Field(description="any of: accuracy dropped, OOD rate or background rate too high")
    reasons: list[str] = Field(default_factory=list, description="one line per failing check")
    estimated_accuracy: float | None = Field(None, description="label-free estimate (the bundle's estimator)")
    accuracy_interval: tuple[float, float] | None = None
    heldout_accuracy: float | None = None
    ood_rate: float | None = None
    expected_ood_rate: float | None = None
    background_rate: float | None = None
    expected_background_rate: float | None = None


class Alert(BaseModel):
    """What an alert sink receives (the webhook's POST body, the command's stdin, the MQTT payload)."""

    kind: Literal["event", "model_affected"] = Field("event", description="an event matched a rule, or the drift "
                                                     "check found the model affected")
    rule: str = Field(examples=["sirens at night"])
    event: Event | None = Field(None, description="the event (kind event)")
    drift: DriftStatus | None = Field(None, description="the check (kind model_affected)")
    phase: Literal["open", "close"] = Field("close", description="open: the event was confirmed (it opened and "
                                            "lasted its minimum duration; figures so far); close: it ended (final "
                                            "figures)")
    update: bool = Field(False, description="this close follows an open alert of the same rule and event (same "
                                            "source, label and start_s): its final figures and clip")
    trusted: bool = Field(description="no window inside the event was out of distribution or background only")
    clip: str | None = Field(None, description="file name of the saved audio around the event, in the clips folder "
                                               "(an open alert has none yet: its close update carries it)")
    raised_at: str = Field(description="ISO 8601 wall-clock time the alert was raised")
