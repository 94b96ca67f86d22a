"""The Modal batch job: its functions run here (no Modal account), sharded, merged into one table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

modal = pytest.importorskip("modal")
pytestmark = pytest.mark.filterwarnings("ignore:The .* function is executing locally:UserWarning")

from tympan.batch.tables import read_window_table  # noqa: E402
from tympan.bundle import Bundle  # noqa: E402
from tympan.cli import main  # noqa: E402
from tympan.features import FrontendConfig  # noqa: E402
from tympan.models import build_model  # noqa: E402


def test_sharded_modal_job_runs_locally_and_matches_tympan_predict(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tympan.batch import modal_app as m

    torch.manual_seed(0)
    Bundle(model=build_model("cnn", n_classes=3, width=8).eval(), arch="cnn", arch_params={"width": 8},
                    classes=["a", "b", "c"], frontend=FrontendConfig(clip_seconds=1.0)).save(tmp_path / "bundle")
    volume = tmp_path / "volume"
    folder = volume / "archive"
    rng = np.random.default_rng(0)
    for i, site in enumerate(["s1", "s1", "s2", "s2", "s2"]):
        (folder / site).mkdir(parents=True, exist_ok=True)
        sf.write(folder / site / f"r{i}.wav", (rng.standard_normal(16000 * (2 + i)) * 0.1).astype(np.float32), 16000)
    (folder / "s2" / "bad.wav").write_text("not audio")
    monkeypatch.setenv("TYMPAN_BUNDLE", str(tmp_path / "bundle"))
    monkeypatch.setenv("TYMPAN_DEVICE", "cpu")
    monkeypatch.setenv("TYMPAN_MODAL_DATA_ROOT", str(volume))

    assert isinstance(m.app, modal.App) and isinstance(m.process_shard, modal.Function)
    listing = m.list_files.local("archive")
    assert len(listing["files"]) == 6
    shards = m.shard_files([tuple(f) for f in listing["files"]], 3)
    assert len(shards) == 3 and sorted(f for s in shards for f in s) == sorted(f for f, _ in listing["files"])
    results = [m.process_shard.local(s, jobs=1) for s in shards]  # what .map runs in each container
    n = m.merge_results(results, tmp_path / "modal.parquet", tmp_path / "modal-summary.csv")
    merged = read_window_table(tmp_path / "modal.parquet")
    assert n == len(merged) > 0
    failed = [s for r in results for s in r["summaries"] if s["status"] != "ok"]
    assert [s["file"] for s in failed] == ["archive/s2/bad.wav"]

    # the same rows as `tympan predict` on the folder
    assert main(["predict", str(folder), "--bundle", str(tmp_path / "bundle"), "--quiet",
                 "--out", str(tmp_path / "local.parquet"), "--max-failed-share", "0.5"]) == 0
    local = read_window_table(tmp_path / "local.parquet")
    key = lambda r: (r["file"].split("archive/")[1], r["start_s"])  # noqa: E731
    assert sorted(map(key, merged)) == sorted(map(key, local))
    by = {key(r): r for r in local}
    for r in merged:
        assert r["label"] == by[key(r)]["label"]
        assert r["probability"] == pytest.approx(by[key(r)]["probability"], abs=1e-6)
