"""Model bundle: safetensors + JSON, identical logits after a round trip, clear failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tympan.bundle import FORMAT_VERSION, Bundle, load_bundle
from tympan.errors import BundleError
from tympan.features import FrontendConfig
from tympan.models import build_model


def make_bundle() -> Bundle:
    torch.manual_seed(0)
    model = build_model("cnn", n_classes=3, width=4).eval()
    return Bundle(
        model=model, arch="cnn", arch_params={"width": 4}, classes=["a", "b", "c"],
        frontend=FrontendConfig(clip_seconds=1.0), temperature=1.7,
        ood={"score": "energy", "temperature": 1.0, "threshold": -3.2},
        metrics={"accuracy": 0.5}, provenance={"seed": 0},
    )


def test_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    b = make_bundle()
    with torch.no_grad():
        b.model(torch.randn(4, 1, 64, 51))  # any forward; eval mode keeps BN stats
    b.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["bundle.json", "model.safetensors"]
    loaded = load_bundle(tmp_path / "m")
    x = torch.randn(2, 1, 64, 51)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), b.model(x), rtol=0, atol=0)
    assert loaded.classes == b.classes and loaded.frontend == b.frontend
    assert loaded.temperature == 1.7 and loaded.ood["threshold"] == -3.2
    assert json.loads((tmp_path / "m" / "bundle.json").read_text())["format_version"] == FORMAT_VERSION


def test_overwrite_is_atomic_and_complete(tmp_path: Path) -> None:
    b = make_bundle()
    b.save(tmp_path / "m")
    b.replace(temperature=2.5).save(tmp_path / "m")
    assert load_bundle(tmp_path / "m").temperature == 2.5
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary folders left


def test_bad_bundles_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle directory"):
        load_bundle(tmp_path / "missing")
    b = make_bundle()
    d = b.save(tmp_path / "m")
    meta = json.loads((d / "bundle.json").read_text())

    (d / "bundle.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(BundleError, match="format version 99 is not supported"):
        load_bundle(d)

    (d / "bundle.json").write_text(json.dumps({**meta, "architecture": {"name": "nope", "params": {}}}))
    with pytest.raises(BundleError, match="unknown architecture 'nope'"):
        load_bundle(d)

    (d / "bundle.json").write_text(json.dumps({**meta, "classes": ["a", "b"]}))
    with pytest.raises(BundleError, match=r"fc.weight: expected \(2, 32\), found \(3, 32\)"):
        load_bundle(d)

    (d / "bundle.json").write_text(json.dumps(meta))
    state = load_file(str(d / "model.safetensors"))
    del state["fc.bias"]
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(BundleError, match="missing fc.bias"):
        load_bundle(d)

    (d / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(d)


def test_saved_bundle_is_readable_by_others(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        d = make_bundle().save(tmp_path / "m")
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.stat().st_mode) == 0o755
    assert stat.S_IMODE((d / "bundle.json").stat().st_mode) == 0o644
