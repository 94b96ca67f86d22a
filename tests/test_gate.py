"""The diagnose gate: "the audio differs" is reported, "the model is affected" fails (generated data).

A generated world at the level of what the model outputs: a 5-class "model" whose logits are
class means plus noise; held-out clips fit temperature, OOD threshold, accuracy estimator and
drift reference exactly as ``tympan calibrate`` does (``build_reference``, ``fit_performance``).
A gain shift changes the level features but not what the model sees; a noise shift lowers the
logits' signal (accuracy drops) and moves the embeddings.
"""

from __future__ import annotations

import numpy as np
import pytest

from tympan.diagnostics.field import (
    ClipSet,
    drift_checks,
    exit_code_for,
)
from tympan.stats.acoustic import FEATURE_NAMES

K = 5
CLASSES = [f"c{i}" for i in range(K)]
MEANS = np.eye(K) * 4.0


def _logits(rng: np.random.Generator, y: np.ndarray, signal: float, drowned: float = 0.0) -> np.ndarray:
    """Class means plus noise; a share ``drowned`` of the clips carries no class signal (noise covers them)."""
    z = signal * MEANS[y] + rng.normal(scale=1.6, size=(len(y), K))
    if drowned:
        m = rng.random(len(y)) < drowned
        z[m] = 0.8 * rng.normal(size=(int(m.sum()), K))
    return z.astype(np.float32)


def _acoustic(rng: np.random.Generator, n: int, *, level_db: float = 0.0, flat: float = 0.0) -> np.ndarray:
    a = rng.normal(size=(n, len(FEATURE_NAMES)))
    a[:, FEATURE_NAMES.index("rms_dbfs")] = -25.0 + level_db + 3 * rng.normal(size=n)
    if "spectral_flatness_mean" in FEATURE_NAMES:
        a[:, FEATURE_NAMES.index("spectral_flatness_mean")] += flat
    return a


def _clipset(rng: np.random.Generator, y: np.ndarray, t: float, *, signal: float = 1.0, level_db: float = 0.0,
             flat: float = 0.0, emb_shift: float = 0.0, drowned: float = 0.0) -> ClipSet:
    from scipy.special import softmax

    from tympan.stats.ood import EnergyOOD

    z = _logits(rng, y, signal, drowned)
    n = len(y)
    emb = rng.normal(size=(n, 8)).astype(np.float32) + emb_shift
    fmt = [{"sample_rate": 16000, "channels": 1, "duration_s": 5.0, "format": "WAV", "subtype": "PCM_16"}] * n
    return ClipSet([f"{i}.wav" for i in range(n)], _acoustic(rng, n, level_db=level_db, flat=flat), emb, z,
                   softmax(z / t, axis=1), EnergyOOD.score(z), np.ones(n, np.int64), fmt)


@pytest.fixture(scope="module")
def world() -> dict:
    from scipy.special import softmax

    from tympan.diagnostics.calibrate import fit_performance
    from tympan.diagnostics.reference import build_reference
    from tympan.stats.ood import EnergyOOD
    from tympan.stats.temperature import TemperatureScaler

    rng = np.random.default_rng(0)
    y_ho = np.repeat(np.arange(K), 80)  # 400 held-out clips
    z_ho = _logits(rng, y_ho, 1.0)
    t = float(TemperatureScaler().fit(z_ho, y_ho).temperature_)
    det = EnergyOOD(temperature=1.0, tpr=0.95).fit(z_ho)
    train = _clipset(rng, np.repeat(np.arange(K), 160), t)
    ref = build_reference(train, heldout_probs=softmax(z_ho / t, axis=1), heldout_energy=det.decision_function(z_ho),
                          detector=det, classes=CLASSES, fitted_on="generated training clips",
                          heldout_on="generated held-out clips")
    ood = {"score": "energy", "temperature": 1.0, "threshold": float(det.threshold_), "tpr": 0.95}
    # validation shifts of the held-out clips: 30% of them drowned in noise, and unchanged
    shifted = {"noisy": _logits(np.random.default_rng(1), y_ho, 1.0, drowned=0.3),
               "same": _logits(np.random.default_rng(2), y_ho, 1.0)}
    perf = fit_performance(z_ho, y_ho, t, heldout_on="generated held-out clips", shifted_logits=shifted)
    return {"t": t, "ref": ref, "ood": ood, "perf": perf, "y_ho": y_ho}


def _run(world: dict, cs: ClipSet, fail_on: str = "model") -> tuple[dict, int]:
    res = drift_checks(world["ref"], world["ood"], CLASSES, cs, performance=world["perf"])
    return res, exit_code_for(res, fail_on)


def test_gain_only_shift_is_reported_but_passes(world: dict) -> None:
    y = np.repeat(np.arange(K), 60)
    cs = _clipset(np.random.default_rng(10), y, world["t"], level_db=-20.0)
    res, code = _run(world, cs)
    assert res["checks"]["acoustic"]["verdict"] == "drift" and "rms_dbfs" in res["checks"]["acoustic"]["drifted_features"]
    assert res["gate"]["audio_differs"] and not res["gate"]["model_affected"]
    assert code == 0
    assert exit_code_for(res, "audio") == 1 and exit_code_for(res, "any") == 1  # still available on request
    assert "not measurably affected" in res["gate"]["summary"]
    assert res["gate"]["summary"].startswith(f"On these {len(y)} recordings the model is probably about")


def test_noise_shift_fails_and_estimate_lands_in_its_interval(world: dict) -> None:
    y = np.repeat(np.arange(K), 100)
    cs = _clipset(np.random.default_rng(11), y, world["t"], drowned=0.3, flat=2.0, emb_shift=0.5)
    res, code = _run(world, cs)
    perf = res["checks"]["performance"]
    true = float(np.mean(cs.predictions == y))
    ea = perf["estimated_accuracy"]
    assert ea["low"] <= true <= ea["high"], (true, ea)
    assert perf["heldout_accuracy"] - true > 0.1
    assert ea["high"] < perf["heldout_accuracy"] - perf["margin"]  # the whole interval is below by more than the margin
    assert perf["verdict"] == "drift" and "performance" in res["gate"]["model_failing"]
    assert code == 1 and res["gate"]["model_affected"]
    assert "points below its held-out accuracy" in res["gate"]["summary"]
    assert exit_code_for(res, "never") == 0


def test_clean_sample_passes_every_gate(world: dict) -> None:
    y = np.repeat(np.arange(K), 60)
    cs = _clipset(np.random.default_rng(12), y, world["t"])
    res, code = _run(world, cs)
    assert code == 0 and exit_code_for(res, "any") == 0, res["overall"]
    assert "look like the training audio" in res["gate"]["summary"]


def test_stale_estimator_never_votes_and_embedding_stands_in(world: dict) -> None:
    y = np.repeat(np.arange(K), 60)
    cs = _clipset(np.random.default_rng(11), y, world["t"], signal=0.55, emb_shift=0.5)
    stale = {**world["perf"], "stale": True, "stale_reason": "fitted before tympan adapt"}
    res = drift_checks(world["ref"], world["ood"], CLASSES, cs, performance=stale)
    assert res["checks"]["performance"]["stale"] and res["checks"]["performance"]["verdict"] != "drift"
    assert "embedding" in res["gate"]["model_checks"]  # no trustworthy estimate: embedding drift votes
    assert exit_code_for(res, "model") == (1 if res["checks"]["embedding"]["verdict"] == "drift" else 0)
    assert "cannot be estimated reliably" in res["gate"]["summary"]


def test_large_embedding_shift_fails_even_when_confidence_hides_it(world: dict) -> None:
    """A model that stays confident on audio it gets wrong fools the estimate; a large embedding
    shift still says the model is affected, a small one (drift, but below the bar) does not."""
    from tympan.diagnostics.field import LARGE_EMBEDDING_MMD2

    y = np.repeat(np.arange(K), 60)
    big = _clipset(np.random.default_rng(13), y, world["t"], emb_shift=0.5)  # logits unchanged: estimate sees nothing
    res, code = _run(world, big)
    assert res["checks"]["performance"]["verdict"] != "drift"
    assert res["checks"]["embedding"]["mmd2"] >= LARGE_EMBEDDING_MMD2
    assert code == 1 and res["gate"]["large_embedding_shift"] and res["gate"]["model_failing"] == ["embedding"]
    assert "The model is affected (embedding)" in res["gate"]["summary"]
    small = _clipset(np.random.default_rng(13), y, world["t"], emb_shift=0.1)
    res, code = _run(world, small)
    assert res["checks"]["embedding"]["verdict"] == "drift" and res["checks"]["embedding"]["mmd2"] < LARGE_EMBEDDING_MMD2
    assert code == 0 and not res["gate"]["large_embedding_shift"] and res["gate"]["supporting_evidence"] == ["embedding"]


def test_ood_excess_fails_the_model_gate(world: dict) -> None:
    res = {"checks": {"acoustic": {"verdict": "no drift"}, "ood_rate": {"verdict": "drift"},
                      "background_rate": {"verdict": "no drift"}}}
    assert exit_code_for(res, "model") == 1 and exit_code_for(res, "audio") == 0
    res["checks"]["ood_rate"]["verdict"] = "no drift"
    res["checks"]["background_rate"]["verdict"] = "drift"  # another engineer's check: counted generically
    assert exit_code_for(res, "model") == 1
    with pytest.raises(ValueError):
        exit_code_for(res, "sometimes")
