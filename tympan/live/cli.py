"""``tympan events list|export`` (the event store) and ``tympan listen SOURCE`` (live audio).

Exit codes: 0 done; 2 a usage error or bad input (one line); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
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
