"""Single-clip CPU latency of the mn04 network per backend (ONNX Runtime, TorchScript, eager).

Builds the three runners of ``tympan.inference.backends`` for the shipped bundle's network
(EfficientAT ``mn04_as`` with the ESC-50 head; ``--random`` for random weights with
``--n-classes`` outputs, the cost does not depend on the weights), checks each against eager
(max |difference| over embeddings and logits), and times ``--runs`` calls on one 5-s clip's
log-mel ``(1, 1, 128, 501)`` per backend, the backends interleaved call by call so a busy
machine slows them alike. Also times the rest of a prediction in the same run: decoding and
resampling a real FLAC clip, and the front end. Prints medians, p5..p95 and the ratio of each
to eager.

    python benchmarks/mn04_latency.py --threads 2 --runs 200
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from _machine import cpu_model
from tympan.inference import EmbedAndClassify
from tympan.inference import backends as B
from tympan.models import build_model

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TYMPAN_ESC50_DIR", REPO.parent / "shared" / "data" / "esc50"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--random", action="store_true", help="random weights instead of the shipped bundle")
    parser.add_argument("--n-classes", type=int, default=527, help="outputs of the random network")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from tympan.bundle import default_bundle_dir, load_bundle

    bundle = load_bundle(default_bundle_dir())
    if args.random:
        torch.manual_seed(0)
        model = build_model("mn04", n_classes=args.n_classes).eval()
    else:
        model = bundle.model.eval()
    frontend = bundle.frontend_module().eval()
    cfg = bundle.frontend
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        x = frontend(torch.from_numpy((rng.standard_normal((3, cfg.clip_samples)) * 0.05).astype(np.float32)))
    module = EmbedAndClassify(model).eval()
    runners: dict[str, B.Runner] = {"eager": B.EagerRunner(module)}
    want = runners["eager"](x)
    diffs = {}
    try:
        runners["torchscript"] = B.TorchScriptRunner.build(module, x)
    except Exception as exc:  # noqa: BLE001
        print(f"torchscript unavailable: {exc}")
    if B.onnxruntime_available():
        runners["onnx"] = B.OnnxRunner.build(module, x, threads=args.threads)
    else:
        print("onnx: onnxruntime/onnx not installed (pip install 'tympan[serve]')")
    for name, run in runners.items():
        diffs[name] = max(float(np.abs(g - w).max()) for g, w in zip(run(x), want, strict=True))

    # the rest of a prediction, same run: decode + resample a real clip, front end
    found = sorted((DATA / "audio").glob("*.flac"))[:64] if (DATA / "audio").is_dir() else []
    clip = sorted(found, key=lambda p: p.stat().st_size)[len(found) // 2] if found else None  # a typical clip
    from tympan.audio import load_audio

    data = clip.read_bytes() if clip else None
    one = x[:1]
    wave = torch.from_numpy((rng.standard_normal((1, cfg.clip_samples)) * 0.05).astype(np.float32))
    steps = {f"network: {k}": (lambda r=r: r(one)) for k, r in runners.items()}
    steps["front end (LogMel, 1 window)"] = lambda: frontend(wave)
    if data is not None:
        steps[f"decode + resample ({clip.name}, {len(data) // 1024} kB FLAC)"] = lambda: load_audio(data, cfg.sample_rate)
    times: dict[str, list[float]] = {k: [] for k in steps}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for f in steps.values():
                f()
        for _ in range(args.runs):
            for k, f in steps.items():
                start = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - start) * 1e3)

    n_params = sum(p.numel() for p in model.parameters())
    print("mn04 single-clip CPU latency per backend")
    print(f"model   mn04 ({n_params:,} parameters, {'random' if args.random else bundle.name}), input {tuple(one.shape)}")
    print(f"torch   {torch.__version__}, {args.threads} threads; onnxruntime "
          f"{__import__('onnxruntime').__version__ if 'onnx' in runners else 'absent'}")
    print(f"cpu     {cpu_model()} ({os.cpu_count()} logical cores), Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"runs    {args.runs}, interleaved, after {args.warmup} warm-up")
    eager = statistics.median(times["network: eager"])
    width = max(len(k) for k in times)
    for k, v in times.items():
        q = statistics.quantiles(v, n=20)
        name = k.split(": ", 1)[1] if k.startswith("network: ") else None
        extra = f"  {statistics.median(v) / eager:.2f} x eager" if name else ""
        if name:
            extra += f"  max |diff| vs eager {diffs[name]:.1e}"
        print(f"{k:<{width}}  median {statistics.median(v):6.2f} ms  p5..p95 {q[0]:6.2f} .. {q[-1]:6.2f}{extra}")


if __name__ == "__main__":
    main()
