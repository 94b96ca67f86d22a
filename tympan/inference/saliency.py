"""What a model saw and where it looked, for one model window (``POST /explain``).

- the log-mel input exactly as the network received it (the bundle's own front end);
- per-stage feature maps, captured with forward hooks on the modules named in ``model.stages``
  (the model protocol of :mod:`tympan.models.registry`): the channel mean and the most active
  channels of each stage;
- Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization", ICCV 2017) for the top class: the last stage's activations
  weighted by the spatially averaged gradient of the class logit, ReLU'd, upsampled to the
  log-mel grid and scaled to 0..1.

Payloads are kept small: maps are average-pooled to at most :data:`MAX_MAP` cells, the
waveform is reduced to at most :data:`MAX_WAVE_POINTS` peak-preserving points, and floats are
rounded to 3 or 4 decimals.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MAX_MAP", "MAX_WAVE_POINTS", "downsample_waveform", "explain_window", "grad_cam"]

#: Largest (height, width) of a feature map in the payload; bigger maps are average-pooled.
MAX_MAP = (64, 128)
MAX_WAVE_POINTS = 4000
TOP_CHANNELS = 3


def downsample_waveform(wave: np.ndarray, max_points: int = MAX_WAVE_POINTS) -> np.ndarray:
    """At most ``max_points`` samples, keeping each bucket's largest-magnitude sample (peaks survive)."""
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    if x.size <= max_points:
        return x
    step = math.ceil(x.size / max_points)
    pad = (-x.size) % step
    buckets = np.pad(x, (0, pad)).reshape(-1, step)
    pick = np.abs(buckets).argmax(axis=1)
    return buckets[np.arange(buckets.shape[0]), pick]


def _shrink(maps: torch.Tensor) -> torch.Tensor:
    """Average-pool ``(..., H, W)`` down to at most :data:`MAX_MAP`."""
    h, w = maps.shape[-2:]
    th, tw = min(h, MAX_MAP[0]), min(w, MAX_MAP[1])
    if (th, tw) == (h, w):
        return maps
    lead = maps.shape[:-2]
    out = F.adaptive_avg_pool2d(maps.reshape(-1, 1, h, w), (th, tw))
    return out.reshape(*lead, th, tw)


def _r(a: torch.Tensor | np.ndarray, decimals: int = 3) -> list:
    arr = a.detach().float().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, np.float32)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    return np.round(arr.astype(np.float64), decimals).tolist()


def grad_cam(activation: torch.Tensor, gradient: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Grad-CAM map ``(H, W)`` in 0..1 from one stage's ``(C, h, w)`` activation and gradient."""
    weights = gradient.mean(dim=(1, 2), keepdim=True)  # (C, 1, 1)
    cam = F.relu((weights * activation).sum(dim=0))
    cam = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    top = cam.max()
    return cam / top if top > 0 else cam


def explain_window(
    model: nn.Module,
    frontend: nn.Module,
    window: np.ndarray,
    classes: list[str],
    *,
    temperature: float = 1.0,
    top_k: int = 3,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Log-mel, per-stage feature maps, Grad-CAM for the top class and top-k of one window."""
    cfg = frontend.config
    x = torch.as_tensor(np.asarray(window, np.float32)[None]).to(device)
    with torch.no_grad():
        feats = frontend(x)  # (1, 1, n_mels, frames)
    modules = dict(model.named_modules())
    stages = [s for s in getattr(model, "stages", []) if s in modules]
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_module: nn.Module, _inp: Any, out: Any) -> None:
            captured[name] = out if isinstance(out, torch.Tensor) else out[0]
        return fn

    handles = [modules[s].register_forward_hook(hook(s)) for s in stages]
    try:
        with torch.enable_grad():
            inp = feats.detach().clone().requires_grad_(True)
            logits = model(inp)
            target = int(logits[0].argmax())
            maps = {s: captured[s][0].detach().clone() for s in stages if s in captured}
            cam = None
            if stages and stages[-1] in captured:
                last = captured[stages[-1]]
                try:
                    grad = torch.autograd.grad(logits[0, target], last, allow_unused=True)[0]
                except RuntimeError:  # e.g. an in-place op downstream of the hooked output
                    grad = None
                if grad is not None:
                    cam = grad_cam(last[0].detach(), grad[0].detach(), tuple(feats.shape[-2:]))
    finally:
        for h in handles:
            h.remove()
    if cam is None:  # no stages to hook, or no gradient reached the last one: say so
        cam = torch.zeros(feats.shape[-2:])
        method = "none"
    else:
        method = "grad-cam"

    z = logits.detach().double()[0] / float(temperature)
    probs = torch.softmax(z, dim=0).cpu().numpy()
    order = np.argsort(-probs, kind="stable")[: max(1, min(top_k, len(classes)))]
    feature_maps = []
    for s, a in maps.items():
        if a.ndim != 3:  # (C, H, W) expected; skip anything else rather than guess
            continue
        mean = _shrink(a.mean(dim=0))
        strength = a.mean(dim=(1, 2))
        top = torch.argsort(strength, descending=True)[:TOP_CHANNELS]
        feature_maps.append({
            "stage": s,
            "shape": list(a.shape),
            "map_shape": list(mean.shape),
            "mean": _r(mean),
            "top_channel_indices": [int(i) for i in top],
            "top_channels": _r(_shrink(a[top])),
        })
    wave = downsample_waveform(np.asarray(window))
    return {
        "logmel": {
            "data": _r(feats[0, 0]),
            "n_mels": int(feats.shape[-2]),
            "frames": int(feats.shape[-1]),
            "sample_rate": cfg.sample_rate,
            "hop_length": cfg.hop_length,
            "f_min": float(cfg.f_min),
            "f_max": float(cfg.f_max),
        },
        "waveform": {
            "data": _r(wave, 4),
            "sample_rate": cfg.sample_rate,
            "duration_s": round(len(window) / cfg.sample_rate, 4),
            "points_per_second": round(len(wave) / (len(window) / cfg.sample_rate), 3),
        },
        "feature_maps": feature_maps,
        "saliency": {"method": method, "target": classes[target], "target_index": target,
                     "stage": stages[-1] if stages else None, "data": _r(cam)},
        "top_k": [{"label": classes[i], "index": int(i), "probability": round(float(probs[i]), 6)}
                  for i in order],
    }
