"""Training-step cost per architecture, precision, torch.compile and batch size, side by side.

torch.compile is timed on the reference variant (batch 32, fp32) only: compiling costs minutes
per variant on two cores. One training step is what the loop does per batch: forward, label-smoothed cross entropy,
backward and an AdamW step, on inputs of the architecture's front end (mn04: 128x500
EfficientAT log-mels; cnn: 64x251), channels_last as in training. The variants of one
architecture are timed interleaved step by step (a busy machine slows them alike) after their
warm-up (which for ``compile`` includes the compilation, reported apart), and an epoch is
estimated as ``ceil(1600 / batch)`` steps (ESC-50's four training folds). ``bf16`` runs under
``torch.autocast("cpu", dtype=torch.bfloat16)``; on a CPU without AVX512-BF16/AMX oneDNN
emulates it, which the table shows. Writes ``benchmarks/results/train_speed.json``; the README
table is generated from it (``benchmarks/readme_tables.py``).

    python benchmarks/train_speed.py --steps 6            # all variants
    python benchmarks/train_speed.py --archs cnn --no-compile --steps 3
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from _machine import cpu_model
from tympan.features import FrontendConfig
from tympan.io import write_json_atomic
from tympan.models import build_model, get_spec
from tympan.training.loop import cpu_has_bf16

RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"
TRAIN_CLIPS = 1600


def make_step(arch: str, batch: int, precision: str, compiled: bool) -> tuple[Any, float]:
    """A closure running one training step, and the seconds its first call took."""
    torch.manual_seed(0)
    fe = FrontendConfig.from_spec(get_spec(arch).frontend)
    model = build_model(arch, n_classes=50).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    x = torch.randn(batch, 1, fe.n_mels, fe.n_frames).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 50, (batch,))
    fwd = torch.compile(model) if compiled else model

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = fwd(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    return step, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="mn04,cnn")
    p.add_argument("--batches", default="32,128")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (batch 32, fp32)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant (after 1 warm-up step)")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    for arch in args.archs.split(","):
        variants = [(b, pr, False) for b in map(int, args.batches.split(",")) for pr in args.precisions.split(",")]
        if not args.no_compile:  # compiling is minutes per variant on 2 cores: the reference variant only
            variants.append((32, "fp32", True))
        steps, first = {}, {}
        for v in variants:
            try:
                steps[v], first[v] = make_step(arch, *v)
            except Exception as exc:  # a variant that cannot run here (e.g. no compiler for inductor)
                print(f"{arch} {v}: cannot run ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
        times: dict[Any, list[float]] = {v: [] for v in steps}
        for _ in range(args.steps):
            for v, step in steps.items():  # interleaved: each round visits every variant once
                t0 = time.perf_counter()
                step()
                times[v].append(time.perf_counter() - t0)
        ref = statistics.median(times[(32, "fp32", False)]) if (32, "fp32", False) in times else None
        for (batch, precision, compiled), ts in times.items():
            med = statistics.median(ts)
            per_clip = med / batch
            rows.append({
                "arch": arch, "batch": batch, "precision": precision, "compile": compiled,
                "step_seconds": round(med, 4), "ms_per_clip": round(1000 * per_clip, 2),
                "epoch_seconds": round(med * math.ceil(TRAIN_CLIPS / batch), 1),
                "vs_fp32_batch32": None if ref is None else round(per_clip / (ref / 32), 3),
                "first_step_seconds": round(first[(batch, precision, compiled)], 2), "steps": len(ts),
            })
            print(f"{arch:5s} batch {batch:3d} {precision} compile={compiled!s:5s}: {med:.3f} s/step, "
                  f"{1000 * per_clip:.1f} ms/clip, epoch ~{rows[-1]['epoch_seconds']:.0f} s, "
                  f"x{rows[-1]['vs_fp32_batch32']} of fp32 batch 32 per clip (first step {first[(batch, precision, compiled)]:.1f} s)")
    doc = {
        "schema": "tympan.benchmarks.train_speed/1",
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "cpu_bf16_native": cpu_has_bf16(),
        "load_average_start": round(load0, 2), "load_average_end": round(os.getloadavg()[0], 2),
        "measured": datetime.now(timezone.utc).isoformat(timespec="minutes"),
        "command": "python benchmarks/train_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": rows,
    }
    write_json_atomic(Path(args.out), doc)
    print(f"machine: {doc['machine']}; native bf16: {doc['cpu_bf16_native']}; load {load0:.1f} -> "
          f"{doc['load_average_end']:.1f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
