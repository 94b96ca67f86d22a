"""Field drift: run ``diagnose`` on a folder of recordings, or open a report it wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from tympan import figures
from tympan.dashboard.reports import ContractError, parse_drift_report
from tympan.dashboard.state import BUNDLE_ENV, Context

RUN_TIMEOUT_S = 1800


def diagnose_command() -> list[str] | None:
    """How to call ``diagnose`` here: the console script beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "diagnose"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("diagnose")
    return [found] if found else None


@st.cache_data(ttl=60, show_spinner=False)
def diagnose_available() -> tuple[bool, str]:
    """Whether ``diagnose --field-dir`` exists in this install, and why not."""
    cmd = diagnose_command()
    if cmd is None:
        return False, "the `diagnose` command is not installed here"
    try:
        out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"`diagnose --help` failed: {exc}"
    text = out.stdout + out.stderr
    if out.returncode != 0 or "--field-dir" not in text:
        line = (text.strip().splitlines() or ["no output"])[-1]
        return False, f"`diagnose` cannot check field folders in this build ({line})"
    return True, ""


def run_diagnose(field_dir: str, bundle_dir: str) -> tuple[Any | None, str]:
    """Run ``diagnose --field-dir X --bundle Y --out Z``; return (report JSON or None, log)."""
    cmd = diagnose_command()
    if cmd is None:
        return None, "the `diagnose` command is not installed here"
    # the report is read into memory, so its folder (~5 MB of figures) goes when the run ends
    with tempfile.TemporaryDirectory(prefix="tympan-drift-") as tmp:
        return _diagnose_into(cmd, field_dir, bundle_dir, Path(tmp))


def _diagnose_into(cmd: list[str], field_dir: str, bundle_dir: str, out_dir: Path) -> tuple[Any | None, str]:
    target = out_dir / "report"
    args = [*cmd, "--field-dir", field_dir, "--bundle", bundle_dir, "--out", str(target)]
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return None, f"`diagnose` did not finish within {RUN_TIMEOUT_S} s"
    log = (proc.stdout + proc.stderr).strip()
    if proc.returncode not in (0, 1):  # 1 = drift or OOD above threshold, still a report
        return None, f"`{' '.join(args)}` exited with {proc.returncode}: {log.splitlines()[-1] if log else ''}"
    candidates = [target] if target.is_file() else sorted(out_dir.rglob("*.json"))
    for path in sorted(candidates, key=lambda p: ("drift" not in p.name and "report" not in p.name, p.name)):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        try:
            if parse_drift_report(data) is not None:
                return data, log
        except ContractError as exc:
            return None, f"{path}: {exc}"
    return None, "`diagnose` wrote no drift report with per-feature entries"


def render(ctx: Context) -> None:
    st.title("Field drift")
    st.caption("Do your recordings sound like the training audio? Per-feature two-sample tests with an "
               "effect-size gate: *drift* needs a significant difference **and** one large enough to matter.")
    mode = st.radio("Report", ["Open a diagnose report (JSON)", "Run diagnose on a folder"], horizontal=True,
                    key="drift_mode")
    if mode.startswith("Open"):
        up = st.file_uploader("diagnose report (.json)", type=["json"], key="drift_report")
        if up is not None:
            try:
                st.session_state["drift_data"] = (up.name, json.loads(up.getvalue().decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                st.error(f"{up.name}: not a JSON report ({exc})")
                return
    else:
        ok, why = diagnose_available()
        if not ok:
            st.warning(f"Running `diagnose` from here is unavailable: {why}. Run it where the recordings are "
                       "(`diagnose --field-dir DIR --bundle BUNDLE --out report`) and open its JSON report instead.")
        field_dir = st.text_input("Folder of field recordings", key="field_dir")
        bundle_dir = st.text_input("Model bundle folder", value=os.environ.get(BUNDLE_ENV, ""), key="bundle_dir",
                                   help="The bundle the API serves (default: $TYMPAN_BUNDLE).")
        if st.button("Run diagnose", disabled=not ok, key="run_diagnose"):
            problems = [f"{p}: no such folder" for p in (field_dir, bundle_dir) if not p or not Path(p).is_dir()]
            if problems:
                st.error("; ".join(problems))
            else:
                with st.spinner(f"diagnose --field-dir {field_dir} … (this decodes every recording)"):
                    data, log = run_diagnose(field_dir, bundle_dir)
                if data is None:
                    st.error(log)
                else:
                    st.session_state["drift_data"] = (f"diagnose {field_dir}", data)
                    if log:
                        with st.expander("diagnose output"):
                            st.code(log[-4000:])
    if "drift_data" in st.session_state:
        name, data = st.session_state["drift_data"]
        show_report(name, data)


def show_report(name: str, data: Any) -> None:
    try:
        report = parse_drift_report(data)
    except ContractError as exc:
        st.error(f"{name}: {exc}")
        return
    if report is None:
        st.error(f"{name}: no per-feature drift entries found (expected a list of objects with "
                 "'feature' or 'name' plus p_value / effect size / verdict)")
        return
    st.subheader(f"Report: {name}")
    show_trust(data)
    counts = pd.Series([r["verdict"] for r in report.rows], dtype=object).value_counts()
    c1, c2, c3 = st.columns(3)
    verdict = report.verdict or ("drift" if counts.get("drift", 0) else "no drift")
    c1.metric("Overall verdict", verdict)
    c2.metric("Features drifted", f"{int(counts.get('drift', 0))} / {len(report.rows)}" if report.rows else "n/a")
    if report.n_field is not None:
        c3.metric("Field clips vs reference", f"{report.n_field} vs {report.n_reference or '?'}")
    if verdict == "drift":
        st.warning("The field recordings differ from the training audio in the features marked *drift*: "
                   "expect lower accuracy and check the OOD rate.")
    if not report.rows:
        st.info("This report has no per-feature acoustic drift (the bundle stores no reference acoustic "
                "statistics; `diagnose --fit --bundle DIR` computes them).")
    if any(r["effect_size"] is not None for r in report.rows):
        effect_names = {r["effect_name"] for r in report.rows if r["effect_name"]}
        effect_name = effect_names.pop() if len(effect_names) == 1 else "effect size"
        st.plotly_chart(figures.drift_effects(
            [r["feature"] for r in report.rows], [r["effect_size"] for r in report.rows],
            [r["verdict"] for r in report.rows], effect_name=effect_name, p_values=[r["p_value"] for r in report.rows],
            min_effect=report.min_effect if effect_name == "wasserstein_std" else None,
            title="Per-feature drift (colour = verdict)"), key="drift_effects")
    if report.rows:
        table = pd.DataFrame(report.rows).drop(columns=["p_name", "effect_name"], errors="ignore")
        st.dataframe(table, hide_index=True)
    others = [{"check": name, "verdict": str(c.get("verdict", "")),
               "detail": str(c.get("message") or c.get("summary") or c.get("detail") or "")}
              for name, c in report.checks.items() if name not in ("acoustic",) and "verdict" in c]
    if others:
        st.markdown("**Other checks**")
        st.dataframe(pd.DataFrame(others), hide_index=True)
    p_names = {r["p_name"] for r in report.rows if r["p_name"]}
    e_names = {r["effect_name"] for r in report.rows if r["effect_name"]}
    st.caption(f"p-value: {', '.join(sorted(p_names)) or 'n/a'}; effect size: {', '.join(sorted(e_names)) or 'n/a'}.")


def show_trust(data: Any) -> None:
    """The report's opening sentence, the estimated accuracy and the gate's two questions (newer reports)."""
    if not (isinstance(data, dict) and "tympan_report" in data and data.get("summary")):
        return
    from tympan.contracts.report import DiagnoseReport

    doc = DiagnoseReport.model_validate(data)  # parse_drift_report has validated it already
    gate = doc.gate
    (st.error if gate is not None and gate.model_affected else st.success)(doc.summary)
    if doc.adaptation is not None:
        a = doc.adaptation
        st.info(f"This bundle was {a.description}. Refitted after adaptation: {', '.join(a.refitted) or 'nothing'}; "
                f"stale: {', '.join(a.stale) or 'nothing'}.")
    perf = doc.performance
    if perf is not None:
        ea = perf.estimated_accuracy
        c1, c2, c3 = st.columns(3)
        c1.metric("Estimated accuracy", f"{ea.value:.1%}", f"{(ea.value - perf.heldout_accuracy) * 100:+.1f} points "
                  "vs held-out", delta_color="normal")
        c2.metric("95% interval", f"{ea.low:.1%} – {ea.high:.1%}")
        c3.metric("Held-out accuracy", f"{perf.heldout_accuracy:.1%}")
        st.plotly_chart(figures.accuracy_estimate(perf), key="accuracy_estimate")
        st.caption(f"Method: {perf.method_description or ea.method}. Interval: {perf.interval}. Fitted on: "
                   f"{perf.fitted_on}." + (f" Stale: {perf.stale_reason}." if perf.stale else ""))
    if gate is not None:
        st.dataframe(pd.DataFrame([
            {"question": "Is the model affected? (gates the exit code by default)",
             "answer": "yes" if gate.model_affected else "no", "failing": ", ".join(gate.model_failing) or "–",
             "from": ", ".join(gate.model_checks)},
            {"question": "Does the audio differ? (reported)", "answer": "yes" if gate.audio_differs else "no",
             "failing": ", ".join(gate.audio_failing + (["format"] if gate.format_notes else [])) or "–",
             "from": ", ".join(gate.audio_checks)},
        ]), hide_index=True)

