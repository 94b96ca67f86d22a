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
- Waveform mixing (EfficientAT's ESC-50 fine-tuning: with probability ``wavmix_p`` a clip is
  mixed with a random partner, ``x = l x1 + (1 - l) x2``, ``l ~ Beta(2, 2)`` folded to >= 0.5,
  targets mixed alike). From cached log-mels it is done in the power domain: two independent
  signals' powers add, so the mixture's mel power is ``l^2 P1 + (1 - l)^2 P2`` (exact in
  expectation; the cross term averages out over a mel band's bins and frames).
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
    wavmix_p: float = 0.0  # probability of waveform mixing per example (0 disables)
    wavmix_beta: float = 2.0

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


def draw_batch(b: int, n_mels: int, frames: int, cfg: AugmentConfig, gen: torch.Generator) -> dict[str, Any]:
    """Every random number :func:`apply_draws` needs for one batch, drawn on the CPU from ``gen``.

    The draws are the same numbers, in the same order, that the step-by-step functions above
    take from ``gen`` (so a seed gives the same batches as before), but they are small CPU
    tensors that the training loop can draw for a whole epoch at once and move to the device
    in one copy: no per-step host-device traffic and no host synchronisation.
    """
    d: dict[str, Any] = {"b": b}
    if cfg.roll:
        d["shift"] = (torch.rand(b, generator=gen) * frames).long()
    if cfg.gain_db > 0:
        db = (torch.rand(b, generator=gen) * 2 - 1) * cfg.gain_db
        d["gain"] = db * math.log(10.0) / 10.0 / cfg.norm_std
    if cfg.mixup_alpha > 0 and float(torch.rand(1, generator=gen)) < cfg.mixup_prob and b >= 2:
        u = torch.rand(b, generator=gen)
        lam = _beta_from_uniform(torch.distributions.Beta(cfg.mixup_alpha, cfg.mixup_alpha), u)
        d["lam"] = torch.maximum(lam, 1 - lam)
        d["perm"] = torch.randperm(b, generator=gen)
    for key, n_masks, frac, size in (("fmask", cfg.freq_masks, cfg.freq_width, n_mels),
                                     ("tmask", cfg.time_masks, cfg.time_width, frames)):
        max_width = min(int(frac * size), size)
        if n_masks <= 0 or int(frac * size) <= 0:
            continue
        spans = []
        for _ in range(n_masks):
            width = (torch.rand(b, generator=gen) * (max_width + 1)).long()
            start = (torch.rand(b, generator=gen) * (size - width + 1).float()).long()
            spans.append(torch.stack([start, width], 1))
        d[key] = torch.stack(spans, 1)  # (b, n_masks, 2)
    if cfg.wavmix_p > 0 and b >= 2:  # drawn last: runs without it draw exactly as before
        d["wmix"] = torch.rand(b, generator=gen) < cfg.wavmix_p
        lam = _beta_from_uniform(torch.distributions.Beta(cfg.wavmix_beta, cfg.wavmix_beta),
                                 torch.rand(b, generator=gen))
        d["wlam"] = torch.maximum(lam, 1 - lam)
        d["wpartner"] = (torch.rand(b, generator=gen) * b).long().clamp(max=b - 1)
    return d


def wave_mix(x: Tensor, y: Tensor, mix: Tensor, lam: Tensor, partner: Tensor, frontend: Any) -> tuple[Tensor, Tensor]:
    """Mix the waveforms behind normalised log-mels ``x`` in the power domain (see module doc)."""
    fe = frontend
    p = (torch.exp(x.float() * fe.norm_std + fe.norm_mean) - fe.log_offset).clamp_min(0.0)
    lam = torch.where(mix.to(x.device).bool(), lam.to(x.device, torch.float32), torch.ones_like(lam, device=x.device))
    lv = lam.view(-1, 1, 1, 1)
    mixed = lv**2 * p + (1 - lv) ** 2 * p[partner]
    z = ((torch.log(mixed + fe.log_offset) - fe.norm_mean) / fe.norm_std).to(x.dtype)
    ly = lam.view(-1, 1).to(y.dtype)
    return z, ly * y + (1 - ly) * y[partner]


def _apply_mask(x: Tensor, spans: Tensor, axis: int) -> Tensor:
    b, size = x.shape[0], x.shape[axis]
    fill = x.mean(dim=(1, 2, 3), keepdim=True)
    pos = torch.arange(size, device=x.device)
    start, end = spans[..., 0], spans[..., 0] + spans[..., 1]  # (b, n_masks)
    masked = ((pos[None, None] >= start[..., None]) & (pos[None, None] < end[..., None])).any(1)
    shape = [b, 1, 1, 1]
    shape[axis] = size
    return torch.where(~masked.view(*shape), x, fill)


def apply_draws(x: Tensor, y: Tensor, d: dict[str, Any], field: Any = None,
                frontend: Any = None) -> tuple[Tensor, Tensor]:
    """Apply the augmentations drawn by :func:`draw_batch` (tensors already on ``x``'s device).

    ``field`` is an optional callable ``x -> x`` (the log-mel field augmentation of
    :mod:`tympan.training.field_augment`), applied after the roll and before gain and Mixup.
    ``frontend`` (the features' :class:`~tympan.features.FrontendConfig`) is needed for
    waveform mixing, which happens after the roll, as in EfficientAT's data pipeline.
    """
    if "shift" in d:
        frames = x.shape[-1]
        idx = (torch.arange(frames, device=x.device)[None] - d["shift"][:, None]) % frames
        x = torch.gather(x, 3, idx[:, None, None, :].expand_as(x))
    if "wmix" in d:
        if frontend is None:
            raise ValueError("waveform mixing needs the features' front end (apply_draws(frontend=...))")
        x, y = wave_mix(x, y, d["wmix"], d["wlam"], d["wpartner"], frontend)
    if field is not None:
        x = field(x)
    if "gain" in d:
        x = x + d["gain"].to(x.dtype).view(-1, 1, 1, 1)
    if "lam" in d:
        lam, perm = d["lam"].to(x.dtype), d["perm"]
        x = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm]
        y = lam.view(-1, 1).to(y.dtype) * y + (1 - lam.view(-1, 1).to(y.dtype)) * y[perm]
    if "fmask" in d:
        x = _apply_mask(x, d["fmask"], 2)
    if "tmask" in d:
        x = _apply_mask(x, d["tmask"], 3)
    return x, y


def draws_to(d: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The draws with every tensor moved to ``device`` (non-blocking)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in d.items()}


def augment_batch(
    x: Tensor, y: Tensor, cfg: AugmentConfig, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Apply the configured augmentations to a training batch; ``y`` are soft targets ``(B, C)``."""
    d = draws_to(draw_batch(x.shape[0], x.shape[2], x.shape[3], cfg, gen), x.device)
    return apply_draws(x, y, d)
