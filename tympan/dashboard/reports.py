"""Read the JSON the dashboard is given: ``GET /model`` → ``"diagnostics"`` and ``diagnose`` reports.

Both documents are parsed with their contract models, the same classes the producers validate
with (``docs/diagnostics.md``):

* ``"diagnostics"`` → :class:`tympan.contracts.diagnostics.Diagnostics` (``null`` or ``{}``: the
  bundle has none). The view derives what a hand-written, unversioned block leaves out
  (most-confused pairs and per-class accuracy from the matrix) and lists the parts it lacks.
* ``report.json`` (any JSON with ``"tympan_report"``) → :class:`tympan.contracts.report.DiagnoseReport`.
  JSON that is not a ``diagnose`` report (e.g. a bare ``FeatureDriftReport.to_dict()``) is only
  searched for a list of per-feature entries (``feature`` / ``name``, a p-value, an effect size,
  ``verdict``).

A document that does not validate raises :class:`ContractError`, whose one-line message names
the offending fields (an older report, a hand-edited bundle); the pages show it as an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import ValidationError

from tympan.contracts import contract_errors
from tympan.contracts.diagnostics import Diagnostics, Histogram, ReliabilityBins
from tympan.contracts.report import DiagnoseReport

__all__ = ["ContractError", "Diagnostics", "DiagnosticsView", "DiagnoseReport", "DriftReport",
           "parse_diagnostics", "parse_drift_report"]


class ContractError(ValueError):
    """A document that does not match its contract model; the message is one line."""


# -- diagnostics --------------------------------------------------------------------------------

@dataclass
class DiagnosticsView:
    """A validated ``"diagnostics"`` block plus what the pages derive from it."""

    doc: Diagnostics
    classes: list[str] | None = None
    matrix: np.ndarray | None = None
    #: ``{"true", "predicted", "count"}`` (+ ``"reverse_count"``, ``"total"`` for unordered pairs)
    most_confused: list[dict[str, Any]] = field(default_factory=list)
    per_class_accuracy: dict[str, float] = field(default_factory=dict)
    reliability: dict[str, ReliabilityBins] = field(default_factory=dict)
    ood_histograms: dict[str, Histogram] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def evaluated_on(self) -> str | None:
        return self.doc.evaluated_on

    @property
    def n_clips(self) -> int | None:
        return self.doc.n_clips

    @property
    def accuracy(self) -> float | None:
        if self.doc.accuracy is not None:
            return self.doc.accuracy
        return None if self.doc.confusion is None else self.doc.confusion.accuracy

    @property
    def ood_threshold(self) -> float | None:
        return None if self.doc.ood is None else self.doc.ood.threshold

    @property
    def ood_metrics(self) -> dict[str, Any]:
        m = None if self.doc.ood is None else self.doc.ood.metrics
        return {} if m is None else m.model_dump(mode="json", exclude_unset=True)


def _invalid(what: str, exc: ValidationError) -> ContractError:
    return ContractError(f"{what}: {contract_errors(exc)}")


def parse_diagnostics(raw: Any, classes: list[str] | None = None) -> DiagnosticsView | None:
    """``None`` when there are no diagnostics; else the validated block (:class:`ContractError` if it
    does not validate, or if its class names differ from ``classes``, the model's)."""
    if raw is None or (isinstance(raw, Mapping) and not raw):
        return None
    try:
        doc = Diagnostics.model_validate(raw)
    except ValidationError as exc:
        raise _invalid("the bundle's diagnostics do not match tympan.contracts.diagnostics.Diagnostics",
                       exc) from None
    out = DiagnosticsView(doc)
    conf = doc.confusion
    if conf is not None:
        if classes is not None and list(classes) != conf.class_names:
            raise ContractError("the bundle's diagnostics describe other classes than the model's "
                                f"({len(conf.class_names)} vs {len(classes)} classes)")
        out.classes = list(conf.class_names)
        out.matrix = np.asarray(conf.matrix, dtype=np.float64).reshape(len(conf.matrix), len(conf.matrix))
    else:
        out.missing.append("confusion matrix")

    if doc.most_confused:
        out.most_confused = [{"true": p.true, "predicted": p.pred, "count": p.count} for p in doc.most_confused]
    elif conf is not None and conf.confused_pairs:
        out.most_confused = [{"true": p.class_a, "predicted": p.class_b, "count": p.a_as_b,
                              "reverse_count": p.b_as_a, "total": p.total} for p in conf.confused_pairs]
    elif out.matrix is not None and out.classes is not None:
        off = out.matrix.copy()
        np.fill_diagonal(off, 0)
        for idx in np.argsort(-off, axis=None, kind="stable")[:10]:
            i, j = np.unravel_index(idx, off.shape)
            if off[i, j] <= 0:
                break
            out.most_confused.append({"true": out.classes[i], "predicted": out.classes[j], "count": int(off[i, j])})

    if doc.per_class_accuracy:
        out.per_class_accuracy = {k: float(v) for k, v in doc.per_class_accuracy.items() if v is not None}
    elif conf is not None and conf.per_class:
        out.per_class_accuracy = {row.class_: row.recall for row in conf.per_class}
    elif out.matrix is not None and out.classes is not None:
        support = out.matrix.sum(axis=1)
        acc = np.divide(np.diag(out.matrix), support, out=np.full(len(support), np.nan), where=support > 0)
        out.per_class_accuracy = {c: float(a) for c, a in zip(out.classes, acc) if np.isfinite(a)}
    if not out.per_class_accuracy:
        out.missing.append("per-class accuracy")

    if doc.reliability is not None:
        out.reliability = {k: c for k in ("before", "after") if (c := getattr(doc.reliability, k)) is not None}
    if not out.reliability:
        out.missing.append("reliability diagram")
    if doc.ood is not None:
        out.ood_histograms = dict(doc.ood.histograms)
    if not out.ood_histograms:
        out.missing.append("OOD score histograms")
    return out


# -- drift --------------------------------------------------------------------------------------

NAME_KEYS = ("feature", "name", "feature_name")
P_KEYS = ("p_value_bh", "p_value", "p", "pvalue", "p_adjusted")
EFFECT_KEYS = ("wasserstein_std", "effect_size", "effect", "mean_shift_std", "cohens_d", "psi")


@dataclass
class DriftReport:
    rows: list[dict[str, Any]]  # feature, verdict, p_value, p_name, effect_size, effect_name, message
    verdict: str | None
    n_reference: int | None
    n_field: int | None
    meta: dict[str, Any]
    criteria: dict[str, Any] = field(default_factory=dict)
    #: other checks of the report (``"checks"``: embedding, predictions, OOD rate, ...): name -> entry
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the validated ``report.json`` (``None`` for JSON that is not a diagnose report)
    report: DiagnoseReport | None = None

    @property
    def min_effect(self) -> float | None:
        v = self.criteria.get("min_effect_wasserstein_std", self.criteria.get("min_effect"))
        return float(v) if isinstance(v, int | float) else None


def _row(e: Mapping[str, Any]) -> dict[str, Any]:
    effect_name = next((k for k in EFFECT_KEYS if e.get(k) is not None), None)
    p_name = next((k for k in P_KEYS if e.get(k) is not None), None)
    name = next((e[k] for k in NAME_KEYS if e.get(k) is not None), None)
    return {
        "feature": str(name),
        "verdict": str(e.get("verdict", "")),
        "p_value": None if p_name is None else float(e[p_name]),
        "p_name": p_name,
        "effect_size": None if effect_name is None else float(e[effect_name]),
        "effect_name": effect_name,
        "message": str(e.get("message", "")),
    }


def _from_report(raw: Any) -> DriftReport | None:
    try:
        rep = DiagnoseReport.model_validate(raw)
    except ValidationError as exc:
        raise _invalid("this report.json does not match tympan.contracts.report.DiagnoseReport (written by "
                       "an older diagnose? run it again)", exc) from None
    if rep.checks is None:
        return None  # a model-only or robustness-only report: no drift
    checks = {name: c.model_dump(mode="json", exclude_unset=True)
              for name in type(rep.checks).model_fields if (c := getattr(rep.checks, name)) is not None}
    ac = rep.checks.acoustic
    meta = {"folder": rep.field.folder if rep.field else None, "generated": rep.generated, "bundle": rep.model.bundle}
    return DriftReport([_row(f.model_dump()) for f in rep.features or []], rep.verdict, rep.n_reference,
                       rep.n_field, meta, dict(ac.criteria) if ac is not None else {}, checks, rep)


def _is_feature_list(x: Any) -> bool:
    return (isinstance(x, list) and bool(x) and all(isinstance(e, Mapping) for e in x)
            and all(any(k in e for k in NAME_KEYS) for e in x)
            and any(any(k in e for k in (*P_KEYS, *EFFECT_KEYS, "verdict")) for e in x))


def _find_feature_list(obj: Any, depth: int = 0) -> tuple[list[dict], Mapping | None]:
    if depth > 6:
        return [], None
    if isinstance(obj, Mapping):
        for key in ("features", "feature_drift", "drift", "per_feature"):
            val = obj.get(key)
            if _is_feature_list(val):
                return val, obj
            if isinstance(val, Mapping):
                found, parent = _find_feature_list(val, depth + 1)
                if found:
                    return found, parent
        for val in obj.values():
            if _is_feature_list(val):
                return val, obj
        for val in obj.values():
            found, parent = _find_feature_list(val, depth + 1)
            if found:
                return found, parent
    elif isinstance(obj, list):
        if _is_feature_list(obj):
            return obj, None
        for val in obj:
            found, parent = _find_feature_list(val, depth + 1)
            if found:
                return found, parent
    return [], None


def _first(d: Any, *names: str) -> Any:
    if not isinstance(d, Mapping):
        return None
    return next((d[n] for n in names if d.get(n) is not None), None)


def parse_drift_report(raw: Any) -> DriftReport | None:
    """The per-feature drift entries of a ``diagnose`` report, or ``None`` if it has none.

    A ``report.json`` is validated (:class:`ContractError` if it does not match); other JSON is
    searched for a list of per-feature entries.
    """
    if isinstance(raw, Mapping) and "tympan_report" in raw:
        return _from_report(raw)
    entries, parent = _find_feature_list(raw)
    if not entries:
        if not (isinstance(raw, Mapping) and isinstance(raw.get("checks"), Mapping) and raw.get("checks")):
            return None
        parent = raw  # other checks only
    rows = [_row(e) for e in entries]
    src = parent if isinstance(parent, Mapping) else raw if isinstance(raw, Mapping) else {}
    verdict = _first(src, "verdict", "overall_verdict") or _first(raw, "verdict", "overall_verdict")
    n_ref, n_field = _first(src, "n_reference"), _first(src, "n_field")
    meta = {k: v for k, v in src.items() if isinstance(v, str | int | float) and k != "verdict"}
    checks_raw = _first(raw, "checks") or {}
    checks = {str(k): dict(v) for k, v in checks_raw.items() if isinstance(v, Mapping)} \
        if isinstance(checks_raw, Mapping) else {}
    criteria = _first(src, "criteria") or _first(checks.get("acoustic"), "criteria") or {}
    return DriftReport(rows, None if verdict is None else str(verdict),
                       None if n_ref is None else int(n_ref), None if n_field is None else int(n_field), meta,
                       dict(criteria) if isinstance(criteria, Mapping) else {}, checks)
