"""``tympan predict PATH... [--out FILE]``: files and folders of any length, classified offline.

Without ``--out``/``--summary``, each short file (up to 600 s) prints one line (or, with
``--json``, the ``/predict`` body) exactly as the HTTP API answers it; longer recordings print
the labels by share of their windows instead of one averaged label. With ``--out``, every
window of every recording becomes a row of a CSV / Parquet table (or Raven selection tables,
Audacity label tracks), written per finished file, resumable with ``--resume``. With
``--format events`` (or ``raven-events``, ``audacity-events``) the rows are sound events instead
(:mod:`tympan.inference.events`: hysteresis thresholds, minimum duration, merge gap).

Exit codes: 0 every file analysed (or the failed share within ``--max-failed-share``); 2 files
could not be analysed beyond that share, or a usage error (one line); 130 interrupted (the
table holds every file finished before Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 2, 130
#: files up to this long print the API's answer in the plain (no --out) mode
PRINT_MAX_SECONDS = 600.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify audio files and folders offline (tables with --out)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="audio files and folders (recursive)")
    p.add_argument("--bundle", type=Path, default=None,
                   help="model bundle directory (default: $TYMPAN_BUNDLE, else the shipped bundle)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON object per file (the /predict body)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None,
                   help="window table: results.csv or results.parquet; a folder for --format raven/audacity")
    p.add_argument("--format", choices=["csv", "parquet", "raven", "audacity", "events", "raven-events",
                                        "audacity-events"], default=None,
                   help="table format (default: from --out's suffix, else csv); events: one row per sound event "
                        "(CSV or Parquet by --out's suffix), raven-events/audacity-events: per recording")
    _event_arguments(p)
    p.add_argument("--summary", type=Path, default=None,
                   help="one row per file (.csv, .parquet or .jsonl): duration, windows, top labels, OOD share, "
                        "status and error")
    p.add_argument("--hop", type=float, default=None, metavar="SECONDS",
                   help="window step (default: the model's 50%% overlap)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for decoding and features (default 1)")
    p.add_argument("--resume", action="store_true", help="skip files whose rows are already complete in --out")
    p.add_argument("--min-probability", type=float, default=0.0,
                   help="raven/audacity: keep windows whose top-1 probability is at least this")
    p.add_argument("--max-failed-share", type=float, default=0.0,
                   help="exit 0 while at most this share of files could not be analysed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)


def _event_arguments(p: argparse.ArgumentParser) -> None:
    """Event settings shared by ``predict --format events`` and ``listen``."""
    g = p.add_argument_group("sound events")
    g.add_argument("--events-config", type=Path, default=None, metavar="TOML",
                   help="event settings: on, off, min_duration_s, merge_gap_s, only, [classes.NAME] overrides")
    g.add_argument("--event-on", type=float, default=None, help="probability that opens an event (default 0.5)")
    g.add_argument("--event-off", type=float, default=None,
                   help="probability below which an open event ends (default 0.3; hysteresis)")
    g.add_argument("--min-duration", type=float, default=None, metavar="SECONDS", help="drop shorter events")
    g.add_argument("--merge-gap", type=float, default=None, metavar="SECONDS",
                   help="merge events of one class separated by less than this")
    g.add_argument("--event-overlap", type=float, default=None, metavar="SECONDS",
                   help="how much of a sound a window holds when it fires; places event boundaries "
                        "(default: half a window; see docs/live.md)")


def event_config(args: argparse.Namespace, classes: list[str]):
    """The event settings of the command line: a TOML file, the flags replacing its defaults."""
    from tympan.inference.events import EventConfig

    flags = {"on": args.event_on, "off": args.event_off, "min_duration_s": args.min_duration,
             "merge_gap_s": args.merge_gap, "overlap_s": args.event_overlap}
    cfg = EventConfig.from_toml(args.events_config, **{k: v for k, v in flags.items() if v is not None})
    cfg.check(classes)
    return cfg


def _bundle_dir(arg: Path | None) -> Path:
    from tympan.bundle import read_metadata, resolve_bundle_dir

    path = resolve_bundle_dir(arg)
    read_metadata(path)  # one clear line if it is not a bundle
    return path


def cmd_predict(args: argparse.Namespace) -> int:
    from tympan import warnlog
    from tympan.inference import Predictor
    from tympan.names import printable_streams

    printable_streams()
    if args.hop is not None and args.hop <= 0:
        raise ValueError("--hop must be positive")
    if args.jobs < 1:
        raise ValueError("--jobs must be at least 1")
    if not 0.0 <= args.max_failed_share <= 1.0:
        raise ValueError("--max-failed-share must be between 0 and 1")
    if args.format in ("raven", "audacity", "events", "raven-events", "audacity-events") and args.out is None:
        raise ValueError(f"--format {args.format} needs --out FOLDER")
    bundle = _bundle_dir(args.bundle)
    predictor = Predictor(bundle, args.device, max_seconds=PRINT_MAX_SECONDS)
    if not 1 <= args.top_k <= predictor.n_classes:
        raise ValueError(f"--top-k must be between 1 and {predictor.n_classes}")
    try:
        with warnlog.counted("tympan predict"):  # library warnings: one line per kind, counted
            if args.out is None and args.summary is None:
                return _print_mode(args, predictor)
            return _table_mode(args, predictor)
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        return EXIT_OK


# --------------------------------------------------------------------------- plain output
def _line(name: str, body: dict) -> str:
    top = ", ".join(f"{c['label']} {c['probability']:.3f}" for c in body["top_k"])
    flags = []
    if body["ood"]["out_of_distribution"]:
        flags.append("OUT OF DISTRIBUTION")
    if body["uncertain"]:
        flags.append("uncertain")
    notes = list(body["uncertain_reasons"])
    extra = f"  [{'; '.join(flags)}]" if flags else ""
    tail = f"  ({'; '.join(notes)})" if notes else ""
    n = len(body["windows"])
    win = f"  {n} windows" if n > 1 else ""
    ood = body["ood"]  # the score that decides OOD, by its name, beside its threshold
    thr = f" (threshold {ood['threshold']:.3f})" if ood.get("threshold") is not None else ""
    return f"{name}: {top}  {ood.get('score_name', 'energy')} score {ood['score']:.3f}{thr}{win}{extra}{tail}"


def _long_line(s: dict[str, Any]) -> str:
    h = (s.get("duration_s") or 0) / 3600
    return (f"{s['file']}: {s['windows']} windows over {h:.2f} h; labels by share of windows: {s['top_labels']}; "
            f"out of distribution {s['ood_share']:.1%}, uncertain {s['uncertain_share']:.1%}")


def _print_mode(args: argparse.Namespace, predictor: Any) -> int:
    """Short files: the API's answer, batched as before; long ones: labels by share of windows."""
    from tympan.batch.engine import BatchOptions, run_batch
    from tympan.batch.sources import scan_sources
    from tympan.batch.tables import summary_row, window_rows
    from tympan.errors import AudioError, AudioTooLongError
    from tympan.names import name_fields

    scan = scan_sources(args.paths)
    failed = 0
    batch: list = []
    names: list[str] = []
    long: list = []

    decode_ms: list[float] = []

    def flush() -> None:
        bodies = predictor.predict_many(batch, top_k=args.top_k, prepare_ms=decode_ms)
        for name, body in zip(names, bodies, strict=True):
            f = name_fields(name)  # a name that is not UTF-8 (or holds a newline) prints as its display form
            print(json.dumps({**f, **body}) if args.json else _line(f["file"], body), flush=True)
        batch.clear()
        names.clear()
        decode_ms.clear()

    for src in scan.sources:
        try:
            t0 = time.perf_counter()
            batch.append(predictor.prepare(src.path))
            decode_ms.append((time.perf_counter() - t0) * 1000)
            names.append(src.name)
        except AudioTooLongError:
            long.append(src)
        except (AudioError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            failed += 1
            print(f"tympan: error: {exc}", file=sys.stderr)
        if sum(p.windows.shape[0] for p in batch) >= 16:
            flush()
    if batch:
        flush()
    if long:
        opts = BatchOptions(hop_s=args.hop, jobs=args.jobs)
        for res in run_batch(predictor, long, opts):
            if not res.ok:
                failed += 1
                print(f"tympan: error: {res.error}", file=sys.stderr)
                continue
            s = summary_row(res, window_rows(res, predictor))
            print(json.dumps(s) if args.json else _long_line(s), flush=True)
    n = len(scan.sources)
    return _exit_code(failed, n, args.max_failed_share)


def _exit_code(failed: int, n: int, max_share: float) -> int:
    if n == 0:
        return EXIT_ERROR
    return EXIT_ERROR if failed and failed / n > max_share else EXIT_OK


# --------------------------------------------------------------------------------- tables
def _table_mode(args: argparse.Namespace, predictor: Any) -> int:
    from tympan.batch.engine import BatchOptions, run_batch
    from tympan.batch.event_tables import EVENT_FORMATS, open_event_writer
    from tympan.batch.sources import scan_sources
    from tympan.batch.tables import (check_outputs, format_for, open_writer, row_key, source_key, summary_row,
                                     window_rows, write_summary)
    from tympan.errors import DataError
    from tympan.names import display_name
    from tympan.progress import JobProgress

    scan = scan_sources(args.paths)
    if not scan.sources:
        raise DataError(f"no audio files under {', '.join(display_name(p) for p in args.paths)}")
    # event tables in Raven/Audacity form are folders like their window forms; the rest one file
    out_kind = {"raven-events": "raven", "audacity-events": "audacity", "events": "csv"}.get(
        args.format or "", None) or format_for(args.out, args.format)
    check_outputs(args.out, args.summary, out_kind, [s.path for s in scan.sources])
    writer = None
    if args.format in EVENT_FORMATS:
        writer = open_event_writer(args.out, args.format, predictor, event_config(args, predictor.classes),
                                   hop_s=args.hop, resume=args.resume, min_probability=args.min_probability,
                                   high_hz=float(predictor.config.f_max or predictor.config.sample_rate / 2))
    elif args.out is not None:
        fmt = format_for(args.out, args.format)
        writer = open_writer(args.out, fmt, resume=args.resume, min_probability=args.min_probability,
                             high_hz=float(predictor.config.f_max or predictor.config.sample_rate / 2))
    done = writer.done() if writer is not None else set()
    skip = {i for i, s in enumerate(scan.sources) if source_key(s.name) in done}
    summaries: dict[tuple[str, str | None], dict[str, Any]] = {
        row_key(s): s for s in (writer.summaries() if writer else []) if row_key(s) in done}
    todo = len(scan.sources) - len(skip)
    note = f"; {len(skip)} already done (--resume)" if skip else ""
    for line in (writer.notes if writer is not None else []):
        print(f"tympan predict: {line}", file=sys.stderr)
    if not args.quiet:
        print(f"tympan predict: {len(scan.sources)} recordings, {len(scan.skipped)} non-audio and "
              f"{scan.hidden} hidden files skipped{note}", file=sys.stderr)
        for name, why in scan.skipped:
            if not why.startswith("not an audio file extension"):  # FIFOs, devices, link loops: one line each
                print(f"  skipped {display_name(name)}: {why}", file=sys.stderr)
    bar = JobProgress(todo, quiet=args.quiet)
    audio_s, t0, failed, interrupted = 0.0, time.perf_counter(), 0, False
    try:
        for res in run_batch(predictor, scan.sources, BatchOptions(hop_s=args.hop, jobs=args.jobs), skip=skip):
            rows = window_rows(res, predictor)
            s = summary_row(res, rows)
            if writer is not None:
                writer.append(res, rows, s)
            summaries[row_key(s)] = s
            failed += not res.ok
            audio_s += res.duration_s
            bar.done(res.duration_s, ok=res.ok, error=res.error)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        if args.summary is not None:
            write_summary(args.summary, list(summaries.values()))
    wall = time.perf_counter() - t0
    failures = [s for s in summaries.values() if s["status"] != "ok"]
    if not args.quiet or failures:
        print(f"tympan predict: {len(summaries) - len(failures)} recordings analysed ({audio_s / 3600:.2f} h of "
              f"audio in {wall:.1f} s, {audio_s / max(wall, 1e-9):.0f}x real time), {len(failures)} could not be "
              f"analysed" + (f"; table: {display_name(args.out)}" if args.out else ""), file=sys.stderr)
        for f in failures[:20]:
            err = str(f["error"])
            print(f"  {err if err.startswith(f['file']) else f['file'] + ': ' + err}", file=sys.stderr)
    if interrupted:
        print("tympan: interrupted; the table holds every file finished so far (--resume continues)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return _exit_code(len(failures), len(scan.sources), args.max_failed_share)
