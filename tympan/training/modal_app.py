"""Cross-validation on Modal: the five ESC-50 folds in parallel, one A10G GPU each.

One-time setup (from the repository root)::

    modal volume create tympan-esc50
    modal volume put tympan-esc50 /path/to/ESC-50 /esc50      # any ESC-50-layout folder

Then::

    modal run tympan/training/modal_app.py --arch mn04 --init mn04_as --epochs 30
    modal run tympan/training/modal_app.py --arch cnn --epochs 60 --folds 1,2,3,4,5

Each fold runs :func:`train_fold_job`, the same code path as ``tympan train`` (feature cache,
loop, held-out predictions), on CUDA with AMP; its run directory is written to the
``tympan-runs`` volume (``modal volume get tympan-runs <run>/``) and the local entrypoint
prints per-fold accuracy and mean +- std and writes ``results.json`` locally.
:func:`train_fold_job` is a plain function: tests call it (and ``train_fold.local``) on the
generated data set, since Modal's cloud is not reachable from CI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import modal

APP_NAME = "tympan-train"
DATA_VOLUME = "tympan-esc50"
RUNS_VOLUME = "tympan-runs"
DATA_MOUNT = "/data"
RUNS_MOUNT = "/runs"
REPO = Path(__file__).resolve().parents[2]

app = modal.App(APP_NAME)
data_volume = modal.Volume.from_name(DATA_VOLUME, create_if_missing=True)
runs_volume = modal.Volume.from_name(RUNS_VOLUME, create_if_missing=True)

image = (
    modal.Image.debian_slim(python_version="3.11")
    .apt_install("libsndfile1", "git")
    .pip_install("torch==2.13.0")  # the CUDA build from PyPI on Linux
    .add_local_dir(
        REPO,
        "/root/tympan",
        copy=True,
        ignore=[".venv", "runs", "**/__pycache__", ".git", "*.egg-info", "out", ".whl"],
    )
    .run_commands("pip install '/root/tympan[train]'")
)


def train_fold_job(
    fold: int,
    arch: str = "mn04",
    epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    init: str | None = "mn04_as",
    arch_params: dict[str, Any] | None = None,
    frontend: str | None = None,
    seed: int = 0,
    data_dir: str = f"{DATA_MOUNT}/esc50",
    runs_dir: str = RUNS_MOUNT,
    run_name: str = "modal-run",
    device: str = "auto",
    progress: bool = False,
) -> dict[str, Any]:
    """Train with ``fold`` held out; return that fold's result row (plain Python, no Modal)."""
    from tympan.training.augment import AugmentConfig
    from tympan.training.cli import resolve_frontend
    from tympan.training.cv import featureset_for, run_cv
    from tympan.training.loop import TrainConfig

    fe = resolve_frontend(frontend, arch, init)
    config = TrainConfig(
        arch=arch, arch_params=dict(arch_params or {}), epochs=epochs, batch_size=batch_size,
        lr=lr, seed=seed, device=device, init=init or None,
        augment=AugmentConfig(norm_std=fe.norm_std),
    )
    features, info = featureset_for(data_dir, fe, progress=progress)
    run_dir = Path(runs_dir) / run_name / f"holdout{fold}"  # one dir per container: no write races
    results = run_cv(features, config, [fold], run_dir, data_info=info, progress=progress)
    row = dict(results["folds"][str(fold)])
    row["fold"] = fold
    row["run_dir"] = str(run_dir)
    return row


@app.function(
    image=image,
    gpu="A10G",
    volumes={DATA_MOUNT: data_volume, RUNS_MOUNT: runs_volume},
    timeout=4 * 3600,
)
def train_fold(fold: int, **kwargs: Any) -> dict[str, Any]:
    """Modal wrapper of :func:`train_fold_job` (commits the runs volume when done)."""
    row = train_fold_job(fold, **kwargs)
    if kwargs.get("runs_dir", RUNS_MOUNT) == RUNS_MOUNT:
        runs_volume.commit()
    return row


@app.local_entrypoint()
def main(
    arch: str = "mn04",
    epochs: int = 30,
    folds: str = "1,2,3,4,5",
    init: str = "mn04_as",
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    frontend: str = "",
    run_name: str = "",
    out: str = "modal_results.json",
) -> None:
    import statistics
    import time

    from tympan.models import get_spec

    fold_list = [int(f) for f in folds.split(",") if f.strip()]
    name = run_name or time.strftime("%Y%m%d-%H%M%S") + f"-{arch}"
    # --init's default (mn04_as) only applies to an architecture that has pretrained weights
    pretrainable = get_spec(arch).pretrained is not None
    kwargs = dict(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                  init=(init or None) if pretrainable else None, frontend=frontend or None, run_name=name)
    rows = list(train_fold.map(fold_list, kwargs=kwargs))
    accs = [r["accuracy"] for r in rows]
    for r in rows:
        print(f"fold {r['fold']}: {r['accuracy']:.4f}  {r['seconds_per_epoch']:.1f} s/epoch  {r['device']}")
    std = statistics.pstdev(accs) if len(accs) > 1 else 0.0
    print(f"{arch}: mean {statistics.mean(accs):.4f} +- {std:.4f} over folds {fold_list}")
    Path(out).write_text(json.dumps({"run": name, "folds": rows, "mean": statistics.mean(accs), "std": std}, indent=2))
    print(f"results: {out}; run dirs on volume {RUNS_VOLUME}:/{name}/")
