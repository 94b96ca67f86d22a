"""Fold records: every finished cross-validation fold as committed data, assembled by config hash.

A five-fold run of 80 epochs is hours on two cores, so it spans sessions and machines. Each
finished fold is appended to a records file (``benchmarks/results/folds.json``) with the hash of
everything that decides its result (training config minus bookkeeping, resolved precision, front
end, data fingerprint, the pretrained weights' checksum). :func:`assemble` turns records into a
cross-validation figure only when their hashes are equal, and :func:`missing_folds` tells
``tympan train --records`` which folds are still to run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tympan.contracts.training import FoldRecord, FoldRecords
from tympan.errors import TympanError
from tympan.features import FrontendConfig
from tympan.io import write_json_atomic
from tympan.machine import cpu_model
from tympan.training.loop import FoldResult, TrainConfig

#: config fields that do not change what a fold learns (where it runs, how often it saves)
BOOKKEEPING = ("device", "checkpoint_every", "eval_batch_size", "precision", "init")


class RecordMismatchError(TympanError, ValueError):
    """Fold records of different configurations were asked to form one cross-validation figure."""


def init_key(init: str | None) -> str | None:
    """What identifies pretrained weights across machines: their sha256 where known (the same
    provenance a bundle records), else the name."""
    if not init:
        return None
    from tympan.training.cv import _init_provenance

    return _init_provenance(init).get("sha256") or Path(init).name


def hashed_config(config: TrainConfig, frontend: FrontendConfig, data_fingerprint: str | None,
                  precision: str, init_sha: str | None = None) -> dict[str, Any]:
    """The dict a fold's config hash is computed from (see :data:`BOOKKEEPING` for what is left out)."""
    train = {k: v for k, v in config.to_dict().items() if k not in BOOKKEEPING}
    return {"train": train, "precision": precision, "init": init_sha if init_sha is not None else init_key(config.init),
            "frontend": frontend.to_dict(), "data_fingerprint": data_fingerprint}


def config_hash(hashed: dict[str, Any]) -> str:
    blob = json.dumps(hashed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def machine_line() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"


def record_of(result: FoldResult, config: TrainConfig, hashed: dict[str, Any], code_version: str) -> FoldRecord:
    """The record of a fold that just finished in this process."""
    return _record(config, hashed, fold=result.fold, accuracy=result.accuracy, n=len(result.clip_ids),
                   device=result.device, precision=result.precision, seconds_per_epoch=result.seconds_per_epoch,
                   seconds=result.seconds, code_version=code_version, machine=machine_line())


def _record(config: TrainConfig, hashed: dict[str, Any], *, fold: int, accuracy: float, n: int, device: str,
            precision: str, seconds_per_epoch: float, seconds: float, code_version: str, machine: str,
            recorded: str | None = None) -> FoldRecord:
    return FoldRecord(
        config_hash=config_hash(hashed), recipe=config.recipe, arch=config.arch,
        init=None if not config.init else Path(str(config.init)).name, epochs=config.epochs, seed=config.seed,
        precision=precision, lr=config.lr, batch_size=config.batch_size, fold=fold, accuracy=accuracy, n=n,
        device=device, machine=machine, seconds_per_epoch=round(seconds_per_epoch, 3), seconds=round(seconds, 1),
        code_version=code_version, data_fingerprint=hashed.get("data_fingerprint"),
        recorded=recorded or datetime.now(timezone.utc).isoformat(timespec="seconds"), config=hashed,
    )


def records_from_run(run_dir: str | Path, machine: str | None = None) -> list[FoldRecord]:
    """Records of the finished folds of a ``tympan train`` run dir (for runs trained without
    ``--records``). Folds written before precision was recorded trained in fp32 on a CPU (the
    only CPU arithmetic then) and under bf16 autocast on CUDA."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "config.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    config = TrainConfig.from_dict(meta["train"])
    frontend = FrontendConfig.from_dict(meta["frontend"])
    out = []
    for fold, r in sorted(results["folds"].items(), key=lambda kv: int(kv[0])):
        precision = r.get("precision") or ("fp32" if r["device"] == "cpu" else "bf16")
        # the init's sha as the run recorded it: a relative --init must not resolve against today's cwd
        hashed = hashed_config(config, frontend, meta.get("data", {}).get("fingerprint"), precision,
                               init_sha=meta.get("init_sha256"))
        out.append(_record(config, hashed, fold=int(fold), accuracy=float(r["accuracy"]), n=int(r["n"]),
                           device=r["device"], precision=precision, seconds_per_epoch=float(r["seconds_per_epoch"]),
                           seconds=float(r["seconds"]), code_version=meta.get("code_version", "unknown"),
                           machine=machine or machine_line(), recorded=results.get("updated")))
    return out


def load_records(path: str | Path) -> list[FoldRecord]:
    path = Path(path)
    if not path.is_file():
        return []
    try:
        return FoldRecords.model_validate_json(path.read_bytes()).records
    except ValueError as exc:
        raise TympanError(f"{path}: not a fold records file ({str(exc).splitlines()[0]})") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two trainings finishing at once must not drop a record
        yield


def append_record(path: str | Path, rec: FoldRecord) -> None:
    """Add ``rec`` (replacing a record of the same hash and fold), atomically and under a lock."""
    path = Path(path)
    with _locked(path):
        records = [r for r in load_records(path) if (r.config_hash, r.fold) != (rec.config_hash, rec.fold)]
        records.append(rec)
        records.sort(key=lambda r: (r.recipe, r.arch, r.epochs, r.config_hash, r.fold))
        doc = FoldRecords(records=records).model_dump(mode="json", by_alias=True)
        write_json_atomic(path, doc)


def missing_folds(records: list[FoldRecord], chash: str, folds: list[int]) -> list[int]:
    done = {r.fold for r in records if r.config_hash == chash}
    return [f for f in folds if f not in done]


def differing_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two hashed configs (for the refusal's message)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differing_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def assemble(records: list[FoldRecord]) -> dict[str, Any]:
    """One cross-validation figure from records of one configuration; refuses a mix of hashes."""
    if not records:
        raise RecordMismatchError("no fold records to assemble")
    first = records[0]
    for r in records[1:]:
        if r.config_hash != first.config_hash:
            keys = differing_keys(first.config, r.config)
            raise RecordMismatchError(
                f"fold {r.fold} ({r.config_hash}) and fold {first.fold} ({first.config_hash}) were trained with "
                f"different configurations ({', '.join(keys) or 'hash differs'}); they do not form one figure")
    by_fold: dict[int, FoldRecord] = {}
    for r in records:
        if r.fold in by_fold and by_fold[r.fold].accuracy != r.accuracy:
            raise RecordMismatchError(f"fold {r.fold} recorded twice with different accuracies")
        by_fold[r.fold] = r
    accs = np.array([by_fold[f].accuracy for f in sorted(by_fold)])
    return {
        "config_hash": first.config_hash, "recipe": first.recipe, "arch": first.arch, "init": first.init,
        "init_sha256": first.config.get("init") if isinstance(first.config.get("init"), str) else None,
        "epochs": first.epochs, "lr": first.lr, "batch_size": first.batch_size,
        "precision": first.precision, "folds": {str(f): by_fold[f].accuracy for f in sorted(by_fold)},
        "n_folds": len(by_fold), "mean": float(accs.mean()),
        "std": float(accs.std(ddof=1)) if len(accs) > 1 else None,
        "seconds_per_epoch": float(np.mean([r.seconds_per_epoch for r in by_fold.values()])),
        "devices": sorted({r.device for r in by_fold.values()}),
        "machines": sorted({r.machine for r in by_fold.values()}),
        "code_versions": sorted({r.code_version[:12] for r in by_fold.values()}),
    }


def assemble_all(records: list[FoldRecord]) -> list[dict[str, Any]]:
    """One figure per configuration hash, in the records' order."""
    groups: dict[str, list[FoldRecord]] = {}
    for r in records:
        groups.setdefault(r.config_hash, []).append(r)
    return [assemble(g) for g in groups.values()]

