"""Label-free accuracy estimates: how accurate is the model on recordings nobody labelled?

Every estimator is fitted on *labelled held-out* predictions (clips the model never trained on)
and then reads only the predicted probabilities of the unlabelled field recordings.

* :class:`ATCEstimator` -- Average Thresholded Confidence (Garg, Balakrishnan, Lipton, Neyshabur,
  Sedghi, "Leveraging Unlabeled Data to Predict Out-of-Distribution Performance", ICLR 2022). On
  held-out clips pick the threshold ``t`` on a confidence score so that the share of clips scoring
  above ``t`` equals the held-out accuracy; the estimate on field clips is the share scoring above
  ``t``. Scores: ``"max_confidence"`` (top-1 probability, ATC-MC) or ``"negative_entropy"``
  (``sum p log p``, ATC-NE). The threshold search is the reference implementation's
  (``find_ATC_threshold`` of github.com/saurabhgarg1996/ATC_code: scan the sorted scores and
  minimise |false positives - false negatives|); estimate = ``mean(score >= t)``.
* :class:`MeanConfidenceEstimator` -- mean calibrated top-1 probability (the idea behind NannyML's
  confidence-based performance estimation, CBPE): a calibrated model's expected accuracy is its
  mean confidence.
* :class:`DoCEstimator` -- difference of confidences (Guillory, Shankar, Ebrahimi, Darrell,
  Schmidt, ICCV 2021): held-out accuracy minus the drop of mean confidence from held-out to field.

Intervals (:meth:`AccuracyEstimator.estimate`): a 95% sampling interval on the field recordings
(Wilson score interval on the count above the threshold for ATC; normal interval with the
Poisson-binomial variance ``sum p(1 - p) / n^2`` for the confidence means), each end then moved
out by ``systematic``: the estimator's own error validated on held-out data under shifts (stored
with the fitted estimator; see :func:`crossfit_errors`). Arrays in, numbers out; nothing here
reads audio or a bundle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import softmax

#: Default margin: the estimated accuracy must be this far below the held-out accuracy (and
#: significantly below it) before "the model is affected" (``diagnose`` and the live drift check).
ACCURACY_MARGIN = 0.05

__all__ = [
    "ESTIMATORS",
    "ATCEstimator",
    "AccuracyEstimate",
    "AccuracyEstimator",
    "DoCEstimator",
    "MeanConfidenceEstimator",
    "atc_threshold",
    "confidence_scores",
    "crossfit_errors",
    "estimator_from_dict",
    "make_estimator",
    "stratified_halves",
    "wilson_interval",
]

Z95 = 1.959963984540054


def confidence_scores(probabilities: np.ndarray, score: str = "max_confidence") -> np.ndarray:
    """Per-row confidence score of a probability matrix ``(n, K)``; higher = more confident."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (n, K), got shape {p.shape}")
    if score == "max_confidence":
        return p.max(axis=1) if len(p) else np.zeros(0)
    if score == "negative_entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        return plogp.sum(axis=1)
    raise ValueError(f"unknown score {score!r}: use 'max_confidence' or 'negative_entropy'")


def atc_threshold(scores: np.ndarray, correct: np.ndarray) -> float:
    """The ATC threshold: scan sorted scores, minimise |FP - FN| (first minimum; the reference's rule).

    FP = wrong clips scoring above the candidate, FN = correct clips at or below it. Returns
    ``-inf`` when no candidate beats accepting every clip (all correct).
    """
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    if s.shape != c.shape or s.ndim != 1 or s.size == 0:
        raise ValueError("scores and correct must be 1-d of the same, non-zero length")
    order = np.argsort(s, kind="stable")
    cs = c[order]
    fp = np.sum(~c) - np.cumsum(~cs)  # wrong ones still above after moving past position i
    fn = np.cumsum(cs)
    d = np.abs(fp - fn)
    i = int(np.argmin(d))  # first minimum
    if d[i] < np.sum(~c):
        return float(s[order][i])
    return float("-inf")


def wilson_interval(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n``."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


@dataclass
class AccuracyEstimate:
    """An estimated accuracy with its 95% interval and how it was obtained."""

    value: float
    low: float
    high: float
    method: str
    n: int
    sampling: tuple[float, float]
    systematic: float

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "method": self.method, "n": self.n,
                "sampling_interval": list(self.sampling), "systematic_error": self.systematic}


class AccuracyEstimator:
    """Base class: ``fit(probabilities, labels)`` on held-out clips, ``estimate(probabilities)`` on field clips."""

    name = "base"
    description = ""

    def __init__(self, systematic: float = 0.0) -> None:
        self.systematic = systematic

    # -- fitted state shared by every estimator
    def _fit_common(self, probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
        p = np.asarray(probabilities, dtype=np.float64)
        y = np.asarray(labels)
        if p.ndim != 2 or len(p) != len(y) or len(p) == 0:
            raise ValueError("probabilities (n, K) and labels (n,) must have the same non-zero length")
        correct = p.argmax(axis=1) == y
        self.heldout_accuracy_ = float(correct.mean())
        self.heldout_mean_confidence_ = float(p.max(axis=1).mean())
        self.n_fit_ = int(len(p))
        return correct

    def fit(self, probabilities: np.ndarray, labels: np.ndarray) -> AccuracyEstimator:
        raise NotImplementedError

    def point(self, probabilities: np.ndarray) -> float:
        """The point estimate alone."""
        raise NotImplementedError

    def sampling_interval(self, probabilities: np.ndarray) -> tuple[float, float]:
        p = np.asarray(probabilities, dtype=np.float64)
        n = len(p)
        if n == 0:
            return 0.0, 1.0
        conf = p.max(axis=1)
        half = Z95 * float(np.sqrt(np.sum(conf * (1 - conf)))) / n
        v = self.point(p)
        return max(0.0, v - half), min(1.0, v + half)

    def estimate(self, probabilities: np.ndarray, systematic: float | None = None) -> AccuracyEstimate:
        """Point estimate, 95% sampling interval widened by the validated ``systematic`` error."""
        p = np.asarray(probabilities, dtype=np.float64)
        sysm = float(self.systematic if systematic is None else systematic)
        if len(p) == 0:
            return AccuracyEstimate(float("nan"), 0.0, 1.0, self.name, 0, (0.0, 1.0), sysm)
        v = float(self.point(p))
        lo, hi = self.sampling_interval(p)
        return AccuracyEstimate(v, max(0.0, lo - sysm), min(1.0, hi + sysm), self.name, int(len(p)),
                                (lo, hi), sysm)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, "description": self.description, "systematic_error": self.systematic,
                "heldout_accuracy": self.heldout_accuracy_, "heldout_mean_confidence": self.heldout_mean_confidence_,
                "n_fit": self.n_fit_, **self._state()}

    def _state(self) -> dict[str, Any]:
        return {}


class ATCEstimator(AccuracyEstimator):
    """Average Thresholded Confidence (Garg et al., ICLR 2022) on a max-softmax or negative-entropy score."""

    def __init__(self, score: str = "negative_entropy", systematic: float = 0.0) -> None:
        super().__init__(systematic)
        confidence_scores(np.ones((1, 2)) / 2, score)  # validates the name
        self.score = score

    @property
    def name(self) -> str:  # type: ignore[override]
        return {"max_confidence": "atc_mc", "negative_entropy": "atc_ne"}[self.score]

    @property
    def description(self) -> str:  # type: ignore[override]
        return (f"Average Thresholded Confidence (Garg et al., ICLR 2022), score = {self.score.replace('_', ' ')}: "
                "share of recordings whose score is above the threshold that matches held-out accuracy")

    def fit(self, probabilities: np.ndarray, labels: np.ndarray) -> ATCEstimator:
        correct = self._fit_common(probabilities, labels)
        self.threshold_ = atc_threshold(confidence_scores(probabilities, self.score), correct)
        return self

    def point(self, probabilities: np.ndarray) -> float:
        s = confidence_scores(probabilities, self.score)
        return float(np.mean(s >= self.threshold_)) if len(s) else float("nan")

    def sampling_interval(self, probabilities: np.ndarray) -> tuple[float, float]:
        s = confidence_scores(probabilities, self.score)
        return wilson_interval(float(np.sum(s >= self.threshold_)), len(s))

    def _state(self) -> dict[str, Any]:
        return {"score": self.score, "threshold": self.threshold_}


class MeanConfidenceEstimator(AccuracyEstimator):
    """Mean calibrated top-1 probability (CBPE's idea): expected accuracy of a calibrated model."""

    name = "mean_confidence"
    description = "mean calibrated top-1 probability (confidence-based performance estimation, as NannyML's CBPE)"

    def fit(self, probabilities: np.ndarray, labels: np.ndarray) -> MeanConfidenceEstimator:
        self._fit_common(probabilities, labels)
        return self

    def point(self, probabilities: np.ndarray) -> float:
        return float(np.asarray(probabilities, np.float64).max(axis=1).mean())


class DoCEstimator(AccuracyEstimator):
    """Difference of confidences (Guillory et al., ICCV 2021): held-out accuracy - (held-out - field) mean confidence."""

    name = "doc"
    description = ("difference of confidences (Guillory et al., ICCV 2021): held-out accuracy minus the drop of mean "
                   "top-1 probability from held-out clips to field recordings")

    def fit(self, probabilities: np.ndarray, labels: np.ndarray) -> DoCEstimator:
        self._fit_common(probabilities, labels)
        return self

    def point(self, probabilities: np.ndarray) -> float:
        conf = float(np.asarray(probabilities, np.float64).max(axis=1).mean())
        return float(np.clip(self.heldout_accuracy_ - (self.heldout_mean_confidence_ - conf), 0.0, 1.0))


ESTIMATORS: dict[str, Callable[[], AccuracyEstimator]] = {
    "atc_ne": lambda: ATCEstimator("negative_entropy"),
    "atc_mc": lambda: ATCEstimator("max_confidence"),
    "mean_confidence": MeanConfidenceEstimator,
    "doc": DoCEstimator,
}


def make_estimator(method: str, systematic: float = 0.0) -> AccuracyEstimator:
    if method not in ESTIMATORS:
        raise ValueError(f"unknown accuracy estimator {method!r}; known: {', '.join(ESTIMATORS)}")
    est = ESTIMATORS[method]()
    est.systematic = systematic
    return est


def estimator_from_dict(d: Mapping[str, Any]) -> AccuracyEstimator:
    """Rebuild a fitted estimator from :meth:`AccuracyEstimator.to_dict`."""
    est = make_estimator(str(d["method"]), float(d.get("systematic_error", 0.0)))
    est.heldout_accuracy_ = float(d["heldout_accuracy"])
    est.heldout_mean_confidence_ = float(d["heldout_mean_confidence"])
    est.n_fit_ = int(d.get("n_fit", 0))
    if isinstance(est, ATCEstimator):
        thr = d["threshold"]
        est.threshold_ = float("-inf") if thr is None else float(thr)
    return est


# --------------------------------------------------------------------------- validation protocol
def stratified_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint, class-stratified halves of ``range(len(labels))`` (seeded)."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    a, b = [], []
    flip = 0
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        h = len(idx) // 2 + (flip if len(idx) % 2 else 0)
        flip ^= len(idx) % 2
        a.extend(idx[:h])
        b.extend(idx[h:])
    return np.sort(np.asarray(a, int)), np.sort(np.asarray(b, int))


def _probs(logits: np.ndarray, t: float) -> np.ndarray:
    return softmax(np.asarray(logits, np.float64) / t, axis=1)


def crossfit_errors(
    clean_logits: np.ndarray,
    shifted_logits: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    methods: Sequence[str] = tuple(ESTIMATORS),
    n_splits: int = 10,
    seed: int = 0,
    fit_temperature: bool = True,
) -> dict[str, Any]:
    """Estimator error on held-out clips under shifts, fitted and scored on disjoint halves.

    For each of ``n_splits`` seeded, class-stratified splits of the held-out clips into halves A
    and B, and both ways round: the temperature (when ``fit_temperature``) and every estimator are
    fitted on the CLEAN logits of A only; each estimator then estimates the accuracy of the
    SHIFTED logits of B, whose true accuracy is known. ``shifted_logits[name]`` are the same clips
    (same order as ``labels``) under shift ``name``. Returns per shift and method the mean error
    (estimate - true, i.e. the bias), its standard deviation over splits, the mean absolute error,
    and the mean true accuracy of the halves.
    """
    from tympan.stats.temperature import TemperatureScaler

    y = np.asarray(labels)
    clean = np.asarray(clean_logits, np.float64)
    if len(clean) != len(y):
        raise ValueError("clean_logits and labels differ in length")
    errs: dict[str, dict[str, list[float]]] = {s: {m: [] for m in methods} for s in shifted_logits}
    truth: dict[str, list[float]] = {s: [] for s in shifted_logits}
    for r in range(n_splits):
        a, b = stratified_halves(y, seed + r)
        for fit_idx, ev_idx in ((a, b), (b, a)):
            t = float(TemperatureScaler().fit(clean[fit_idx], y[fit_idx]).temperature_) if fit_temperature else 1.0
            p_fit = _probs(clean[fit_idx], t)
            ests = {m: make_estimator(m).fit(p_fit, y[fit_idx]) for m in methods}
            for s, z in shifted_logits.items():
                z = np.asarray(z, np.float64)
                if len(z) != len(y):
                    raise ValueError(f"shifted logits {s!r} differ in length from labels")
                p_ev = _probs(z[ev_idx], t)
                true = float(np.mean(p_ev.argmax(axis=1) == y[ev_idx]))
                truth[s].append(true)
                for m, est in ests.items():
                    errs[s][m].append(est.point(p_ev) - true)
    out: dict[str, Any] = {}
    for s in shifted_logits:
        out[s] = {"true_accuracy": float(np.mean(truth[s])), "n_evaluations": len(truth[s]),
                  "methods": {m: {"bias": float(np.mean(e)), "std": float(np.std(e)),
                                  "mae": float(np.mean(np.abs(e)))} for m, e in errs[s].items()}}
    return out
