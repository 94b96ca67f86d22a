"""Plotly figures of the dashboard's own pages (a clip, its windows, the network, acoustic features),
built from plain data so they can be tested without Streamlit.

The diagnostics figures (reliability, confusion, OOD histograms, per-class accuracy, drift effect
sizes) are in :mod:`tympan.figures`, shared with the HTML report of ``diagnose``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

HEAT = "Viridis"


def _layout(fig: go.Figure, title: str | None = None, height: int | None = None) -> go.Figure:
    fig.update_layout(title=title, margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    if height:
        fig.update_layout(height=height)
    return fig


def topk_bar(top_k: Sequence[Mapping[str, Any]], title: str = "Calibrated top-k") -> go.Figure:
    labels = [str(t.get("label")) for t in top_k][::-1]
    probs = [float(t.get("probability", 0.0)) for t in top_k][::-1]
    fig = go.Figure(go.Bar(x=probs, y=labels, orientation="h", text=[f"{p:.1%}" for p in probs],
                           textposition="auto", marker_color="#3b7dd8"))
    fig.update_xaxes(range=[0, 1], tickformat=".0%", title="probability (softmax(logits / T))")
    return _layout(fig, title, height=80 + 36 * len(labels))


def waveform(data: Sequence[float], sample_rate: float, title: str = "Waveform") -> go.Figure:
    y = np.asarray(data, dtype=np.float64)
    t = np.arange(len(y)) / float(sample_rate or 1)
    fig = go.Figure(go.Scattergl(x=t, y=y, mode="lines", line=dict(width=1, color="#555")))
    fig.update_xaxes(title="time (s)")
    fig.update_yaxes(title="amplitude")
    return _layout(fig, title, height=220)


def spectrogram(data: Any, *, hop_length: float | None = None, sample_rate: float | None = None,
                title: str = "Log-mel spectrogram", colorscale: str = HEAT, zlabel: str = "log power",
                y_label: str = "mel band") -> go.Figure:
    z = np.asarray(data, dtype=np.float64)
    if z.ndim != 2:
        z = np.atleast_2d(z.reshape(z.shape[-2], z.shape[-1]) if z.ndim > 2 else z)
    if hop_length and sample_rate:
        x = np.arange(z.shape[1]) * float(hop_length) / float(sample_rate)
        xt = "time (s)"
    else:
        x, xt = np.arange(z.shape[1]), "frame"
    fig = go.Figure(go.Heatmap(z=z, x=x, colorscale=colorscale, colorbar=dict(title=zlabel)))
    fig.update_xaxes(title=xt)
    fig.update_yaxes(title=y_label)
    return _layout(fig, title, height=300)


def saliency_overlay(logmel: Any, saliency: Any, *, hop_length: float | None = None,
                     sample_rate: float | None = None, title: str = "Saliency over the spectrogram") -> go.Figure:
    base = np.asarray(logmel, dtype=np.float64)
    sal = np.asarray(saliency, dtype=np.float64)
    x = (np.arange(base.shape[1]) * float(hop_length) / float(sample_rate)) if hop_length and sample_rate \
        else np.arange(base.shape[1])
    fig = go.Figure(go.Heatmap(z=base, x=x, colorscale="Greys", showscale=False, reversescale=True))
    if sal.shape != base.shape and sal.ndim == 2 and sal.size:
        # resample the saliency grid onto the spectrogram's (nearest neighbour)
        ri = np.minimum((np.arange(base.shape[0]) * sal.shape[0]) // base.shape[0], sal.shape[0] - 1)
        ci = np.minimum((np.arange(base.shape[1]) * sal.shape[1]) // base.shape[1], sal.shape[1] - 1)
        sal = sal[np.ix_(ri, ci)]
    fig.add_trace(go.Heatmap(z=sal, x=x, colorscale="Hot", opacity=0.55, colorbar=dict(title="saliency")))
    fig.update_xaxes(title="time (s)" if hop_length and sample_rate else "frame")
    fig.update_yaxes(title="mel band")
    return _layout(fig, title, height=320)


def window_timeline(windows: Sequence[Mapping[str, Any]], threshold: float | None = None) -> go.Figure:
    """Top-1 class and probability per window, with each window's OOD score on a second axis."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    mids, labels, probs, ood, flags = [], [], [], [], []
    for w in windows:
        start, end = float(w.get("start_s", 0.0)), float(w.get("end_s", 0.0))
        top = (w.get("top_k") or [{}])[0]
        mids.append((start + end) / 2)
        labels.append(str(top.get("label", "?")))
        probs.append(float(top.get("probability", 0.0)))
        ood.append(w.get("ood_score"))
        flags.append(bool(w.get("out_of_distribution")))
    for label in dict.fromkeys(labels):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        fig.add_trace(go.Bar(x=[mids[i] for i in idx], y=[probs[i] for i in idx], name=label,
                             text=[label + (" (OOD)" if flags[i] else "") for i in idx] if len(windows) <= 30
                             else None, textposition="inside",
                             marker_line_width=[3 if flags[i] else 0 for i in idx], marker_line_color="red"),
                      secondary_y=False)
    if any(s is not None for s in ood):
        fig.add_trace(go.Scatter(x=mids, y=ood, mode="lines+markers", name="OOD score",
                                 line=dict(color="black", dash="dot")), secondary_y=True)
        if threshold is not None:
            fig.add_hline(y=threshold, line_dash="dash", line_color="red", secondary_y=True,
                          annotation_text="OOD threshold")
    fig.update_yaxes(title="top-1 probability", range=[0, 1], secondary_y=False)
    fig.update_yaxes(title="OOD score (higher = more OOD)", secondary_y=True)
    fig.update_xaxes(title="window centre (s)")
    return _layout(fig, "Per-window predictions", height=320)


def feature_maps(stage: Mapping[str, Any], max_channels: int = 8) -> go.Figure:
    """Mean activation of one stage plus its strongest channels, side by side."""
    mean = np.asarray(stage.get("mean") or [[0.0]], dtype=np.float64)
    tops = [np.asarray(c, dtype=np.float64) for c in (stage.get("top_channels") or [])][:max_channels]
    n = 1 + len(tops)
    cols = min(n, 5)
    rows = int(np.ceil(n / cols))
    idx = list(stage.get("top_channel_indices") or [])
    titles = ["mean over channels"] + [f"channel {idx[i]}" if i < len(idx) else f"top channel #{i + 1}"
                                       for i in range(len(tops))]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.03, vertical_spacing=0.12)
    for k, z in enumerate([mean, *tops]):
        r, c = divmod(k, cols)
        fig.add_trace(go.Heatmap(z=z, colorscale=HEAT, showscale=False), row=r + 1, col=c + 1)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    shape = stage.get("shape")
    _layout(fig, f"{stage.get('stage', 'stage')} — shape {shape} (channels, mel, frames)" if shape
            else str(stage.get("stage")), height=200 * rows + 70)
    fig.update_layout(margin=dict(t=70))
    return fig


# -- acoustic features --------------------------------------------------------------------------

def _user_line(fig: go.Figure, value: float | None, horizontal: bool = False) -> None:
    if value is None or not np.isfinite(value):
        return
    kw = dict(line_dash="dash", line_color="red", line_width=2, annotation_text="your clip",
              annotation_font_color="red")
    (fig.add_hline(y=value, **kw) if horizontal else fig.add_vline(x=value, **kw))


def class_box(frame, column: str, label: str, *, user_value: float | None = None, log: bool = False,
              order: list[str] | None = None, title: str | None = None) -> go.Figure:
    """One box per class (sorted by median), with the user's clip as a horizontal line."""
    med = frame.groupby("class")[column].median().sort_values()
    classes = order or list(med.index)
    fig = go.Figure()
    for c in classes:
        vals = frame.loc[frame["class"] == c, column]
        fig.add_trace(go.Box(y=vals, name=c, boxpoints=False, showlegend=False, marker_color="#3b7dd8"))
    _user_line(fig, user_value, horizontal=True)
    fig.update_yaxes(title=label, type="log" if log else "linear")
    fig.update_xaxes(tickangle=-60)
    return _layout(fig, title or f"{label} per class", height=460)


def frequency_spread(frame, *, user: Mapping[str, float] | None = None) -> go.Figure:
    """Median spectral centroid per class with the median bandwidth as a ± bar (the seed's view)."""
    g = frame.groupby("class")[["spectral_centroid_mean", "spectral_bandwidth_mean"]].median()
    g = g.sort_values("spectral_centroid_mean")
    fig = go.Figure(go.Scatter(
        x=g["spectral_centroid_mean"], y=list(g.index), mode="markers", name="class median",
        error_x=dict(type="data", array=g["spectral_bandwidth_mean"], color="#9bb8e8", thickness=6, width=0),
        marker=dict(color="#3b7dd8", size=8)))
    if user and "spectral_centroid_mean" in user:
        _user_line(fig, user["spectral_centroid_mean"])
        bw = user.get("spectral_bandwidth_mean")
        if bw is not None:
            fig.add_vrect(x0=user["spectral_centroid_mean"] - bw, x1=user["spectral_centroid_mean"] + bw,
                          fillcolor="red", opacity=0.07, line_width=0)
    fig.update_xaxes(title="spectral centroid ± bandwidth (Hz)")
    return _layout(fig, "Frequency spread per class", height=max(300, 22 * len(g) + 80))


def mel_heatmap(class_mean: np.ndarray, classes: list[str], mel_freqs: np.ndarray,
                user_profile: np.ndarray | None = None) -> go.Figure:
    keep = ~np.isnan(class_mean).all(axis=1)
    z = class_mean[keep]
    names = [c for c, k in zip(classes, keep) if k]
    if user_profile is not None:
        z = np.vstack([user_profile[None], z])
        names = ["▶ your clip", *names]
    fig = go.Figure(go.Heatmap(z=z, x=[f"{f:.0f}" for f in mel_freqs], y=names, colorscale=HEAT,
                               colorbar=dict(title="mean log-mel")))
    fig.update_xaxes(title="mel band centre (Hz)", tickangle=-45, nticks=16)
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, "Mean log-mel per class", height=max(320, 18 * len(names) + 120))


def centroid_distribution(frame, classes: list[str], *, user_value: float | None = None) -> go.Figure:
    """One density ridge per class (kernel density of the clips' centroids), the user's clip as a line."""
    fig = go.Figure()
    for c in reversed(classes):  # first class on top
        fig.add_trace(go.Violin(x=frame.loc[frame["class"] == c, "spectral_centroid_mean"], name=c,
                                orientation="h", side="positive", width=1.8, spanmode="hard", points="all", pointpos=-0.15,
                                jitter=0.1, marker=dict(size=3), meanline_visible=True, showlegend=False))
    _user_line(fig, user_value)
    fig.update_xaxes(title="spectral centroid (Hz)")
    return _layout(fig, "Spectral centroid distribution", height=max(300, 70 * len(classes) + 100))
