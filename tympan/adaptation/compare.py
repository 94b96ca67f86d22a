"""Before/after evidence for an adaptation: two bundles, the same field recordings, side by side.

:func:`compare_bundles` is what the diagnostics report renders: the share of field clips
flagged out of distribution, mean calibrated confidence, the predicted-class distribution and,
with labels, accuracy, for the bundle before and after adaptation. Each bundle is run with its
own front end, temperature and OOD threshold, exactly as serving would run it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tympan.adaptation.adabn import field_summary
from tympan.adaptation.field import FieldFeatures, bundle_params, load_field, predict_field
from tympan.bundle import Bundle, load_bundle


def _as_bundle(b: Bundle | str | Path) -> Bundle:
    return b if isinstance(b, Bundle) else load_bundle(b)


def _targets(labels: Any, ff: FieldFeatures, classes: list[str]) -> np.ndarray | None:
    """Class index per file of ``ff`` (-1 where unlabelled), from a CSV path or a mapping."""
    if labels is None:
        return None
    if isinstance(labels, str | Path):
        from tympan.adaptation.finetune import read_labels

        pairs = read_labels(labels, classes, ff.root)
        mapping = {Path(p).resolve(): c for p, c in pairs}
    else:
        index = {c: i for i, c in enumerate(classes)}
        mapping = {}
        for name, cls in dict(labels).items():
            p = Path(name)
            p = p if p.is_absolute() or ff.root is None else ff.root / p
            mapping[p.resolve()] = index[cls] if isinstance(cls, str) else int(cls)
    return np.asarray([mapping.get(p.resolve(), -1) for p in ff.files], np.int64)


def compare_bundles(
    before: Bundle | str | Path,
    after: Bundle | str | Path,
    field_dir: str | Path | FieldFeatures,
    labels: str | Path | dict[str, str | int] | None = None,
) -> dict[str, Any]:
    """OOD rate, mean confidence, predicted-class distribution and (with labels) accuracy.

    ``labels``: a ``file,class`` CSV (files relative to ``field_dir``) or a mapping
    ``{file: class name or index}``. Returns ``{"measured_on", "before", "after", "delta"}``;
    ``ood_rate`` is ``None`` for a bundle without a fitted threshold.
    """
    bundles = {"before": _as_bundle(before), "after": _as_bundle(after)}
    if list(bundles["before"].classes) != list(bundles["after"].classes):
        raise ValueError("the two bundles have different classes; nothing to compare")
    cache: dict[str, FieldFeatures] = {}
    out: dict[str, Any] = {}
    measured = None
    for key, b in bundles.items():
        fp = b.frontend.fingerprint()
        if isinstance(field_dir, FieldFeatures):
            ff = field_dir
        else:
            ff = cache.get(fp) or load_field(field_dir, b.frontend)
            cache[fp] = ff
        preds = predict_field(b, ff)
        t, thr = bundle_params(b).temperature, bundle_params(b).ood_threshold
        side = {"bundle": b.name, "temperature": t, "ood_threshold": thr, **field_summary(preds, b.classes)}
        targets = _targets(labels, ff, b.classes)
        if targets is not None:
            known = targets >= 0
            side["n_labelled"] = int(known.sum())
            side["accuracy"] = float((preds.predicted[known] == targets[known]).mean()) if known.any() else None
        out[key] = side
        measured = measured or {
            "field_dir": str(ff.root) if ff.root is not None else None,
            "n_files": ff.n_files,
            "n_windows": ff.n_windows,
            "files_sha256": ff.files_sha256(),
            "skipped": [[str(p), why] for p, why in ff.skipped[:20]],
            "aggregate": "per file: mean of window probabilities; OOD score = mean of window energy scores",
        }
    delta = {}
    for k in ("ood_rate", "mean_confidence", "mean_energy", "accuracy"):
        a, b = out["after"].get(k), out["before"].get(k)
        delta[k] = None if a is None or b is None else a - b
    return {"measured_on": measured, "before": out["before"], "after": out["after"], "delta": delta}
