"""Batch augmentations on log-mel tensors ``(B, 1, n_mels, frames)``, driven by one generator.

All randomness comes from a ``torch.Generator`` passed in, so a seeded run is reproducible and
its state can be checkpointed (a ``ByteTensor``) and resumed exactly.

- Mixup (Zhang et al., ICLR 2018): convex combinations of pairs of inputs and of their
  (smoothed) one-hot targets; ``lam ~ Beta(alpha, alpha)``.
- SpecAugment masks (Park et al., Interspeech 2019): zero out random frequency bands and
  time spans (here: set them to the per-example mean, which after normalisation is the
  least surprising value).
- Random time roll: circular shift along time (a clip's event may start anywhere).
- Random gain: ``+g`` dB of power is ``+g ln(10)/10`` in natural-log mel, divided by the
  front end's ``norm_std``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class AugmentConfig:
    """What the training loop applies to every training batch (never to evaluation)."""

    mixup_alpha: float = 0.3  # 0 disables Mixup
    mixup_prob: float = 1.0
    freq_masks: int = 2
    freq_width: float = 0.15  # max mask width as a fraction of n_mels
    time_masks: int = 2
    time_width: float = 0.10  # max mask width as a fraction of frames
    roll: bool = True
    gain_db: float = 6.0  # max |gain|; 0 disables
    norm_std: float = 1.0  # the front end's norm_std (gain is scaled by it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _uniform(n: int, gen: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=gen).to(device)


def mask_axis(x: Tensor, n_masks: int, max_width: int, axis: int, gen: torch.Generator) -> Tensor:
    """SpecAugment: ``n_masks`` random spans of up to ``max_width`` bins along ``axis`` (2 or 3)."""
    if n_masks <= 0 or max_width <= 0:
        return x
    b, size = x.shape[0], x.shape[axis]
    max_width = min(max_width, size)
    fill = x.mean(dim=(1, 2, 3), keepdim=True)
    pos = torch.arange(size, device=x.device)
    keep = torch.ones(b, size, dtype=torch.bool, device=x.device)
    for _ in range(n_masks):
        width = (torch.rand(b, generator=gen) * (max_width + 1)).long().to(x.device)
        start = (torch.rand(b, generator=gen) * (size - width + 1).cpu().float()).long().to(x.device)
        keep &= ~((pos[None] >= start[:, None]) & (pos[None] < (start + width)[:, None]))
    shape = [b, 1, 1, 1]
    shape[axis] = size
    keep = keep.view(*shape)
    return torch.where(keep, x, fill)


def random_roll(x: Tensor, gen: torch.Generator) -> Tensor:
    """Circularly shift every example by its own random number of frames."""
    b, frames = x.shape[0], x.shape[-1]
    shift = (torch.rand(b, generator=gen) * frames).long().to(x.device)
    idx = (torch.arange(frames, device=x.device)[None] - shift[:, None]) % frames
    return torch.gather(x, 3, idx[:, None, None, :].expand_as(x))


def random_gain(x: Tensor, max_db: float, norm_std: float, gen: torch.Generator) -> Tensor:
    """Add a random power gain in ``[-max_db, max_db]`` dB, expressed in the log-mel domain."""
    if max_db <= 0:
        return x
    db = (torch.rand(x.shape[0], generator=gen) * 2 - 1) * max_db
    offset = db * math.log(10.0) / 10.0 / norm_std
    return x + offset.to(x.device, x.dtype).view(-1, 1, 1, 1)


def mixup(x: Tensor, y: Tensor, alpha: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Mix each example with a random partner; ``y`` is a (soft) target distribution ``(B, C)``."""
    if alpha <= 0 or x.shape[0] < 2:
        return x, y
    beta = torch.distributions.Beta(alpha, alpha)
    # Beta sampling has no generator argument: draw via the inverse trick from our uniform stream.
    u = torch.rand(x.shape[0], generator=gen)
    lam = _beta_from_uniform(beta, u)
    lam = torch.maximum(lam, 1 - lam).to(x.device, x.dtype)  # the first example dominates
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    x = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm]
    y = lam.view(-1, 1) * y + (1 - lam.view(-1, 1)) * y[perm]
    return x, y


def _beta_from_uniform(beta: torch.distributions.Beta, u: Tensor) -> Tensor:
    """Deterministic Beta(a, a) draw from uniforms (bisection on the regularised incomplete beta).

    torch has no Beta icdf; the ratio-of-Gammas sampler takes no generator, so to keep the
    whole run reproducible from one generator this inverts the CDF numerically (40 steps).
    """
    a = float(beta.concentration1)
    grid = torch.linspace(1e-4, 1 - 1e-4, 2001, dtype=torch.float64)
    pdf = torch.exp((a - 1) * (torch.log(grid) + torch.log1p(-grid)))
    cdf = torch.cumsum(pdf, 0)
    cdf = cdf / cdf[-1]
    idx = torch.searchsorted(cdf, u.double().clamp(0, 1)).clamp(max=grid.numel() - 1)
    return grid[idx].float()


def augment_batch(
    x: Tensor, y: Tensor, cfg: AugmentConfig, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Apply the configured augmentations to a training batch; ``y`` are soft targets ``(B, C)``."""
    if cfg.roll:
        x = random_roll(x, gen)
    x = random_gain(x, cfg.gain_db, cfg.norm_std, gen)
    if cfg.mixup_alpha > 0 and float(torch.rand(1, generator=gen)) < cfg.mixup_prob:
        x, y = mixup(x, y, cfg.mixup_alpha, gen)
    x = mask_axis(x, cfg.freq_masks, int(cfg.freq_width * x.shape[2]), 2, gen)
    x = mask_axis(x, cfg.time_masks, int(cfg.time_width * x.shape[3]), 3, gen)
    return x, y
