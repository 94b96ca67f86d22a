"""Train one fold: AdamW + OneCycleLR + label smoothing + Mixup/SpecAugment, from cached log-mels.

An epoch costs only the network. The loop is device-resident: the fold's training and
held-out features are moved to the device once (float16 stays float16 there), every batch is
gathered and augmented on the device (:func:`~tympan.training.augment.apply_draws`, and the
log-mel field augmentation of :mod:`tympan.training.field_augment`), the random numbers of a
whole epoch's augmentation are drawn on the CPU up front and copied over in one transfer, and
loss and accuracy are summed on the device and read once per epoch, so no step waits for the
host. On CUDA it runs under bfloat16 autocast (no loss scaler and so no per-step sync of its
inf check; float16 with a scaler where bfloat16 is missing). A checkpoint is written
atomically every ``checkpoint_every`` epochs (and after the last) from a CPU copy of the
state, by a background thread, so training does not wait for the disk; an interrupted fold
resumes at the next checkpointed epoch with the same optimizer, schedule and random-generator
state. Model selection never looks at the held-out
fold: the fold's result is the model after its last epoch (validation numbers per epoch are
logged for curves only).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
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
from tympan.training.augment import AugmentConfig, apply_draws, draw_batch
from tympan.training.evaluate import predict_logits
from tympan.training.field_augment import MelFieldAugment, MelFieldConfig, noise_bank_rows

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
    #: on-the-fly field augmentation of the log-mels (off by default here; the ``robust``
    #: recipe of :mod:`tympan.training.recipes` turns it on)
    field_mel: MelFieldConfig = field(default_factory=MelFieldConfig)
    #: write the resumable checkpoint every N epochs (and after the last one)
    checkpoint_every: int = 1
    #: name of the recipe the config was built from (``baseline``, ``robust``, ``efficientat``)
    recipe: str = "baseline"
    #: arithmetic of the training step: ``fp32``, ``bf16`` (autocast) or ``auto`` (bf16 where the
    #: device has it natively: CUDA, or a CPU with AVX512-BF16/AMX; see :func:`resolve_precision`)
    precision: str = "auto"
    #: ``adamw`` or ``adam`` (EfficientAT's fine-tuning uses Adam without weight decay)
    optimizer: str = "adamw"
    #: ``onecycle`` (per step) or ``warmup_linear``: EfficientAT's exponential warm-up over
    #: ``warmup_epochs``, then linear decay from ``rampdown_start`` over ``rampdown_epochs`` to
    #: ``final_lr_ratio`` of the peak, constant per epoch
    schedule: str = "onecycle"
    warmup_epochs: float = 10.0
    rampdown_start: float = 10.0
    rampdown_epochs: float = 65.0
    final_lr_ratio: float = 0.01

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["augment"] = self.augment.to_dict()
        d["field_mel"] = self.field_mel.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        d["field_mel"] = MelFieldConfig.from_dict(d.get("field_mel"))
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
        if self.checkpoint_every < 1:
            raise TrainingConfigError("--checkpoint-every must be at least 1")
        if self.precision not in PRECISIONS:
            raise TrainingConfigError(f"--precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.optimizer not in ("adamw", "adam"):
            raise TrainingConfigError(f"optimizer {self.optimizer!r}: expected adamw or adam")
        if self.schedule not in ("onecycle", "warmup_linear"):
            raise TrainingConfigError(f"schedule {self.schedule!r}: expected onecycle or warmup_linear")
        if not (0 < self.final_lr_ratio <= 1 and self.warmup_epochs >= 0 and self.rampdown_epochs > 0):
            raise TrainingConfigError("warm-up/ramp-down schedule: need warmup >= 0, ramp-down > 0, final ratio in (0, 1]")
        try:
            self.field_mel.validate()
        except ValueError as exc:
            raise TrainingConfigError(str(exc)) from None


PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX tiles).

    Without them oneDNN emulates bfloat16 and autocast makes a training step slower, not faster.
    """
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return bool(torch.backends.mkldnn.is_available()) and any(bool(c()) for c in checks if c is not None)
    except (RuntimeError, AttributeError):
        return False


def resolve_precision(precision: str, device: torch.device, cpu_bf16: bool | None = None, *,
                      arch: str | None = None, batch_size: int | None = None) -> str:
    """``fp32`` or ``bf16`` for ``device``: ``auto`` takes bf16 only where it is native, and on a
    CPU only where it was measured faster for ``arch`` at ``batch_size`` (the spec's
    ``cpu_bf16_min_batch``).

    CUDA keeps its bfloat16 autocast (float16 with a loss scaler where bf16 is missing);
    ``cpu_bf16`` overrides the CPU check (tests).
    """
    if precision not in PRECISIONS:
        raise TrainingConfigError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    if device.type == "cpu":
        if not (cpu_has_bf16() if cpu_bf16 is None else cpu_bf16):
            return "fp32"
        if arch is not None and batch_size is not None:
            return "bf16" if batch_size >= get_spec(arch).cpu_bf16_min_batch else "fp32"
        return "bf16"
    return "fp32"


def config_precision(config: TrainConfig, device: torch.device) -> str:
    """The precision ``config`` trains in on ``device``: the one answer the run header, the fold
    record's hash and the training step all use, so a record never names another precision."""
    return resolve_precision(config.precision, device, arch=config.arch, batch_size=config.batch_size)


def warmup_linear_factor(epoch: int, config: TrainConfig) -> float:
    """EfficientAT's lr factor for ``epoch`` (0-based): exp warm-up times linear ramp-down."""
    up = 1.0
    if epoch < config.warmup_epochs:
        e = min(max(float(epoch), 0.5), config.warmup_epochs)
        up = math.exp(-5.0 * (1.0 - e / config.warmup_epochs) ** 2)
    last = config.final_lr_ratio
    if epoch <= config.rampdown_start:
        down = 1.0
    elif epoch - config.rampdown_start < config.rampdown_epochs:
        down = last + (1.0 - last) * (config.rampdown_epochs - epoch + config.rampdown_start) / config.rampdown_epochs
    else:
        down = last
    return up * down


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
    precision: str = "fp32"  # the resolved arithmetic of the training step


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _to_cpu(obj: Any) -> Any:
    """A CPU copy of a (nested) state: tensors are cloned, so training can go on modifying its own."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class _BackgroundSaver:
    """Writes checkpoints on one background thread; at most one write in flight."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tympan-ckpt")
        self._pending: Any = None

    def submit(self, path: Path, state: dict[str, Any]) -> None:
        self.wait()
        self._pending = self._pool.submit(_save_checkpoint, path, state)

    def wait(self) -> None:
        if self._pending is not None:
            self._pending.result()  # re-raises a failed write
            self._pending = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)


def _epoch_draws(sizes: list[int], n_mels: int, frames: int, cfg: AugmentConfig, gen: torch.Generator,
                 device: torch.device) -> list[dict[str, Any]]:
    """Every step's augmentation draws for one epoch, drawn in step order, moved in one copy."""
    per_step = [draw_batch(b, n_mels, frames, cfg, gen) for b in sizes]
    keys = sorted({k for d in per_step for k, v in d.items() if isinstance(v, torch.Tensor)})
    if device.type == "cpu" or not keys:
        return per_step
    flat, spans, offset = [], [], 0
    for d in per_step:
        row = []
        for k in keys:
            if k in d:
                v = d[k].to(torch.float64).reshape(-1)  # exact for int64 < 2**53 and float32
                row.append((k, tuple(d[k].shape), offset))
                flat.append(v)
                offset += v.numel()
        spans.append(row)
    buf = torch.cat(flat).pin_memory().to(device, non_blocking=True) if flat else None
    out = []
    for d, row in zip(per_step, spans):
        dev = {k: v for k, v in d.items() if not isinstance(v, torch.Tensor)}
        for k, shape, off in row:
            n = math.prod(shape)
            v = buf[off : off + n].view(shape)
            dev[k] = v.long() if d[k].dtype == torch.int64 else v.float()
        out.append(dev)
    return out


class _FoldClock:
    """Training clips per wall second and the ETAs of the fold and of the run.

    The folds still to train after this one are taken to cost what this one does (same data,
    same recipe); the rate counts wall time since training began, validation included, so the
    ETA is what a user waits, not what the optimizer alone takes.
    """

    def __init__(self, n_train: int, epochs: int, start_epoch: int, folds_after: int) -> None:
        self.fold_clips = epochs * n_train
        self.left_at_start = (epochs - start_epoch) * n_train  # a resumed fold has less to do
        self.folds_after = folds_after
        self.clips = 0
        self.started = time.perf_counter()

    def add(self, n: int) -> None:
        self.clips += n

    def rate(self) -> float:
        return self.clips / max(time.perf_counter() - self.started, 1e-9)

    def status(self) -> str:
        """``412 clips/s, fold ETA 1:02, run ETA 5:10 (2 more folds)``."""
        from tympan.progress import format_eta

        if not self.clips:
            return "fold ETA ?"
        rate = self.rate()
        fold_left = max(self.left_at_start - self.clips, 0) / rate
        text = f"{rate:.0f} clips/s, fold {format_eta(fold_left)}"
        if self.folds_after:
            run_left = fold_left + self.folds_after * self.fold_clips / rate
            more = f"{self.folds_after} more fold{'s' if self.folds_after > 1 else ''}"
            text += f", run {format_eta(run_left)} ({more})"
        return text


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
    folds_after: int = 0,
) -> FoldResult:
    """Train on ``train_idx`` of a :class:`~tympan.cache.FeatureSet`, evaluate on ``val_idx``.

    ``extra`` is an optional second FeatureSet of training-only rows (e.g. field-augmented copies);
    its rows from the held-out folds are never used, so nothing of the held-out clips leaks in.
    ``progress``: a bar per epoch on a terminal (clips per second, the fold's and the run's ETA;
    ``folds_after`` more folds of the same run follow this one); off with ``False`` or when
    stderr is not a terminal. The per-epoch log line says the same.
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
    opt_kwargs = {"fused": True} if device.type == "cuda" else {}
    opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(groups, lr=config.lr, weight_decay=config.weight_decay, **opt_kwargs)
    extra_idx = np.zeros(0, dtype=np.int64)
    if extra is not None:
        extra_idx = np.flatnonzero(~np.isin(extra.folds, np.unique(features.folds[val_idx])))
    n_train = len(train_idx) + len(extra_idx)
    drop_last = n_train % config.batch_size == 1  # never a batch of one (BatchNorm)
    steps = n_train // config.batch_size if drop_last else math.ceil(n_train / config.batch_size)
    if config.schedule == "onecycle":
        scheduler: Any = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in groups],
            total_steps=config.epochs * steps,
            # a warm-up shorter than two steps divides by zero inside OneCycleLR (a 1-epoch run on
            # a small set); runs long enough for the configured warm-up are unchanged
            pct_start=max(config.pct_start, 2.0 / max(config.epochs * steps, 3)),
        )
    else:  # stepped per batch like OneCycleLR, constant within an epoch like EfficientAT's
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_linear_factor(step // steps, config))
    gen = torch.Generator().manual_seed(config.seed * 1000 + fold)
    precision = config_precision(config, device)
    use_amp = precision == "bf16" and device.type in ("cuda", "cpu")
    amp_dtype = torch.bfloat16
    if use_amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        amp_dtype = torch.float16
    # bfloat16 needs no loss scaling; the scaler's inf check would sync the host every step
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and device.type == "cuda" and amp_dtype == torch.float16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

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

    # The fold's features go to the device once (float16 caches stay float16 there); batches
    # are gathered, widened and augmented on the device.
    train_sorted = np.sort(train_idx)
    x_train = torch.from_numpy(np.ascontiguousarray(features.features[train_sorted]))
    y_train = torch.from_numpy(features.labels[train_sorted])
    if len(extra_idx):
        x_train = torch.cat([x_train, torch.from_numpy(np.ascontiguousarray(extra.features[extra_idx]))])
        y_train = torch.cat([y_train, torch.from_numpy(extra.labels[extra_idx])])
        log(f"fold {fold}: {len(extra_idx)} field-augmented training rows added")
    x_train, y_train = x_train.to(device), y_train.to(device)
    val_sorted = np.sort(val_idx)
    x_val = torch.from_numpy(np.ascontiguousarray(features.features[val_sorted])).to(device)
    y_val = features.labels[val_sorted]
    y_val_dev = torch.from_numpy(y_val).to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    n_mels, frames = int(x_train.shape[2]), int(x_train.shape[3])
    field_aug = None
    if config.field_mel.enabled:
        bank_rows = noise_bank_rows(features, train_sorted)  # training folds only, never the held-out one
        bank = torch.from_numpy(np.ascontiguousarray(features.features[bank_rows])) if len(bank_rows) else None
        field_aug = MelFieldAugment(config.field_mel, features.frontend, device, noise_bank=bank)
        log(f"fold {fold}: log-mel field augmentation on ({len(bank_rows)} noise-like training clips as real noise)")
    dev_gen = torch.Generator(device=device) if field_aug is not None else None
    sizes = [min(config.batch_size, n_train - s * config.batch_size) for s in range(steps)]
    saver = _BackgroundSaver()
    log(f"fold {fold}: training on {device} in {precision}"
        + (" (bfloat16 autocast)" if use_amp and amp_dtype == torch.bfloat16 else ""))

    clock = _FoldClock(sum(sizes), config.epochs, start_epoch, folds_after)
    try:
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(n_train, generator=gen).to(device, non_blocking=True)
            draws = _epoch_draws(sizes, n_mels, frames, config.augment, gen, device)
            if dev_gen is not None:
                dev_gen.manual_seed(int(torch.randint(2**62, (1,), generator=gen)))
            field_fn = None if field_aug is None else (lambda z: field_aug(z, gen, dev_gen))
            total_loss = torch.zeros((), device=device)
            total_correct = torch.zeros((), device=device)
            seen = 0
            # disable=None: no bar when stderr is not a terminal (the epoch's log line stays)
            bar = tqdm(total=sum(sizes), desc=f"fold {fold} epoch {epoch + 1}/{config.epochs}",
                       file=sys.stderr, disable=None if progress else True, leave=False, dynamic_ncols=True,
                       bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} clips{postfix}")
            for step in range(steps):
                idx = perm[step * config.batch_size : (step + 1) * config.batch_size]
                x = x_train[idx].float()
                y = F.one_hot(y_train[idx], n_classes).float()
                x, y_soft = apply_draws(x, y, draws[step], field_fn, frontend=features.frontend)
                x = x.contiguous(memory_format=memory_format)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), y_soft, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                b = sizes[step]
                total_loss += loss.detach() * b  # summed on the device: no host sync per step
                total_correct += (logits.detach().argmax(1) == y_soft.argmax(1)).sum()
                seen += b
                clock.add(b)
                if not bar.disable:  # host-side figures only: no device synchronisation
                    bar.set_postfix_str(clock.status(), refresh=False)
                    bar.update(b)
            bar.close()
            train_seconds = time.perf_counter() - t0  # steps queued (on CUDA: not yet all run)
            val_logits_dev = predict_logits(model, x_val, batch_size=config.eval_batch_size, device=device,
                                            as_tensor=True)
            val_loss_dev = F.cross_entropy(val_logits_dev, y_val_dev)
            val_correct_dev = (val_logits_dev.argmax(1) == y_val_dev).sum()
            # the one host synchronisation of the epoch
            sums = torch.stack([total_loss, total_correct.float(), val_loss_dev, val_correct_dev.float()]).cpu()
            epoch_seconds = time.perf_counter() - t0
            past_seconds += epoch_seconds
            val_loss, val_acc = float(sums[2]), float(sums[3]) / len(y_val)
            row = {
                "epoch": epoch + 1,
                "train_loss": float(sums[0]) / seen,
                "train_acc": float(sums[1]) / seen,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": optimizer.param_groups[-1]["lr"],
                "seconds": epoch_seconds,
                "train_seconds": train_seconds,
            }
            history.append(row)
            log(
                f"fold {fold} epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.3f} "
                f"val loss {val_loss:.3f} val acc {val_acc:.3f} ({epoch_seconds:.1f} s); {clock.status()}"
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
            if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
                saver.submit(ckpt_path, _to_cpu({
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
                }))
    finally:
        saver.close()

    model = model.to(memory_format=torch.contiguous_format).eval()
    logits = predict_logits(model, x_val, batch_size=config.eval_batch_size, device=device)
    accuracy = float((logits.argmax(1) == y_val).mean())
    del x_train, x_val
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
        precision=precision,
    )
