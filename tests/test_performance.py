"""Label-free accuracy estimators (tympan.stats.performance) against reference computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from tympan.stats.performance import (
    ATCEstimator,
    DoCEstimator,
    MeanConfidenceEstimator,
    atc_threshold,
    confidence_scores,
    crossfit_errors,
    estimator_from_dict,
    make_estimator,
    stratified_halves,
    wilson_interval,
)


def _reference_find_atc_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """``find_ATC_threshold`` of github.com/saurabhgarg1996/ATC_code (labels = 1 correct, 0 wrong), verbatim logic."""
    sorted_idx = np.argsort(scores, kind="stable")
    sorted_scores = scores[sorted_idx]
    sorted_labels = labels[sorted_idx]
    fp = np.sum(labels == 0)
    fn = 0.0
    min_fp_fn = np.abs(fp - fn)
    thres = 0.0
    for i in range(len(labels)):
        if sorted_labels[i] == 0:
            fp -= 1
        else:
            fn += 1
        if np.abs(fp - fn) < min_fp_fn:
            min_fp_fn = np.abs(fp - fn)
            thres = sorted_scores[i]
    return thres


def _fixed(seed: int = 3, n: int = 300, k: int = 10, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += scale * rng.random(n)  # correct for most, confident for some
    return softmax(z, axis=1), y


@pytest.mark.parametrize("score", ["max_confidence", "negative_entropy"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_atc_threshold_matches_reference_implementation(score: str, seed: int) -> None:
    p, y = _fixed(seed)
    s = confidence_scores(p, score)
    correct = (p.argmax(1) == y).astype(int)
    assert atc_threshold(s, correct.astype(bool)) == pytest.approx(_reference_find_atc_threshold(s, correct))
    est = ATCEstimator(score).fit(p, y)
    # the defining property: the share above the threshold matches the accuracy (up to ties, 1 clip)
    assert abs(np.mean(s >= est.threshold_) - correct.mean()) <= 1.5 / len(y)
    # field estimate = share of field scores at or above the threshold (Garg et al.'s get_ATC_acc)
    q, _ = _fixed(seed + 10, scale=1.0)
    assert est.point(q) == pytest.approx(np.mean(confidence_scores(q, score) >= est.threshold_))


def test_scores_reference() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    assert confidence_scores(p, "max_confidence") == pytest.approx([0.7, 0.5])
    ne = [0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1), 2 * 0.5 * np.log(0.5)]
    assert confidence_scores(p, "negative_entropy") == pytest.approx(ne)
    with pytest.raises(ValueError):
        confidence_scores(p, "margin")


def test_mean_confidence_and_doc_reference() -> None:
    p, y = _fixed(4)
    q, _ = _fixed(5, scale=1.5)
    mc = MeanConfidenceEstimator().fit(p, y)
    assert mc.point(q) == pytest.approx(np.mean(q.max(1)))
    doc = DoCEstimator().fit(p, y)
    acc = np.mean(p.argmax(1) == y)
    assert doc.point(q) == pytest.approx(acc - (np.mean(p.max(1)) - np.mean(q.max(1))))
    assert doc.point(p) == pytest.approx(acc)  # no shift: the held-out accuracy itself


def test_wilson_interval_reference() -> None:
    # textbook values (Newcombe 1998, table I: 81/263 -> 0.2553-0.3662)
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-4) and hi == pytest.approx(0.3662, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_interval_adds_systematic_error_and_round_trips() -> None:
    p, y = _fixed(6)
    q, _ = _fixed(7, scale=1.0)
    for m in ("atc_ne", "atc_mc", "mean_confidence", "doc"):
        est = make_estimator(m, systematic=0.02).fit(p, y)
        e = est.estimate(q)
        lo, hi = e.sampling
        assert e.low == pytest.approx(max(0.0, lo - 0.02)) and e.high == pytest.approx(min(1.0, hi + 0.02))
        assert e.low <= e.value <= e.high and e.method == m and e.n == len(q)
        back = estimator_from_dict(est.to_dict())
        assert back.point(q) == pytest.approx(est.point(q)) and back.systematic == 0.02


def test_stratified_halves_are_disjoint_and_balanced() -> None:
    y = np.repeat(np.arange(5), 8)
    a, b = stratified_halves(y, 0)
    assert set(a).isdisjoint(b) and len(a) + len(b) == len(y)
    assert (np.bincount(y[a]) == 4).all()


def test_crossfit_never_fits_on_the_shifted_half() -> None:
    """An estimator fitted on the shifted clips would be exact on them; cross-fitting must not be."""
    p, y = _fixed(8, n=400)
    z = np.log(p)
    rng = np.random.default_rng(0)
    shifted = z + rng.normal(scale=2.0, size=z.shape)  # a shift that costs accuracy
    res = crossfit_errors(z, {"clean": z, "noisy": shifted}, y, n_splits=3)
    assert res["noisy"]["true_accuracy"] < res["clean"]["true_accuracy"] - 0.05
    for m, r in res["clean"]["methods"].items():
        assert abs(r["bias"]) < 0.05, m  # other half of the same distribution: small error
    assert res["noisy"]["n_evaluations"] == 6
