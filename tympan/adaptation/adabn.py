"""AdaBN: unlabelled test-time adaptation by re-estimating BatchNorm statistics on field audio.

Li, Wang, Shi, Liu and Hou, "Revisiting Batch Normalization For Practical Domain Adaptation"
(ICLR-W 2017, arXiv:1603.04779). A BatchNorm layer normalises with the running mean and
variance it saw in training; field audio that is quieter, band-limited, noisier or coded
shifts those statistics, and every layer after it sees inputs off its training distribution.
AdaBN keeps every learned weight and replaces each BatchNorm layer's running mean and
variance with those of the field audio.

How it is estimated here: every BatchNorm layer's statistics are reset and re-accumulated as a
cumulative (equal-weight) average over all field windows (``momentum=None``, the "precise BN"
recipe also used by ``torch.optim.swa_utils.update_bn``), with BatchNorm layers in train mode
and everything else in eval mode (dropout off), without gradients. Windows are shuffled with a
seed and split into near-equal batches, so no small trailing batch gets an outsized weight.
Only ``running_mean``, ``running_var`` and ``num_batches_tracked`` change; the affine weights
and every other parameter stay bit-identical (tests check it).

The front end's input normalisation. ``FrontendConfig.norm_mean/norm_std`` are kept as they
are, on purpose: they are part of the front end the bundle promises its consumers (serving
builds its features from them), and for the pretrained ``mn04`` they are EfficientAT's fixed
constants. "Re-fitting the input normalisation" is done inside the network instead:
``cnn`` normalises its input with a BatchNorm layer (``input_norm``), which AdaBN re-estimates
like any other; ``mn04`` starts with conv -> BatchNorm, and a shift of the log-mel level is a
shift of that conv's output that the re-estimated BatchNorm removes. So after AdaBN the model
is adapted and the front end is still exactly the one it was trained with.

A model without BatchNorm cannot be adapted this way (:class:`NoBatchNormError`); use the
labelled fine-tune (``tympan adapt --labels labels.csv``) instead.
"""

from __future__ import annotations

import copy
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tympan.adaptation.field import (
    DEFAULT_MAX_WINDOWS,
    AdaptationError,
    FieldFeatures,
    FilePredictions,
    NoBatchNormError,
    bundle_params,
    load_field,
    predict_field,
)
from tympan.bundle import Bundle

METHOD = "adabn"
#: Fewer windows than this give noisy statistics (a warning, not an error).
MIN_WINDOWS = 32
#: Changes on field clips beyond these mean a fitted value "no longer holds".
OOD_RATE_TOLERANCE = 0.05
CONFIDENCE_TOLERANCE = 0.05


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """``(name, layer)`` of every BatchNorm layer that keeps running statistics."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(batchnorm_layers(model))


@torch.no_grad()
def adapt_batchnorm(
    model: nn.Module,
    features: torch.Tensor | np.ndarray,
    *,
    batch_size: int = 32,
    seed: int = 0,
    inplace: bool = False,
) -> nn.Module:
    """Re-estimate every BatchNorm layer's running statistics on ``features`` (log-mels).

    ``features``: ``(n, 1, n_mels, frames)``, ``n >= 2``. Returns the adapted model (a copy
    unless ``inplace``), in eval mode.
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise NoBatchNormError(
            f"{type(model).__name__} has no BatchNorm layer: unlabelled (AdaBN) adaptation cannot change it; "
            "fine-tune on labelled field clips instead (tympan adapt --labels labels.csv)"
        )
    x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    n = int(x.shape[0])
    if n < 2:
        raise AdaptationError(f"AdaBN needs at least 2 windows of field audio, got {n}")
    target = model if inplace else copy.deepcopy(model)
    layers = batchnorm_layers(target)
    saved = [(m, m.momentum) for _, m in layers]
    device = next((p.device for p in target.parameters()), torch.device("cpu"))
    try:
        target.eval()
        for _, m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over batches
            m.train()
        order = np.random.default_rng(seed).permutation(n)
        n_batches = max(1, math.ceil(n / batch_size))
        for idx in np.array_split(order, n_batches):
            if len(idx) == 0:
                continue
            target(x[torch.from_numpy(np.sort(idx))].to(device=device, dtype=torch.float32))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        target.eval()
    return target


def _distribution(pred: np.ndarray, classes: list[str]) -> dict[str, int]:
    counts = np.bincount(pred, minlength=len(classes))
    order = np.argsort(-counts, kind="stable")
    return {classes[i]: int(counts[i]) for i in order if counts[i]}


def field_summary(fp: FilePredictions, classes: list[str]) -> dict[str, Any]:
    """OOD rate, mean confidence and predicted-class distribution of per-file predictions."""
    return {
        "n_files": int(len(fp.energy)),
        "ood_rate": None if fp.threshold is None else float(fp.out_of_distribution.mean()),
        "n_ood": None if fp.threshold is None else int(fp.out_of_distribution.sum()),
        "mean_confidence": float(fp.confidence.mean()),
        "mean_energy": float(fp.energy.mean()),
        "predicted_classes": _distribution(fp.predicted, classes),
    }


def recheck(bundle: Bundle, before: FilePredictions, after: FilePredictions) -> tuple[dict, list[str], list[str]]:
    """Re-check the bundle's temperature and OOD threshold on the field clips.

    Returns ``(checks, warnings, notes)``. Both values were fitted on the unadapted model's
    held-out logits; nothing labelled is at hand to refit them here, so they are kept and a
    warning says when the field clips show they no longer hold: the share of clips flagged
    OOD moved by more than 5 points, or the mean confidence by more than 0.05.
    """
    params = bundle_params(bundle)
    t, thr = params.temperature, params.ood_threshold
    b, a = field_summary(before, bundle.classes), field_summary(after, bundle.classes)
    changed = float(np.mean(before.predicted != after.predicted))
    checks: dict[str, Any] = {
        "ood_threshold": thr,
        "ood_rate_before": b["ood_rate"],
        "ood_rate_after": a["ood_rate"],
        "temperature": t,
        "mean_confidence_before": b["mean_confidence"],
        "mean_confidence_after": a["mean_confidence"],
        "mean_energy_before": b["mean_energy"],
        "mean_energy_after": a["mean_energy"],
        "predictions_changed": changed,
        "predicted_classes_before": b["predicted_classes"],
        "predicted_classes_after": a["predicted_classes"],
    }
    warnings, notes = [], []
    if thr is None:
        notes.append("the bundle has no fitted OOD threshold; nothing to re-check")
    else:
        moved = abs(a["ood_rate"] - b["ood_rate"])
        text = (f"OOD threshold {thr:.4g} was fitted on the unadapted model; it flags {b['ood_rate']:.0%} of "
                f"field clips before and {a['ood_rate']:.0%} after adaptation")
        if moved > OOD_RATE_TOLERANCE:
            warnings.append(text + "; it no longer holds: refit with diagnose")
        else:
            notes.append(text + " (within 5 points; still unverified on in-distribution clips)")
    if t != 1.0 or bundle.extra.get("calibration"):
        moved = abs(a["mean_confidence"] - b["mean_confidence"])
        text = (f"temperature {t:.4g} was fitted on the unadapted model; mean confidence on field clips "
                f"went from {b['mean_confidence']:.3f} to {a['mean_confidence']:.3f}")
        if moved > CONFIDENCE_TOLERANCE:
            warnings.append(text + "; calibration no longer holds: refit with diagnose on labelled clips")
        else:
            notes.append(text + " (within 0.05)")
    else:
        notes.append("temperature is 1.0 (never fitted); calibration is unknown before and after")
    if any("embed" in str(k).lower() for k in (bundle.reference or {})):
        warnings.append("drift reference embeddings were computed with the unadapted model; recompute them")
    return checks, warnings, notes


def adaptation_record(ff: FieldFeatures, method: str, **more: Any) -> dict[str, Any]:
    """What the bundle records about the field audio it was adapted on."""
    return {
        "method": method,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "field_dir": str(ff.root) if ff.root is not None else None,
        "n_files": ff.n_files,
        "n_windows": ff.n_windows,
        "files_sha256": ff.files_sha256(),
        "files_sha256_of": "sha256 of the sorted file names relative to field_dir, one per line",
        "n_skipped": len(ff.skipped),
        "window_stride": ff.window_stride,
        **more,
    }


def adapt_bundle(
    bundle: Bundle,
    field: str | Path | FieldFeatures,
    *,
    batch_size: int = 32,
    max_windows: int | None = DEFAULT_MAX_WINDOWS,
    seed: int = 0,
    name: str | None = None,
    progress: bool = False,
) -> tuple[Bundle, dict[str, Any]]:
    """AdaBN-adapt ``bundle`` to a folder of field recordings (no labels).

    Returns the new bundle (same classes, front end, temperature and OOD threshold; new
    BatchNorm statistics; provenance and ``extra["adaptation"]`` saying what it was adapted on
    and what the re-checks found) and that ``extra["adaptation"]`` report. ``progress``: the
    progress line while the field files decode (see :func:`~tympan.adaptation.field.load_field`).
    """
    if not has_batchnorm(bundle.model):
        raise NoBatchNormError(
            f"architecture {bundle.arch!r} has no BatchNorm layer: unlabelled (AdaBN) adaptation cannot change "
            "it; fine-tune on labelled field clips instead (tympan adapt --labels labels.csv)"
        )
    ff = field if isinstance(field, FieldFeatures) else load_field(
        field, bundle.frontend, max_windows=max_windows, progress=progress)
    before = predict_field(bundle, ff)
    model = adapt_batchnorm(bundle.model, ff.features, batch_size=batch_size, seed=seed)
    adapted = bundle.replace(model=model)
    after = predict_field(adapted, ff)
    checks, warnings, notes = recheck(bundle, before, after)
    if ff.n_windows < MIN_WINDOWS:
        warnings.append(f"BatchNorm statistics come from only {ff.n_windows} windows; they are noisy "
                        f"(adapt on at least {MIN_WINDOWS} windows, about {MIN_WINDOWS * bundle.frontend.clip_seconds / 2:.0f} s of audio)")
    if ff.window_stride > 1:
        notes.append(f"the field audio held more than {max_windows} windows; every {ff.window_stride}th window was used")
    if ff.skipped:
        warnings.append(f"{len(ff.skipped)} field files were not used (first: {ff.skipped[0][1]})")
    if bundle.metrics:
        notes.append("metrics.before_adaptation are the unadapted model's; the adapted model was not re-evaluated on ESC-50")
    record = adaptation_record(
        ff, METHOD, batchnorm_layers=len(batchnorm_layers(model)), batch_size=batch_size, seed=seed,
        frontend_normalisation="unchanged: FrontendConfig kept; the network's BatchNorm layers (cnn's input_norm "
                               "included) carry the re-estimated normalisation",
    )
    report = {**record, "checks": checks, "warnings": warnings, "notes": notes,
              "skipped": [[str(p), why] for p, why in ff.skipped[:50]]}
    new = finish_bundle(bundle, model, record, report, name=name or f"{bundle.name}-adabn")
    carry_trust(bundle, new, ff, report)
    return new, report


def carry_trust(original: Bundle, new: Bundle, ff: FieldFeatures, report: dict[str, Any]) -> list[str]:
    """Keep the original model's OOD / background judgement on ``new`` (see :mod:`tympan.adaptation.transport`).

    The field windows of the adaptation run through both models; what could be carried over
    leaves the stale list and is named in ``extra["adaptation"]["refitted"]`` and the report.
    """
    from tympan.adaptation.transport import match_decisions, transport_trust
    from tympan.inference import Predictor

    if ff.n_windows < 2:
        return []
    e_old, z_old = Predictor(original).forward_features(ff.features)
    e_new, z_new = Predictor(new).forward_features(ff.features)
    carried = transport_trust(new, np.asarray(e_old), np.asarray(z_old), np.asarray(e_new), np.asarray(z_new))
    if not carried:
        return []
    carried += match_decisions(original, new, predict_field(original, ff), predict_field(new, ff))
    how = (f"carried over from the unadapted model on the {ff.n_windows} adaptation windows: scores moment-matched, "
           "thresholds set so the adapted bundle flags the share of that audio the original model flagged")
    info = new.extra.setdefault("adaptation", {})
    info["refitted"] = {**{k: how for k in carried}, **(info.get("refitted") or {})} \
        if isinstance(info.get("refitted"), dict) else {k: how for k in carried}
    gone = {"ood_threshold"} if "ood_threshold" in carried else set()
    stale = [p for p in info.get("stale") or [] if p not in gone and not ("background" in p and "background" in carried)]
    info["stale"] = stale
    checks = report.setdefault("checks", {})
    checks["ood_rate_after_uncarried"] = checks.get("ood_rate_after")
    checks["ood_rate_after"] = field_summary(predict_field(new, ff), new.classes)["ood_rate"]
    report["carried_over"] = {"parts": carried, "how": how}
    report["warnings"] = [w for w in report.get("warnings", [])
                          if not w.startswith(("OOD threshold", "fitted for the unadapted model and now stale"))]
    if stale:
        report["warnings"].append("fitted for the unadapted model and now stale: " + ", ".join(stale)
                                  + " (reports say so; refit with `tympan calibrate --bundle OUT --data-dir ESC50`, "
                                    "or adapt with --data-dir)")
    report["notes"] = [*report.get("notes", []), "OOD / background judges " + how + ": " + ", ".join(carried)]
    info.update(checks=checks, warnings=report["warnings"], notes=report["notes"], carried_over=report["carried_over"])
    return carried


def finish_bundle(bundle: Bundle, model: nn.Module, record: dict[str, Any], report: dict[str, Any],
                  name: str) -> Bundle:
    """The adapted bundle: provenance says what it was adapted on, metrics move aside."""
    provenance = copy.deepcopy(bundle.provenance)
    previous = provenance.get("adaptation")
    provenance["adaptation"] = {**record, **({"previous": previous} if previous else {}),
                                "adapted_from": bundle.name}
    metrics = {}
    if bundle.metrics:
        metrics["before_adaptation"] = copy.deepcopy(bundle.metrics)
        metrics["note"] = "held-out figures of the model before adaptation (not re-measured after it)"
    if report.get("labelled"):
        metrics["field_labelled"] = report["labelled"]
    extra = copy.deepcopy(bundle.extra)
    stale = stale_trust_parts(bundle)
    reason = (f"fitted on the held-out predictions of the model before `tympan adapt` ({record.get('method')}); "
              "refit with `tympan calibrate --bundle DIR --data-dir ESC50`")
    if isinstance(extra.get("performance"), dict):
        extra["performance"] = {**extra["performance"], "stale": True, "stale_reason": reason}
    extra["adaptation"] = {**report, "stale": stale, "stale_reason": reason if stale else None, "refitted": []}
    if stale:
        report.setdefault("warnings", []).append(
            "fitted for the unadapted model and now stale: " + ", ".join(stale)
            + " (reports say so; refit with `tympan calibrate --bundle OUT --data-dir ESC50`, or adapt with --data-dir)")
    return bundle.replace(model=model, provenance=provenance, metrics=metrics, extra=extra, name=name)


def stale_trust_parts(bundle: Bundle) -> list[str]:
    """Trust parameters of ``bundle`` fitted on its current weights' outputs (stale once the weights change)."""
    parts = []
    if float(bundle.temperature) != 1.0:
        parts.append("temperature")
    if (bundle.ood or {}).get("threshold") is not None:
        parts.append("ood_threshold")
    ref = bundle.reference or {}
    for key in ("embedding", "predictions", "confidence", "energy", "ood_rate"):
        if ref.get(key):
            parts.append(f"reference.{key}")
    extra = bundle.extra or {}
    if extra.get("performance"):
        parts.append("performance")
    if extra.get("diagnostics"):
        parts.append("diagnostics")
    for where, d in (("reference", ref), ("extra", extra), ("ood", bundle.ood or {})):
        parts += [f"{where}.{k}" for k in d if "background" in str(k).lower() or str(k).lower() in ("knn", "ood_knn")]
    return parts
