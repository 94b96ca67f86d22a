"""Robustness sweep of a bundle on its held-out fold, written as data (``benchmarks/results/robustness.json``).

Runs :func:`tympan.diagnostics.robustness.run_sweep` (the same sweep as ``diagnose --robustness``:
the bundle's held-out clips, each corruption of :mod:`tympan.corruptions` applied to the
waveform with a per-clip seed, then the serving path) and writes one JSON document whose
schema is :data:`SCHEMA` (checked by ``tests/test_field_training.py``). The README's
robustness table is rendered from it by ``benchmarks/readme_tables.py``.

Examples::

    python benchmarks/robustness.py --data-dir ../shared/data/esc50              # shipped model, all 400 clips
    python benchmarks/robustness.py --bundle runs/x/bundle --out /tmp/rob.json --max-clips 200

No path of the machine it ran on goes into the file: the bundle is named relative to the
repository when it lies inside it, the data by its fingerprint only.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
SCHEMA = "tympan.benchmarks.robustness/1"
#: The shifts the field-robustness target names (issue: no shift costs more than 2 points).
TARGET_SHIFTS = ["pink_10db", "white_10db", "telephone", "lowpass_4k", "gain_-20db", "mp3"]
TARGET_MAX_DROP = 0.02

ROW_KEYS = ("corruption", "name", "params", "description", "accuracy", "accuracy_drop", "ece", "nll",
            "mean_confidence", "ood_flagged")


def run(bundle_dir: str | Path | None, data_dir: str | Path | None, max_clips: int | None, seed: int = 0,
        progress: bool = True, only: list[str] | None = None) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from _machine import cpu_model, repo_relative
    import torch

    from tympan.bundle import resolve_bundle_dir
    from tympan.datasets import load_esc50, locate_data_dir
    from tympan.diagnostics.robustness import default_sweep, run_sweep
    from tympan.inference import Predictor
    from tympan.training.cv import code_version

    t0 = time.perf_counter()
    bundle_dir = resolve_bundle_dir(bundle_dir)
    predictor = Predictor(bundle_dir)
    bundle = predictor.bundle
    items = default_sweep()
    if only:
        unknown = sorted(set(only) - {i.label for i in items})
        if unknown:
            raise SystemExit(f"--only: unknown shifts {unknown}; known: {[i.label for i in items]}")
        items = [i for i in items if i.label in only or i.label == "clean"]
    sweep = run_sweep(predictor, bundle_dir, data_dir=data_dir, max_clips=max_clips, items=items, seed=seed,
                      progress=progress)
    root = locate_data_dir(data_dir, None)
    fingerprint = load_esc50(root).fingerprint() if root is not None else None
    rows = [{k: r.get(k) for k in ROW_KEYS} for r in sweep["rows"]]
    by_name = {r["corruption"]: r for r in rows}
    target = {
        "max_accuracy_drop": TARGET_MAX_DROP,
        "shifts": {s: (None if s not in by_name else by_name[s]["accuracy_drop"]) for s in TARGET_SHIFTS},
    }
    target["met"] = all(d is not None and d <= TARGET_MAX_DROP for d in target["shifts"].values())
    metrics = bundle.metrics or {}
    return {
        "schema": SCHEMA,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
                   f"({torch.get_num_threads()} threads)",
        "model": {
            "bundle": repo_relative(bundle_dir),
            "name": bundle.name,
            "arch": bundle.arch,
            "weights_sha256": bundle.weights_fingerprint,
            "heldout_fold": metrics.get("heldout_fold"),
            "heldout_accuracy": metrics.get("heldout_accuracy"),
        },
        "data_fingerprint": fingerprint,
        "evaluated_on": sweep["evaluated_on"],
        "n_clips": sweep["n_clips"],
        "max_clips": max_clips,
        "seed": seed,
        "sample_rate": sweep["sample_rate"],
        "temperature": sweep["temperature"],
        "ood_threshold": sweep["ood_threshold"],
        "rows": rows,
        "target": target,
        "seconds": round(time.perf_counter() - t0, 1),
        "notes": sweep["notes"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", help="bundle folder (default: the shipped model)")
    p.add_argument("--data-dir", default=os.environ.get("TYMPAN_ESC50_DIR"))
    p.add_argument("--max-clips", type=int, default=None, help="seeded subset of the held-out clips (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default=str(RESULTS / "robustness.json"))
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--only", help="comma-separated shifts (clean is always run), e.g. 'targets' for the "
                                  "target shifts: a quick screen of a candidate model")
    args = p.parse_args(argv)
    only = None if not args.only else (TARGET_SHIFTS if args.only == "targets" else args.only.split(","))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from tympan.io import write_json_atomic

    doc = run(args.bundle, args.data_dir, args.max_clips, args.seed, progress=not args.quiet, only=only)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(args.out), doc)
    for r in doc["rows"]:
        drop = "" if r["accuracy_drop"] is None else f"{r['accuracy_drop']:+.4f}"
        print(f"{r['corruption']:<16}{r['accuracy']:.4f} {drop:>8} ECE {r['ece']:.3f}")
    print(f"target (no listed shift drops > {TARGET_MAX_DROP:.2f}): {'met' if doc['target']['met'] else 'missed'}")
    print(f"wrote {args.out} ({doc['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
