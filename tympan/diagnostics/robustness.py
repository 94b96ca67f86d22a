"""Robustness sweep: accuracy and calibration of a bundle on held-out clips under controlled corruptions.

Clips are the bundle's held-out clips (``heldout.json`` clip ids, i.e. a fold the model never
trained on) decoded from the ESC-50 folder with the one decoder at the model's rate; each
corruption of :mod:`tympan.corruptions` is applied to the waveform with a per-clip seed, then
the clip goes through the serving path (:class:`tympan.inference.Predictor`: windows, bundle
front end, model). Reported per corruption: accuracy, its drop from the clean clips, ECE / NLL
with the bundle's fitted temperature, mean confidence and the share flagged OOD at the bundle's
energy threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tympan.io import to_jsonable
from tympan.stats.calibration import calibration_metrics
from tympan.errors import DataError
from tympan.inference import Predictor, aggregate
from tympan.stats.background import level_features

__all__ = ["SweepItem", "default_sweep", "run_sweep"]


@dataclass(frozen=True)
class SweepItem:
    """One row of the sweep: a registered corruption name and its parameters."""

    label: str
    corruption: str | None  # None = clean
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def default_sweep() -> list[SweepItem]:
    """White and pink noise at 20/10/0 dB SNR, gain, low-pass, telephone band, 8 kHz, codecs, clipping, shift."""
    items = [SweepItem("clean", None, {}, "no corruption")]
    for kind in ("white_noise", "pink_noise"):
        for snr in (20, 10, 0):
            items.append(SweepItem(f"{kind.split('_')[0]}_{snr}db", kind, {"snr_db": float(snr)},
                                   f"{kind.replace('_', ' ')} at {snr} dB SNR"))
    items += [
        SweepItem("gain_-20db", "gain", {"db": -20.0}, "level -20 dB"),
        SweepItem("gain_+12db", "gain", {"db": 12.0}, "level +12 dB (float, no clipping)"),
        SweepItem("lowpass_4k", "lowpass", {"cutoff_hz": 4000.0}, "low-pass at 4 kHz"),
        SweepItem("lowpass_2k", "lowpass", {"cutoff_hz": 2000.0}, "low-pass at 2 kHz"),
        SweepItem("telephone", "telephone", {}, "telephone band 300-3400 Hz"),
        SweepItem("resample_8k", "resample", {"rate": 8000}, "resampled to 8 kHz and back"),
        SweepItem("ogg_vorbis", "codec", {"format": "ogg", "compression_level": 0.9}, "OGG/Vorbis, level 0.9"),
        SweepItem("opus", "codec", {"format": "opus", "compression_level": 0.9}, "OGG/Opus, level 0.9"),
        SweepItem("mp3", "codec", {"format": "mp3", "compression_level": 0.9}, "MP3, level 0.9 (low bitrate)"),
        SweepItem("clipping_30", "clipping", {"fraction": 0.3}, "hard clipping of the loudest 30%"),
        SweepItem("time_shift_1s", "time_shift", {"seconds": 1.0}, "circular shift by 1 s"),
    ]
    return items


def _corruptions() -> Any:
    try:
        import tympan.corruptions as corruptions
    except ModuleNotFoundError:
        raise DataError("the robustness sweep needs tympan.corruptions, which this build lacks") from None
    return corruptions


def heldout_clips(bundle_dir: str | Path, data_dir: str | Path | None, max_clips: int | None,
                  seed: int = 0) -> tuple[list[str], list[Path], np.ndarray, str]:
    """Held-out clip ids, files and labels of the bundle (seeded subset of ``max_clips``)."""
    from tympan.bundle import read_metadata
    from tympan.datasets import load_esc50, locate_data_dir
    from tympan.bundle import read_heldout

    bundle_dir = Path(bundle_dir)
    meta = read_metadata(bundle_dir)
    prov = meta.get("provenance") or {}
    root = locate_data_dir(data_dir, (prov.get("data") or {}).get("root"))
    if root is None:
        raise DataError("no ESC-50 folder: pass --data-dir DIR or set $TYMPAN_ESC50_DIR (the robustness "
                        "sweep decodes the bundle's held-out clips)")
    ds = load_esc50(root)
    if list(ds.classes) != list(meta["classes"]):
        raise DataError(f"{ds.root}: its classes differ from the bundle's")
    by_id = {c: i for i, c in enumerate(ds.clip_ids)}
    if (bundle_dir / "heldout.json").is_file():
        ids = read_heldout(bundle_dir).clip_ids
        where = f"held-out clips of {bundle_dir.name} (heldout.json)"
    elif prov.get("heldout_fold") is not None:
        ids = [c for c, f in zip(ds.clip_ids, ds.folds) if int(f) == int(prov["heldout_fold"])]
        where = f"ESC-50 fold {prov['heldout_fold']} (the bundle's held-out fold)"
    else:
        raise DataError(f"{bundle_dir}: no heldout.json and no held-out fold in the provenance")
    missing = [c for c in ids if c not in by_id]
    if missing:
        raise DataError(f"{ds.root}: {len(missing)} held-out clips are not in this ESC-50 copy (first: {missing[0]})")
    idx = np.asarray([by_id[c] for c in ids])
    if max_clips is not None and max_clips < len(idx):
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_clips, replace=False))
        where += f", seeded subset of {max_clips}"
    return [ds.clip_ids[i] for i in idx], [ds.files[i] for i in idx], ds.labels[idx], f"{where}, {len(idx)} clips"


def run_sweep(
    predictor: Predictor,
    bundle_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    max_clips: int | None = 200,
    items: Sequence[SweepItem] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy / ECE / NLL / OOD share per corruption; JSON-ready (``rows`` in sweep order)."""
    from tympan.audio import frame_windows
    from tympan.progress import JobProgress

    corruptions = _corruptions()
    items = list(items or default_sweep())
    ids, files, labels, where = heldout_clips(bundle_dir, data_dir, max_clips, seed)
    sr = int(predictor.config.sample_rate)
    waves = []
    with JobProgress(len(files), "decoding", quiet=not progress, leave=False) as bar:
        for p in files:  # a held-out clip that does not decode is an error of the data: it raises
            waves.append(predictor.decode(p).waveform)
            bar.done(len(waves[-1]) / sr)
    t, thr = float(predictor.temperature), predictor.params.threshold
    rows = []
    clean_acc = None
    clips_s = float(sum(len(w) for w in waves)) / sr  # each corruption runs over all of it
    bar = JobProgress(len(items), "robustness", quiet=not progress, leave=False, unit="corruption",
                      total_audio_s=clips_s * len(items))
    for item in items:
        embs, logits, levels, index = [], [], [], []
        for pos, y in enumerate(waves):
            if item.corruption is not None:
                y = corruptions.apply(item.corruption, y, sr, np.random.default_rng([seed, pos]), **item.params)
            w, _ = frame_windows(y, predictor.config.clip_samples)
            e, z = predictor.forward(w)
            embs.append(e)
            logits.append(z)
            levels.append(level_features(w, sr))
            index.append(np.full(len(w), pos))
        scores = aggregate(np.concatenate(logits), predictor.params, np.concatenate(index), len(waves),
                           embeddings=np.concatenate(embs), levels=np.concatenate(levels))
        probs = scores.probabilities
        m = calibration_metrics(probs, labels)
        if item.corruption is None:
            clean_acc = m["accuracy"]
        rows.append({
            "corruption": item.label, "name": item.corruption, "params": item.params,
            "description": item.description, "accuracy": m["accuracy"],
            "accuracy_drop": None if clean_acc is None else clean_acc - m["accuracy"],
            "ece": m["ece"], "nll": m["nll"], "brier": m["brier"], "mean_confidence": m["mean_confidence"],
            "ood_flagged": None if scores.threshold is None else float(np.mean(scores.out_of_distribution)),
            "background_flagged": None if scores.background is None else float(np.mean(scores.background)),
        })
        bar.done(clips_s)
    bar.close()
    return to_jsonable({
        "evaluated_on": where, "n_clips": len(ids), "sample_rate": sr, "temperature": t,
        "ood_threshold": thr, "seed": seed, "rows": rows,
        "notes": "ECE with the bundle's temperature (15 equal-width bins); corruptions from tympan.corruptions "
                 "applied at the model's sample rate with a per-clip seed",
    })


def format_table(result: dict[str, Any]) -> str:
    """The sweep as a fixed-width text table (what ``diagnose --robustness`` prints)."""
    lines = [f"robustness on {result['evaluated_on']} (T = {result['temperature']:.3f})",
             f"{'corruption':<16}{'accuracy':>10}{'drop':>8}{'ECE':>8}{'NLL':>8}{'OOD':>8}"]
    for r in result["rows"]:
        drop = "" if r["accuracy_drop"] is None else f"{r['accuracy_drop']:+.3f}"
        ood = "" if r["ood_flagged"] is None else f"{r['ood_flagged']:.2f}"
        lines.append(f"{r['corruption']:<16}{r['accuracy']:>10.3f}{drop:>8}{r['ece']:>8.3f}{r['nll']:>8.3f}{ood:>8}")
    return "\n".join(lines)
