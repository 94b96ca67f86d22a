"""ESC-50 cross-validation benchmark: one row per model, on the official folds.

Trains (or reads finished run directories) and prints a table: held-out accuracy per fold and
mean +- std, epochs, wall time per epoch and in total, device, parameters, forward FLOPs per
5-s clip (``torch.utils.flop_counter.FlopCounterMode``; 1 multiply-add = 2 FLOPs), and the
machine. Every figure says which folds and epochs it comes from; a bounded CPU run is not a
5-fold CV and the table says so.

Every run is also recorded as data: an entry of ``benchmarks/results/esc50_cv.json`` (schema
:data:`SCHEMA`: per-fold accuracy, mean, sample std, recipe, epochs, device, seconds per epoch,
code version; replaced by name), from which ``benchmarks/readme_tables.py`` renders the README
table. ``--from-runs ... --record`` records finished run dirs the same way.

Examples::

    # bounded run on CPU: fold 5 only, a few epochs per model
    python benchmarks/esc50_cv.py --data-dir ../shared/data/esc50 --archs cnn,resnet18 --folds 5 --epochs 3
    # the table from finished runs (tympan train ... --run-dir runs/X), no retraining
    python benchmarks/esc50_cv.py --from-runs runs/mn04-f5-e30 runs/cnn-f5

Measured on this project's machine (AMD EPYC, 2 cores shared with other jobs, torch 2.13 CPU,
1 thread, no GPU), 2026-11-24; each figure is fold 5 held out, trained on folds 1-4, final
epoch, NOT a 5-fold CV (that does not fit a CPU session; use ``--folds 1,2,3,4,5`` on a GPU,
or ``tympan/training/modal_app.py``):

| model | front end (input) | params | GFLOPs/clip | fold-5 acc. | epochs | s/epoch | total s |
| --- | --- | --- | --- | --- | --- | --- | --- |
| mn04, AudioSet init (shipped) | efficientat (128x500) | 0.74 M | 0.112 | 0.8975 | 30 | 56.9 | 1706 |

The same mn04 recipe with folds 1, 2 and 3 held out in turn (less contended CPU, ~21-24 s/epoch):
0.930, 0.9575, 0.940; with fold 5, mean 0.931 +- 0.022 over folds {1, 2, 3, 5} (fold 4 not run).
The 56.9 s/epoch of the fold-5 run includes epochs slowed by other jobs on the shared CPU.
| cnn from scratch | default (64x251) | 1.19 M | 1.625 | 0.785 | 25 | 60.6 | 1515 |
| resnet18 (seed recipe, 224x224) | default (64x251) | 11.20 M | 3.470 | 0.258 (2 epochs only: cost figure) | 2 | 92.8 | 186 |
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tympan.features import FrontendConfig
from tympan.models import build_model

DEFAULT_ARCHS = "mn04,cnn,resnet18"
SCHEMA = "tympan.benchmarks.esc50_cv/1"
RESULTS_JSON = Path(__file__).resolve().parent / "results" / "esc50_cv.json"
ENTRY_KEYS = ("name", "label", "arch", "init", "frontend", "recipe", "epochs", "folds", "n_folds", "mean", "std",
              "seconds_per_epoch", "device", "code_version", "source", "notes")
#: What each model name means here: arch, params, init, front end, lr.
RECIPES: dict[str, dict[str, Any]] = {
    "mn04": {"arch": "mn04", "init": os.environ.get("TYMPAN_MN04_INIT", "mn04_as"),
             "frontend": "efficientat", "lr": 1e-3, "epochs": 30},
    "cnn": {"arch": "cnn", "init": None, "frontend": "default", "lr": 2e-3, "epochs": 40},
    "resnet18": {"arch": "resnet18", "init": None, "frontend": "default", "lr": 1e-3, "epochs": 30},
}


from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def machine() -> str:
    cpu = cpu_model()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"


def model_cost(arch: str, params: dict[str, Any], frontend: FrontendConfig, n_classes: int = 50) -> dict[str, Any]:
    """Parameters and forward FLOPs for one clip through ``arch`` with ``frontend``'s input."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(arch, n_classes=n_classes, **params).eval()
    x = torch.zeros(1, 1, frontend.n_mels, frontend.n_frames)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "flops_per_clip": int(counter.get_total_flops()),
        "input": f"{frontend.n_mels}x{frontend.n_frames}",
    }


def row_from_run(run_dir: Path, label: str | None = None) -> dict[str, Any]:
    cfg = json.loads((run_dir / "config.json").read_text())
    res = json.loads((run_dir / "results.json").read_text())
    fe = FrontendConfig.from_dict(cfg["frontend"])
    train = cfg["train"]
    folds = res["folds"]
    total = sum(f["seconds"] for f in folds.values())
    per_epoch = [f["seconds_per_epoch"] for f in folds.values()]
    return {
        "model": label or train["arch"] + (" (AudioSet init)" if train.get("init") else ""),
        "arch": train["arch"],
        "init": train.get("init"),
        "frontend": fe.name,
        **model_cost(train["arch"], train.get("arch_params", {}), fe, len(cfg["classes"])),
        "folds": {k: v["accuracy"] for k, v in folds.items()},
        "pending_folds": res.get("pending", []),
        "mean": res["accuracy"]["mean"],
        "std": res["accuracy"]["std"],
        "epochs": train["epochs"],
        "seconds_per_epoch": sum(per_epoch) / len(per_epoch) if per_epoch else None,
        "seconds_total": total,
        "device": ",".join(sorted({f["device"] for f in folds.values()})),
        "run_dir": str(run_dir),
    }


def entry_from_run(run_dir: Path, label: str | None = None, source: str = "run") -> dict[str, Any]:
    """A results entry (schema :data:`SCHEMA`) from a finished run dir; no machine paths in it."""
    import numpy as np

    cfg = json.loads((run_dir / "config.json").read_text())
    res = json.loads((run_dir / "results.json").read_text())
    train = cfg["train"]
    folds = {k: float(v["accuracy"]) for k, v in sorted(res["folds"].items(), key=lambda kv: int(kv[0]))}
    accs = list(folds.values())
    spe = [float(v["seconds_per_epoch"]) for v in res["folds"].values()]
    init = train.get("init")
    recipe = train.get("recipe", "baseline")
    name = f"{train['arch']}{'_as' if init else ''}-{recipe}-e{train['epochs']}-f{''.join(folds)}"
    return {
        "name": name,
        "label": label or (f"`{train['arch']}`" + (" from AudioSet" if init else " from scratch")),
        "arch": train["arch"],
        "init": None if not init else Path(str(init)).name,
        "frontend": FrontendConfig.from_dict(cfg["frontend"]).name,
        "recipe": recipe,
        "epochs": int(train["epochs"]),
        "folds": folds,
        "n_folds": len(folds),
        "mean": float(np.mean(accs)) if accs else None,
        "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else None,
        "seconds_per_epoch": round(float(np.mean(spe)), 3) if spe else None,
        "device": ",".join(sorted({v["device"] for v in res["folds"].values()})) + f" ({machine()})",
        "code_version": cfg.get("code_version"),
        "source": source,
        "notes": f"data fingerprint {cfg.get('data', {}).get('fingerprint', 'unknown')}; pending folds "
                 f"{res.get('pending', [])}",
    }


def record(entries: list[dict[str, Any]], path: Path = RESULTS_JSON) -> None:
    """Add (or replace, by name) entries in the results file, atomically."""
    from datetime import datetime, timezone

    from tympan.io import write_json_atomic

    doc = json.loads(path.read_text()) if path.is_file() else {"schema": SCHEMA, "entries": []}
    names = {e["name"] for e in entries}
    doc["entries"] = [e for e in doc["entries"] if e["name"] not in names] + [
        {k: e.get(k) for k in ENTRY_KEYS} for e in entries]
    doc["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, doc)


def train_row(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from tympan.training.augment import AugmentConfig
    from tympan.training.cli import resolve_frontend
    from tympan.training.cv import featureset_for, parse_folds, run_cv
    from tympan.training.loop import TrainConfig

    recipe = RECIPES[name]
    fe = resolve_frontend(recipe["frontend"], recipe["arch"], recipe["init"])
    epochs = args.epochs or recipe["epochs"]
    from tympan.training.recipes import apply_recipe

    config = TrainConfig(arch=recipe["arch"], epochs=epochs, lr=recipe["lr"], init=recipe["init"],
                         batch_size=args.batch_size, device=args.device, seed=args.seed,
                         augment=AugmentConfig(norm_std=fe.norm_std))
    config = apply_recipe(config, args.recipe)
    features, info = featureset_for(args.data_dir, fe, progress=False)
    folds = parse_folds(args.folds, sorted({int(f) for f in features.folds}))
    run_dir = Path(args.run_root) / f"bench-{name}-{args.recipe}-e{epochs}-f{'_'.join(map(str, folds))}"
    run_cv(features, config, folds, run_dir, data_info=info, progress=not args.quiet)
    if not args.no_record:
        record([entry_from_run(run_dir)], Path(args.results))
    return row_from_run(run_dir, name)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | front end (input) | params | GFLOPs/clip | held-out acc. per fold | mean ± std "
            "| epochs | s/epoch | total s | device |")
    lines = [head, "|" + " --- |" * 10]
    for r in rows:
        per_fold = ", ".join(f"f{k} {v:.3f}" for k, v in r["folds"].items()) or "none"
        std = f" ± {r['std']:.3f}" if len(r["folds"]) > 1 else " (1 fold)"
        mean = f"{r['mean']:.3f}{std}" if r["mean"] is not None else "n/a"
        spe = f"{r['seconds_per_epoch']:.1f}" if r["seconds_per_epoch"] else "n/a"
        lines.append(
            f"| {r['model']} | {r['frontend']} ({r['input']}) | {r['params'] / 1e6:.2f} M | "
            f"{r['flops_per_clip'] / 1e9:.3f} | {per_fold} | {mean} | {r['epochs']} | {spe} | "
            f"{r['seconds_total']:.0f} | {r['device']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("TYMPAN_ESC50_DIR"))
    p.add_argument("--archs", default=DEFAULT_ARCHS, help=f"comma-separated, of {', '.join(RECIPES)}")
    p.add_argument("--folds", default="5", help="held-out folds, e.g. 5 or 1,2,3,4,5")
    p.add_argument("--epochs", type=int, help="override every recipe's epochs (bounded CPU runs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--run-root", default="runs")
    p.add_argument("--from-runs", nargs="+", metavar="RUN_DIR", help="tabulate finished runs, no training")
    p.add_argument("--json", help="also write the rows as JSON here")
    p.add_argument("--recipe", default="robust", choices=["baseline", "robust", "efficientat", "efficientat-robust"])
    p.add_argument("--results", default=str(RESULTS_JSON), help="results file the runs are recorded in")
    p.add_argument("--no-record", action="store_true", help="do not record trained runs in --results")
    p.add_argument("--record", action="store_true", help="with --from-runs: record those runs in --results")
    p.add_argument("--records", metavar="FILE", help="with --from-runs: add each finished fold of those runs to "
                   "this fold-records file (e.g. benchmarks/results/folds.json), keyed by config hash")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.from_runs:
        rows = [row_from_run(Path(d)) for d in args.from_runs]
        if args.record:
            record([entry_from_run(Path(d)) for d in args.from_runs], Path(args.results))
        if args.records:
            from tympan.training.records import append_record, records_from_run

            for d in args.from_runs:
                for rec in records_from_run(Path(d), machine=machine()):
                    append_record(Path(args.records), rec)
                    print(f"recorded fold {rec.fold} of {d} ({rec.config_hash}) in {args.records}")
    else:
        names = [a.strip() for a in args.archs.split(",") if a.strip()]
        unknown = [n for n in names if n not in RECIPES]
        if unknown:
            print(f"esc50_cv: unknown model(s) {unknown}; known: {', '.join(RECIPES)}", file=sys.stderr)
            return 2
        rows = [train_row(n, args) for n in names]
    print(f"machine: {machine()}")
    print(format_table(rows))
    for r in rows:
        pending = f"; folds not run: {r['pending_folds']}" if r.get("pending_folds") else ""
        print(f"- {r['model']}: figures from held-out folds {list(r['folds'])} after {r['epochs']} epochs "
              f"each (final-epoch model){pending}; run dir {r['run_dir']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
