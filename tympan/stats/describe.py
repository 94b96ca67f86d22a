"""Compact descriptions of a score's distribution (histograms, quantile summaries) for JSON."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["describe", "histogram"]


def histogram(values: np.ndarray, edges: np.ndarray, label: str) -> dict[str, Any]:
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "label": label,
            "n": int(len(values))}


def describe(v: np.ndarray) -> dict[str, Any]:
    """Count, mean, std and the 5/25/50/75/95% quantiles of ``v``."""
    v = np.asarray(v, np.float64)
    qs = [0.05, 0.25, 0.5, 0.75, 0.95]
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "quantiles": {f"{q:g}": float(np.quantile(v, q)) for q in qs}}
