"""Training: the generated data set through the real code path, CV results and resume, bundles,
configuration errors, and the Modal app run locally."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tympan.bundle import load_bundle, read_heldout
from tympan.cache import featurize
from tympan.cli import main
from tympan.datasets import load_esc50
from tympan.features import FrontendConfig
from tympan.training import (
    AugmentConfig,
    TrainConfig,
    bundle_from_run,
    evaluate,
    predict_logits,
    run_cv,
    train_fold,
)
from tympan.training.augment import augment_batch, mask_axis, mixup

FRONTEND = FrontendConfig(clip_seconds=2.0)


def tiny_config(**changes) -> TrainConfig:
    cfg = TrainConfig(arch="cnn", arch_params={"width": 8}, epochs=8, batch_size=16, lr=3e-3, seed=0,
                      device="cpu", augment=AugmentConfig())
    for k, v in changes.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="module")
def features(synthetic_dir, tmp_path_factory):
    return featurize(load_esc50(synthetic_dir), FRONTEND, progress=False,
                     root=tmp_path_factory.mktemp("fcache"))


def test_trains_to_high_accuracy(features, tmp_path):
    results = run_cv(features, tiny_config(), [1], tmp_path / "run", progress=False, tensorboard=False)
    assert results["folds"]["1"]["accuracy"] >= 0.9
    held = read_heldout(tmp_path / "run" / "fold1")
    assert held.logits.shape == (20, 5) and held.logits.dtype == np.float32
    assert len(held.clip_ids) == 20
    # held-out clips are exactly fold 1's, in the logits' order, labels aligned
    fold1 = [c for c, f in zip(features.clip_ids, features.folds) if f == 1]
    assert sorted(held.clip_ids) == sorted(fold1)
    idx = [features.clip_ids.index(c) for c in held.clip_ids]
    assert np.array_equal(held.labels, features.labels[idx])


def test_cv_writes_one_result_per_fold_and_resumes(features, tmp_path):
    run = tmp_path / "run"
    first = run_cv(features, tiny_config(epochs=3), [1, 2], run, max_folds=1, progress=False, tensorboard=True)
    assert list(first["folds"]) == ["1"] and first["pending"] == [2]
    assert (run / "tb" / "fold1").is_dir()
    messages: list[str] = []
    second = run_cv(features, tiny_config(epochs=3), [1, 2], run, progress=False, tensorboard=False,
                    log=messages.append)
    assert list(second["folds"]) == ["1", "2"] and second["pending"] == []
    assert any("fold 1: already complete" in m for m in messages)
    assert not any(m.startswith("fold 1 epoch") for m in messages)
    on_disk = json.loads((run / "results.json").read_text())
    accs = [on_disk["folds"][k]["accuracy"] for k in ("1", "2")]
    assert on_disk["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert on_disk["accuracy"]["std"] == pytest.approx(np.std(accs))
    assert not (run / "fold1" / "checkpoint.pt").exists()


def test_interrupted_fold_resumes_from_its_checkpoint_reproducibly(features, tmp_path):
    train_idx = np.flatnonzero(features.folds != 1)
    val_idx = np.flatnonzero(features.folds == 1)
    cfg = tiny_config(epochs=4)
    ref = train_fold(features, train_idx, val_idx, cfg, tmp_path / "ref", fold=1, progress=False,
                     log=lambda m: None)

    def crash_at_epoch_3(message: str) -> None:
        if "epoch 3/4" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_fold(features, train_idx, val_idx, cfg, tmp_path / "cut", fold=1, progress=False,
                   log=crash_at_epoch_3)
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()
    messages: list[str] = []
    resumed = train_fold(features, train_idx, val_idx, cfg, tmp_path / "cut", fold=1, progress=False,
                         log=messages.append)
    assert "resuming after epoch 2/4" in messages[0]
    np.testing.assert_allclose(resumed.logits, ref.logits, rtol=1e-4, atol=1e-4)


def test_bundle_from_training_predicts_identically(features, synthetic_dir, tmp_path):
    run = tmp_path / "run"
    run_cv(features, tiny_config(), [2], run, progress=False, tensorboard=False)
    out = bundle_from_run(run, tmp_path / "bundle")
    bundle = load_bundle(out)
    assert bundle.frontend == FRONTEND and bundle.metrics["heldout_fold"] == 2
    assert bundle.provenance["seed"] == 0 and bundle.provenance["epochs"] == 8
    held = read_heldout(out)
    idx = [features.clip_ids.index(c) for c in held.clip_ids]
    logits = predict_logits(bundle, np.asarray(features.features[idx]))
    np.testing.assert_allclose(logits, held.logits, rtol=1e-5, atol=1e-5)
    # batch-size independent, eval mode
    one = predict_logits(bundle, np.asarray(features.features[idx]), batch_size=1)
    np.testing.assert_allclose(one, logits, rtol=1e-5, atol=1e-5)
    # decode -> LogMel (float32) -> model, as serving does
    res = evaluate(bundle, synthetic_dir, folds=[2], cache_root=tmp_path / "c32")
    assert res["n"] == 20 and res["accuracy"] >= 0.9
    assert res["logits"].dtype == np.float32


def test_cli_train_and_evaluate(synthetic_dir, tmp_path, capsys):
    fe = tmp_path / "fe.json"
    fe.write_text(json.dumps(FRONTEND.to_dict()))
    code = main(["train", "--data-dir", str(synthetic_dir), "--arch", "cnn", "--arch-param", "width=8",
                 "--frontend", str(fe), "--epochs", "6", "--batch-size", "16", "--lr", "3e-3",
                 "--folds", "3", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "b"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and f"run dir: {tmp_path / 'run'}" in out and "fold 3:" in out
    assert main(["train", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(["evaluate", "--bundle", str(tmp_path / "b"), "--data-dir", str(synthetic_dir),
                 "--folds", "3", "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "nope"], "unknown architecture 'nope'"),
        (["--folds", "9"], "not in the data"),
        (["--folds", "x"], "comma-separated"),
        (["--arch-param", "width"], "expected KEY=VALUE"),
        (["--arch-param", "colour=3"], "bad --arch-param"),
        (["--epochs", "0"], "--epochs must be at least 1"),
    ],
)
def test_bad_configuration_fails_with_one_line(synthetic_dir, tmp_path, capsys, args, message):
    code = main(["train", "--data-dir", str(synthetic_dir), "--run-dir", str(tmp_path / "r"), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1


def test_missing_data_dir_fails_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TYMPAN_ESC50_DIR", raising=False)
    assert main(["train", "--data-dir", str(tmp_path / "absent"), "--quiet"]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["train", "--quiet"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_augmentations_are_seeded_and_shape_preserving():
    x = torch.randn(8, 1, 64, 101)
    y = torch.nn.functional.one_hot(torch.arange(8) % 5, 5).float()
    cfg = AugmentConfig()
    a = augment_batch(x, y, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(x, y, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == x.shape and torch.allclose(a[1].sum(1), torch.ones(8))
    masked = mask_axis(x, 2, 10, 2, torch.Generator().manual_seed(0))
    assert masked.shape == x.shape
    xm, ym = mixup(x, y, 0.3, torch.Generator().manual_seed(0))
    assert (ym.max(1).values >= 0.5 - 1e-6).all()


def test_modal_app_imports_and_runs_locally(synthetic_dir, tmp_path, monkeypatch):
    modal_app = pytest.importorskip("tympan.training.modal_app")
    assert modal_app.app.name == "tympan-train"
    fe = tmp_path / "fe.json"
    fe.write_text(json.dumps(FRONTEND.to_dict()))
    kwargs = dict(arch="cnn", arch_params={"width": 8}, epochs=6, batch_size=16, lr=3e-3, init=None,
                  frontend=str(fe), data_dir=str(synthetic_dir), runs_dir=str(tmp_path / "runs"),
                  run_name="t", device="cpu")
    row = modal_app.train_fold_job(4, **kwargs)
    assert row["fold"] == 4 and row["accuracy"] >= 0.9
    assert (Path(row["run_dir"]) / "fold4" / "heldout.safetensors").is_file()
    with pytest.warns(UserWarning, match="executing locally"):  # Modal's note: no volumes locally
        row2 = modal_app.train_fold.local(5, **kwargs)
    assert row2["fold"] == 5


ASSET = Path(__file__).resolve().parents[1] / "tympan" / "assets" / "default"


def test_shipped_bundle_loads_with_its_heldout_predictions():
    bundle = load_bundle(ASSET)
    held = read_heldout(ASSET)
    assert held.logits.shape == (400, len(bundle.classes)) and len(held.clip_ids) == 400
    assert held.classes == bundle.classes
    acc = float((held.logits.argmax(1) == held.labels).mean())
    assert acc == pytest.approx(bundle.metrics["heldout_accuracy"])
    assert all(c.startswith(f"{bundle.metrics['heldout_fold']}-") for c in held.clip_ids)
    prov = bundle.provenance
    assert prov["heldout_fold"] not in prov["train_folds"] and prov["init"]["sha256"]
    assert sum(f.stat().st_size for f in ASSET.iterdir()) < 10e6


@pytest.mark.slow
def test_shipped_bundle_reproduces_its_heldout_logits_from_audio(esc50_dir, tmp_path):
    from tympan.audio import fit_length, load_audio

    bundle = load_bundle(ASSET)
    held = read_heldout(ASSET)
    logmel = bundle.frontend_module()
    paths = {p.stem: p for p in (esc50_dir / "audio").iterdir()}
    ids = held.clip_ids[:8]
    waves = np.stack([fit_length(load_audio(paths[c], bundle.frontend.sample_rate, max_seconds=None).waveform,
                                 bundle.frontend.clip_samples) for c in ids])
    logits = predict_logits(bundle, logmel(torch.from_numpy(waves)))
    # training read a float16 cache; float32 features move logits by a little, not the decision
    np.testing.assert_allclose(logits, held.logits[:8], atol=0.1)
    assert np.array_equal(logits.argmax(1), held.logits[:8].argmax(1))


def test_field_augmented_copies_join_training_but_never_from_the_held_out_fold(features, synthetic_dir, tmp_path):
    from tympan.training.field_augment import augmented_feature_copies

    extra = augmented_feature_copies(load_esc50(synthetic_dir), FRONTEND, 1, seed=0, progress=False,
                                     root=tmp_path / "aug")
    assert len(extra) == len(features)
    lines: list[str] = []
    results = run_cv(features, tiny_config(field_augment=1, epochs=1), [2], tmp_path / "run",
                     progress=False, tensorboard=False, extra=extra, log=lines.append)
    assert any("80 field-augmented training rows added" in line for line in lines)  # 100 minus fold 2's 20
    assert results["folds"]["2"]["n"] == 20  # validation stays on the original clips only
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert stored["field_augment"] == 1


def test_field_augment_option_validates():
    from tympan.training.loop import TrainingConfigError

    with pytest.raises(TrainingConfigError, match="field-augment"):
        tiny_config(field_augment=-1).validate()


def test_results_keep_folds_from_earlier_invocations(features, tmp_path):
    cfg = tiny_config(epochs=2)
    run_cv(features, cfg, [1], tmp_path / "run", progress=False, tensorboard=False)
    results = run_cv(features, cfg, [2], tmp_path / "run", progress=False, tensorboard=False)
    assert sorted(results["folds"]) == ["1", "2"] and results["accuracy"]["n_folds"] == 2


def test_a_bundle_as_init_must_match_the_data_and_front_end():
    """``--init BUNDLE`` keeps the bundle's head, so a different label order or front end is refused."""
    from tympan.training.cli import check_bundle_init
    from tympan.training.loop import TrainingConfigError

    shipped = Path(__file__).resolve().parents[1] / "tympan" / "assets" / "default"
    meta = json.loads((shipped / "bundle.json").read_text())
    fe = FrontendConfig.from_dict(meta["frontend"])
    check_bundle_init(str(shipped), fe, list(meta["classes"]))  # the same: accepted
    with pytest.raises(TrainingConfigError, match="classes differ"):
        check_bundle_init(str(shipped), fe, list(reversed(meta["classes"])))
    with pytest.raises(TrainingConfigError, match="front end"):
        check_bundle_init(str(shipped), FRONTEND, list(meta["classes"]))
