"""Train one fold: AdamW + OneCycleLR + label smoothing + Mixup/SpecAugment, from cached log-mels.

An epoch costs only the network: features come from :mod:`tympan.cache` (memory-mapped,
read once into RAM), augmentation runs on the batch tensor. A checkpoint is written
atomically after every epoch, so an interrupted fold resumes at the next epoch with the same
optimizer, schedule and random-generator state. Model selection never looks at the held-out
fold: the fold's result is the model after its last epoch (validation numbers per epoch are
logged for curves only).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tympan.errors import TympanError
from tympan.models import (
    ArchSpec,
    UnknownArchitectureError,
    available_models,
    build_model,
    get_spec,
    uniform_param_groups,
)
from tympan.training.augment import AugmentConfig, augment_batch
from tympan.training.evaluate import predict_logits

CHECKPOINT = "checkpoint.pt"


class TrainingConfigError(TympanError, ValueError):
    """A training configuration that cannot work (unknown arch, empty fold, bad option)."""


@dataclass
class TrainConfig:
    """Everything that decides a training run; stored in the run dir's ``config.json``."""

    arch: str = "cnn"
    arch_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-2
    label_smoothing: float = 0.1
    pct_start: float = 0.2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    device: str = "auto"
    init: str | None = None  # pretrained weights (archs with a spec loader, e.g. mn04): name, URL or path
    layer_decay: float = 0.5  # per-stage lr decay for layer-wise param groups (pretrained mn04)
    channels_last: bool = True
    eval_batch_size: int = 64
    #: field-like augmented copies of every training clip mixed into training (0 = off);
    #: see :func:`tympan.training.field_augment.augmented_feature_copies`
    field_augment: int = 0
    field_augment_p: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["augment"] = self.augment.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def validate(self) -> None:
        if self.epochs < 1:
            raise TrainingConfigError("--epochs must be at least 1")
        if self.batch_size < 2:
            raise TrainingConfigError("--batch-size must be at least 2 (BatchNorm needs pairs)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingConfigError("--lr must be a positive number")
        if self.field_augment < 0 or not 0 <= self.field_augment_p <= 1:
            raise TrainingConfigError("--field-augment must be >= 0 and --field-augment-p in [0, 1]")


def resolve_device(device: str) -> torch.device:
    if device in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise TrainingConfigError(f"bad --device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingConfigError(f"--device {device}: CUDA is not available on this machine")
    return dev


def make_model(config: TrainConfig, n_classes: int) -> nn.Module:
    """Build the architecture (and load pretrained weights when ``config.init`` is set)."""
    try:
        model = build_model(config.arch, n_classes=n_classes, **config.arch_params)
    except UnknownArchitectureError as exc:
        raise TrainingConfigError(str(exc)) from None
    except TypeError as exc:
        raise TrainingConfigError(f"bad --arch-param for {config.arch!r}: {exc}") from None
    if config.init:
        spec = pretrained_spec(config.arch)
        assert spec.pretrained is not None  # pretrained_spec checked
        spec.pretrained(model, config.init, spec.head_prefixes)
    return model


def pretrained_spec(arch: str) -> ArchSpec:
    """The spec of ``arch`` if it can start from pretrained weights (``--init``), else an error."""
    try:
        spec = get_spec(arch)
    except UnknownArchitectureError as exc:
        raise TrainingConfigError(str(exc)) from None
    if spec.pretrained is None:
        able = [n for n in available_models() if get_spec(n).pretrained is not None]
        raise TrainingConfigError(f"--init is supported for {', '.join(able) or 'no architecture'} only, not {arch!r}")
    return spec


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups from the architecture's spec (layer-wise lrs for a pretrained mn04, else one lr)."""
    try:
        groups_fn = get_spec(config.arch).param_groups
    except UnknownArchitectureError:  # a model built outside the registry
        groups_fn = uniform_param_groups
    return groups_fn(
        model,
        config.lr,
        weight_decay=config.weight_decay,
        layer_decay=config.layer_decay,
        pretrained=bool(config.init),
    )


@dataclass
class FoldResult:
    fold: int
    accuracy: float
    logits: np.ndarray
    labels: np.ndarray
    clip_ids: list[str]
    model: nn.Module
    epochs: int
    seconds: float  # training wall time of this fold (all sessions, resumed ones included)
    seconds_per_epoch: float
    history: list[dict[str, float]]
    device: str


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_fold(
    features: Any,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    fold_dir: Path,
    *,
    fold: int = 0,
    writer: Any = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    extra: Any = None,
) -> FoldResult:
    """Train on ``train_idx`` of a :class:`~tympan.cache.FeatureSet`, evaluate on ``val_idx``.

    ``extra`` is an optional second FeatureSet of training-only rows (e.g. field-augmented copies);
    its rows from the held-out folds are never used, so nothing of the held-out clips leaks in.
    """
    from tqdm import tqdm

    config.validate()
    if len(train_idx) == 0:
        raise TrainingConfigError(f"fold {fold}: no training clips (every fold is held out?)")
    if len(val_idx) == 0:
        raise TrainingConfigError(f"fold {fold}: the held-out fold has no clips")
    device = resolve_device(config.device)
    fold_dir = Path(fold_dir)
    fold_dir.mkdir(parents=True, exist_ok=True)
    n_classes = len(features.classes)

    torch.manual_seed(config.seed)
    model = make_model(config, n_classes).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    groups = param_groups(model, config)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    extra_idx = np.zeros(0, dtype=np.int64)
    if extra is not None:
        extra_idx = np.flatnonzero(~np.isin(extra.folds, np.unique(features.folds[val_idx])))
    n_train = len(train_idx) + len(extra_idx)
    drop_last = n_train % config.batch_size == 1  # never a batch of one (BatchNorm)
    steps = n_train // config.batch_size if drop_last else math.ceil(n_train / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in groups],
        total_steps=config.epochs * steps,
        pct_start=config.pct_start,
    )
    gen = torch.Generator().manual_seed(config.seed * 1000 + fold)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, history, past_seconds = 0, [], 0.0
    ckpt_path = fold_dir / CHECKPOINT
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        gen.set_state(ckpt["generator"])
        if "torch_rng" in ckpt:  # dropout draws from the global generator
            torch.set_rng_state(ckpt["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in ckpt:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        start_epoch, history, past_seconds = int(ckpt["epoch"]), list(ckpt["history"]), float(ckpt["seconds"])
        log(f"fold {fold}: resuming after epoch {start_epoch}/{config.epochs}")

    # Training features in RAM (float16 caches stay float16 until a batch is drawn).
    x_train = torch.from_numpy(np.ascontiguousarray(features.features[np.sort(train_idx)]))
    y_train = torch.from_numpy(features.labels[np.sort(train_idx)])
    if len(extra_idx):
        x_train = torch.cat([x_train, torch.from_numpy(np.ascontiguousarray(extra.features[extra_idx]))])
        y_train = torch.cat([y_train, torch.from_numpy(extra.labels[extra_idx])])
        log(f"fold {fold}: {len(extra_idx)} field-augmented training rows added")
    val_sorted = np.sort(val_idx)
    x_val = np.ascontiguousarray(features.features[val_sorted])
    y_val = features.labels[val_sorted]
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n_train, generator=gen)
        total_loss = total_correct = seen = 0.0
        bar = tqdm(range(steps), desc=f"fold {fold} epoch {epoch + 1}/{config.epochs}", unit="batch",
                   disable=not progress, leave=False)
        for step in bar:
            idx = perm[step * config.batch_size : (step + 1) * config.batch_size]
            x = x_train[idx].to(device=device, dtype=torch.float32)
            y = F.one_hot(y_train[idx], n_classes).float().to(device)
            x, y_soft = augment_batch(x, y, config.augment, gen)
            x = x.contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y_soft, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            b = len(idx)
            total_loss += float(loss.detach()) * b
            total_correct += float((logits.argmax(1) == y_soft.argmax(1)).sum())
            seen += b
            bar.set_postfix(loss=f"{total_loss / seen:.3f}")
        bar.close()
        train_seconds = time.perf_counter() - t0
        val_logits = predict_logits(model, x_val, batch_size=config.eval_batch_size, device=device)
        val_loss = float(F.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(y_val)))
        val_acc = float((val_logits.argmax(1) == y_val).mean())
        epoch_seconds = time.perf_counter() - t0
        past_seconds += epoch_seconds
        row = {
            "epoch": epoch + 1,
            "train_loss": total_loss / seen,
            "train_acc": total_correct / seen,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": optimizer.param_groups[-1]["lr"],
            "seconds": epoch_seconds,
            "train_seconds": train_seconds,
        }
        history.append(row)
        log(
            f"fold {fold} epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.3f} "
            f"val loss {val_loss:.3f} val acc {val_acc:.3f} ({epoch_seconds:.1f} s)"
        )
        if writer is not None:
            writer.add_scalar("loss/train", row["train_loss"], epoch + 1)
            writer.add_scalar("loss/val", val_loss, epoch + 1)
            writer.add_scalar("accuracy/train_mixed", row["train_acc"], epoch + 1)
            writer.add_scalar("accuracy/val", val_acc, epoch + 1)
            for g in optimizer.param_groups:
                writer.add_scalar(f"lr/{g.get('name', 'group')}", g["lr"], epoch + 1)
            writer.add_scalar("time/epoch_seconds", epoch_seconds, epoch + 1)
            writer.flush()
        _save_checkpoint(
            ckpt_path,
            {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
                "history": history,
                "seconds": past_seconds,
            },
        )

    model = model.to(memory_format=torch.contiguous_format).eval()
    logits = predict_logits(model, x_val, batch_size=config.eval_batch_size, device=device)
    accuracy = float((logits.argmax(1) == y_val).mean())
    return FoldResult(
        fold=fold,
        accuracy=accuracy,
        logits=logits,
        labels=y_val,
        clip_ids=[features.clip_ids[i] for i in val_sorted],
        model=model.cpu(),
        epochs=config.epochs,
        seconds=past_seconds,
        seconds_per_epoch=past_seconds / max(1, len(history)),
        history=history,
        device=str(device) if device.type != "cpu" else "cpu",
    )
