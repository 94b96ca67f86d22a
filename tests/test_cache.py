"""Feature cache: computed once, keyed by data and config, never half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import tympan.cache as cache
from tympan.audio import fit_length, load_audio
from tympan.datasets import load_esc50
from tympan.features import FrontendConfig, LogMel

CFG = FrontendConfig(clip_seconds=2.0)


def test_cache_hit_and_content(synthetic_dir: Path, tmp_path: Path) -> None:
    ds = load_esc50(synthetic_dir)
    fs = cache.featurize(ds, CFG, root=tmp_path, progress=False)
    assert fs.features.shape == (100, 1, 64, CFG.n_frames) and fs.features.dtype == np.float16
    assert isinstance(fs.features, np.memmap)
    wave = fit_length(load_audio(ds.files[7], CFG.sample_rate).waveform, CFG.clip_samples)
    direct = LogMel(CFG)(torch.from_numpy(wave))[0].numpy()
    np.testing.assert_allclose(fs.features[7].astype(np.float32), direct, atol=0.02, rtol=1e-3)
    mtime = (fs.path / "features.npy").stat().st_mtime_ns
    again = cache.featurize(ds, CFG, root=tmp_path, progress=False)
    assert again.path == fs.path and (again.path / "features.npy").stat().st_mtime_ns == mtime
    assert fs.clip_ids == ds.clip_ids and fs.labels.tolist() == ds.labels.tolist()


def test_new_config_or_data_is_a_new_entry(synthetic_dir: Path, tmp_path: Path) -> None:
    ds = load_esc50(synthetic_dir)
    a = cache.featurize(ds, CFG, root=tmp_path, progress=False)
    b = cache.featurize(ds, FrontendConfig(clip_seconds=2.0, n_mels=32), root=tmp_path, progress=False)
    c = cache.featurize(ds.subset(ds.folds == 1), CFG, root=tmp_path, progress=False)
    assert len({a.path, b.path, c.path}) == 3


def test_interrupted_build_leaves_no_valid_entry(synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_esc50(synthetic_dir)
    real_decode = cache._decode
    calls = {"n": 0}

    def flaky(path, frontend):
        calls["n"] += 1
        if calls["n"] > 40:
            raise KeyboardInterrupt  # what Ctrl-C looks like mid-run
        return real_decode(path, frontend)

    monkeypatch.setattr(cache, "_decode", flaky)
    with pytest.raises(KeyboardInterrupt):
        cache.featurize(ds, CFG, root=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
    monkeypatch.setattr(cache, "_decode", real_decode)
    fs = cache.featurize(ds, CFG, root=tmp_path, progress=False)
    assert np.isfinite(np.asarray(fs.features, dtype=np.float32)).all()


@pytest.mark.slow
def test_real_esc50_fold_featurises(esc50_dir: Path, tmp_path: Path) -> None:
    ds = load_esc50(esc50_dir, folds=[1])
    fs = cache.featurize(ds, FrontendConfig(), root=tmp_path, progress=False)
    assert fs.features.shape == (400, 1, 64, 251)
    assert np.isfinite(np.asarray(fs.features[:50], dtype=np.float32)).all()
