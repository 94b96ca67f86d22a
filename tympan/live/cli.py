"""``tympan events list|export`` (the event store) and ``tympan listen SOURCE`` (live audio).

Exit codes: 0 done; 2 a usage error or bad input (one line); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


LISTEN_HELP = """Listen to live audio and print sound events as they are confirmed and as they close.

SOURCE is a file or stream URL ffmpeg reads (rtsp://, http://, a file), `-` for raw PCM on stdin
(--rate, --channels, --pcm-format), a folder with --watch (new finished recordings, each its own
source), or `device` / `device:NAME` for a sound card (the sounddevice package). Each event is
printed when it is confirmed (it opened and lasted its minimum duration: a line starting `open`,
or with --json {"type": "event_open", "event": {...}}) and when it closes (its final figures: a
line, or with --json the event's JSON); closed events go to --store; --verbose adds a line per
window on stderr.
A URL that drops or stalls is reopened with backoff; when the CPU cannot keep up with a live
source the oldest audio is dropped and counted (never silently).
"""


def register(sub: argparse._SubParsersAction) -> None:
    from tympan.batch.cli import _event_arguments

    li = sub.add_parser("listen", help="classify live audio (streams, stdin PCM, a watched folder, a sound card)",
                        description=LISTEN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    li.add_argument("source", metavar="SOURCE")
    li.add_argument("--bundle", type=Path, default=None)
    li.add_argument("--device", default="cpu", help="torch device for the model")
    li.add_argument("--hop", type=float, default=None, metavar="SECONDS", help="window step (default: half a window)")
    li.add_argument("--rate", type=int, default=16000, help="stdin PCM: sample rate")
    li.add_argument("--channels", type=int, default=1, help="stdin PCM: channels (downmixed)")
    li.add_argument("--pcm-format", choices=["s16le", "f32le"], default="s16le", help="stdin PCM sample format")
    li.add_argument("--watch", action="store_true", help="SOURCE is a folder: classify each new finished recording")
    li.add_argument("--store", type=Path, default=None, help="SQLite event store (created if missing)")
    li.add_argument("--store-windows", action="store_true", help="also store one row per window")
    li.add_argument("--json", action="store_true", help="print events as JSON lines")
    li.add_argument("--verbose", action="store_true", help="a line per window on stderr")
    li.add_argument("--max-lag", type=float, default=30.0, metavar="SECONDS",
                    help="drop the oldest audio beyond this backlog (live sources; default 30 s)")
    li.add_argument("--no-drop", action="store_true", help="never drop audio: wait for the classifier instead")
    li.add_argument("--reconnect", action=argparse.BooleanOptionalAction, default=None,
                    help="reopen a stream that ends or stalls (default: on for URLs)")
    li.add_argument("--stall-timeout", type=float, default=15.0, metavar="SECONDS")
    li.add_argument("--max-retries", type=int, default=None, help="give up after this many reconnects in a row")
    li.add_argument("--realtime", action="store_true", help="read a file at its own pace (ffmpeg -re)")
    li.add_argument("--alerts", type=Path, default=None, metavar="TOML",
                    help="alert rules and sinks (webhook, command, MQTT); see docs/live.md")
    li.add_argument("--clips-dir", type=Path, default=None, help="save the audio around each alert here (WAV)")
    li.add_argument("--clips-max-mb", type=float, default=500.0, help="size bound of --clips-dir (oldest removed)")
    _event_arguments(li)
    li.set_defaults(func=cmd_listen)

    ev = sub.add_parser("events", help="list or export the events of a store (tympan listen --store)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    evsub = ev.add_subparsers(dest="events_command", metavar="ACTION", required=True)
    for name, helptext in (("list", "print events, one line each (--json: one JSON object each)"),
                           ("export", "write events to a CSV or Parquet table (by --out's suffix)")):
        p = evsub.add_parser(name, help=helptext)
        p.add_argument("store", type=Path, help="the SQLite store (events.db)")
        p.add_argument("--class", dest="labels", action="append", default=None, metavar="LABEL",
                       help="only this class (repeatable)")
        p.add_argument("--source", default=None, help="only events of this file or stream")
        p.add_argument("--since", default=None, metavar="SECONDS|ISO",
                       help="events ending at or after this stream time (seconds) or wall-clock time (ISO 8601)")
        p.add_argument("--until", default=None, metavar="SECONDS|ISO", help="events starting at or before this")
        p.add_argument("--min-probability", type=float, default=None, help="peak probability at least this")
        p.add_argument("--trusted", action="store_true", help="only events with no OOD or background window inside")
        p.add_argument("--limit", type=int, default=None)
        if name == "list":
            p.add_argument("--json", action="store_true")
        else:
            p.add_argument("--out", type=Path, required=True, help="events.csv or events.parquet")
        p.set_defaults(func=cmd_events)


def _time(value: str | None) -> tuple[float | None, str | None]:
    """``(seconds, None)`` or ``(None, iso)``."""
    if value is None:
        return None, None
    try:
        return float(value), None
    except ValueError:
        from datetime import datetime

        try:
            return None, datetime.fromisoformat(value).isoformat()
        except ValueError:
            raise ValueError(f"{value!r} is neither seconds nor an ISO 8601 time") from None


def select_events(args: argparse.Namespace) -> list[Any]:
    from tympan.live.store import EventStore

    since_s, since_iso = _time(args.since)
    until_s, until_iso = _time(args.until)
    with EventStore(args.store, readonly=True) as store:
        events = store.events(label=args.labels, source=args.source, since_s=since_s, until_s=until_s,
                              min_probability=args.min_probability, trusted_only=args.trusted)
    if since_iso is not None:
        events = [e for e in events if e.start_time is not None and e.start_time >= since_iso]
    if until_iso is not None:
        events = [e for e in events if e.start_time is not None and e.start_time <= until_iso]
    return events[: args.limit] if args.limit is not None else events


def event_line(e: Any) -> str:
    when = f" ({e.start_time})" if e.start_time else ""
    trust = "" if e.trusted else f"  [OOD windows {e.ood_windows}, background windows {e.background_windows}]"
    return (f"{e.source or '-'}  {e.start_s:9.2f}-{e.end_s:9.2f} s{when}  {e.label}  peak {e.peak_probability:.3f}  "
            f"mean {e.mean_probability:.3f}  {e.windows} windows{trust}")


def open_line(e: Any) -> str:
    """A confirmed event: ``open`` and what is known so far."""
    when = f" ({e.start_time})" if e.start_time else ""
    return f"open  {e.source or '-'}  {e.start_s:9.2f} s{when}  {e.label}  peak {e.peak_probability:.3f} so far"


def cmd_events(args: argparse.Namespace) -> int:
    from tympan.batch.event_tables import event_row, write_event_table

    events = select_events(args)
    if args.events_command == "export":
        write_event_table(args.out, [event_row(e) for e in events])
        print(f"tympan events: {len(events)} events -> {args.out}", file=sys.stderr)
        return 0
    try:
        for e in events:
            print(e.model_dump_json() if args.json else event_line(e))
    except BrokenPipeError:
        sys.stderr.close()
    return 0


def _log(msg: str) -> None:
    print(f"tympan listen: {msg}", file=sys.stderr, flush=True)


def cmd_listen(args: argparse.Namespace) -> int:
    import signal
    import threading
    from datetime import datetime, timezone

    from tympan.batch.cli import _bundle_dir, event_config
    from tympan.inference import Predictor
    from tympan.live.listener import Listener
    from tympan.live.sources import device_source, ffmpeg_source, finished_files, is_url, pcm_source
    from tympan.live.store import EventStore

    if args.hop is not None and args.hop <= 0:
        raise ValueError("--hop must be positive")
    predictor = Predictor(_bundle_dir(args.bundle), args.device, max_seconds=None)
    cfg = event_config(args, predictor.classes)
    sr = int(predictor.config.sample_rate)
    alerts = None
    if args.alerts is not None:
        from tympan.live.alerts import load_alerts

        alerts = load_alerts(args.alerts, predictor.classes, clips_dir=args.clips_dir,
                             clips_max_mb=args.clips_max_mb, log=_log)
    store = EventStore(args.store) if args.store is not None else None
    stop = threading.Event()

    def on_term(signum, frame) -> None:  # noqa: ANN001 - signal's signature
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    def on_event(e) -> None:
        print(e.model_dump_json() if args.json else event_line(e), flush=True)

    def on_open(e) -> None:
        from tympan.contracts.stream import StreamEventOpen

        print(StreamEventOpen(event=e).model_dump_json() if args.json else open_line(e), flush=True)

    def on_window(w, st) -> None:
        flags = [f for f, on in (("OOD", w.out_of_distribution), ("background", w.background),
                                 ("uncertain", w.uncertain)) if on]
        lag = f"  lag {st.lag_s:.1f} s" if st.lag_s >= 1 else ""
        drop = f"  dropped {st.dropped_windows}" if st.dropped_windows else ""
        print(f"{w.start_s:9.2f}-{w.end_s:9.2f} s  {w.label} {w.probability:.3f}"
              + (f"  [{', '.join(flags)}]" if flags else "") + lag + drop, file=sys.stderr, flush=True)

    def drift_monitor():  # noqa: ANN202 - a DriftMonitor or None
        if alerts is None or alerts.drift is None:
            return None
        from tympan.batch.stream import default_hop
        from tympan.live.drift import DriftMonitor

        n = int(predictor.config.clip_samples)
        return DriftMonitor.from_table(predictor.bundle, alerts.drift, hop_s=args.hop or default_hop(n) / sr, clip_s=n / sr)

    def on_drift(status) -> None:
        _log(("the model is affected: " + "; ".join(status.reasons)) if status.affected
             else "the drift check no longer finds the model affected")

    def listener(name: str, live: bool) -> Listener:
        return Listener(predictor, cfg, hop_s=args.hop, source=name, store=store, store_windows=args.store_windows,
                        drift=drift_monitor(), on_drift=on_drift,
                        on_event=on_event, on_open=on_open, on_window=on_window if args.verbose else None,
                        start_time=datetime.now(timezone.utc) if live else None,
                        max_lag_s=args.max_lag, drop=live and not args.no_drop, alerts=alerts,
                        keep_audio_s=60.0 if args.clips_dir is not None else 0.0)

    def report(name: str, lis: Listener) -> None:
        st = lis.stats
        rtf = st.audio_s / max(lis.wall_s, 1e-9)
        _log(f"{name}: {st.windows} windows, {st.events} events, {st.audio_s:.1f} s of audio ({rtf:.0f}x real time), "
             f"dropped {st.dropped_windows} windows, max lag {st.max_lag_s:.1f} s, {st.gaps} gaps")

    try:
        if args.watch:
            folder = Path(args.source)
            if not folder.is_dir():
                raise ValueError(f"{folder}: --watch needs a folder")
            _log(f"watching {folder} for new recordings (Ctrl-C stops)")
            for path in finished_files(folder, stop=stop.is_set):
                lis = listener(str(path), live=False)
                try:
                    lis.run(ffmpeg_source(str(path), sr), stop=stop)
                except Exception as exc:  # noqa: BLE001 - one bad recording does not stop the watch
                    _log(f"{path}: {exc}")
                    continue
                report(str(path), lis)
            return 0
        if args.source == "-":
            lis = listener("stdin", live=True)
            blocks = pcm_source(sys.stdin.buffer, args.rate, args.channels, sr, sample_format=args.pcm_format, log=_log)
        elif args.source == "device" or args.source.startswith("device:"):
            name = args.source.partition(":")[2] or None
            lis = listener(args.source, live=True)
            blocks = device_source(int(name) if name and name.isdigit() else name, sr, stop=stop.is_set)
        else:
            url = is_url(args.source)
            if not url and not Path(args.source).exists():
                raise FileNotFoundError(f"{args.source}: no such file")
            reconnect = url if args.reconnect is None else args.reconnect
            lis = listener(args.source, live=url or args.realtime)
            blocks = ffmpeg_source(args.source, sr, reconnect=reconnect, stall_s=args.stall_timeout,
                                   realtime=args.realtime, max_retries=args.max_retries, log=_log)
        try:
            lis.run(blocks, stop=stop)
        finally:
            report(lis.source, lis)
    except KeyboardInterrupt:
        return 130
    finally:
        if alerts is not None:
            alerts.close()  # delivers what is queued (each sink waits up to 30 s)
        if store is not None:
            store.close()
    return 130 if lis.interrupted else 0
