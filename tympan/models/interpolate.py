"""Weight-space interpolation of two models of one architecture (WiSE-FT, Wortsman et al. 2022).

A model fine-tuned from another sits in the same loss basin, so ``(1 - alpha) * base + alpha *
tuned`` is a model too, and often more robust under distribution shift than either end: the
fine-tune's gains on the shifts it trained for with less of what it forgot. It costs no training,
so it is the first thing to measure when a fine-tune wins some shifts and loses others.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


class InterpolationError(ValueError):
    """The two state dicts are not of one architecture."""


def interpolate_state(base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor],
                      alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * base + alpha * tuned`` for every floating tensor (weights and BatchNorm
    statistics alike); counters such as ``num_batches_tracked`` are taken from ``tuned``."""
    if not 0.0 <= alpha <= 1.0:
        raise InterpolationError(f"alpha must be in [0, 1], got {alpha}")
    if set(base) != set(tuned):
        diff = sorted(set(base) ^ set(tuned))
        raise InterpolationError(f"the models differ in {len(diff)} tensors (first: {diff[0]})")
    out: dict[str, torch.Tensor] = {}
    for k, b in base.items():
        t = tuned[k]
        if b.shape != t.shape or b.dtype != t.dtype:
            raise InterpolationError(f"{k}: {tuple(b.shape)} {b.dtype} vs {tuple(t.shape)} {t.dtype}")
        out[k] = torch.lerp(b, t, alpha) if t.is_floating_point() else t.clone()
    return out
