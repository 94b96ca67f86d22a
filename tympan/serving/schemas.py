"""Pydantic v2 models of the HTTP contract (``docs/api.md``), with the examples ``/docs`` shows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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
    top_k: int = Field(3, ge=1, description="how many classes to return, 1..n_classes")
    return_logits: bool = Field(False, description="include the raw (uncalibrated) logits of every window")


class ClassScore(BaseModel):
    label: str = Field(examples=["dog"])
    index: int = Field(examples=[0])
    probability: float = Field(description="calibrated: softmax(logits / temperature)", examples=[0.91])


class ModelRef(BaseModel):
    name: str = Field(examples=["esc50-mn04"])
    arch: str = Field(examples=["mn04"])
    version: str = Field(description="first 12 hex digits of sha256(bundle.json)", examples=["3fa2c1d09b7e"])


class OODInfo(BaseModel):
    score_name: str = Field("energy", examples=["energy"])
    score: float = Field(description="energy = -T*logsumexp(logits/T); higher = more out-of-distribution",
                         examples=[-7.2])
    threshold: float | None = Field(description="fitted on held-out clips; null when none was fitted",
                                    examples=[-4.1])
    out_of_distribution: bool = Field(examples=[False])


class AudioInfo(BaseModel):
    duration_s: float = Field(description="as received", examples=[5.0])
    sample_rate: int = Field(description="as received", examples=[44100])
    channels: int = Field(examples=[1])
    format: str = Field(examples=["WAV"])
    subtype: str = Field(examples=["PCM_16"])


class WindowPrediction(BaseModel):
    start_s: float = Field(examples=[0.0])
    end_s: float = Field(examples=[5.0])
    top_k: list[ClassScore]
    ood_score: float = Field(examples=[-7.2])
    out_of_distribution: bool = Field(examples=[False])


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: ModelRef
    top_k: list[ClassScore] = Field(description="aggregated over windows (see `aggregate`)")
    ood: OODInfo
    uncertain: bool = Field(description="out of distribution, or top-1 probability below the floor, "
                                        "or top-1/top-2 margin below the minimum")
    uncertain_reasons: list[str] = Field(
        description="why `uncertain` is set; also the note 'no OOD threshold fitted' when the bundle "
                    "has no threshold (that note alone does not set `uncertain`)",
        examples=[["top-1 probability 0.310 < 0.4"]])
    audio: AudioInfo
    windows: list[WindowPrediction] = Field(description="one per 50%-overlapping model window")
    aggregate: str = Field(examples=["mean of window probabilities; OOD score = mean of window energy scores"])
    logits: list[list[float]] | None = Field(
        None, description="raw logits (before temperature), one row per window; only with return_logits")
    temperature: float = Field(examples=[1.0])
    timing_ms: float = Field(description="server time for this request", examples=[12.3])


class ErrorResponse(BaseModel):
    error: str = Field(description="machine-readable code", examples=["not_audio"])
    detail: str = Field(description="one line naming the problem",
                        examples=["audio bytes: not a recognised audio format"])


class LogMelInfo(BaseModel):
    data: list[list[float]] = Field(description="n_mels rows x frames columns, as the model saw it")
    n_mels: int
    frames: int
    sample_rate: int
    hop_length: int
    f_min: float
    f_max: float


class WaveformInfo(BaseModel):
    data: list[float] = Field(description="first window, peak-preserving downsample to <= 4000 points")
    sample_rate: int = Field(description="rate of the model's audio (not of `data`)")
    duration_s: float
    points_per_second: float = Field(description="rate of `data`")


class FeatureMap(BaseModel):
    stage: str
    shape: list[int] = Field(description="[C, H, W] of the stage's output")
    map_shape: list[int] = Field(description="[h, w] of the maps below (average-pooled to <= 64 x 128)")
    mean: list[list[float]] = Field(description="mean over channels")
    top_channel_indices: list[int]
    top_channels: list[list[list[float]]] = Field(description="the most active channels")


class Saliency(BaseModel):
    method: str = Field(examples=["grad-cam"])
    target: str = Field(examples=["dog"])
    target_index: int
    stage: str | None = Field(description="stage whose activations Grad-CAM weights")
    data: list[list[float]] = Field(description="n_mels x frames, 0..1")


class ExplainResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: ModelRef
    logmel: LogMelInfo
    waveform: WaveformInfo
    feature_maps: list[FeatureMap]
    saliency: Saliency
    top_k: list[ClassScore]
    timing_ms: float


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
    diagnostics: dict[str, Any] | None = Field(
        description="held-out diagnostics stored in the bundle (bundle.extra['diagnostics']), or null")


class Status(BaseModel):
    status: str = Field(examples=["ok"])
