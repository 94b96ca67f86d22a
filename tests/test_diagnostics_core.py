"""Diagnostics arithmetic checked against scikit-learn, SciPy and torchmetrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import ks_2samp
from sklearn.exceptions import NotFittedError
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.metrics.pairwise import rbf_kernel

from tympan.diagnostics import (
    DRIFT,
    FEATURE_NAMES,
    INSUFFICIENT,
    NEGLIGIBLE,
    NO_DRIFT,
    EmbeddingDriftDetector,
    EnergyOOD,
    FeatureDriftDetector,
    MaxSoftmaxOOD,
    TemperatureScaler,
    acoustic_feature_matrix,
    acoustic_features,
    adaptive_calibration_error,
    brier_score,
    calibration_metrics,
    confidence_shift,
    confusion_report,
    cross_fit_temperature,
    expected_calibration_error,
    fpr_at_tpr,
    label_shift,
    maximum_calibration_error,
    mmd2_unbiased,
    negative_log_likelihood,
    ood_metrics,
    ood_rate_shift,
    overall_verdict,
    reliability_curve,
)
from tympan.contracts.diagnostics import Confusion, Reliability, ReliabilityBins  # noqa: E402
from tympan.figures import confusion_heatmap, reliability_diagram  # noqa: E402

K = 10


def strict_json(obj: object) -> str:
    """Serialise as strict JSON (no NaN/inf, no numpy types)."""
    return json.dumps(obj, allow_nan=False)


@pytest.fixture(scope="module")
def calibrated() -> tuple[np.ndarray, np.ndarray]:
    """Logits of a perfectly calibrated model: labels are drawn from softmax(logits)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=2.0, size=(3000, K))
    probs = softmax(logits, axis=1)
    cum = probs.cumsum(axis=1)
    labels = (rng.random((len(probs), 1)) > cum).sum(axis=1).clip(max=K - 1)
    return logits, labels


# --------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("scale", [1.0, 5.0])
@pytest.mark.parametrize("norm", ["l1", "max"])
def test_ece_mce_match_torchmetrics(calibrated, scale, norm):
    tm = pytest.importorskip("torchmetrics.classification")  # dev extra, not a runtime dependency
    logits, labels = calibrated
    probs = softmax(logits * scale, axis=1)
    ours = (expected_calibration_error if norm == "l1" else maximum_calibration_error)(probs, labels, 15)
    metric = tm.MulticlassCalibrationError(num_classes=K, n_bins=15, norm=norm)
    ref = metric(torch.tensor(probs), torch.tensor(labels)).item()
    assert ours == pytest.approx(ref, abs=1e-6)


def test_adaptive_ece_hand_computed():
    # two equal-mass bins: {0.6, 0.7} with 1 correct, {0.8, 0.9} with 2 correct
    conf = np.array([0.6, 0.7, 0.8, 0.9])
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.array([0, 1, 0, 0])
    expected = 0.5 * abs(0.5 - 0.65) + 0.5 * abs(1.0 - 0.85)
    assert adaptive_calibration_error(probs, labels, n_bins=2) == pytest.approx(expected)


def test_brier_nll_against_direct_formulas(calibrated):
    logits, labels = calibrated
    probs = softmax(logits, axis=1)
    onehot = np.eye(K)[labels]
    assert brier_score(probs, labels) == pytest.approx(np.mean(np.sum((probs - onehot) ** 2, axis=1)))
    assert negative_log_likelihood(probs, labels) == pytest.approx(log_loss(labels, probs))
    ce = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels)).item()
    assert negative_log_likelihood(probs, labels) == pytest.approx(ce, rel=1e-9)


def test_reliability_curve_and_figure(calibrated):
    logits, labels = calibrated
    before, after = softmax(logits * 5, axis=1), softmax(logits, axis=1)
    curve = reliability_curve(before, labels, n_bins=15)
    assert curve.count.sum() == len(labels)
    assert strict_json(curve.to_dict())
    assert curve.accuracy[-1] < curve.confidence[-1]  # over-confident at the top
    rel = Reliability(**{key: ReliabilityBins(**reliability_curve(p, labels, n_bins=15).to_dict(),
                                              ece=expected_calibration_error(p, labels, 15))
                         for key, p in (("before", before), ("after", after))})
    fig = reliability_diagram(rel)  # tympan.figures: drawn from the stored numbers
    names = [t.name for t in fig.data]
    assert "perfect calibration" in names and sum("ECE" in n for n in names) == 2
    metrics = calibration_metrics(after, labels)
    assert strict_json(metrics) and metrics["ece"] < 0.05


def test_probability_validation_rejects_logits(calibrated):
    logits, labels = calibrated
    with pytest.raises(ValueError):
        expected_calibration_error(logits, labels)


# --------------------------------------------------------------------------- temperature
def test_temperature_recovers_overconfidence(calibrated):
    logits, labels = calibrated
    over = logits * 5
    scaler = TemperatureScaler().fit(over, labels)
    assert scaler.temperature_ == pytest.approx(5.0, rel=0.1)
    assert scaler.nll_after_ < scaler.nll_before_
    probs = scaler.predict_proba(over)
    assert negative_log_likelihood(probs, labels) < log_loss(labels, softmax(over, axis=1))
    np.testing.assert_allclose(probs, softmax(scaler.transform(over), axis=1))
    assert (probs.argmax(1) == over.argmax(1)).all()  # accuracy unchanged
    clone = TemperatureScaler.from_dict(json.loads(strict_json(scaler.to_dict())))
    np.testing.assert_allclose(clone.predict_proba(over), probs)


def test_unfitted_use_raises_not_fitted():
    z = np.zeros((3, K))
    for call in (
        lambda: TemperatureScaler().predict_proba(z),
        lambda: TemperatureScaler().transform(z),
        lambda: EnergyOOD().predict(z),
        lambda: MaxSoftmaxOOD().predict(z),
        lambda: FeatureDriftDetector().test(z),
        lambda: EmbeddingDriftDetector().test(z),
    ):
        with pytest.raises(NotFittedError):
            call()


def test_cross_fit_temperature_held_out(calibrated):
    logits, labels = calibrated
    groups = np.arange(len(labels)) % 5 + 1
    res = cross_fit_temperature(logits * 5, labels, groups)
    assert res.groups == [1, 2, 3, 4, 5]
    assert all(t == pytest.approx(5.0, rel=0.15) for t in res.temperatures)
    np.testing.assert_allclose(res.probabilities.sum(axis=1), 1.0)
    # row i must be calibrated by the T fitted without its group
    first = groups == 1
    t1 = TemperatureScaler().fit(logits[~first] * 5, labels[~first])
    np.testing.assert_allclose(res.probabilities[first], t1.predict_proba(logits[first] * 5))
    assert res.metrics_after["ece"] < res.metrics_before["ece"]
    assert res.metrics_after["nll"] < res.metrics_before["nll"]
    assert strict_json(res.to_dict())


# --------------------------------------------------------------------------- OOD
def test_energy_score_formula_and_threshold(calibrated):
    logits, _ = calibrated
    t = 2.0
    expected = -t * torch.logsumexp(torch.tensor(logits) / t, dim=1).numpy()
    np.testing.assert_allclose(EnergyOOD.score(logits, t), expected)
    det = EnergyOOD(temperature=1.0, tpr=0.95).fit(logits)
    kept = np.mean(~det.predict(logits))
    assert 0.95 <= kept <= 0.951
    np.testing.assert_allclose(det.decision_function(logits), -logsumexp(logits, axis=1))
    # fresh in-distribution clips: acceptance close to 95 %
    fresh = np.random.default_rng(1).normal(scale=2.0, size=(5000, K))
    assert np.mean(~det.predict(fresh)) == pytest.approx(0.95, abs=0.015)
    clone = EnergyOOD.from_dict(json.loads(strict_json(det.to_dict())))
    assert clone.threshold_ == det.threshold_
    np.testing.assert_allclose(MaxSoftmaxOOD.score(logits), -softmax(logits, axis=1).max(axis=1))


def test_ood_metrics_against_sklearn():
    rng = np.random.default_rng(3)
    s_in, s_out = rng.normal(0, 1, 400), rng.normal(1.5, 1, 300)
    m = ood_metrics(s_in, s_out)
    y = np.r_[np.zeros(400), np.ones(300)]
    s = np.r_[s_in, s_out]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert m["aupr_out"] == pytest.approx(average_precision_score(y, s))
    assert m["aupr_in"] == pytest.approx(average_precision_score(1 - y, -s))
    thr = np.sort(s_in)[int(np.ceil(0.95 * 400)) - 1]  # smallest t accepting 95 % of s_in
    assert m["fpr_at_95_tpr"] == pytest.approx(np.mean(s_out <= thr))
    assert m["positive"] == "out-of-distribution" and m["n_in"] == 400 and m["n_out"] == 300
    assert strict_json(m)


def test_ood_metrics_separable_and_orientation():
    m = ood_metrics(np.linspace(-3, -1, 50), np.linspace(1, 3, 40))
    assert m["auroc"] == 1.0 and m["aupr_out"] == 1.0 and m["aupr_in"] == 1.0
    assert m["fpr_at_95_tpr"] == 0.0
    flipped = ood_metrics(np.linspace(1, 3, 50), np.linspace(-3, -1, 40))
    assert flipped["auroc"] == 0.0 and fpr_at_tpr(np.linspace(1, 3, 50), np.linspace(-3, -1, 40)) == 1.0


# --------------------------------------------------------------------------- confusion
def test_confusion_report_matches_sklearn():
    names = ["dog", "rain", "fire", "cat"]
    y = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3])
    p = np.array([0, 3, 2, 2, 1, 1, 2, 2, 0, 3])
    ids = [f"clip{i}" for i in range(len(y))]
    rep = confusion_report(y, p, class_names=names, clip_ids=ids)
    np.testing.assert_array_equal(rep.matrix, confusion_matrix(y, p, labels=range(4)))
    prec, rec, f1, sup = precision_recall_fscore_support(y, p, labels=range(4), zero_division=0)
    assert [c["f1"] for c in rep.per_class] == pytest.approx(f1)
    assert [c["support"] for c in rep.per_class] == list(sup)
    top = rep.confused_pairs[0]
    assert (top.class_a, top.class_b, top.a_as_b, top.b_as_a, top.total) == ("rain", "fire", 2, 1, 3)
    assert top.clip_ids_a_as_b == ["clip2", "clip3"] and top.clip_ids_b_as_a == ["clip5"]
    assert {(c.class_a, c.class_b) for c in rep.confused_pairs[1:]} == {("dog", "cat")}
    assert rep.confused_pairs[1].total == 2
    assert strict_json(rep.to_dict())
    logits = np.eye(4)[p] * 3.0
    assert confusion_report(y, logits=logits, class_names=names).accuracy == rep.accuracy
    assert confusion_heatmap(Confusion.model_validate(rep.to_dict())).data[0].z.shape == (4, 4)


# --------------------------------------------------------------------------- drift
def _ref(n: int = 2000, d: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def test_feature_drift_flags_one_std_shift():
    det = FeatureDriftDetector().fit(_ref(), feature_names=[f"f{i}" for i in range(5)])
    field = np.random.default_rng(1).normal(size=(200, 5))
    field[:, 2] += 1.0
    rep = det.test(field)
    assert rep.verdict == DRIFT and rep.drifted == ["f2"]
    f2 = rep.features[2]
    assert f2.wasserstein_std > 0.7 and f2.psi > 0.25 and f2.mean_shift_std > 0.7
    # statistics are the SciPy ones on the stored reference
    ks = ks_2samp(det.reference_[:, 2].astype(float), field[:, 2].astype(np.float32).astype(float))
    assert f2.p_value == pytest.approx(ks.pvalue) and f2.ks_statistic == pytest.approx(ks.statistic)
    assert strict_json(rep.to_dict())


def test_feature_drift_false_alarm_rate():
    det = FeatureDriftDetector().fit(_ref())
    rng = np.random.default_rng(123)
    alarms = sum(det.test(rng.normal(size=(200, 5))).verdict == DRIFT for _ in range(50))
    assert alarms / 50 <= 0.10


def test_feature_drift_ignores_tiny_effect_at_large_n():
    det = FeatureDriftDetector().fit(_ref(seed=5))
    rep = det.test(np.random.default_rng(6).normal(size=(20000, 5)) + 0.02)
    assert rep.verdict != DRIFT
    assert all(f.wasserstein_std < 0.1 for f in rep.features)
    # the effect-size gate itself: with a huge reference a 0.05-std shift is
    # significant for KS but below the practical size -> "negligible", not drift
    big = FeatureDriftDetector(max_reference_samples=50000).fit(_ref(n=50000, d=2, seed=7))
    rep = big.test(np.random.default_rng(8).normal(size=(50000, 2)) + 0.05)
    assert all(f.p_value_bh < 0.05 for f in rep.features)
    assert {f.verdict for f in rep.features} == {NEGLIGIBLE} and rep.verdict == NO_DRIFT


def test_feature_drift_insufficient_data_and_constant_features():
    x = np.c_[_ref(n=500, d=1), np.full(500, 44100.0)]
    det = FeatureDriftDetector().fit(x, feature_names=["level", "source_sr"])
    assert det.test(x[:10]).verdict == INSUFFICIENT
    same = det.test(x[:100])
    assert same.verdict == NO_DRIFT
    other = x[:100].copy()
    other[:, 1] = 16000.0
    rep = det.test(other)
    assert rep.drifted == ["source_sr"]
    assert strict_json(rep.to_dict())


def test_feature_drift_json_round_trip():
    det = FeatureDriftDetector(max_reference_samples=300).fit(_ref(n=1000))
    state = json.loads(strict_json(det.to_dict()))
    clone = FeatureDriftDetector.from_dict(state)
    assert clone.get_params() == det.get_params()
    np.testing.assert_array_equal(clone.reference_, det.reference_)
    assert clone.reference_.shape == (300, 5)
    field = np.random.default_rng(9).normal(size=(150, 5)) + 0.3
    assert clone.test(field).to_dict() == det.test(field).to_dict()


def test_mmd_matches_naive_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 0.5
    gamma = 0.2
    res = mmd2_unbiased(x, y, n_permutations=50, gamma=gamma)
    kxx, kyy = rbf_kernel(x, x, gamma=gamma), rbf_kernel(y, y, gamma=gamma)
    kxy = rbf_kernel(x, y, gamma=gamma)
    n, m = len(x), len(y)
    naive = (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )
    assert res["mmd2"] == pytest.approx(naive)


def test_embedding_drift_detects_shift_only():
    rng = np.random.default_rng(0)
    det = EmbeddingDriftDetector(n_permutations=200).fit(rng.normal(size=(800, 32)))
    same = det.test(rng.normal(size=(200, 32)))
    shifted = det.test(rng.normal(size=(200, 32)) + 0.3)
    assert same.verdict == NO_DRIFT and same.p_value > 0.05
    assert shifted.verdict == DRIFT and shifted.p_value < 0.01
    assert det.test(rng.normal(size=(5, 32))).verdict == INSUFFICIENT
    clone = EmbeddingDriftDetector.from_dict(json.loads(strict_json(det.to_dict())))
    np.testing.assert_array_equal(clone.reference_, det.reference_)
    probe = rng.normal(size=(100, 32))
    assert clone.test(probe).to_dict() == det.test(probe).to_dict()
    assert strict_json(shifted.to_dict())


def test_label_ood_confidence_and_overall():
    ref = np.full(50, 40)
    even = label_shift(ref, np.random.default_rng(0).multinomial(400, np.full(50, 0.02)))
    skew = label_shift(ref, np.r_[np.full(10, 30), np.full(40, 2)])
    assert even["verdict"] == NO_DRIFT and skew["verdict"] == DRIFT and skew["tvd"] > 0.5
    assert label_shift(ref, np.r_[np.ones(5), np.zeros(45)])["verdict"] == INSUFFICIENT
    assert ood_rate_shift(30, 200)["verdict"] == DRIFT
    assert ood_rate_shift(11, 200)["verdict"] == NO_DRIFT
    rng = np.random.default_rng(1)
    conf = confidence_shift(rng.uniform(0.5, 1, 500), rng.uniform(0.3, 0.9, 300))
    assert conf["verdict"] == DRIFT and conf["mean_shift_std"] < 0
    total = overall_verdict({"labels": skew, "ood_rate": ood_rate_shift(11, 200), "confidence": conf})
    assert total["verdict"] == DRIFT and set(total["drifting_checks"]) == {"labels", "confidence"}
    assert overall_verdict({"a": ood_rate_shift(1, 5)})["verdict"] == INSUFFICIENT
    assert strict_json([even, skew, conf, total])


# --------------------------------------------------------------------------- acoustic
SR = 22050


def test_acoustic_sine_silence_clipping():
    t = np.arange(SR) / SR
    sine = acoustic_features(0.5 * np.sin(2 * np.pi * 1000 * t), SR, source_sr=44100, duration=5.0)
    assert list(sine) == list(FEATURE_NAMES)
    assert sine["spectral_centroid_mean"] == pytest.approx(1000, rel=0.03)
    assert sine["rms_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.05)
    assert sine["loudness_a_dbfs"] == pytest.approx(sine["rms_dbfs"], abs=0.1)  # A(1 kHz) = 0 dB
    assert sine["silence_ratio"] == 0.0 and sine["clipping_rate"] == 0.0
    assert sine["source_sr"] == 44100.0 and sine["duration_s"] == 5.0
    silence = acoustic_features(np.zeros(SR), SR)
    assert silence["silence_ratio"] == 1.0 and silence["duration_s"] == 1.0
    square = np.clip(2.0 * np.sign(np.sin(2 * np.pi * 200 * t)), -1, 1)
    assert acoustic_features(square, SR)["clipping_rate"] > 0
    mat, names = acoustic_feature_matrix([np.zeros(SR), square], SR, durations=[5.0, None])
    assert mat.shape == (2, len(FEATURE_NAMES)) and names == list(FEATURE_NAMES)
    assert np.isfinite(mat).all() and mat[0, names.index("duration_s")] == 5.0
    assert strict_json(sine)
