"""Train from a packed feature cache on a GPU machine and write results as data (for a GPU session).

The device machine gets only the repository (and carried paths of at most 64 MiB), not the
ESC-50 folder, so the log-mels travel as an xz-compressed cache entry:

    # here, where the data is: pack the default front end's cache (cnn) -> cache-default.tar.xz
    python scripts/gpu_train.py pack --data-dir ../shared/data/esc50 --frontend default --out runs/gpu-cache/cache-default.tar.xz
    # there (run tool, runs/gpu-cache/ carried): five folds, one process per fold sharing the GPU, + epoch timing
    python scripts/gpu_train.py run --cache runs/gpu-cache/cache-default.tar.xz --arch cnn --recipe robust \\
        --epochs 40 --folds 1,2,3,4,5 --parallel 5 --out "$OUT"

``run`` opens the entry with :func:`tympan.cache.open_entry`, trains each held-out fold with
:func:`tympan.training.run_cv` (``--parallel N``: N worker processes, each its own folds), and
writes to ``--out``: ``esc50_cv.json`` (entries of the ``benchmarks/results/esc50_cv.json``
schema; merge them with ``benchmarks/esc50_cv.py --from-runs ... --record`` or by hand),
``folds.json`` (fold records keyed by config hash: merge with ``benchmarks/esc50_cv.py``'s
``--records`` or copy the records into ``benchmarks/results/folds.json``), ``epoch_time.json`` (seconds per epoch per fold, mode single/parallel, device) and the run dirs'
``results.json`` / ``config.json`` (weights stay on the machine unless ``--keep-weights``).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def pack(args: argparse.Namespace) -> int:
    from tympan.cache import featurize
    from tympan.datasets import load_esc50
    from tympan.features import FrontendConfig

    fs = featurize(load_esc50(args.data_dir), FrontendConfig.from_spec(args.frontend), progress=False)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:xz", preset=args.preset) as tar:
        for name in ("features.npy", "meta.json"):
            tar.add(fs.path / name, arcname=f"entry/{name}")
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB ({fs.features.shape}, {fs.features.dtype})")
    return 0


def _open(cache: str, tmp: Path):
    from tympan.cache import open_entry

    p = Path(cache)
    if p.is_dir():
        return open_entry(p)
    with tarfile.open(p, "r:xz") as tar:
        tar.extractall(tmp, filter="data")
    return open_entry(tmp / "entry")


def _config(args: argparse.Namespace, fs):
    from tympan.models import get_spec
    from tympan.training import AugmentConfig, TrainConfig
    from tympan.training.recipes import apply_recipe

    fields = get_spec(args.arch).training_defaults(pretrained=bool(args.init))
    fields.update(arch=args.arch, init=args.init, device=args.device, seed=args.seed,
                  checkpoint_every=args.checkpoint_every)
    cfg = TrainConfig(**fields)
    cfg.augment = AugmentConfig(norm_std=fs.frontend.norm_std)
    cfg = apply_recipe(cfg, args.recipe, epochs=args.epochs)
    for k in ("batch_size", "lr"):  # explicit values win over the recipe's, as in `tympan train`
        if getattr(args, k) is not None:
            setattr(cfg, k, getattr(args, k))
    cfg.precision = args.precision
    return cfg


def worker(args: argparse.Namespace) -> int:
    """Train ``--folds`` into ``--run-dir`` (one process; ``run --parallel`` starts several)."""
    import torch

    from tympan.training import run_cv

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        fs = _open(args.cache, Path(tmp))
        folds = [int(f) for f in args.folds.split(",")]
        run_cv(fs, _config(args, fs), folds, Path(args.run_dir), progress=False, tensorboard=False,
               data_info={"fingerprint": fs.info.get("data_fingerprint"), "n_clips": len(fs)},
               log=lambda m: print(m, flush=True))
    return 0


def run(args: argparse.Namespace) -> int:
    from esc50_cv import entry_from_run, record

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folds = [f.strip() for f in args.folds.split(",") if f.strip()]
    n = max(1, min(args.parallel, len(folds)))
    groups = [folds[i::n] for i in range(n)]
    base = [sys.executable, __file__, "worker", "--cache", args.cache, "--arch", args.arch, "--recipe", args.recipe,
            "--device", args.device, "--precision", args.precision, "--seed", str(args.seed), "--checkpoint-every", str(args.checkpoint_every)]
    for k in ("epochs", "batch_size", "lr", "init", "threads"):
        if getattr(args, k) is not None:
            base += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
    run_dirs, procs = [], []
    t0 = time.perf_counter()
    for i, g in enumerate(groups):
        rd = out / "runs" / f"{args.arch}-{args.recipe}-w{i}"
        run_dirs.append(rd)
        log = open(out / f"worker{i}.log", "w")
        procs.append(subprocess.Popen(base + ["--folds", ",".join(g), "--run-dir", str(rd)], stdout=log,
                                      stderr=subprocess.STDOUT, cwd=REPO))
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        print(f"worker exit codes {codes}; see {out}/worker*.log", file=sys.stderr)
        return 1
    # one entry over all folds: merge the workers' results
    merged = out / "runs" / f"{args.arch}-{args.recipe}"
    merged.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((run_dirs[0] / "config.json").read_text())
    res = {"folds": {}, "pending": []}
    timing = []
    for rd in run_dirs:
        r = json.loads((rd / "results.json").read_text())
        res["folds"].update(r["folds"])
        for k, v in r["folds"].items():
            timing.append({"fold": int(k), "seconds_per_epoch": v["seconds_per_epoch"], "device": v["device"]})
    (merged / "config.json").write_text(json.dumps(cfg))
    (merged / "results.json").write_text(json.dumps(res))
    from tympan.training.records import append_record, records_from_run

    for rd in run_dirs:  # fold records (benchmarks/results/folds.json schema), keyed by config hash
        for rec in records_from_run(rd):
            append_record(out / "folds.json", rec)
    entry = entry_from_run(merged, source="run (scripts/gpu_train.py)")
    entry["notes"] += f"; {n} process(es) sharing the device, wall {wall:.0f} s"
    record([entry], out / "esc50_cv.json")
    import torch

    doc = {"arch": args.arch, "recipe": args.recipe, "processes": n, "epochs": entry["epochs"],
           "mode": "single" if n == 1 else f"parallel-{n}", "wall_seconds": round(wall, 1), "folds": timing,
           "mean_seconds_per_epoch": entry["seconds_per_epoch"],
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "code_version": entry["code_version"]}
    path = out / "epoch_time.json"
    prev = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps(prev + [doc], indent=2))
    print(json.dumps({"mean": entry["mean"], "std": entry["std"], "folds": entry["folds"],
                      "seconds_per_epoch": entry["seconds_per_epoch"], "wall_seconds": round(wall, 1)}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--data-dir", default=os.environ.get("TYMPAN_ESC50_DIR"))
    a.add_argument("--frontend", default="default")
    a.add_argument("--preset", type=int, default=6)
    a.add_argument("--out", required=True)
    for name in ("run", "worker"):
        r = sub.add_parser(name)
        r.add_argument("--cache", required=True, help="packed .tar.xz from `pack`, or a cache entry folder")
        r.add_argument("--arch", default="cnn")
        r.add_argument("--init", help="pretrained weights for mn04 (a .pt/.safetensors path)")
        r.add_argument("--recipe", default="robust", choices=["baseline", "robust", "efficientat", "efficientat-robust"])
        r.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
        r.add_argument("--epochs", type=int)
        r.add_argument("--batch-size", type=int)
        r.add_argument("--lr", type=float)
        r.add_argument("--folds", default="1,2,3,4,5")
        r.add_argument("--device", default="auto")
        r.add_argument("--seed", type=int, default=0)
        r.add_argument("--threads", type=int)
        r.add_argument("--checkpoint-every", type=int, default=5)
        if name == "run":
            r.add_argument("--parallel", type=int, default=1, help="worker processes sharing the device")
            r.add_argument("--out", default=os.environ.get("OUT", "out"))
        else:
            r.add_argument("--run-dir", required=True)
    args = p.parse_args(argv)
    return {"pack": pack, "run": run, "worker": worker}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
