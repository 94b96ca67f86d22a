"""Is there a foreground sound event in a window, or only background (hiss, hum, rumble, room tone)?

Most of a continuous field recording is background, and a closed-set classifier has no
"nothing" class: recorder hiss comes out as "crickets 0.9". :class:`BackgroundDetector` is a
small logistic regression (scikit-learn) on what the model saw (its penultimate embedding) and
how loud the window is (:func:`level_features`: RMS level, the level of its loudest frames and
its dynamic range, in dB re full scale), fitted on foreground clips the model never trained on
(held-out ESC-50) against generated and recorded background (:mod:`tympan.datasets.background`).
Its threshold is set so that at most ``max_foreground_rate`` of held-out foreground windows are
called background.

Orientation: ``decision_function`` is the probability of background (higher = more background).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from tympan.stats.probe import LinearProbe
from tympan.stats.scorers import LEVEL_FEATURES, background_probability, level_features

__all__ = ["LEVEL_FEATURES", "BackgroundDetector", "level_features"]

class BackgroundDetector(BaseEstimator):
    """Logistic regression: background (1) versus foreground (0) windows.

    ``X`` rows are ``[embedding..., level_features...]``. Features are standardised with the
    training set's mean and std (stored), so the fitted state is a few arrays that JSON holds.
    """

    def __init__(self, C: float = 0.1, max_foreground_rate: float = 0.02) -> None:
        self.C = C
        self.max_foreground_rate = max_foreground_rate

    def fit(self, X: Any, y: Any, *, foreground_heldout: Any | None = None) -> Self:
        """Fit on ``X`` with ``y`` (1 = background); the threshold on ``foreground_heldout``.

        The threshold keeps at least ``1 - max_foreground_rate`` of ``foreground_heldout`` (held-out
        foreground windows, e.g. ESC-50 clips the model never trained on) as foreground; without
        them it is 0.5.
        """
        X = np.asarray(X, np.float64)
        self.probe_ = LinearProbe.fit(X, np.asarray(y, np.int64), C=self.C, max_iter=2000)
        self.n_features_in_ = X.shape[1]
        self.threshold_ = 0.5
        if foreground_heldout is not None and len(foreground_heldout):
            p = self.decision_function(foreground_heldout)
            self.threshold_ = float(max(0.5, np.quantile(p, 1 - self.max_foreground_rate)))
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Probability of background per row."""
        check_is_fitted(self, "probe_")
        return background_probability(self.probe_, X)

    def predict(self, X: Any) -> np.ndarray:
        """True where a window holds background only."""
        return self.decision_function(X) > self.threshold_

    def to_dict(self) -> dict[str, Any]:
        check_is_fitted(self, "probe_")
        return {"method": "logistic regression on [embedding, level features]", "C": self.C,
                "max_foreground_rate": self.max_foreground_rate, "level_features": list(LEVEL_FEATURES),
                **self.probe_.to_dict(), "threshold": self.threshold_, "n_features": self.n_features_in_}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BackgroundDetector:
        obj = cls(C=float(data.get("C", 0.1)), max_foreground_rate=float(data.get("max_foreground_rate", 0.02)))
        obj.probe_ = LinearProbe.from_dict(data)
        obj.threshold_ = float(data["threshold"])
        obj.n_features_in_ = int(data["n_features"])
        return obj
