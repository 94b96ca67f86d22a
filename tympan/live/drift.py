"""Sliding-window drift check of a live stream: is the model affected over the last hour?

The rules of ``diagnose``'s "the model is affected" (``tympan.diagnostics.field``), over the
windows of the last ``window_s`` stream seconds instead of a folder of recordings:

- **estimated accuracy**: the bundle's label-free estimator (``extra["performance"]``, from
  ``tympan calibrate``) on the windows' calibrated probabilities; affected when the whole 95%
  interval lies more than :data:`~tympan.stats.performance.ACCURACY_MARGIN` below the held-out
  accuracy (a stale estimator, fitted for other weights, never votes);
- **OOD rate**: more windows flagged out of distribution than the deciding score's false-alarm
  rate (``1 - tpr``), by :func:`~tympan.stats.drift.ood_rate_shift`;
- **background rate**: more windows background-only than the detector calls on held-out
  foreground clips, by at least 25 points (``diagnose``'s ``min_excess`` for continuous audio).

Overlapping windows are not independent samples: the tests use every ``ceil(window / hop)``-th
window (non-overlapping ones). The three tests share a family-wise 5% (Bonferroni). A check runs
every ``check_every_s`` of stream time once ``min_windows`` are in the span; the monitor reports
when the verdict changes (affected, then recovered), so one alert per episode.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from tympan.contracts.events import DriftStatus
from tympan.stats.drift import DRIFT, ood_rate_shift
from tympan.stats.performance import ACCURACY_MARGIN, estimator_from_dict

__all__ = ["DriftMonitor"]

#: the three tests share a family-wise 5%
ALPHA = 0.05 / 3
#: background-only windows must exceed the held-out rate by this much (diagnose's value)
BACKGROUND_EXCESS = 0.25


def expected_ood_rate(ood: Mapping[str, Any], reference: Mapping[str, Any] | None = None) -> float | None:
    """False-alarm rate of the OOD score that decides the windows' flag (as ``diagnose`` reads it)."""
    emb = (ood or {}).get("embedding") or {}
    if emb.get("threshold") is not None:
        return 1.0 - float(emb.get("tpr", 0.95))
    if (ood or {}).get("threshold") is not None:
        expected = ((reference or {}).get("ood_rate") or {}).get("expected")
        return float(expected) if expected is not None else 1.0 - float(ood.get("tpr", 0.95))
    return None


class DriftMonitor:
    """Windows in (:meth:`add`), a :class:`DriftStatus` out when the verdict changes."""

    def __init__(self, bundle: Any, *, window_s: float = 3600.0, check_every_s: float = 60.0,
                 min_windows: int = 100, hop_s: float = 2.5, clip_s: float = 5.0,
                 margin: float = ACCURACY_MARGIN) -> None:
        if window_s <= 0 or check_every_s <= 0 or min_windows < 1:
            raise ValueError("window_s and check_every_s must be positive, min_windows >= 1")
        self.window_s, self.check_every_s, self.min_windows = float(window_s), float(check_every_s), int(min_windows)
        self.margin = float(margin)
        self.stride, self.hop_s = max(1, math.ceil(clip_s / hop_s - 1e-9)), float(hop_s)
        perf = dict((getattr(bundle, "extra", None) or {}).get("performance") or {})
        self.estimator = estimator_from_dict(perf["estimator"]) if perf.get("estimator") and not perf.get("stale") else None
        self.heldout = float(perf.get("heldout_accuracy", self.estimator.heldout_accuracy_)) if self.estimator else None
        self.systematic = perf.get("systematic_error")
        self.expected_ood = expected_ood_rate(bundle.ood or {}, bundle.reference)
        bg = bundle.background or {}
        self.expected_bg = float(bg.get("max_foreground_rate", 0.02)) if bg else None
        self._items: deque[tuple[float, np.ndarray, bool, bool]] = deque()
        self._next_check: float | None = None
        self.affected = False
        self.last: DriftStatus | None = None

    @classmethod
    def from_table(cls, bundle: Any, table: Mapping[str, float], *, hop_s: float, clip_s: float) -> DriftMonitor:
        """A monitor with the settings of an alert file's ``[drift]`` table (``AlertManager.drift``)."""
        d: dict[str, Any] = dict(table)
        if "min_windows" in d:
            d["min_windows"] = int(d["min_windows"])
        return cls(bundle, hop_s=hop_s, clip_s=clip_s, **d)

    def add(self, start_s: float, probabilities: np.ndarray, ood: bool, background: bool) -> DriftStatus | None:
        """One window; a status when a check ran and the verdict changed (else None)."""
        self._items.append((float(start_s), np.asarray(probabilities, np.float32), bool(ood), bool(background)))
        while self._items and self._items[0][0] < start_s - self.window_s:
            self._items.popleft()
        if self._next_check is None:
            self._next_check = start_s + self.check_every_s
        if start_s < self._next_check:
            return None
        self._next_check = start_s + self.check_every_s
        status = self.check()
        if status is None or status.affected == self.affected:
            return None
        self.affected = status.affected
        return status

    def check(self) -> DriftStatus | None:
        """The three tests over the span now (None: fewer than ``min_windows`` independent windows)."""
        # every stride-th window of the stream's own grid (not of the span: its phase would move)
        items = [i for i in self._items if round(i[0] / self.hop_s) % self.stride == 0]
        if len(items) < self.min_windows:
            return None
        n = len(items)
        reasons: list[str] = []
        out: dict[str, Any] = {}
        if self.estimator is not None:
            e = self.estimator.estimate(np.stack([i[1] for i in items]), systematic=self.systematic)
            out.update(estimated_accuracy=round(e.value, 4), accuracy_interval=(round(e.low, 4), round(e.high, 4)),
                       heldout_accuracy=round(self.heldout, 4))
            if e.high < self.heldout - self.margin:
                reasons.append(f"estimated accuracy {e.value:.1%} (95% interval {e.low:.1%}-{e.high:.1%}) vs "
                               f"{self.heldout:.1%} held-out")
        n_ood = sum(i[2] for i in items)
        out["ood_rate"] = round(n_ood / n, 4)
        if self.expected_ood is not None:
            out["expected_ood_rate"] = round(self.expected_ood, 4)
            r = ood_rate_shift(n_ood, n, expected_rate=self.expected_ood, alpha=ALPHA, min_field_samples=self.min_windows)
            if r["verdict"] == DRIFT:
                reasons.append(f"{n_ood / n:.0%} of windows out of distribution (expected {self.expected_ood:.0%})")
        n_bg = sum(i[3] for i in items)
        out["background_rate"] = round(n_bg / n, 4)
        if self.expected_bg is not None:
            out["expected_background_rate"] = round(self.expected_bg, 4)
            r = ood_rate_shift(n_bg, n, expected_rate=self.expected_bg, alpha=ALPHA, min_excess=BACKGROUND_EXCESS,
                               min_field_samples=self.min_windows)
            if r["verdict"] == DRIFT:
                reasons.append(f"{n_bg / n:.0%} of windows background only (expected at most {self.expected_bg:.0%})")
        self.last = DriftStatus(window_s=self.window_s, start_s=items[0][0], end_s=items[-1][0], windows=n,
                                affected=bool(reasons), reasons=reasons, **out)
        return self.last
