"""The batch job sharded over files on Modal: one command, results merged into one table.

    modal volume create tympan-field-data
    modal volume put tympan-field-data ./field-archive archive        # the recordings, once
    modal run tympan/batch/modal_app.py --folder archive --out results.parquet --shards 32

:func:`list_files` scans the folder on the Volume (the same scan as ``tympan predict``),
:func:`shard_files` splits the files into shards of about equal size, ``process_shard.map``
runs :func:`tympan.batch.run_batch` on each shard in its own container (decode + features
on its CPUs, the network batched on its GPU), and the rows come back and are merged here, in
file order, into one table (``--out``: .csv or .parquet) plus ``--summary`` (one row per file).
Modal does the scheduling, retries and scale-out; there is no scheduler here. The model is
the shipped bundle, or the folder ``TYMPAN_MODAL_BUNDLE`` names when running (copied into the
image). Knobs are the constants below.

Rows travel back as Python objects: about 200 bytes per window, 150 MB for 1,000 hours at the
default hop, which Modal's result transport handles; for larger archives run several commands
over sub-folders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import modal

# --------------------------------------------------------------------- deployment knobs
APP_NAME = "tympan-batch"
DATA_VOLUME = "tympan-field-data"
DATA_ROOT = "/data"
GPU: str | None = "T4"  # None: CPU containers only
CPU = 4.0  # cores per container: decoding and features run in JOBS worker processes
JOBS = 3
MAX_CONTAINERS = 32
TIMEOUT = 3600  # seconds per shard
RETRIES = 2
PYTHON_VERSION = "3.11"
TORCH_VERSION = "2.13.0"
# ---------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
REMOTE_SRC = "/opt/tympan/src"
REMOTE_BUNDLE = "/opt/tympan/bundle"
LOCAL_BUNDLE = os.environ.get("TYMPAN_MODAL_BUNDLE")
_IGNORE = [".git", ".venv", "**/__pycache__", "**/*.pyc", "runs", "outputs", ".pytest_cache",
           "**/.ipynb_checkpoints", "*.egg-info", "build", "dist"]

image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .pip_install(f"torch=={TORCH_VERSION}")
    .add_local_dir(REPO, REMOTE_SRC, copy=True, ignore=_IGNORE)
    .run_commands(f"pip install '{REMOTE_SRC}'")
)
if LOCAL_BUNDLE:
    image = image.add_local_dir(LOCAL_BUNDLE, REMOTE_BUNDLE, copy=True).env({"TYMPAN_BUNDLE": REMOTE_BUNDLE})

app = modal.App(APP_NAME, image=image)
volume = modal.Volume.from_name(DATA_VOLUME, create_if_missing=True)


def _data_root() -> Path:
    """Where the Volume is mounted (``TYMPAN_MODAL_DATA_ROOT`` overrides it, e.g. to run locally)."""
    return Path(os.environ.get("TYMPAN_MODAL_DATA_ROOT", DATA_ROOT))


def shard_files(files: list[tuple[str, int]], n_shards: int) -> list[list[str]]:
    """Split ``(name, bytes)`` into at most ``n_shards`` shards of about equal bytes, order kept inside."""
    n_shards = max(1, min(int(n_shards), len(files)))
    loads = [0] * n_shards
    shards: list[list[str]] = [[] for _ in range(n_shards)]
    for name, size in sorted(files, key=lambda f: -f[1]):  # largest first onto the lightest shard
        i = loads.index(min(loads))
        shards[i].append(name)
        loads[i] += max(1, size)
    return [sorted(s) for s in shards if s]


@app.function(volumes={DATA_ROOT: volume}, timeout=600)
def list_files(folder: str) -> dict[str, Any]:
    """The recordings under ``folder`` on the Volume: names relative to the Volume, with sizes."""
    from tympan.batch.sources import scan_sources

    root = _data_root()
    scan = scan_sources([root / folder])
    files = [(str(s.path.relative_to(root)), s.path.stat().st_size if s.path.exists() else 0) for s in scan.sources]
    return {"files": files, "skipped": scan.skipped, "hidden": scan.hidden}


@app.function(volumes={DATA_ROOT: volume}, gpu=GPU, cpu=CPU, timeout=TIMEOUT, max_containers=MAX_CONTAINERS,
              retries=RETRIES)
def process_shard(files: list[str], hop: float | None = None, jobs: int | None = None) -> dict[str, Any]:
    """Run the batch engine on ``files`` (relative to the Volume); return their rows and summaries."""
    import torch

    from tympan.batch import BatchOptions, Source, run_batch
    from tympan.batch.tables import summary_row, window_rows
    from tympan.bundle import resolve_bundle_dir
    from tympan.inference import Predictor

    device = os.environ.get("TYMPAN_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    predictor = Predictor(resolve_bundle_dir(None), device, max_seconds=None)
    root = _data_root()
    sources = [Source(root / f, f, Path(f).name, Path(f).parts[1] if len(Path(f).parts) > 2 else None)
               for f in files]
    rows: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    opts = BatchOptions(hop_s=hop, jobs=JOBS if jobs is None else int(jobs))
    for res in run_batch(predictor, sources, opts):
        r = window_rows(res, predictor)
        rows.extend(r)
        summaries.append(summary_row(res, r))
    return {"rows": rows, "summaries": summaries}


def merge_results(results: list[dict[str, Any]], out: str | Path, summary: str | Path | None = None) -> int:
    """Write every shard's rows into one table at ``out`` (.csv or .parquet), files in order; rows written."""
    from tympan.batch.tables import write_summary, write_window_table

    rows = [r for res in results for r in res["rows"]]
    rows.sort(key=lambda r: (r["file"], r["start_s"]))
    write_window_table(Path(out), rows)
    if summary is not None:
        write_summary(Path(summary), [s for res in results for s in res["summaries"]])
    return len(rows)


@app.local_entrypoint()
def main(folder: str, out: str = "results.parquet", summary: str = "", shards: int = 16,
         hop: float = 0.0) -> None:
    listing = list_files.remote(folder)
    parts = shard_files([tuple(f) for f in listing["files"]], shards)
    print(f"{len(listing['files'])} recordings in {len(parts)} shards "
          f"({len(listing['skipped'])} non-audio, {listing['hidden']} hidden skipped)")
    results = list(process_shard.map(parts, kwargs={"hop": hop or None}))
    n = merge_results(results, out, summary or None)
    failed = [s for r in results for s in r["summaries"] if s["status"] != "ok"]
    print(f"{n} windows -> {out}; {len(failed)} recordings could not be analysed")
    for s in failed[:20]:
        print(f"  {s['file']}: {s['error']}")
