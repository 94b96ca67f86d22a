"""``tympan adapt``: adapt a bundle to field recordings (AdaBN, or a labelled fine-tune)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _fmt_rate(x: float | None) -> str:
    return "n/a (no threshold)" if x is None else f"{x:.1%}"


def cmd_adapt(args: argparse.Namespace) -> int:
    from tympan.adaptation.field import AdaptationError
    from tympan.bundle import load_bundle

    out = Path(args.out)
    if out.exists() and not args.force:
        raise AdaptationError(f"{out}: already exists; pass --force to replace it (atomically)")
    if Path(args.field_dir).resolve() == out.resolve():
        raise AdaptationError("--out must not be the field folder")
    bundle = load_bundle(args.bundle)
    if args.labels:
        from tympan.adaptation.finetune import finetune_bundle

        new, report = finetune_bundle(
            bundle, args.labels, args.field_dir, data_dir=args.data_dir, replay=not args.no_replay,
            replay_ratio=args.replay_ratio, adabn=not args.no_adabn, last_stage=args.last_stage,
            heldout_fraction=args.heldout_fraction, epochs=args.epochs, lr=args.lr, seed=args.seed, name=args.name,
            progress=not args.quiet,
        )
    else:
        if args.last_stage or args.no_replay or args.no_adabn:
            raise AdaptationError("--last-stage, --no-replay and --no-adabn need --labels labels.csv")
        from tympan.adaptation.adabn import adapt_bundle

        new, report = adapt_bundle(bundle, args.field_dir, batch_size=args.batch_size,
                                   max_windows=args.max_windows, seed=args.seed, name=args.name,
                                   progress=not args.quiet)
    new.save(out)  # held-out predictions of the old weights do not belong to the new bundle
    if args.data_dir and (Path(args.bundle) / "heldout.json").is_file():
        # refit temperature, OOD threshold, drift reference and accuracy estimator: the source bundle's
        # held-out clip ids, recomputed from the ESC-50 folder with the adapted weights
        from tympan.diagnostics.calibrate import fit_bundle

        log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
        log(f"refitting the trust parameters of {out} on ESC-50 held-out clips from {args.data_dir}")
        fit_bundle(out, heldout=args.bundle, data_dir=args.data_dir, progress=not args.quiet, log=log)
        report = (load_bundle(out).extra or {}).get("adaptation", report)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    c = report["checks"]
    print(f"{new.name}: {report['method']} on {report['n_files']} field files ({report['n_windows']} windows) -> {out}")
    print(f"  OOD rate on field clips: {_fmt_rate(c['ood_rate_before'])} before, {_fmt_rate(c['ood_rate_after'])} after")
    print(f"  mean confidence:         {c['mean_confidence_before']:.3f} before, {c['mean_confidence_after']:.3f} after")
    print(f"  predictions changed:     {c['predictions_changed']:.1%} of files")
    lab = report.get("labelled")
    if lab and lab.get("heldout_accuracy"):
        h = lab["heldout_accuracy"]
        extra = f", {h['after_adabn']:.1%} after AdaBN alone" if "after_adabn" in h else ""
        print(f"  held-out labelled accuracy: {h['before']:.1%} before, {h['after']:.1%} after{extra} "
              f"({lab['n_heldout_files']} files)")
    if lab and lab.get("esc50_heldout_accuracy"):
        e = lab["esc50_heldout_accuracy"]
        print(f"  clean ESC-50 held-out fold {e['folds']}: {e['before']:.1%} before, {e['after']:.1%} after ({e['n']} clips)")
    for w in report["warnings"]:
        print(f"  warning: {w}")
    if report.get("refitted"):
        print(f"  refitted on ESC-50 held-out clips: {', '.join(report['refitted'])}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from tympan.cli import run

    p = subparsers.add_parser(
        "adapt", help="adapt a bundle to field recordings (AdaBN; --labels: fine-tune)",
        description="Without labels: re-estimate every BatchNorm layer's statistics on the field audio "
                    "(AdaBN); weights, classes, front end, temperature and OOD threshold are kept. With "
                    "--labels: AdaBN, then a short fine-tune of the head on the labelled clips with ESC-50 "
                    "replay against forgetting. The new bundle records what it was adapted on.")
    p.add_argument("--bundle", required=True, help="bundle to adapt")
    p.add_argument("--field-dir", required=True, help="folder of field recordings (any format, any length)")
    p.add_argument("--out", required=True, help="where to write the adapted bundle")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--name", help="name of the new bundle (default: <name>-adabn / -finetuned)")
    p.add_argument("--batch-size", type=int, default=32, help="AdaBN batch size (default 32)")
    p.add_argument("--max-windows", type=int, default=4000,
                   help="cap on field windows held in memory; beyond it every k-th window is used (default 4000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", help="CSV with columns file,class (files relative to --field-dir)")
    p.add_argument("--data-dir", help="ESC-50 folder: replay for --labels, and refitting the adapted bundle's "
                                      "temperature, OOD threshold, drift reference and accuracy estimator on its "
                                      "held-out clips (without it they are kept and marked stale)")
    p.add_argument("--last-stage", action="store_true", help="also fine-tune the last stage (slower)")
    p.add_argument("--no-replay", action="store_true", help="fine-tune without ESC-50 replay (may forget)")
    p.add_argument("--replay-ratio", type=float, default=4.0,
                   help="ESC-50 replay clips per labelled field window (default 4)")
    p.add_argument("--no-adabn", action="store_true", help="skip AdaBN before the fine-tune")
    p.add_argument("--heldout-fraction", type=float, default=0.3,
                   help="share of labelled clips held out for the before/after figure (default 0.3)")
    p.add_argument("--epochs", type=int, default=30, help="fine-tune epochs (default 30)")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tune learning rate (default 1e-3)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines (they are also off when stderr is not a terminal)")
    p.add_argument("--json", action="store_true", help="print the full adaptation report as JSON")
    p.set_defaults(func=lambda a: run(cmd_adapt, a))
