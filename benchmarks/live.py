"""The live listener (``tympan listen``, ``/stream``): real-time factor per stream on one core,
event latency, and memory over a long simulated stream.

- **Real-time factor**: generated audio (a -50 dBFS noise floor with tone bursts) fed in 0.5 s
  blocks through :class:`tympan.live.listener.Listener` with one torch thread; audio seconds per
  wall second and per CPU second of the process, and the listener's wall as a ratio to bare
  ``Predictor.forward`` on the same windows one at a time (its overhead: windowing, scores,
  detector).
- **Alert latency** (needs ESC-50): fold-5 clips of the shipped model after 3-10 s quiet gaps
  (``benchmarks/events.py``'s recordings), fed in 0.1 s blocks with an ``on = "open"`` rule and
  an ``on = "close"`` rule; for each clip found (an event of its label overlapping its sounding
  part): from the end of the sound to each alert reaching its sink (stream time of the block
  that raised it plus the wall time to the sink). Per hop; the goal is one hop + 100 ms.
- **Memory**: a recording of 100 fold-5 clips after gaps (generated audio without the data)
  repeated and fed as fast as the CPU allows for ``--hours`` of stream time (10 s blocks, an
  event every few seconds); the RSS sampled after each repetition; flat means the slope after
  the first half hour is about zero.

    python benchmarks/live.py [--data-dir ../shared/data/esc50] [--hours 24] [--rtf-seconds 300] [--reuse-memory]
    python benchmarks/readme_tables.py     # the README table from benchmarks/results/live.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, repo_relative  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "live.json"
SCHEMA = "tympan.benchmarks.live/1"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def generated(seconds: float, sr: int, seed: int) -> np.ndarray:
    """A noise floor with a 1-3 s tone burst every 4-12 s (something for the detector to do)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    x = (rng.standard_normal(n) * 10 ** (-50 / 20)).astype(np.float32)
    t = 0
    while True:
        t += int(rng.uniform(4, 12) * sr)
        d = int(rng.uniform(1, 3) * sr)
        if t + d > n:
            return x
        f = rng.uniform(300, 3000)
        x[t : t + d] += (0.3 * np.sin(2 * np.pi * f * np.arange(d) / sr)).astype(np.float32)
        t += d


def bench_rtf(predictor, seconds: float) -> dict:
    from tympan.batch.stream import default_hop
    from tympan.live.listener import Listener

    sr = int(predictor.config.sample_rate)
    x = generated(seconds, sr, 1)
    block = sr // 2
    from tympan.live.listener import _Windower

    win = _Windower(int(predictor.config.clip_samples), default_hop(int(predictor.config.clip_samples)))
    wins = win.add(0, x)[1] + win.finish()[1]
    predictor.forward(np.stack(wins[:2]))  # warm-up
    f0 = time.perf_counter()
    for w in wins:  # one window per pass, as a stream at real-time pace sends them
        predictor.forward(w[None])
    forward = time.perf_counter() - f0
    lis = Listener(predictor, drop=False)
    lis.begin()
    w0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(x), block):
        lis.feed(i, x[i : i + block])
    lis.end()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"audio_s": round(len(x) / sr, 1), "windows": lis.stats.windows, "events": lis.stats.events,
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "rtf_wall": round(len(x) / sr / wall, 1),
            "rtf_cpu": round(len(x) / sr / cpu, 1), "forward_wall_s": round(forward, 2),
            "listener_over_forward": round(wall / forward, 3)}


def bench_latency(predictor, data_dir: Path, hops: list[float], clips: int) -> list[dict]:
    """Per hop: the stream fed in 0.1 s blocks through the listener with two alert rules (``on =
    "open"``, the default, and ``on = "close"``) and a sink that notes when each alert reaches it.
    An alert's latency = stream time of the block that raised it - the sound's end + the wall time
    from that block's arrival to the sink (what a real-time source would see)."""
    from events import build, fold5_clips

    from tympan.live.alerts import AlertManager, AlertRule, _Sink
    from tympan.live.listener import Listener

    class Clock(_Sink):
        def __init__(self) -> None:
            self.got: dict[tuple, float] = {}
            super().__init__("clock", lambda m: None)

        def deliver(self, alert) -> None:
            self.got[(alert.phase, alert.event.label, alert.event.start_s)] = time.perf_counter()

    sr = int(predictor.config.sample_rate)
    chosen = fold5_clips(data_dir)[:: max(1, 400 // clips)][:clips]
    x, truth = build(chosen, sr, seed=5)
    rows = []
    for hop in hops:
        sink = Clock()
        manager = AlertManager([AlertRule("open", sinks=("clock",)), AlertRule("close", on="close", sinks=("clock",))],
                               {"clock": sink})
        raised: dict[tuple, tuple[float, float]] = {}  # (phase, label, start) -> (stream s, block arrival)
        closed: list = []
        now = {"pos": 0.0, "t": 0.0}

        def on_open(e, now=now, raised=raised) -> None:
            raised[("open", e.label, e.start_s)] = (now["pos"], now["t"])

        def on_event(e, now=now, raised=raised, closed=closed) -> None:
            raised[("close", e.label, e.start_s)] = (now["pos"], now["t"])
            closed.append(e)

        lis = Listener(predictor, hop_s=hop, drop=False, on_event=on_event, on_open=on_open, alerts=manager)
        lis.begin()
        block = sr // 10
        for i in range(0, len(x), block):
            now["pos"], now["t"] = min(len(x), i + block) / sr, time.perf_counter()
            lis.feed(i, x[i : i + block])
        lis.end()
        manager.close()
        lat: dict[str, list[float]] = {"open": [], "close": []}
        walls: list[float] = []
        found = 0
        for t in truth:
            hits = [e for e in closed if e.label == t["label"] and e.start_s < t["offset_s"] and e.end_s > t["onset_s"]]
            if not hits:
                continue
            found += 1
            e = min(hits, key=lambda e: e.start_s)
            for phase in ("open", "close"):
                key = (phase, e.label, e.start_s)
                if key in raised and key in sink.got:
                    pos, t_block = raised[key]
                    lat[phase].append(pos - t["offset_s"] + sink.got[key] - t_block)
                    if phase == "open":
                        walls.append(sink.got[key] - t_block)
        q = lambda v, p: round(float(np.percentile(v, p)), 2) if v else None  # noqa: E731
        rows.append({"hop_s": hop, "clips": len(truth), "found": found, "goal_s": round(hop + 0.1, 2),
                     "open_alert_after_end_s": {"median": q(lat["open"], 50), "p90": q(lat["open"], 90),
                                                "max": q(lat["open"], 100)},
                     "close_alert_after_end_s": {"median": q(lat["close"], 50), "p90": q(lat["close"], 90),
                                                 "max": q(lat["close"], 100)},
                     "open_alert_wall_ms": {"median": q([w * 1000 for w in walls], 50),
                                            "max": round(max(walls) * 1000, 1) if walls else None}})
    return rows


def bench_memory(predictor, hours: float, chunk: np.ndarray | None = None) -> dict:
    from tympan.live.listener import Listener

    sr = int(predictor.config.sample_rate)
    lis = Listener(predictor, drop=False, keep_events=False)
    lis.begin()
    block_s = 10
    # a recording repeated (the stream clock goes on): ESC-50 clips after gaps (events every few
    # seconds) when the data is there, else ten minutes of generated audio
    chunk = generated(600, sr, 7) if chunk is None else chunk
    samples, pos, t0 = [], 0, time.perf_counter()
    total = int(hours * 3600 * sr)
    while pos < total:
        for i in range(0, len(chunk), block_s * sr):
            lis.feed(pos, chunk[i : i + block_s * sr])
            pos += len(chunk[i : i + block_s * sr])
        samples.append({"stream_h": round(pos / sr / 3600, 3), "rss_mb": round(rss_mb(), 1)})
    lis.end()
    wall = time.perf_counter() - t0
    warm = samples[min(2, len(samples) - 1)]["rss_mb"]
    h = np.array([x["stream_h"] for x in samples])
    r = np.array([x["rss_mb"] for x in samples])
    later = h >= 0.5
    slope = float(np.polyfit(h[later], r[later], 1)[0]) if later.sum() >= 3 else None
    return {"rss_slope_mb_per_h": None if slope is None else round(slope, 3),"stream_hours": round(pos / sr / 3600, 2), "wall_s": round(wall, 1), "windows": lis.stats.windows,
            "events": lis.stats.events, "rss_after_warmup_mb": warm, "rss_last_mb": samples[-1]["rss_mb"],
            "rss_max_mb": max(s["rss_mb"] for s in samples), "samples": samples,
            "sample_every_stream_s": round(len(chunk) / sr, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="a bundle directory (default: the shipped one)")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "esc50"))
    p.add_argument("--rtf-seconds", type=float, default=300.0)
    p.add_argument("--hours", type=float, default=24.0, help="stream time of the memory run")
    p.add_argument("--clips", type=int, default=24, help="ESC-50 clips of the latency run")
    p.add_argument("--hops", default="2.5,1.0,0.5")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--reuse-memory", action="store_true",
                   help="keep the memory section of --out (from its own command) instead of re-running it")
    args = p.parse_args(argv)

    import torch

    from tympan.bundle import default_bundle_dir
    from tympan.inference import Predictor

    torch.set_num_threads(1)
    bundle = Path(args.bundle) if args.bundle else default_bundle_dir()
    predictor = Predictor(bundle)
    load0 = os.getloadavg()[0]
    rtf = bench_rtf(predictor, args.rtf_seconds)
    data = Path(args.data_dir)
    latency, recording = None, None
    if (data / "meta" / "esc50.csv").is_file():
        latency = bench_latency(predictor, data, [float(h) for h in args.hops.split(",")], args.clips)
        from events import build, fold5_clips

        recording = build(fold5_clips(data)[::4][:100], int(predictor.config.sample_rate), seed=9)[0]
    if args.reuse_memory:
        import json

        old = json.loads(Path(args.out).read_text())
        memory = {**old["memory"], "command": old["memory"].get("command", old["command"])}
    else:
        memory = bench_memory(predictor, args.hours, recording)
    doc = {"schema": SCHEMA, "command": "python benchmarks/live.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "model": {"bundle": repo_relative(bundle), "name": predictor.bundle.name},
           "window_s": predictor.config.clip_samples / predictor.config.sample_rate,
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": 1, "python": platform.python_version(),
                       "load_avg_start": round(load0, 1), "load_avg_end": round(os.getloadavg()[0], 1)},
           "rtf": rtf, "latency": latency, "memory": memory}
    out = Path(args.out)
    from tympan.io import write_json_atomic

    write_json_atomic(out, doc)
    print(f"machine: {doc['machine']}")
    print(f"real time: {rtf['rtf_wall']}x per wall second, {rtf['rtf_cpu']}x per CPU second "
          f"(listener / bare forward = {rtf['listener_over_forward']})")
    for r in latency or []:
        print(f"hop {r['hop_s']:g} s: {r['found']}/{r['clips']} clips; after the sound ends: open alert "
              f"{r['open_alert_after_end_s']} s, close alert {r['close_alert_after_end_s']} s (goal {r['goal_s']} s); "
              f"open alert wall {r['open_alert_wall_ms']} ms")
    print(f"memory: {memory['stream_hours']} h of stream in {memory['wall_s']} s: RSS {memory['rss_after_warmup_mb']} MB "
          f"after warm-up, {memory['rss_last_mb']} MB at the end (max {memory['rss_max_mb']})")
    print(f"wrote {repo_relative(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
