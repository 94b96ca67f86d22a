"""Pydantic v2 models of the HTTP contract (``docs/api.md``), with the examples ``/docs`` shows."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from tympan.contracts.diagnostics import Diagnostics
from tympan.contracts.prediction import (  # noqa: F401 - re-exported: the HTTP contract
    AudioInfo,
    ClassScore,
    ExplainResponse,
    FeatureMap,
    LogMelInfo,
    ModelRef,
    OODInfo,
    PredictResponse,
    Prediction,
    Saliency,
    WaveformInfo,
    WindowPrediction,
)

_DIGITS = re.compile(r"[+-]?[0-9]+")


def _decimal_digits(value: Any) -> Any:
    """Text must be plain decimal digits: pydantic (like ``int()``) reads ``"3_0"`` as 30."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError("must be an integer written in decimal digits")
    return value


#: an int that, sent as text (a form field, a JSON string), is only decimal digits
DigitsInt = Annotated[int, BeforeValidator(_decimal_digits)]

_WAV_B64 = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAgD4AAAB9AAACABAAZGF0YQAAAAA="


class PredictRequest(BaseModel):
    """A recording as base64 of the file's bytes (any format libsndfile reads)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"audio_base64": _WAV_B64 + "...", "top_k": 3, "return_logits": False}]}
    )

    audio_base64: str = Field(
        ..., min_length=1,
        description="base64 of the audio file's bytes (WAV, FLAC, OGG/Vorbis, Opus, MP3, ...); "
                    "whitespace and a data: URI prefix are allowed",
    )
    top_k: DigitsInt = Field(3, ge=1, description="how many classes to return, 1..n_classes")
    return_logits: bool = Field(False, description="include the raw (uncalibrated) logits of every window")


class ErrorResponse(BaseModel):
    error: str = Field(description="machine-readable code", examples=["not_audio"])
    detail: str = Field(description="one line naming the problem",
                        examples=["audio bytes: not a recognised audio format"])


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arch: str
    version: str
    classes: list[str]
    frontend: dict[str, Any]
    temperature: float
    ood: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    diagnostics: Diagnostics | None = Field(
        description="held-out diagnostics stored in the bundle (bundle.extra['diagnostics']), or null")


class Status(BaseModel):
    status: str = Field(examples=["ok"])
