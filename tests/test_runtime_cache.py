"""The runtime cache: the exported ONNX graph and the backend choice survive a restart.

A second load of the same bundle exports nothing and times nothing (the graph file is the same
inode with the same mtime); changed weights or library versions rebuild the entry; a corrupt
or forged entry is rebuilt, never served. Real bundles on disk, real ONNX Runtime sessions.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tympan.bundle import Bundle
from tympan.cache import runtime_cache_dir
from tympan.datasets.synthetic import CLASSES
from tympan.features import FrontendConfig
from tympan.inference import Predictor
from tympan.inference import backends as B
from tympan.inference.runtime_cache import BESIDE_BUNDLE, cache_folder
from tympan.models import build_model

pytestmark = pytest.mark.skipif(not B.onnxruntime_available(), reason="onnxruntime/onnx not installed (serve extra)")


def tiny_bundle(seed: int = 0) -> Bundle:
    torch.manual_seed(seed)
    model = build_model("cnn", n_classes=5, width=8).eval()
    return Bundle(model=model, arch="cnn", arch_params={"width": 8}, classes=CLASSES[:5],
                  frontend=FrontendConfig(clip_seconds=1.0), name="tiny")


def entry_files(folder: Path) -> dict[str, Path]:
    return {p.suffix: p for p in folder.iterdir() if p.suffix in (".json", ".onnx")}


def stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def load(source: Bundle | Path, backend: str = "onnx") -> Predictor:
    return Predictor(source, backend=backend, threads=1)


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    return tiny_bundle().save(tmp_path / "tiny")


def test_second_load_reuses_the_exported_graph(bundle_dir: Path) -> None:
    first = load(bundle_dir)
    assert first.backend == "onnx" and first.backend_choice.cache == "miss"
    files = entry_files(bundle_dir / BESIDE_BUNDLE)
    assert set(files) == {".json", ".onnx"}
    before = {k: stamp(p) for k, p in files.items()}
    second = load(bundle_dir)
    assert second.backend == "onnx" and second.backend_choice.cache == "hit"
    assert {k: stamp(p) for k, p in entry_files(bundle_dir / BESIDE_BUNDLE).items()} == before  # not re-exported
    x = (np.random.default_rng(3).standard_normal((4, second.config.clip_samples)) * 0.1).astype(np.float32)
    eager = Predictor(bundle_dir, backend="eager")
    for got, want in zip(second.forward(x), eager.forward(x), strict=True):
        np.testing.assert_allclose(got, want, atol=B.PARITY_ATOL)


def test_auto_choice_and_timings_come_back_from_the_entry(bundle_dir: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = load(bundle_dir, "auto").backend_choice
        second = load(bundle_dir, "auto").backend_choice
    finally:
        torch.set_num_threads(threads)
    assert first.cache == "miss" and second.cache == "hit"
    assert second.name == first.name and second.ms_per_window == first.ms_per_window
    assert "cache: hit" in second.summary()


def test_changed_weights_get_their_own_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TYMPAN_CACHE_DIR", str(tmp_path / "cache"))
    assert load(tiny_bundle(0)).backend_choice.cache == "miss"  # in-memory: the cache folder
    assert load(tiny_bundle(0)).backend_choice.cache == "hit"
    changed = tiny_bundle(0)
    with torch.no_grad():
        next(changed.model.parameters()).add_(0.01)
    p = load(changed)
    assert p.backend_choice.cache == "miss"
    assert len(list(runtime_cache_dir().glob("*.onnx"))) == 2


def test_changed_library_version_rebuilds(bundle_dir: Path) -> None:
    load(bundle_dir)
    meta = entry_files(bundle_dir / BESIDE_BUNDLE)[".json"]
    entry = json.loads(meta.read_text())
    current = entry["identity"]["onnxruntime"]
    entry["identity"]["onnxruntime"] = "1.0.0"
    meta.write_text(json.dumps(entry))
    p = load(bundle_dir)
    assert p.backend_choice.cache == f"stale (onnxruntime 1.0.0 -> {current})"
    assert json.loads(meta.read_text())["identity"]["onnxruntime"] == current
    assert load(bundle_dir).backend_choice.cache == "hit"


def test_corrupt_entries_are_rebuilt_never_served(bundle_dir: Path, tmp_path: Path) -> None:
    load(bundle_dir)
    files = entry_files(bundle_dir / BESIDE_BUNDLE)
    good = files[".onnx"].read_bytes()
    files[".onnx"].write_bytes(good[: len(good) // 2])  # a torn write
    p = load(bundle_dir)
    assert p.backend_choice.cache.startswith("corrupt (") and "sha256" in p.backend_choice.cache
    assert files[".onnx"].read_bytes() == good and load(bundle_dir).backend_choice.cache == "hit"

    files[".json"].write_text("{not json")
    assert load(bundle_dir).backend_choice.cache.startswith("corrupt (")
    assert load(bundle_dir).backend_choice.cache == "hit"

    # a well-formed entry whose graph is another model's: the stored eager outputs expose it
    other = tiny_bundle(1).save(tmp_path / "other")
    load(other)
    foreign = entry_files(other / BESIDE_BUNDLE)[".onnx"].read_bytes()
    entry = json.loads(files[".json"].read_text())
    entry["onnx_sha256"] = hashlib.sha256(foreign).hexdigest()
    files[".onnx"].write_bytes(foreign)
    files[".json"].write_text(json.dumps(entry))
    p = load(bundle_dir)
    assert p.backend_choice.cache.startswith("unusable (") and "disagrees" in p.backend_choice.cache
    x = (np.random.default_rng(4).standard_normal((2, p.config.clip_samples)) * 0.1).astype(np.float32)
    np.testing.assert_allclose(p.forward(x)[1], Predictor(bundle_dir, backend="eager").forward(x)[1],
                               atol=B.PARITY_ATOL)


def test_read_only_bundles_use_the_cache_folder(tmp_path: Path) -> None:
    assert cache_folder(None) == runtime_cache_dir()
    if os.geteuid() == 0:  # root writes anywhere: the permission case cannot be staged
        return
    locked = tiny_bundle().save(tmp_path / "locked")
    locked.chmod(0o555)
    try:
        assert cache_folder(locked) == runtime_cache_dir()
    finally:
        locked.chmod(0o755)
