"""Render README tables from the committed result files (``benchmarks/results/*.json``).

The README holds each table between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``;
``python benchmarks/readme_tables.py`` rewrites what lies between them from the JSON,
``--check`` exits 1 if the README differs from what the JSON gives (a test runs the check).

Tables: ``esc50_cv`` (``results/esc50_cv.json``: five-fold CV per model and recipe),
``robustness`` (``results/robustness.json``: the shipped model under field shifts), ``trust_ood``
``trust_performance`` and ``trust_performance_cv`` (``benchmarks/trust.py``: OOD and background
rates; accuracy-estimate bias and the gate per shift on the shipped model's held-out fold; the
bias pooled over the five held-out folds of a five-fold run, with interval coverage), ``events``
(``results/events.json``, ``benchmarks/events.py``: event precision / recall / F1 on long recordings),
``startup`` (``benchmarks/startup.py``: start-up of ``tympan --help``, ``predict`` and ``serve`` over
``import torch``), ``live`` (``results/live.json``, ``benchmarks/live.py``: the listener's real-time factor,
latency, memory), ``batch_side_by_side`` (``results/batch.json``, ``benchmarks/batch.py``: ``tympan
predict`` against BirdNET-Analyzer's model), ``other_sources`` (``results/other_sources.json``,
``benchmarks/other_sources.py``: the shipped model and trust layer on recordings from other sources than
Freesound, and leave-one-source-out refits of the outlier probe).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
RESULTS = HERE / "results"
CV_SCHEMA = "tympan.benchmarks.esc50_cv/1"


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}"


def render_esc50_cv(doc: dict[str, Any]) -> str:
    lines = ["| model | recipe | folds held out | per-fold accuracy (%) | mean ± std (%) | epochs | s / epoch | device | source |",
             "|---|---|---|---|---|---:|---:|---|---|"]
    for e in doc["entries"]:
        folds = e.get("folds") or {}
        per_fold = " / ".join(_pct(folds[k]) for k in sorted(folds, key=int)) or "not kept"
        held = ", ".join(sorted(folds, key=int)) if folds else str(e.get("n_folds", "?")) + " folds"
        mean = _pct(e.get("mean"))
        if e.get("n_folds", len(folds)) > 1 and e.get("std") is not None:
            mean += f" ± {_pct(e['std'])}"
        elif e.get("mean") is not None:
            mean += " (1 fold)"
        spe = e.get("seconds_per_epoch")
        lines.append(
            f"| {e['label']} | `{e['recipe']}` | {held} | {per_fold} | **{mean}** | {e['epochs']} | "
            f"{'n/a' if spe is None else f'{spe:g}'} | {e['device']} | {e['source']} |"
        )
    return "\n".join(lines)


def _init_text(fig: dict[str, Any]) -> str:
    """Where a recorded fold started: AudioSet weights, a trained bundle (named with its weights' sha), nothing."""
    from tympan.models.convert import MN04_AS_SHA256

    if not fig["init"]:
        return " from scratch"
    sha = fig.get("init_sha256")
    if sha is None or sha == MN04_AS_SHA256:
        return " from AudioSet"
    return f" trained further from bundle `{fig['init']}` (weights {sha[:12]})"


def render_folds(doc: dict[str, Any]) -> str:
    """One row per configuration hash of ``results/folds.json`` (fold records, any day or machine)."""
    sys.path.insert(0, str(HERE.parent))
    from tympan.contracts.training import FoldRecords
    from tympan.training.records import assemble_all

    lines = ["| recipe | model | epochs | lr | batch | precision | folds recorded (accuracy %) | five-fold mean ± std (%) "
             "| s / epoch | machines | config hash |",
             "|---|---|---:|---:|---:|---|---|---|---:|---|---|"]
    for fig in assemble_all(FoldRecords.model_validate(doc).records):
        folds = ", ".join(f"{k}: {_pct(v)}" for k, v in fig["folds"].items())
        if fig["n_folds"] == 5:
            mean = f"**{_pct(fig['mean'])} ± {_pct(fig['std'])}**"
        else:
            mean = f"{fig['n_folds']}/5 folds ({_pct(fig['mean'])} so far)"
        model = f"`{fig['arch']}`" + _init_text(fig)
        lines.append(f"| `{fig['recipe']}` | {model} | {fig['epochs']} | {fig['lr']:g} | {fig['batch_size']} | "
                     f"{fig['precision']} | {folds} | {mean} | {fig['seconds_per_epoch']:.1f} | "
                     f"{'; '.join(fig['machines'])} | `{fig['config_hash']}` |")
    return "\n".join(lines)


def render_train_speed(doc: dict[str, Any]) -> str:
    """Training-step cost per variant (``results/train_speed.json``)."""
    lines = ["| model | batch | precision | torch.compile | s / step | ms / clip | epoch (s, 1600 clips) "
             "| per clip vs fp32 batch 32 | first step (s) |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        ratio = "n/a" if r["vs_fp32_batch32"] is None else f"{r['vs_fp32_batch32']:.2f}"
        lines.append(f"| `{r['arch']}` | {r['batch']} | {r['precision']} | {'yes' if r['compile'] else 'no'} | "
                     f"{r['step_seconds']:.3f} | {r['ms_per_clip']:.1f} | {r['epoch_seconds']:.0f} | {ratio} | "
                     f"{r['first_step_seconds']:.1f} |")
    lines += ["", f"{doc['machine']}; native bfloat16: {'yes' if doc['cpu_bf16_native'] else 'no (emulated by oneDNN)'}; "
              f"load average {doc['load_average_start']} at the start, {doc['load_average_end']} at the end; "
              f"`{doc['command']}`, {doc['measured']} UTC."]
    return "\n".join(lines)


def render_robustness(doc: dict[str, Any]) -> str:
    m = doc["model"]
    head = (f"`{m['bundle']}` ({m['name']}, weights {m['weights_sha256'][:12]}), {doc['evaluated_on']}; "
            f"ECE with T = {doc['temperature']:.3f}; target shifts marked *")
    lines = [head, "", "| shift | accuracy (%) | change (points) | ECE |", "|---|---:|---:|---:|"]
    targets = set(doc["target"]["shifts"])
    for r in doc["rows"]:
        drop = "" if r["accuracy_drop"] is None else f"{-100 * r['accuracy_drop']:+.1f}"
        star = " *" if r["corruption"] in targets else ""
        lines.append(f"| {r['corruption']}{star} | {_pct(r['accuracy'])} | {drop} | {r['ece']:.3f} |")
    return "\n".join(lines)


def render_candidates(doc: dict[str, Any]) -> str:
    """Fold-5 candidates beside the shipped model (``results/candidates.json``, by ``benchmarks/candidates.py``)."""
    if not doc["candidates"]:
        return "(no candidates recorded)"
    shifts = list(doc["candidates"][0]["rows"])
    lines = ["| model | " + " | ".join(shifts) + " | beats the model shipped then, everywhere |",
             "|---|" + "---:|" * len(shifts) + "---|"]
    shown = None
    for c in doc["candidates"]:
        ref = c["reference"]
        if ref["weights_sha256"] != shown:
            shown = ref["weights_sha256"]
            then = "shipped now" if shown == doc.get("shipped_now") else "shipped then"
            lines.append(f"| {then} (weights {shown[:12]}) | "
                         + " | ".join(_pct(c["rows"][s]["shipped"]) for s in shifts) + " | – |")
        verdict = "yes" if c["beats_shipped"] else "no: not better on " + ", ".join(c["not_better_on"])
        verdict += " (**shipped now**)" if c.get("shipped_now") else ""
        lines.append(f"| {c['label']} (weights {c['weights_sha256'][:12]}) | "
                     + " | ".join(_pct(c["rows"][s]["candidate"]) for s in shifts) + f" | {verdict} |")
    return "\n".join(lines)


def render_trust_ood(r: dict[str, Any]) -> str:
    """OOD flagged per kind and background per kind (``results/trust_ood.json``)."""
    lines = [f"Out-of-distribution audio flagged at {r.get('tpr', 0.95):.0%} TPR ({r['ood_set']['eval_windows']} evaluation clips "
             f"of unseen sources; ESC-50 column: {r['heldout']}, cross-fitted):", "",
             "| score | speech | music | UI sounds | generated | speech+music+UI | all | held-out ESC-50 flagged |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["ood"]:
        lines.append(f"| {row['score']} | {row['speech']:.0%} | {row['music']:.0%} | {row['notification']:.0%} | "
                     f"{row['generated']:.0%} | {row['speech_music_ui']:.0%} | {row['all_eval']:.0%} | "
                     f"{row['esc50_heldout_flagged']:.1%} |")
    lines += ["", "Background-only recordings (evaluation split) flagged as background or out of distribution "
              "(outlier probe):", "", "| kind | clips | background | OOD | either |", "| --- | --- | --- | --- | --- |"]
    for row in r["background"]:
        lines.append(f"| {row['kind']} | {row['n']} | {row['background']:.0%} | {row['ood']:.0%} | {row['either']:.0%} |")
    e = r["esc50_heldout"]
    lines.append(f"| held-out ESC-50 (fold 5) | 400 | {e['background']:.1%} | {e['ood_probe']:.1%} | {e['either']:.1%} |")
    return "\n".join(lines)


def render_other_sources(r: dict[str, Any]) -> str:
    """The shipped model on recordings from other sources than Freesound, and leave-one-source-out
    refits of the outlier probe (``results/other_sources.json``, ``benchmarks/other_sources.py``)."""
    h, e, lo = r["heldout_esc50"], r["esc_class"], r["leave_one_source_out"]

    def est(x: dict[str, Any] | None) -> str:
        return "n/a" if not x or x.get("value") is None else f"{_pct(x['value'])} ({_pct(x['low'])}-{_pct(x['high'])})"

    def pct0(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.0%}"

    cap = f", at most {r['set']['max_per_source']} non-ESC clips per package" if r["set"].get("max_per_source") else ""
    lines = [f"`{r['bundle']}` (weights {r['weights_sha256'][:12]}); {r['set']['clips']} clips from "
             f"{len(r['set']['packages'])} Debian packages{cap}; held-out ESC-50 fold {h['fold']} from the same run "
             "(its thresholds were fitted on it)"
             + ("; skipped by the builder: " + "; ".join(f"{x['package']} ({x['reason']})" for x in r["set"]["skipped_by_builder"])
                if r["set"].get("skipped_by_builder") else "") + ":", "",
             "| audio | clips | top-1 accuracy (%) | mean confidence | estimated accuracy (%) (95 % interval) "
             "| OOD | background | OOD or background |", "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
             f"| held-out ESC-50 fold {h['fold']} | {h['clips']} | {_pct(h['accuracy'])} | {h['mean_confidence']:.2f} | "
             f"{est(h['estimated_accuracy'])} | {h['ood']:.1%} | {h['background']:.1%} | {h['ood_or_background']:.1%} |"]
    for k, v in r["by_kind"].items():
        acc = _pct(e["accuracy"]) if k == "esc-class" else "-"
        lines.append(f"| other sources: {k} | {v['n']} | {acc} | {v['mean_confidence']:.2f} | "
                     f"{est(e['estimated_accuracy']) if k == 'esc-class' else '-'} | {pct0(v['ood'])} | "
                     f"{pct0(v['background'])} | {pct0(v['ood_or_background'])} |")
    for name, v in (e.get("by_origin") or {}).items():
        lines.append(f"| other sources: esc-class, {name} ({', '.join(v['classes'])}) | {v['n']} | {_pct(v['accuracy'])} | "
                     f"{v['mean_confidence']:.2f} | {est(v.get('estimated_accuracy'))} | - | - | {pct0(v['ood_or_background'])} |")
    lines += ["", "ESC-class recordings per class (predicted classes with counts):", "",
              "| class | clips | top-1 accuracy (%) | predicted |", "| --- | ---: | ---: | --- |"]
    for c, v in e["by_class"].items():
        pr = ", ".join(f"{q} {n}" for q, n in v["predicted"].items())
        lines.append(f"| {c} | {v['n']} | {_pct(v['accuracy'], 0)} | {pr} |")
    lines += ["", "Per package: ESC-class accuracy, and the non-ESC clips flagged OOD or background by the shipped "
              "bundle and by the outlier probe refitted without the package (leave one source out: with the OOD "
              "set's dev split only / plus every other package's non-ESC clips):", "",
              "| package | kinds (clips) | ESC-class accuracy | non-ESC OOD or background (shipped) | probe, OOD set only "
              "| probe, + other packages | ESC-50 fold false alarms, + other packages |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    loso = {row["held_out"]: row for row in lo["rows"]}
    for k, v in r["by_package"].items():
        kinds = ", ".join(f"{q} {n}" for q, n in v["kinds"].items())
        ea = e["by_package"].get(k)
        acc = "-" if not ea else f"{_pct(ea['accuracy'], 0)} % of {ea['n']}"
        row = loso.get(k)
        lines.append(f"| {k} | {kinds} | {acc} | {pct0(v['non_esc_ood_or_background'])} | "
                     f"{pct0(row['flagged_without']) if row else '-'} | {pct0(row['flagged_with']) if row else '-'} | "
                     f"{row['esc50_heldout_false_alarm']:.1%} |" if row else
                     f"| {k} | {kinds} | {acc} | - | - | - | - |")
    sm = lo["summary"]
    kinds = " / ".join(f"{k} {pct0(sm['by_kind_without'][k])} -> {pct0(sm['by_kind_with'][k])}" for k in sm["by_kind_with"])
    lines += ["", f"Leave one source out, all non-ESC clips: probe flags {pct0(sm['non_esc_flagged_without'])} with the OOD "
              f"set only, {pct0(sm['non_esc_flagged_with'])} with the other packages added ({kinds}); held-out ESC-50 "
              f"false alarms {sm['esc50_heldout_false_alarm_without']:.1%} -> {sm['esc50_heldout_false_alarm_with']['mean']:.1%} "
              f"(mean over refits; max {sm['esc50_heldout_false_alarm_with']['max']:.1%}), cross-fitted; the {e['clips']} "
              f"ESC-class clips of other sources flagged {pct0(sm['esc_class_flagged_without'])} -> "
              f"{pct0(sm['esc_class_flagged_with'])}."]
    t = r["targets"]
    yes = {True: "met", False: "not met", None: "n/a"}
    lines += ["", "| target (issue #20) | result |", "| --- | --- |",
              f"| ESC-class accuracy from other sources within 5 points of held-out ESC-50 | "
              f"{_pct(e['accuracy'])} vs {_pct(h['accuracy'])}: {yes[t['accuracy_within_5_points']]} |",
              "| OOD or background >= 90 % on every kind of unseen source | "
              + ", ".join(f"{k} {pct0(r['by_kind'][k]['ood_or_background'])}" for k in ("music", "sfx", "speech")
                          if k in r["by_kind"]) + f": {yes[t['ood_or_background_ge_90_every_kind']]} |",
              f"| held-out ESC-50 flagged <= 5 % | {h['ood_or_background']:.1%}: {yes[t['esc50_heldout_flagged_le_5']]} |"]
    if "leave_one_source_out_probe_ge_90_every_kind" in t:
        lines += ["| the same two with the probe refitted on the other packages (leave one out; probe alone) | "
                  + ", ".join(f"{k} {pct0(v)}" for k, v in sm["by_kind_with"].items())
                  + f": {yes[t['leave_one_source_out_probe_ge_90_every_kind']]}; held-out ESC-50 at most "
                  f"{sm['esc50_heldout_false_alarm_with']['max']:.1%}: "
                  f"{yes[t['leave_one_source_out_esc50_false_alarm_le_5']]} |"]
    return "\n".join(lines)


ESTIMATOR_NAMES = {"atc_mc": "ATC-MC", "atc_ne": "ATC-NE", "mean_confidence": "mean calibrated confidence",
                   "doc": "difference of confidences"}
GATE_REASONS = {"ood_rate": "OOD", "performance": "accuracy", "background_rate": "background", "embedding": "embedding"}


def _bias_cells(e: dict[str, Any], methods: list[str]) -> str:
    return " | ".join(f"{e['methods'][m]['bias'] * 100:+.1f}".replace("-", "−") for m in methods)


def _summary_cell(s: dict[str, Any]) -> str:
    """Largest bias; mean abs. bias; shifts within 2 points[; within 1.96 SE] of one estimator."""
    noise = f"; {s['shifts_within_sampling_noise']}/{s['n_shifts']}" if "shifts_within_sampling_noise" in s else ""
    return (f"{s['max_abs_bias'] * 100:.1f}; {s['mean_abs_bias'] * 100:.1f}; "
            f"{s['shifts_within_tolerance']}/{s['n_shifts']}{noise}")


def render_trust_performance(r: dict[str, Any]) -> str:
    """Accuracy-estimate bias per shift and estimator, and the default gate (``results/trust_performance.json``)."""
    names = ESTIMATOR_NAMES
    methods = [m for m in names if m in r["summary"]]
    desc = {c["label"]: c["description"] for c in r["conditions"]}
    lines = ["| shift | true accuracy (± 1 SE) | " + " | ".join(names[m] for m in methods)
             + " | reported interval covers the truth | default gate: exit (why) |",
             "| --- | --- |" + " --- |" * len(methods) + " --- | --- |"]
    for label, e in r["estimators"].items():
        g = r["gate"]["rows"].get(label, {})
        code = g.get("exit_code_default")
        reasons = ", ".join(GATE_REASONS.get(x, x) for x in g.get("model_failing", []))
        gate = "" if code is None else (f"**{code}** ({reasons})" if code else "0")
        biases = _bias_cells(e, methods)
        se = f" ± {e['sampling_se']:.3f}" if "sampling_se" in e else ""
        ei = g.get("estimated_accuracy")
        cover = "" if ei is None else (f"{'yes' if g['estimate_within_interval'] else '**no**'} "
                                       f"({100 * ei['low']:.0f}–{100 * ei['high']:.0f})")
        lines.append(f"| {desc.get(label, label)} | {e['true_accuracy']:.3f}{se} | {biases} | {cover} | {gate} |")
    cells = [_summary_cell(r["summary"][m]) for m in methods]
    rows = r["gate"]["rows"].values()
    covered = f"{sum(bool(g.get('estimate_within_interval')) for g in rows)}/{len(rows)}"
    lines.append("| **largest bias; mean abs. bias; shifts within 2 points; within 1.96 SE** | | "
                 + " | ".join(cells) + f" | {covered} | |")
    return "\n".join(lines)


def render_trust_performance_cv(r: dict[str, Any]) -> str:
    """Accuracy-estimate bias per shift pooled over five held-out folds, and interval coverage
    (``results/trust_performance_cv.json``)."""
    names = ESTIMATOR_NAMES
    methods = [m for m in names if m in r["summary"]]
    desc = {c["label"]: c["description"] for c in r["conditions"]}
    n_folds = len(r["folds"])
    gated = all("gate_exit_codes" in e for e in r["estimators"].values())
    lines = ["| shift | true accuracy (± 1 SE) | " + " | ".join(names[m] for m in methods)
             + " | ATC-MC interval covers the truth (folds) |" + (" default gate fails (folds; why) |" if gated else ""),
             "| --- | --- |" + " --- |" * len(methods) + " --- |" + (" --- |" if gated else "")]
    for label, e in r["estimators"].items():
        biases = _bias_cells(e, methods)
        cov = e.get("interval_covers", [])
        row = (f"| {desc.get(label, label)} | {e['true_accuracy']:.3f} ± {e['sampling_se']:.3f} | {biases} | "
               f"{sum(cov)}/{len(cov)} |")
        if gated:
            codes = e["gate_exit_codes"]
            reasons = sorted({GATE_REASONS.get(x, x) for f in e["gate_failing"] for x in f})
            n_fail = sum(1 for c in codes if c)
            row += f" {'**' if n_fail else ''}{n_fail}/{len(codes)}{'**' if n_fail else ''}" + (
                f" ({', '.join(reasons)})" if reasons else "") + " |"
        lines.append(row)
    cells = [_summary_cell(r["summary"][m]) for m in methods]
    iv = r["summary"].get("interval", {})
    lines.append("| **largest bias; mean abs. bias; shifts within 2 points; within 1.96 SE** | | " + " | ".join(cells)
                 + f" | {iv.get('covered', 0)}/{iv.get('cases', 0)} (of {n_folds} folds x shifts) |" + (" |" if gated else ""))
    return "\n".join(lines)


def render_events(r: dict[str, Any]) -> str:
    """Event P / R / F1 per setting and hop (``results/events.json``, ``benchmarks/events.py``)."""
    d, m = r["data"], r["metric"]
    hops = sorted({row["hop_s"] for row in r["rows"]}, reverse=True)
    wide = f"f1_collar_{m['wide_collar_s']:g}s"
    head = (f"`{r['model']['bundle']}` ({r['model']['name']}), {d['recordings']} recordings of {d['clips']} held-out "
            f"fold-{d['fold']} clips ({d['audio_hours']:.2f} h, gaps {d['gaps_s'][0]:g}-{d['gaps_s'][1]:g} s over a "
            f"{d['noise_floor_dbfs']} dBFS noise floor); precision / recall / **F1** with onsets within "
            f"±{m['collar_s']:g} s (F1 within ±{m['wide_collar_s']:g} s in brackets); `{r['command'].strip()}`")
    lines = [head, "", "| setting | " + " | ".join(f"hop {h:g} s" for h in hops) + " |",
             "|---|" + "---:|" * len(hops)]
    for name in dict.fromkeys(row["setting"] for row in r["rows"]):
        cells = []
        for h in hops:
            row = next(x for x in r["rows"] if x["setting"] == name and x["hop_s"] == h)
            cells.append(f"{row['precision']:.2f} / {row['recall']:.2f} / **{row['f1']:.2f}** ({row[wide]:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_startup(doc: dict[str, Any]) -> str:
    """Start-up of ``tympan --help`` / ``predict`` / ``serve`` against ``import torch`` (``results/startup.json``)."""
    sys.path.insert(0, str(HERE))
    from startup import render_table

    return render_table(doc)


def render_adaptation_ood(r: dict[str, Any]) -> str:
    """OOD rate of adapted bundles, old vs carried-over judges (issue #24 item 10)."""
    lines = [f"| shift (% of files flagged OOD) | own field audio ({r['n_adapt']} clips): original | AdaBN, judges as fitted | AdaBN, judges "
             f"carried over | held-out evaluation ({r['n_eval']} clips): original | AdaBN, as fitted | AdaBN, carried |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        cells = [_pct(row[f"ood_{part}_{k}"]) for part in ("own", "eval") for k in ("original", "uncarried", "carried")]
        lines.append(f"| {row['description']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_batch_side_by_side(doc: dict[str, Any]) -> str:
    """tympan predict against BirdNET-Analyzer's model (``results/batch.json``, ``benchmarks/batch.py``)."""
    sys.path.insert(0, str(HERE))
    from batch import render_side_by_side

    return render_side_by_side(doc)


def render_live(r: dict[str, Any]) -> str:
    """The listener's speed, latency and memory (``results/live.json``, ``benchmarks/live.py``)."""
    m, rtf, mem = r["machine"], r["rtf"], r["memory"]
    head = (f"`{r['model']['bundle']}` ({r['model']['name']}, {r['window_s']:g} s windows), {m['cpu']}, "
            f"{m['cores']} cores shared (load average {m['load_avg_start']:g} at the start, {m['load_avg_end']:g} at "
            f"the end), {m['torch_threads']} torch thread; `{r['command'].strip()}`")
    lines = [head, "", "| measure | value |", "|---|---:|",
             f"| real-time factor per stream, one core ({rtf['audio_s']:g} s of audio, hop 2.5 s) | "
             f"**{rtf['rtf_wall']:.0f}x** per wall second, {rtf['rtf_cpu']:.0f}x per CPU second |",
             f"| listener wall / bare forward of the same windows one at a time | {rtf['listener_over_forward']:.2f} |"]
    for row in r.get("latency") or []:
        o, c, w = row["open_alert_after_end_s"], row["close_alert_after_end_s"], row["open_alert_wall_ms"]
        lines.append(f"| hop {row['hop_s']:g} s: alert on the event's confirmation (`on = \"open\"`), after the sound "
                     f"ends (median / p90 / max; {row['found']} of {row['clips']} clips found; goal {row['goal_s']:g} s) | "
                     f"{o['median']:.1f} / {o['p90']:.1f} / {o['max']:.1f} s |")
        lines.append(f"| hop {row['hop_s']:g} s: alert on the event's close (`on = \"close\"`), after the sound ends "
                     f"(median / p90 / max) | {c['median']:.1f} / {c['p90']:.1f} / {c['max']:.1f} s |")
        lines.append(f"| hop {row['hop_s']:g} s: wall time from the block's arrival to the open alert at the sink "
                     f"(median / max) | {w['median']:.0f} / {w['max']:.0f} ms |")
    lines.append(f"| RSS over {mem['stream_hours']:g} h of stream ({mem['windows']} windows, {mem['events']} events, "
                 f"fed in {mem['wall_s']:.0f} s) | {mem['rss_after_warmup_mb']:.0f} MB early, "
                 f"{mem['rss_last_mb']:.0f} MB at the end (max {mem['rss_max_mb']:.0f}; slope "
                 f"{mem['rss_slope_mb_per_h']:+.2f} MB/h after the first half hour) |")
    return "\n".join(lines)


def render_diagnostics(r: dict[str, Any]) -> str:
    """Calibration, energy OOD and drift power of the shipped model (``results/diagnostics.json``,
    ``benchmarks/diagnostics.py --reps 200 --json``)."""
    c, ro, os_ = r["calibration"], r["real_ood"], r["open_set"]
    b, a, floor = c["before"], c["after"], c["ece_noise_floor"]
    e, m = ro["pooled"]["energy"], ro["pooled"]["max_softmax"]
    kinds = ", ".join(f"{k} {v['energy']['auroc']:.3f} / {v['energy']['fpr_at_95_tpr']:.2f}"
                      for k, v in sorted(ro["per_kind"].items()))
    drift = r["drift"]
    clean = drift.get("clean (false alarm)", {}).get("flagged")
    shifted = {k: v["flagged"] for k, v in drift.items() if k != "clean (false alarm)"}
    power = min(shifted.values()) if shifted else None
    floor_mean = floor["mean"] if isinstance(floor, dict) else floor
    ece_ok = "met" if a["ece"] <= 0.02 else f"not met (noise floor on {b['n_samples']} clips is {floor_mean:.3f})"
    ood_ok = "met" if e["auroc"] >= 0.95 and e["fpr_at_95_tpr"] <= 0.20 else "not met"
    lines = ["| what | measured | target |", "|---|---|---|",
             f"| ECE before → after temperature scaling (T = {c['temperature']:.3f}, cross-fitted) | "
             f"{b['ece']:.3f} → {a['ece']:.3f} (adaptive ECE {a['adaptive_ece']:.3f}) | ≤ 0.02: {ece_ok} |",
             f"| NLL before → after | {b['nll']:.3f} → {a['nll']:.3f} | |",
             f"| real OOD set ({e['n_out']} clips), energy: AUROC / AUPR-out / FPR95 | "
             f"{e['auroc']:.3f} / {e['aupr_out']:.3f} / {e['fpr_at_95_tpr']:.3f} | ≥ 0.95 / – / ≤ 0.20: {ood_ok} |",
             f"| real OOD set, max-softmax baseline | {m['auroc']:.3f} / {m['aupr_out']:.3f} / {m['fpr_at_95_tpr']:.3f} | |",
             f"| energy by OOD kind (AUROC / FPR95) | {kinds} | |",
             f"| open set (10 ESC-50 classes unseen), energy vs max-softmax AUROC | "
             f"{os_['energy']['auroc']:.3f} vs {os_['max_softmax']['auroc']:.3f} | |"]
    if "knn_embedding_k10" in r:
        k = r["knn_embedding_k10"]
        lines.append(f"| real OOD set, k-NN (k = 10) on the embedding: AUROC / FPR95 | {k['auroc']:.3f} / {k['fpr_at_95_tpr']:.3f} | |")
    if power is not None:
        lines.append(f"| drift power: {', '.join(shifted)} | {power:.2f} at least (100-clip samples) | "
                     f"≥ 0.95: {'met' if power >= 0.95 else 'not met'} |")
    if clean is not None:
        lines.append(f"| drift false alarms on clean 100-clip samples | {clean:.2f} | ≤ 0.05: {'met' if clean <= 0.05 else 'not met'} |")
    lines.append("")
    lines.append(f"Bundle {r.get('bundle_name', '?')}; machine: {r['machine']}.")
    return "\n".join(lines)


RENDERERS = {"candidates": render_candidates, "folds": render_folds, "live": render_live, "events": render_events, "esc50_cv": render_esc50_cv, "adaptation_ood": render_adaptation_ood, "robustness": render_robustness, "trust_ood": render_trust_ood,
             "other_sources": render_other_sources,
             "trust_performance": render_trust_performance, "trust_performance_cv": render_trust_performance_cv,
             "trust_performance_cv_baseline": render_trust_performance_cv, "startup": render_startup,
             "batch_side_by_side": render_batch_side_by_side, "diagnostics": render_diagnostics,
             "train_speed": render_train_speed, "train_speed_amx": render_train_speed}
#: tables whose results file is not named after the table
SOURCES = {"batch_side_by_side": "batch"}


def render_all(results: Path = RESULTS) -> dict[str, str]:
    return {name: fn(json.loads((results / f"{SOURCES.get(name, name)}.json").read_text()))
            for name, fn in RENDERERS.items()}


def update(text: str, tables: dict[str, str]) -> str:
    for name, table in tables.items():
        pattern = re.compile(rf"(<!-- table:{name} [^\n]*-->\n)(.*?)(<!-- /table:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README has no <!-- table:{name} ... --> block")
        text = pattern.sub(lambda mo: mo.group(1) + table + "\n" + mo.group(3), text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the README is not what the JSON gives")
    p.add_argument("--readme", default=str(README))
    args = p.parse_args(argv)
    path = Path(args.readme)
    text = path.read_text()
    new = update(text, render_all())
    if args.check:
        if new != text:
            print(f"{path}: tables differ from benchmarks/results/*.json; run benchmarks/readme_tables.py")
            return 1
        return 0
    if new != text:
        path.write_text(new)
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
