"""Field archives: ``tympan predict`` and ``diagnose --field-dir`` on long recordings and big folders.

Builds, in a temporary folder (never in the repository):

* a 2-hour 16 kHz recording of held-out ESC-50 fold-5 clips separated by quiet gaps (2-12 s of
  noise 60 dB below full scale), with its ground truth (which clip, where);
* a 30-minute 48 kHz stereo 24-bit WAV built the same way (resampled, two channels);
* a folder of 1,000 ESC-50 clips (symbolic links to the shared copy);

then runs ``tympan predict PATH --out table.csv`` and ``diagnose --field-dir`` (the shipped
bundle, default hop) on each with ``--jobs 1`` and ``2``, each in a fresh process, and measures
wall time, real-time factor (audio seconds / wall seconds), files/s and peak RSS (largest
process, and the whole process tree sampled every 0.1 s). On the 2-hour file it scores the
table against the ground truth: window accuracy (windows lying at least half inside a clip)
and event accuracy (per clip, the label with the highest mean probability over those windows).

    python benchmarks/batch.py [--data-dir ../shared/data/esc50] [--quick]
    python benchmarks/batch.py --table        # the README table from benchmarks/results/batch.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "batch.json"
TARGET_RTF = 500.0
TARGET_RSS_MB = 1024.0


# ------------------------------------------------------------------------------ data
def _clips(data_dir: Path, folds: set[int]) -> list[tuple[Path, str]]:
    with open(data_dir / "meta" / "esc50.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["fold"]) in folds]
    out = []
    for r in rows:
        stem = Path(r["filename"]).stem
        hits = sorted((data_dir / "audio").glob(stem + ".*"))
        if hits:
            out.append((hits[0], r["category"]))
    return out


def build_recording(clips: list[tuple[Path, str]], path: Path, seconds: float, sr: int, channels: int,
                    subtype: str, seed: int) -> list[dict]:
    """Clips in random order with quiet gaps, written block by block; returns the ground truth."""
    import soxr

    rng = np.random.default_rng(seed)
    truth = []
    total = int(seconds * sr)
    with sf.SoundFile(path, "w", sr, channels, subtype) as f:
        written = 0
        while written < total:
            gap = int(rng.uniform(2.0, 12.0) * sr)
            noise = (rng.standard_normal(gap) * 10 ** (-60 / 20)).astype(np.float32)
            clip, label = clips[rng.integers(len(clips))]
            y, csr = sf.read(clip, dtype="float32")
            if csr != sr:
                y = soxr.resample(y, csr, sr, quality="HQ")
            y = np.concatenate([noise, y])[: total - written]
            start = written + gap
            if start < written + len(y):
                truth.append({"start_s": start / sr, "end_s": (written + len(y)) / sr, "label": label,
                              "clip": clip.name})
            block = y[:, None] * np.asarray([1.0, 0.8][:channels], np.float32)[None, :] if channels > 1 else y
            f.write(block)
            written += len(y)
    return truth


def build_folder(clips: list[tuple[Path, str]], dest: Path, n: int) -> None:
    dest.mkdir(parents=True)
    for i, (p, _) in enumerate(clips[:n]):
        sub = dest / f"site{i % 4}"
        sub.mkdir(exist_ok=True)
        (sub / p.name).symlink_to(p.resolve())


# -------------------------------------------------------------------------- measuring
def _tree_rss_kb(pid: int) -> int:
    """Summed VmRSS of ``pid`` and its descendants (Linux /proc)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def measure(cmd: list[str], env: dict) -> dict:
    """Run ``cmd`` in a fresh wrapper process; wall time, exit code, peak RSS (largest, tree)."""
    wrapper = ("import resource, subprocess, sys, json; r = subprocess.run(sys.argv[1:]); "
               "print(json.dumps({'rc': r.returncode, 'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *cmd], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss_kb(proc.pid))
            stop.wait(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    th.join()
    last = json.loads(out.strip().splitlines()[-1])
    if last["rc"] not in (0, 1):
        print(err[-3000:], file=sys.stderr)
    out = {"wall_s": round(wall, 2), "exit_code": last["rc"], "peak_rss_mb": round(last["maxrss_kb"] / 1024, 1),
           "peak_tree_rss_mb": round(peak[0] / 1024, 1)}
    import re

    m = re.search(r"audio in ([0-9.]+) s", err)  # tympan predict's own timing: without start-up
    if m:
        out["engine_wall_s"] = float(m.group(1))
    return out


def score(table: Path, truth: list[dict]) -> dict:
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    starts = np.asarray([float(r["start_s"]) for r in rows])
    ends = np.asarray([float(r["end_s"]) for r in rows])
    labels = [r["label"] for r in rows]
    probs = np.asarray([float(r["probability"]) for r in rows])
    win_ok = win_n = ev_ok = ev_n = 0
    for ev in truth:
        if ev["end_s"] - ev["start_s"] < 2.5:
            continue
        overlap = np.minimum(ends, ev["end_s"]) - np.maximum(starts, ev["start_s"])
        inside = np.flatnonzero(overlap >= 0.5 * (ends - starts))
        if not len(inside):
            continue
        win_n += len(inside)
        win_ok += sum(labels[i] == ev["label"] for i in inside)
        score_by: dict[str, float] = {}
        for i in inside:  # mean top-1 probability per label over the clip's windows
            score_by[labels[i]] = score_by.get(labels[i], 0.0) + probs[i] / len(inside)
        ev_n += 1
        ev_ok += max(score_by, key=score_by.get) == ev["label"]
    return {"events": ev_n, "event_accuracy": round(ev_ok / max(ev_n, 1), 4),
            "windows_scored": win_n, "window_accuracy": round(win_ok / max(win_n, 1), 4)}


# ----------------------------------------------------------------------------- tables
def render_table(results: dict) -> str:
    """The README's markdown table from batch.json."""
    lines = ["| input | command | jobs | audio | wall s | × real time (after start-up) | files/s | peak RSS MB (largest / tree) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["runs"]:
        after = f" ({r['engine_rtf']:.0f})" if r.get("engine_rtf") else ""
        lines.append(f"| {r['input']} | `{r['command']}` | {r['jobs']} | {r['audio_s'] / 3600:.2f} h | {r['wall_s']:.1f} "
                     f"| {r['rtf']:.0f}{after} | {r['files_per_s']:.1f} | {r['peak_rss_mb']:.0f} / {r['peak_tree_rss_mb']:.0f} |")
    acc = results.get("accuracy_2h")
    if acc:
        lines.append("")
        lines.append(f"Event accuracy on the 2-hour recording ({acc['events']} fold-5 clips between quiet gaps): "
                     f"**{acc['event_accuracy']:.1%}**; window accuracy {acc['window_accuracy']:.1%} "
                     f"({acc['windows_scored']} windows at least half inside a clip).")
    lines.append("")
    lines.append(f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, load average "
                 f"{results['machine']['load_start']} at the start; {results['generated']}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TYMPAN_ESC50_DIR", REPO.parent / "shared/data/esc50")))
    ap.add_argument("--quick", action="store_true", help="10-minute, 5-minute and 100-file inputs (a smoke run)")
    ap.add_argument("--jobs", default="1,2")
    ap.add_argument("--skip-diagnose", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the README table from batch.json and exit")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.table:
        print(render_table(json.loads(args.out.read_text())))
        return
    load = os.getloadavg()[0]
    held = _clips(args.data_dir, {5})
    every = _clips(args.data_dir, {1, 2, 3, 4, 5})
    hours, half, n_files = (600.0, 300.0, 100) if args.quick else (7200.0, 1800.0, 1000)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    runs = []
    with tempfile.TemporaryDirectory(prefix="tympan-batch-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        long = tmp / "long_2h_16k.wav"
        truth = build_recording(held, long, hours, 16_000, 1, "PCM_16", seed=5)
        stereo = tmp / "stereo_30min_48k_24bit.wav"
        build_recording(held, stereo, half, 48_000, 2, "PCM_24", seed=6)
        rng = np.random.default_rng(7)
        order = [every[i] for i in rng.permutation(len(every))]
        folder = tmp / "folder"
        build_folder((order * (n_files // len(order) + 1))[:n_files] if n_files > len(order) else order, folder, n_files)
        (tmp / "truth.json").write_text(json.dumps(truth))
        print(f"inputs built in {time.perf_counter() - t0:.0f} s in {tmp}", file=sys.stderr)
        inputs = [(f"{hours / 3600:.3g}-h 16 kHz mono", long, hours, 1),
                  (f"{half / 60:g}-min 48 kHz stereo 24-bit", stereo, half, 1),
                  (f"{n_files}-file folder (5-s clips)", folder, n_files * 5.0, n_files)]
        accuracy = None
        for label, path, audio_s, files in inputs:
            for jobs in [int(j) for j in args.jobs.split(",")]:
                commands = [("predict", [sys.executable, "-m", "tympan", "predict", str(path), "--out",
                                         str(tmp / "t.csv"), "--jobs", str(jobs)])]
                if not args.skip_diagnose:
                    src = path
                    if path.is_file():  # diagnose takes a folder
                        src = tmp / f"dir-{path.stem}"
                        src.mkdir(exist_ok=True)
                        if not (src / path.name).exists():
                            (src / path.name).symlink_to(path)
                    commands.append(("diagnose", [sys.executable, "-m", "tympan", "diagnose", "--field-dir", str(src),
                                                  "--out", str(tmp / "rep"), "--quiet", "--jobs", str(jobs)]))
                for name, cmd in commands:
                    m = measure(cmd, env)
                    r = {"input": label, "command": f"tympan {name}", "jobs": jobs, "audio_s": audio_s,
                         "files": files, **m, "rtf": round(audio_s / m["wall_s"], 1),
                         "files_per_s": round(files / m["wall_s"], 2)}
                    if "engine_wall_s" in m:
                        r["engine_rtf"] = round(audio_s / max(m["engine_wall_s"], 1e-9), 1)
                    runs.append(r)
                    print(json.dumps(r), file=sys.stderr)
                    if name == "predict" and path == long and accuracy is None:
                        accuracy = score(tmp / "t.csv", truth)
                        print(json.dumps(accuracy), file=sys.stderr)
    results = {
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_start": round(load, 2), "load_end": round(os.getloadavg()[0], 2)},
        "bundle": "tympan/assets/default (mn04, 32 kHz front end), default hop (50 % overlap)",
        "targets": {"predict_rtf": TARGET_RTF, "peak_rss_mb": TARGET_RSS_MB, "diagnose": "at least half of predict"},
        "quick": bool(args.quick),
        "runs": runs,
        "accuracy_2h": accuracy,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(render_table(results))


if __name__ == "__main__":
    main()
