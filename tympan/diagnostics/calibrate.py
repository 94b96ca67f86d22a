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
from tympan.errors import DataError
from tympan.inference import Predictor
from tympan.io import to_jsonable
from tympan.stats.ood import EnergyOOD
from tympan.stats.temperature import calibrate_heldout

__all__ = ["fit_bundle", "recompute_heldout"]


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
    fitted_on = "no training clips (no ESC-50 folder given)"
    if root and Path(root).is_dir():
        full = load_esc50(root)
        folds = list(train_folds) if train_folds else train_folds_of(bundle, fold, sorted(set(full.folds.tolist())))
        ds = full.subset(np.isin(full.folds, folds))
        if list(ds.classes) != classes:
            raise DataError(f"{root}: its classes differ from the bundle's")
        log(f"reference: {len(ds)} training clips of folds {folds} from {root}")
        train = esc50_clipset(predictor, ds, progress=progress)
        fitted_on = f"ESC-50 folds {', '.join(map(str, folds))} ({len(ds)} training clips) at {root}"
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
    summ = calib["summary"]
    bundle.metrics = dict(bundle.metrics or {})
    bundle.metrics["calibration"] = {
        "temperature": t,
        "ece_before": summ["before"]["ece"], "ece_after_crossfit": summ["after"]["ece"],
        "nll_before": summ["before"]["nll"], "nll_after_crossfit": summ["after"]["nll"],
        "measured_on": heldout_on, "protocol": summ["protocol"],
    }
    target = Path(out_dir) if out_dir else bundle_dir
    save_bundle(bundle, target, keep_files=True, heldout=ho)
    return to_jsonable({
        "bundle": str(target),
        "heldout": ho.path,
        "heldout_weights_sha256": ho.weights_sha256,
        "temperature": t,
        "ood": bundle.ood,
        "calibration": {k: summ[k] for k in ("protocol", "before", "after", "after_in_sample", "ece_noise_floor")},
        "reference": {k: (v.get("fitted_on") if isinstance(v, Mapping) else v)
                      for k, v in bundle.reference.items() if k != "version"},
        "ood_metrics": bundle.extra["diagnostics"]["ood"].get("metrics"),
    })


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
