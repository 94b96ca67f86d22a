"""#20: the precision switch, the EfficientAT recipe, fold records that merge only on equal config
hashes, and a killed training process that resumes exactly."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tympan.cache import featurize
from tympan.cli import main
from tympan.datasets import load_esc50
from tympan.features import FrontendConfig
from tympan.bundle import read_heldout
from tympan.training import AugmentConfig, TrainConfig, train_fold
from tympan.training.augment import draw_batch, wave_mix
from tympan.training.loop import TrainingConfigError, resolve_precision, warmup_linear_factor
from tympan.training.recipes import apply_recipe
from tympan.training.records import RecordMismatchError, assemble, load_records, records_from_run

FRONTEND = FrontendConfig(clip_seconds=2.0)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def features(synthetic_dir, tmp_path_factory):
    return featurize(load_esc50(synthetic_dir), FRONTEND, progress=False, root=tmp_path_factory.mktemp("fc"))


@pytest.fixture(scope="module")
def frontend_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fe") / "fe.json"
    path.write_text(json.dumps(FRONTEND.to_dict()))
    return path


def tiny(**changes) -> TrainConfig:
    cfg = TrainConfig(arch="cnn", arch_params={"width": 8}, epochs=3, batch_size=16, lr=3e-3, seed=0, device="cpu",
                      augment=AugmentConfig())
    for k, v in changes.items():
        setattr(cfg, k, v)
    return cfg


def test_auto_precision_is_bf16_only_where_the_cpu_has_it():
    assert resolve_precision("auto", CPU, cpu_bf16=False) == "fp32"
    assert resolve_precision("auto", CPU, cpu_bf16=True) == "bf16"
    assert resolve_precision("fp32", CPU, cpu_bf16=True) == "fp32"
    assert resolve_precision("bf16", CPU, cpu_bf16=False) == "bf16"  # asked for: emulated, slow, allowed
    with pytest.raises(TrainingConfigError, match="--precision 'fp16'"):
        resolve_precision("fp16", CPU)


def test_auto_precision_keeps_fp32_where_bf16_was_measured_slower():
    """mn04's depthwise convolutions ran slower under bf16 at batch 32 on both bf16 CPUs measured."""
    assert resolve_precision("auto", CPU, cpu_bf16=True, arch="mn04", batch_size=32) == "fp32"
    assert resolve_precision("auto", CPU, cpu_bf16=True, arch="mn04", batch_size=128) == "bf16"
    assert resolve_precision("auto", CPU, cpu_bf16=True, arch="cnn", batch_size=32) == "bf16"
    assert resolve_precision("auto", CPU, cpu_bf16=False, arch="cnn", batch_size=32) == "fp32"
    assert resolve_precision("bf16", CPU, cpu_bf16=True, arch="mn04", batch_size=32) == "bf16"  # asked for
    assert resolve_precision("auto", torch.device("cuda"), arch="mn04", batch_size=32) == "bf16"


def test_bf16_and_fp32_give_the_same_predictions_on_a_tiny_model(features, tmp_path):
    """One trained tiny model: its held-out predictions in fp32 and under bf16 autocast agree, and a
    bf16-trained copy learns as well as the fp32 one (emulated on CPUs without native bf16)."""
    train_idx, val_idx = np.flatnonzero(features.folds != 1), np.flatnonzero(features.folds == 1)
    runs = {p: train_fold(features, train_idx, val_idx, tiny(precision=p, epochs=6), tmp_path / p, fold=1,
                          progress=False, log=lambda m: None) for p in ("fp32", "bf16")}
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    x = torch.from_numpy(np.ascontiguousarray(features.features[np.sort(val_idx)])).float()
    model = fp32.model.eval()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).float()
    assert float((ref.argmax(1) == low.argmax(1)).float().mean()) >= 0.95
    diff = (ref - low).abs().max()
    assert 0 < diff < 0.1 * ref.abs().max()  # bf16 really ran (8-bit mantissa), close to fp32
    assert bf16.accuracy >= fp32.accuracy - 0.15  # 20 held-out clips: 3 clips of slack


def test_efficientat_recipe_sets_its_published_settings_and_scales_its_schedule():
    cfg = apply_recipe(TrainConfig(arch="mn04", init="mn04_as"), "efficientat")
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.epochs) == ("adam", 6e-5, 0.0, 128, 80)
    assert cfg.label_smoothing == 0 and cfg.layer_decay == 1.0 and cfg.augment.freq_masks == 0
    assert cfg.augment.wavmix_p == 0.5 and cfg.augment.gain_db == 12 and cfg.augment.mixup_alpha == 0.3
    assert not cfg.field_mel.enabled
    # EfficientAT's exp_warmup_linear_down(10, 65, 10, 0.01), per epoch
    assert warmup_linear_factor(0, cfg) == pytest.approx(math.exp(-5 * 0.95**2))
    assert warmup_linear_factor(5, cfg) == pytest.approx(math.exp(-5 * 0.5**2))
    assert warmup_linear_factor(10, cfg) == 1.0
    assert warmup_linear_factor(42, cfg) == pytest.approx(0.01 + 0.99 * (65 - 32) / 65)
    assert warmup_linear_factor(75, cfg) == pytest.approx(0.01) and warmup_linear_factor(79, cfg) == pytest.approx(0.01)
    short = apply_recipe(TrainConfig(arch="mn04"), "efficientat-robust", epochs=40)
    assert short.epochs == 40 and short.warmup_epochs == 5 and short.rampdown_epochs == 32.5
    assert short.field_mel.enabled
    assert apply_recipe(TrainConfig(epochs=7), "baseline").epochs == 7


def test_waveform_mixing_adds_powers_and_mixes_targets():
    fe = FrontendConfig.from_spec("efficientat")
    p = torch.rand(4, 1, 8, 10) + 0.5
    z = (torch.log(p + fe.log_offset) - fe.norm_mean) / fe.norm_std
    y = torch.eye(4)
    lam = torch.tensor([0.75, 0.6, 0.9, 0.5])
    mix = torch.tensor([True, True, False, True])
    partner = torch.tensor([1, 0, 3, 2])
    zm, ym = wave_mix(z, y, mix, lam, partner, fe)
    pm = torch.exp(zm * fe.norm_std + fe.norm_mean) - fe.log_offset
    want = lam.view(-1, 1, 1, 1) ** 2 * p + (1 - lam.view(-1, 1, 1, 1)) ** 2 * p[partner]
    torch.testing.assert_close(pm[mix], want[mix], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(zm[2], z[2])  # not drawn for mixing: untouched
    assert ym[0, 0] == pytest.approx(0.75) and ym[0, 1] == pytest.approx(0.25) and ym[2, 2] == 1
    # enabling it draws after everything else: a seed gives the same other draws as before
    a = draw_batch(8, 8, 10, AugmentConfig(), torch.Generator().manual_seed(3))
    b = draw_batch(8, 8, 10, AugmentConfig(wavmix_p=0.5), torch.Generator().manual_seed(3))
    assert set(b) - set(a) == {"wmix", "wlam", "wpartner"}
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k])


def _train(data_dir, fe_file, tmp, *extra: str) -> int:
    return main(["train", "--data-dir", str(data_dir), "--arch", "cnn", "--arch-param", "width=8", "--frontend",
                 str(fe_file), "--epochs", "2", "--batch-size", "16", "--lr", "3e-3", "--quiet", *extra])


def test_records_skip_recorded_folds_and_merge_only_on_equal_config_hashes(synthetic_dir, frontend_file, tmp_path,
                                                                           capsys):
    records = tmp_path / "folds.json"
    assert _train(synthetic_dir, frontend_file, tmp_path, "--folds", "1", "--records", str(records),
                  "--run-dir", str(tmp_path / "a")) == 0
    assert "recorded in" in capsys.readouterr().out
    # another day, another run dir: --cv --folds 1,2 runs only the missing fold
    assert _train(synthetic_dir, frontend_file, tmp_path, "--cv", "--folds", "1,2", "--records", str(records),
                  "--run-dir", str(tmp_path / "b")) == 0
    out = capsys.readouterr().out
    assert "folds [1] already recorded" in out and "training [2]" in out
    assert not (tmp_path / "b" / "fold1").exists()
    recs = load_records(records)
    assert [r.fold for r in recs] == [1, 2] and len({r.config_hash for r in recs}) == 1
    rec = recs[0]
    # --precision auto: bf16 where this CPU has it natively, fp32 elsewhere
    assert rec.precision == resolve_precision("auto", torch.device("cpu")) and rec.epochs == 2 and rec.seed == 0 and rec.seconds_per_epoch > 0
    assert rec.code_version and rec.machine and rec.data_fingerprint
    fig = assemble(recs)
    assert fig["n_folds"] == 2 and fig["mean"] == pytest.approx(np.mean([r.accuracy for r in recs]))
    # a different learning rate is a different configuration: nothing skipped, and no merge
    assert _train(synthetic_dir, frontend_file, tmp_path, "--folds", "1", "--lr", "1e-3", "--records", str(records),
                  "--run-dir", str(tmp_path / "c")) == 0
    assert "already recorded" not in capsys.readouterr().out
    recs = load_records(records)
    assert len(recs) == 3 and len({r.config_hash for r in recs}) == 2
    other = next(r for r in recs if r.lr == 1e-3)
    same = next(r for r in recs if r.lr == 3e-3)
    with pytest.raises(RecordMismatchError, match=r"train\.lr"):
        assemble([same, other])
    # every requested fold recorded: nothing to do
    assert _train(synthetic_dir, frontend_file, tmp_path, "--cv", "--folds", "1,2", "--records", str(records),
                  "--run-dir", str(tmp_path / "d")) == 0
    assert "nothing to train" in capsys.readouterr().out
    # a run dir recorded later (records_from_run) hashes like the training did, and its init by the
    # sha the run stored, never by resolving a relative --init against the reader's cwd
    assert [r.config_hash for r in records_from_run(tmp_path / "a")] == [same.config_hash]
    meta = json.loads((tmp_path / "a" / "config.json").read_text())
    assert "init_sha256" in meta and meta["init_sha256"] is None
    meta["train"]["init"], meta["init_sha256"] = "weights/not-here-from-this-cwd.pt", "ab" * 32
    (tmp_path / "a" / "config.json").write_text(json.dumps(meta))
    assert records_from_run(tmp_path / "a")[0].config["init"] == "ab" * 32


def test_a_killed_training_process_resumes_exactly(synthetic_dir, frontend_file, tmp_path):
    """SIGKILL mid-fold (no clean-up at all), then ``--resume``: the same weights as an uninterrupted run."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [sys.executable, "-m", "tympan", "train", "--data-dir", str(synthetic_dir), "--arch", "cnn",
            "--arch-param", "width=8", "--frontend", str(frontend_file), "--epochs", "6", "--batch-size", "16",
            "--lr", "3e-3", "--folds", "1", "--quiet", "--threads", "1"]
    ref = subprocess.run([*args, "--run-dir", str(tmp_path / "ref")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == 0, ref.stderr
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*args, "--run-dir", str(cut)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    ckpt = cut / "fold1" / "checkpoint.pt"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.is_file() and torch.load(ckpt, weights_only=True)["epoch"] >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (cut / "fold1" / "heldout.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "tympan", "train", "--resume", str(cut), "--quiet",
                              "--threads", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stdout
    a, b = read_heldout(tmp_path / "ref" / "fold1").logits, read_heldout(cut / "fold1").logits
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
