"""Event tables from batch results: ``tympan predict --format events|raven-events|audacity-events``.

Each finished file's windows go through the one event definition
(:class:`tympan.inference.events.EventDetector`, fed in chunks so memory stays flat whatever the
recording's length). Events are few, so the CSV / Parquet table keeps each file's events in the
resume ledger (one JSON line per finished file, fsynced) and writes the table atomically from it
when the run ends (also after Ctrl-C); ``--resume`` after a kill rebuilds it from the ledger.
Raven selection tables and Audacity label tracks of events reuse the window writers: one file
per recording, a row per event (``Probability`` = the event's peak probability).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tympan.batch.engine import FileResult
from tympan.batch.tables import ROW_CHUNK, AudacityWriter, RavenWriter, TableWriter, _csv_text
from tympan.batch.tables import read_window_table as read_event_table  # any CSV/Parquet table
from tympan.contracts.events import Event
from tympan.inference.events import EventConfig, EventDetector, window_scores
from tympan.io import atomic_path, write_text_atomic

__all__ = ["EVENT_COLUMNS", "EVENT_FORMATS", "events_for_result", "open_event_writer", "read_event_table",
           "write_event_table"]

EVENT_FORMATS = ("events", "raven-events", "audacity-events")
#: one row per event: the file, then the Event contract's fields (its ``source`` is the file)
EVENT_COLUMNS = ["file"] + [f for f in Event.model_fields if f != "source"]


def events_for_result(result: FileResult, predictor: Any, config: EventConfig | None = None,
                      hop_s: float | None = None) -> list[Event]:
    """The events of one finished file (none for failed files)."""
    if not result.ok or not len(result.logits):
        return []
    starts, ends = result.starts_s, result.ends_s
    if hop_s is None:
        hop_s = float(starts[1] - starts[0]) if len(starts) > 1 else float(ends[0] - starts[0])
    det = EventDetector(predictor.classes, config, hop_s=max(hop_s, 1e-3), source=result.source.name,
                        start_time=result.start_time)
    out: list[Event] = []
    for lo in range(0, len(result.logits), ROW_CHUNK):
        part = slice(lo, lo + ROW_CHUNK)
        sc = window_scores(result.logits[part], predictor.params,
                           embeddings=None if result.embeddings is None else result.embeddings[part],
                           levels=None if result.levels is None else result.levels[part])
        out += det.push_many(starts[part], ends[part], sc.probabilities, sc)
    return sorted(out + det.flush(), key=lambda e: (e.start_s, e.index))


def event_row(e: Event) -> dict[str, Any]:
    d = e.model_dump()
    return {"file": d.pop("source"), **d}


def _event_schema():
    import pyarrow as pa

    kinds = {int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
    return pa.schema([("file", pa.string())] + [(c, kinds.get(Event.model_fields[c].annotation, pa.string()))
                                                for c in EVENT_COLUMNS[1:]])


def write_event_table(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Event rows (:data:`EVENT_COLUMNS`) as CSV, or Parquet by suffix, written atomically."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _event_schema()
        table = pa.table({c: [r.get(c) for r in rows] for c in EVENT_COLUMNS}, schema=schema)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    else:
        write_text_atomic(path, _csv_text(rows, EVENT_COLUMNS, header=True))


class EventTableWriter(TableWriter):
    """CSV or Parquet (by suffix): each file's events in the ledger, the table written at close."""

    def __init__(self, out: Path, resume: bool, detect) -> None:
        out = Path(out)
        super().__init__(out, out.with_name(out.name + ".progress.jsonl"), resume)
        self.detect = detect
        write_event_table(out, self.rows())  # a valid (maybe empty) table from the start

    def _write(self, result: FileResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {"events": [event_row(e) for e in self.detect(result)]}

    def rows(self) -> list[dict[str, Any]]:
        entries = sorted(self.ledger.entries.values(), key=lambda e: e["file"])
        return [r for e in entries for r in e.get("events") or []]

    def close(self) -> None:
        write_event_table(self.out, self.rows())


def _as_window_rows(events: Sequence[Event]) -> list[dict[str, Any]]:
    """Events in the shape the Raven/Audacity window writers render."""
    return [{"start_s": e.start_s, "end_s": e.end_s, "label": e.label, "probability": e.peak_probability,
             "ood_score": e.max_ood_score, "out_of_distribution": e.ood_windows > 0,
             "uncertain": e.uncertain_windows > 0} for e in events]


class _PerFileEvents:
    """Mixin over a per-recording window writer: it renders the file's events instead."""

    def __init__(self, out: Path, resume: bool, min_probability: float, high_hz: float, detect) -> None:
        super().__init__(out, resume, min_probability, high_hz)  # type: ignore[call-arg]
        self.detect = detect

    def _write(self, result: FileResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return super()._write(result, _as_window_rows(self.detect(result)))  # type: ignore[misc]


class RavenEventWriter(_PerFileEvents, RavenWriter):
    suffix = ".events.selection.table.txt"


class AudacityEventWriter(_PerFileEvents, AudacityWriter):
    suffix = ".events.labels.txt"


def open_event_writer(out: Path, fmt: str, predictor: Any, config: EventConfig | None = None, *,
                      hop_s: float | None = None, resume: bool = False, min_probability: float = 0.0,
                      high_hz: float = 8000.0) -> TableWriter:
    def detect(result: FileResult) -> list[Event]:
        return events_for_result(result, predictor, config, hop_s)

    if fmt == "events":
        return EventTableWriter(out, resume, detect)
    if fmt == "raven-events":
        return RavenEventWriter(out, resume, min_probability, high_hz, detect)
    if fmt == "audacity-events":
        return AudacityEventWriter(out, resume, min_probability, high_hz, detect)
    raise ValueError(f"unknown event format {fmt!r}")
