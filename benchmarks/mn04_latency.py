"""Single-clip CPU latency of the mn04 network (EfficientAT ``mn04_as`` architecture).

Times ``model(x)`` for one 5-s clip at 32 kHz with EfficientAT's front end, i.e. a
``(1, 1, 128, 501)`` log-mel, in eval mode under ``torch.inference_mode``. Weights do not
change the cost, so a randomly initialised network is timed. Prints the median and spread
over ``--runs`` timed calls after ``--warmup`` untimed ones, with the machine it ran on.

    python benchmarks/mn04_latency.py --threads 2 --runs 50
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from _machine import cpu_model
from tympan.models import build_model


def time_calls(model: torch.nn.Module, x: torch.Tensor, runs: int, warmup: int) -> list[float]:
    """Wall-clock milliseconds of ``runs`` forward passes, after ``warmup`` untimed ones."""
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--frames", type=int, default=501, help="log-mel frames (501 = 5 s at hop 10 ms)")
    parser.add_argument("--n-classes", type=int, default=527)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("mn04", n_classes=args.n_classes).eval()
    x = torch.randn(1, 1, 128, args.frames)
    times = time_calls(model, x, args.runs, args.warmup)
    q = statistics.quantiles(times, n=20)  # 5% steps: q[0] = p5, q[-1] = p95
    n_params = sum(p.numel() for p in model.parameters())

    rows = [
        ("model", f"mn04 ({n_params:,} parameters, {args.n_classes} outputs)"),
        ("input", f"{tuple(x.shape)} float32" + (" (5 s at 32 kHz, hop 320)" if args.frames == 501 else "")),
        ("torch", f"{torch.__version__}, {torch.get_num_threads()} threads"),
        ("cpu", f"{cpu_model()} ({os.cpu_count()} logical cores visible)"),
        ("python / os", f"{platform.python_version()} / {platform.system()} {platform.release()}"),
        ("runs", f"{args.runs} timed after {args.warmup} warm-up"),
        ("median", f"{statistics.median(times):.2f} ms"),
        ("p5 .. p95", f"{q[0]:.2f} .. {q[-1]:.2f} ms"),
        ("min", f"{min(times):.2f} ms"),
    ]
    width = max(len(k) for k, _ in rows)
    print("mn04 single-clip CPU latency")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
