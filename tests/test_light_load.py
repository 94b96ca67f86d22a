"""Loading a bundle and predicting a clip stays light (issue #22 item 1): no scikit-learn, no
SciPy stats, no pandas, no torch._dynamo imported; the NumPy scorers the prediction path reads
from a bundle give the same numbers as the scikit-learn estimators fitted by ``calibrate``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tympan.bundle import default_bundle_dir, load_bundle
from tympan.inference.prediction import TrustParams
from tympan.stats.background import BackgroundDetector
from tympan.stats.ood import CombinedOOD, EnergyOOD, ProbeOOD
from tympan.stats.scorers import CombinedScorer, energy_score, logsumexp, softmax

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("sklearn", "scipy.stats", "scipy.special", "pandas", "pyarrow", "torch._dynamo")


def test_predicting_one_clip_imports_no_heavy_module(tmp_path: Path) -> None:
    """A fresh process: load the shipped bundle, predict one written WAV, list what got imported."""
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np, soundfile as sf
        sf.write({str(tmp_path / 'one.wav')!r}, (np.random.default_rng(0).standard_normal(16000) * 0.05).astype(np.float32), 16000)
        from tympan.bundle import default_bundle_dir
        from tympan.inference import Predictor
        import tympan.batch.cli, tympan.serving.app
        out = Predictor(default_bundle_dir(), backend="eager").predict({str(tmp_path / 'one.wav')!r})
        print(json.dumps({{"top": out["top_k"][0]["label"],
                          "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
    """)
    env = {"PYTHONPATH": str(REPO), "TYMPAN_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads(run.stdout.strip().splitlines()[-1])
    assert doc["top"]
    assert doc["loaded"] == [], f"the prediction path imported {doc['loaded']}"


def test_scorers_match_the_sklearn_estimators_on_the_shipped_bundle() -> None:
    bundle = load_bundle(default_bundle_dir())
    params = TrustParams.from_bundle(bundle)
    rng = np.random.default_rng(1)
    dim = int(bundle.ood["embedding"]["dim"])
    emb = rng.standard_normal((64, dim)) * 0.5
    z = rng.standard_normal((64, len(bundle.classes))) * 4
    e = energy_score(z, params.ood_temperature)
    np.testing.assert_allclose(e, EnergyOOD.score(z, params.ood_temperature), atol=1e-9)
    block = bundle.ood["embedding"]
    if block["score"] == "probe":
        est = ProbeOOD.from_dict(block)
        ref = est.decision_function(emb)
    else:
        est = CombinedOOD.from_dict(block, bundle.arrays["ood_bank"])
        ref = est.decision_function(emb, z)
    np.testing.assert_allclose(params.embedding_ood.window_scores(e, emb), ref, atol=1e-6)
    assert params.embedding_ood.threshold_ == est.threshold_
    if params.background is not None:
        det = BackgroundDetector.from_dict(bundle.background)
        feats = np.hstack([emb, rng.uniform(-90, 0, (64, 3))])
        np.testing.assert_allclose(params.background.decision_function(feats), det.decision_function(feats), atol=1e-6)
        assert params.background.threshold_ == det.threshold_


def test_combined_scorer_matches_combined_ood() -> None:
    rng = np.random.default_rng(2)
    bank, held, z = rng.standard_normal((200, 16)), rng.standard_normal((40, 16)), rng.standard_normal((40, 5))
    est = CombinedOOD(k=5).fit(bank, held, z)
    scorer = CombinedScorer.from_dict(est.to_dict(), est.bank)
    x, zx = rng.standard_normal((30, 16)), rng.standard_normal((30, 5))
    np.testing.assert_allclose(scorer.window_scores(energy_score(zx), x), est.decision_function(x, zx), atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_numpy_softmax_and_logsumexp_equal_scipy(scale: float) -> None:
    from scipy import special

    z = np.random.default_rng(3).standard_normal((20, 50)) * scale
    np.testing.assert_allclose(softmax(z), special.softmax(z, axis=1), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(logsumexp(z), special.logsumexp(z, axis=1), rtol=1e-12)
