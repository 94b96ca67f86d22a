"""Does adaptation win back what a field shift costs? Accuracy and ECE, clean / shifted / adapted.

For a bundle and its held-out ESC-50 fold (from the bundle's provenance; never trained on):

1. split each class's held-out clips (seeded) into an *adaptation* part (about 5 per class) and
   an *evaluation* part (the rest), by whole source recordings: ESC-50 cuts several clips from
   one recording, and a labelled clip from the same recording as an evaluation clip would
   flatter the labelled row;
2. for each standard shift of :data:`tympan.corruptions.SHIFTS` in the sweep (white noise at
   10 dB SNR, 4 kHz low-pass, 8 kHz resampling, -20 dB gain, low-bitrate MP3), corrupt both
   parts;
3. report, on the evaluation part: the original model on clean clips, on shifted clips, after
   AdaBN on the shifted adaptation part (no labels), and after AdaBN + a head fine-tune on the
   adaptation part *with* its labels (5 per class) plus ESC-50 replay from the training folds;
   accuracy and ECE (15 bins, the bundle's temperature), and the share of the lost accuracy
   that AdaBN recovers (target: at least half).

Without ``--bundle`` it uses the shipped ``tympan/assets/default`` when present, else trains a
small ``cnn`` on folds 1-4 with ``tympan.training`` (cached under ``--work-dir``).

    python benchmarks/adaptation.py --max-clips 400
    python benchmarks/adaptation.py --max-clips 400 --adapt-per-class 3 --shifts lowpass_4k --no-labelled \
        --json benchmarks/results/adaptation_ood.json     # the OOD-rate check of issue #24 item 10
    python benchmarks/adaptation.py --bundle runs/some-bundle --max-clips 200 --shifts gain_-20db,codec_mp3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from _machine import cpu_model
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "tympan" / "assets" / "default"
SWEEP = ["noise_10db", "lowpass_4k", "resample_8k", "gain_-20db", "codec_mp3"]


def machine() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} with "
            f"{torch.get_num_threads()} thread(s), Python {platform.python_version()}, {platform.system()}")


def quick_bundle(data_dir: str, work_dir: Path, epochs: int, width: int, log=print):
    """A small cnn trained on folds 1-4 with the project's training loop (cached)."""
    from tympan.bundle import Bundle, load_bundle
    from tympan.features import FrontendConfig
    from tympan.training.augment import AugmentConfig
    from tympan.training.cv import featureset_for
    from tympan.training.loop import TrainConfig, train_fold

    out = work_dir / f"cnn-w{width}-e{epochs}-fold5"
    if (out / "bundle.json").is_file():
        log(f"using the quick-trained bundle cached at {out}")
        return load_bundle(out)
    frontend = FrontendConfig()
    fs, info = featureset_for(data_dir, frontend, progress=False)
    config = TrainConfig(arch="cnn", arch_params={"width": width}, epochs=epochs, batch_size=32, lr=3e-3,
                         augment=AugmentConfig(), device="cpu", channels_last=False)
    train_idx, val_idx = np.flatnonzero(fs.folds != 5), np.flatnonzero(fs.folds == 5)
    t0 = time.perf_counter()
    res = train_fold(fs, train_idx, val_idx, config, work_dir / "train-fold5", fold=5, progress=False,
                     log=lambda s: log("  " + s))
    log(f"quick-trained cnn width {width}, {epochs} epochs in {time.perf_counter() - t0:.0f} s: "
        f"fold-5 accuracy {res.accuracy:.3f}")
    bundle = Bundle(model=res.model, arch="cnn", arch_params={"width": width}, classes=list(fs.classes),
                    frontend=frontend, name=f"quick-cnn-w{width}",
                    metrics={"heldout_accuracy": res.accuracy, "heldout_fold": 5},
                    provenance={"trained_by": "benchmarks/adaptation.py (tympan.training.train_fold)",
                                "heldout_fold": 5, "train_folds": [1, 2, 3, 4], "epochs": epochs,
                                "data": info})
    bundle.save(out)
    return load_bundle(out)


def source_of(clip_id: str) -> str:
    """ESC-50 clip ids are ``{fold}-{source}-{take}-{target}``; clips cut from one source recording
    share ``source`` (the official folds keep them together)."""
    parts = clip_id.split("-")
    return parts[1] if len(parts) >= 4 else clip_id


def split_per_class(labels: np.ndarray, groups: list[str], n_adapt: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, whole source recordings go to the adaptation part until it holds ``n_adapt``
    clips, leaving at least one source for evaluation; the rest is evaluated on. So no
    evaluation clip shares a source recording with a clip adapted (or fine-tuned) on."""
    rng = np.random.default_rng(seed)
    groups_arr = np.asarray(groups)
    adapt, evaluate = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        srcs = list(rng.permutation(np.unique(groups_arr[idx])))
        taken: list[int] = []
        while srcs[1:] and len(taken) < n_adapt:
            src = srcs.pop(0)
            taken += idx[groups_arr[idx] == src].tolist()
        adapt += taken
        evaluate += [i for i in idx.tolist() if i not in taken]
    return np.sort(np.asarray(adapt, np.int64)), np.sort(np.asarray(evaluate, np.int64))


def evaluate(model, ff, labels: np.ndarray, temperature: float) -> tuple[float, float]:
    from tympan.adaptation.field import window_logits
    from tympan.inference import TrustParams, aggregate
    from tympan.stats.calibration import expected_calibration_error

    preds = aggregate(window_logits(model, ff.features), TrustParams(temperature=temperature), ff.file_index,
                      ff.n_files)
    acc = float((preds.predicted == labels).mean())
    return acc, float(expected_calibration_error(preds.probabilities, labels, n_bins=15))


def ood_rates(bundle, adapted_model, sh_a, sh_e) -> dict[str, float]:
    """Share of files flagged OOD on the adaptation (own field) and evaluation parts: the original
    bundle, the adapted model under the original judges, and under the judges carried over."""
    from tympan.adaptation.adabn import carry_trust
    from tympan.adaptation.field import predict_field

    def rate(b, ff) -> float:
        r = predict_field(b, ff)
        if r.threshold is None:
            return float("nan")
        score = r.ood_score if r.ood_score is not None else r.energy
        return float(np.mean(score > r.threshold))

    uncarried = bundle.replace(model=adapted_model)
    carried = bundle.replace(model=adapted_model)
    carry_trust(bundle, carried, sh_a, {})
    return {f"ood_{part}_{name}": rate(b, ff) for part, ff in (("own", sh_a), ("eval", sh_e))
            for name, b in (("original", bundle), ("uncarried", uncarried), ("carried", carried))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", help=f"bundle to test (default: {DEFAULT_BUNDLE} if present, else a quick cnn)")
    p.add_argument("--data-dir", default=os.environ.get("TYMPAN_ESC50_DIR", "/work/shared/data/esc50"))
    p.add_argument("--max-clips", type=int, default=400, help="held-out clips used, stratified (CPU bound)")
    p.add_argument("--adapt-per-class", type=int, default=5, help="clips per class to adapt on (default 5)")
    p.add_argument("--shifts", default=",".join(SWEEP), help="comma-separated names from tympan.corruptions.SHIFTS")
    p.add_argument("--no-labelled", action="store_true", help="skip the labelled fine-tune row")
    p.add_argument("--no-ood", action="store_true", help="skip the OOD-rate table (original vs carried-over judges)")
    p.add_argument("--no-fit-temperature", action="store_true",
                   help="keep T = 1 for a bundle without a fitted temperature (default: fit it on the clean "
                        "adaptation clips)")
    p.add_argument("--finetune-epochs", type=int, default=30)
    p.add_argument("--replay-ratio", type=float, default=4.0, help="ESC-50 replay clips per labelled clip")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default="/tmp/tympan-bench-adaptation", help="quick-trained bundle cache")
    p.add_argument("--quick-epochs", type=int, default=10)
    p.add_argument("--quick-width", type=int, default=16)
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tympan.adaptation import adapt_batchnorm, finetune_model
    from tympan.adaptation.field import from_waveforms
    from tympan.adaptation.finetune import replay_features
    from tympan.audio import fit_length, load_audio
    from tympan.bundle import load_bundle
    from tympan.corruptions import get_shift
    from tympan.datasets import load_esc50

    t_start = time.perf_counter()
    print(f"machine: {machine()}")
    bundle_path = args.bundle or (DEFAULT_BUNDLE if (DEFAULT_BUNDLE / "bundle.json").is_file() else None)
    if bundle_path:
        bundle = load_bundle(bundle_path)
        print(f"bundle: {bundle_path} ({bundle.name}, {bundle.arch} {bundle.arch_params})")
    else:
        print("bundle: none shipped yet; quick-training a cnn on folds 1-4")
        bundle = quick_bundle(args.data_dir, Path(args.work_dir), args.quick_epochs, args.quick_width)
    bundle.model.eval()
    held = (bundle.provenance or {}).get("heldout_fold")
    if held is None:
        print("error: the bundle's provenance names no held-out fold; refusing to test on training clips",
              file=sys.stderr)
        return 2
    fe = bundle.frontend
    ds = load_esc50(args.data_dir, folds=[int(held)])
    if list(ds.classes) != list(bundle.classes):
        print("error: the data's classes differ from the bundle's", file=sys.stderr)
        return 2
    per_class = max(2, args.max_clips // len(ds.classes))
    rng = np.random.default_rng(args.seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(ds.labels == c))[:per_class]
                                   for c in np.unique(ds.labels)]))
    ds = ds.subset(np.isin(np.arange(len(ds)), keep))
    a_idx, e_idx = split_per_class(ds.labels, [source_of(c) for c in ds.clip_ids], args.adapt_per_class, args.seed)
    y_a, y_e = ds.labels[a_idx], ds.labels[e_idx]
    waves = [fit_length(load_audio(f, fe.sample_rate).waveform, fe.clip_samples) for f in ds.files]
    t = float(bundle.temperature or 1.0)
    t_note = "the bundle's"
    if t == 1.0 and not args.no_fit_temperature:
        # never fitted: fit it on the clean adaptation clips (held-out fold, not evaluated on)
        from tympan.adaptation.field import window_logits
        from tympan.stats.temperature import TemperatureScaler

        clean_a = from_waveforms([waves[i] for i in a_idx], fe)
        z_a = window_logits(bundle.model, clean_a.features)
        t = TemperatureScaler().fit(z_a, y_a[clean_a.file_index]).temperature_
        t_note = f"fitted here on the {len(a_idx)} clean adaptation clips"
    print(f"data: {args.data_dir}, held-out fold {held}: {len(ds)} clips; adapt on {len(a_idx)} "
          f"(~{len(a_idx) / len(ds.classes):.1f} per class), evaluate on {len(e_idx)} (split by source recording); temperature {t:.3g} ({t_note}); "
          f"front end {fe.name} ({fe.sample_rate} Hz, {fe.clip_seconds:g} s)")

    clean_e = from_waveforms([waves[i] for i in e_idx], fe)
    clean_acc, clean_ece = evaluate(bundle.model, clean_e, y_e, t)

    replay = None
    if not args.no_labelled:
        try:
            x_rep, y_rep, rep_info = replay_features(bundle, args.data_dir, int(args.replay_ratio * len(a_idx)),
                                                     seed=args.seed)
            replay = (x_rep, y_rep)
            print(f"labelled row: {len(a_idx)} labelled shifted clips + {rep_info['n']} clean ESC-50 replay clips "
                  f"from folds {rep_info['folds']}, head fine-tune {args.finetune_epochs} epochs after AdaBN")
        except Exception as exc:  # noqa: BLE001 - report and go on without the row
            print(f"labelled row skipped: {exc}")

    rows = []
    for name in [s.strip() for s in args.shifts.split(",") if s.strip()]:
        shift = get_shift(name)
        t0 = time.perf_counter()
        shifted = [shift(w, fe.sample_rate, np.random.default_rng([args.seed, i])) for i, w in enumerate(waves)]
        sh_a = from_waveforms([shifted[i] for i in a_idx], fe)
        sh_e = from_waveforms([shifted[i] for i in e_idx], fe)
        s_acc, s_ece = evaluate(bundle.model, sh_e, y_e, t)
        adapted = adapt_batchnorm(bundle.model, sh_a.features, seed=args.seed)
        a_acc, a_ece = evaluate(adapted, sh_e, y_e, t)
        row = {"shift": name, "description": shift.description, "clean_acc": clean_acc, "clean_ece": clean_ece,
               "shifted_acc": s_acc, "shifted_ece": s_ece, "adabn_acc": a_acc, "adabn_ece": a_ece}
        lost = clean_acc - s_acc
        row["recovered"] = (a_acc - s_acc) / lost if lost > 0.005 else None
        if replay is not None:
            tuned, _ = finetune_model(adapted, bundle.arch, sh_a.features, y_a[sh_a.file_index], *replay,
                                      replay_model=bundle.model, epochs=args.finetune_epochs, seed=args.seed)
            row["labelled_acc"], row["labelled_ece"] = evaluate(tuned, sh_e, y_e, t)
        if not args.no_ood:
            row.update(ood_rates(bundle, adapted, sh_a, sh_e))
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"  {name}: done in {row['seconds']} s", flush=True)

    def pct(x):
        return "   n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:5.1f}%"

    lab = replay is not None
    head = (f"| shift | clean acc | shifted acc | AdaBN acc | recovered | "
            f"{f'AdaBN+labels (~{len(a_idx) / len(ds.classes):.0f}/class) acc | ' if lab else ''}clean ECE | shifted ECE | AdaBN ECE |"
            f"{' labelled ECE |' if lab else ''}")
    print()
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for r in rows:
        rec = "(no loss)" if r["recovered"] is None else f"{100 * r['recovered']:.0f}%"
        print(f"| {r['shift']} | {pct(r['clean_acc'])} | {pct(r['shifted_acc'])} | {pct(r['adabn_acc'])} | {rec} | "
              + (f"{pct(r['labelled_acc'])} | " if lab else "")
              + f"{pct(r['clean_ece'])} | {pct(r['shifted_ece'])} | {pct(r['adabn_ece'])} |"
              + (f" {pct(r['labelled_ece'])} |" if lab else ""))
    if any("ood_own_original" in r for r in rows):
        print()
        print("OOD rate (files flagged out of distribution), the issue #24 item 10 check: AdaBN on the shifted "
              "adaptation part, then judged by the original model's judges as they are (before the fix) and by "
              "the judges carried over to the adapted model (tympan.adaptation.transport)")
        print("| shift | own field audio: original | adapted, old judges | adapted, carried | "
              "evaluation part: original | adapted, old judges | adapted, carried |")
        print("|" + " --- |" * 7)
        for r in rows:
            print(f"| {r['shift']} | {pct(r['ood_own_original'])} | {pct(r['ood_own_uncarried'])} | "
                  f"{pct(r['ood_own_carried'])} | {pct(r['ood_eval_original'])} | {pct(r['ood_eval_uncarried'])} | "
                  f"{pct(r['ood_eval_carried'])} |")
        print("target: the adapted bundle's OOD rate on its own field audio does not rise above the original's")
    total = time.perf_counter() - t_start
    print(f"\nevaluation: {len(e_idx)} held-out clips of fold {held} (never trained on, never adapted on); "
          f"ECE with 15 bins at temperature {t:.3g}; {total:.0f} s in all")
    print("target: AdaBN recovers at least half of the accuracy a shift costs ('recovered' column)")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "load_average": os.getloadavg(),
                                               "bundle": bundle.name, "heldout_fold": held,
                                               "n_adapt": int(len(a_idx)), "n_eval": int(len(e_idx)),
                                               "temperature": t, "temperature_source": t_note,
                                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
