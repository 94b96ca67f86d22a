"""The bundle's held-out diagnostics block (``bundle.extra["diagnostics"]``, ``GET /model`` →
``"diagnostics"``) as pydantic v2 models: the schema of that document.

The producer (:func:`tympan.diagnostics.heldout.heldout_diagnostics`) validates what it writes
with :class:`Diagnostics`; the dashboard (:mod:`tympan.dashboard.reports`), the HTML report and
:mod:`tympan.figures` read it through the same classes.

Two kinds of documents validate:

* **version 1** (``"version": 1``, what ``tympan calibrate`` writes): complete. Every part below
  is required except the OOD-set parts (``ood.histograms.out``, ``ood.metrics``,
  ``ood.baseline_max_softmax``, ``ood.out_set``), which exist only when ``calibrate`` was given
  ``--ood-dir``. A missing part is a validation error naming it.
* **unversioned** (hand-written or older blocks): any part may be missing; what is present must
  have the right types. The older spellings the dashboard always accepted are read as aliases
  (``confusion.classes``, ``reliability.*.bin_confidence`` / ``bin_accuracy`` / ``bin_count``,
  a top-level ``most_confused`` list of ``{"true", "pred", "count"}`` and a top-level
  ``ood_histograms``); they are never written.

Unknown keys are errors (``extra="forbid"``): a producer that starts writing a new field has to
add it here first. Field names are the JSON keys written today.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "DIAGNOSTICS_VERSION",
    "CalibrationMetrics",
    "CalibrationSummary",
    "ConfusedPair",
    "Confusion",
    "CrossFitGroup",
    "CrossFitSummary",
    "Diagnostics",
    "DirectedConfusion",
    "ECENoiseFloor",
    "Histogram",
    "OODBaseline",
    "OODDiagnostics",
    "OODMetrics",
    "PerClassScores",
    "Reliability",
    "ReliabilityBins",
]

#: The ``"version"`` of the block :func:`tympan.diagnostics.heldout.heldout_diagnostics` writes.
DIAGNOSTICS_VERSION = 1

Num = float | None  # to_jsonable writes NaN / inf as null


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)


# --------------------------------------------------------------------------- confusion
class PerClassScores(_Model):
    """One row of ``confusion.per_class`` (sklearn ``precision_recall_fscore_support``)."""

    class_: str = Field(alias="class")
    precision: float
    recall: float
    f1: float
    support: int


class ConfusedPair(_Model):
    """Two classes the model mixes up, counted in both directions, with the clips behind them."""

    class_a: str
    class_b: str
    a_as_b: int = Field(description="true class_a predicted as class_b")
    b_as_a: int = Field(description="true class_b predicted as class_a")
    total: int
    clip_ids_a_as_b: list[str] = Field(default_factory=list)
    clip_ids_b_as_a: list[str] = Field(default_factory=list)


class DirectedConfusion(_Model):
    """Older top-level ``most_confused`` entry (read, never written)."""

    true: str
    pred: str
    count: int


class Confusion(_Model):
    """:meth:`tympan.stats.confusion.ConfusionReport.to_dict`: rows = true class, columns = predicted."""

    class_names: list[str] = Field(validation_alias=AliasChoices("class_names", "classes"))
    matrix: list[list[int]]
    matrix_orientation: str | None = None
    per_class: list[PerClassScores] | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    confused_pairs: list[ConfusedPair] | None = None

    @model_validator(mode="after")
    def _square(self) -> Confusion:
        k = len(self.matrix)
        if any(len(row) != k for row in self.matrix):
            raise ValueError(f"matrix must be square, got {k} rows of lengths "
                             f"{sorted({len(r) for r in self.matrix})}")
        if len(self.class_names) != k:
            raise ValueError(f"class_names has {len(self.class_names)} names for a {k} x {k} matrix")
        return self


# --------------------------------------------------------------------------- reliability
class ReliabilityBins(_Model):
    """Per-bin reliability (``ReliabilityCurve.to_dict()`` + ECE and temperature); empty bins hold null."""

    strategy: Literal["uniform", "quantile"] | None = None
    bin_lower: list[Num] | None = None
    bin_upper: list[Num] | None = None
    confidence: list[Num] = Field(validation_alias=AliasChoices("confidence", "bin_confidence"))
    accuracy: list[Num] = Field(validation_alias=AliasChoices("accuracy", "bin_accuracy"))
    count: list[int] | None = Field(None, validation_alias=AliasChoices("count", "bin_count"))
    ece: Num = None
    temperature: float | None = None
    cross_fitted: bool | None = None

    @model_validator(mode="after")
    def _lengths(self) -> ReliabilityBins:
        n = len(self.confidence)
        for name in ("accuracy", "count", "bin_lower", "bin_upper"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"{name} has {len(v)} bins, confidence has {n}")
        return self


class Reliability(_Model):
    before: ReliabilityBins | None = Field(None, description="T = 1")
    after: ReliabilityBins | None = Field(None, description="scaled by the fitted temperature (cross-fitted)")


# --------------------------------------------------------------------------- calibration
class CalibrationMetrics(_Model):
    """:func:`tympan.stats.calibration.calibration_metrics`."""

    n_samples: int
    n_bins: int
    accuracy: Num
    mean_confidence: Num
    ece: Num
    adaptive_ece: Num
    mce: Num
    brier: Num
    nll: Num


class ECENoiseFloor(_Model):
    mean: float
    q95: float
    n_draws: int
    what: str


class CrossFitGroup(_Model):
    group: str
    temperature: float
    n_held_out: int


class CrossFitSummary(_Model):
    """:meth:`tympan.stats.temperature.CrossFitResult.to_dict`."""

    per_group: list[CrossFitGroup]
    temperature_mean: float
    temperature_std: float
    held_out_before: dict[str, Num]
    held_out_after: dict[str, Num]


class CalibrationSummary(_Model):
    """The ``summary`` of :func:`tympan.stats.temperature.calibrate_heldout`."""

    temperature: float
    temperature_at_bound: bool
    protocol: str
    n_bins: int
    before: CalibrationMetrics
    after: CalibrationMetrics = Field(description="cross-fitted")
    after_in_sample: CalibrationMetrics = Field(description="T fitted and scored on the same clips (optimistic)")
    ece_noise_floor: ECENoiseFloor
    cross_fit: CrossFitSummary


# --------------------------------------------------------------------------- OOD
class Histogram(_Model):
    """:func:`tympan.stats.describe.histogram`: ``len(edges) == len(counts) + 1``."""

    edges: list[float]
    counts: list[int]
    label: str | None = None
    n: int | None = None

    @model_validator(mode="after")
    def _edges(self) -> Histogram:
        if len(self.edges) != len(self.counts) + 1:
            raise ValueError(f"{len(self.edges)} edges for {len(self.counts)} counts (need counts + 1)")
        return self


class OODMetrics(_Model):
    """Energy score, held-out fold vs the OOD set (OOD = positive class)."""

    auroc: Num
    aupr: Num = None
    fpr_at_95_tpr: Num = None
    positive: str | None = None
    n_in: int | None = None
    n_out: int | None = None
    flagged_at_threshold: Num = None


class OODBaseline(_Model):
    """Max-softmax score (same temperature) on the same sets, for comparison."""

    auroc: Num
    aupr: Num
    fpr_at_95_tpr: Num


class OODDiagnostics(_Model):
    score_name: str | None = None
    score: str | None = None
    temperature: float | None = None
    threshold: float | None = None
    tpr: float | None = None
    score_orientation: str | None = None
    in_distribution_accepted: float | None = None
    histograms: dict[Literal["in", "out"], Histogram] = Field(default_factory=dict)
    metrics: OODMetrics | None = None
    baseline_max_softmax: OODBaseline | None = None
    out_set: str | None = None


# --------------------------------------------------------------------------- the block
_V1_REQUIRED = ("evaluated_on", "n_clips", "accuracy", "confusion", "per_class_accuracy", "reliability",
                "calibration", "ood")


class Diagnostics(_Model):
    """``bundle.extra["diagnostics"]``: held-out confusion, calibration and OOD numbers."""

    version: Literal[1] | None = Field(None, description="1 for every block tympan writes; absent = hand-written")
    evaluated_on: str | None = None
    n_clips: int | None = None
    accuracy: float | None = None
    confusion: Confusion | None = None
    most_confused: list[DirectedConfusion] | None = Field(None, description="older spelling, never written")
    per_class_accuracy: dict[str, Num] | None = None
    reliability: Reliability | None = None
    calibration: CalibrationSummary | None = None
    ood: OODDiagnostics | None = None

    @model_validator(mode="before")
    @classmethod
    def _older_ood_histograms(cls, data: Any) -> Any:
        if isinstance(data, dict) and "ood_histograms" in data:
            data = dict(data)
            hists = data.pop("ood_histograms")
            ood = dict(data.get("ood") or {})
            ood.setdefault("histograms", hists)
            data["ood"] = ood
        return data

    @model_validator(mode="after")
    def _complete_when_versioned(self) -> Diagnostics:
        if self.version is None:
            return self
        missing = [k for k in _V1_REQUIRED if getattr(self, k) is None]
        c = self.confusion
        if c is not None:
            missing += [f"confusion.{k}" for k in ("matrix_orientation", "per_class", "accuracy", "macro_f1",
                                                   "confused_pairs") if getattr(c, k) is None]
        r = self.reliability
        if r is not None:
            missing += [f"reliability.{k}" for k in ("before", "after") if getattr(r, k) is None]
        o = self.ood
        if o is not None:
            missing += [f"ood.{k}" for k in ("score_name", "threshold", "tpr") if getattr(o, k) is None]
            if "in" not in o.histograms:
                missing.append("ood.histograms.in")
        if missing:
            raise ValueError(f"a version {self.version} diagnostics block needs {', '.join(missing)}")
        if self.most_confused is not None:
            raise ValueError("most_confused is an older spelling; version 1 blocks use confusion.confused_pairs")
        return self
