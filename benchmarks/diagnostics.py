"""Diagnostics benchmark on real ESC-50: calibration, OOD detection, drift power and false alarms.

    .venv/bin/python benchmarks/diagnostics.py [--bundle DIR] [--data-dir DIR] [--ood-dir DIR] [--reps 50]

Prints the machine, then:

1. calibration on the bundle's held-out fold: ECE / NLL / Brier before and after temperature
   scaling, "after" cross-fitted (5-way stratified split of the held-out clips);
2. OOD: energy vs max-softmax (AUROC, AUPR with OOD positive, FPR at 95% TPR) on
   (a) the open-set split (10 ESC-50 classes held out of a logistic head on frozen AudioSet
   mn04 embeddings), (b) the real OOD set (`tympan data ood`) vs the held-out fold with the
   bundle, (c) energy + the AudioSet head's Speech/Music tags;
3. drift: the bundle's reference (training folds) against 100-clip samples of held-out clips,
   clean (false-alarm rate) and under known shifts (power), ``--reps`` samples each. Features
   are computed once per clip and shift and the samples are drawn from them.

Targets: ECE <= 2% after scaling; energy AUROC >= 0.95 and FPR95 <= 20% on the real OOD set;
drift power >= 0.95 with false alarms <= 5%.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "esc50"
PROGRESS = sys.stderr.isatty()
DEFAULT_WEIGHTS = REPO.parent / "shared" / "weights" / "efficientat-mn04_as" / "mn04_as_mAP_432.pt"


from _machine import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def machine() -> str:
    cpu = cpu_model()
    return (f"{platform.node()} | {platform.system()} {platform.release()} | {cpu} | {os.cpu_count()} logical CPUs | "
            f"python {platform.python_version()} | torch {torch.__version__} | torch threads {torch.get_num_threads()}")


def shifts() -> dict[str, object]:
    from tympan.corruptions import get_shift

    names = {"gain_+12db": "gain_+12db", "gain_-12db": "gain_-12db", "noise_10db": "noise_10db",
             "lowpass_4k": "lowpass_4k", "resample_8k": "resample_8k"}
    return {k: get_shift(v) for k, v in names.items()}


def shifted_clipset(predictor, ds, name: str, shift, digest: str):
    """Analyse the held-out clips under ``shift`` once (cached in the diagnostics cache)."""
    from tympan.diagnostics.field import ClipSet, analyse_sources
    from tympan.cache import diagnostics_cache_dir
    from tympan.io import save_npz_atomic

    key = hashlib.sha256(f"bench-v1|{name}|{digest}|{ds.fingerprint()}".encode()).hexdigest()[:20]
    path = diagnostics_cache_dir() / f"bench-{key}.npz"
    if path.is_file():
        with np.load(path) as d:
            a = {k: d[k] for k in d.files}
        return ClipSet(list(ds.clip_ids), a["acoustic"], a["embeddings"], a["logits"], a["probabilities"],
                       a["energy"], a["n_windows"], json.loads(str(a["formats"])))
    cs = analyse_sources(predictor, list(zip(ds.clip_ids, ds.files)), transform=shift, progress=PROGRESS, desc=name)
    save_npz_atomic(path, acoustic=cs.acoustic, embeddings=cs.embeddings, logits=cs.logits,
              probabilities=cs.probabilities, energy=cs.energy, n_windows=cs.n_windows,
              formats=np.asarray(json.dumps(cs.formats)))
    return cs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=None, help="bundle (default: the shipped one)")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TYMPAN_ESC50_DIR", DEFAULT_DATA)))
    ap.add_argument("--ood-dir", type=Path, default=Path("/tmp/oodset"), help="`tympan data ood --dest DIR` output")
    ap.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="original mn04_as weights (.pt)")
    ap.add_argument("--reps", type=int, default=50, help="field samples per condition (default 50)")
    ap.add_argument("--sample", type=int, default=100, help="clips per field sample (default 100)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write every number here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tympan.bundle import load_bundle
    from tympan.datasets import load_esc50
    from tympan.diagnostics.field import analyse_folder, drift_checks, make_predictor
    from openset import audioset_outputs, audioset_tag_eval, knn_score, metrics_of, open_set_eval, real_ood_eval

    from tympan.bundle import read_heldout, resolve_bundle_dir, save_bundle, weights_fingerprint
    from tympan.diagnostics.calibrate import fit_bundle
    from tympan.diagnostics.reference import esc50_clipset
    from tympan.stats.temperature import calibrate_heldout
    from tympan.stats.ood import EnergyOOD

    t0 = time.perf_counter()
    print(f"machine: {machine()}")
    bundle_dir = resolve_bundle_dir(args.bundle)
    bundle = load_bundle(bundle_dir)
    if not (bundle.reference or {}).get("acoustic"):
        tmp = Path(tempfile.mkdtemp(prefix="tympan-bench-")) / "bundle"
        save_bundle(bundle, tmp, heldout=read_heldout(bundle_dir))
        print(f"bundle {bundle_dir} has no drift reference: fitting a copy in {tmp}")
        fit_bundle(tmp, data_dir=args.data_dir, progress=PROGRESS, log=print)
        bundle_dir = tmp
        bundle = load_bundle(bundle_dir)
    print(f"bundle: {bundle_dir} ({bundle.name}, {bundle.arch}); T = {bundle.temperature:.4f}, "
          f"energy threshold {bundle.ood.get('threshold'):.4f}")
    results: dict[str, object] = {"machine": machine(), "bundle": str(bundle_dir), "bundle_name": bundle.name}

    # 1. calibration ------------------------------------------------------------------------
    ho = read_heldout(bundle_dir)
    cal = calibrate_heldout(ho.logits, ho.labels)["summary"]
    b, a = cal["before"], cal["after"]
    results["calibration"] = cal
    print(f"\n== calibration on {bundle.ood.get('fitted_on')} (accuracy {b['accuracy']:.4f})")
    print(f"   {cal['protocol']}")
    print(f"   {'':<26}{'ECE':>8}{'adaECE':>8}{'MCE':>8}{'NLL':>8}{'Brier':>8}")
    for label, m in (("before (T=1)", b), ("after, cross-fitted", a), ("after, in-sample", cal["after_in_sample"])):
        print(f"   {label:<26}{m['ece']:>8.4f}{m['adaptive_ece']:>8.4f}{m['mce']:>8.4f}{m['nll']:>8.4f}{m['brier']:>8.4f}")
    nf = cal["ece_noise_floor"]
    print(f"   ECE noise floor (a perfectly calibrated model, these confidences, {b['n_samples']} clips): "
          f"mean {nf['mean']:.4f}, 95% quantile {nf['q95']:.4f}")
    cf = cal["cross_fit"]
    print(f"   T (whole fold) {cal['temperature']:.4f}; cross-fit T {cf['temperature_mean']:.4f} ± {cf['temperature_std']:.4f}")

    # 2. OOD ----------------------------------------------------------------------------------
    predictor = make_predictor(bundle_dir)
    esc = load_esc50(args.data_dir)
    held_ids = set(ho.clip_ids)
    ho_mask = np.asarray([c in held_ids for c in esc.clip_ids])
    held_ds = esc.subset(ho_mask)
    print("\n== OOD detection (positive class = out-of-distribution; FPR95 = OOD share accepted at 95% TPR)")
    rows = []
    as_all = audioset_outputs(esc.files, args.weights, progress=PROGRESS)
    os_res = open_set_eval(as_all["embeddings"], esc.labels, esc.folds, class_names=esc.classes)
    results["open_set"] = os_res
    rows.append(("(a) open set, 10 unseen ESC-50 classes", os_res))
    ood_res = tag_res = None
    if args.ood_dir.is_dir():
        import csv

        oc = analyse_folder(predictor, args.ood_dir, progress=PROGRESS)
        kinds_by = {}
        man = args.ood_dir / "manifest.csv"
        if man.is_file():
            with open(man, newline="") as f:
                kinds_by = {r["file"]: r["kind"] for r in csv.DictReader(f)}
        kinds = [kinds_by.get(i, Path(i).parts[0]) for i in oc.ids]
        ood_res = real_ood_eval(ho.logits, oc.logits, kinds, temperature=bundle.temperature)
        results["real_ood"] = ood_res
        # beyond energy: k-NN on the bundle's penultimate embeddings (training clips as the bank)
        train_ds = esc.subset(np.isin(esc.folds, [int(f) for f in (bundle.provenance or {}).get("train_folds")
                                                   or sorted(set(esc.folds.tolist()) - {5})]))
        bank = esc50_clipset(predictor, train_ds, progress=PROGRESS).embeddings
        held_cs_for_knn = esc50_clipset(predictor, held_ds, progress=PROGRESS)
        knn = metrics_of(knn_score(bank, held_cs_for_knn.embeddings, 10), knn_score(bank, oc.embeddings, 10))
        results["knn_embedding_k10"] = knn
        rows.append((f"(b) real OOD set ({len(oc)} clips) vs held-out", ood_res["pooled"]))
        for k, v in ood_res["per_kind"].items():
            rows.append((f"    {k} ({v['energy']['n_out']})", v))
        # (c) AudioSet tags on the same audio
        from tympan.datasets.field import scan_field_dir

        ood_files = [args.ood_dir / i for i in oc.ids]
        as_in = audioset_outputs(held_ds.files, args.weights, progress=PROGRESS)
        # held-out order = heldout.json order
        pos = {c: i for i, c in enumerate(held_ds.clip_ids)}
        order = np.asarray([pos[c] for c in ho.clip_ids])
        as_out = audioset_outputs(ood_files, args.weights, progress=PROGRESS)
        e_in, e_out = EnergyOOD.score(ho.logits), EnergyOOD.score(oc.logits)
        tag_res = audioset_tag_eval(e_in, e_out, as_in["logits"][order], as_out["logits"])
        results["audioset_tags"] = tag_res
        _ = scan_field_dir
    else:
        print(f"   (no OOD set at {args.ood_dir}: build it with `tympan data ood --dest {args.ood_dir}`)")
    print(f"   {'':<44}{'energy AUROC':>13}{'AUPR':>7}{'FPR95':>7} | {'MSP AUROC':>10}{'AUPR':>7}{'FPR95':>7}")
    for label, r in rows:
        e, m = r["energy"], r["max_softmax"]
        print(f"   {label:<44}{e['auroc']:>13.3f}{e['aupr_out']:>7.3f}{e['fpr_at_95_tpr']:>7.3f} | "
              f"{m['auroc']:>10.3f}{m['aupr_out']:>7.3f}{m['fpr_at_95_tpr']:>7.3f}")
    print(f"   open-set protocol: {os_res['protocol']}; closed-set accuracy {os_res['closed_set_accuracy']:.3f}")
    if results.get("knn_embedding_k10"):
        m = results["knn_embedding_k10"]
        print(f"   beyond energy, real OOD set: k-NN (k=10, cosine) on the bundle's embeddings of the "
              f"{len(bank)} training clips: AUROC {m['auroc']:.3f}  AUPR {m['aupr_out']:.3f}  FPR95 {m['fpr_at_95_tpr']:.3f}")
    if tag_res:
        print("   (c) AudioSet Speech/Music tag vs energy, real OOD set:")
        for k in ("energy", "tag", "energy_plus_tag_label_free", "logistic_cv_upper_bound"):
            m = tag_res[k]
            print(f"       {k:<30} AUROC {m['auroc']:.3f}  AUPR {m['aupr_out']:.3f}  FPR95 {m['fpr_at_95_tpr']:.3f}")

    # 3. drift --------------------------------------------------------------------------------
    print(f"\n== drift: reference = {bundle.reference.get('fitted_on')}; field samples of {args.sample} "
          f"held-out clips, {args.reps} per condition; flagged = overall verdict 'drift'")
    clean = esc50_clipset(predictor, held_ds, progress=PROGRESS)
    digest = weights_fingerprint(predictor.model) + bundle.frontend.fingerprint()
    conditions = {"clean (false alarm)": clean}
    for name, shift in shifts().items():
        conditions[name] = shifted_clipset(predictor, held_ds, name, shift, digest)
    rng = np.random.default_rng(0)
    drift: dict[str, object] = {}
    check_names = ["acoustic", "embedding", "predictions", "confidence", "ood_rate"]
    print(f"   {'condition':<22}{'flagged':>9}" + "".join(f"{c:>12}" for c in check_names))
    for name, cs in conditions.items():
        flagged = []
        per = {c: [] for c in check_names}
        for _ in range(args.reps):
            idx = rng.choice(len(cs), size=min(args.sample, len(cs)), replace=False)
            res = drift_checks(bundle.reference, bundle.ood, bundle.classes, cs.subset(idx))
            flagged.append(res["overall"]["verdict"] == "drift")
            for c in check_names:
                per[c].append((res["checks"].get(c) or {}).get("verdict") == "drift")
        rate = float(np.mean(flagged))
        drift[name] = {"flagged": rate, "per_check": {c: float(np.mean(v)) for c, v in per.items()}}
        print(f"   {name:<22}{rate:>9.2f}" + "".join(f"{np.mean(per[c]):>12.2f}" for c in check_names))
    results["drift"] = drift
    fa = drift["clean (false alarm)"]["flagged"]
    power = {k: v["flagged"] for k, v in drift.items() if k != "clean (false alarm)"}

    # summary ----------------------------------------------------------------------------------
    print("\n== targets")
    print(f"   ECE after scaling (cross-fitted) {a['ece']:.4f}  target <= 0.02: {'met' if a['ece'] <= 0.02 else 'NOT met'}")
    if ood_res:
        e = ood_res["pooled"]["energy"]
        print(f"   real OOD energy AUROC {e['auroc']:.3f} (>= 0.95: {'met' if e['auroc'] >= 0.95 else 'NOT met'}), "
              f"FPR95 {e['fpr_at_95_tpr']:.3f} (<= 0.20: {'met' if e['fpr_at_95_tpr'] <= 0.2 else 'NOT met'})")
    print(f"   drift power min {min(power.values()):.2f} (>= 0.95: {'met' if min(power.values()) >= 0.95 else 'NOT met'}), "
          f"false alarms {fa:.2f} (<= 0.05: {'met' if fa <= 0.05 else 'NOT met'})")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        from tympan.io import to_jsonable
        from tympan.io import write_json_atomic

        write_json_atomic(args.json, to_jsonable(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
