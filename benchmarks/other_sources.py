"""Beyond Freesound (issue #20 item 6): the shipped model and its trust layer on recordings from
other sources, beside held-out ESC-50 from the same run.

    .venv/bin/python benchmarks/other_sources.py [--bundle DIR] [--data-dir DIR] [--set-dir DIR]
        [--ood-dir DIR] [--max-per-source N]

The set (``scripts/build_other_sources.sh``, :mod:`tympan.datasets.other_sources`) holds ESC-class
recordings (labelled by file name) and music, game sound effects and speech from Debian packages that
neither ESC-50 (Freesound) nor the OOD set draws on. Every figure of the first part comes from the
bundle as shipped, through the one prediction path (:func:`tympan.inference.prediction.aggregate`
on the Predictor's window outputs): top-1 accuracy on the ESC-class clips (per package and class),
mean confidence, the accuracy the bundle's label-free estimator predicts for them
(:func:`tympan.diagnostics.field.performance_check`, as ``tympan diagnose`` does), and the share
flagged OOD or background per kind and per package; the held-out ESC-50 fold's (thresholds were
fitted on it: in-sample) beside them.

Leave one source out: the outlier probe is refitted as ``tympan calibrate --ood-dir`` fits it
(:func:`tympan.diagnostics.trust.fit_probe`: training-fold windows, as recorded and 20 dB quieter,
against outliers; 96 %-TPR threshold on held-out windows) with the OOD set's ``dev`` split as its
outliers, without and with the non-ESC clips of every OTHER package added; each package's non-ESC
clips (and its ESC-class clips, which should stay unflagged) are judged by the probe that never
saw them; the held-out ESC-50 false-alarm rate is cross-fitted (``benchmarks/trust_ood.py``).

Writes ``benchmarks/results/other_sources.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, repo_relative  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
SCHEMA = "tympan.benchmarks.other_sources/1"
NON_ESC = ("music", "sfx", "speech")


class _Probabilities:
    """The part of a :class:`tympan.diagnostics.field.ClipSet` the accuracy estimate reads."""

    def __init__(self, probabilities: np.ndarray) -> None:
        self.probabilities = probabilities

    def __len__(self) -> int:
        return len(self.probabilities)


def _cap(rows: list[dict[str, str]], per_source: int | None) -> list[dict[str, str]]:
    """At most ``per_source`` non-ESC clips of each package (spread over it); ESC-class clips all kept."""
    if per_source is None:
        return rows
    by: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if r["kind"] != "esc-class":
            by[r["package"]].append(i)
    keep = {i for i, r in enumerate(rows) if r["kind"] == "esc-class"}
    for idx in by.values():
        keep |= {idx[int(j)] for j in np.linspace(0, len(idx) - 1, min(per_source, len(idx)))}
    return [r for i, r in enumerate(rows) if i in keep]


def _rate(mask: np.ndarray, where: np.ndarray) -> float | None:
    return float(mask[where].mean()) if where.any() else None


def main(argv: list[str] | None = None) -> int:
    import torch

    from tympan.bundle import load_bundle, read_heldout, resolve_bundle_dir
    from tympan.cache import cache_root
    from tympan.datasets import load_esc50
    from tympan.datasets.ood import build_ood_set
    from tympan.diagnostics.calibrate import performance_for
    from tympan.diagnostics.field import performance_check
    from tympan.diagnostics.trust import PROBE_QUIET_DB, TPR, WindowOutputs, fit_probe, window_outputs
    from tympan.inference import Predictor
    from tympan.inference.prediction import aggregate
    from trust_ood import crossfit_rate

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default=None)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "esc50"))
    p.add_argument("--set-dir", default=str(REPO / "data" / "other-sources"),
                   help="built by scripts/build_other_sources.sh")
    p.add_argument("--ood-dir", default=None, help="built by `tympan data ood` (default: build one in the cache)")
    p.add_argument("--max-per-source", type=int, default=None,
                   help="at most this many non-ESC clips per package (ESC-class clips are all kept)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    bundle_dir = resolve_bundle_dir(args.bundle)
    bundle = load_bundle(bundle_dir)
    pred = Predictor(bundle)
    classes = list(bundle.classes)
    ds = load_esc50(args.data_dir)
    fold = int(read_heldout(bundle_dir).fold)
    train_folds = [int(f) for f in bundle.provenance.get("train_folds") or sorted(set(ds.folds.tolist()) - {fold})]
    set_dir = Path(args.set_dir)
    with open(set_dir / "manifest.csv", encoding="utf-8", newline="") as f:
        rows = _cap(list(csv.DictReader(f)), args.max_per_source)
    skipped = []
    if (set_dir / "skipped.csv").is_file():
        with open(set_dir / "skipped.csv", encoding="utf-8", newline="") as f:
            skipped = list(csv.DictReader(f))
    ood_dir = Path(args.ood_dir) if args.ood_dir else cache_root() / "bench-trust" / "ood"
    if not (ood_dir / "manifest.csv").is_file():
        build_ood_set(ood_dir)

    # ---- the shipped bundle, through the prediction path
    def recordings(out: WindowOutputs, n: int) -> Any:
        return aggregate(out.logits, pred.params, out.index, n, embeddings=out.embeddings, levels=out.levels)

    held_idx = np.flatnonzero(ds.folds == fold)
    held_w = window_outputs(pred, [ds.files[i] for i in held_idx], cache_key=f"fold{fold}|{ds.fingerprint()}")
    held = recordings(held_w, len(held_idx))
    held_y = ds.labels[held_idx]
    other_w = window_outputs(pred, [set_dir / r["file"] for r in rows], progress=True, desc="other-source clips")
    other = recordings(other_w, len(rows))
    kind = np.asarray([r["kind"] for r in rows])
    pkg = np.asarray([r["package"] for r in rows])
    label = np.asarray([r["label"] for r in rows])
    flag_ood, flag_bg = np.asarray(other.out_of_distribution, bool), np.asarray(other.background, bool)
    either = flag_ood | flag_bg
    pred_lbl = np.asarray([classes[i] for i in other.probabilities.argmax(1)])
    conf = other.probabilities.max(1)
    esc = kind == "esc-class"
    perf = performance_for(bundle, bundle_dir)

    def estimate(probs: np.ndarray) -> dict[str, Any] | None:
        if not perf or not (perf.get("estimator") or {}).get("method"):
            return None
        chk = performance_check(perf, _Probabilities(probs))
        ea = chk.get("estimated_accuracy") or {}
        return {"value": ea.get("value"), "low": ea.get("low"), "high": ea.get("high"), "method": ea.get("method"),
                "verdict": chk.get("verdict"), "n": chk["n_field"]}

    held_ok = held.probabilities.argmax(1) == held_y
    h_ood, h_bg = np.asarray(held.out_of_distribution, bool), np.asarray(held.background, bool)
    heldout = {"clips": int(len(held_idx)), "accuracy": float(held_ok.mean()),
               "mean_confidence": float(held.probabilities.max(1).mean()),
               "estimated_accuracy": estimate(held.probabilities), "ood": float(h_ood.mean()),
               "background": float(h_bg.mean()), "ood_or_background": float((h_ood | h_bg).mean()),
               "note": "in-sample: the bundle's thresholds were fitted on these clips' windows"}
    ok = pred_lbl == label
    assembled = np.asarray([r["original_path"].startswith("assembled") for r in rows])
    esc_block = {
        "clips": int(esc.sum()), "accuracy": _rate(ok, esc), "mean_confidence": _rate(conf, esc),
        # clips the builder laid out from single recorded events (steps, key strokes) vs recordings as shipped
        "by_origin": {name: {"n": int((esc & m).sum()), "accuracy": _rate(ok, esc & m),
                             "mean_confidence": _rate(conf, esc & m), "ood_or_background": _rate(either, esc & m),
                             "estimated_accuracy": estimate(other.probabilities[esc & m]),
                             "classes": sorted(set(label[esc & m]))}
                      for name, m in (("as recorded", ~assembled), ("assembled", assembled)) if (esc & m).any()},
        "estimated_accuracy": estimate(other.probabilities[esc]) if esc.any() else None,
        "ood_or_background": _rate(either, esc),
        "by_package": {k: {"n": int((esc & (pkg == k)).sum()), "accuracy": _rate(ok, esc & (pkg == k)),
                           "ood_or_background": _rate(either, esc & (pkg == k))}
                       for k in sorted(set(pkg[esc]))},
        "by_class": {c: {"n": int((esc & (label == c)).sum()), "accuracy": _rate(ok, esc & (label == c)),
                         "predicted": dict(sorted({q: int(((label == c) & esc & (pred_lbl == q)).sum())
                                                   for q in set(pred_lbl[esc & (label == c)])}.items(),
                                                  key=lambda kv: (-kv[1], kv[0])))}
                     for c in sorted(set(label[esc]))},
    }
    by_kind = {k: {"n": int((kind == k).sum()), "ood": _rate(flag_ood, kind == k), "background": _rate(flag_bg, kind == k),
                   "ood_or_background": _rate(either, kind == k), "mean_confidence": _rate(conf, kind == k)}
               for k in ("esc-class", *NON_ESC) if (kind == k).any()}
    by_package = {k: {"kinds": {q: int(((pkg == k) & (kind == q)).sum()) for q in sorted(set(kind[pkg == k]))},
                      "non_esc_ood_or_background": _rate(either, (pkg == k) & ~esc),
                      "non_esc_ood": _rate(flag_ood, (pkg == k) & ~esc)}
                  for k in sorted(set(pkg))}

    # ---- leave one source out: the probe refitted with the other packages' non-ESC clips
    train_files = [f for f, t in zip(ds.files, np.isin(ds.folds, train_folds), strict=True) if t]
    key = f"train|{ds.fingerprint()}|{sorted(train_folds)}"
    train = window_outputs(pred, train_files, cache_key=key, progress=True, desc="training windows")
    quiet = window_outputs(pred, train_files, cache_key=key, gain_db=PROBE_QUIET_DB, progress=True,
                           desc="training windows, quieter")
    with open(ood_dir / "manifest.csv", encoding="utf-8", newline="") as f:
        orows = [r for r in csv.DictReader(f) if r.get("split", "dev") == "dev"]
    ood_dev = window_outputs(pred, [ood_dir / r["file"] for r in orows], progress=True, desc="OOD dev windows")
    w_pkg, w_kind = pkg[other_w.index], kind[other_w.index]
    s_held: dict[str, float] = {}

    def probe_with(extra: np.ndarray) -> Any:
        outl = WindowOutputs(np.vstack([ood_dev.embeddings, other_w.embeddings[extra]]),
                             np.vstack([ood_dev.logits, other_w.logits[extra]]),
                             np.vstack([ood_dev.levels, other_w.levels[extra]]), np.zeros(0, np.int64))
        return fit_probe(train, outl, held_w, tpr=TPR, quieter=quiet)

    def clip_flags(probe: Any) -> np.ndarray:
        """Per clip, as the prediction path decides: the mean window score over the threshold."""
        s = probe.decision_function(other_w.embeddings)
        mean = np.bincount(other_w.index, weights=s, minlength=len(rows)) / np.maximum(
            np.bincount(other_w.index, minlength=len(rows)), 1)
        return mean > probe.threshold_

    def held_false_alarm(probe: Any) -> float:
        s = probe.decision_function(held_w.embeddings)
        rec = np.bincount(held_w.index, weights=s, minlength=len(held_idx)) / np.maximum(
            np.bincount(held_w.index, minlength=len(held_idx)), 1)
        return crossfit_rate(rec, held_y)

    base = probe_with(np.zeros(len(w_pkg), bool))
    base_flags = clip_flags(base)
    loso = []
    for s in sorted(set(pkg)):
        probe = probe_with((w_pkg != s) & (w_kind != "esc-class"))
        flags = clip_flags(probe)
        s_held[s] = held_false_alarm(probe)
        m_non, m_esc = (pkg == s) & ~esc, (pkg == s) & esc
        loso.append({"held_out": s, "n_non_esc": int(m_non.sum()), "kinds": sorted(set(kind[m_non])),
                     "flagged_without": _rate(base_flags, m_non), "flagged_with": _rate(flags, m_non),
                     "either_without": _rate(base_flags | flag_bg, m_non), "either_with": _rate(flags | flag_bg, m_non),
                     "esc_class_n": int(m_esc.sum()), "esc_class_flagged_without": _rate(base_flags, m_esc),
                     "esc_class_flagged_with": _rate(flags, m_esc), "esc50_heldout_false_alarm": s_held[s]})
    non = ~esc
    loso_summary = {
        "non_esc_flagged_without": _rate(base_flags, non),
        "non_esc_flagged_with": float(np.sum([(r["flagged_with"] or 0) * r["n_non_esc"] for r in loso]) / non.sum()),
        "esc50_heldout_false_alarm_without": held_false_alarm(base),
        "esc50_heldout_false_alarm_with": {"mean": float(np.mean(list(s_held.values()))),
                                           "max": float(np.max(list(s_held.values())))},
        "esc_class_flagged_without": _rate(base_flags, esc),
        "esc_class_flagged_with": float(np.sum([r["esc_class_flagged_with"] * r["esc_class_n"] for r in loso
                                                if r["esc_class_n"]]) / max(1, int(esc.sum()))),
        "by_kind_without": {k: _rate(base_flags, kind == k) for k in NON_ESC if (kind == k).any()},
        "by_kind_with": {k: float(np.sum([(r["flagged_with"] or 0) * int(((pkg == r["held_out"]) & (kind == k)).sum())
                                          for r in loso]) / max(1, int((kind == k).sum())))
                         for k in NON_ESC if (kind == k).any()},
    }
    est = esc_block["estimated_accuracy"]
    targets = {
        "accuracy_within_5_points": None if esc_block["accuracy"] is None else bool(
            esc_block["accuracy"] >= heldout["accuracy"] - 0.05),
        "ood_or_background_ge_90_every_kind": bool(all(by_kind[k]["ood_or_background"] >= 0.90
                                                       for k in NON_ESC if k in by_kind)),
        "ood_or_background_ge_90_every_source": bool(all(v["non_esc_ood_or_background"] >= 0.90
                                                         for v in by_package.values()
                                                         if v["non_esc_ood_or_background"] is not None)),
        "esc50_heldout_flagged_le_5": bool(heldout["ood_or_background"] <= 0.05),
        # the probe refitted with every other package's non-ESC clips, on the package it never saw
        "leave_one_source_out_probe_ge_90_every_kind": bool(all(v >= 0.90 for v in loso_summary["by_kind_with"].values())),
        "leave_one_source_out_esc50_false_alarm_le_5": bool(loso_summary["esc50_heldout_false_alarm_with"]["max"] <= 0.05),
    }
    result = {
        "schema": SCHEMA,
        "command": "python benchmarks/other_sources.py" + (f" --max-per-source {args.max_per_source}"
                                                           if args.max_per_source else ""),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "bundle": bundle.name, "weights_sha256": bundle.weights_fingerprint,
        "set": {"dir": repo_relative(set_dir), "clips": len(rows), "max_per_source": args.max_per_source,
                "by_kind": {k: int((kind == k).sum()) for k in ("esc-class", *NON_ESC)},
                "packages": sorted(set(pkg)), "skipped_by_builder": skipped, "built_by": "scripts/build_other_sources.sh",
                "builder_caps": "at most 40 files of each kind per package (ESC-class files never capped), at most 3 "
                                "5-s clips per file"},
        "heldout_esc50": {"fold": fold, **heldout},
        "esc_class": esc_block,
        "by_kind": by_kind,
        "by_package": by_package,
        "leave_one_source_out": {
            "protocol": "outlier probe refitted as `tympan calibrate --ood-dir` fits it (training folds as recorded "
                        f"and {PROBE_QUIET_DB:g} dB quieter vs outliers, {TPR:.0%}-TPR threshold on held-out fold {fold}); "
                        "'without': outliers = the OOD set's dev split; 'with': plus the non-ESC clips of every other "
                        "package; the held-out package judged by the probe that never saw it; ESC-50 false alarms "
                        "cross-fitted (5 parts)",
            "summary": loso_summary, "rows": loso},
        "targets": targets,
        "estimated_accuracy_error": None if est is None or esc_block["accuracy"] is None
        else float(est["value"] - esc_block["accuracy"]),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    from tympan.io import write_json_atomic

    write_json_atomic(RESULTS / "other_sources.json", result)  # a reader never sees half a results file
    from readme_tables import render_other_sources

    print(f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; bundle {bundle.name}")
    print(render_other_sources(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
