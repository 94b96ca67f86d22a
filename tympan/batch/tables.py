"""Tables from batch results: one row per window, one row per file, and their writers.

Rows are built from the one prediction path: :func:`tympan.inference.aggregate` (window
probabilities and energy scores) and :func:`tympan.inference.predict_recording` (the typed
:class:`~tympan.contracts.prediction.WindowPrediction`; every field it has besides ``top_k``
becomes a column, so fields the predictor gains later flow into the tables), with
:func:`tympan.inference.uncertainty_reasons` per window.

Writers append one finished file at a time and record it in a ledger (``<out>.progress.jsonl``,
one JSON line per finished file: its summary row), so an interrupted run leaves a valid table
and ``--resume`` skips exactly the files whose rows are complete:

- CSV: the file's rows are appended with one ``write`` + ``fsync``, then the ledger line; on
  resume the table is cut back to the end the ledger last recorded (a half-written append from a
  crash disappears), so every window is written exactly once.
- Parquet (pyarrow): a Parquet file cannot be appended to, so each finished file's rows go to a
  part file in ``<out>.parts/`` (written atomically), and the table is assembled from the parts
  (atomically, also after Ctrl-C) when the run ends.
- Raven Pro selection tables and Audacity label tracks: one file per recording (written
  atomically) in the ``--out`` folder, as BirdNET-Analyzer does; ``min_probability`` filters.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tympan.batch.engine import FileResult
from tympan.contracts.prediction import WindowPrediction
from tympan.inference import NO_THRESHOLD_NOTE, aggregate, predict_recording, uncertainty_reasons
from tympan.io import atomic_path
from tympan.io import write_text_atomic as atomic_write_text
from tympan.names import display_name, name_fields, spreadsheet_cell

__all__ = ["FORMATS", "SummaryRow", "WindowRow", "check_outputs", "open_writer", "row_key", "source_key", "summary_row", "window_columns",
           "window_rows", "write_summary"]

FORMATS = ("csv", "parquet", "raven", "audacity")
#: WindowPrediction fields that are not copied as they are (top_k becomes label + probability)
_NOT_COPIED = ("start_s", "end_s", "top_k")


class WindowRow(BaseModel):
    """One model window of one recording. Extra fields come from ``WindowPrediction``."""

    model_config = ConfigDict(extra="allow")

    file: str
    start_s: float
    end_s: float
    start_time: str | None = None  # ISO 8601 of the window's start, when the recording's start is known
    label: str
    probability: float
    ood_score: float
    out_of_distribution: bool
    uncertain: bool
    uncertain_reasons: str = ""
    file_b64: str | None = None  # the name's exact bytes (base64) when ``file`` is only its display form


class SummaryRow(BaseModel):
    """One recording of a batch run."""

    file: str
    status: str  # "ok" or "failed"
    error: str | None = None
    duration_s: float | None = None
    windows: int = 0
    top_label: str | None = None
    top_share: float | None = None
    top_labels: str | None = None  # "label share; label share; ..." by share of windows
    ood_share: float | None = None
    uncertain_share: float | None = None
    background_share: float | None = None  # windows flagged background (when the bundle detects it)
    start_time: str | None = None
    start_time_source: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    format: str | None = None
    subtype: str | None = None
    warnings: str = ""
    wall_s: float | None = None
    file_b64: str | None = None  # the name's exact bytes (base64) when ``file`` is only its display form


def window_columns() -> list[str]:
    """Column order of the window table: WindowRow's fields, then WindowPrediction's others."""
    cols = list(WindowRow.model_fields)
    extra = [f for f in WindowPrediction.model_fields if f not in _NOT_COPIED and f not in cols]
    return cols + extra


#: windows scored at once: per-window scores do not depend on other windows, and a bundle that
#: scores OOD on the embedding compares every window with its reference set, so a long recording
#: is scored in chunks to keep memory flat whatever its length
ROW_CHUNK = 256


def window_rows(result: FileResult, predictor: Any) -> list[dict[str, Any]]:
    """The per-window rows of a finished file (empty for failed files)."""
    if not result.ok or not len(result.logits):
        return []
    rows: list[dict[str, Any]] = []
    for lo in range(0, len(result.logits), ROW_CHUNK):
        rows += _chunk_rows(result, predictor, slice(lo, lo + ROW_CHUNK))
    return rows


def _chunk_rows(result: FileResult, predictor: Any, part: slice) -> list[dict[str, Any]]:
    params, classes = predictor.params, predictor.classes
    extra = {"embeddings": None if result.embeddings is None else result.embeddings[part],
             "levels": None if result.levels is None else result.levels[part]}
    logits = result.logits[part]
    pred = predict_recording(logits, params, classes, starts_s=result.starts_s[part],
                             ends_s=result.ends_s[part], top_k=1, **extra)
    scores = aggregate(logits, params, **extra)
    score = scores.window_ood_score if scores.window_ood_score is not None else scores.window_energy
    background = scores.window_background
    rows = []
    for i, w in enumerate(pred.windows):
        unc, reasons = uncertainty_reasons(scores.window_probabilities[i], float(score[i]), params,
                                           bool(background[i]) if background is not None else False)
        fields = {k: v for k, v in w.model_dump().items() if k not in _NOT_COPIED}
        start_time = None
        if result.start_time is not None:
            start_time = (result.start_time + _seconds(w.start_s)).isoformat()
        row = WindowRow(**name_fields(result.source.name), start_s=w.start_s, end_s=w.end_s, start_time=start_time,
                        label=w.top_k[0].label, probability=w.top_k[0].probability,
                        uncertain=unc, uncertain_reasons="; ".join(r for r in reasons if r != NO_THRESHOLD_NOTE),
                        **fields)
        rows.append(row.model_dump())
    return rows


def _seconds(s: float):
    from datetime import timedelta

    return timedelta(seconds=float(s))


def summary_row(result: FileResult, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    info = result.info
    base: dict[str, Any] = {**name_fields(result.source.name), "status": "ok" if result.ok else "failed",
                            "error": result.error, "warnings": "; ".join(result.warnings),
                            "wall_s": round(result.wall_s, 3)}
    if info is not None:
        base.update(duration_s=round(info.source_duration, 3), sample_rate=info.source_sample_rate,
                    channels=info.source_channels, format=info.format, subtype=info.subtype)
    if result.start_time is not None:
        base.update(start_time=result.start_time.isoformat(), start_time_source=result.start_time_source)
    if rows:
        n = len(rows)
        counts = Counter(r["label"] for r in rows).most_common()
        base.update(windows=n, top_label=counts[0][0], top_share=round(counts[0][1] / n, 4),
                    top_labels="; ".join(f"{lab} {c / n:.3f}" for lab, c in counts[:5]),
                    ood_share=round(sum(bool(r["out_of_distribution"]) for r in rows) / n, 4),
                    uncertain_share=round(sum(bool(r["uncertain"]) for r in rows) / n, 4))
        if rows[0].get("background") is not None:
            base["background_share"] = round(sum(bool(r["background"]) for r in rows) / n, 4)
    return SummaryRow(**base).model_dump()


# ------------------------------------------------------------------------------- encoding
def row_key(row: dict[str, Any]) -> tuple[str, str | None]:
    """What identifies a recording across runs: its display name and, where they differ, its bytes."""
    return row["file"], row.get("file_b64")


def source_key(name: str) -> tuple[str, str | None]:
    f = name_fields(name)
    return f["file"], f["file_b64"]


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | dict):
        return json.dumps(v)
    return spreadsheet_cell(v)  # text outputs: a cell never starts like a formula (Parquet stays exact)


def _csv_text(rows: Iterable[dict[str, Any]], columns: Sequence[str], header: bool) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def _arrow_schema(columns: Sequence[str], model: type[BaseModel] | None = None):
    import pyarrow as pa

    def kind(name: str):
        ann = None
        for m in (WindowRow, WindowPrediction, SummaryRow):
            if name in m.model_fields:
                ann = m.model_fields[name].annotation
                break
        text = str(ann)
        if ann is bool or "bool" in text:
            return pa.bool_()
        if ann is int or text.startswith("int") or "int |" in text:
            return pa.int64()
        if ann is float or "float" in text:
            return pa.float64()
        return pa.string()

    return pa.schema([(c, kind(c)) for c in columns])


def _arrow_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]):
    import pyarrow as pa

    schema = _arrow_schema(columns)
    data = {c: [(_cell(r.get(c)) if schema.field(c).type == pa.string() and isinstance(r.get(c), list | dict)
                 else r.get(c)) for r in rows] for c in columns}
    return pa.table(data, schema=schema)


def _write_parquet_atomic(path: Path, tables: Iterable[Any], schema: Any) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as w:
        for t in tables:
            w.write_table(t)


def write_summary(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """One row per file: CSV, Parquet (by suffix) or JSON lines (``.jsonl``/``.json``)."""
    path = Path(path)
    cols = list(SummaryRow.model_fields)
    rows = sorted(rows, key=lambda r: r["file"])
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        _write_parquet_atomic(path, [_arrow_table(rows, cols)], _arrow_schema(cols))
    elif suffix in (".jsonl", ".json"):
        atomic_write_text(path, "".join(json.dumps({c: r.get(c) for c in cols}) + "\n" for r in rows))
    else:
        atomic_write_text(path, _csv_text(rows, cols, header=True))


# -------------------------------------------------------------------------------- writers
#: a ledger larger than this is not one this program wrote (one short JSON line per file)
MAX_LEDGER_BYTES = 256 << 20


class _Ledger:
    """``<name>.progress.jsonl``: one line per finished file (its summary row + writer data).

    The ledger only says which files finished; the table says which rows exist, so writers
    check every entry against the table on resume. A line that is not a summary row (cut by a
    crash, NUL padding, garbage) is counted, reported once and its file redone.
    """

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.entries: dict[tuple[str, str | None], dict[str, Any]] = {}
        self.bad_lines = 0
        if resume and path.exists():
            self._read()
        else:
            path.unlink(missing_ok=True)
        self.rewrite()

    def _read(self) -> None:
        from tympan.errors import OutputError

        if not self.path.is_file() or self.path.stat().st_size > MAX_LEDGER_BYTES:
            raise OutputError(f"{display_name(self.path)}: not a progress ledger of tympan predict; "
                              "remove it (or drop --resume)")
        for line in self.path.read_bytes().decode("utf-8", "replace").splitlines():
            if not line.strip("\0 \t"):
                continue
            try:
                e = SummaryRow.model_validate_json(line).model_dump()
                extra = json.loads(line)
            except (ValueError, TypeError):
                self.bad_lines += 1
                continue
            e.update({k: v for k, v in extra.items() if k == "part" and isinstance(v, str)})
            events = extra.get("events")  # an event table's rows live in its ledger (batch.event_tables)
            if isinstance(events, list) and all(isinstance(x, dict) for x in events):
                e["events"] = events
            self.entries[row_key(e)] = e

    def rewrite(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(e) + "\n" for e in self.entries.values()))

    def add(self, entry: dict[str, Any]) -> None:
        self.entries[row_key(entry)] = entry
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def done(self) -> set[tuple[str, str | None]]:
        return {k for k, e in self.entries.items() if e.get("status") == "ok"}

    def summaries(self) -> list[dict[str, Any]]:
        cols = SummaryRow.model_fields
        return [{k: v for k, v in e.items() if k in cols} for e in self.entries.values()]


class TableWriter:
    """Base: the lock, the ledger; subclasses write the rows."""

    def __init__(self, out: Path, ledger: Path, resume: bool) -> None:
        self.out = Path(out)
        self._lock = _lock(ledger.with_name(ledger.name.replace("progress.jsonl", "lock")), self.out)
        try:
            self.ledger = _Ledger(ledger, resume)
        except BaseException:
            self._unlock()
            raise
        #: one line each for what resume found wrong (the CLI prints them)
        self.notes: list[str] = []
        if self.ledger.bad_lines:
            self.notes.append(f"{self.ledger.bad_lines} unreadable line(s) in {display_name(ledger)} ignored: "
                              "their files are analysed again")

    def done(self) -> set[tuple[str, str | None]]:
        return self.ledger.done()

    def summaries(self) -> list[dict[str, Any]]:
        return self.ledger.summaries()

    def append(self, result: FileResult, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        extra = self._write(result, rows) if result.ok else {}
        self.ledger.add({**summary, **extra})

    def _write(self, result: FileResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None


def _lock(path: Path, out: Path):
    """An exclusive ``flock`` on ``path`` for the writer's lifetime; a second writer is refused."""
    import fcntl

    from tympan.errors import OutputError

    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read(20).strip()
        f.close()
        raise OutputError(f"{display_name(out)}: another tympan predict is writing this output"
                          + (f" (process {pid})" if pid.isdigit() else "") + "; wait for it or choose another --out") from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f


def _csv_records(text: str) -> Iterator[tuple[str, list[str]]]:
    """``(raw text, cells)`` of each complete CSV record of ``text`` (a final line without newline is cut)."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    raw: list[str] = []

    def feed() -> Iterator[str]:
        for line in lines:
            raw.append(line)
            yield line

    reader = csv.reader(feed())
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error:  # an unterminated quote: the rest is a cut append
            return
        yield "".join(raw), cells
        raw.clear()


class CsvWriter(TableWriter):
    def __init__(self, out: Path, resume: bool) -> None:
        out = Path(out)
        super().__init__(out, out.with_name(out.name + ".progress.jsonl"), resume)
        self.columns = window_columns()
        try:
            if resume and out.exists():
                self._resume()
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(out, _csv_text([], self.columns, header=True))
                self.ledger.entries = {k: e for k, e in self.ledger.entries.items() if e.get("status") != "ok"}
                self.ledger.rewrite()
        except BaseException:
            self._unlock()
            raise

    def _resume(self) -> None:
        """Keep exactly the files whose rows the table holds in full; the others are redone."""
        from tympan.errors import OutputError

        header = _csv_text([], self.columns, header=True)
        text = self.out.read_bytes().decode("utf-8", "replace").replace("\0", "")
        records = list(_csv_records(text))
        if not records or records[0][1] != self.columns:
            raise OutputError(f"{display_name(self.out)}: not a window table of this version (its header differs); "
                              "move it away or drop --resume")
        fi, bi = self.columns.index("file"), self.columns.index("file_b64")
        counts = Counter((r[fi], r[bi]) for _, r in records[1:] if len(r) == len(self.columns))
        complete: dict[tuple[str, str], tuple[str, str | None]] = {}
        for k, e in self.ledger.entries.items():
            cell = (str(_cell(e["file"])), str(_cell(e.get("file_b64"))))
            if e.get("status") == "ok" and counts.get(cell) == int(e.get("windows") or 0) > 0:
                complete[cell] = k
        dropped = sum(c for cell, c in counts.items() if cell not in complete)
        lost = [k for k, e in self.ledger.entries.items() if e.get("status") == "ok" and k not in complete.values()]
        self.ledger.entries = {k: e for k, e in self.ledger.entries.items()
                               if e.get("status") != "ok" or k in complete.values()}
        kept = header + "".join(raw for raw, r in records[1:]
                                if len(r) == len(self.columns) and (r[fi], r[bi]) in complete)
        if kept != text or len(text.encode("utf-8")) != self.out.stat().st_size:
            atomic_write_text(self.out, kept)  # a cut append, padding or rows of unfinished files go
        self.ledger.rewrite()
        if lost or dropped:
            self.notes.append(f"--resume: {len(complete)} file(s) complete in {display_name(self.out)}; "
                              f"{len(lost)} the ledger named are incomplete there and {dropped} partial row(s) "
                              "were dropped: those files are analysed again")

    def _write(self, result: FileResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
        data = _csv_text(rows, self.columns, header=False).encode("utf-8")
        fd = os.open(self.out, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        return {}


class ParquetWriter(TableWriter):
    PREVIOUS = "previous.parquet"  # the table an earlier run assembled, on resume

    def __init__(self, out: Path, resume: bool) -> None:
        out = Path(out)
        super().__init__(out, out.with_name(out.name + ".progress.jsonl"), resume)
        try:
            self._open(resume)
        except BaseException:
            self._unlock()
            raise

    def _open(self, resume: bool) -> None:
        out = self.out
        self.columns = window_columns()
        self.parts = out.with_name(out.name + ".parts")
        if not resume:
            shutil.rmtree(self.parts, ignore_errors=True)
        self.parts.mkdir(parents=True, exist_ok=True)
        prev = self.parts / self.PREVIOUS
        if resume and out.exists() and not prev.exists():
            os.replace(out, prev)
        counts = self._previous_counts(prev) if prev.exists() else Counter()
        for key, e in list(self.ledger.entries.items()):
            part = e.get("part") or (self.PREVIOUS if e.get("status") == "ok" else None)
            if part is not None and not (self.parts / part).exists():
                del self.ledger.entries[key]  # its rows are gone: redo it
            elif part == self.PREVIOUS and counts.get(key) != int(e.get("windows") or 0):
                del self.ledger.entries[key]  # the table does not hold its rows in full: redo it
        #: files whose rows are kept from the previous table (the others' rows there are dropped)
        self.keep_previous = {k for k, e in self.ledger.entries.items()
                              if e.get("status") == "ok" and not e.get("part")}
        known = {e.get("part") for e in self.ledger.entries.values()} | {self.PREVIOUS}
        for p in self.parts.iterdir():  # parts of files the ledger never recorded, temporaries
            if p.name not in known:
                p.unlink()
        self.ledger.rewrite()
        self._n = len(known)

    def _previous_counts(self, prev: Path) -> Counter:
        """Rows per file in the previous table; an unreadable one is kept aside, not used."""
        import pyarrow.parquet as pq

        try:
            t = pq.read_table(prev, columns=["file", "file_b64"])
        except Exception:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            aside = self.out.with_name(self.out.name + ".unreadable")
            os.replace(prev, aside)
            self.notes.append(f"--resume: {display_name(self.out)} could not be read (kept as {display_name(aside)}); "
                              "its files are analysed again")
            return Counter()
        return Counter(zip(t.column("file").to_pylist(), t.column("file_b64").to_pylist(), strict=True))

    def _write(self, result: FileResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import pyarrow.parquet as pq

        name = f"{self._n:07d}.parquet"
        self._n += 1
        tmp = self.parts / f".{name}.tmp"
        pq.write_table(_arrow_table(rows, self.columns), tmp)
        os.replace(tmp, self.parts / name)
        return {"part": name}

    def _tables(self, files: list[Path], schema: Any) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for p in files:
            t = pq.read_table(p, schema=schema)
            if p.name == self.PREVIOUS:
                keys = zip(t.column("file").to_pylist(), t.column("file_b64").to_pylist(), strict=True)
                t = t.filter(pa.array([k in self.keep_previous for k in keys], pa.bool_()))
            yield t

    def close(self) -> None:
        try:
            schema = _arrow_schema(self.columns)
            names = [self.PREVIOUS] + [e["part"] for e in self.ledger.entries.values() if e.get("part")]
            files = [self.parts / n for n in dict.fromkeys(names) if (self.parts / n).exists()]
            _write_parquet_atomic(self.out, self._tables(files, schema), schema)
            for e in self.ledger.entries.values():  # their rows now live in the assembled table
                e.pop("part", None)
            self.ledger.rewrite()
            shutil.rmtree(self.parts, ignore_errors=True)
        finally:
            super().close()


RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Label", "Probability", "OOD Score", "Out Of Distribution", "Uncertain",
                 "Begin Path", "File Offset (s)"]


class _PerFileWriter(TableWriter):
    suffix = ""

    def __init__(self, out: Path, resume: bool, min_probability: float, high_hz: float) -> None:
        out = Path(out)
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise ValueError(f"{display_name(out)}: --format raven/audacity writes one file per recording into a folder")
        out.mkdir(parents=True, exist_ok=True)
        super().__init__(out, out / ".tympan-progress.jsonl", resume)
        self.min_probability = float(min_probability)
        self.high_hz = float(high_hz)

    def target(self, result: FileResult) -> Path:
        rel = Path(result.source.rel)
        return self.out / rel.parent / (rel.stem + self.suffix)

    def _write(self, result: FileResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
        keep = [r for r in rows if r["probability"] >= self.min_probability]
        path = self.target(result)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.render(result, keep))
        return {"output": str(path.relative_to(self.out))}


class RavenWriter(_PerFileWriter):
    suffix = ".selection.table.txt"

    def render(self, result: FileResult, rows: list[dict[str, Any]]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        w.writerow(RAVEN_COLUMNS)
        # the band the model saw of this file: its front end's top, or the file's Nyquist if lower
        high = self.high_hz
        if result.info is not None and result.info.source_sample_rate:
            high = min(high, result.info.source_sample_rate / 2)
        for i, r in enumerate(rows, 1):
            w.writerow([i, "Spectrogram 1", 1, f"{r['start_s']:.3f}", f"{r['end_s']:.3f}", 0,
                        f"{high:.0f}", _cell(r["label"]), f"{r['probability']:.4f}", f"{r['ood_score']:.4f}",
                        _cell(r["out_of_distribution"]), _cell(r["uncertain"]),
                        _cell(display_name(result.source.path)), f"{r['start_s']:.3f}"])
        return buf.getvalue()


class AudacityWriter(_PerFileWriter):
    suffix = ".labels.txt"

    def render(self, result: FileResult, rows: list[dict[str, Any]]) -> str:
        return "".join(f"{r['start_s']:.6f}\t{r['end_s']:.6f}\t{_label_text(r['label'])} {r['probability']:.3f}\n"
                       for r in rows)


def _label_text(label: str) -> str:
    """A label as one spreadsheet-safe field of a tab-separated line (a class name is bundle data)."""
    return spreadsheet_cell(display_name(label).replace("\t", " "))


def check_outputs(out: Path | None, summary: Path | None, fmt: str, inputs: Sequence[Path]) -> None:
    """Refuse, before any work, outputs that would destroy something: one line, nothing replaced.

    An output must not be one of the input recordings, a device, a FIFO, a symbolic link or a
    folder (a per-file format's ``--out`` is a folder), nor the other output; its folder must
    take new files.
    """
    import tempfile

    from tympan.errors import OutputError
    from tympan.io import check_replaceable

    targets = [(p, flag) for p, flag in ((out, "--out"), (summary, "--summary")) if p is not None]
    if out is not None and summary is not None and Path(out).absolute() == Path(summary).absolute():
        raise OutputError(f"--out and --summary are the same file ({display_name(out)})")
    ids = set()
    for p in inputs:
        try:
            st = os.stat(p)
            ids.add((st.st_dev, st.st_ino))
        except OSError:
            continue
    for path, flag in targets:
        path = Path(path)
        folder = flag == "--out" and fmt in ("raven", "audacity")
        if folder:
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                raise OutputError(f"{flag} {display_name(path)}: --format {fmt} writes one file per recording "
                                  "into a folder; this is not one")
        else:
            try:
                check_replaceable(path)
            except OutputError as exc:
                raise OutputError(f"{flag} {exc}") from None
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and (st.st_dev, st.st_ino) in ids:
            raise OutputError(f"{flag} {display_name(path)} is one of the input recordings; refusing to overwrite it")
        parent = path if folder else path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=parent, prefix=".tympan-write-check."):
                pass
        except OSError as exc:
            raise OutputError(f"{flag} {display_name(path)}: cannot write in {display_name(parent)} "
                              f"({exc.strerror or exc})") from None


def format_for(out: Path | None, fmt: str | None) -> str:
    """``--format``, else from ``--out``'s suffix (.parquet -> parquet, else csv)."""
    if fmt:
        if fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}")
        return fmt
    return "parquet" if out is not None and Path(out).suffix.lower() == ".parquet" else "csv"


def open_writer(out: Path, fmt: str, *, resume: bool = False, min_probability: float = 0.0,
                high_hz: float = 8000.0) -> TableWriter:
    if fmt == "csv":
        return CsvWriter(out, resume)
    if fmt == "parquet":
        return ParquetWriter(out, resume)
    if fmt == "raven":
        return RavenWriter(out, resume, min_probability, high_hz)
    if fmt == "audacity":
        return AudacityWriter(out, resume, min_probability, high_hz)
    raise ValueError(f"unknown format {fmt!r}")


def read_window_table(path: Path) -> list[dict[str, Any]]:
    """Read back a CSV or Parquet window table (tests, the benchmark)."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_window_table(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """A whole window table at once (atomic): CSV, or Parquet by suffix (merged shard results)."""
    path = Path(path)
    cols = window_columns()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        _write_parquet_atomic(path, [_arrow_table(list(rows), cols)], _arrow_schema(cols))
    else:
        atomic_write_text(path, _csv_text(rows, cols, header=True))
