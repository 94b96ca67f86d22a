"""Every diagnostics figure, once: typed data in, plotly figure out.

Like scikit-learn's ``CalibrationDisplay.from_predictions`` these draw from the numbers, never
from a model: the contract models of :mod:`tympan.contracts` (what the bundle and ``report.json``
store) or plain arrays. The HTML report (:mod:`tympan.diagnostics.report`) and the dashboard
(:mod:`tympan.dashboard`) both call this module, so a figure looks the same in both.

Layer rule: this module imports plotly, numpy and :mod:`tympan.contracts` only (no torch, no
dashboard, no diagnostics pipeline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tympan.contracts.diagnostics import Confusion, Histogram, OODDiagnostics, Reliability, ReliabilityBins
from tympan.contracts.report import Performance, Robustness

__all__ = [
    "VERDICT_COLOURS",
    "accuracy_estimate",
    "class_mix",
    "confusion_heatmap",
    "drift_effects",
    "ood_histograms",
    "per_class_accuracy",
    "reliability_diagram",
    "robustness_sweep",
    "score_histograms",
]

BLUE, RED, GREY = "#3b7dd8", "#d8573b", "#999999"
#: Colour of each drift verdict (``tympan.stats.drift`` constants), shared by report and dashboard.
VERDICT_COLOURS = {"drift": RED, "negligible": "#e0b040", "no drift": BLUE,
                   "insufficient data": GREY, "not available": GREY}


def _layout(fig: go.Figure, title: str | None, height: int | None = None, **margin: int) -> go.Figure:
    fig.update_layout(title=title, margin=dict(l=10, r=10, t=50 if title else 10, b=40) | margin)
    if height:
        fig.update_layout(height=height)
    return fig


def _floats(values: Sequence[float | None] | None) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in (values or [])], dtype=np.float64)


# --------------------------------------------------------------------------- calibration
def _curve_name(key: str, curve: ReliabilityBins) -> str:
    if key == "before":
        name = "before temperature scaling"
    else:
        name = "after temperature scaling"
        if curve.temperature is not None:
            name += f" (T = {curve.temperature:.2f}" + (", cross-fitted)" if curve.cross_fitted else ")")
    if curve.ece is not None:
        name += f", ECE {curve.ece:.3f}"
    return name


def reliability_diagram(reliability: Reliability, *, title: str = "Reliability diagram") -> go.Figure:
    """Accuracy vs mean confidence per bin, before and after scaling; marker area grows with the
    bin's clip count (a big gap in a bin of 3 clips means little). Empty bins are not drawn.

    Traces: the "perfect calibration" diagonal, then one line per curve present, named with its
    ECE (and temperature for "after").
    """
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                               line=dict(color="grey", dash="dash"), hoverinfo="skip"))
    for key, colour in (("before", RED), ("after", BLUE)):
        curve: ReliabilityBins | None = getattr(reliability, key)
        if curve is None:
            continue
        conf, acc = _floats(curve.confidence), _floats(curve.accuracy)
        count = None if curve.count is None else np.asarray(curve.count, dtype=np.float64)
        ok = np.isfinite(conf) & np.isfinite(acc)
        if count is not None:
            ok &= count > 0
        if count is None or not ok.any():
            size: Any = 8
            hover = "confidence %{x:.3f}<br>accuracy %{y:.3f}<extra></extra>"
            custom = None
        else:
            size = 5 + 15 * np.sqrt(count[ok] / count[ok].max())
            hover = "confidence %{x:.3f}<br>accuracy %{y:.3f}<br>%{customdata} clips<extra></extra>"
            custom = count[ok].astype(int)
        fig.add_trace(go.Scatter(x=conf[ok], y=acc[ok], mode="lines+markers", name=_curve_name(key, curve),
                                 line=dict(color=colour), marker=dict(color=colour, size=size),
                                 customdata=custom, hovertemplate=hover))
    fig.update_xaxes(title="mean confidence in bin (top-1 probability); marker size = clips in the bin",
                     range=[0, 1])
    fig.update_yaxes(title="accuracy in bin", range=[0, 1])
    fig.update_layout(legend=dict(x=0.01, y=0.99))
    return _layout(fig, title, height=420)


# --------------------------------------------------------------------------- OOD / score histograms
def _overlaid(hists: Sequence[tuple[Histogram, str, str]], *, threshold: float | None, title: str,
              xlabel: str, threshold_label: str) -> go.Figure:
    """Histograms as shares of their own clips (sets of different size stay comparable)."""
    fig = go.Figure()
    for h, name, colour in hists:
        e, c = np.asarray(h.edges, np.float64), np.asarray(h.counts, np.float64)
        n = h.n if h.n else int(c.sum())
        fig.add_trace(go.Bar(x=(e[:-1] + e[1:]) / 2, y=c / max(c.sum(), 1), width=np.diff(e), opacity=0.55,
                             name=f"{name} (n={n})", marker_color=colour, customdata=c.astype(int),
                             hovertemplate="%{x:.3g}: %{customdata} clips (%{y:.1%})<extra></extra>"))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="black", annotation_text=threshold_label)
    # legend under the chart: long set names beside it squeezed the bars to a third of the width
    fig.update_layout(barmode="overlay", legend=dict(orientation="h", yanchor="top", y=-0.22, x=0, xanchor="left"))
    fig.update_xaxes(title=xlabel)
    fig.update_yaxes(title="share of clips")
    return _layout(fig, title, height=420, b=110)


def ood_histograms(ood: OODDiagnostics, *, title: str | None = None,
                   threshold_label: str | None = None) -> go.Figure:
    """The stored OOD-score histograms: in-distribution (held-out) vs the OOD set, threshold dashed.

    Traces: one bar trace per histogram present, "in" first.
    """
    score = ood.score_name or ood.score or "OOD"
    hists = [(h, h.label or default, colour) for key, default, colour in
             (("in", "in-distribution", BLUE), ("out", "out-of-distribution", RED))
             if (h := ood.histograms.get(key)) is not None]
    return _overlaid(hists, threshold=ood.threshold, threshold_label=threshold_label or f"{score} threshold",
                     title=title or f"{score.capitalize()} OOD score (higher = more out-of-distribution)",
                     xlabel=f"{score} score")


def score_histograms(reference: Sequence[float] | np.ndarray | None, field: Sequence[float] | np.ndarray, *,
                     title: str, xlabel: str, threshold: float | None = None, bins: int = 30,
                     threshold_label: str = "OOD threshold",
                     reference_label: str = "reference (held-out fold, unseen in training)",
                     field_label: str = "field") -> go.Figure:
    """Per-clip scores of the reference vs the field on shared bins (threshold dashed if given).

    Traces: reference (when given and non-empty), then field.
    """
    fld = np.asarray(field, np.float64)
    ref = None if reference is None else np.asarray(reference, np.float64)
    pooled = fld if ref is None else np.r_[ref, fld]
    lo, hi = (float(pooled.min()), float(pooled.max())) if pooled.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    hists = []
    for v, name, colour in ((ref, reference_label, BLUE), (fld, field_label, RED)):
        if v is not None and len(v):
            c, _ = np.histogram(v, bins=edges)
            hists.append((Histogram(edges=edges.tolist(), counts=c.tolist(), n=len(v)), name, colour))
    return _overlaid(hists, threshold=threshold, threshold_label=threshold_label, title=title, xlabel=xlabel)


# --------------------------------------------------------------------------- confusion
def confusion_heatmap(confusion: Confusion, *, normalize: bool = True,
                      title: str = "Confusion matrix (rows = true class)") -> go.Figure:
    """Heatmap, rows = true class, columns = predicted; with ``normalize`` each row is divided by its
    support (a recall profile) and the raw count is in the hover. Every class is labelled; fonts
    and size scale so 50 classes stay readable.

    Traces: one heatmap with ``z`` of shape (K, K).
    """
    m = np.asarray(confusion.matrix, dtype=np.float64)
    names = list(confusion.class_names)
    z = m / np.maximum(m.sum(axis=1, keepdims=True), 1) if normalize else m
    n = len(names)
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=names, customdata=m.astype(int), colorscale="Blues", zmin=0, zmax=1 if normalize else None,
        xgap=1 if n <= 60 else 0, ygap=1 if n <= 60 else 0,
        hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata} clips"
                      + ("<br>share of row %{z:.2f}" if normalize else "") + "<extra></extra>",
        colorbar=dict(title="share of row" if normalize else "clips")))
    font = dict(size=8 if n > 40 else 9 if n > 25 else 11)
    fig.update_yaxes(title="true class", autorange="reversed", tickmode="array", tickvals=names, tickfont=font)
    fig.update_xaxes(title="predicted class", tickangle=-60, tickmode="array", tickvals=names, tickfont=font)
    return _layout(fig, title, height=max(420, 15 * n + 220), b=120)


def per_class_accuracy(values: Mapping[str, float | None], *, title: str = "Per-class accuracy") -> go.Figure:
    """Horizontal bars, worst class at the bottom (classes with no clips are left out)."""
    items = sorted(((k, v) for k, v in values.items() if v is not None), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h", marker_color=BLUE))
    fig.update_xaxes(title="accuracy (recall)", range=[0, 1], tickformat=".0%")
    return _layout(fig, title, height=max(300, 16 * len(items) + 100))


# --------------------------------------------------------------------------- drift
def drift_effects(features: Sequence[str], effects: Sequence[float | None], verdicts: Sequence[str], *,
                  effect_name: str = "wasserstein_std", min_effect: float | None = None,
                  p_values: Sequence[float | None] | None = None,
                  title: str = "Effect size per acoustic feature (colour = verdict)") -> go.Figure:
    """One bar per feature (largest effect on top), coloured by verdict; ``min_effect`` draws the
    practical-size line. Features without an effect size are left out.

    Traces: one horizontal bar trace.
    """
    rows = [(f, float(e), str(v), None if p_values is None else p_values[i])
            for i, (f, e, v) in enumerate(zip(features, effects, verdicts)) if e is not None]
    rows.sort(key=lambda r: r[1])
    unit = "Wasserstein distance in reference standard deviations" if effect_name == "wasserstein_std" \
        else f"effect size ({effect_name})"
    fig = go.Figure(go.Bar(
        x=[r[1] for r in rows], y=[r[0] for r in rows], orientation="h",
        marker_color=[VERDICT_COLOURS.get(r[2], GREY) for r in rows], text=[r[2] for r in rows],
        textposition="auto", customdata=[[r[3]] for r in rows],
        hovertemplate="%{y}<br>" + effect_name + " %{x:.3g}"
                      + ("<br>p %{customdata[0]:.2g}" if p_values is not None else "") + "<extra></extra>"))
    if min_effect is not None:
        fig.add_vline(x=min_effect, line_dash="dash", line_color="black",
                      annotation_text=f"practical size ({min_effect:g})")
    fig.update_xaxes(title=unit)
    return _layout(fig, title, height=max(320, 22 * len(rows) + 120))


def class_mix(classes: Sequence[str], reference_counts: Sequence[int] | np.ndarray,
              field_counts: Sequence[int] | np.ndarray, *, title: str = "Predicted-class distribution") -> go.Figure:
    """Share of clips predicted as each class, reference (held-out) vs field; classes neither
    side predicts are left out. Traces: reference, field."""
    rc, fc = np.asarray(reference_counts, np.float64), np.asarray(field_counts, np.float64)
    r, f = rc / max(rc.sum(), 1), fc / max(fc.sum(), 1)
    order = [i for i in np.argsort(-(f + r), kind="stable") if r[i] > 0 or f[i] > 0]
    fig = go.Figure([
        go.Bar(x=[classes[i] for i in order], y=r[order], name=f"reference (held-out, n={int(rc.sum())})",
               marker_color=BLUE),
        go.Bar(x=[classes[i] for i in order], y=f[order], name=f"field (n={int(fc.sum())})", marker_color=RED),
    ])
    fig.update_layout(barmode="group")
    fig.update_xaxes(tickangle=-60)
    fig.update_yaxes(title="share of clips")
    return _layout(fig, title, height=420, b=120)


# --------------------------------------------------------------------------- robustness
def robustness_sweep(robustness: Robustness,
                     *, title: str = "Robustness under controlled corruptions") -> go.Figure:
    """Accuracy and ECE per corruption, side by side. Traces: accuracy bars, ECE bars."""
    names = [r.corruption for r in robustness.rows]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy", "ECE (bundle temperature)"))
    fig.add_trace(go.Bar(x=names, y=[r.accuracy for r in robustness.rows], marker_color=BLUE, name="accuracy"),
                  row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=[r.ece for r in robustness.rows], marker_color=RED, name="ECE"), row=1, col=2)
    fig.update_layout(showlegend=False)
    fig.update_xaxes(tickangle=-60)
    return _layout(fig, title, height=420, t=60, b=140)


# --------------------------------------------------------------------------- estimated accuracy
def accuracy_estimate(performance: Performance, *, title: str = "Estimated accuracy on these recordings") -> go.Figure:
    """The label-free accuracy estimate with its 95% interval, against the held-out accuracy and the gate's margin."""
    ea = performance.estimated_accuracy
    held, margin = performance.heldout_accuracy, performance.margin
    colour = RED if ea.high < held - margin else BLUE
    fig = go.Figure(go.Scatter(
        x=[ea.value * 100], y=["estimated"], mode="markers", marker=dict(size=14, color=colour),
        error_x=dict(type="data", symmetric=False, array=[(ea.high - ea.value) * 100],
                     arrayminus=[(ea.value - ea.low) * 100], thickness=3, width=10),
        name=f"{ea.method}: {ea.value:.1%} ({ea.low:.1%}-{ea.high:.1%})",
        hovertemplate="%{x:.1f} %<extra></extra>"))
    fig.add_vline(x=held * 100, line=dict(color=GREY, dash="dash"),
                  annotation_text=f"held-out {held:.1%}", annotation_position="top")
    fig.add_vrect(x0=0, x1=(held - margin) * 100, fillcolor=RED, opacity=0.08, line_width=0,
                  annotation_text="model affected", annotation_position="bottom left")
    fig.update_xaxes(title="accuracy (%)", range=[0, 100])
    fig.update_layout(showlegend=True, legend=dict(orientation="h", y=-0.5))
    return _layout(fig, title, height=230)

