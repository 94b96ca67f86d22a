"""``diagnose`` reports: one ``report.json`` with every number and one self-contained HTML page.

The HTML embeds plotly.js once, inline (``include_plotlyjs=True`` on the first figure only), so
it opens offline and from an e-mail attachment. Both files are written atomically
(:func:`tympan.io.write_text_atomic`): a reader sees the previous report or the new one, whole.

``report.json`` is validated by :class:`tympan.contracts.report.DiagnoseReport` before anything is
written; the page is drawn from that typed model with :mod:`tympan.figures`.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from tympan import figures
from tympan.contracts import contract_errors
from tympan.contracts.diagnostics import Diagnostics
from tympan.contracts.ood import ServedOOD, served_ood
from tympan.contracts.report import (
    REPORT_VERSION,
    AcousticCheck,
    DiagnoseReport,
    DriftChecks,
    FormatSummary,
    Robustness,
)
from tympan.io import to_jsonable
from tympan.names import printable

__all__ = ["REPORT_VERSION", "render_html", "validate_report", "write_report"]

JSON_NAME = "report.json"
HTML_NAME = "report.html"

PALETTE = figures.VERDICT_COLOURS


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


# --------------------------------------------------------------------------- sections
def _check_rows(checks: DriftChecks) -> list[list[Any]]:
    rows = []
    for name in DriftChecks.model_fields:
        c = getattr(checks, name)
        if c is None:
            continue
        if isinstance(c, AcousticCheck):
            detail = f"{len(c.drifted_features)} of {len(c.features)} features drifted"
            if c.drifted_features:
                detail += ": " + ", ".join(c.drifted_features[:6])
        else:
            detail = c.message
        rows.append([_e(name), _badge(c.verdict), c.n_field, _e(detail)])
    return rows


def _field_section(report: DiagnoseReport, figs: _Figures, extras: Mapping[str, Any]) -> str:
    out = []
    ov, fld = report.overall, report.field
    assert ov is not None and fld is not None and report.checks is not None  # DiagnoseReport: kind has "field"
    out.append(f"<h2>Field recordings: {_e(fld.folder)}</h2>")
    if report.summary:
        out.append(f'<p class="summary">{_e(report.summary)}</p>')
    out.append(f"<p>{_fmt(fld.n_analysed)} recordings analysed, {_fmt(fld.n_unreadable)} unreadable, "
               f"{_fmt(fld.n_skipped)} non-audio files skipped.</p>")
    out.append(_gate_section(report, figs))
    out.append(f'<div class="verdict">All checks: {_badge(ov.verdict)}</div>')
    for r in ov.reasons:
        out.append(f"<p>• {_e(r)}</p>")
    if ov.note:
        out.append(f'<p class="note">{_e(ov.note)}</p>')
    out.append(f'<p class="small">Each check runs at α = {_fmt(ov.alpha_per_check)} '
               f'(Bonferroni over five checks: family-wise {_fmt(ov.family_wise_alpha)}); "drift" needs '
               "statistical evidence AND a practically relevant effect size. Not available (no reference in the "
               f"bundle): {_e(', '.join(ov.not_available) or 'none')}.</p>")
    out.append(_table(["check", "verdict", "field clips", "detail"], _check_rows(report.checks), raw_cols=(0, 1, 3)))
    ac = report.checks.acoustic
    if ac is not None and ac.features:
        feats = ac.features
        if any(f.wasserstein_std is not None for f in feats):
            min_effect = ac.criteria.get("min_effect_wasserstein_std")
            out.append(figs(figures.drift_effects(
                [f.feature for f in feats], [f.wasserstein_std for f in feats], [f.verdict for f in feats],
                p_values=[f.p_value_bh for f in feats],
                min_effect=float(min_effect) if isinstance(min_effect, int | float) else None)))
        out.append("<h3>Per-feature drift (acoustic)</h3>")
        out.append(f'<p class="small">Reference: {_e(ac.n_reference)} training clips '
                   f'({_e(ac.n_reference_stored)} stored); rule: {_e(ac.criteria.get("rule", ""))}</p>')
        rows = [[_e(f.feature), _badge(f.verdict), f.ks_statistic, f.p_value_bh, f.wasserstein_std, f.psi,
                 f.mean_shift_std, f.reference_mean, f.field_mean] for f in feats]
        out.append(_table(["feature", "verdict", "KS", "p (BH)", "Wasserstein / std", "PSI",
                           "mean shift / std", "reference mean", "field mean"], rows, raw_cols=(0, 1)))
    conf_ref, conf_fld = extras.get("confidence_reference"), extras.get("confidence_field")
    if conf_fld is not None and len(conf_fld):
        out.append(figs(figures.score_histograms(conf_ref, conf_fld, title="Calibrated top-1 confidence",
                                                 xlabel="top-1 probability (softmax(logits / T))")))
    en_ref, en_fld = extras.get("energy_reference"), extras.get("energy_field")
    if en_fld is not None and len(en_fld):
        served = served_ood(report.model.ood)
        title = ("Energy OOD score (higher = more out-of-distribution)" if served.decides_by_energy else
                 f"Energy score, for comparison (the {served.label} decides OOD)")
        out.append(figs(figures.score_histograms(en_ref, en_fld, title=title, xlabel="energy score",
                                                 threshold=extras.get("threshold"), threshold_label="energy threshold")))
    if extras.get("classes") is not None and extras.get("pred_field") is not None and len(extras["pred_field"]):
        out.append(figs(figures.class_mix(extras["classes"], np.asarray(extras["pred_reference"]),
                                          np.asarray(extras["pred_field"]))))
    rf = report.recording_format
    if rf is not None:
        def fmt_row(label: str, f: FormatSummary | None, full: bool) -> list[str]:
            if f is None:
                return [label, "", "", "", ""]
            dur = _e(f.duration_s.model_dump() if f.duration_s else None)
            return [label, _e(f.sample_rates), _e(f.channels) if full else "", _e(f.formats) if full else "", dur]

        out.append("<h3>Recording format (reported, not part of the verdict)</h3>")
        out.append(_table(["", "sample rates (Hz: files)", "channels", "formats", "duration (s)"],
                          [fmt_row("field", rf.field, True), fmt_row("training", rf.reference, False)],
                          raw_cols=(1, 2, 3, 4)))
        for note in rf.notes:
            out.append(f'<p class="note">{_e(note)}</p>')
    out.append(f"<h3>Unreadable files ({len(fld.unreadable)})</h3>")
    if fld.unreadable:
        out.append(_table(["file", "reason"], [[_e(b.file), _e(b.reason)] for b in fld.unreadable], raw_cols=(0, 1)))
    else:
        out.append("<p>none</p>")
    if fld.skipped:
        out.append(f"<details><summary>Skipped non-audio files ({len(fld.skipped)})</summary>"
                   + _table(["file", "reason"], [[_e(b.file), _e(b.reason)] for b in fld.skipped], (0, 1))
                   + "</details>")
    per_file = report.per_file or []
    if per_file:
        rows = [[_e(p.file), _e(p.predicted), p.confidence, p.energy, p.out_of_distribution] for p in per_file[:2000]]
        out.append(f"<details><summary>Per-file predictions ({len(per_file)})</summary>"
                   + _table(["file", "predicted", "confidence", "energy", "OOD"], rows, (0, 1)) + "</details>")
    return "\n".join(out)


def _gate_section(report: DiagnoseReport, figs: _Figures) -> str:
    """Estimated accuracy, then "the model is affected" vs "the audio differs" (what the gate uses)."""
    out = []
    perf, gate = report.performance, report.gate
    if perf is not None:
        ea = perf.estimated_accuracy
        stale = f' <span class="note">(stale: {_e(perf.stale_reason or "")})</span>' if perf.stale else ""
        out.append("<h3>Estimated accuracy on these recordings (no labels needed)</h3>")
        out.append(_table(["estimated accuracy", "95% interval", "held-out accuracy", "method", "recordings"], [
            [f"{ea.value:.1%}{stale}", f"{ea.low:.1%} – {ea.high:.1%}", f"{perf.heldout_accuracy:.1%}",
             _e(perf.method_description or ea.method), perf.n]], raw_cols=(0, 1, 2, 3)))
        out.append(f'<p class="small">Interval: {_e(perf.interval)}. Estimator fitted on: {_e(perf.fitted_on or "")}. '
                   f"The model counts as affected when the whole interval lies more than {perf.margin:.0%} below the "
                   f"held-out accuracy.{(' ' + _e(perf.note)) if perf.note else ''}</p>")
        out.append(figs(figures.accuracy_estimate(perf)))
    if gate is not None:
        def names(xs: Sequence[str]) -> str:
            return _e(", ".join(xs) or "none")

        out.append(_table(["question", "answer", "from", "failing"], [
            ["is the model affected? (default --fail-on model)",
             _badge("drift" if gate.model_affected else "no drift"), names(gate.model_checks), names(gate.model_failing)],
            ["does the audio differ? (reported, --fail-on audio)",
             _badge("drift" if gate.audio_differs else "no drift"), names(gate.audio_checks + (["format"] if gate.format_notes else [])),
             names(gate.audio_failing + (["format"] if gate.format_notes else []))],
        ], raw_cols=(0, 1, 2, 3)))
        if gate.supporting_evidence:
            out.append(f'<p class="small">Also drifting (supporting evidence, not voting while an accuracy estimate '
                       f"exists): {names(gate.supporting_evidence)}.</p>")
    a = report.adaptation
    if a is not None:
        out.append(f'<p class="note">This bundle was {_e(a.description)}. Refitted after adaptation: '
                   f'{_e(", ".join(a.refitted) or "nothing")}; stale (fitted for the unadapted model): '
                   f'{_e(", ".join(a.stale) or "nothing")}.</p>')
    return "\n".join(out)


def _served_ood_html(served: ServedOOD) -> str:
    """The served OOD score, its threshold and its measured figures (what decides, not the energy)."""
    text = served.figures_text()
    return (f"<h3>Out-of-distribution score served</h3><p>{_e(served.headline())}"
            + (f": {_e(text)}" if text else "") + ".</p>")


def _model_section(diag: Diagnostics | None, figs: _Figures, served: ServedOOD | None = None) -> str:
    served_html = _served_ood_html(served) if served is not None else ""
    if diag is None:
        return ("<h2>Model diagnostics</h2><p>This bundle stores no held-out diagnostics; run "
                "<code>tympan calibrate --bundle DIR</code> to compute them.</p>" + served_html)
    out = ["<h2>Model diagnostics (held-out)</h2>", f"<p>Measured on: {_e(diag.evaluated_on or '')}</p>",
           served_html]
    cal = diag.calibration
    if cal is not None:
        rows = []
        for m, label in ((cal.before, "before scaling (T = 1)"), (cal.after, "after scaling, cross-fitted"),
                         (cal.after_in_sample, "after scaling, in-sample (optimistic)")):
            rows.append([label, m.accuracy, m.ece, m.adaptive_ece, m.mce, m.nll, m.brier])
        out.append(f"<p>Temperature T = {_fmt(cal.temperature, 4)}. {_e(cal.protocol)}.</p>")
        out.append(_table(["", "accuracy", "ECE", "adaptive ECE", "MCE", "NLL", "Brier"], rows))
    if diag.reliability is not None:
        out.append(figs(figures.reliability_diagram(diag.reliability, title="Reliability diagram (held-out clips)")))
    conf = diag.confusion
    if conf is not None:
        out.append(figs(figures.confusion_heatmap(conf, title="Confusion matrix (held-out, rows = true class)")))
        pairs = conf.confused_pairs or []
        if pairs:
            out.append("<h3>Most-confused pairs</h3>")
            out.append(_table(["class a", "class b", "a→b", "b→a", "clips a→b", "clips b→a"], [
                [_e(p.class_a), _e(p.class_b), p.a_as_b, p.b_as_a, _e(", ".join(p.clip_ids_a_as_b)),
                 _e(", ".join(p.clip_ids_b_as_a))] for p in pairs], raw_cols=(0, 1, 4, 5)))
    ood = diag.ood
    if ood is not None and ood.histograms:
        if served is not None and not served.decides_by_energy:
            out.append(f'<p class="small">The histograms and table below are of the energy score (threshold '
                       f'{_fmt(ood.threshold, 4)}), kept for comparison; the {_e(served.label)} decides.</p>')
        out.append(figs(figures.ood_histograms(ood)))
        m = ood.metrics
        if m is not None:
            b = ood.baseline_max_softmax
            out.append(_table(["score", "AUROC", "AUPR (OOD positive)", "FPR at 95% TPR"], [
                ["energy", m.auroc, m.aupr, m.fpr_at_95_tpr],
                ["max softmax", *((b.auroc, b.aupr, b.fpr_at_95_tpr) if b else (None, None, None))]]))
    return "\n".join(out)


def _robustness_section(rob: Robustness | None, figs: _Figures) -> str:
    if rob is None:
        return ""
    out = ["<h2>Robustness sweep</h2>", f"<p>{_e(rob.evaluated_on)}</p>"]
    rows = [[_e(r.corruption), _e(r.description), r.accuracy, r.accuracy_drop, r.ece, r.nll, r.ood_flagged]
            for r in rob.rows]
    out.append(_table(["corruption", "description", "accuracy", "drop vs clean", "ECE", "NLL", "flagged OOD"],
                      rows, raw_cols=(0, 1)))
    out.append(figs(figures.robustness_sweep(rob)))
    return "\n".join(out)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.badge{color:#fff;border-radius:4px;padding:1px 7px;font-size:12px;white-space:nowrap}
.verdict{font-size:20px;margin:8px 0}.summary{font-size:18px;font-weight:600;margin:10px 0}.note{color:#8a5300}.small{font-size:12px;color:#555}
.fig{margin:12px 0}code{background:#f3f3f3;padding:1px 4px}
"""


def validate_report(report: Mapping[str, Any] | DiagnoseReport) -> DiagnoseReport:
    """``report`` as a :class:`DiagnoseReport`; a ``ValueError`` naming the offending fields otherwise."""
    if isinstance(report, DiagnoseReport):
        return report
    try:
        return DiagnoseReport.model_validate(to_jsonable(dict(report)))
    except ValidationError as exc:
        raise ValueError(f"report.json does not match tympan.contracts.report.DiagnoseReport: "
                         f"{contract_errors(exc)}") from None


def render_html(report: Mapping[str, Any] | DiagnoseReport, extras: Mapping[str, Any] | None = None) -> str:
    """The whole report page as one string (plotly.js inline once)."""
    doc = validate_report(report)
    extras = extras or {}
    figs = _Figures()
    m = doc.model
    parts = [f"<h1>tympan diagnose</h1><p class='small'>generated {_e(doc.generated)} · model "
             f"{_e(m.name)} ({_e(m.arch)}, version {_e(m.version)}) · bundle "
             f"{_e(m.bundle)} · temperature {_fmt(m.temperature, 4)} · OOD decided by the "
             f"{_e(served_ood(m.ood).headline())}</p>",
             f"<p class='small'>exit code {doc.exit_code} (--fail-on {_e(doc.fail_on)})</p>"]
    kinds = set(doc.kind.split("+"))
    if "field" in kinds:
        parts.append(_field_section(doc, figs, extras))
    if "robustness" in kinds:
        parts.append(_robustness_section(doc.robustness, figs))
    if "model" in kinds or doc.model_diagnostics is not None:
        parts.append(_model_section(doc.model_diagnostics, figs, served_ood(m.ood)))
    body = "\n".join(parts)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>tympan diagnose</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


def write_report(out_dir: str | Path, report: Mapping[str, Any], extras: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Validate ``report`` (:class:`tympan.contracts.report.DiagnoseReport`), then write ``report.json``
    and ``report.html`` into ``out_dir`` (each atomically); return their paths.

    Nothing is written when the report does not validate (``ValueError`` naming the fields).
    """
    from tympan.io import write_json_atomic, write_text_atomic

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: --out must be a directory")
    data = printable(to_jsonable(dict(report)))  # a name that is not UTF-8 never stops the report
    doc = validate_report(data)
    page = render_html(doc, extras)  # render before writing anything
    write_json_atomic(out / JSON_NAME, data)
    write_text_atomic(out / HTML_NAME, page)
    umask = os.umask(0)
    os.umask(umask)
    for name in (JSON_NAME, HTML_NAME):  # mkstemp makes 0600 files; a report is for sharing
        os.chmod(out / name, 0o666 & ~umask)
    return {"json": str(out / JSON_NAME), "html": str(out / HTML_NAME)}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
