"""Labelled adaptation: a short fine-tune of the head (optionally the last stage) on field clips.

For when a few field recordings are labelled (``labels.csv``: columns ``file,class``), or the
model has no BatchNorm for AdaBN to re-estimate. Guarded against forgetting ESC-50 by
*replay*: every epoch mixes in ESC-50 training clips (the bundle's training folds, never the
held-out fold its provenance records; by default four replay clips per labelled window), normalised with the original BatchNorm statistics while
the field clips use the adapted ones, and the rest of the network stays frozen in eval mode
(BatchNorm statistics and dropout included). A held-out part of the labelled clips (default
30%, stratified by class where possible) gives the before/after accuracy figure recorded in
the bundle; the ESC-50 held-out fold, when available, gives the forgetting figure.

By default AdaBN (:mod:`.adabn`) runs first on the whole field folder (no labels needed), and
the head is then fitted on top of the adapted features.
"""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tympan.adaptation.adabn import (adapt_batchnorm, adaptation_record, carry_trust, finish_bundle, has_batchnorm,
                                    recheck)
from tympan.adaptation.field import (
    AdaptationError,
    FieldFeatures,
    bundle_params,
    load_field,
    predict_field,
    window_logits,
)
from tympan.bundle import Bundle
from tympan.inference import TrustParams, aggregate
from tympan.models import UnknownArchitectureError, get_spec

METHOD = "finetune-head"


class LabelsError(AdaptationError):
    """A labels file that cannot be used (missing columns, unknown classes, missing files)."""


def read_labels(path: str | Path, classes: list[str], field_dir: str | Path | None = None) -> list[tuple[Path, int]]:
    """``[(file, class index)]`` from a CSV with columns ``file`` and ``class``.

    ``file`` is relative to ``field_dir`` (else to the CSV's folder) or absolute; ``class`` is a
    class name of the bundle (or its index).
    """
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"{path}: no such labels file")
    base = Path(field_dir) if field_dir is not None else path.parent
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelsError(f"{path}: cannot read ({exc})") from None
    if not rows or not {"file", "class"} <= {c.strip() for c in rows[0]}:
        raise LabelsError(f"{path}: expected a CSV with columns 'file' and 'class'")
    index = {c: i for i, c in enumerate(classes)}
    out, unknown, missing = [], [], []
    for r in rows:
        r = {k.strip(): (v or "").strip() for k, v in r.items() if k}
        name, cls = r["file"], r["class"]
        if cls in index:
            target = index[cls]
        elif cls.isdigit() and int(cls) < len(classes):
            target = int(cls)
        else:
            unknown.append(cls)
            continue
        p = Path(name) if Path(name).is_absolute() else base / name
        if not p.is_file():
            missing.append(name)
            continue
        out.append((p, target))
    if unknown:
        raise LabelsError(f"{path}: {len(unknown)} labels are not classes of the model (first: {unknown[0]!r})")
    if missing:
        raise LabelsError(f"{path}: {len(missing)} labelled files do not exist under {base} (first: {missing[0]})")
    if not out:
        raise LabelsError(f"{path}: no labelled files")
    return out


def head_prefixes(model: nn.Module, arch: str, last_stage: bool = False) -> list[str]:
    """Names of the modules to train: the head, plus the last stage if asked.

    The head is the architecture spec's ``head_modules`` (``classify``'s weights).
    """
    try:
        head = list(get_spec(arch).head_modules)
    except UnknownArchitectureError:
        head = []
    if not head:  # unknown architecture: its last Linear layer
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise AdaptationError(f"cannot find the head of architecture {arch!r} (no Linear layer)")
        head = [linears[-1]]
    if last_stage:
        stages = list(getattr(model, "stages", []))
        if not stages:
            raise AdaptationError(f"architecture {arch!r} names no stages; --last-stage is not available")
        head.append(stages[-1])
    return head


def _select(model: nn.Module, prefixes: list[str]) -> list[nn.Parameter]:
    params = [p for n, p in model.named_parameters() if any(n == q or n.startswith(q + ".") for q in prefixes)]
    if not params:
        raise AdaptationError(f"no parameters under {prefixes}")
    return params


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def finetune_model(
    model: nn.Module,
    arch: str,
    x_field: torch.Tensor,
    y_field: np.ndarray,
    x_replay: torch.Tensor | None = None,
    y_replay: np.ndarray | None = None,
    *,
    replay_model: nn.Module | None = None,
    last_stage: bool = False,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 32,
    weight_decay: float = 1e-4,
    label_smoothing: float = 0.1,
    seed: int = 0,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """A copy of ``model`` with its head (and optionally last stage) fitted on field + replay.

    The rest is frozen and the whole model stays in eval mode (BatchNorm statistics fixed,
    dropout off). Head-only training runs on embeddings computed once, so it costs seconds.

    ``replay_model``: the model before AdaBN. Replay (ESC-50) clips are normalised with *its*
    BatchNorm statistics and field clips with the adapted ones -- each domain with its own
    statistics, the AdaBN idea -- so the head sees both as the backbone was trained to produce
    them. (Replaying clean clips through field statistics distorts them; on the benchmark that
    cost 3-7 points of field accuracy.)
    """
    torch.manual_seed(seed)
    model = copy.deepcopy(model).eval()
    prefixes = head_prefixes(model, arch, last_stage)
    params = _select(model, prefixes)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    n_field = len(y_field)
    has_replay = x_replay is not None and y_replay is not None and len(y_replay) > 0
    y = np.asarray(y_field, np.int64)
    if has_replay:
        y = np.concatenate([y, np.asarray(y_replay, np.int64)])
    yt = torch.from_numpy(y)
    replay_stats = _bn_buffers(replay_model) if (replay_model is not None and has_replay) else None
    xf = x_field.float()
    xr = torch.as_tensor(np.asarray(x_replay)).float() if has_replay else xf[:0]
    head_only = not last_stage and hasattr(model, "embed") and hasattr(model, "classify")

    buffers = dict(model.named_buffers())

    @torch.no_grad()
    def embed_all(x: torch.Tensor, stats: dict[str, torch.Tensor] | None) -> torch.Tensor:
        saved = {k: buffers[k].clone() for k in (stats or {})}
        try:  # no autograd here, so swapping the buffers in place is safe
            for k, v in (stats or {}).items():
                buffers[k].copy_(v)
            return torch.cat([model.embed(x[lo : lo + 64]) for lo in range(0, len(x), 64)])
        finally:
            for k, v in saved.items():
                buffers[k].copy_(v)

    def run(x: torch.Tensor, stats: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        # functional_call swaps in the replay statistics without modifying the module (autograd-safe)
        return model(x) if stats is None else torch.func.functional_call(model, stats, (x,), strict=False)

    if head_only:
        parts = [embed_all(xf, None)]
        if has_replay:
            parts.append(embed_all(xr, replay_stats))
        inputs = torch.cat(parts)

        def forward(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return model.classify(inputs[idx]), idx
    else:
        inputs = torch.cat([xf, xr])

        def forward(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            field_idx, rep_idx = idx[idx < n_field], idx[idx >= n_field]
            outs = [run(inputs[field_idx])] if len(field_idx) else []
            if len(rep_idx):
                outs.append(run(inputs[rep_idx], replay_stats))
            return torch.cat(outs), torch.cat([field_idx, rep_idx])

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history = []
    n = len(yt)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for lo in range(0, n, batch_size):
            idx = perm[lo : lo + batch_size]
            logits, order = forward(idx)
            loss = F.cross_entropy(logits, yt[order], label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append({"epoch": epoch + 1, "loss": total / n})
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval(), history


def training_folds(bundle: Bundle, available: list[int]) -> tuple[list[int], list[int]]:
    """``(training folds, held-out folds)`` of the bundle, from its provenance."""
    prov = bundle.provenance or {}
    held = prov.get("heldout_fold", prov.get("heldout_folds"))
    held = [] if held is None else [int(h) for h in (held if isinstance(held, list) else [held])]
    train = prov.get("train_folds")
    if isinstance(train, list) and train:
        folds = [int(f) for f in train if int(f) in available and int(f) not in held]
    else:
        folds = [f for f in available if f not in held]
    return folds, held


def replay_features(
    bundle: Bundle, data_dir: str | Path | None, n: int, seed: int = 0, progress: bool = False
) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
    """``n`` random ESC-50 clips from the bundle's training folds, as log-mels (cached)."""
    from tympan.cache import featurize
    from tympan.datasets import load_esc50

    dataset = load_esc50(data_dir)
    if list(dataset.classes) != list(bundle.classes):
        raise AdaptationError(f"{dataset.root}: its classes differ from the bundle's; cannot replay it")
    folds, held = training_folds(bundle, sorted({int(f) for f in dataset.folds}))
    if not folds:
        raise AdaptationError("no ESC-50 training folds left for replay")
    fs = featurize(dataset, bundle.frontend, progress=progress)
    pool = fs.select_folds(folds)
    take = np.sort(np.random.default_rng(seed).choice(pool, size=min(n, len(pool)), replace=False))
    x = torch.from_numpy(np.asarray(fs.features[take], np.float32))
    info = {"data_root": str(dataset.root), "folds": folds, "excluded_heldout_folds": held, "n": int(len(take))}
    return x, fs.labels[take], info


def esc50_heldout_accuracy(models: dict[str, nn.Module], bundle: Bundle, data_dir: str | Path | None,
                           max_clips: int, seed: int = 0) -> dict[str, Any] | None:
    """Accuracy of each model on (up to ``max_clips`` of) the bundle's held-out ESC-50 fold."""
    from tympan.cache import featurize
    from tympan.datasets import load_esc50

    dataset = load_esc50(data_dir)
    _, held = training_folds(bundle, sorted({int(f) for f in dataset.folds}))
    if not held or max_clips <= 0:
        return None
    fs = featurize(dataset, bundle.frontend, progress=False)
    idx = fs.select_folds(held)
    if len(idx) > max_clips:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_clips, replace=False))
    x = torch.from_numpy(np.asarray(fs.features[idx], np.float32))
    y = fs.labels[idx]
    out: dict[str, Any] = {"folds": held, "n": int(len(idx))}
    for key, m in models.items():
        out[key] = float((window_logits(m, x).argmax(1) == y).mean())
    return out


def _split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, heldout)``, stratified when every class has at least two clips."""
    from sklearn.model_selection import train_test_split

    n = len(targets)
    n_held = int(math.floor(n * fraction))
    if fraction <= 0 or n < 4 or n_held < 1:
        return np.arange(n), np.zeros(0, np.int64)
    counts = np.bincount(targets)
    stratify = targets if counts[counts > 0].min() >= 2 and n_held >= len(np.unique(targets)) else None
    tr, te = train_test_split(np.arange(n), test_size=n_held, random_state=seed, stratify=stratify)
    return np.sort(tr), np.sort(te)


def _file_accuracy(model: nn.Module, ff: FieldFeatures, targets: np.ndarray, t: float) -> float:
    z = window_logits(model, ff.features)
    return float((aggregate(z, TrustParams(temperature=t), ff.file_index, ff.n_files).predicted == targets).mean())


def finetune_bundle(
    bundle: Bundle,
    labels: str | Path,
    field_dir: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
    replay: bool = True,
    replay_ratio: float = 4.0,
    adabn: bool = True,
    last_stage: bool = False,
    heldout_fraction: float = 0.3,
    epochs: int = 30,
    lr: float = 1e-3,
    max_esc50_eval: int = 200,
    seed: int = 0,
    name: str | None = None,
    progress: bool = False,
) -> tuple[Bundle, dict[str, Any]]:
    """Fine-tune ``bundle`` on the labelled field clips of ``labels`` (see the module doc).

    ``progress``: the progress line while field files decode and replay clips featurise."""
    labelled = read_labels(labels, bundle.classes, field_dir)
    t = bundle_params(bundle).temperature
    lf = load_field([p for p, _ in labelled], bundle.frontend, progress=progress, desc="labelled files")
    lf.root = Path(field_dir) if field_dir is not None else Path(labels).parent
    target_of = {p: c for p, c in labelled}
    targets = np.asarray([target_of[p] for p in lf.files], np.int64)
    warnings: list[str] = []
    notes: list[str] = []
    if lf.skipped:
        warnings.append(f"{len(lf.skipped)} labelled files could not be decoded (first: {lf.skipped[0][1]})")
    tr, te = _split(targets, heldout_fraction, seed)
    if len(te) == 0:
        warnings.append(f"only {len(targets)} labelled clips: none held out, so there is no before/after accuracy")

    base = bundle.model
    ff_all = None
    if adabn and has_batchnorm(base):
        ff_all = (load_field(field_dir, bundle.frontend, progress=progress)
                  if field_dir is not None else lf)
        base = adapt_batchnorm(base, ff_all.features, seed=seed)
        notes.append(f"AdaBN ran first on {ff_all.n_files} unlabelled field files ({ff_all.n_windows} windows)")
    elif adabn:
        notes.append(f"{bundle.arch} has no BatchNorm: fine-tune only")

    train_ff = lf.subset_files(tr)
    y_train = targets[tr][train_ff.file_index]
    x_rep = y_rep = None
    replay_info: dict[str, Any] | None = None
    if replay:
        n_rep = int(round(replay_ratio * len(y_train)))
        try:
            x_rep, y_rep, replay_info = replay_features(bundle, data_dir, n_rep, seed=seed, progress=progress)
        except Exception as exc:  # DataError and friends: say what to do
            from tympan.errors import TympanError

            if not isinstance(exc, TympanError):
                raise
            raise AdaptationError(
                f"the fine-tune mixes in ESC-50 training clips against forgetting and cannot find them ({exc}); "
                "pass --data-dir DIR, set TYMPAN_ESC50_DIR, or --no-replay to accept forgetting") from None
    else:
        warnings.append("no ESC-50 replay: the fine-tuned model may forget classes absent from the labelled clips")
    model, history = finetune_model(base, bundle.arch, train_ff.features, y_train, x_rep, y_rep,
                                    replay_model=bundle.model, last_stage=last_stage, epochs=epochs, lr=lr,
                                    seed=seed)

    labelled_report: dict[str, Any] = {
        "n_labelled_files": int(len(targets)),
        "n_train_files": int(len(tr)),
        "n_heldout_files": int(len(te)),
        "heldout_files": [lf.relative_names()[i] for i in te],
        "trained": head_prefixes(model, bundle.arch, last_stage),
        "epochs": epochs,
        "lr": lr,
        "replay": replay_info,
        "final_loss": history[-1]["loss"] if history else None,
    }
    if len(te):
        held_ff = lf.subset_files(te)
        labelled_report["heldout_accuracy"] = {
            "before": _file_accuracy(bundle.model, held_ff, targets[te], t),
            **({"after_adabn": _file_accuracy(base, held_ff, targets[te], t)} if base is not bundle.model else {}),
            "after": _file_accuracy(model, held_ff, targets[te], t),
            "measured_on": f"{len(te)} held-out labelled field files (never trained on)",
        }
    if replay and max_esc50_eval > 0:
        labelled_report["esc50_heldout_accuracy"] = esc50_heldout_accuracy(
            {"before": bundle.model, "after": model}, bundle, data_dir, max_esc50_eval, seed)

    check_ff = ff_all if ff_all is not None else lf
    before = predict_field(bundle, check_ff)
    after = predict_field(bundle.replace(model=model), check_ff)
    checks, w2, n2 = recheck(bundle, before, after)
    warnings += w2
    notes += n2
    record = adaptation_record(check_ff, "adabn+" + METHOD if base is not bundle.model else METHOD,
                               labels_file=str(labels), last_stage=last_stage, seed=seed)
    report = {**record, "checks": checks, "warnings": warnings, "notes": notes, "labelled": labelled_report}
    new = finish_bundle(bundle, model, record, report, name=name or f"{bundle.name}-finetuned")
    carry_trust(bundle, new, check_ff, report)  # keep the original model's OOD / background judgement
    return new, report
