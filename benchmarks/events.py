"""Sound events on long recordings: event-based precision / recall / F1 (onset within ±1 s).

Builds long recordings (in memory, never in the repository) from the shipped model's held-out
ESC-50 fold-5 clips: each clip preceded by a quiet gap (3-10 s) over a noise floor 50 dB below
full scale running through the whole recording. The ground truth of a clip is its sounding part
(ESC-50 pads clips with digital silence): from the first to the last 20 ms frame within 30 dB of
the clip's loudest frame. Windows go through the one prediction path (``Predictor.forward``,
level features, ``tympan.inference.events.window_scores``) and the one event definition at
several hops and settings; events are scored with ``tympan.stats.event_scores`` (each reference
event matched at most once, by label and onset, collar ±1 s; offsets not scored).

    python benchmarks/events.py [--data-dir ../shared/data/esc50] [--clips 400] [--recordings 8]
    python benchmarks/readme_tables.py     # the README table from benchmarks/results/events.json
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model, repo_relative  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "events.json"
SCHEMA = "tympan.benchmarks.events/1"
COLLAR = 1.0
#: a second, wide collar: how much of the gap to a perfect score is onset placement, not detection
WIDE_COLLAR = 2.5
#: (name, settings): the defaults, no hysteresis, a merge gap, a stricter rule, and a sweep of
#: overlap_s (where boundaries sit inside the firing windows; default half a window)
SETTINGS = [
    ("defaults (on 0.5, off 0.3, overlap W/2)", {}),
    ("no hysteresis (off = on = 0.5)", {"off": 0.5}),
    ("merge gap 2 s", {"merge_gap_s": 2.0}),
    ("on 0.7, off 0.4, min duration 1 s", {"on": 0.7, "off": 0.4, "min_duration_s": 1.0}),
    ("overlap 1.5 s", {"overlap_s": 1.5}),
    ("overlap 1.0 s", {"overlap_s": 1.0}),
    ("overlap 0.5 s", {"overlap_s": 0.5}),
]


def fold5_clips(data_dir: Path) -> list[tuple[Path, str]]:
    with open(data_dir / "meta" / "esc50.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["fold"]) == 5]
    out = []
    for r in rows:
        hits = sorted((data_dir / "audio").glob(Path(r["filename"]).stem + ".*"))
        if hits:
            out.append((hits[0], r["category"]))
    return out


def sounding(y: np.ndarray, sr: int) -> tuple[float, float] | None:
    """First and last 20 ms frame within 30 dB of the loudest one (None: silent clip)."""
    hop = sr // 50
    n = len(y) // hop
    if n == 0:
        return None
    rms = np.sqrt(np.mean(y[: n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1))
    if rms.max() <= 1e-6:
        return None
    on = np.flatnonzero(rms >= rms.max() * 10 ** (-30 / 20))
    return on[0] * hop / sr, (on[-1] + 1) * hop / sr


def build(clips: list[tuple[Path, str]], sr: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    """One recording of ``clips`` with quiet gaps over a -50 dBFS noise floor, and its truth."""
    rng = np.random.default_rng(seed)
    parts, truth, t = [], [], 0
    for path, label in clips:
        gap = int(rng.uniform(3.0, 10.0) * sr)
        y, csr = sf.read(path, dtype="float32")
        if y.ndim > 1:
            y = y.mean(axis=1)
        if csr != sr:
            import soxr

            y = soxr.resample(y, csr, sr)
        s = sounding(y, sr)
        if s is not None:
            truth.append({"label": label, "onset_s": (t + gap) / sr + s[0], "offset_s": (t + gap) / sr + s[1],
                          "clip": path.name})
        parts += [np.zeros(gap, np.float32), y]
        t += gap + len(y)
    tail = int(5.0 * sr)
    parts.append(np.zeros(tail, np.float32))
    x = np.concatenate(parts)
    x += (rng.standard_normal(len(x)) * 10 ** (-50 / 20)).astype(np.float32)
    return x, truth


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "esc50")
    p.add_argument("--bundle", type=Path, default=REPO / "tympan" / "assets" / "default")
    p.add_argument("--clips", type=int, default=400, help="fold-5 clips used (of 400)")
    p.add_argument("--recordings", type=int, default=8)
    p.add_argument("--hops", default="2.5,1.0,0.5")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    import torch

    from tympan.audio import frame_windows
    from tympan.inference import Predictor
    from tympan.inference.events import EventConfig, detect_events, window_scores
    from tympan.stats.background import level_features
    from tympan.stats.event_scores import event_scores

    torch.set_num_threads(1)
    pred = Predictor(args.bundle)
    sr, n = pred.config.sample_rate, pred.config.clip_samples
    clips = fold5_clips(args.data_dir)
    if not clips:
        raise SystemExit(f"no fold-5 clips under {args.data_dir}")
    order = np.random.default_rng(0).permutation(len(clips))[: args.clips]
    groups = np.array_split(order, args.recordings)
    recs = [build([clips[i] for i in g], sr, seed=k) for k, g in enumerate(groups)]
    audio_s = sum(len(x) for x, _ in recs) / sr
    reference = [(k, t["label"], t["onset_s"], t["offset_s"]) for k, (_, truth) in enumerate(recs) for t in truth]
    rows = []
    for hop_s in [float(h) for h in args.hops.split(",")]:
        hop = int(round(hop_s * sr))
        scored, t0 = [], time.perf_counter()
        for x, _ in recs:
            wins, starts = frame_windows(x, n, hop)
            emb, logits = pred.forward(wins)
            sc = window_scores(logits, pred.params, embeddings=emb, levels=level_features(wins, sr))
            s = starts / sr
            scored.append((s, np.minimum(s + n / sr, len(x) / sr), sc))
        wall = time.perf_counter() - t0
        for name, over in SETTINGS:
            cfg = EventConfig.from_dict(over)
            est = []
            for k, (s, e, sc) in enumerate(scored):
                est += [(k, ev.label, ev.start_s, ev.end_s)
                        for ev in detect_events(s, e, sc.probabilities, pred.classes, cfg, scores=sc, hop_s=hop_s)]
            m = event_scores(reference, est, collar=COLLAR)
            wide = event_scores(reference, est, collar=WIDE_COLLAR)
            rows.append({"hop_s": hop_s, "setting": name, "settings": {**cfg.default.__dict__, "overlap_s": cfg.overlap_s}, "reference_events": len(reference),
                         "estimated_events": len(est), "tp": m.tp, "fp": m.fp, "fn": m.fn,
                         "precision": round(m.precision, 4), "recall": round(m.recall, 4), "f1": round(m.f1, 4),
                         "macro_f1": round(m.macro_f1, 4), f"f1_collar_{WIDE_COLLAR:g}s": round(wide.f1, 4),
                         "forward_wall_s": round(wall, 1)})
            print(f"hop {hop_s:>4} s  {name:<36} P {m.precision:.3f}  R {m.recall:.3f}  F1 {m.f1:.3f}  "
                  f"F1 at ±{WIDE_COLLAR:g} s {wide.f1:.3f} (macro {m.macro_f1:.3f}; {len(est)} estimated, "
                  f"{len(reference)} reference)", flush=True)
    doc = {"schema": SCHEMA, "model": {"bundle": repo_relative(args.bundle), "name": pred.bundle.name
                                       if hasattr(pred.bundle, "name") else "default", "version": pred.version},
           "data": {"clips": len(order), "fold": 5, "recordings": len(recs), "audio_hours": round(audio_s / 3600, 3),
                    "gaps_s": [3.0, 10.0], "noise_floor_dbfs": -50, "truth": "sounding part: 20 ms frames within 30 dB of the loudest"},
           "metric": {"collar_s": COLLAR, "wide_collar_s": WIDE_COLLAR, "offsets_scored": False, "matching": "per label and recording, one-to-one"},
           "rows": rows, "machine": {"cpu": cpu_model(), "python": platform.python_version(), "threads": 1},
           "command": "python benchmarks/events.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from tympan.io import write_json_atomic

    write_json_atomic(args.out, doc)
    print(f"wrote {repo_relative(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
