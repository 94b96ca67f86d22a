"""``tympan calibrate``: fit a bundle's trust parameters on data the model never trained on.

From the bundle's held-out predictions (``heldout.*``, see :mod:`tympan.bundle`), which must
come from the bundle's own weights (checked by fingerprint; recomputed from the ESC-50 folder
when they do not, e.g. after ``tympan adapt``):

* ``bundle.temperature``: :class:`~tympan.stats.temperature.TemperatureScaler` fitted on the
  WHOLE held-out fold; the reported "after" numbers are cross-fitted inside the fold.
* ``bundle.ood``: :class:`~tympan.stats.ood.EnergyOOD` (``T_E = 1``) with the threshold that
  keeps 95% of the held-out (in-distribution) clips.
* ``bundle.reference``: the drift reference (:mod:`.reference`).
* ``bundle.extra["diagnostics"]``: the held-out diagnostics block (:mod:`.heldout`).
* ``bundle.extra["performance"]``: the label-free accuracy estimator (:func:`fit_performance`),
  fitted on the held-out predictions only and, with the ESC-50 folder, validated on the held-out
  clips under a few shifts (cross-fitted halves).

The bundle is saved atomically, keeping the folder's other files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tympan.bundle import (
    HeldoutPredictions,
    StaleHeldoutError,
    check_heldout,
    load_bundle,
    read_heldout,
    save_bundle,
    weights_fingerprint,
)
from tympan.datasets import load_esc50, locate_data_dir
from tympan.diagnostics.field import ClipSet, analyse_folder, analyse_sources, make_predictor
from tympan.diagnostics.heldout import heldout_diagnostics
from tympan.diagnostics.reference import build_reference, esc50_clipset, train_folds_of
from tympan.diagnostics.trust import fit_trust
from tympan.errors import DataError
from tympan.inference import Predictor
from tympan.io import to_jsonable
from tympan.stats.ood import EnergyOOD
from tympan.stats.temperature import calibrate_heldout

__all__ = ["PERFORMANCE_METHOD", "fit_bundle", "fit_performance", "performance_for", "recompute_heldout"]


def fit_bundle(
    bundle_dir: str | Path,
    *,
    heldout: str | Path | None = None,
    data_dir: str | Path | None = None,
    train_folds: Sequence[int] | None = None,
    ood_dir: str | Path | None = None,
    outlier_dirs: Sequence[str | Path] = (),
    out_dir: str | Path | None = None,
    progress: bool = True,
    log: Any = print,
    trust: bool = True,
) -> dict[str, Any]:
    """Fit temperature, OOD threshold, drift reference and held-out diagnostics; save atomically.

    Returns a JSON-ready summary (also what ``tympan calibrate`` prints).
    """
    bundle_dir = Path(bundle_dir)
    bundle = load_bundle(bundle_dir)
    prov = bundle.provenance or {}
    root = locate_data_dir(data_dir, (prov.get("data") or {}).get("root"))
    ho = read_heldout(heldout or bundle_dir)
    classes = list(bundle.classes)
    try:
        check_heldout(ho, bundle)
    except StaleHeldoutError as exc:
        if not (root and Path(root).is_dir()):
            raise StaleHeldoutError(f"{exc}; pass --data-dir (the ESC-50 folder) to recompute them with "
                                    "this bundle's weights") from None
        log(f"{exc}: recomputing them with this bundle's weights from {root}")
        ho = recompute_heldout(make_predictor(bundle), ho.clip_ids, root, fold=ho.fold, progress=progress)
    fold = ho.meta.get("fold", prov.get("heldout_fold"))
    n = len(ho.labels)
    heldout_on = f"fold {fold} held-out, {n} clips" if fold is not None else f"held-out, {n} clips"

    calib = calibrate_heldout(ho.logits, ho.labels)
    t = float(calib["summary"]["temperature"])
    detector = EnergyOOD(temperature=1.0, tpr=0.95).fit(ho.logits)
    bundle.temperature = t
    bundle.ood = {"score": "energy", "temperature": 1.0, "threshold": float(detector.threshold_),
                  "tpr": 0.95, "fitted_on": heldout_on,
                  "score_orientation": "higher = more out-of-distribution"}
    predictor = make_predictor(bundle)  # picks up the new temperature / threshold

    # training clips: acoustic features + embeddings
    train: ClipSet | None = None
    trust_fit: dict[str, Any] | None = None
    fitted_on = "no training clips (no ESC-50 folder given)"
    if root and Path(root).is_dir():
        full = load_esc50(root)
        folds = list(train_folds) if train_folds else train_folds_of(bundle, fold, sorted(set(full.folds.tolist())))
        ds = full.subset(np.isin(full.folds, folds))
        if list(ds.classes) != classes:
            raise DataError(f"{root}: its classes differ from the bundle's")
        log(f"reference: {len(ds)} training clips of folds {folds} from {root}")
        train = esc50_clipset(predictor, ds, progress=progress)
        # the folder's name and data fingerprint, never the build machine's path
        fitted_on = (f"ESC-50 folds {', '.join(map(str, folds))} ({len(ds)} training clips) of "
                     f"{Path(root).name} (data fingerprint {full.fingerprint()[:12]})")
        if trust:  # energy + k-NN OOD score and the background detector (tympan.diagnostics.trust)
            trust_fit = fit_trust(bundle, predictor, full, folds, ho.clip_ids, ood_dir=ood_dir, outlier_dirs=outlier_dirs, progress=progress,
                                  log=log)
    else:
        log("warning: no ESC-50 folder (--data-dir / $TYMPAN_ESC50_DIR): acoustic and embedding "
            "references are not fitted; diagnose --field-dir will skip those checks")

    heldout_probs = calib["scaler"].predict_proba(ho.logits)
    heldout_energy = detector.decision_function(ho.logits)
    bundle.reference = build_reference(train, heldout_probs=heldout_probs, heldout_energy=heldout_energy,
                                       detector=detector, classes=classes, fitted_on=fitted_on,
                                       heldout_on=heldout_on)
    ood_logits, ood_label = None, "out-of-distribution set"
    if ood_dir is not None:
        oc = analyse_folder(predictor, ood_dir, progress=progress)
        ood_logits, ood_label = oc.logits, f"{Path(ood_dir).name} ({len(oc)} clips)"
    bundle.extra = dict(bundle.extra or {})
    bundle.extra["diagnostics"] = heldout_diagnostics(
        ho.logits, ho.labels, ho.clip_ids, classes, calibration=calib, detector=detector,
        evaluated_on=f"ESC-50 {heldout_on}, never trained on; model {bundle.name}",
        ood_logits=ood_logits, ood_label=ood_label)
    shifted = None
    if root and Path(root).is_dir():
        shifted = shifted_heldout_logits(predictor, ho.clip_ids, root, progress=progress)
    bundle.extra["performance"] = fit_performance(ho.logits, ho.labels, t, heldout_on=heldout_on,
                                                  shifted_logits=shifted)
    bundle.extra["performance"]["weights_sha256"] = weights_fingerprint(bundle.model)
    summ = calib["summary"]
    bundle.metrics = dict(bundle.metrics or {})
    bundle.metrics.update(heldout_metrics(ho, bundle.metrics, fold, heldout_on))
    bundle.metrics["calibration"] = {
        "temperature": t,
        "ece_before": summ["before"]["ece"], "ece_after_crossfit": summ["after"]["ece"],
        "nll_before": summ["before"]["nll"], "nll_after_crossfit": summ["after"]["nll"],
        "measured_on": heldout_on, "protocol": summ["protocol"],
    }
    adaptation = bundle.extra.get("adaptation")
    if isinstance(adaptation, dict):  # an adapted bundle: its trust parameters now fit its own weights
        refitted = ["temperature", "ood_threshold", "reference", "performance", "diagnostics"]
        adaptation["refitted"] = refitted
        adaptation["refitted_on"] = f"{heldout_on} (held-out logits of the adapted weights)"
        adaptation["stale"] = [p for p in adaptation.get("stale") or []
                               if p.split(".")[0] not in refitted and not p.startswith("reference.")]
    target = Path(out_dir) if out_dir else bundle_dir
    save_bundle(bundle, target, keep_files=True, heldout=ho)
    return to_jsonable({
        "bundle": str(target),
        "heldout": ho.path,
        "heldout_weights_sha256": ho.weights_sha256,
        "trust": trust_fit,
        "temperature": t,
        "ood": bundle.ood,
        "calibration": {k: summ[k] for k in ("protocol", "before", "after", "after_in_sample", "ece_noise_floor")},
        "reference": {k: (v.get("fitted_on") if isinstance(v, Mapping) else v)
                      for k, v in bundle.reference.items() if k != "version"},
        "ood_metrics": bundle.extra["diagnostics"]["ood"].get("metrics"),
        "performance": {k: bundle.extra["performance"][k] for k in ("method", "heldout_accuracy", "systematic_error",
                                                                    "fitted_on")},
    })


def heldout_metrics(ho: HeldoutPredictions, metrics: Mapping[str, Any], fold: Any, heldout_on: str) -> dict[str, Any]:
    """``heldout_accuracy`` and what it was measured on, from the held-out logits of these weights.

    Kept as they are when they already agree (a trained bundle's own figure and its wording); written
    when missing or stale (an interpolated or otherwise re-weighted bundle whose logits were recomputed).
    """
    acc = float((np.asarray(ho.logits).argmax(axis=1) == np.asarray(ho.labels)).mean())
    old = metrics.get("heldout_accuracy")
    if isinstance(old, (int, float)) and abs(float(old) - acc) < 1e-9:
        return {}
    return {"heldout_accuracy": acc, "heldout_fold": fold, "heldout_n": int(len(ho.labels)),
            "measured_on": f"ESC-50 {heldout_on}, never trained on; held-out logits of these weights"}


def recompute_heldout(predictor: Predictor, clip_ids: Sequence[str], data_dir: str | Path, *,
                      fold: Any = None, progress: bool = True) -> HeldoutPredictions:
    """Held-out logits of ``clip_ids`` from the ESC-50 folder, by this predictor's weights.

    A clip's logits are the mean of its windows' logits (one window for 5-s ESC-50 clips with
    the default front ends), computed on the serving path.
    """
    ds = load_esc50(data_dir)
    if list(ds.classes) != list(predictor.classes):
        raise DataError(f"{ds.root}: its classes differ from the bundle's")
    by_id = {c: i for i, c in enumerate(ds.clip_ids)}
    missing = [c for c in clip_ids if c not in by_id]
    if missing:
        raise DataError(f"{ds.root}: {len(missing)} held-out clips are not in this ESC-50 copy "
                        f"(first: {missing[0]})")
    idx = [by_id[c] for c in clip_ids]
    cs = analyse_sources(predictor, [(ds.clip_ids[i], ds.files[i]) for i in idx], progress=progress,
                         desc="held-out logits", with_acoustic=False)
    if cs.unreadable:
        raise DataError(f"{ds.root}: {len(cs.unreadable)} held-out clips cannot be decoded "
                        f"(first: {cs.unreadable[0]['reason']})")
    return HeldoutPredictions(
        cs.logits, ds.labels[idx], list(clip_ids), list(predictor.classes),
        weights_sha256=weights_fingerprint(predictor.model),
        meta={"fold": fold, "note": "recomputed by tympan calibrate from the audio with these weights"},
        path=f"{ds.root} (recomputed)")


#: The label-free accuracy estimator ``diagnose`` uses: ATC on the calibrated max-softmax score, the smallest
#: worst-case error of the four compared in benchmarks/trust.py (see docs/diagnostics.md).
PERFORMANCE_METHOD = "atc_mc"
#: Held-out shifts the estimator is validated on when ``calibrate`` has the ESC-50 folder (cheap, varied:
#: harmful noise, a harmless level change, a band limit).
VALIDATION_SHIFTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("pink_10db", "pink_noise", {"snr_db": 10.0}),
    ("white_20db", "white_noise", {"snr_db": 20.0}),
    ("gain_-20db", "gain", {"db": -20.0}),
    ("lowpass_4k", "lowpass", {"cutoff_hz": 4000.0}),
)
#: Floor of the systematic error added to every interval (what validation on few shifts cannot rule out).
MIN_SYSTEMATIC_ERROR = 0.02
#: Systematic error assumed when the estimator could only be validated on clean held-out halves (no audio
#: to shift): ATC-MC's largest |bias| over the single shifts of the sweep on the shipped model was 5.6 points
#: (gain -20 dB; benchmarks/results/trust_performance.json).
UNVALIDATED_SYSTEMATIC_ERROR = 0.06


def shifted_heldout_logits(predictor: Predictor, clip_ids: Sequence[str], data_dir: str | Path, *,
                           progress: bool = True) -> dict[str, np.ndarray] | None:
    """Held-out logits under :data:`VALIDATION_SHIFTS` (per-clip seeds), or None when clips are missing."""
    from tympan import corruptions

    ds = load_esc50(data_dir)
    by_id = {c: i for i, c in enumerate(ds.clip_ids)}
    if list(ds.classes) != list(predictor.classes) or any(c not in by_id for c in clip_ids):
        return None
    sources = [(c, ds.files[by_id[c]]) for c in clip_ids]
    out: dict[str, np.ndarray] = {}
    for label, name, params in VALIDATION_SHIFTS:
        def shift(y: np.ndarray, sr: int, rng: np.random.Generator, _n: str = name,
                  _p: dict[str, Any] = params) -> np.ndarray:
            return corruptions.apply(_n, y, sr, rng, **_p)

        cs = analyse_sources(predictor, sources, transform=shift, progress=progress, desc=f"validation {label}",
                             with_acoustic=False)
        if cs.unreadable:
            return None
        out[label] = cs.logits
    return out


def fit_performance(logits: np.ndarray, labels: np.ndarray, temperature: float, *, heldout_on: str,
                    method: str = PERFORMANCE_METHOD, shifted_logits: Mapping[str, np.ndarray] | None = None,
                    n_splits: int = 10) -> dict[str, Any]:
    """The ``performance`` block: an accuracy estimator fitted on HELD-OUT predictions only.

    ``logits``/``labels`` are the bundle's held-out predictions (never training clips). The
    estimator is fitted on all of them with the bundle's temperature. Its systematic error (added to
    every interval) is validated by :func:`tympan.stats.performance.crossfit_errors` on the same
    held-out clips: clean, and under ``shifted_logits`` when given (fit on clean halves, scored on
    the shifted other halves): the largest absolute bias, at least :data:`MIN_SYSTEMATIC_ERROR`
    (:data:`UNVALIDATED_SYSTEMATIC_ERROR` without shifted logits).
    """
    from scipy.special import softmax

    from tympan.stats.performance import crossfit_errors, make_estimator

    z = np.asarray(logits, np.float64)
    y = np.asarray(labels)
    probs = softmax(z / float(temperature), axis=1)
    shifts = {"clean": z, **{k: np.asarray(v, np.float64) for k, v in (shifted_logits or {}).items()}}
    validation = crossfit_errors(z, shifts, y, methods=(method,), n_splits=n_splits, seed=0)
    biases = {k: v["methods"][method]["bias"] for k, v in validation.items()}
    floor = MIN_SYSTEMATIC_ERROR if len(shifts) > 1 else UNVALIDATED_SYSTEMATIC_ERROR
    systematic = max(floor, max(abs(b) for b in biases.values()))
    est = make_estimator(method, systematic=systematic).fit(probs, y)
    return to_jsonable({
        "version": 1,
        "method": method,
        "estimator": est.to_dict(),
        "heldout_accuracy": est.heldout_accuracy_,
        "temperature": float(temperature),
        "systematic_error": systematic,
        "fitted_on": heldout_on,
        "validation": {
            "protocol": (f"{n_splits} class-stratified splits of the held-out clips into halves, both ways: fitted on "
                         "the clean half, scored on the other half (clean or shifted); bias = mean(estimate - true)"),
            "shifts": {k: {"true_accuracy": v["true_accuracy"], "bias": v["methods"][method]["bias"],
                           "mae": v["methods"][method]["mae"]} for k, v in validation.items()},
        },
        "systematic_error_rule": (f"largest |bias| over the validation shifts, at least {floor}"
                                  + ("" if len(shifts) > 1 else " (validated on clean held-out halves only: no audio "
                                                                "was given to shift)")),
        "stale": False,
    })


def performance_for(bundle: Any, bundle_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The accuracy estimator ``diagnose`` uses for ``bundle``, with its staleness said.

    * the stored ``extra["performance"]`` block when it was fitted for these weights;
    * a stored block fitted for other weights (e.g. the bundle was adapted afterwards) is returned
      with ``stale: true`` and the reason: it is reported but does not vote in the gate;
    * a bundle without a block, but with held-out predictions of these weights (``heldout.*``),
      gets one fitted now on them (validated on clean held-out halves only; ``tympan calibrate
      --data-dir`` also validates it under shifts);
    * otherwise None.
    """
    fp = weights_fingerprint(bundle.model)
    block = dict((bundle.extra or {}).get("performance") or {})
    adaptation = (bundle.provenance or {}).get("adaptation") or {}
    if block:
        sha = block.get("weights_sha256")
        if sha is not None and sha != fp and not block.get("stale"):
            block["stale"] = True
            block["stale_reason"] = ("fitted on the held-out predictions of other weights"
                                     + (f" (before `tympan adapt` {adaptation.get('method')})" if adaptation else ""))
        return block
    if bundle_dir is None or not (Path(bundle_dir) / "heldout.json").is_file():
        return None
    try:
        ho = read_heldout(bundle_dir)
        check_heldout(ho, bundle)
    except (StaleHeldoutError, DataError, OSError, ValueError, KeyError):
        return None
    fold = ho.meta.get("fold")
    on = f"fold {fold} held-out, {len(ho.labels)} clips" if fold is not None else f"held-out, {len(ho.labels)} clips"
    block = fit_performance(ho.logits, ho.labels, float(bundle.temperature), heldout_on=on)
    block["weights_sha256"] = fp
    block["note"] = ("fitted by diagnose from the bundle's held-out predictions (not stored in the bundle; validated "
                     "on clean held-out halves only: run `tympan calibrate --data-dir ESC50` to validate under shifts)")
    return block

