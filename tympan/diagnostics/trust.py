"""Fit a bundle's field-trust models: the embedding OOD score and the background detector.

Both are fitted by ``tympan calibrate`` (:func:`tympan.diagnostics.calibrate.fit_bundle`) when
an ESC-50 folder is at hand, from data the choice of threshold never sees twice:

- the OOD score on the embedding: with an OOD development set (``--ood-dir``, built by
  ``tympan data ood``), :class:`~tympan.stats.ood.ProbeOOD`, a linear probe between the
  TRAINING folds' windows and the set's ``dev`` split, judged on its ``eval`` split (other voices,
  soundfonts, sound themes); without one, :class:`~tympan.stats.ood.CombinedOOD` (energy + k-NN
  distance to the TRAINING folds' windows). Either way the 96 %-TPR threshold (and the
  standardisation) come from the HELD-OUT fold's windows (clips the model never trained on).
- :class:`~tympan.stats.background.BackgroundDetector`: foreground = training-fold windows,
  background = the ``dev`` split of :func:`tympan.datasets.background.build_background_set`
  (generated hiss, hum, rumble, ultrasound and silence, and room tone cut from the TRAINING
  folds' clips); its threshold keeps 98 % of the held-out fold's windows as foreground.

Window outputs of ESC-50 clips (embeddings, logits, level features) are cached under
``$TYMPAN_CACHE_DIR/diagnostics`` keyed by the weights' fingerprint, the front end and the
clips' bytes.
"""

from __future__ import annotations

import csv
import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tympan.bundle import Bundle, weights_fingerprint
from tympan.cache import diagnostics_cache_dir
from tympan.errors import AudioError, DataError
from tympan.inference import Predictor
from tympan.io import save_npz_atomic
from tympan.stats.background import BackgroundDetector, level_features
from tympan.stats.ood import CombinedOOD, EnergyOOD, ProbeOOD, ood_metrics

__all__ = ["WindowOutputs", "fit_background", "fit_embedding_ood", "fit_probe", "fit_trust", "window_outputs"]

OUTPUTS_VERSION = 1


@dataclass
class WindowOutputs:
    """Per-window model outputs of a list of recordings; ``index[i]``: window i's recording."""

    embeddings: np.ndarray  # (n_windows, D) float32
    logits: np.ndarray  # (n_windows, K) float32
    levels: np.ndarray  # (n_windows, 3) float64
    index: np.ndarray  # (n_windows,) int64

    def of(self, recordings: np.ndarray) -> WindowOutputs:
        """Only the windows of ``recordings`` (indices into the original list), renumbered."""
        keep = np.isin(self.index, recordings)
        remap = np.full(int(self.index.max(initial=-1)) + 1, -1)
        remap[np.asarray(recordings)] = np.arange(len(recordings))
        return WindowOutputs(self.embeddings[keep], self.logits[keep], self.levels[keep], remap[self.index[keep]])

    @property
    def features(self) -> np.ndarray:
        """``[embedding, level features]`` rows, what the background detector reads."""
        return np.hstack([self.embeddings.astype(np.float64), self.levels])


def window_outputs(predictor: Predictor, files: Sequence[str | Path], *, cache_key: str | None = None,
                   progress: bool = False, desc: str = "window outputs", gain_db: float = 0.0) -> WindowOutputs:
    """Embeddings, logits and level features of every window of ``files`` (unreadable ones skipped).

    ``gain_db`` scales every window first (the same sounds recorded at another level).
    """
    path = None
    if cache_key is not None:
        h = hashlib.sha256(f"outputs-v{OUTPUTS_VERSION}|{weights_fingerprint(predictor.model)}|"
                           f"{predictor.config.fingerprint()}|{cache_key}|gain{gain_db:g}".encode()).hexdigest()[:20]
        path = diagnostics_cache_dir() / f"windows-{h}.npz"
        if path.is_file():
            with np.load(path) as d:
                return WindowOutputs(d["embeddings"], d["logits"], d["levels"], d["index"])
    from tympan.progress import JobProgress

    embs, logits, levels, index = [], [], [], []
    bar = JobProgress(len(files), desc, quiet=not progress, leave=False)
    for i, f in enumerate(files):
        try:
            prepared = predictor.prepare(f)
        except (AudioError, OSError):
            bar.done(ok=False)
            continue
        bar.done(prepared.decoded.source_duration)
        windows = prepared.windows if gain_db == 0 else prepared.windows * np.float32(10 ** (gain_db / 20))
        e, z = predictor.forward(windows)
        embs.append(e)
        logits.append(z)
        levels.append(level_features(windows, predictor.config.sample_rate))
        index.append(np.full(len(z), i, np.int64))
    bar.close()
    out = WindowOutputs(np.concatenate(embs).astype(np.float32), np.concatenate(logits).astype(np.float32),
                        np.concatenate(levels), np.concatenate(index))
    if path is not None:
        save_npz_atomic(path, embeddings=out.embeddings, logits=out.logits, levels=out.levels, index=out.index)
    return out


def fit_embedding_ood(train: WindowOutputs, heldout: WindowOutputs, *, k: int = 10, tpr: float = 0.96,
                      temperature: float = 1.0) -> CombinedOOD:
    """Energy + k-NN: bank from training windows, standardisation and threshold from held-out ones."""
    return CombinedOOD(k=k, tpr=tpr, temperature=temperature).fit(train.embeddings, heldout.embeddings,
                                                                   heldout.logits)


def fit_background(train: WindowOutputs, background: WindowOutputs, heldout: WindowOutputs, *,
                   max_foreground_rate: float = 0.02) -> BackgroundDetector:
    """Background (1) vs training-fold foreground (0); threshold on held-out foreground windows."""
    X = np.vstack([train.features, background.features])
    y = np.r_[np.zeros(len(train.features)), np.ones(len(background.features))]
    return BackgroundDetector(max_foreground_rate=max_foreground_rate).fit(
        X, y, foreground_heldout=heldout.features)


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def outlier_rows(root: Path) -> list[dict[str, str]]:
    """The rows of a set's manifest that may serve as outliers: its ``dev`` split without the
    clips of ESC-50 classes (those are in-distribution audio from another source)."""
    if not (root / "manifest.csv").is_file():
        raise DataError(f"{root}: no manifest.csv (build it with scripts/build_other_sources.sh or tympan data ood)")
    return [r for r in _manifest(root) if r.get("split", "dev") == "dev" and r.get("kind") != "esc-class"
            and not (r.get("label") or "").strip()]


#: thresholds keep this share of held-out windows: with a threshold fitted on a few hundred clips,
#: 0.96 keeps the share of unseen in-distribution clips flagged at or below 5 % (benchmarks/trust_ood.py)
TPR = 0.96
#: the probe also sees the training windows this much quieter as in-distribution: a quieter
#: recording of the same sounds is no reason to distrust the model (held-out clips at -20 dB:
#: ``heldout_quieter_flagged`` in benchmarks/results/trust_ood.json)
PROBE_QUIET_DB = -20.0


def fit_probe(train: WindowOutputs, outliers: WindowOutputs, heldout: WindowOutputs, *,
              tpr: float = TPR, quieter: WindowOutputs | None = None) -> ProbeOOD:
    """The outlier probe: training windows (and ``quieter`` copies) vs OOD development windows;
    threshold on held-out ones."""
    inside = train.embeddings if quieter is None else np.vstack([train.embeddings, quieter.embeddings])
    return ProbeOOD(tpr=tpr).fit(inside, outliers.embeddings, heldout=heldout.embeddings)


def fit_trust(bundle: Bundle, predictor: Predictor, dataset: Any, train_folds: Sequence[int],
              heldout_clip_ids: Sequence[str], *, ood_dir: str | Path | None = None,
              outlier_dirs: Sequence[str | Path] = (), progress: bool = True,
              log: Any = print) -> dict[str, Any]:
    """Fit both models into ``bundle`` (``ood["embedding"]``, ``background``, ``arrays``).

    ``dataset`` is the ESC-50 folder (:class:`tympan.datasets.ESC50`). With ``ood_dir`` (a set
    built by ``tympan data ood``, whose manifest splits sources into ``dev`` and ``eval``) the
    OOD score is the outlier probe fitted on the ``dev`` split, and the share of ``eval`` clips it
    flags is recorded; without it, energy + k-NN. ``outlier_dirs`` (with ``ood_dir``) add more
    development outliers from other sources (e.g. ``scripts/build_other_sources.sh``): every
    manifest row of their ``dev`` split except ESC-50 classes (``kind`` ``esc-class`` or a
    ``label``), because a probe fitted on one generator's audio misses real music and game
    sounds (``benchmarks/results/other_sources.json``, leave one source out). Returns what was
    fitted on.
    """
    from tympan.datasets.background import build_background_set

    is_train = np.isin(dataset.folds, list(train_folds))
    by_id = {c: i for i, c in enumerate(dataset.clip_ids)}
    held_idx = [by_id[c] for c in heldout_clip_ids if c in by_id]
    leaked = sorted({int(dataset.folds[i]) for i in held_idx} & {int(f) for f in train_folds})
    if leaked:  # thresholds fitted on clips the model trained on would be far too strict
        raise DataError(f"held-out clips from training fold(s) {leaked}: thresholds must be fitted on clips "
                        "the model never trained on")
    if not held_idx:
        raise DataError(f"{dataset.root}: none of the {len(heldout_clip_ids)} held-out clips is in this folder")
    train_files = [f for f, t in zip(dataset.files, is_train, strict=True) if t]
    train = window_outputs(predictor, train_files, cache_key=f"train|{dataset.fingerprint()}|{sorted(train_folds)}",
                           progress=progress, desc="training windows")
    heldout = window_outputs(predictor, [dataset.files[i] for i in held_idx],
                             cache_key=f"heldout|{dataset.fingerprint()}|{','.join(heldout_clip_ids)}",
                             progress=progress, desc="held-out windows")
    ood: CombinedOOD | ProbeOOD
    probe_eval: dict[str, Any] | None = None
    if ood_dir is not None and (Path(ood_dir) / "manifest.csv").is_file():
        rows = _manifest(Path(ood_dir))
        dev = [r for r in rows if r.get("split", "dev") == "dev"]
        ev = [r for r in rows if r.get("split") == "eval"]
        extra = {Path(d): outlier_rows(Path(d)) for d in outlier_dirs}
        dev_files = [Path(ood_dir) / r["file"] for r in dev] + [d / r["file"] for d, rs in extra.items() for r in rs]
        out_dev = window_outputs(predictor, dev_files, progress=progress, desc="OOD development windows")
        quiet = window_outputs(predictor, train_files, cache_key=f"train|{dataset.fingerprint()}|{sorted(train_folds)}",
                               progress=progress, desc="training windows, quieter", gain_db=PROBE_QUIET_DB)
        ood = fit_probe(train, out_dev, heldout, quieter=quiet)
        if ev:
            out_ev = window_outputs(predictor, [Path(ood_dir) / r["file"] for r in ev], progress=progress,
                                    desc="OOD evaluation windows")
            flagged = ood.predict(out_ev.embeddings)
            kinds = np.asarray([ev[i]["kind"] for i in out_ev.index])
            s_held = ood.decision_function(heldout.embeddings)
            probe_eval = {"flagged": float(flagged.mean()), "n_windows": int(len(flagged)),
                          "by_kind": {k: float(flagged[kinds == k].mean()) for k in sorted(set(kinds))},
                          # the served score's own figures, for report.html, the dashboard and diagnose
                          "auroc": float(ood_metrics(s_held, ood.decision_function(out_ev.embeddings))["auroc"]),
                          "heldout_flagged": float(np.mean(s_held > ood.threshold_))}
        more = "".join(f" + {len(rs)} non-ESC clips of {d.name}" for d, rs in extra.items())
        src = (f"{len(dev)} clips of the dev split of {Path(ood_dir).name}{more}; in-distribution: training "
               f"windows as recorded and {PROBE_QUIET_DB:g} dB quieter")
    else:
        ood = fit_embedding_ood(train, heldout)
        src = None
    with tempfile.TemporaryDirectory(prefix="tympan-background-") as tmp:
        root = build_background_set(Path(tmp) / "bg", esc50_dir=dataset.root, seed=0)
        rows = list(csv.DictReader(open(root / "manifest.csv", encoding="utf-8")))
        dev = [r for r in rows if r["split"] == "dev" and
               (r["kind"] != "esc50-quiet" or int(r["file"].split("fold")[1].split("-")[0]) in set(train_folds))]
        bg = window_outputs(predictor, [root / r["file"] for r in dev], progress=progress, desc="background windows")
        kinds = sorted({r["kind"] for r in dev})
    detector = fit_background(train, bg, heldout)
    fitted_on = (f"training folds {', '.join(map(str, sorted(train_folds)))} ({len(train_files)} clips); "
                 f"held-out {len(held_idx)} clips")
    block = {**ood.to_dict(), "fitted_on": fitted_on}
    arrays = {k: v for k, v in (bundle.arrays or {}).items() if k != "ood_bank"}
    if isinstance(ood, CombinedOOD):
        block["bank"] = f"embeddings of {len(train.embeddings)} training windows (trust.safetensors)"
        arrays["ood_bank"] = ood.bank.astype(np.float16)
    else:
        block["outliers"] = src
        block["evaluated_on_unseen_sources"] = probe_eval
    bundle.ood = {**(bundle.ood or {}), "score": ood.score_name, "embedding": block}
    bundle.arrays = arrays
    bundle.background = {**detector.to_dict(),
                         "fitted_on": f"foreground: {fitted_on}; background: {len(dev)} generated/quiet clips "
                                      f"({', '.join(kinds)}; dev split, room tone from training folds only)"}
    held_bg = float(np.mean(detector.predict(heldout.features)))
    held_ood = float(np.mean(ood.window_scores(EnergyOOD.score(heldout.logits), heldout.embeddings) > ood.threshold_))
    log(f"trust: {ood.score_name} threshold {ood.threshold_:.3f}; background threshold "
        f"{detector.threshold_:.3f}; held-out windows flagged background {held_bg:.3f}, OOD {held_ood:.3f}")
    return {"ood_score": ood.score_name, "ood_fitted_on": fitted_on, "ood_outliers": src,
            "ood_eval_unseen_sources": probe_eval, "background_fitted_on": bundle.background["fitted_on"],
            "heldout_background_rate": held_bg, "heldout_ood_rate": held_ood}
