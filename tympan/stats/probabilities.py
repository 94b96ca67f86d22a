"""Probability helpers shared by the statistics (validation, numerically stable softmax)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tympan.stats.scorers import softmax

__all__ = ["as_probabilities", "logits_to_probabilities"]


def as_probabilities(probs: Any) -> np.ndarray:
    """Validate an ``(n, k)`` array of class probabilities (rows summing to ~1)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"expected probabilities of shape (n_samples, n_classes), got {p.shape}")
    if p.shape[0] == 0:
        raise ValueError("expected at least one sample")
    if np.any(p < -1e-6) or np.any(p > 1 + 1e-6):
        raise ValueError("probabilities must lie in [0, 1]; pass logits through softmax first")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("probability rows must sum to 1; did you pass logits?")
    return np.clip(p, 0.0, 1.0)


def logits_to_probabilities(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / T)`` in float64 (shifted by the row maximum; NumPy only: no SciPy import on the prediction path)."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"expected logits of shape (n_samples, n_classes), got {z.shape}")
    return softmax(z / float(temperature), axis=1)
