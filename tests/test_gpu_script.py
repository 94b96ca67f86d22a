"""The prepared GPU run (``scripts/gpu_train.py``), rehearsed on the CPU with a tiny run: pack the
feature cache, train two folds in two worker processes from the packed file, and bring back fold
records that assemble into one figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tympan.training.records import assemble, load_records

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_train.py"


def test_gpu_script_packs_trains_from_the_packed_cache_and_returns_fold_records(synthetic_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pack = tmp_path / "cache.tar.xz"
    p = subprocess.run([sys.executable, str(SCRIPT), "pack", "--data-dir", str(synthetic_dir), "--frontend",
                        "default", "--out", str(pack), "--preset", "1"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(SCRIPT), "run", "--cache", str(pack), "--arch", "cnn", "--recipe",
                        "baseline", "--epochs", "1", "--batch-size", "16", "--folds", "1,2", "--parallel", "2",
                        "--threads", "1", "--device", "cpu", "--precision", "fp32", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr + "".join(f.read_text() for f in out.glob("worker*.log"))
    recs = load_records(out / "folds.json")
    assert sorted(x.fold for x in recs) == [1, 2] and {x.precision for x in recs} == {"fp32"}
    fig = assemble(recs)  # two processes, one configuration: one figure
    assert fig["n_folds"] == 2 and fig["recipe"] == "baseline" and fig["epochs"] == 1
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(summary["folds"]) == {"1", "2"}
