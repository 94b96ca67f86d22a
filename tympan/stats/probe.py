"""A logistic regression on standardised features, reduced to four arrays JSON can hold.

The outlier probe (:class:`tympan.stats.ood.ProbeOOD`) and the background detector
(:class:`tympan.stats.background.BackgroundDetector`) are both this model on the embedding (and
level features); they differ only in what they separate and how their threshold is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tympan.io import decode_array, encode_array

__all__ = ["LinearProbe"]


@dataclass(frozen=True)
class LinearProbe:
    """``log-odds(x) = ((x - mean) / scale) . coef + intercept``, fitted by scikit-learn."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, X: Any, y: Any, *, C: float, max_iter: int) -> LinearProbe:
        """Class-balanced logistic regression of ``y`` (0/1) on ``X`` standardised by its own mean/std."""
        from sklearn.linear_model import LogisticRegression

        X = np.asarray(X, np.float64)
        mean, scale = X.mean(axis=0), X.std(axis=0) + 1e-6
        clf = LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter)
        clf.fit((X - mean) / scale, np.asarray(y))
        return cls(mean, scale, clf.coef_[0].astype(np.float64), float(clf.intercept_[0]))

    @property
    def n_features(self) -> int:
        return int(len(self.coef))

    def log_odds(self, X: Any) -> np.ndarray:
        X = np.asarray(X, np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected (n, {self.n_features}) features, got {X.shape}")
        return ((X - self.mean) / self.scale) @ self.coef + self.intercept

    def to_dict(self) -> dict[str, Any]:
        return {"mean": encode_array(self.mean, "float32"), "scale": encode_array(self.scale, "float32"),
                "coef": encode_array(self.coef, "float32"), "intercept": self.intercept}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearProbe:
        return cls(*(decode_array(data[k]).astype(np.float64) for k in ("mean", "scale", "coef")),
                   float(data["intercept"]))
