"""The JSON contract of a sound event: a run of windows in which one class was present.

Produced by :mod:`tympan.inference.events` (the one definition, used by ``tympan predict
--format events``, the live listener, its store and alerts, and the server's ``/stream``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["Alert", "Event"]


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


class Alert(BaseModel):
    """What an alert sink receives (the webhook's POST body, the command's stdin, the MQTT payload)."""

    rule: str = Field(examples=["sirens at night"])
    event: Event
    trusted: bool = Field(description="no window inside the event was out of distribution or background only")
    clip: str | None = Field(None, description="file name of the saved audio around the event, in the clips folder")
    raised_at: str = Field(description="ISO 8601 wall-clock time the alert was raised")
