"""``diagnose`` reports: one ``report.json`` with every number and one self-contained HTML page.

The HTML embeds plotly.js once, inline (``include_plotlyjs=True`` on the first figure only), so
it opens offline and from an e-mail attachment. Both files are written atomically
(:func:`tympan.io.write_text_atomic`): a reader sees the previous report or the new one, whole.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tympan.io import to_jsonable

__all__ = ["REPORT_VERSION", "render_html", "write_report"]

REPORT_VERSION = 1
JSON_NAME = "report.json"
HTML_NAME = "report.html"

PALETTE = {"drift": "#d8573b", "negligible": "#e0b040", "no drift": "#3b7dd8",
           "insufficient data": "#999999", "not available": "#999999"}


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        if not np.isfinite(v):
            return "–"
        a = abs(float(v))
        return f"{v:.2e}" if (a != 0 and (a < 1e-3 or a >= 1e5)) else f"{v:.{digits}g}"
    return _e(v)


def _badge(verdict: Any) -> str:
    v = str(verdict)
    return f'<span class="badge" style="background:{PALETTE.get(v, "#666")}">{_e(v)}</span>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], raw_cols: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for r in rows:
        cells = "".join(f"<td>{c if i in raw_cols else _fmt(c)}</td>" for i, c in enumerate(r))
        body.append(f"<tr>{cells}</tr>")
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


class _Figures:
    """Turns plotly figures into HTML divs; plotly.js is inlined with the first one only."""

    def __init__(self) -> None:
        self.first = True

    def __call__(self, fig: Any) -> str:
        out = fig.to_html(full_html=False, include_plotlyjs=self.first, config={"displaylogo": False})
        self.first = False
        return f'<div class="fig">{out}</div>'


# --------------------------------------------------------------------------- figures
def _effect_figure(features: Sequence[Mapping[str, Any]]) -> Any:
    import plotly.graph_objects as go

    rows = [f for f in features if f.get("wasserstein_std") is not None]
    rows.sort(key=lambda f: f["wasserstein_std"])
    fig = go.Figure(go.Bar(
        x=[f["wasserstein_std"] for f in rows], y=[f["feature"] for f in rows], orientation="h",
        marker_color=[PALETTE.get(f["verdict"], "#666") for f in rows],
        text=[f["verdict"] for f in rows], textposition="auto",
        customdata=[[f.get("p_value_bh"), f.get("psi")] for f in rows],
        hovertemplate="%{y}<br>Wasserstein %{x:.3g} std<br>KS p_bh %{customdata[0]:.2g}"
                      "<br>PSI %{customdata[1]:.3g}<extra></extra>"))
    fig.add_vline(x=0.1, line_dash="dash", line_color="black", annotation_text="practical size (0.1 std)")
    fig.update_layout(title="Effect size per acoustic feature (colour = verdict)",
                      xaxis_title="Wasserstein distance in reference standard deviations",
                      height=max(320, 20 * len(rows) + 120), margin=dict(l=10, r=10, t=50, b=40))
    return fig


def _hist_figure(ref: np.ndarray | None, fld: np.ndarray, *, title: str, xlabel: str,
                 threshold: float | None = None, bins: int = 30) -> Any:
    import plotly.graph_objects as go

    pooled = fld if ref is None else np.r_[ref, fld]
    lo, hi = float(np.min(pooled)), float(np.max(pooled))
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    fig = go.Figure()
    for name, v, colour in (("reference (held-out fold, unseen in training)", ref, "#3b7dd8"), ("field", fld, "#d8573b")):
        if v is None or len(v) == 0:
            continue
        c, _ = np.histogram(v, bins=edges)
        fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=c / max(len(v), 1), width=np.diff(edges),
                             name=f"{name} (n={len(v)})", marker_color=colour, opacity=0.55))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="black", annotation_text="OOD threshold")
    fig.update_layout(title=title, barmode="overlay", xaxis_title=xlabel, yaxis_title="share of clips",
                      height=340, margin=dict(l=10, r=10, t=50, b=40))
    return fig


def _class_mix_figure(classes: Sequence[str], ref_counts: np.ndarray, fld_counts: np.ndarray) -> Any:
    import plotly.graph_objects as go

    r = ref_counts / max(ref_counts.sum(), 1)
    f = fld_counts / max(fld_counts.sum(), 1)
    order = np.argsort(-(f + r), kind="stable")
    order = [i for i in order if r[i] > 0 or f[i] > 0]
    fig = go.Figure([
        go.Bar(x=[classes[i] for i in order], y=r[order], name=f"reference (held-out, n={int(ref_counts.sum())})",
               marker_color="#3b7dd8"),
        go.Bar(x=[classes[i] for i in order], y=f[order], name=f"field (n={int(fld_counts.sum())})",
               marker_color="#d8573b"),
    ])
    fig.update_layout(title="Predicted-class distribution", barmode="group", yaxis_title="share of clips",
                      xaxis_tickangle=-60, height=420, margin=dict(l=10, r=10, t=50, b=120))
    return fig


def _reliability_figure(rel: Mapping[str, Any]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                               line=dict(color="gray", dash="dash")))
    for key, colour in (("before", "#d8573b"), ("after", "#3b7dd8")):
        c = rel.get(key)
        if not c:
            continue
        conf = np.asarray([np.nan if v is None else v for v in c["confidence"]], float)
        acc = np.asarray([np.nan if v is None else v for v in c["accuracy"]], float)
        cnt = np.asarray(c.get("count") or [1] * len(conf))
        ok = np.isfinite(conf) & np.isfinite(acc) & (cnt > 0)
        label = "before scaling" if key == "before" else (
            f"after scaling, T={c.get('temperature', 1):.2f}" + (" (cross-fitted)" if c.get("cross_fitted") else ""))
        if c.get("ece") is not None:
            label += f" — ECE {c['ece']:.3f}"
        fig.add_trace(go.Scatter(x=conf[ok], y=acc[ok], mode="lines+markers", name=label,
                                 line=dict(color=colour), customdata=cnt[ok],
                                 hovertemplate="confidence %{x:.3f}<br>accuracy %{y:.3f}<br>clips %{customdata}"
                                               "<extra></extra>"))
    fig.update_layout(title="Reliability diagram (held-out clips)", xaxis=dict(title="confidence", range=[0, 1]),
                      yaxis=dict(title="accuracy", range=[0, 1]), height=420, margin=dict(l=10, r=10, t=50, b=40))
    return fig


def _stored_hist_figure(ood: Mapping[str, Any]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for key, colour in (("in", "#3b7dd8"), ("out", "#d8573b")):
        h = (ood.get("histograms") or {}).get(key)
        if not h:
            continue
        e = np.asarray(h["edges"], float)
        c = np.asarray(h["counts"], float)
        fig.add_trace(go.Bar(x=(e[:-1] + e[1:]) / 2, y=c / max(c.sum(), 1), width=np.diff(e), opacity=0.55,
                             name=h.get("label", key), marker_color=colour))
    if ood.get("threshold") is not None:
        fig.add_vline(x=ood["threshold"], line_dash="dash", line_color="black", annotation_text="threshold")
    fig.update_layout(title="Energy OOD score (higher = more out-of-distribution)", barmode="overlay",
                      xaxis_title="energy score", yaxis_title="share of clips", height=340,
                      margin=dict(l=10, r=10, t=50, b=40))
    return fig


def _robustness_figure(rob: Mapping[str, Any]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = rob.get("rows") or []
    names = [r["corruption"] for r in rows]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy", "ECE (bundle temperature)"))
    fig.add_trace(go.Bar(x=names, y=[r["accuracy"] for r in rows], marker_color="#3b7dd8", name="accuracy"),
                  row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=[r["ece"] for r in rows], marker_color="#d8573b", name="ECE"), row=1, col=2)
    fig.update_layout(title="Robustness under controlled corruptions", showlegend=False, height=420,
                      margin=dict(l=10, r=10, t=60, b=140))
    fig.update_xaxes(tickangle=-60)
    return fig


# --------------------------------------------------------------------------- sections
def _check_rows(checks: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for name, c in checks.items():
        if name == "acoustic":
            n_d = len(c.get("drifted_features") or [])
            detail = f"{n_d} of {len(c.get('features') or [])} features drifted"
            if n_d:
                detail += ": " + ", ".join(c["drifted_features"][:6])
        elif name == "embedding":
            detail = c.get("message", "")
        else:
            detail = c.get("message", "")
        rows.append([_e(name), _badge(c.get("verdict")), c.get("n_field"), _e(detail)])
    return rows


def _field_section(report: Mapping[str, Any], figs: _Figures, extras: Mapping[str, Any]) -> str:
    out = []
    ov = report.get("overall") or {}
    fld = report.get("field") or {}
    out.append(f"<h2>Field recordings: {_e(fld.get('folder', ''))}</h2>")
    out.append(f"<p>{_fmt(fld.get('n_analysed'))} recordings analysed, {_fmt(fld.get('n_unreadable'))} unreadable, "
               f"{_fmt(fld.get('n_skipped'))} non-audio files skipped.</p>")
    out.append(f'<div class="verdict">Overall: {_badge(ov.get("verdict"))}</div>')
    for r in ov.get("reasons") or []:
        out.append(f"<p>• {_e(r)}</p>")
    if ov.get("note"):
        out.append(f'<p class="note">{_e(ov["note"])}</p>')
    out.append(f'<p class="small">Each check runs at α = {_fmt(ov.get("alpha_per_check"))} '
               f'(Bonferroni over five checks: family-wise {_fmt(ov.get("family_wise_alpha"))}); "drift" needs '
               "statistical evidence AND a practically relevant effect size. Not available (no reference in the "
               f"bundle): {_e(', '.join(ov.get('not_available') or []) or 'none')}.</p>")
    checks = report.get("checks") or {}
    out.append(_table(["check", "verdict", "field clips", "detail"], _check_rows(checks), raw_cols=(0, 1, 3)))
    ac = checks.get("acoustic")
    if ac and ac.get("features"):
        feats = ac["features"]
        if any(f.get("wasserstein_std") is not None for f in feats):
            out.append(figs(_effect_figure(feats)))
        out.append("<h3>Per-feature drift (acoustic)</h3>")
        out.append(f'<p class="small">Reference: {_e(ac.get("n_reference"))} training clips '
                   f'({_e(ac.get("n_reference_stored"))} stored); rule: {_e((ac.get("criteria") or {}).get("rule", ""))}</p>')
        rows = [[_e(f["feature"]), _badge(f["verdict"]), f.get("ks_statistic"), f.get("p_value_bh"),
                 f.get("wasserstein_std"), f.get("psi"), f.get("mean_shift_std"), f.get("reference_mean"),
                 f.get("field_mean")] for f in feats]
        out.append(_table(["feature", "verdict", "KS", "p (BH)", "Wasserstein / std", "PSI",
                           "mean shift / std", "reference mean", "field mean"], rows, raw_cols=(0, 1)))
    conf_ref, conf_fld = extras.get("confidence_reference"), extras.get("confidence_field")
    if conf_fld is not None and len(conf_fld):
        out.append(figs(_hist_figure(conf_ref, conf_fld, title="Calibrated top-1 confidence",
                                     xlabel="top-1 probability (softmax(logits / T))")))
    en_ref, en_fld = extras.get("energy_reference"), extras.get("energy_field")
    if en_fld is not None and len(en_fld):
        out.append(figs(_hist_figure(en_ref, en_fld, title="Energy OOD score (higher = more out-of-distribution)",
                                     xlabel="energy score", threshold=extras.get("threshold"))))
    if extras.get("classes") is not None and extras.get("pred_field") is not None and len(extras["pred_field"]):
        out.append(figs(_class_mix_figure(extras["classes"], np.asarray(extras["pred_reference"]),
                                          np.asarray(extras["pred_field"]))))
    rf = report.get("recording_format") or {}
    if rf:
        f = rf.get("field") or {}
        out.append("<h3>Recording format (reported, not part of the verdict)</h3>")
        out.append(_table(["", "sample rates (Hz: files)", "channels", "formats", "duration (s)"], [
            ["field", _e(f.get("sample_rates")), _e(f.get("channels")), _e(f.get("formats")), _e(f.get("duration_s"))],
            ["training", _e((rf.get("reference") or {}).get("sample_rates")), "", "",
             _e((rf.get("reference") or {}).get("duration_s"))],
        ], raw_cols=(1, 2, 3, 4)))
        for note in rf.get("notes") or []:
            out.append(f'<p class="note">{_e(note)}</p>')
    bad = fld.get("unreadable") or []
    out.append(f"<h3>Unreadable files ({len(bad)})</h3>")
    if bad:
        out.append(_table(["file", "reason"], [[_e(b["file"]), _e(b["reason"])] for b in bad], raw_cols=(0, 1)))
    else:
        out.append("<p>none</p>")
    skipped = fld.get("skipped") or []
    if skipped:
        out.append(f"<details><summary>Skipped non-audio files ({len(skipped)})</summary>"
                   + _table(["file", "reason"], [[_e(b["file"]), _e(b["reason"])] for b in skipped], (0, 1))
                   + "</details>")
    per_file = report.get("per_file") or []
    if per_file:
        rows = [[_e(p["file"]), _e(p["predicted"]), p["confidence"], p["energy"], p["out_of_distribution"]]
                for p in per_file[:2000]]
        out.append(f"<details><summary>Per-file predictions ({len(per_file)})</summary>"
                   + _table(["file", "predicted", "confidence", "energy", "OOD"], rows, (0, 1)) + "</details>")
    return "\n".join(out)


def _model_section(diag: Mapping[str, Any] | None, figs: _Figures) -> str:
    if not diag:
        return ("<h2>Model diagnostics</h2><p>This bundle stores no held-out diagnostics; run "
                "<code>tympan calibrate --bundle DIR</code> to compute them.</p>")
    out = ["<h2>Model diagnostics (held-out)</h2>", f"<p>Measured on: {_e(diag.get('evaluated_on', ''))}</p>"]
    cal = diag.get("calibration") or {}
    if cal:
        rows = []
        for key, label in (("before", "before scaling (T = 1)"), ("after", "after scaling, cross-fitted"),
                           ("after_in_sample", "after scaling, in-sample (optimistic)")):
            m = cal.get(key) or {}
            rows.append([label, m.get("accuracy"), m.get("ece"), m.get("adaptive_ece"), m.get("mce"),
                         m.get("nll"), m.get("brier")])
        out.append(f"<p>Temperature T = {_fmt(cal.get('temperature'), 4)}. {_e(cal.get('protocol', ''))}.</p>")
        out.append(_table(["", "accuracy", "ECE", "adaptive ECE", "MCE", "NLL", "Brier"], rows))
    if diag.get("reliability"):
        out.append(figs(_reliability_figure(diag["reliability"])))
    conf = diag.get("confusion") or {}
    if conf.get("matrix") is not None:
        from tympan.stats.confusion import confusion_figure

        out.append(figs(confusion_figure(np.asarray(conf["matrix"]), conf.get("class_names") or [],
                                         title="Confusion matrix (held-out, rows = true class)")))
        pairs = conf.get("confused_pairs") or []
        if pairs:
            out.append("<h3>Most-confused pairs</h3>")
            out.append(_table(["class a", "class b", "a→b", "b→a", "clips a→b", "clips b→a"], [
                [_e(p["class_a"]), _e(p["class_b"]), p["a_as_b"], p["b_as_a"],
                 _e(", ".join(p.get("clip_ids_a_as_b", []))), _e(", ".join(p.get("clip_ids_b_as_a", [])))]
                for p in pairs], raw_cols=(0, 1, 4, 5)))
    ood = diag.get("ood") or {}
    if ood.get("histograms"):
        out.append(figs(_stored_hist_figure(ood)))
        m = ood.get("metrics")
        if m:
            b = ood.get("baseline_max_softmax") or {}
            out.append(_table(["score", "AUROC", "AUPR (OOD positive)", "FPR at 95% TPR"], [
                ["energy", m.get("auroc"), m.get("aupr"), m.get("fpr_at_95_tpr")],
                ["max softmax", b.get("auroc"), b.get("aupr"), b.get("fpr_at_95_tpr")]]))
    return "\n".join(out)


def _robustness_section(rob: Mapping[str, Any] | None, figs: _Figures) -> str:
    if not rob:
        return ""
    out = ["<h2>Robustness sweep</h2>", f"<p>{_e(rob.get('evaluated_on', ''))}</p>"]
    rows = [[_e(r["corruption"]), _e(r.get("description", "")), r["accuracy"], r.get("accuracy_drop"), r["ece"],
             r.get("nll"), r.get("ood_flagged")] for r in rob.get("rows") or []]
    out.append(_table(["corruption", "description", "accuracy", "drop vs clean", "ECE", "NLL", "flagged OOD"],
                      rows, raw_cols=(0, 1)))
    out.append(figs(_robustness_figure(rob)))
    return "\n".join(out)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.badge{color:#fff;border-radius:4px;padding:1px 7px;font-size:12px;white-space:nowrap}
.verdict{font-size:20px;margin:8px 0}.note{color:#8a5300}.small{font-size:12px;color:#555}
.fig{margin:12px 0}code{background:#f3f3f3;padding:1px 4px}
"""


def render_html(report: Mapping[str, Any], extras: Mapping[str, Any] | None = None) -> str:
    """The whole report page as one string (plotly.js inline once)."""
    extras = extras or {}
    figs = _Figures()
    m = report.get("model") or {}
    parts = [f"<h1>tympan diagnose</h1><p class='small'>generated {_e(report.get('generated', ''))} · model "
             f"{_e(m.get('name', ''))} ({_e(m.get('arch', ''))}, version {_e(m.get('version', ''))}) · bundle "
             f"{_e(m.get('bundle', ''))} · temperature {_fmt(m.get('temperature'), 4)} · OOD threshold "
             f"{_fmt((m.get('ood') or {}).get('threshold'), 4)}</p>"]
    if report.get("exit_code") is not None:
        parts.append(f"<p class='small'>exit code {report['exit_code']} (--fail-on {_e(report.get('fail_on'))})</p>")
    if report.get("field"):
        parts.append(_field_section(report, figs, extras))
    if report.get("robustness"):
        parts.append(_robustness_section(report["robustness"], figs))
    if report.get("kind") == "model" or report.get("model_diagnostics"):
        parts.append(_model_section(report.get("model_diagnostics"), figs))
    body = "\n".join(parts)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>tympan diagnose</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


def write_report(out_dir: str | Path, report: Mapping[str, Any], extras: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Write ``report.json`` and ``report.html`` into ``out_dir`` (each atomically); return their paths."""
    from tympan.io import write_json_atomic, write_text_atomic

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: --out must be a directory")
    data = to_jsonable(dict(report))
    page = render_html(data, extras)  # render before writing anything
    write_json_atomic(out / JSON_NAME, data)
    write_text_atomic(out / HTML_NAME, page)
    umask = os.umask(0)
    os.umask(umask)
    for name in (JSON_NAME, HTML_NAME):  # mkstemp makes 0600 files; a report is for sharing
        os.chmod(out / name, 0o666 & ~umask)
    return {"json": str(out / JSON_NAME), "html": str(out / HTML_NAME)}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
