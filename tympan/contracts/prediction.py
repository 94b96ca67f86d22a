"""The JSON contracts of a prediction (pydantic v2): what the one prediction path returns,
what ``/predict`` and ``/explain`` answer, and what the dashboard parses, from one definition."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BackgroundInfo", "AudioInfo", "ClassScore", "ExplainResponse", "FeatureMap", "LogMelInfo", "ModelRef", "OODInfo", "PredictResponse", "Prediction", "Saliency", "WaveformInfo", "WindowPrediction"]


class ClassScore(BaseModel):
    label: str = Field(examples=["dog"])
    index: int = Field(examples=[0])
    probability: float = Field(description="calibrated: softmax(logits / temperature)", examples=[0.91])


class ModelRef(BaseModel):
    name: str = Field(examples=["esc50-mn04"])
    arch: str = Field(examples=["mn04"])
    version: str = Field(description="first 12 hex digits of sha256(bundle.json)", examples=["3fa2c1d09b7e"])


class OODInfo(BaseModel):
    score_name: str = Field("energy", description="the score that decides OOD: `probe` (the outlier probe on "
                            "the embedding, the shipped model's), `energy+knn` (the larger of the standardised "
                            "energy and k-NN embedding distance) or `energy`", examples=["probe"])
    score: float = Field(description="the `score_name` score (probe: its log-odds of \"out\"; energy: "
                                     "-T*logsumexp(logits/T)); higher = more out-of-distribution", examples=[-7.2])
    threshold: float | None = Field(description="the `score_name` score's threshold, fitted on held-out clips; "
                                    "null when none was fitted", examples=[-3.160])
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
    background: bool | None = Field(None, description="only background (hiss, hum, rumble, room tone), no "
                                    "foreground event; null when the bundle has no background detector")
    background_score: float | None = Field(None, description="probability of background (0..1)")


class BackgroundInfo(BaseModel):
    background: bool = Field(description="true when no window holds a foreground sound event", examples=[False])
    share_of_windows: float = Field(description="share of the recording's windows that are background only",
                                    examples=[0.0])
    threshold: float = Field(description="background probability above which a window is background")


class Prediction(BaseModel):
    """What the one prediction path (:func:`tympan.inference.predict_recording`) returns for a
    recording: calibrated top-k, OOD score and flag, uncertainty and its reasons, per window and
    aggregated. Serving, ``tympan predict``, ``diagnose`` and adaptation all read this."""

    top_k: list[ClassScore] = Field(description="aggregated over windows (see `aggregate`)")
    ood: OODInfo
    background: BackgroundInfo | None = Field(
        None, description="whether the recording holds a foreground sound event; null when the bundle has no "
                          "background detector")
    uncertain: bool = Field(description="out of distribution, background only, or top-1 probability below "
                                        "the floor, or top-1/top-2 margin below the minimum")
    uncertain_reasons: list[str] = Field(
        description="why `uncertain` is set; also the note 'no OOD threshold fitted' when the bundle "
                    "has no threshold (that note alone does not set `uncertain`)",
        examples=[["top-1 probability 0.310 < 0.4"]])
    windows: list[WindowPrediction] = Field(description="one per model window")
    aggregate: str = Field(examples=["mean of window probabilities; OOD score = mean of window outlier-probe scores"])
    logits: list[list[float]] | None = Field(
        None, description="raw logits (before temperature), one row per window; only with return_logits")
    temperature: float = Field(examples=[1.0])


class PredictResponse(Prediction):
    """The ``/predict`` body: the :class:`Prediction` plus which model, what audio, how long."""

    model_config = ConfigDict(protected_namespaces=())

    model: ModelRef
    audio: AudioInfo
    warnings: list[str] = Field(default_factory=list,
                                description="what the decoder had to salvage (e.g. a truncated file)")
    timing_ms: float = Field(description="server time for this request", examples=[12.3])


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
