"""Domain adaptation: AdaBN changes only BatchNorm statistics, round-trips, fails clearly, helps.

A tiny ``cnn`` (width 8) is trained here for a few seconds on the generated data set (folds
1-4, 2-s clips); its held-out fold, quieter by 20 dB and low-passed at 4 kHz, is the "field".
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from tympan.adaptation import (
    AdaptationError,
    NoBatchNormError,
    adapt_batchnorm,
    adapt_bundle,
    compare_bundles,
    finetune_bundle,
    load_field,
)
from tympan.adaptation.field import window_logits
from tympan.audio import fit_length, load_audio
from tympan.bundle import Bundle, load_bundle
from tympan.cli import main
from tympan.corruptions import gain, lowpass
from tympan.datasets import load_esc50
from tympan.errors import TympanError
from tympan.features import FrontendConfig, LogMel
from tympan.stats.ood import EnergyOOD
from tympan.models import build_model

FRONTEND = FrontendConfig(clip_seconds=2.0)


def _train_tiny_cnn(x: torch.Tensor, y: np.ndarray, epochs: int = 12) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("cnn", n_classes=int(y.max()) + 1, width=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    yt = torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(yt), generator=gen)
        for lo in range(0, len(yt), 16):
            i = perm[lo : lo + 16]
            loss = F.cross_entropy(model(x[i]), yt[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _shift(y: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    return lowpass(gain(y, FRONTEND.sample_rate, rng, db=-20.0), FRONTEND.sample_rate, rng, cutoff_hz=4000.0)


@pytest.fixture(scope="module")
def world(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    ds = load_esc50(synthetic_dir)
    waves = np.stack([fit_length(load_audio(p, FRONTEND.sample_rate).waveform, FRONTEND.clip_samples)
                      for p in ds.files])
    x = LogMel(FRONTEND)(torch.from_numpy(waves))
    train, held = ds.folds != 5, ds.folds == 5
    model = _train_tiny_cnn(x[train], ds.labels[train])
    z = window_logits(model, x[held])
    bundle = Bundle(model=model, arch="cnn", arch_params={"width": 8}, classes=ds.classes, frontend=FRONTEND,
                    temperature=1.3, name="tiny",
                    ood={"score": "energy", "temperature": 1.0,
                         "threshold": float(np.quantile(EnergyOOD.score(z), 0.95))},
                    metrics={"heldout_accuracy": float((z.argmax(1) == ds.labels[held]).mean())},
                    provenance={"heldout_fold": 5, "trained_by": "test"})
    root = tmp_path_factory.mktemp("adapt")
    bundle_dir = bundle.save(root / "bundle")
    field = root / "field"
    (field / "site").mkdir(parents=True)
    labels = {}
    for i in np.flatnonzero(held):
        name = f"site/{ds.clip_ids[i]}.wav"
        sf.write(field / name, _shift(waves[i]), FRONTEND.sample_rate, subtype="FLOAT")
        labels[name] = ds.classes[ds.labels[i]]
    # one long recording, cut into windows by the adaptation (unlabelled)
    long = np.concatenate([_shift(waves[i]) for i in np.flatnonzero(held)[:3]])
    sf.write(field / "long.flac", long, FRONTEND.sample_rate)
    (field / "notes.txt").write_text("not audio")
    return {"bundle": load_bundle(bundle_dir), "bundle_dir": bundle_dir, "field": field, "labels": labels,
            "root": root, "data": synthetic_dir}


def test_adabn_changes_only_normalisation_statistics(world):
    bundle = world["bundle"]
    adapted, report = adapt_bundle(bundle, world["field"])
    old, new = bundle.model.state_dict(), adapted.model.state_dict()
    assert old.keys() == new.keys()
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for key in old:
        if key.endswith(stats):
            continue
        assert torch.equal(old[key], new[key]), f"{key} changed"
    for key in [k for k in old if k.endswith(("running_mean", "running_var"))]:
        assert not torch.equal(old[key], new[key]), f"{key} was not re-estimated"
    # the input BatchNorm moved by about the -20 dB shift (-4.6 in natural-log mel)
    delta = float(new["input_norm.running_mean"] - old["input_norm.running_mean"])
    assert -6.0 < delta < -3.0
    assert adapted.model.input_norm.momentum == bundle.model.input_norm.momentum  # restored
    assert report["n_files"] == 21 and report["n_windows"] == 20 + 5
    # the original bundle is untouched
    assert torch.equal(bundle.model.state_dict()["input_norm.running_mean"], old["input_norm.running_mean"])


def test_adapted_bundle_roundtrips_and_records_provenance(world, tmp_path):
    bundle = world["bundle"]
    adapted, report = adapt_bundle(bundle, world["field"])
    out = adapted.save(tmp_path / "adapted")
    again = load_bundle(out)
    x = load_field(world["field"], FRONTEND).features
    np.testing.assert_array_equal(window_logits(adapted.model, x), window_logits(again.model, x))
    assert again.classes == bundle.classes and again.frontend == bundle.frontend
    assert again.temperature == bundle.temperature and again.ood["score"] == bundle.ood["score"]
    prov = again.provenance["adaptation"]
    assert prov["method"] == "adabn" and prov["n_files"] == 21 and len(prov["files_sha256"]) == 64
    assert prov["date"] and prov["adapted_from"] == "tiny"
    assert again.provenance["heldout_fold"] == 5  # the original provenance is kept
    assert again.metrics["before_adaptation"]["heldout_accuracy"] == bundle.metrics["heldout_accuracy"]
    # the OOD judgement is the original model's, carried over (issue #24 item 10): on the audio it
    # was adapted on, the adapted bundle flags what the original flagged, whatever the old judges say
    info = again.extra["adaptation"]
    assert "ood_threshold" in info["refitted"] and "ood_threshold" not in info["stale"]
    assert again.ood["threshold"] != bundle.ood["threshold"]
    checks = info["checks"]
    assert checks["ood_rate_after"] == checks["ood_rate_before"]
    assert checks["ood_rate_after_uncarried"] is not None
    assert not any(w.startswith("OOD threshold") for w in info["warnings"]), info["warnings"]
    assert any("notes.txt" in p for p, _ in again.extra["adaptation"]["skipped"])


def test_adaptation_improves_accuracy_under_a_known_shift(world):
    bundle = world["bundle"]
    adapted, _ = adapt_bundle(bundle, world["field"])
    cmp = compare_bundles(bundle, adapted, world["field"], labels=world["labels"])
    before, after = cmp["before"], cmp["after"]
    assert before["n_labelled"] == after["n_labelled"] == 20
    assert after["accuracy"] >= before["accuracy"] + 0.2, cmp
    assert cmp["delta"]["accuracy"] == pytest.approx(after["accuracy"] - before["accuracy"])
    assert sum(before["predicted_classes"].values()) == cmp["measured_on"]["n_files"] == 21
    assert before["ood_rate"] is not None and 0 <= after["mean_confidence"] <= 1


def test_cli_adapt_writes_a_bundle(world, tmp_path, capsys):
    out = tmp_path / "cli-adapted"
    code = main(["adapt", "--bundle", str(world["bundle_dir"]), "--field-dir", str(world["field"]),
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert load_bundle(out).provenance["adaptation"]["method"] == "adabn"
    text = capsys.readouterr().out
    assert "adabn on 21 field files" in text and "OOD rate" in text
    assert main(["adapt", "--bundle", str(world["bundle_dir"]), "--field-dir", str(world["field"]),
                 "--out", str(out)]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err


def _bad_dirs(tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    (unreadable / "b.mp3").write_bytes(b"\x00" * 100)
    (unreadable / "c.flac").write_bytes(b"")
    return {"missing": tmp_path / "nope", "empty": empty, "unreadable": unreadable}


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable"])
def test_bad_field_folders_fail_clearly(world, tmp_path, capsys, case):
    field = _bad_dirs(tmp_path)[case]
    with pytest.raises(TympanError) as info:
        adapt_bundle(world["bundle"], field)
    assert "\n" not in str(info.value) and str(field) in str(info.value)
    if case == "unreadable":
        assert isinstance(info.value, AdaptationError) and "none of the 3" in str(info.value)
    code = main(["adapt", "--bundle", str(world["bundle_dir"]), "--field-dir", str(field),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("tympan: error:")
    assert not (tmp_path / "out").exists()


class _NoBN(nn.Module):
    def __init__(self, n_classes: int = 5) -> None:
        super().__init__()
        self.fc = nn.Linear(64, n_classes)

    def embed(self, x):
        return x.mean(dim=(1, 3))

    def classify(self, e):
        return self.fc(e)

    def forward(self, x):
        return self.classify(self.embed(x))


def test_model_without_batchnorm_is_told_to_fine_tune(world):
    b = world["bundle"].replace(model=_NoBN(), arch="nobn", arch_params={})
    with pytest.raises(NoBatchNormError, match="--labels"):
        adapt_bundle(b, world["field"])
    with pytest.raises(NoBatchNormError):
        adapt_batchnorm(_NoBN(), torch.zeros(4, 1, 64, 10))


def test_labelled_finetune_records_before_after(world, tmp_path):
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class"])
        w.writerows(sorted(world["labels"].items()))
    new, report = finetune_bundle(world["bundle"], labels, world["field"], data_dir=world["data"],
                                  epochs=10, heldout_fraction=0.5)
    lab = report["labelled"]
    assert lab["n_labelled_files"] == 20 and lab["n_heldout_files"] == 10
    acc = lab["heldout_accuracy"]
    assert acc["after"] >= acc["before"] and {"before", "after_adabn", "after"} <= set(acc)
    assert lab["replay"]["folds"] == [1, 2, 3, 4] and lab["replay"]["excluded_heldout_folds"] == [5]
    assert lab["esc50_heldout_accuracy"]["folds"] == [5]
    assert report["method"] == "adabn+finetune-head"
    old, new_sd = world["bundle"].model.state_dict(), new.model.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new_sd[k])}
    assert {"fc.weight", "fc.bias"} <= changed
    assert all(k.startswith("fc.") or k.endswith(("running_mean", "running_var", "num_batches_tracked"))
               for k in changed), changed
    again = load_bundle(new.save(tmp_path / "ft"))
    assert again.metrics["field_labelled"]["heldout_accuracy"]["after"] == acc["after"]
    # unknown classes in the labels file fail clearly
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nlong.flac,helicopter\n")
    with pytest.raises(AdaptationError, match="not classes of the model"):
        finetune_bundle(world["bundle"], bad, world["field"], data_dir=world["data"])


def test_augmented_feature_copies_are_cached_and_keep_folds(synthetic_dir, tmp_path):
    from tympan.training.field_augment import augmented_feature_copies

    ds = load_esc50(synthetic_dir)
    ds = ds.subset(np.arange(len(ds)) % 10 == 0)  # 10 clips
    fs = augmented_feature_copies(ds, FRONTEND, n_copies=2, seed=0, p=0.9, root=tmp_path, progress=False)
    assert fs.features.shape == (20, 1, FRONTEND.n_mels, FRONTEND.n_frames)
    np.testing.assert_array_equal(fs.folds, np.tile(ds.folds, 2))
    np.testing.assert_array_equal(fs.labels, np.tile(ds.labels, 2))
    assert fs.clip_ids[10] == ds.clip_ids[0] + "#aug1"
    again = augmented_feature_copies(ds, FRONTEND, n_copies=2, seed=0, p=0.9, root=tmp_path, progress=False)
    assert again.path == fs.path
    clean = LogMel(FRONTEND)(torch.from_numpy(
        fit_length(load_audio(ds.files[0], FRONTEND.sample_rate).waveform, FRONTEND.clip_samples)))
    assert not np.allclose(np.asarray(fs.features[0], np.float32), clean.numpy()[0], atol=1e-2)


def test_max_windows_thins_long_recordings_evenly(world):
    full = load_field(world["field"], FRONTEND, max_windows=None)
    thin = load_field(world["field"], FRONTEND, max_windows=10)
    assert full.n_windows == 25 and full.window_stride == 1
    assert thin.window_stride == 3 and thin.n_windows == 20 + 2  # every file keeps >= 1 window
    assert np.array_equal(np.unique(thin.file_index), np.arange(thin.n_files))


@pytest.mark.parametrize("last_stage", [False, True])
def test_finetune_trains_only_head_and_keeps_adapted_statistics(last_stage):
    from tympan.adaptation import finetune_model

    torch.manual_seed(0)
    model = build_model("cnn", n_classes=3, width=4).eval()
    x, xr = torch.randn(12, 1, 64, 40), torch.randn(10, 1, 64, 40) * 2 + 1
    adapted = adapt_batchnorm(model, x)
    tuned, history = finetune_model(adapted, "cnn", x, np.arange(12) % 3, xr, np.arange(10) % 3,
                                    replay_model=model, last_stage=last_stage, epochs=2)
    before, after = adapted.state_dict(), tuned.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = ("fc.", "stage4.") if last_stage else ("fc.",)
    assert changed and all(k.startswith(allowed) for k in changed), changed
    assert not any(k.endswith(("running_mean", "running_var")) for k in changed)  # replay stats swapped back
    assert len(history) == 2 and all(p.requires_grad for p in tuned.parameters())
