"""Shared fixtures: the generated data set, the real ESC-50 copy when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def esc50_path() -> Path | None:
    """The real ESC-50 copy: $TYMPAN_ESC50_DIR, else ../shared/data/esc50."""
    env = os.environ.get("TYMPAN_ESC50_DIR")
    path = Path(env) if env else SHARED / "data" / "esc50"
    return path if (path / "meta" / "esc50.csv").is_file() else None


def weights_path() -> Path | None:
    env = os.environ.get("TYMPAN_WEIGHTS_DIR")
    path = Path(env) if env else SHARED / "weights" / "efficientat-mn04_as"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five learnable synthetic classes, 20 clips each, 5 folds, 2-s 16 kHz WAVs."""
    from tympan.datasets.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("data") / "synthetic", n_classes=5, clips_per_class=20)


@pytest.fixture(scope="session")
def esc50_dir() -> Path:
    path = esc50_path()
    if path is None:
        pytest.skip("real ESC-50 copy not found (../shared/data/esc50 or $TYMPAN_ESC50_DIR)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the feature cache of tests out of the user's home."""
    monkeypatch.setenv("TYMPAN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "feature-cache"))


# the tiny fitted bundle and field folders of the diagnose, batch and contract tests
@pytest.fixture(scope="module")
def fitted_bundle(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from tympan.diagnostics.calibrate import fit_bundle
    from helpers import train_tiny_bundle

    torch.set_num_threads(1)
    dest = train_tiny_bundle(synthetic_dir, tmp_path_factory.mktemp("bundle") / "tiny")
    fit_bundle(dest, data_dir=synthetic_dir, progress=False, log=lambda *a: None)
    return dest


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import field_folder

    return field_folder(tmp_path_factory.mktemp("field") / "clean", seed=11, shift=False)


@pytest.fixture(scope="module")
def shifted_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import field_folder

    return field_folder(tmp_path_factory.mktemp("field") / "shifted", seed=12, shift=True)
