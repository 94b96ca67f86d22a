"""Start-up: ``tympan --help``, ``tympan predict one.wav`` and ``tympan serve`` (until ``/ready``),
each a fresh process, against ``python -c "import torch"`` measured in the same rounds.

The commands run interleaved, round by round (a busy machine slows them alike), on a copy of
the shipped bundle in a temporary folder: ``predict (cold)`` first removes the copy's runtime
cache (``.tympan-cache/``: the exported ONNX graph and the backend choice), so it exports and
times the backends as a first start does; the other runs find the entry. Per command: median
wall seconds and CPU seconds (user + system, the process and the children it waited for), and
the median over rounds of (command - ``import torch``) measured in the same round: the target
is at most 1 s of wall time on top of ``import torch``.

    python benchmarks/startup.py [--rounds 5]
    python benchmarks/readme_tables.py     # the README table from benchmarks/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import REPO, cpu_model  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "startup.json"
SCHEMA = "tympan.benchmarks.startup/1"
TARGET_OVER_TORCH_S = 1.0
TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_cpu_s(pid: int) -> float:
    """User + system seconds of a running process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run_once(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall and CPU seconds of ``cmd`` to its exit (it must exit 0)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def serve_once(cmd: list[str], env: dict[str, str], port: int, timeout: float = 300.0) -> dict[str, float]:
    """Wall and CPU seconds from launching ``tympan serve`` to its first 200 on ``/ready``."""
    start = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < timeout:
            if proc.poll() is not None:
                raise SystemExit(f"tympan serve exited {proc.returncode} before /ready")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                    if r.status == 200:
                        wall = time.perf_counter() - start
                        return {"wall_s": wall, "cpu_s": _proc_cpu_s(proc.pid)}
            except OSError:
                pass
            time.sleep(0.02)
        raise SystemExit(f"tympan serve not ready in {timeout:.0f} s")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summarise(samples: list[dict[str, float]], reference: list[dict[str, float]]) -> dict[str, float]:
    return {
        "wall_s": round(statistics.median(s["wall_s"] for s in samples), 3),
        "cpu_s": round(statistics.median(s["cpu_s"] for s in samples), 3),
        "wall_over_torch_s": round(statistics.median(s["wall_s"] - r["wall_s"] for s, r in zip(samples, reference)), 3),
        "cpu_over_torch_s": round(statistics.median(s["cpu_s"] - r["cpu_s"] for s, r in zip(samples, reference)), 3),
        "rounds": len(samples),
    }


def render_table(doc: dict) -> str:
    """The README table from startup.json."""
    ref = doc["commands"]["import torch"]
    lines = ["| command | wall s | CPU s | wall over `import torch` s | CPU over `import torch` s | ≤ 1 s over torch |",
             "|---|---:|---:|---:|---:|---|"]
    for name, r in doc["commands"].items():
        if name == "import torch":
            lines.append(f"| `python -c \"import torch\"` (reference) | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | | | |")
            continue
        met = "met" if r["wall_over_torch_s"] <= doc["target_over_torch_s"] else "missed"
        lines.append(f"| `{name}` | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['wall_over_torch_s']:+.2f} | "
                     f"{r['cpu_over_torch_s']:+.2f} | {met} |")
    m = doc["machine"]
    lines += ["", f"Medians of {ref['rounds']} interleaved rounds, each command a fresh process; machine: {m['cpu']}, "
                  f"{m['cores']} cores, load average {m['load_start']} at the start and {m['load_end']} at the end; "
                  f"{doc['generated']}."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--table", action="store_true", help="print the README table from the results file and exit")
    args = ap.parse_args()
    if args.table:
        print(render_table(json.loads(args.out.read_text())))
        return
    load = os.getloadavg()[0]
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="tympan-startup-bench-") as tmp:
        tmp = Path(tmp)
        bundle = tmp / "bundle"
        shutil.copytree(REPO / "tympan" / "assets" / "default", bundle, ignore=shutil.ignore_patterns(".*"))
        # the cold run gets its own copy: removing its cache must not make the warm commands cold too
        # (serve keeps its own entry, one thread per pass; before 2026-12-04 it was re-exported every round)
        cold = tmp / "bundle-cold"
        shutil.copytree(bundle, cold)
        wav = tmp / "one.wav"
        sf.write(wav, (np.random.default_rng(0).standard_normal(80_000) * 0.05).astype(np.float32), 16_000)
        env = {**os.environ, "PYTHONPATH": str(REPO), "TYMPAN_CACHE_DIR": str(tmp / "cache")}
        predict = [py, "-m", "tympan", "predict", str(wav), "--bundle", str(bundle)]
        predict_cold = [py, "-m", "tympan", "predict", str(wav), "--bundle", str(cold)]
        serve = [py, "-m", "tympan", "serve", "--bundle", str(bundle), "--log-level", "warning"]
        commands = {
            "import torch": lambda: run_once([py, "-c", "import torch"], env),
            "tympan --help": lambda: run_once([py, "-m", "tympan", "--help"], env),
            "tympan predict one.wav (cold cache)": lambda: (shutil.rmtree(cold / ".tympan-cache", ignore_errors=True),
                                                          run_once(predict_cold, env))[1],
            "tympan predict one.wav": lambda: run_once(predict, env),
            "tympan serve (to /ready)": lambda: serve_once(serve, env, _free_port()),
        }
        serve_once(serve, env, _free_port())  # the serving entry (one thread per pass) exists before timing
        run_once(predict, env)  # and predict's
        samples: dict[str, list[dict[str, float]]] = {k: [] for k in commands}
        for i in range(args.rounds):
            for name, fn in commands.items():
                samples[name].append(fn())
            print(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]['wall_s']:.2f} s" for k, v in samples.items()),
                  file=sys.stderr)
    ref = samples["import torch"]
    doc = {
        "schema": SCHEMA,
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": f"python benchmarks/startup.py --rounds {args.rounds}",
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_start": round(load, 2), "load_end": round(os.getloadavg()[0], 2)},
        "target_over_torch_s": TARGET_OVER_TORCH_S,
        "commands": {k: summarise(v, ref) for k, v in samples.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(render_table(doc))


if __name__ == "__main__":
    main()
