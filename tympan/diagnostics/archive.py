"""``diagnose --field-dir`` on the batch engine: folders of recordings of any length.

:func:`analyse_archive` streams every recording through :func:`tympan.batch.run_batch` (the
same decoder, windows and forward pass as ``tympan predict``; ``jobs`` worker processes) and
turns the windows into the units the drift checks compare with the training reference:

* a recording up to ``long_seconds`` (60 s) is one unit, its windows aggregated by the one
  prediction path (:func:`tympan.inference.aggregate`) as the HTTP API aggregates a clip;
* a longer recording counts by its windows: every window that does not overlap the previous
  unit (at the default 50 % hop, every other window) is a unit of its own, as long as a
  training clip, so a 2-hour file weighs 1,440 units, not one.

Acoustic descriptors (:func:`tympan.stats.acoustic.acoustic_features`, librosa, about 30 ms of
CPU per second of audio) are measured on a bounded, evenly spread sample of units
(``acoustic_sample``, default 100): a short recording whole, a long one on 5-s windows. The
acoustic check compares that sample (``ClipSet.acoustic_index`` says which units it is); every
other check uses every unit. The report says so.

:func:`group_checks` runs the drift checks per site (first sub-folder), day or hour (from the
recording's start time plus the unit's offset).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from tympan.batch import BatchOptions, run_batch, scan_sources
from tympan.batch.engine import acoustic_quotas
from tympan.batch.sources import group_key
from tympan.inference import aggregate
from tympan.stats.acoustic import FEATURE_NAMES

DEFAULT_ACOUSTIC_SAMPLE = 100
LONG_SECONDS = 60.0
GROUP_BY = ("site", "day", "hour")


def _header_duration(path: Path) -> float | None:
    import os

    import soundfile as sf

    from tympan.audio import file_problem

    if file_problem(path) is not None:  # never open a FIFO or a device (it would block or never end)
        return None
    try:
        info = sf.info(os.fsencode(path))
    except Exception:  # noqa: BLE001 - the decoder names the problem later
        return None
    return float(info.duration) if 0 < info.frames < (1 << 62) else None


def _units_of(starts: np.ndarray, n: int) -> list[int]:
    """Windows that do not overlap the previous unit (greedy from the first)."""
    keep, last = [], None
    for i, s in enumerate(starts.tolist()):
        if last is None or s >= last + n:
            keep.append(i)
            last = s
    return keep


def analyse_archive(
    predictor: Any,
    folder: str | Path,
    *,
    progress: bool = True,
    jobs: int = 1,
    hop: float | None = None,
    acoustic_sample: int = DEFAULT_ACOUSTIC_SAMPLE,
    long_seconds: float = LONG_SECONDS,
) -> Any:
    from tympan.diagnostics.field import ClipSet
    from tympan.progress import JobProgress
    from tympan.errors import DataError

    folder = Path(folder)
    scan = scan_sources([folder], relative=True)
    if not scan.sources:
        from tympan.audio import AUDIO_EXTENSIONS

        raise DataError(f"{folder}: contains no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
    sources = scan.sources
    durations = [_header_duration(s.path) for s in sources]
    quota = acoustic_quotas(sources, acoustic_sample, durations)
    params, sr, n = predictor.params, int(predictor.config.sample_rate), int(predictor.config.clip_samples)
    opts = BatchOptions(hop_s=hop, jobs=jobs, with_embeddings=True, whole_seconds=long_seconds)
    ids: list[str] = []
    emb, logits, probs, energy, nwin, formats, units = [], [], [], [], [], [], []
    ood_scores: list[float] = []
    backgrounds: list[bool | None] = []
    acoustic, acoustic_index, bad = [], [], []
    seconds_ok = seconds_bad = 0.0
    windows_total = 0
    known = [d for d in durations if d is not None]
    bar = JobProgress(len(sources), f"diagnose {folder.name}", quiet=not progress, leave=False,
                      total_audio_s=sum(known) if len(known) == len(durations) else None)
    for res in run_batch(predictor, sources, opts, acoustic_quota=quota):
        bar.done(res.duration_s if res.ok else 0.0, ok=res.ok)
        src = res.source
        if not res.ok:
            bad.append({"file": src.name, "reason": str(res.error)})
            seconds_bad += durations[res.index] or 0.0
            continue
        info = res.info
        fmt = {"sample_rate": int(info.source_sample_rate), "channels": int(info.source_channels),
               "duration_s": float(info.source_duration), "format": str(info.format), "subtype": str(info.subtype)}
        seconds_ok += res.duration_s
        windows_total += res.n_windows
        z, e = res.logits, res.embeddings
        if res.duration_s <= long_seconds:
            groups = [np.arange(res.n_windows)]
            offsets = [0.0]
        else:
            keep = _units_of(res.starts, n)
            groups = [np.asarray([i]) for i in keep]
            offsets = [float(res.starts[i]) / sr for i in keep]
        first = len(ids)
        for g, off in zip(groups, offsets, strict=True):
            lev = None if res.levels is None else res.levels[g]
            s = aggregate(z[g], params, embeddings=e[g], levels=lev)  # the one prediction path
            ids.append(src.name if len(groups) == 1 else f"{src.name}@{off:.1f}s")
            emb.append(s.embeddings[0])
            logits.append(z[g].mean(axis=0))
            probs.append(s.probabilities[0])
            energy.append(float(s.energy[0]))
            ood_scores.append(float(s.ood_score[0]))
            backgrounds.append(None if s.background is None else bool(s.background[0]))
            nwin.append(len(g))
            formats.append(fmt)
            start = None if res.start_time is None else res.start_time + timedelta(seconds=off)
            units.append({"file": src.name, "offset_s": off, "site": src.site,
                          "start_time": None if start is None else start.isoformat(), "_start": start})
        unit_starts = np.asarray(offsets) * sr
        for widx, values in res.acoustic:
            if widx < 0 or len(groups) == 1:
                u = first
            else:  # the unit whose window starts nearest the measured one
                u = first + int(np.argmin(np.abs(unit_starts - float(res.starts[widx]))))
            if u in acoustic_index:
                continue
            acoustic.append(values)
            acoustic_index.append(u)
    bar.close()
    k = int(predictor.n_classes)
    m = len(ids)
    clips = ClipSet(
        ids=ids,
        acoustic=np.asarray(acoustic, np.float64).reshape(len(acoustic), len(FEATURE_NAMES)),
        embeddings=np.asarray(emb, np.float32) if emb else np.zeros((0, 0), np.float32),
        logits=np.asarray(logits, np.float32) if logits else np.zeros((0, k), np.float32),
        probabilities=np.asarray(probs, np.float64) if probs else np.zeros((0, k)),
        energy=np.asarray(energy, np.float64),
        n_windows=np.asarray(nwin, np.int64),
        formats=formats,
        unreadable=bad,
        skipped=[{"file": f, "reason": why} for f, why in scan.skipped],
        ood_score=np.asarray(ood_scores, np.float64),
        background=np.asarray(backgrounds, bool) if backgrounds and backgrounds[0] is not None else None,
    )
    clips.acoustic_index = np.asarray(acoustic_index, np.int64)
    clips.units = units
    n_files = len(sources)
    clips.coverage = {
        "files": n_files, "files_analysed": n_files - len(bad), "files_failed": len(bad),
        "failed_share": len(bad) / n_files if n_files else 0.0,
        "hidden_skipped": scan.hidden, "non_audio_skipped": len(scan.skipped),
        "audio_seconds_analysed": round(seconds_ok, 3),
        "audio_seconds_failed_known": round(seconds_bad, 3),
        "windows_analysed": windows_total, "units": m,
        "unit": (f"a recording up to {long_seconds:g} s is one unit (its windows aggregated); a longer one "
                 f"counts by its non-overlapping {predictor.config.clip_seconds:g}-s windows"),
        "acoustic": {"measured_units": len(acoustic_index), "of_units": m, "sample": int(acoustic_sample),
                     "how": (f"librosa descriptors on a bounded sample of {len(acoustic_index)} of {m} units, "
                             "spread evenly over files and over each long file's windows (short recordings "
                             "measured whole, long ones per 5-s window); the acoustic check compares this "
                             "sample, every other check every unit")},
    }
    return clips


def coverage_line(cov: Mapping[str, Any]) -> str:
    h = cov["audio_seconds_analysed"] / 3600
    line = (f"analysed {h:.2f} h of audio: {cov['files_analysed']} of {cov['files']} recordings, "
            f"{cov['windows_analysed']} windows, {cov['units']} units")
    if cov["files_failed"]:
        line += f"; {cov['files_failed']} recordings ({cov['failed_share']:.1%}) could not be analysed"
    return line


def group_checks(clips: Any, check: Callable[..., dict[str, Any]], by: str,
                 reference: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every check per group (``by`` = site, day or hour); ``check(clipset, reference)`` runs them."""
    from tympan.batch.sources import Source

    if by not in GROUP_BY:
        raise ValueError(f"--by must be one of {', '.join(GROUP_BY)}")
    keys = []
    for u in clips.units:
        src = Source(Path(u["file"]), u["file"], u["file"], u["site"])
        keys.append(group_key(src, u.get("_start"), by))
    out = []
    for g in sorted(set(keys)):
        idx = np.asarray([i for i, k in enumerate(keys) if k == g])
        sub = clips.subset(idx)
        ref = reference
        note = None
        if len(sub.acoustic) == 0:
            ref = {k: v for k, v in reference.items() if k != "acoustic"}
            note = "no unit of this group is in the acoustic sample; acoustic check not run"
        res = check(sub, ref)
        files = sorted({clips.units[i]["file"] for i in idx})
        out.append({"group": g, "units": int(len(idx)), "files": len(files),
                    "verdict": res["overall"]["verdict"],
                    "checks": {k: (v or {}).get("verdict") for k, v in res["checks"].items()},
                    "overall": res["overall"], "note": note})
    return out


# ------------------------------------------------------------------- diagnose's plumbing
class CheckRecorder:
    """Wraps ``drift_checks``: remembers how it was called, to run the same checks per group."""

    def __init__(self, func: Callable[..., dict[str, Any]]) -> None:
        self.func = func
        self.args: tuple = ()
        self.kwargs: dict[str, Any] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.args, self.kwargs = args, kwargs
        return self.func(*args, **kwargs)

    def again(self, field_set: Any, reference: Mapping[str, Any]) -> dict[str, Any]:
        """The same call with another field set (4th argument) and reference (1st)."""
        a = list(self.args)
        kw = dict(self.kwargs)
        if len(a) >= 4:
            a[3] = field_set
        else:
            kw["field"] = field_set
        if a:
            a[0] = reference
        else:
            kw["reference"] = reference
        return self.func(*a, **kw)


def analysis_options(args: Any) -> dict[str, Any]:
    """``diagnose``'s command-line options for the folder analysis (and what happens after)."""
    return {"jobs": int(getattr(args, "jobs", 1) or 1), "hop": getattr(args, "hop", None),
            "acoustic_sample": getattr(args, "acoustic_sample", None),
            "by": getattr(args, "by", None), "max_failed_share": float(getattr(args, "max_failed_share", 0.0) or 0.0)}


def analysis_kwargs(options: Mapping[str, Any] | None) -> dict[str, Any]:
    o = dict(options or {})
    return {k: o[k] for k in ("jobs", "hop", "acoustic_sample") if o.get(k) is not None}


def archive_summary(clips: Any, checks: CheckRecorder, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Coverage and (with ``by``) the checks per group: written to ``field.json``."""
    o = dict(options or {})
    out: dict[str, Any] = {"coverage": dict(getattr(clips, "coverage", {}) or {})}
    if out["coverage"]:
        out["coverage_line"] = coverage_line(out["coverage"])
    by = o.get("by")
    if by and getattr(clips, "units", None):
        reference = checks.args[0] if checks.args else checks.kwargs.get("reference", {})
        out["by"] = by
        out["groups"] = group_checks(clips, checks.again, by, reference or {})
    out["units"] = [{k: v for k, v in u.items() if not k.startswith("_")} for u in getattr(clips, "units", [])]
    return out


def failed_files_exit_code(code: int, clips: Any, options: Mapping[str, Any] | None) -> int:
    """2 when more files could not be analysed than ``--max-failed-share`` allows, else ``code``."""
    n_bad = len(clips.unreadable)
    n = n_bad + len({u["file"] for u in getattr(clips, "units", [])} or set(clips.ids))
    allowed = float((options or {}).get("max_failed_share") or 0.0)
    return 2 if n and n_bad / n > allowed else code


def print_archive(archive: Mapping[str, Any] | None) -> None:
    if not archive:
        return
    if archive.get("coverage_line"):
        print(archive["coverage_line"])
        print(f"  acoustic: {archive['coverage']['acoustic']['how']}")
    for g in archive.get("groups") or []:
        flagged = [k for k, v in g["checks"].items() if v == "drift"]
        print(f"  {archive['by']} {g['group']}: {g['verdict']} ({g['units']} units, {g['files']} files)"
              + (f"; drift in {', '.join(flagged)}" if flagged else "") + (f"; {g['note']}" if g.get("note") else ""))


def write_archive(out_dir: str | Path, archive: Mapping[str, Any] | None) -> Path | None:
    """``field.json`` beside report.json: coverage, acoustic sampling, units, per-group checks."""
    if not archive:
        return None
    from tympan.io import to_jsonable, write_json_atomic
    from tympan.names import printable

    path = Path(out_dir) / "field.json"
    write_json_atomic(path, printable(to_jsonable(dict(archive))))
    return path
