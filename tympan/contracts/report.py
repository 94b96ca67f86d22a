"""``report.json`` of ``diagnose`` as pydantic v2 models: the schema of that document.

:func:`tympan.diagnostics.report.write_report` validates the report with :class:`DiagnoseReport`
before writing anything; the dashboard's *Field drift* page (:mod:`tympan.dashboard.reports`)
and the HTML page read it through the same classes.

Which parts exist depends on ``kind`` (``"model"``, ``"field"``, ``"robustness"`` or a ``+`` join):
a ``field`` run has ``verdict``, ``overall``, ``n_reference``, ``n_field``, ``features``,
``field``, ``checks``, ``recording_format`` and ``per_file``; a ``robustness`` run has
``robustness``; ``fit`` exists with ``--fit``; ``model_diagnostics`` is always there (null when
the bundle stores none). A check the bundle's reference cannot run is absent from ``checks``
and named in ``overall.not_available``.

Unknown keys are errors (``extra="forbid"``). Open-ended parts are typed ``dict[str, Any]`` and
say so: a check's ``criteria`` (the test's parameters), the bundle's own ``model.ood`` and
``model.metrics``, a corruption's ``params`` and the ``fit`` summary.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tympan.contracts.diagnostics import Diagnostics

__all__ = [
    "REPORT_VERSION",
    "AcousticCheck",
    "AdaptationInfo",
    "CheckEstimate",
    "EstimatedAccuracy",
    "Gate",
    "Performance",
    "PerformanceCheck",
    "ClassShareChange",
    "ConfidenceCheck",
    "DiagnoseReport",
    "DriftChecks",
    "DurationSummary",
    "EmbeddingCheck",
    "FeatureDrift",
    "FieldSummary",
    "FileIssue",
    "FormatSummary",
    "LabelShiftCheck",
    "ModelInfo",
    "OODRateCheck",
    "OverallVerdict",
    "PerFileResult",
    "RecordingFormat",
    "Robustness",
    "RobustnessRow",
]

#: ``"tympan_report"`` of the report ``diagnose`` writes.
REPORT_VERSION = 1

Num = float | None  # to_jsonable writes NaN / inf as null
Verdict = str  # "drift", "negligible", "no drift", "insufficient data" (stats.drift constants)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)


# --------------------------------------------------------------------------- checks
class FeatureDrift(_Model):
    """:meth:`tympan.stats.drift.FeatureDrift.to_dict`: one acoustic feature."""

    feature: str
    verdict: Verdict
    ks_statistic: Num
    p_value: Num
    p_value_bh: Num
    wasserstein_std: Num
    psi: Num
    mean_shift_std: Num
    reference_mean: Num
    field_mean: Num
    message: str


class AcousticCheck(_Model):
    """:meth:`tympan.stats.drift.FeatureDriftReport.to_dict`."""

    check: Literal["feature_drift"]
    verdict: Verdict
    n_reference: int
    n_reference_stored: int
    n_field: int
    drifted_features: list[str]
    criteria: dict[str, Any]
    features: list[FeatureDrift]


class EmbeddingCheck(_Model):
    """:meth:`tympan.stats.drift.EmbeddingDriftReport.to_dict`."""

    check: Literal["embedding_drift"]
    verdict: Verdict
    mmd2: Num
    p_value: Num
    bandwidth: Num
    n_reference_used: int
    n_field: int
    n_field_used: int
    n_permutations: int
    message: str
    criteria: dict[str, Any]


class ClassShareChange(_Model):
    class_: str = Field(alias="class")
    reference_share: float
    field_share: float


class LabelShiftCheck(_Model):
    """:func:`tympan.stats.drift.label_shift` (predicted-class mix)."""

    check: Literal["label_shift"]
    verdict: Verdict
    n_reference: int
    n_field: int
    criteria: dict[str, Any]
    tvd: Num
    chi2: Num
    dof: int | None
    p_value: Num
    largest_changes: list[ClassShareChange]
    message: str


class ConfidenceCheck(_Model):
    """:func:`tympan.stats.drift.confidence_shift` on the calibrated top-1 probability.

    Without readable field clips only ``check``, ``verdict``, ``n_field`` and ``message`` exist.
    """

    check: Literal["confidence_shift"]
    verdict: Verdict
    n_field: int
    message: str
    feature: str | None = None
    ks_statistic: Num = None
    p_value: Num = None
    p_value_bh: Num = None
    wasserstein_std: Num = None
    psi: Num = None
    mean_shift_std: Num = None
    reference_mean: Num = None
    field_mean: Num = None
    n_reference: int | None = None
    criteria: dict[str, Any] | None = None
    what: str | None = None


class OODRateCheck(_Model):
    """:func:`tympan.stats.drift.ood_rate_shift` plus the threshold and score it used (also the
    ``background_rate`` check: the share of background-only units against the detector's rate)."""

    check: Literal["ood_rate", "background_rate"]
    verdict: Verdict
    n_field: int
    n_flagged: int
    expected_rate: float
    criteria: dict[str, Any]
    observed_rate: Num
    p_value: Num
    ci95: tuple[float, float] | None
    message: str
    threshold: float
    score: str


class EstimatedAccuracy(_Model):
    """``performance.estimated_accuracy``: label-free accuracy estimate with its 95% interval."""

    value: float
    low: float
    high: float
    method: str = Field(description='estimator: "atc_ne", "atc_mc", "mean_confidence" or "doc" (tympan.stats.performance)')


class CheckEstimate(EstimatedAccuracy):
    """:meth:`tympan.stats.performance.AccuracyEstimate.to_dict` inside the ``performance`` check."""

    n: int
    sampling_interval: tuple[float, float]
    systematic_error: float


class PerformanceCheck(_Model):
    """:func:`tympan.diagnostics.field.performance_check`: estimated accuracy vs held-out accuracy."""

    check: Literal["performance"]
    verdict: Verdict
    n_field: int
    heldout_accuracy: float
    margin: float
    estimated_accuracy: CheckEstimate | None
    drop: Num
    message: str
    fitted_on: str | None = None
    method_description: str | None = None
    stale: bool = False
    stale_reason: str | None = None
    criteria: dict[str, Any]


class DriftChecks(_Model):
    """``checks``: each present only when the bundle's reference allows it."""

    acoustic: AcousticCheck | None = None
    embedding: EmbeddingCheck | None = None
    predictions: LabelShiftCheck | None = None
    confidence: ConfidenceCheck | None = None
    ood_rate: OODRateCheck | None = None
    background_rate: OODRateCheck | None = None
    performance: PerformanceCheck | None = None


class Performance(_Model):
    """``performance``: how accurate the model probably is on the analysed recordings (no labels needed)."""

    estimated_accuracy: EstimatedAccuracy
    heldout_accuracy: float
    margin: float
    n: int
    interval: str = Field(description="how the interval was computed")
    method_description: str | None = None
    fitted_on: str | None = Field(None, description="the held-out clips the estimator was fitted on")
    validation: dict[str, Any] | None = Field(None, description="the estimator's validation (open-ended)")
    stale: bool = Field(False, description="fitted for other weights (e.g. before tympan adapt): reported, not voting")
    stale_reason: str | None = None
    note: str | None = None


class Gate(_Model):
    """``gate``: "the audio differs" vs "the model is affected", and the sentence the report opens with."""

    summary: str
    model_affected: bool
    audio_differs: bool
    model_checks: list[str]
    model_failing: list[str]
    audio_checks: list[str]
    audio_failing: list[str]
    format_notes: list[str]
    supporting_evidence: list[str]
    large_embedding_shift: bool = Field(False, description="the embedding check's MMD² reached large_embedding_mmd2: "
                                        "it votes for 'the model is affected' even beside an accuracy estimate")
    large_embedding_mmd2: float | None = None


class AdaptationInfo(_Model):
    """``adaptation``: what an adapted bundle was adapted on; null for an unadapted bundle."""

    method: str | None
    adapted_from: str | None
    field_dir: str | None
    n_files: int | None
    date: str | None
    files_sha256: str | None = None
    description: str
    refitted: list[str] = Field(default_factory=list, description="trust parts refitted after adaptation")
    stale: list[str] = Field(default_factory=list, description="trust parts fitted for the unadapted model")


class OverallVerdict(_Model):
    """:func:`tympan.stats.drift.overall_verdict` plus the significance levels used."""

    verdict: str
    components: dict[str, str]
    drifting_checks: list[str]
    negligible_checks: list[str]
    insufficient_checks: list[str]
    reasons: list[str]
    alpha_per_check: float
    family_wise_alpha: float
    not_available: list[str]
    note: str | None = Field(None, description="only with fewer readable recordings than every check needs")


# --------------------------------------------------------------------------- field folder
class FileIssue(_Model):
    file: str
    reason: str
    file_b64: str | None = Field(None, description="the name's exact bytes (base64) when ``file`` is its display "
                                                  "form (not valid UTF-8, or holding control characters)")


class FieldSummary(_Model):
    folder: str
    n_files: int
    n_analysed: int
    n_unreadable: int
    unreadable: list[FileIssue]
    n_skipped: int
    skipped: list[FileIssue]


class DurationSummary(_Model):
    min: float
    median: float
    max: float
    total: float


class FormatSummary(_Model):
    """File formats of a set of recordings (``reference.format`` in the bundle has ``fitted_on``)."""

    n: int
    sample_rates: dict[str, int]
    channels: dict[str, int]
    formats: dict[str, int]
    duration_s: DurationSummary | None
    fitted_on: str | None = None


class RecordingFormat(_Model):
    check: Literal["recording_format"]
    reference: FormatSummary | None
    field: FormatSummary
    notes: list[str]
    message: str


class PerFileResult(_Model):
    file: str
    predicted: str
    confidence: float
    energy: float
    out_of_distribution: bool
    windows: int
    ood_score: float | None = Field(None, description="the bundle's deciding OOD score (when not energy)")
    background: bool | None = Field(None, description="background only, no sound event (bundles with a detector)")
    file_b64: str | None = Field(None, description="the name's exact bytes (base64) when ``file`` is its display "
                                                  "form (not valid UTF-8, or holding control characters)")


# --------------------------------------------------------------------------- robustness
class RobustnessRow(_Model):
    corruption: str
    name: str | None = Field(description="tympan.corruptions name; null for the clean row")
    params: dict[str, Any]
    description: str
    accuracy: Num
    accuracy_drop: Num
    ece: Num
    nll: Num
    brier: Num
    mean_confidence: Num
    ood_flagged: Num
    background_flagged: Num = Field(None, description="share called background (bundles with a background model)")


class Robustness(_Model):
    """:func:`tympan.diagnostics.robustness.run_sweep`."""

    evaluated_on: str
    n_clips: int
    sample_rate: int
    temperature: float
    ood_threshold: float | None
    seed: int
    rows: list[RobustnessRow]
    notes: str


# --------------------------------------------------------------------------- the report
class ModelInfo(_Model):
    name: str
    arch: str
    version: str = Field(description="first 12 hex digits of sha256(bundle.json)")
    bundle: str
    temperature: float
    ood: dict[str, Any] = Field(description="the bundle's ood block (tympan.bundle)")
    classes: list[str]
    metrics: dict[str, Any] = Field(description="the bundle's metrics (open-ended)")


_FIELD_PARTS = ("verdict", "overall", "n_field", "features", "field", "checks", "recording_format", "per_file")
# summary / performance / gate are written by every field run since the trust gate; older reports lack them


class DiagnoseReport(_Model):
    """``report.json`` written by ``diagnose --out DIR``."""

    tympan_report: Literal[1]
    generated: str
    kind: str = Field(description='"model", "field", "robustness" or a "+" join, e.g. "field+robustness"')
    model: ModelInfo
    fit: dict[str, Any] | None = Field(None, description="only with --fit: the calibrate summary")
    verdict: str | None = None
    overall: OverallVerdict | None = None
    n_reference: int | None = None
    n_field: int | None = None
    features: list[FeatureDrift] | None = None
    field: FieldSummary | None = None
    checks: DriftChecks | None = None
    recording_format: RecordingFormat | None = None
    per_file: list[PerFileResult] | None = None
    robustness: Robustness | None = None
    model_diagnostics: Diagnostics | None = Field(description="bundle.extra['diagnostics'], null when none")
    summary: str | None = Field(None, description="field runs: the one sentence the report opens with")
    performance: Performance | None = Field(None, description="field runs: estimated accuracy (null without an estimator)")
    gate: Gate | None = None
    adaptation: AdaptationInfo | None = None
    coverage: dict[str, Any] | None = Field(None, description="field runs: how much of the folder was analysed "
                                            "(files, hours of audio, units, failed share, acoustic sample)")
    by: str | None = Field(None, description="field runs with --by: site, day or hour")
    groups: list[dict[str, Any]] | None = Field(None, description="field runs with --by: every check per group")
    exit_code: int
    fail_on: Literal["model", "audio", "drift", "ood", "any", "never"]

    @model_validator(mode="after")
    def _parts_of_kind(self) -> DiagnoseReport:
        kinds = set(self.kind.split("+"))
        unknown = kinds - {"model", "field", "robustness"}
        if unknown:
            raise ValueError(f"kind: unknown part(s) {', '.join(sorted(unknown))}")
        missing = [k for k in _FIELD_PARTS if "field" in kinds and getattr(self, k) is None]
        if "robustness" in kinds and self.robustness is None:
            missing.append("robustness")
        if missing:
            raise ValueError(f"a {self.kind!r} report needs {', '.join(missing)}")
        return self
