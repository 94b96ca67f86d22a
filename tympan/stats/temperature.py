"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).

One scalar ``T > 0`` divides the logits, ``p = softmax(z / T)``; it is chosen
to minimise the NLL on held-out data. It never changes the argmax, so accuracy
is untouched; ``T > 1`` softens an over-confident model. We optimise over
``log T`` (bounded, SciPy ``minimize_scalar``), which keeps ``T`` positive and
makes the 1-D problem well conditioned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.base import BaseEstimator
from sklearn.model_selection import LeaveOneGroupOut
from sklearn.utils.validation import check_is_fitted

from tympan.stats.probabilities import logits_to_probabilities
from tympan.io import to_jsonable
from tympan.stats.calibration import calibration_metrics, ece_noise_floor, expected_calibration_error

__all__ = ["CrossFitResult", "TemperatureScaler", "cross_fit_temperature"]


def _check_logits(logits: Any) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"expected logits of shape (n_samples, n_classes), got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contain NaN or inf")
    return z


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean NLL of ``softmax(logits / T)`` computed stably via log-softmax."""
    logp = log_softmax(logits / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), labels].mean())


class TemperatureScaler(BaseEstimator):
    """Fit one temperature on held-out logits; ``predict_proba = softmax(z / T)``.

    Parameters
    ----------
    min_temperature, max_temperature:
        Search interval for ``T`` (log-space, bounded Brent). The defaults
        [0.01, 100] cover anything a trained CNN needs; a fit that ends on a
        bound is reported by ``at_bound_``.
    """

    def __init__(self, min_temperature: float = 0.01, max_temperature: float = 100.0) -> None:
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature

    def fit(self, logits: Any, labels: Any) -> TemperatureScaler:
        z = _check_logits(logits)
        y = np.asarray(labels).astype(int)
        if y.shape != (z.shape[0],):
            raise ValueError(f"labels must have shape ({z.shape[0]},), got {y.shape}")
        if y.min() < 0 or y.max() >= z.shape[1]:
            raise ValueError("labels out of range for the number of logit columns")
        if not 0 < self.min_temperature < self.max_temperature:
            raise ValueError("need 0 < min_temperature < max_temperature")
        lo, hi = np.log(self.min_temperature), np.log(self.max_temperature)
        res = minimize_scalar(
            lambda log_t: _nll(z, y, float(np.exp(log_t))),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-6},
        )
        self.temperature_ = float(np.exp(res.x))
        self.nll_before_ = _nll(z, y, 1.0)
        self.nll_after_ = _nll(z, y, self.temperature_)
        self.at_bound_ = bool(min(res.x - lo, hi - res.x) < 1e-3)
        self.n_features_in_ = int(z.shape[1])
        self.n_samples_fit_ = int(z.shape[0])
        return self

    def transform(self, logits: Any) -> np.ndarray:
        """Scaled logits ``z / T``."""
        check_is_fitted(self, "temperature_")
        return _check_logits(logits) / self.temperature_

    def predict_proba(self, logits: Any) -> np.ndarray:
        """Calibrated probabilities ``softmax(z / T)``."""
        check_is_fitted(self, "temperature_")
        return logits_to_probabilities(_check_logits(logits), self.temperature_)

    def to_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "temperature_")
        return to_jsonable(
            {
                "temperature": self.temperature_,
                "nll_before": self.nll_before_,
                "nll_after": self.nll_after_,
                "at_bound": self.at_bound_,
                "n_classes": self.n_features_in_,
                "n_samples_fit": self.n_samples_fit_,
                "params": self.get_params(),
            }
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemperatureScaler:
        obj = cls(**data.get("params", {}))
        obj.temperature_ = float(data["temperature"])
        obj.nll_before_ = data.get("nll_before")
        obj.nll_after_ = data.get("nll_after")
        obj.at_bound_ = bool(data.get("at_bound", False))
        obj.n_features_in_ = int(data["n_classes"])
        obj.n_samples_fit_ = int(data.get("n_samples_fit", 0))
        return obj


@dataclass
class CrossFitResult:
    """Per-group temperatures and the held-out (out-of-fold) calibrated probabilities."""

    groups: list[Any]
    temperatures: list[float]
    group_sizes: list[int]
    probabilities: np.ndarray  # (n, k), row i calibrated by a T fitted WITHOUT row i's group
    sample_temperature: np.ndarray  # (n,), the T applied to each row
    metrics_before: dict[str, float]
    metrics_after: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """Summary without the per-clip probabilities (those can be large)."""
        t = np.asarray(self.temperatures)
        return to_jsonable(
            {
                "per_group": [
                    {"group": str(g), "temperature": temp, "n_held_out": n}
                    for g, temp, n in zip(self.groups, self.temperatures, self.group_sizes)
                ],
                "temperature_mean": t.mean(),
                "temperature_std": t.std(ddof=1) if len(t) > 1 else 0.0,
                "held_out_before": self.metrics_before,
                "held_out_after": self.metrics_after,
            }
        )


def cross_fit_temperature(
    logits: Any,
    labels: Any,
    groups: Any,
    *,
    n_bins: int = 15,
    **scaler_params: Any,
) -> CrossFitResult:
    """Leave-one-group-out temperature scaling.

    For each group (e.g. ESC-50 fold) fit ``T`` on all the other groups and
    apply it to the held-out one (sklearn ``LeaveOneGroupOut``). Calibration
    numbers computed on the result are therefore on data disjoint from the
    data each ``T`` was fitted on; fitting and scoring ``T`` on the same clips
    would understate the remaining miscalibration.
    """
    z = _check_logits(logits)
    y = np.asarray(labels).astype(int)
    g = np.asarray(groups)
    if len(g) != len(y) or len(y) != len(z):
        raise ValueError("logits, labels and groups must have the same length")
    uniq = np.unique(g)
    if len(uniq) < 2:
        raise ValueError("cross-fitting needs at least two groups")
    probs = np.empty_like(z)
    sample_t = np.empty(len(y))
    temps, sizes, names = [], [], []
    for train_idx, test_idx in LeaveOneGroupOut().split(z, y, g):
        scaler = TemperatureScaler(**scaler_params).fit(z[train_idx], y[train_idx])
        probs[test_idx] = scaler.predict_proba(z[test_idx])
        sample_t[test_idx] = scaler.temperature_
        names.append(g[test_idx[0]].item() if hasattr(g[test_idx[0]], "item") else g[test_idx[0]])
        temps.append(scaler.temperature_)
        sizes.append(len(test_idx))
    raw = logits_to_probabilities(z)
    return CrossFitResult(
        groups=names,
        temperatures=temps,
        group_sizes=sizes,
        probabilities=probs,
        sample_temperature=sample_t,
        metrics_before={
            "nll": _nll(z, y, 1.0),
            "ece": expected_calibration_error(raw, y, n_bins),
        },
        metrics_after={
            "nll": float(-log_softmax(z / sample_t[:, None], axis=1)[np.arange(len(y)), y].mean()),
            "ece": expected_calibration_error(probs, y, n_bins),
        },
    )


#: reliability bins of the reported calibration numbers (equal width)
N_BINS = 15


def split_groups(labels: np.ndarray, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Seeded split of clips into ``n_splits`` groups, stratified by class when every class allows."""
    from sklearn.model_selection import KFold, StratifiedKFold

    y = np.asarray(labels)
    n_splits = int(min(n_splits, len(y)))
    if n_splits < 2:
        raise ValueError("cross-fitting needs at least two held-out clips")
    counts = np.bincount(y)
    splitter = (StratifiedKFold(n_splits, shuffle=True, random_state=seed)
                if counts[counts > 0].min() >= n_splits else KFold(n_splits, shuffle=True, random_state=seed))
    groups = np.empty(len(y), dtype=np.int64)
    for g, (_, idx) in enumerate(splitter.split(np.zeros(len(y)), y)):
        groups[idx] = g
    return groups


def calibrate_heldout(
    logits: np.ndarray, labels: np.ndarray, *, n_splits: int = 5, seed: int = 0, n_bins: int = N_BINS
) -> dict[str, Any]:
    """Temperature on the whole fold + honest (cross-fitted) before/after calibration numbers."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    scaler = TemperatureScaler().fit(z, y)
    groups = split_groups(y, n_splits, seed)
    cf = cross_fit_temperature(z, y, groups, n_bins=n_bins)
    raw = logits_to_probabilities(z)
    in_sample = scaler.predict_proba(z)
    protocol = (f"temperature fitted on all {len(y)} held-out clips; 'after' numbers are cross-fitted: "
                f"the held-out clips are split into {len(np.unique(groups))} seeded, class-stratified "
                f"parts and each part is scaled by a temperature fitted on the other parts")
    return {
        "scaler": scaler,
        "cross_fit": cf,
        "probs_before": raw,
        "probs_after": cf.probabilities,
        "summary": {
            "temperature": scaler.temperature_,
            "temperature_at_bound": scaler.at_bound_,
            "protocol": protocol,
            "n_bins": n_bins,
            "before": calibration_metrics(raw, y, n_bins),
            "after": calibration_metrics(cf.probabilities, y, n_bins),
            "after_in_sample": calibration_metrics(in_sample, y, n_bins),
            "ece_noise_floor": ece_noise_floor(cf.probabilities, n_bins=n_bins),
            "cross_fit": cf.to_dict(),
        },
    }
