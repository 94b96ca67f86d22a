"""The field-trust scores against reference computations, and fitted on held-out data only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sklearn.neighbors import NearestNeighbors

from tympan.stats.background import BackgroundDetector, level_features
from tympan.stats.ood import CombinedOOD, EnergyOOD, KNNOOD, MahalanobisOOD

RNG = np.random.default_rng(0)
BANK = RNG.normal(size=(300, 16))
QUERY = RNG.normal(size=(40, 16))


def test_knn_equals_scikit_learns_cosine_neighbours() -> None:
    knn = KNNOOD(k=7).fit(BANK)
    dist, _ = NearestNeighbors(n_neighbors=7, metric="cosine").fit(BANK).kneighbors(QUERY)
    np.testing.assert_allclose(knn.decision_function(QUERY), dist[:, -1], atol=1e-5)


def test_mahalanobis_equals_the_formula() -> None:
    from sklearn.covariance import LedoitWolf

    y = np.arange(300) % 3
    maha = MahalanobisOOD().fit(BANK, y)
    means = np.stack([BANK[y == c].mean(0) for c in range(3)])
    prec = LedoitWolf().fit(BANK - means[y]).precision_
    want = np.sqrt(np.min([[(q - m) @ prec @ (q - m) for m in means] for q in QUERY], axis=1))
    np.testing.assert_allclose(maha.decision_function(QUERY), want, rtol=1e-6)


def test_combined_score_is_the_larger_standardised_score_and_keeps_tpr() -> None:
    held_e, held_z = RNG.normal(size=(200, 16)), RNG.normal(size=(200, 5)) * 3
    c = CombinedOOD(k=5, tpr=0.95).fit(BANK, held_e, held_z)
    energy = EnergyOOD.score(held_z)
    knn = KNNOOD(k=5).fit(BANK).decision_function(held_e)
    want = np.maximum((energy - energy.mean()) / energy.std(), (knn - knn.mean()) / knn.std())
    np.testing.assert_allclose(c.decision_function(held_e, held_z), want, atol=1e-6)
    assert np.mean(c.predict(held_e, held_z)) <= 0.05 + 1e-9
    again = CombinedOOD.from_dict(c.to_dict(), c.bank)
    np.testing.assert_allclose(again.decision_function(QUERY, held_z[:40]), c.decision_function(QUERY, held_z[:40]))


def test_level_features_of_known_signals() -> None:
    sr = 16_000
    t = np.arange(sr) / sr
    sine = 0.1 * np.sin(2 * np.pi * 440 * t)  # RMS 0.1 / sqrt(2): -23.0 dBFS
    burst = np.zeros(sr)
    burst[:1600] = 0.5 * np.sin(2 * np.pi * 1000 * t[:1600])
    f = level_features(np.stack([sine, burst]), sr)
    assert f[0, 0] == pytest.approx(-23.01, abs=0.05) and f[0, 2] == pytest.approx(0.0, abs=0.1)
    assert f[1, 2] > 60  # an event rises far above its floor; steady sine does not


def test_background_threshold_respects_the_foreground_rate_on_heldout_only() -> None:
    fg, bg = RNG.normal(0, 1, size=(400, 6)), RNG.normal(1.5, 1, size=(200, 6))
    held = RNG.normal(0, 1, size=(300, 6))
    det = BackgroundDetector(max_foreground_rate=0.02).fit(np.vstack([fg, bg]), np.r_[np.zeros(400), np.ones(200)],
                                                          foreground_heldout=held)
    assert np.mean(det.predict(held)) <= 0.02 + 1e-9
    assert np.mean(det.predict(RNG.normal(1.5, 1, size=(200, 6)))) > 0.5
    again = BackgroundDetector.from_dict(det.to_dict())
    np.testing.assert_allclose(again.decision_function(held), det.decision_function(held), rtol=1e-5)


def test_trust_models_refuse_heldout_clips_from_training_folds(synthetic_dir: Path) -> None:
    from tympan.bundle import Bundle
    from tympan.datasets import load_esc50
    from tympan.diagnostics.trust import fit_trust
    from tympan.errors import DataError
    from tympan.features import FrontendConfig
    from tympan.inference import Predictor
    from tympan.models import build_model

    ds = load_esc50(synthetic_dir)
    b = Bundle(model=build_model("cnn", n_classes=len(ds.classes), width=4).eval(), arch="cnn",
               arch_params={"width": 4}, classes=list(ds.classes), frontend=FrontendConfig(clip_seconds=2.0))
    leaked = [c for c, f in zip(ds.clip_ids, ds.folds) if f == 1][:5]  # fold 1 is a training fold
    with pytest.raises(DataError, match="training fold"):
        fit_trust(b, Predictor(b), ds, [1, 2, 3, 4], leaked, progress=False, log=lambda *a: None)


def test_a_generated_background_recording_is_flagged(synthetic_dir: Path, tmp_path: Path) -> None:
    """Calibrate a small model on the generated set; recorder hiss then comes back as background."""
    from helpers import train_tiny_bundle

    from tympan.diagnostics.calibrate import fit_bundle
    from tympan.inference import Predictor

    dest = train_tiny_bundle(synthetic_dir, tmp_path / "tiny")
    fit_bundle(dest, data_dir=synthetic_dir, progress=False, log=lambda *a: None)
    pred = Predictor(dest)
    assert pred.params.background is not None and pred.params.embedding_ood is not None
    rng = np.random.default_rng(5)
    hiss = rng.standard_normal(16_000 * 4) * 10 ** (-60 / 20)
    sf.write(tmp_path / "hiss.wav", hiss.astype(np.float32), 16_000, subtype="PCM_24")
    body = pred.predict(tmp_path / "hiss.wav")
    assert body["background"]["background"] is True and body["uncertain"]
    assert any("background" in r for r in body["uncertain_reasons"])
    clip = sorted((synthetic_dir / "audio").glob("5-*"))[0]  # a held-out clip holds an event
    assert pred.predict(clip)["background"]["background"] is False


def test_window_outputs_at_another_level(synthetic_dir: Path) -> None:
    """The quieter copies the outlier probe sees as in-distribution are the same windows, 20 dB down."""
    from tympan.bundle import Bundle
    from tympan.datasets import load_esc50
    from tympan.diagnostics.trust import window_outputs
    from tympan.features import FrontendConfig
    from tympan.inference import Predictor
    from tympan.models import build_model

    ds = load_esc50(synthetic_dir)
    b = Bundle(model=build_model("cnn", n_classes=len(ds.classes), width=4).eval(), arch="cnn",
               arch_params={"width": 4}, classes=list(ds.classes), frontend=FrontendConfig(clip_seconds=2.0))
    pred = Predictor(b, backend="eager")
    loud = window_outputs(pred, ds.files[:3])
    quiet = window_outputs(pred, ds.files[:3], gain_db=-20.0)
    np.testing.assert_allclose(quiet.levels[:, 0], loud.levels[:, 0] - 20.0, atol=0.01)
    assert not np.allclose(quiet.embeddings, loud.embeddings)  # log-mels are not level-normalised


def _manifest_set(root: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """A folder of real 2-s WAV clips and its manifest.csv: (name, kind, split, label) per row."""
    import csv

    root.mkdir(parents=True)
    rng = np.random.default_rng(7)
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["file", "kind", "split", "label", "source"])
        w.writeheader()
        for i, (name, kind, split, label) in enumerate(rows):
            t = np.arange(32_000) / 16_000
            y = 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(root / f"{name}.wav", y.astype(np.float32), 16_000)
            w.writerow({"file": f"{name}.wav", "kind": kind, "split": split, "label": label, "source": "test"})
    return root


def test_outliers_from_other_sources_join_the_probe_without_their_esc_clips(synthetic_dir: Path,
                                                                             tmp_path: Path) -> None:
    """`calibrate --outliers-dir`: non-ESC dev clips of another set are outliers; ESC-class clips never."""
    from tympan.bundle import Bundle
    from tympan.datasets import load_esc50
    from tympan.diagnostics.trust import fit_trust, outlier_rows
    from tympan.features import FrontendConfig
    from tympan.inference import Predictor
    from tympan.models import build_model

    ood = _manifest_set(tmp_path / "ood", [("tone", "generated", "dev", ""), ("speech", "speech", "dev", ""),
                                           ("held", "generated", "eval", "")])
    other = _manifest_set(tmp_path / "other", [("song", "music", "dev", ""), ("bark", "esc-class", "dev", "dog"),
                                               ("fx", "sfx", "dev", ""), ("named", "sfx", "dev", "rain")])
    assert [r["file"] for r in outlier_rows(other)] == ["song.wav", "fx.wav"]
    ds = load_esc50(synthetic_dir)
    b = Bundle(model=build_model("cnn", n_classes=len(ds.classes), width=4).eval(), arch="cnn",
               arch_params={"width": 4}, classes=list(ds.classes), frontend=FrontendConfig(clip_seconds=2.0))
    held = [c for c, f in zip(ds.clip_ids, ds.folds, strict=True) if f == 5]
    fit = fit_trust(b, Predictor(b), ds, [1, 2, 3, 4], held, ood_dir=ood, outlier_dirs=[other], progress=False,
                    log=lambda *a: None)
    assert fit["ood_score"] == "probe"
    assert fit["ood_outliers"].startswith("2 clips of the dev split of ood + 2 non-ESC clips of other;")
    assert b.ood["embedding"]["outliers"] == fit["ood_outliers"]  # the bundle says what its probe saw
