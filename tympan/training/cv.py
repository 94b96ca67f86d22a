"""Cross-validation on ESC-50's official folds: results JSON, held-out predictions, resume.

A run directory holds::

    config.json                  training config, front end, data fingerprint, folds asked for
    results.json                 per-fold accuracy, mean +- std over completed folds (atomic)
    fold{k}/checkpoint.pt        last finished epoch (removed once the fold completes)
    fold{k}/model.safetensors    the fold's final weights
    fold{k}/heldout.safetensors  held-out logits (float32) and labels (int64)
    fold{k}/heldout.json         held-out clip ids (same order), classes, accuracy, history
    tb/fold{k}/                  TensorBoard logs

A fold is complete when its ``heldout.json`` exists (written last); ``resume`` skips complete
folds and continues an interrupted one from its checkpoint. Held-out predictions come from a
model that never saw the fold, so calibration and OOD thresholds fitted on them do not leak.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tympan.bundle import Bundle, HeldoutPredictions, read_heldout, weights_fingerprint
from tympan.errors import TympanError
from tympan.features import FrontendConfig
from tympan.io import atomic_path, write_json_atomic
from tympan.models import build_model
from tympan.training.loop import FoldResult, TrainConfig, TrainingConfigError, train_fold

RESULTS = "results.json"
CONFIG = "config.json"


class RunDirError(TympanError):
    """A run directory that cannot be resumed (missing or foreign config)."""


def code_version() -> str:
    """``git rev-parse HEAD`` of the checkout tympan runs from (plus ``-dirty``), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        return head.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def default_run_dir(arch: str, root: str | Path = "runs") -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{stamp}-{arch}"


def parse_folds(text: str | None, available: list[int]) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``, checked against the folds the data has."""
    if text is None or text == "":
        return list(available)
    try:
        folds = sorted({int(t) for t in str(text).split(",") if t.strip()})
    except ValueError:
        raise TrainingConfigError(f"--folds {text!r}: expected comma-separated fold numbers, e.g. 1,2") from None
    bad = [f for f in folds if f not in available]
    if not folds or bad:
        raise TrainingConfigError(
            f"--folds {text!r}: fold(s) {bad or folds} not in the data (it has folds {available})"
        )
    return folds


@dataclass
class _Run:
    run_dir: Path
    config: TrainConfig
    holdout: list[int]


def _summary(folds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    accs = [v["accuracy"] for v in folds.values()]
    return {
        "mean": float(np.mean(accs)) if accs else None,
        "std": float(np.std(accs)) if accs else None,  # population std over completed folds
        "n_folds": len(accs),
    }


def heldout_of(result: FoldResult, classes: list[str]) -> HeldoutPredictions:
    """A fold's held-out predictions, stamped with the fingerprint of the weights that made them."""
    return HeldoutPredictions(
        logits=result.logits, labels=result.labels, clip_ids=list(result.clip_ids), classes=list(classes),
        weights_sha256=weights_fingerprint(result.model),
        meta={"fold": result.fold, "accuracy": result.accuracy, "epochs": result.epochs,
              "seconds": result.seconds, "seconds_per_epoch": result.seconds_per_epoch,
              "device": result.device, "precision": result.precision, "history": result.history,
              "note": "logits of the final-epoch model on a fold it never trained on"},
    )


def _confusion_to_writer(writer: Any, labels: np.ndarray, logits: np.ndarray, classes: list[str]) -> None:
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(labels, logits.argmax(1), labels=list(range(len(classes))))
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    writer.add_image("confusion_matrix", torch.from_numpy(norm).float()[None], dataformats="CHW")
    lines = ["| true \\ top confusions | |", "| --- | --- |"]
    for i, name in enumerate(classes):
        row = [(cm[i, j], classes[j]) for j in np.argsort(-cm[i]) if cm[i, j] and j != i][:3]
        lines.append(f"| {name} ({cm[i, i]}/{cm[i].sum()}) | " + ", ".join(f"{c} {n}" for n, c in row) + " |")
    writer.add_text("confusion_matrix", "\n".join(lines))


def run_cv(
    features: Any,
    config: TrainConfig,
    holdout_folds: list[int],
    run_dir: str | Path,
    *,
    data_info: dict[str, Any] | None = None,
    max_folds: int | None = None,
    on_fold_end: Callable[[FoldResult], None] | None = None,
    progress: bool = True,
    tensorboard: bool = True,
    log: Callable[[str], None] = print,
    extra: Any = None,
) -> dict[str, Any]:
    """Hold out each of ``holdout_folds`` in turn (training on all other folds); return results.

    ``run_dir`` may already hold a run: completed folds are skipped and an interrupted fold
    continues from its checkpoint (the stored config must match). ``max_folds`` stops after
    that many folds trained in this call (the rest stays pending, for a later resume).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    available = sorted({int(f) for f in features.folds})
    bad = [f for f in holdout_folds if f not in available]
    if not holdout_folds or bad:
        raise TrainingConfigError(f"held-out fold(s) {bad or holdout_folds} not in the data (folds {available})")
    meta = {
        "train": config.to_dict(),
        "frontend": features.frontend.to_dict(),
        "holdout_folds": list(holdout_folds),
        "classes": list(features.classes),
        "data": dict(data_info or {}),
        "code_version": code_version(),
        # what identifies the init weights wherever the run dir is read later (the path may be relative)
        "init_sha256": _init_provenance(config.init).get("sha256") if config.init else None,
    }
    cfg_path = run_dir / CONFIG
    if cfg_path.is_file():
        stored = json.loads(cfg_path.read_text())
        from tympan.training.loop import TrainConfig  # normalise: runs from older versions lack new keys

        if TrainConfig.from_dict(stored["train"]).to_dict() != meta["train"] or stored["frontend"] != meta["frontend"]:
            raise RunDirError(f"{run_dir}: holds a run with another configuration; use a new --run-dir")
    else:
        meta["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json_atomic(cfg_path, meta)

    results_path = run_dir / RESULTS
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    done: dict[str, dict[str, Any]] = dict(results.get("folds", {}))
    writer_cls = None
    if tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter as writer_cls
        except ImportError:  # tensorboard is in the [train] extra
            log("tensorboard is not installed; training without TensorBoard logs")
    trained = 0
    to_train = [f for f in holdout_folds if not ((run_dir / f"fold{f}" / "heldout.json").is_file() and str(f) in done)]
    if max_folds is not None:
        to_train = to_train[:max_folds]  # the run's ETA covers what this call will train
    for fold in holdout_folds:
        fold_dir = run_dir / f"fold{fold}"
        if (fold_dir / "heldout.json").is_file() and str(fold) in done:
            log(f"fold {fold}: already complete ({done[str(fold)]['accuracy']:.4f}), skipped")
            continue
        if max_folds is not None and trained >= max_folds:
            break
        train_idx = np.flatnonzero(features.folds != fold)
        val_idx = np.flatnonzero(features.folds == fold)
        writer = writer_cls(log_dir=str(run_dir / "tb" / f"fold{fold}")) if writer_cls else None
        try:
            result = train_fold(features, train_idx, val_idx, config, fold_dir, fold=fold,
                                writer=writer, progress=progress, log=log, extra=extra,
                                folds_after=max(len(to_train) - trained - 1, 0))
            if writer is not None:
                _confusion_to_writer(writer, result.labels, result.logits, list(features.classes))
                writer.add_hparams(
                    {k: v for k, v in _flat_hparams(config).items()},
                    {"hparam/heldout_accuracy": result.accuracy},
                    run_name="hparams",
                )
        finally:
            if writer is not None:
                writer.close()
        with atomic_path(fold_dir / "model.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}, str(tmp))
        heldout_of(result, list(features.classes)).write(fold_dir)
        done[str(fold)] = {
            "accuracy": result.accuracy,
            "n": len(result.clip_ids),
            "epochs": result.epochs,
            "seconds": round(result.seconds, 1),
            "seconds_per_epoch": round(result.seconds_per_epoch, 2),
            "device": result.device,
            "precision": result.precision,
        }
        _write_results(results_path, config, holdout_folds, done, features)
        (fold_dir / "checkpoint.pt").unlink(missing_ok=True)
        log(f"fold {fold}: held-out accuracy {result.accuracy:.4f} "
            f"({result.seconds:.0f} s, {result.seconds_per_epoch:.1f} s/epoch)")
        trained += 1
        if on_fold_end is not None:
            on_fold_end(result)
    return _write_results(results_path, config, holdout_folds, done, features)


def _flat_hparams(config: TrainConfig) -> dict[str, Any]:
    d = config.to_dict()
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                flat[f"{k}.{k2}"] = v2 if isinstance(v2, (int, float, str, bool)) else str(v2)
        else:
            flat[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


def _write_results(path: Path, config: TrainConfig, holdout: list[int], done: dict[str, Any],
                   features: Any) -> dict[str, Any]:
    # every fold completed in this run dir counts, also those held out by an earlier invocation
    ordered = {k: done[k] for k in sorted(done, key=int)}
    results = {
        "arch": config.arch,
        "arch_params": config.arch_params,
        "init": config.init,
        "epochs": config.epochs,
        "frontend": features.frontend.name,
        "holdout_folds": list(holdout),
        "folds": ordered,
        "pending": [f for f in holdout if str(f) not in done],
        "accuracy": _summary(ordered),
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(path, results)
    return results


def portable_data(data: dict[str, Any]) -> dict[str, Any]:
    """A run's data provenance for a bundle: the folder's name and fingerprint, never its path."""
    out = {k: v for k, v in data.items() if k != "root"}
    if data.get("root"):
        out["name"] = Path(str(data["root"])).name
    return out


def bundle_from_run(run_dir: str | Path, out_dir: str | Path, fold: int | None = None,
                    name: str | None = None, extra_provenance: dict[str, Any] | None = None) -> Path:
    """Write a bundle from one completed fold of a run (default: the last completed one).

    The fold's held-out predictions go into the bundle folder in the same atomic save
    (``heldout.*``, fingerprinted): the data calibration and the OOD threshold are fitted on.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    meta = json.loads((run_dir / CONFIG).read_text())
    results = json.loads((run_dir / RESULTS).read_text())
    completed = [int(f) for f in results["folds"]]
    if not completed:
        raise RunDirError(f"{run_dir}: no completed fold to bundle")
    fold = completed[-1] if fold is None else fold
    if fold not in completed:
        raise RunDirError(f"{run_dir}: fold {fold} is not complete (completed: {completed})")
    cfg = TrainConfig.from_dict(meta["train"])
    classes = meta["classes"]
    model = build_model(cfg.arch, n_classes=len(classes), **cfg.arch_params)
    model.load_state_dict(load_file(str(run_dir / f"fold{fold}" / "model.safetensors")))
    model.eval()
    fold_res = results["folds"][str(fold)]
    provenance: dict[str, Any] = {
        "trained_by": "tympan train",
        "run_dir": run_dir.name,  # the name only: no path of the build machine in a bundle
        "code_version": meta.get("code_version", "unknown"),
        "data": portable_data(meta.get("data", {})),
        "train_folds": sorted({int(f) for f in meta.get("data", {}).get("folds", [])} - {fold})
        or "all folds except the held-out one",
        "heldout_fold": fold,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "config": meta["train"],
        "wall_seconds": fold_res["seconds"],
        "seconds_per_epoch": fold_res["seconds_per_epoch"],
        "device": fold_res["device"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if cfg.init:
        provenance["init"] = _init_provenance(cfg.init)
    provenance.update(extra_provenance or {})
    bundle = Bundle(
        model=model,
        arch=cfg.arch,
        arch_params=dict(cfg.arch_params),
        classes=classes,
        frontend=FrontendConfig.from_dict(meta["frontend"]),
        metrics={
            "heldout_accuracy": fold_res["accuracy"],
            "heldout_fold": fold,
            "heldout_n": fold_res["n"],
            "measured_on": f"ESC-50 fold {fold} ({fold_res['n']} clips), never trained on; final-epoch model",
        },
        provenance=provenance,
        name=name or f"{cfg.arch}-esc50-fold{fold}",
    )
    heldout = read_heldout(run_dir / f"fold{fold}")
    if heldout.weights_sha256 is None:  # run dirs written before fingerprints: the pair was saved together
        heldout.weights_sha256 = weights_fingerprint(model)
    bundle.save(out_dir, heldout=heldout)
    return out_dir


def _init_provenance(init: str) -> dict[str, Any]:
    from tympan.download import sha256_file
    from tympan.models import convert

    info: dict[str, Any] = {"init": init}
    if init in convert.PRETRAINED:
        url, sha, _, _ = convert.PRETRAINED[init]
        info.update(url=url, sha256=sha)
    else:
        p = Path(init)
        weights = convert.bundle_weights(p)
        if weights is not None:  # a bundle: its weights' sha, and where its own weights came from
            info["bundle"] = True
            info.update(_init_lineage(p))
            p = weights
        if p.is_file():
            sha = sha256_file(p)
            info["sha256"] = sha
            if sha == convert.MN04_AS_SHA256:
                info.update(url=convert.MN04_AS_URL, weights="EfficientAT mn04_as (AudioSet mAP 43.2)")
    return info


def _init_lineage(bundle_dir: Path) -> dict[str, Any]:
    """The init bundle's name and its own ``init`` record, so a fine-tune of a fine-tune still names
    the pretrained file (e.g. the AudioSet checkpoint) its weights descend from."""
    from tympan.bundle import read_metadata
    from tympan.errors import BundleError

    try:
        meta = read_metadata(bundle_dir)
    except (BundleError, OSError):
        return {}
    prov = meta.get("provenance") or {}
    out: dict[str, Any] = {"name": meta.get("name")}
    if isinstance(prov.get("init"), dict):
        out["from"] = prov["init"]
    return out


def featureset_for(data_dir: str | Path | None, frontend: FrontendConfig, progress: bool = True) -> tuple[Any, dict]:
    """Featurise (or open from cache) an ESC-50-layout folder; also return data provenance."""
    from tympan.cache import featurize
    from tympan.datasets import load_esc50

    t0 = time.perf_counter()
    dataset = load_esc50(data_dir)
    fs = featurize(dataset, frontend, progress=progress)
    info = {
        "root": str(dataset.root),
        "fingerprint": fs.info.get("data_fingerprint") or dataset.fingerprint(),
        "n_clips": len(fs),
        "folds": sorted({int(f) for f in fs.folds}),
        "featurize_seconds": round(time.perf_counter() - t0, 2),
    }
    return fs, info
