"""``diagnose`` (also ``tympan diagnose``) and ``tympan calibrate``.

Exit codes of ``diagnose``:

* 0 -- no drift and no OOD excess above threshold (per ``--fail-on``), or nothing to judge
  ("insufficient data" for folders with fewer than 20 readable recordings);
* 1 -- per ``--fail-on``: ``model`` (default) = the model is affected (estimated accuracy more than
  ``--accuracy-margin`` below the held-out accuracy, OOD or background rate above expected;
  embedding drift when the bundle has no accuracy estimator); ``audio`` = the audio differs
  (acoustic drift, predicted-class mix); ``drift`` = the acoustic / embedding / predicted-class /
  confidence checks; ``ood`` = the OOD-rate check; ``any`` = any check; ``never`` = always 0;
* 2 -- error: missing or empty folder, every file unreadable, bad or missing bundle, missing
  data; one line on stderr, no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

EXIT_OK, EXIT_FLAGGED, EXIT_ERROR = 0, 1, 2

DESCRIPTION = ("Tell when to distrust the model: drift of field recordings against the training audio, "
               "OOD rate, estimated accuracy, calibration, confusion and robustness. Exit codes: 0 nothing above "
               "threshold, 1 the model is affected (per --fail-on), 2 error.")


def _add_diagnose_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--field-dir", type=Path, default=None,
                   help="folder of field recordings (searched recursively; unreadable files are listed)")
    p.add_argument("--bundle", type=Path, default=None,
                   help="model bundle (default: $TYMPAN_BUNDLE, else the shipped bundle)")
    p.add_argument("--out", type=Path, default=Path("diagnose-report"),
                   help="folder for report.json and report.html (default: ./diagnose-report)")
    p.add_argument("--fail-on", choices=["model", "audio", "drift", "ood", "any", "never"], default="model",
                   help="what makes the exit code 1: model = the model is affected (estimated accuracy, OOD / "
                        "background rate; default), audio = the audio differs (acoustic drift, class mix), drift = "
                        "any drift check, ood = the OOD rate, any = any check, never")
    p.add_argument("--accuracy-margin", type=float, default=None,
                   help="points (as a fraction) the estimated accuracy may fall below the held-out accuracy "
                        "before the model counts as affected (default 0.05)")
    p.add_argument("--fit", action="store_true",
                   help="first fit the bundle's temperature, OOD threshold, drift reference and held-out "
                        "diagnostics from its held-out predictions (same as `tympan calibrate`)")
    p.add_argument("--heldout", type=Path, default=None,
                   help="held-out predictions (heldout.safetensors; default: the bundle folder's)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="ESC-50 folder for the training reference / robustness (default: $TYMPAN_ESC50_DIR, "
                        "else the folder in the bundle's provenance)")
    p.add_argument("--ood-dir", type=Path, default=None,
                   help="with --fit: the OOD set of `tympan data ood` (fits the outlier probe; OOD histograms)")
    p.add_argument("--robustness", action="store_true",
                   help="accuracy / ECE of the bundle on its held-out clips under controlled corruptions")
    p.add_argument("--max-clips", type=int, default=200, help="held-out clips in the robustness sweep (default 200)")
    p.add_argument("--jobs", type=int, default=1,
                   help="--field-dir: worker processes for decoding and features (default 1)")
    p.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                   help="--field-dir: window step (default: the model's 50%% overlap)")
    p.add_argument("--by", choices=["site", "day", "hour"], default=None,
                   help="--field-dir: every check per site (first sub-folder), day or hour (start time); "
                        "written to field.json")
    p.add_argument("--max-failed-share", type=float, default=0.0,
                   help="--field-dir: share of files that may fail to decode before the run fails with "
                        "exit 2 (default 0)")
    p.add_argument("--acoustic-sample", type=int, default=None,
                   help="--field-dir: units whose acoustic descriptors are measured (default 100)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print report.json to stdout as well")
    p.add_argument("--traceback", action="store_true", help="show the full traceback of unexpected errors")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("diagnose", help="drift / OOD / calibration / robustness report", description=DESCRIPTION)
    _add_diagnose_args(p)
    p.set_defaults(func=cmd_diagnose)

    c = subparsers.add_parser("calibrate", help="fit a bundle's temperature, OOD threshold and drift reference",
                              description="Fit temperature scaling, the energy OOD threshold (95% TPR), the drift "
                                          "reference and held-out diagnostics from the bundle's held-out "
                                          "predictions; with --data-dir also the OOD score on the embedding "
                                          "(with --ood-dir the outlier probe, which then decides OOD) and the "
                                          "background detector; writes the bundle back atomically.")
    c.add_argument("--bundle", type=Path, required=True, help="bundle folder (updated in place unless --out)")
    c.add_argument("--heldout", type=Path, default=None, help="held-out predictions (default: the bundle's)")
    c.add_argument("--data-dir", type=Path, default=None, help="ESC-50 folder (default: $TYMPAN_ESC50_DIR)")
    c.add_argument("--train-folds", default=None, help="comma-separated training folds (default: provenance)")
    c.add_argument("--ood-dir", type=Path, default=None,
                   help="OOD set built by `tympan data ood`: its dev split fits the outlier probe that decides OOD "
                        "(its eval split is reported), and the stored OOD histograms")
    c.add_argument("--outliers-dir", type=Path, action="append", default=[], metavar="DIR",
                   help="with --ood-dir: more development outliers from other sources, a folder with a "
                        "manifest.csv (e.g. scripts/build_other_sources.sh); its ESC-class clips are left out "
                        "(repeatable)")
    c.add_argument("--out", type=Path, default=None, help="write the fitted bundle here instead")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_calibrate)


def _log(args: argparse.Namespace) -> Any:
    return (lambda *a, **k: None) if getattr(args, "quiet", False) else (lambda *a: print(*a, file=sys.stderr))


def cmd_calibrate(args: argparse.Namespace) -> int:
    from tympan.bundle import resolve_bundle_dir
    from tympan.diagnostics.calibrate import fit_bundle
    from tympan.diagnostics.trust import outlier_rows
    from tympan.errors import DataError

    folds = [int(f) for f in args.train_folds.split(",")] if args.train_folds else None
    if args.outliers_dir and args.ood_dir is None:
        raise DataError("--outliers-dir adds to the OOD set's outliers: give --ood-dir too")
    for d in args.outliers_dir:  # a wrong folder fails now, not after minutes of fitting
        if not outlier_rows(d):
            raise DataError(f"{d}: its manifest.csv lists no non-ESC development clips")
    summary = fit_bundle(resolve_bundle_dir(args.bundle), heldout=args.heldout, data_dir=args.data_dir,
                         train_folds=folds, ood_dir=args.ood_dir, outlier_dirs=args.outliers_dir, out_dir=args.out,
                         progress=not args.quiet, log=_log(args))
    print(_calibration_text(summary))
    return EXIT_OK


def _calibration_text(s: dict[str, Any]) -> str:
    b, a = s["calibration"]["before"], s["calibration"]["after"]
    lines = [
        f"bundle {s['bundle']}: temperature {s['temperature']:.4f}, energy OOD threshold "
        f"{s['ood']['threshold']:.4f} (95% TPR on {s['ood']['fitted_on']})",
        f"  ECE {b['ece']:.4f} -> {a['ece']:.4f}, NLL {b['nll']:.4f} -> {a['nll']:.4f}, "
        f"Brier {b['brier']:.4f} -> {a['brier']:.4f}, accuracy {b['accuracy']:.4f}",
        f"  ({s['calibration']['protocol']})",
    ]
    nf = s["calibration"].get("ece_noise_floor")
    if nf:
        lines.append(f"  ECE a perfectly calibrated model would show here: {nf['mean']:.4f} (95% quantile {nf['q95']:.4f})")
    for k, v in (s.get("reference") or {}).items():
        lines.append(f"  reference {k}: {v}")
    if s.get("ood_metrics"):
        m = s["ood_metrics"]
        lines.append(f"  energy score on the OOD set: AUROC {m['auroc']:.3f}, FPR@95%TPR {m['fpr_at_95_tpr']:.3f}")
    from tympan.contracts.ood import served_ood

    served = served_ood(s["ood"])
    if not served.decides_by_energy:
        text = served.figures_text()
        lines.append(f"  OOD decided by the {served.headline()}" + (f": {text}" if text else ""))
    return "\n".join(lines)


def _model_block(predictor: Any, bundle_dir: Path) -> dict[str, Any]:
    b = predictor.bundle
    return {"name": b.name, "arch": b.arch, "version": predictor.version, "bundle": str(bundle_dir),
            "temperature": float(b.temperature), "ood": b.ood, "classes": list(b.classes),
            "metrics": b.metrics}


def adaptation_block(bundle: Any) -> dict[str, Any] | None:
    """What an adapted bundle was adapted on (provenance), for the report; None for an unadapted bundle."""
    a = (bundle.provenance or {}).get("adaptation")
    if not a:
        return None
    rep = (bundle.extra or {}).get("adaptation") or {}
    refit = rep.get("refitted") or {}
    stale = rep.get("stale") or []
    desc = (f"adapted from {a.get('adapted_from')} by {a.get('method')} on {a.get('n_files')} files of "
            f"{a.get('field_dir')} ({a.get('date')})")
    return {"method": a.get("method"), "adapted_from": a.get("adapted_from"), "field_dir": a.get("field_dir"),
            "n_files": a.get("n_files"), "date": a.get("date"), "files_sha256": a.get("files_sha256"),
            "description": desc, "refitted": sorted(refit), "stale": list(stale)}


def _issue(entry: dict[str, Any]) -> dict[str, Any]:
    """An unreadable or skipped file as the report stores it: display name, exact bytes, one-line reason."""
    from tympan.names import display_name, name_fields

    return {**entry, **name_fields(entry["file"]), "reason": display_name(str(entry["reason"]))}


def field_report(predictor: Any, bundle_dir: Path, field_dir: Path, *, progress: bool = True,
                 analysis: dict[str, Any] | None = None,
                 fail_on: str = "model", accuracy_margin: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Analyse ``field_dir`` and run every check; returns ``(report, html_extras)``."""
    from tympan.io import decode_array
    from tympan.diagnostics.calibrate import performance_for
    from tympan.diagnostics.field import analyse_folder, drift_checks, exit_code_for
    from tympan.diagnostics.archive import (CheckRecorder, analysis_kwargs, archive_summary,
                                            failed_files_exit_code)

    drift_checks = CheckRecorder(drift_checks)  # remembers its arguments: --by reruns it per group
    from tympan.errors import DataError
    from tympan.names import display_name, name_fields

    bundle = predictor.bundle
    clips = analyse_folder(predictor, field_dir, progress=progress, **analysis_kwargs(analysis))
    n_files = len(clips) + len(clips.unreadable)
    if len(clips) == 0:
        raise DataError(f"{field_dir}: none of the {n_files} audio files could be decoded "
                        f"(first: {clips.unreadable[0]['reason']})")
    perf = performance_for(bundle, bundle_dir)
    res = drift_checks(bundle.reference or {}, bundle.ood or {}, bundle.classes, clips, performance=perf,
                       accuracy_margin=accuracy_margin, background=bundle.background or None)
    if not res["checks"]:
        from tympan.errors import BundleError

        raise BundleError(f"{bundle_dir}: the bundle has no fitted drift reference or OOD threshold; run "
                          f"`tympan calibrate --bundle {bundle_dir}` (or diagnose --fit) first")
    code = exit_code_for(res, fail_on)
    archive = archive_summary(clips, drift_checks, analysis)  # coverage; checks per group (--by)
    code = failed_files_exit_code(code, clips, analysis)  # 2: files failed beyond --max-failed-share
    classes = list(bundle.classes)
    thr = (bundle.ood or {}).get("threshold")
    emb_thr = ((bundle.ood or {}).get("embedding") or {}).get("threshold")
    per_file = []
    for i, (f, p, c, e, w) in enumerate(zip(clips.ids, clips.predictions, clips.confidence, clips.energy,
                                             clips.n_windows, strict=True)):
        row = {**name_fields(f), "predicted": classes[int(p)], "confidence": float(c), "energy": float(e),
               "out_of_distribution": bool(thr is not None and e > thr), "windows": int(w)}
        if emb_thr is not None and clips.ood_score is not None:  # the score that decides OOD in /predict
            row["ood_score"] = float(clips.ood_score[i])
            row["out_of_distribution"] = bool(clips.ood_score[i] > float(emb_thr))
        if clips.background is not None:
            row["background"] = bool(clips.background[i])
        per_file.append(row)
    acoustic = res["checks"].get("acoustic") or {}
    pc = res["checks"].get("performance") or {}
    performance = None
    if pc.get("estimated_accuracy"):
        ea = pc["estimated_accuracy"]
        performance = {
            "estimated_accuracy": {"value": ea["value"], "low": ea["low"], "high": ea["high"], "method": ea["method"]},
            "heldout_accuracy": pc["heldout_accuracy"], "margin": pc["margin"], "n": ea["n"],
            "interval": "95% sampling interval (Wilson score on the count above the ATC threshold; normal for "
                        f"confidence means) widened by the validated systematic error {ea['systematic_error']:.3f}",
            "method_description": pc.get("method_description"), "fitted_on": pc.get("fitted_on"),
            "validation": (perf or {}).get("validation"), "stale": bool(pc.get("stale")),
            "stale_reason": pc.get("stale_reason"), "note": (perf or {}).get("note"),
        }
    report = {
        "summary": res["gate"]["summary"],
        "performance": performance,
        "gate": res["gate"],
        "adaptation": adaptation_block(bundle),
        "verdict": res["overall"]["verdict"],
        "overall": res["overall"],
        "n_reference": acoustic.get("n_reference"),
        "n_field": len(clips),
        "features": acoustic.get("features", []),
        "field": {"folder": display_name(field_dir), "n_files": n_files, "n_analysed": len(clips),
                  "n_unreadable": len(clips.unreadable), "unreadable": [_issue(e) for e in clips.unreadable],
                  "n_skipped": len(clips.skipped), "skipped": [_issue(e) for e in clips.skipped]},
        "checks": res["checks"],
        "recording_format": res["recording_format"],
        "per_file": per_file,
        "coverage": (archive or {}).get("coverage") or None,
        "by": (archive or {}).get("by"),
        "groups": (archive or {}).get("groups"),
        "exit_code": code,
        "fail_on": fail_on,
    }
    ref = bundle.reference or {}
    preds = (ref.get("predictions") or {}).get("counts")
    extras = {
        "confidence_reference": decode_array(ref["confidence"]["values"]) if (ref.get("confidence") or {}).get("values") else None,
        "confidence_field": clips.confidence,
        "energy_reference": decode_array(ref["energy"]["values"]) if (ref.get("energy") or {}).get("values") else None,
        "energy_field": clips.energy,
        "threshold": thr,
        "classes": classes,
        "pred_reference": np.asarray(preds if preds is not None else np.zeros(len(classes))),
        "pred_field": np.bincount(clips.predictions, minlength=len(classes)),
    }
    extras["archive"] = archive
    return report, extras


def _print_field(report: dict[str, Any]) -> None:
    f = report["field"]
    print(report["summary"])
    if report.get("adaptation"):
        print(f"  bundle {report['adaptation']['description']}")
    print(f"{f['folder']}: {f['n_analysed']} recordings analysed, {f['n_unreadable']} unreadable, "
          f"{f['n_skipped']} non-audio skipped")
    for name, c in report["checks"].items():
        extra = ""
        if name == "acoustic" and c.get("drifted_features"):
            extra = " (" + ", ".join(c["drifted_features"][:6]) + ")"
        print(f"  {name:<12} {c.get('verdict', ''):<18} {c.get('message', '') if name != 'acoustic' else ''}{extra}")
    ov = report["overall"]
    print(f"overall: {ov['verdict']}" + (f" ({ov['note']})" if ov.get("note") else ""))
    for r in ov.get("reasons") or []:
        print(f"  - {r}")
    for n in (report.get("recording_format") or {}).get("notes") or []:
        print(f"  note: {n}")
    for b in f["unreadable"][:20]:
        print(f"  unreadable: {b['reason']}")
    if len(f["unreadable"]) > 20:
        print(f"  ... and {len(f['unreadable']) - 20} more unreadable files (see report.json)")


def cmd_diagnose(args: argparse.Namespace) -> int:
    from tympan import warnlog

    with warnlog.counted("diagnose"):  # librosa's per-clip warnings: one line per kind, counted
        return _diagnose(args)


def _diagnose(args: argparse.Namespace) -> int:
    from tympan.diagnostics.field import make_predictor
    from tympan.bundle import resolve_bundle_dir
    from tympan.diagnostics.calibrate import fit_bundle
    from tympan.diagnostics.report import REPORT_VERSION, now_iso, write_report
    from tympan.errors import DataError
    from tympan.diagnostics.archive import analysis_options, print_archive, write_archive

    from tympan.names import printable_streams

    printable_streams()
    try:
        if args.field_dir is not None and not args.field_dir.exists():  # fail before loading anything
            raise DataError(f"{args.field_dir}: no such directory")
        bundle_dir = resolve_bundle_dir(args.bundle)
        progress = not args.quiet
        report: dict[str, Any] = {"tympan_report": REPORT_VERSION, "generated": now_iso()}
        if args.fit:
            summary = fit_bundle(bundle_dir, heldout=args.heldout, data_dir=args.data_dir, ood_dir=args.ood_dir,
                                 progress=progress, log=_log(args))
            print(_calibration_text(summary))
            report["fit"] = summary
        predictor = make_predictor(bundle_dir)
        report["model"] = _model_block(predictor, bundle_dir)
        extras: dict[str, Any] = {}
        code = EXIT_OK
        kinds = []
        if args.field_dir is not None:
            fr, extras = field_report(predictor, bundle_dir, args.field_dir, progress=progress, analysis=analysis_options(args), fail_on=args.fail_on,
                                      accuracy_margin=args.accuracy_margin)
            report.update(fr)
            code = fr["exit_code"]
            kinds.append("field")
            _print_field(fr)
            print_archive(extras.get("archive"))
        if args.robustness:
            from tympan.diagnostics.robustness import format_table, run_sweep

            rob = run_sweep(predictor, bundle_dir, data_dir=args.data_dir, max_clips=args.max_clips,
                            progress=progress)
            report["robustness"] = rob
            kinds.append("robustness")
            print(format_table(rob))
        diag = (predictor.bundle.extra or {}).get("diagnostics")
        report["model_diagnostics"] = diag
        if not kinds:
            kinds.append("model")
            _print_model(diag, predictor.bundle.ood)
        report["kind"] = "+".join(kinds)
        report["exit_code"] = code
        report["fail_on"] = args.fail_on
        paths = write_report(args.out, report, extras)
        write_archive(args.out, extras.get("archive"))
        print(f"report: {paths['html']} and {paths['json']}")
        if args.json:
            print(json.dumps(json.loads(Path(paths["json"]).read_text()), indent=2))
        return code
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        from tympan.errors import TympanError

        if args.traceback:
            raise
        if isinstance(exc, TympanError | FileNotFoundError | NotADirectoryError | PermissionError | ValueError):
            print(f"diagnose: error: {exc}", file=sys.stderr)
        else:
            print(f"diagnose: error: {type(exc).__name__}: {exc} (run with --traceback for details)", file=sys.stderr)
        return EXIT_ERROR


def _print_model(diag: dict[str, Any] | None, ood_block: dict[str, Any] | None = None) -> None:
    from tympan.contracts.ood import served_ood

    served = served_ood(ood_block)
    text = served.figures_text()
    print(f"OOD decided by the {served.headline()}" + (f": {text}" if text else ""))
    if not diag:
        print("this bundle stores no held-out diagnostics: run `tympan calibrate --bundle DIR` "
              "(or `diagnose --bundle DIR --fit`)")
        return
    cal = diag.get("calibration") or {}
    b, a = cal.get("before") or {}, cal.get("after") or {}
    print(f"measured on: {diag.get('evaluated_on')}")
    print(f"  accuracy {diag.get('accuracy', 0):.4f}; temperature {cal.get('temperature', 1):.4f}")
    if b and a:
        print(f"  ECE {b['ece']:.4f} -> {a['ece']:.4f} (cross-fitted), NLL {b['nll']:.4f} -> {a['nll']:.4f}, "
              f"MCE {b['mce']:.4f} -> {a['mce']:.4f}, Brier {b['brier']:.4f} -> {a['brier']:.4f}")
    pairs = (diag.get("confusion") or {}).get("confused_pairs") or []
    for p in pairs[:5]:
        print(f"  confused: {p['class_a']} <-> {p['class_b']}: {p['a_as_b']} + {p['b_as_a']}")
    ood = diag.get("ood") or {}
    note = "" if served.decides_by_energy else f" (for comparison; not served: the {served.label} decides)"
    if ood.get("threshold") is not None:
        print(f"  energy threshold {ood['threshold']:.4f} (keeps {ood.get('in_distribution_accepted', 0):.1%} "
              f"of held-out clips){note}")
    if ood.get("metrics"):
        m = ood["metrics"]
        print(f"  energy score on {ood.get('out_set')}: AUROC {m['auroc']:.3f}, FPR@95%TPR {m['fpr_at_95_tpr']:.3f}, "
              f"flagged {m.get('flagged_at_threshold', 0):.1%}{note}")


def diagnose_main(argv: Sequence[str] | None = None) -> int:
    """The ``diagnose`` console script: identical to ``tympan diagnose``."""
    parser = argparse.ArgumentParser(prog="diagnose", description=DESCRIPTION)
    _add_diagnose_args(parser)
    args = parser.parse_args(argv)
    return cmd_diagnose(args)
