"""Read the JSON the dashboard is given: ``GET /model`` → ``"diagnostics"`` and ``diagnose`` reports.

Both readers are tolerant: every part is optional, a few spellings of each field are accepted
(the shape documented below, and the ``to_dict()`` shapes of :mod:`tympan.diagnostics`), and
whatever is missing is reported as missing rather than raising.

``"diagnostics"`` (what ``GET /model`` returns under that key; ``null`` when the bundle has none)::

    {
      "evaluated_on": "out-of-fold predictions, folds 1-5, 2000 ESC-50 clips",   # free text
      "n_clips": 2000, "accuracy": 0.81,        # optional (else confusion.accuracy)
      "confusion": {                          # ConfusionReport.to_dict() is accepted as is
        "class_names": ["dog", ...],          # or "classes"
        "matrix": [[int, ...], ...],          # rows = true class, columns = predicted
        "per_class": [{"class": "dog", "precision": .9, "recall": .8, "f1": .85, "support": 40}],
        "accuracy": 0.81,
        "confused_pairs": [{"class_a", "class_b", "a_as_b", "b_as_a", "total"}]
      },
      "most_confused": [{"true": "cat", "pred": "dog", "count": 7}],   # optional; else derived
      "per_class_accuracy": {"dog": 0.8, ...},                         # optional; else recall / matrix
      "reliability": {
        "before": {"confidence": [...], "accuracy": [...], "count": [...],   # per bin; also
                   "bin_lower": [...], "bin_upper": [...], "ece": 0.08},     # bin_confidence/...
        "after":  {... same ..., "temperature": 1.7}
      },
      "ood": {
        "score_name": "energy", "threshold": -4.1,
        "histograms": {"in":  {"edges": [...n+1], "counts": [...n], "label": "ESC-50 held-out"},
                       "out": {"edges": [...], "counts": [...], "label": "noise / other sets"}},
        "metrics": {"auroc": 0.9, "aupr": 0.8, "fpr_at_95_tpr": 0.3}
      }
    }

``"ood_histograms"`` at top level (``{"in": ..., "out": ...}``) is read too.

A drift report (``diagnose --out``): any JSON holding a list of per-feature entries. The list
is found under ``"features"`` (``FeatureDriftReport.to_dict()``), ``"feature_drift"``,
``"drift"`` or anywhere nested; each entry needs a name (``feature`` / ``name``) and any of
``p_value`` / ``p_value_bh`` / ``p``, an effect size (``wasserstein_std`` / ``effect_size`` /
``effect`` / ``mean_shift_std`` / ``psi``), ``verdict`` and ``message``. A top-level
``"verdict"`` (or ``"overall_verdict"``) is shown when present, ``n_reference`` / ``n_field``
beside the list, the test's ``criteria`` (``min_effect_wasserstein_std`` draws the practical-size
line), and ``"checks"`` (``{name: {"verdict", "message" | "summary", ...}}``: embedding MMD,
prediction shift, confidence shift, OOD rate) as a table of the other checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _get(d: Any, *names: str, default: Any = None) -> Any:
    if not isinstance(d, Mapping):
        return default
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return default


def _floats(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    try:
        arr = np.asarray([np.nan if v is None else v for v in x], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.ndim == 1 else None


@dataclass
class Reliability:
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray | None
    ece: float | None
    temperature: float | None = None


@dataclass
class Histogram:
    edges: np.ndarray
    counts: np.ndarray
    label: str


@dataclass
class Diagnostics:
    """The parts of ``"diagnostics"`` that could be read; ``missing`` names the others."""

    evaluated_on: str | None = None
    accuracy: float | None = None
    n_clips: int | None = None
    classes: list[str] | None = None
    matrix: np.ndarray | None = None
    most_confused: list[dict[str, Any]] = field(default_factory=list)
    per_class_accuracy: dict[str, float] = field(default_factory=dict)
    reliability: dict[str, Reliability] = field(default_factory=dict)
    ood_histograms: dict[str, Histogram] = field(default_factory=dict)
    ood_threshold: float | None = None
    ood_score_name: str | None = None
    ood_metrics: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def _reliability(d: Any) -> Reliability | None:
    if not isinstance(d, Mapping):
        return None
    conf = _floats(_get(d, "confidence", "bin_confidence", "mean_confidence"))
    acc = _floats(_get(d, "accuracy", "bin_accuracy"))
    if conf is None or acc is None or len(conf) != len(acc):
        return None
    count = _floats(_get(d, "count", "bin_count", "counts"))
    if count is not None and len(count) != len(conf):
        count = None
    ece = _get(d, "ece", "ECE")
    temp = _get(d, "temperature")
    return Reliability(conf, acc, count, None if ece is None else float(ece), None if temp is None else float(temp))


def _histogram(d: Any, default_label: str) -> Histogram | None:
    edges, counts = _floats(_get(d, "edges", "bin_edges")), _floats(_get(d, "counts", "count"))
    if edges is None or counts is None or len(edges) != len(counts) + 1:
        return None
    return Histogram(edges, counts, str(_get(d, "label", "name", default=default_label)))


def parse_diagnostics(raw: Any, classes: list[str] | None = None) -> Diagnostics | None:
    """``None`` when there are no diagnostics at all; else every part that could be read."""
    if not isinstance(raw, Mapping) or not raw:
        return None
    out = Diagnostics(evaluated_on=_get(raw, "evaluated_on", "measured_on", "description"))
    conf = _get(raw, "confusion", "confusion_matrix")
    if isinstance(conf, list):
        conf = {"matrix": conf}
    acc = _get(raw, "accuracy") if _get(raw, "accuracy") is not None else _get(conf, "accuracy")
    out.accuracy = float(acc) if isinstance(acc, int | float) else None
    n = _get(raw, "n_clips")
    out.n_clips = int(n) if isinstance(n, int | float) else None
    names = _get(conf, "class_names", "classes", "labels") or _get(raw, "classes") or classes
    matrix = _get(conf, "matrix")
    try:
        m = None if matrix is None else np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        m = None
    if m is not None and m.ndim == 2 and m.shape[0] == m.shape[1]:
        out.matrix = m
        out.classes = [str(c) for c in names] if names and len(names) == m.shape[0] else [str(i) for i in range(m.shape[0])]
    else:
        out.missing.append("confusion matrix")
        out.classes = [str(c) for c in names] if names else None

    pairs = _get(raw, "most_confused") or _get(conf, "confused_pairs", "most_confused") or []
    for p in pairs if isinstance(pairs, list) else []:
        if not isinstance(p, Mapping):
            continue
        if "true" in p and "pred" in p:
            out.most_confused.append({"true": str(p["true"]), "predicted": str(p["pred"]),
                                      "count": int(p.get("count", 0))})
        elif "class_a" in p and "class_b" in p:
            a, b = str(p["class_a"]), str(p["class_b"])
            ab, ba = int(p.get("a_as_b", 0)), int(p.get("b_as_a", 0))
            out.most_confused.append({"true": a, "predicted": b, "count": ab, "reverse_count": ba,
                                      "total": int(p.get("total", ab + ba))})
    if not out.most_confused and out.matrix is not None:
        off = out.matrix.copy()
        np.fill_diagonal(off, 0)
        for idx in np.argsort(-off, axis=None)[:10]:
            i, j = np.unravel_index(idx, off.shape)
            if off[i, j] <= 0:
                break
            out.most_confused.append({"true": out.classes[i], "predicted": out.classes[j], "count": int(off[i, j])})

    pca = _get(raw, "per_class_accuracy")
    if isinstance(pca, Mapping):
        out.per_class_accuracy = {str(k): float(v) for k, v in pca.items() if v is not None}
    elif isinstance(pca, list) and out.classes and len(pca) == len(out.classes):
        out.per_class_accuracy = dict(zip(out.classes, map(float, pca)))
    if not out.per_class_accuracy:
        per_class = _get(conf, "per_class")
        if isinstance(per_class, list):
            for row in per_class:
                name, rec = _get(row, "class", "name", "label"), _get(row, "recall", "accuracy")
                if name is not None and rec is not None:
                    out.per_class_accuracy[str(name)] = float(rec)
    if not out.per_class_accuracy and out.matrix is not None:
        support = out.matrix.sum(axis=1)
        acc = np.divide(np.diag(out.matrix), support, out=np.full(len(support), np.nan), where=support > 0)
        out.per_class_accuracy = dict(zip(out.classes, map(float, acc)))
    if not out.per_class_accuracy:
        out.missing.append("per-class accuracy")

    rel = _get(raw, "reliability", "calibration")
    for key, names_ in (("before", ("before", "uncalibrated", "raw")), ("after", ("after", "calibrated", "scaled"))):
        curve = _reliability(_get(rel, *names_))
        if curve is not None:
            out.reliability[key] = curve
    if not out.reliability:
        out.missing.append("reliability diagram")

    ood = _get(raw, "ood") or {}
    hists = _get(ood, "histograms") or _get(raw, "ood_histograms") or {}
    for key, names_ in (("in", ("in", "in_distribution", "id")), ("out", ("out", "out_of_distribution", "ood"))):
        h = _histogram(_get(hists, *names_), "in-distribution" if key == "in" else "out-of-distribution")
        if h is not None:
            out.ood_histograms[key] = h
    thr = _get(ood, "threshold")
    out.ood_threshold = None if thr is None else float(thr)
    out.ood_score_name = _get(ood, "score_name", "score")
    out.ood_metrics = dict(_get(ood, "metrics", default={}) or {})
    if not out.ood_histograms:
        out.missing.append("OOD score histograms")
    return out


# -- drift --------------------------------------------------------------------------------------

NAME_KEYS = ("feature", "name", "feature_name")
P_KEYS = ("p_value_bh", "p_value", "p", "pvalue", "p_adjusted")
EFFECT_KEYS = ("wasserstein_std", "effect_size", "effect", "mean_shift_std", "cohens_d", "psi")


@dataclass
class DriftReport:
    rows: list[dict[str, Any]]  # feature, verdict, p_value, effect_size, effect_name, message
    verdict: str | None
    n_reference: int | None
    n_field: int | None
    meta: dict[str, Any]
    criteria: dict[str, Any] = field(default_factory=dict)
    #: other checks of the report (``"checks"``: embedding, predictions, OOD rate, ...): name -> entry
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def min_effect(self) -> float | None:
        v = self.criteria.get("min_effect_wasserstein_std", self.criteria.get("min_effect"))
        return float(v) if isinstance(v, int | float) else None


def _is_feature_list(x: Any) -> bool:
    return (isinstance(x, list) and x and all(isinstance(e, Mapping) for e in x)
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


def parse_drift_report(raw: Any) -> DriftReport | None:
    """The per-feature drift entries of a ``diagnose`` report, or ``None`` if it has none."""
    entries, parent = _find_feature_list(raw)
    if not entries:
        if not (isinstance(raw, Mapping) and isinstance(raw.get("checks"), Mapping) and raw.get("checks")):
            return None
        parent = raw  # a report whose bundle has no acoustic reference: other checks only
    rows = []
    for e in entries:
        effect_name = next((k for k in EFFECT_KEYS if e.get(k) is not None), None)
        p_name = next((k for k in P_KEYS if e.get(k) is not None), None)
        rows.append({
            "feature": str(_get(e, *NAME_KEYS)),
            "verdict": str(e.get("verdict", "")),
            "p_value": None if p_name is None else float(e[p_name]),
            "p_name": p_name,
            "effect_size": None if effect_name is None else float(e[effect_name]),
            "effect_name": effect_name,
            "message": str(e.get("message", "")),
        })
    src = parent if isinstance(parent, Mapping) else raw if isinstance(raw, Mapping) else {}
    verdict = _get(src, "verdict", "overall_verdict") or _get(raw, "verdict", "overall_verdict")
    n_ref, n_field = _get(src, "n_reference"), _get(src, "n_field")
    meta = {k: v for k, v in src.items() if isinstance(v, str | int | float) and k not in ("verdict",)}
    checks_raw = _get(raw, "checks") or {}
    checks = {str(k): dict(v) for k, v in checks_raw.items() if isinstance(v, Mapping)} \
        if isinstance(checks_raw, Mapping) else {}
    criteria = _get(src, "criteria") or _get(checks.get("acoustic"), "criteria") or {}
    return DriftReport(rows, None if verdict is None else str(verdict),
                       None if n_ref is None else int(n_ref), None if n_field is None else int(n_field), meta,
                       dict(criteria) if isinstance(criteria, Mapping) else {}, checks)
