"""Fit a bundle's trust parameters from data the model never trained on (``tympan calibrate``).

From the bundle's held-out predictions (``heldout.safetensors`` + ``heldout.json``: the logits
of the fold left out of training, written by ``tympan train``):

* ``bundle.temperature``: :class:`~tympan.diagnostics.temperature.TemperatureScaler` fitted on
  the WHOLE held-out fold. Calibration is reported honestly: the "after" numbers come from
  cross-fitting inside the fold (a seeded, stratified 5-way split; each fifth is scaled by a
  temperature fitted on the other four fifths), never from the clips a temperature saw.
* ``bundle.ood``: :class:`~tympan.diagnostics.ood.EnergyOOD` (``T_E = 1``) with the threshold
  that keeps 95% of the held-out (in-distribution) clips.
* ``bundle.reference``: what ``diagnose --field-dir`` compares field recordings with --
  acoustic features and penultimate embeddings of the TRAINING clips (the folds recorded as
  training folds in the bundle's provenance), the held-out predicted-class mix, calibrated
  confidence and energy scores, the expected OOD rate and the file formats seen in training.
* ``bundle.extra["diagnostics"]``: held-out confusion, per-class scores, most-confused pairs
  with clip ids, reliability before/after, ECE/MCE/NLL/Brier before/after, OOD histograms
  (what the dashboard shows; shape in ``docs/diagnostics.md``).

Acoustic features cost ~0.1-0.3 s per clip (librosa), so those of ESC-50 clips are cached
under ``$TYMPAN_CACHE_DIR/diagnostics`` keyed by the clips' bytes and the model's sample rate
(atomic writes); embeddings are cached keyed also by the model weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tympan.diagnostics._utils import to_jsonable
from tympan.diagnostics.acoustic import FEATURE_NAMES, acoustic_features
from tympan.diagnostics.calibration import calibration_metrics, reliability_curve
from tympan.diagnostics.confusion import confusion_report
from tympan.diagnostics.drift import EmbeddingDriftDetector, FeatureDriftDetector, encode_array
from tympan.diagnostics.field import (
    ALPHA_PER_CHECK,
    CONTENT_FEATURES,
    ClipSet,
    _format_summary,
    analyse_sources,
    make_predictor,
)
from tympan.diagnostics.ood import EnergyOOD, MaxSoftmaxOOD, ood_metrics
from tympan.diagnostics.temperature import TemperatureScaler, cross_fit_temperature
from tympan.errors import BundleError, DataError

__all__ = [
    "DIAGNOSTICS_VERSION",
    "calibrate_heldout",
    "default_bundle_dir",
    "esc50_acoustic",
    "fit_bundle",
    "heldout_diagnostics",
    "histogram",
    "read_heldout",
    "resolve_bundle_dir",
    "save_bundle_keeping_files",
    "split_groups",
]

DIAGNOSTICS_VERSION = 1
ACOUSTIC_CACHE_VERSION = 1
N_BINS = 15
BUNDLE_ENV = "TYMPAN_BUNDLE"


# --------------------------------------------------------------------------- bundles
def default_bundle_dir() -> Path:
    """The bundle shipped with tympan (``tympan/assets/default``)."""
    import tympan

    return Path(tympan.__file__).resolve().parent / "assets" / "default"


def resolve_bundle_dir(arg: str | Path | None) -> Path:
    """``--bundle``, else ``$TYMPAN_BUNDLE``, else the shipped bundle; fail with one clear line."""
    import os

    path = Path(arg) if arg else Path(os.environ[BUNDLE_ENV]) if os.environ.get(BUNDLE_ENV) else default_bundle_dir()
    if not path.is_dir():
        hint = "" if arg else " (no --bundle given, $TYMPAN_BUNDLE unset, and no shipped default bundle)"
        raise BundleError(f"{path}: no such bundle directory{hint}")
    if not (path / "bundle.json").is_file():
        raise BundleError(f"{path}: not a model bundle (bundle.json is missing)")
    return path


def save_bundle_keeping_files(bundle: Any, directory: str | Path) -> Path:
    """Save ``bundle`` over ``directory`` atomically, keeping the folder's other files (``heldout.*``).

    ``Bundle.save`` replaces the whole folder; here the new folder is assembled beside the old
    one (bundle files + every other file copied over) and swapped in with one rename.
    """
    from tympan.bundle import META_FILE, WEIGHTS_FILE, save_bundle
    from tympan.io import atomic_dir

    import os

    directory = Path(directory)
    umask = os.umask(0)
    os.umask(umask)
    mode = (directory.stat().st_mode & 0o777) if directory.is_dir() else (0o777 & ~umask)
    with atomic_dir(directory) as tmp:
        save_bundle(bundle, tmp)
        os.chmod(tmp, mode)  # mkdtemp makes 0700 folders; keep the bundle's own mode
        if directory.is_dir():
            for item in directory.iterdir():
                if item.name in (META_FILE, WEIGHTS_FILE) or item.name.startswith("."):
                    continue
                if item.is_dir():
                    shutil.copytree(item, tmp / item.name)
                else:
                    shutil.copy2(item, tmp / item.name)
    return directory


def read_heldout(path: str | Path) -> dict[str, Any]:
    """Held-out predictions: a folder with ``heldout.safetensors`` + ``heldout.json``, or either file.

    Returns ``{"logits" (n, K) float32, "labels" (n,), "clip_ids", "classes", "meta", "path"}``.
    """
    from safetensors.numpy import load_file

    p = Path(path)
    if p.is_dir():
        tensors, meta_path = p / "heldout.safetensors", p / "heldout.json"
    elif p.suffix == ".json":
        tensors, meta_path = p.with_suffix(".safetensors"), p
    else:
        tensors, meta_path = p, p.with_suffix(".json")
    if not tensors.is_file():
        raise BundleError(f"{tensors}: no held-out predictions (heldout.safetensors is written by "
                          "`tympan train`; pass --heldout FILE)")
    try:
        arrays = load_file(str(tensors))
        logits = np.asarray(arrays["logits"], np.float32)
        labels = np.asarray(arrays["labels"], np.int64)
    except Exception as exc:  # safetensors raises its own types
        raise BundleError(f"{tensors}: cannot read held-out logits/labels ({exc})") from None
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise BundleError(f"{meta_path}: not valid JSON ({exc})") from None
    if logits.ndim != 2 or len(labels) != len(logits) or len(logits) == 0:
        raise BundleError(f"{tensors}: logits {logits.shape} and labels {labels.shape} do not match")
    ids = [str(c) for c in meta.get("clip_ids") or range(len(labels))]
    if len(ids) != len(labels):
        raise BundleError(f"{meta_path}: {len(ids)} clip ids for {len(labels)} held-out clips")
    return {"logits": logits, "labels": labels, "clip_ids": ids, "classes": meta.get("classes"),
            "meta": meta, "path": str(tensors)}


# --------------------------------------------------------------------------- calibration
def split_groups(labels: np.ndarray, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Seeded split of clips into ``n_splits`` groups, stratified by class when every class allows."""
    from sklearn.model_selection import KFold, StratifiedKFold

    y = np.asarray(labels)
    n_splits = int(min(n_splits, len(y)))
    if n_splits < 2:
        raise DataError("cross-fitting needs at least two held-out clips")
    counts = np.bincount(y)
    splitter = (StratifiedKFold(n_splits, shuffle=True, random_state=seed)
                if counts[counts > 0].min() >= n_splits else KFold(n_splits, shuffle=True, random_state=seed))
    groups = np.empty(len(y), dtype=np.int64)
    for g, (_, idx) in enumerate(splitter.split(np.zeros(len(y)), y)):
        groups[idx] = g
    return groups


def _curve(probs: np.ndarray, labels: np.ndarray, temperature: float, **extra: Any) -> dict[str, Any]:
    curve = reliability_curve(probs, labels, N_BINS, "uniform").to_dict()
    m = calibration_metrics(probs, labels, N_BINS)
    return {**curve, "ece": m["ece"], "temperature": float(temperature), **extra}


def ece_noise_floor(probs: np.ndarray, n_draws: int = 200, seed: int = 0) -> dict[str, float]:
    """ECE a PERFECTLY calibrated model would show on this many clips with these confidences.

    Each draw keeps the confidences and makes every prediction correct with probability equal
    to its confidence; the spread of the resulting ECEs is the estimator's own noise (15
    equal-width bins on a few hundred clips is biased upward by ~1-2 points).
    """
    from tympan.diagnostics.calibration import expected_calibration_error

    p = np.asarray(probs, np.float64)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    rng = np.random.default_rng(seed)
    k = p.shape[1]
    eces = []
    for _ in range(n_draws):
        correct = rng.random(len(conf)) < conf
        labels = np.where(correct, pred, (pred + 1 + rng.integers(0, k - 1, len(pred))) % k)
        eces.append(expected_calibration_error(p, labels, N_BINS))
    e = np.asarray(eces)
    return {"mean": float(e.mean()), "q95": float(np.quantile(e, 0.95)), "n_draws": n_draws,
            "what": "ECE of a perfectly calibrated model with these confidences on this many clips"}


def calibrate_heldout(
    logits: np.ndarray, labels: np.ndarray, *, n_splits: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Temperature on the whole fold + honest (cross-fitted) before/after calibration numbers."""
    from tympan.diagnostics._utils import logits_to_probabilities

    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    scaler = TemperatureScaler().fit(z, y)
    groups = split_groups(y, n_splits, seed)
    cf = cross_fit_temperature(z, y, groups, n_bins=N_BINS)
    raw = logits_to_probabilities(z)
    in_sample = scaler.predict_proba(z)
    protocol = (f"temperature fitted on all {len(y)} held-out clips; 'after' numbers are cross-fitted: "
                f"the held-out clips are split into {len(np.unique(groups))} seeded, class-stratified "
                f"parts and each part is scaled by a temperature fitted on the other parts")
    return {
        "scaler": scaler,
        "cross_fit": cf,
        "probs_before": raw,
        "probs_after": cf.probabilities,
        "summary": {
            "temperature": scaler.temperature_,
            "temperature_at_bound": scaler.at_bound_,
            "protocol": protocol,
            "n_bins": N_BINS,
            "before": calibration_metrics(raw, y, N_BINS),
            "after": calibration_metrics(cf.probabilities, y, N_BINS),
            "after_in_sample": calibration_metrics(in_sample, y, N_BINS),
            "ece_noise_floor": ece_noise_floor(cf.probabilities),
            "cross_fit": cf.to_dict(),
        },
    }


def histogram(values: np.ndarray, edges: np.ndarray, label: str) -> dict[str, Any]:
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "label": label,
            "n": int(len(values))}


def _summary(v: np.ndarray) -> dict[str, Any]:
    v = np.asarray(v, np.float64)
    qs = [0.05, 0.25, 0.5, 0.75, 0.95]
    return {"n": int(len(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "quantiles": {f"{q:g}": float(np.quantile(v, q)) for q in qs}}


def heldout_diagnostics(
    logits: np.ndarray,
    labels: np.ndarray,
    clip_ids: Sequence[str],
    classes: Sequence[str],
    *,
    calibration: Mapping[str, Any],
    detector: EnergyOOD,
    evaluated_on: str,
    ood_logits: np.ndarray | None = None,
    ood_label: str = "out-of-distribution set",
) -> dict[str, Any]:
    """The ``bundle.extra["diagnostics"]`` dict the dashboard reads (see docs/diagnostics.md)."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    cm = confusion_report(y, logits=z, class_names=list(classes), clip_ids=list(clip_ids), top_k=15).to_dict()
    per_class_acc = {row["class"]: row["recall"] for row in cm["per_class"]}
    summ = calibration["summary"]
    t = summ["temperature"]
    s_in = detector.decision_function(z)
    ood: dict[str, Any] = {
        "score_name": "energy",
        "score": "energy",
        "temperature": float(detector.temperature),
        "threshold": float(detector.threshold_),
        "tpr": float(detector.tpr),
        "score_orientation": "higher = more out-of-distribution",
        "in_distribution_accepted": float(np.mean(s_in <= detector.threshold_)),
    }
    pooled = s_in if ood_logits is None else np.r_[s_in, detector.decision_function(ood_logits)]
    edges = np.linspace(np.floor(pooled.min()), np.ceil(pooled.max()), 41)
    ood["histograms"] = {"in": histogram(s_in, edges, f"{evaluated_on} (in-distribution)")}
    if ood_logits is not None and len(ood_logits):
        s_out = detector.decision_function(ood_logits)
        ood["histograms"]["out"] = histogram(s_out, edges, ood_label)
        energy_m = ood_metrics(s_in, s_out)
        msp = MaxSoftmaxOOD(temperature=t)
        msp_m = ood_metrics(msp.decision_function(z), msp.decision_function(ood_logits))
        ood["metrics"] = {"auroc": energy_m["auroc"], "aupr": energy_m["aupr_out"],
                          "fpr_at_95_tpr": energy_m["fpr_at_95_tpr"], "positive": energy_m["positive"],
                          "n_in": energy_m["n_in"], "n_out": energy_m["n_out"],
                          "flagged_at_threshold": float(np.mean(s_out > detector.threshold_))}
        ood["baseline_max_softmax"] = {"auroc": msp_m["auroc"], "aupr": msp_m["aupr_out"],
                                       "fpr_at_95_tpr": msp_m["fpr_at_95_tpr"]}
        ood["out_set"] = ood_label
    return to_jsonable({
        "version": DIAGNOSTICS_VERSION,
        "evaluated_on": evaluated_on,
        "n_clips": int(len(y)),
        "accuracy": cm["accuracy"],
        "confusion": cm,
        "per_class_accuracy": per_class_acc,
        "reliability": {
            "before": _curve(calibration["probs_before"], y, 1.0),
            "after": _curve(calibration["probs_after"], y, t, cross_fitted=True),
        },
        "calibration": {k: summ[k] for k in ("temperature", "temperature_at_bound", "protocol", "n_bins",
                                             "before", "after", "after_in_sample", "ece_noise_floor",
                                             "cross_fit")},
        "ood": ood,
    })


# --------------------------------------------------------------------------- reference clips
def _cache_dir() -> Path:
    from tympan.cache import cache_root

    return cache_root() / "diagnostics"


def _save_npz(path: Path, **arrays: Any) -> None:
    from tympan.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def esc50_acoustic(dataset: Any, sample_rate: int, *, progress: bool = True,
                   transform: Any = None, transform_key: str = "") -> np.ndarray:
    """Acoustic features ``(n, len(FEATURE_NAMES))`` of ESC-50 clips at ``sample_rate``, cached.

    The key covers every clip's bytes (``ESC50.fingerprint``), the rate and ``transform_key``
    (name the corruption when ``transform`` is given); the file is written atomically.
    """
    from tqdm import tqdm

    from tympan.audio import load_audio

    h = hashlib.sha256(f"acoustic-v{ACOUSTIC_CACHE_VERSION}|{sample_rate}|{transform_key}|"
                       f"{','.join(FEATURE_NAMES)}|{dataset.fingerprint()}".encode()).hexdigest()[:20]
    path = _cache_dir() / f"acoustic-{h}.npz"
    if path.is_file():
        with np.load(path) as data:
            return data["features"]
    rows = []
    for pos, p in enumerate(tqdm(dataset.files, desc="acoustic features", unit="clip", disable=not progress)):
        d = load_audio(p, sample_rate, max_seconds=None)
        y = d.waveform
        if transform is not None:
            y = np.asarray(transform(y, sample_rate, np.random.default_rng([0, pos])), np.float32)
        f = acoustic_features(y, sample_rate, source_sr=d.source_sample_rate, duration=d.source_duration)
        rows.append([f[k] for k in FEATURE_NAMES])
    feats = np.asarray(rows, np.float64).reshape(len(rows), len(FEATURE_NAMES))
    _save_npz(path, features=feats)
    return feats


def _weights_digest(model: Any) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def esc50_clipset(predictor: Any, dataset: Any, *, progress: bool = True) -> ClipSet:
    """:class:`ClipSet` of ESC-50 clips (acoustic + model outputs), cached by data + weights + front end."""
    cfg = predictor.config
    acoustic = esc50_acoustic(dataset, int(cfg.sample_rate), progress=progress)
    key = hashlib.sha256(f"clipset-v1|{cfg.fingerprint()}|{_weights_digest(predictor.model)}|"
                         f"{predictor.temperature}|{predictor.ood_temperature}|{dataset.fingerprint()}"
                         .encode()).hexdigest()[:20]
    path = _cache_dir() / f"model-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as d:
            arrays = {k: d[k] for k in d.files}
        formats = json.loads(str(arrays.pop("formats")))
    else:
        cs = analyse_sources(predictor, list(zip(dataset.clip_ids, dataset.files)), progress=progress,
                             desc="model outputs", with_acoustic=False)
        if cs.unreadable:
            raise DataError(f"{dataset.root}: {len(cs.unreadable)} clips cannot be decoded "
                            f"(first: {cs.unreadable[0]['reason']})")
        arrays = {"embeddings": cs.embeddings, "logits": cs.logits, "probabilities": cs.probabilities,
                  "energy": cs.energy, "n_windows": cs.n_windows}
        formats = cs.formats
        _save_npz(path, formats=np.asarray(json.dumps(formats)), **arrays)
    return ClipSet(list(dataset.clip_ids), acoustic, arrays["embeddings"], arrays["logits"],
                   arrays["probabilities"], arrays["energy"], arrays["n_windows"], formats)


def _train_folds(bundle: Any, heldout_fold: int | None, all_folds: Sequence[int]) -> list[int]:
    tf = (bundle.provenance or {}).get("train_folds")
    if isinstance(tf, list) and tf:
        return sorted(int(f) for f in tf)
    if heldout_fold is None:
        raise DataError("the bundle's provenance names neither its training folds nor its held-out fold; "
                        "pass --train-folds")
    return [int(f) for f in all_folds if int(f) != int(heldout_fold)]


def build_reference(
    train: ClipSet | None,
    *,
    heldout_probs: np.ndarray,
    heldout_energy: np.ndarray,
    detector: EnergyOOD,
    classes: Sequence[str],
    fitted_on: str,
    heldout_on: str,
    embedding_source: ClipSet | None = None,
) -> dict[str, Any]:
    """``bundle.reference``: the statistics field recordings are compared with."""
    ref: dict[str, Any] = {"version": DIAGNOSTICS_VERSION, "fitted_on": fitted_on}
    if train is not None and len(train):
        det = FeatureDriftDetector(alpha=ALPHA_PER_CHECK).fit(train.content_features(), list(CONTENT_FEATURES))
        ref["acoustic"] = {**det.to_dict(), "fitted_on": fitted_on}
        emb_src = embedding_source if embedding_source is not None else train
        ref["embedding"] = EmbeddingDriftDetector(alpha=ALPHA_PER_CHECK).fit(emb_src.embeddings).to_dict()
        ref["embedding"]["fitted_on"] = fitted_on if embedding_source is None else heldout_on
        ref["format"] = {**_format_summary(train.formats), "fitted_on": fitted_on}
    conf = heldout_probs.max(axis=1)
    counts = np.bincount(heldout_probs.argmax(axis=1), minlength=len(classes))
    ref["predictions"] = {"counts": [int(c) for c in counts], "classes": list(classes),
                          "n": int(len(conf)), "fitted_on": heldout_on}
    ref["confidence"] = {**_summary(conf), "values": encode_array(conf, "float32"),
                         "what": "calibrated top-1 probability", "fitted_on": heldout_on}
    ref["energy"] = {**_summary(heldout_energy), "values": encode_array(heldout_energy, "float32"),
                     "fitted_on": heldout_on}
    ref["ood_rate"] = {"expected": round(1.0 - float(detector.tpr), 6),
                       "observed_heldout": float(np.mean(heldout_energy > detector.threshold_)),
                       "n": int(len(heldout_energy)), "fitted_on": heldout_on}
    return ref


def fit_bundle(
    bundle_dir: str | Path,
    *,
    heldout: str | Path | None = None,
    data_dir: str | Path | None = None,
    train_folds: Sequence[int] | None = None,
    ood_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Fit temperature, OOD threshold, drift reference and held-out diagnostics; save atomically.

    Returns a JSON-ready summary (also what ``tympan calibrate`` prints).
    """
    import os

    from tympan.bundle import load_bundle
    from tympan.datasets import load_esc50

    bundle_dir = Path(bundle_dir)
    bundle = load_bundle(bundle_dir)
    ho = read_heldout(heldout or bundle_dir)
    classes = list(bundle.classes)
    if ho["classes"] and list(ho["classes"]) != classes:
        raise BundleError(f"{ho['path']}: held-out classes differ from the bundle's classes")
    if ho["logits"].shape[1] != len(classes):
        raise BundleError(f"{ho['path']}: {ho['logits'].shape[1]} logit columns for {len(classes)} classes")
    prov = bundle.provenance or {}
    fold = ho["meta"].get("fold", prov.get("heldout_fold"))
    n = len(ho["labels"])
    heldout_on = f"fold {fold} held-out, {n} clips" if fold is not None else f"held-out, {n} clips"

    calib = calibrate_heldout(ho["logits"], ho["labels"])
    t = float(calib["summary"]["temperature"])
    detector = EnergyOOD(temperature=1.0, tpr=0.95).fit(ho["logits"])
    bundle.temperature = t
    bundle.ood = {"score": "energy", "temperature": 1.0, "threshold": float(detector.threshold_),
                  "tpr": 0.95, "fitted_on": heldout_on,
                  "score_orientation": "higher = more out-of-distribution"}
    predictor = make_predictor(bundle)  # picks up the new temperature / threshold

    # training clips: acoustic features + embeddings
    train: ClipSet | None = None
    fitted_on = "no training clips (no ESC-50 folder given)"
    root = data_dir or os.environ.get("TYMPAN_ESC50_DIR") or (prov.get("data") or {}).get("root")
    if root and Path(root).is_dir():
        full = load_esc50(root)
        folds = list(train_folds) if train_folds else _train_folds(bundle, fold, sorted(set(full.folds.tolist())))
        ds = full.subset(np.isin(full.folds, folds))
        if list(ds.classes) != classes:
            raise DataError(f"{root}: its classes differ from the bundle's")
        log(f"reference: {len(ds)} training clips of folds {folds} from {root}")
        train = esc50_clipset(predictor, ds, progress=progress)
        fitted_on = f"ESC-50 folds {', '.join(map(str, folds))} ({len(ds)} training clips) at {root}"
    else:
        log("warning: no ESC-50 folder (--data-dir / $TYMPAN_ESC50_DIR): acoustic and embedding "
            "references are not fitted; diagnose --field-dir will skip those checks")

    heldout_probs = calib["scaler"].predict_proba(ho["logits"])
    heldout_energy = detector.decision_function(ho["logits"])
    bundle.reference = build_reference(train, heldout_probs=heldout_probs, heldout_energy=heldout_energy,
                                       detector=detector, classes=classes, fitted_on=fitted_on,
                                       heldout_on=heldout_on)
    ood_logits, ood_label = None, "out-of-distribution set"
    if ood_dir is not None:
        from tympan.diagnostics.field import analyse_folder

        oc = analyse_folder(predictor, ood_dir, progress=progress)
        ood_logits, ood_label = oc.logits, f"{Path(ood_dir).name} ({len(oc)} clips)"
    bundle.extra = dict(bundle.extra or {})
    bundle.extra["diagnostics"] = heldout_diagnostics(
        ho["logits"], ho["labels"], ho["clip_ids"], classes, calibration=calib, detector=detector,
        evaluated_on=f"ESC-50 {heldout_on}, never trained on; model {bundle.name}",
        ood_logits=ood_logits, ood_label=ood_label)
    summ = calib["summary"]
    bundle.metrics = dict(bundle.metrics or {})
    bundle.metrics["calibration"] = {
        "temperature": t,
        "ece_before": summ["before"]["ece"], "ece_after_crossfit": summ["after"]["ece"],
        "nll_before": summ["before"]["nll"], "nll_after_crossfit": summ["after"]["nll"],
        "measured_on": heldout_on, "protocol": summ["protocol"],
    }
    target = Path(out_dir) if out_dir else bundle_dir
    if out_dir and Path(out_dir).resolve() != bundle_dir.resolve():
        save_bundle_keeping_files(bundle, target)
        for name in ("heldout.safetensors", "heldout.json"):
            if (bundle_dir / name).is_file() and not (target / name).exists():
                shutil.copy2(bundle_dir / name, target / name)
    else:
        save_bundle_keeping_files(bundle, target)
    return to_jsonable({
        "bundle": str(target),
        "heldout": ho["path"],
        "temperature": t,
        "ood": bundle.ood,
        "calibration": {k: summ[k] for k in ("protocol", "before", "after", "after_in_sample", "ece_noise_floor")},
        "reference": {k: (v.get("fitted_on") if isinstance(v, Mapping) else v)
                      for k, v in bundle.reference.items() if k != "version"},
        "ood_metrics": bundle.extra["diagnostics"]["ood"].get("metrics"),
    })
