"""Offline evaluation: the same decode -> LogMel -> model path that serving uses.

:func:`predict_logits` is the one function that turns log-mels into logits for training's
validation step, ``tympan evaluate`` and the serving parity test: eval mode, float32, no
gradients, results independent of the batch size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tympan.bundle import Bundle


def _as_array(features: Any) -> Any:
    """A FeatureSet's feature array, or the array/tensor itself."""
    return getattr(features, "features", features)


@torch.no_grad()
def predict_logits(
    bundle: Bundle | nn.Module,
    features: Any,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    as_tensor: bool = False,
) -> np.ndarray | torch.Tensor:
    """Logits ``(N, n_classes)`` (float32) of a bundle or model over log-mels ``(N, 1, mels, frames)``.

    ``features`` is a :class:`~tympan.cache.FeatureSet`, a NumPy array (memory-mapped is fine)
    or a tensor; float16 input is widened to float32 first. The model runs in eval mode (the
    caller's train/eval mode is restored afterwards). ``as_tensor`` returns the logits as a
    float32 tensor left on the device (no host synchronisation; the training loop's per-epoch
    validation).
    """
    model = bundle.model if isinstance(bundle, Bundle) else bundle
    array = _as_array(features)
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    was_training = model.training
    model.eval()
    out = []
    try:
        for lo in range(0, len(array), batch_size):
            chunk = array[lo : lo + batch_size]
            x = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk))
            x = x.to(device=device, dtype=torch.float32)
            y = model(x).float()
            out.append(y if as_tensor else y.cpu())
    finally:
        model.train(was_training)
    if not out:
        empty = np.zeros((0, getattr(model, "n_classes", 0)), np.float32)
        return torch.from_numpy(empty).to(device) if as_tensor else empty
    if as_tensor:
        return torch.cat(out)
    return torch.cat(out).numpy().astype(np.float32)


def evaluate(
    bundle: Bundle,
    data_dir: str | Path | None = None,
    folds: list[int] | None = None,
    *,
    batch_size: int = 64,
    progress: bool = False,
    cache_root: str | Path | None = None,
) -> dict[str, Any]:
    """Accuracy of ``bundle`` on the ESC-50-layout clips of ``folds`` (all folds if None).

    Clips are decoded and featurised with the bundle's own front end (float32 cache), exactly
    as serving does, then :func:`predict_logits`. Returns accuracy, n, logits, labels, clip ids.
    """
    from tympan.cache import featurize
    from tympan.datasets import load_esc50
    from tympan.errors import DataError

    dataset = load_esc50(data_dir, folds=folds)
    if list(dataset.classes) != list(bundle.classes):
        raise DataError(
            f"{dataset.root}: its classes differ from the bundle's "
            f"({len(dataset.classes)} vs {len(bundle.classes)} classes)"
        )
    fs = featurize(dataset, bundle.frontend, dtype="float32", progress=progress, root=cache_root)
    logits = predict_logits(bundle, fs, batch_size=batch_size)
    labels = fs.labels
    acc = float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")
    return {
        "accuracy": acc,
        "n": int(len(labels)),
        "folds": sorted({int(f) for f in fs.folds}),
        "logits": logits,
        "labels": labels,
        "clip_ids": list(fs.clip_ids),
    }
