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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tympan.batch.engine import FileResult
from tympan.contracts.prediction import WindowPrediction
from tympan.inference import NO_THRESHOLD_NOTE, aggregate, predict_recording, uncertainty_reasons
from tympan.io import write_text_atomic as atomic_write_text

__all__ = ["FORMATS", "SummaryRow", "WindowRow", "open_writer", "summary_row", "window_columns",
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
        row = WindowRow(file=result.source.name, start_s=w.start_s, end_s=w.end_s, start_time=start_time,
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
    base: dict[str, Any] = {"file": result.source.name, "status": "ok" if result.ok else "failed",
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
def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | dict):
        return json.dumps(v)
    return v


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

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with pq.ParquetWriter(tmp, schema) as w:
        for t in tables:
            w.write_table(t)
    os.replace(tmp, path)


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
class _Ledger:
    """``<name>.progress.jsonl``: one line per finished file (its summary row + writer data)."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if resume and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash: that file is redone
                    continue
                self.entries[e["file"]] = e
        else:
            path.unlink(missing_ok=True)
        self.rewrite()

    def rewrite(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(e) + "\n" for e in self.entries.values()))

    def add(self, entry: dict[str, Any]) -> None:
        self.entries[entry["file"]] = entry
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def done(self) -> set[str]:
        return {f for f, e in self.entries.items() if e.get("status") == "ok"}

    def summaries(self) -> list[dict[str, Any]]:
        cols = SummaryRow.model_fields
        return [{k: v for k, v in e.items() if k in cols} for e in self.entries.values()]


class TableWriter:
    """Base: ledger handling; subclasses write the rows."""

    def __init__(self, out: Path, ledger: Path, resume: bool) -> None:
        self.out = Path(out)
        self.ledger = _Ledger(ledger, resume)

    def done(self) -> set[str]:
        return self.ledger.done()

    def summaries(self) -> list[dict[str, Any]]:
        return self.ledger.summaries()

    def append(self, result: FileResult, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        extra = self._write(result, rows) if result.ok else {}
        self.ledger.add({**summary, **extra})

    def _write(self, result: FileResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class CsvWriter(TableWriter):
    def __init__(self, out: Path, resume: bool) -> None:
        out = Path(out)
        super().__init__(out, out.with_name(out.name + ".progress.jsonl"), resume)
        self.columns = window_columns()
        end = max([int(e.get("csv_end", 0)) for e in self.ledger.entries.values()] + [0])
        if resume and out.exists() and end > 0:
            with open(out, "r+b") as f:  # drop whatever was appended after the last recorded file
                f.truncate(end)
            self.ledger.entries = {k: e for k, e in self.ledger.entries.items()
                                   if int(e.get("csv_end", 0)) <= end}
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, _csv_text([], self.columns, header=True))
            self.ledger.entries = {k: e for k, e in self.ledger.entries.items() if e.get("status") != "ok"}
            self.ledger.rewrite()

    def _write(self, result: FileResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
        data = _csv_text(rows, self.columns, header=False).encode("utf-8")
        fd = os.open(self.out, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            end = os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
        return {"csv_end": end}


class ParquetWriter(TableWriter):
    PREVIOUS = "previous.parquet"  # the table an earlier run assembled, on resume

    def __init__(self, out: Path, resume: bool) -> None:
        out = Path(out)
        super().__init__(out, out.with_name(out.name + ".progress.jsonl"), resume)
        self.columns = window_columns()
        self.parts = out.with_name(out.name + ".parts")
        if not resume:
            shutil.rmtree(self.parts, ignore_errors=True)
        self.parts.mkdir(parents=True, exist_ok=True)
        prev = self.parts / self.PREVIOUS
        if resume and out.exists() and not prev.exists():
            os.replace(out, prev)
        for key, e in list(self.ledger.entries.items()):
            part = e.get("part") or (self.PREVIOUS if e.get("status") == "ok" else None)
            if part is not None and not (self.parts / part).exists():
                del self.ledger.entries[key]  # its rows are gone: redo it
        known = {e.get("part") for e in self.ledger.entries.values()} | {self.PREVIOUS}
        for p in self.parts.iterdir():  # parts of files the ledger never recorded, temporaries
            if p.name not in known:
                p.unlink()
        self.ledger.rewrite()
        self._n = len(known)

    def _write(self, result: FileResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import pyarrow.parquet as pq

        name = f"{self._n:07d}.parquet"
        self._n += 1
        tmp = self.parts / f".{name}.tmp"
        pq.write_table(_arrow_table(rows, self.columns), tmp)
        os.replace(tmp, self.parts / name)
        return {"part": name}

    def close(self) -> None:
        import pyarrow.parquet as pq

        schema = _arrow_schema(self.columns)
        names = [self.PREVIOUS] + [e["part"] for e in self.ledger.entries.values() if e.get("part")]
        files = [self.parts / n for n in dict.fromkeys(names) if (self.parts / n).exists()]
        _write_parquet_atomic(self.out, (pq.read_table(p, schema=schema) for p in files), schema)
        for e in self.ledger.entries.values():  # their rows now live in the assembled table
            e.pop("part", None)
        self.ledger.rewrite()
        shutil.rmtree(self.parts, ignore_errors=True)


RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Label", "Probability", "OOD Score", "Out Of Distribution", "Uncertain",
                 "Begin Path", "File Offset (s)"]


class _PerFileWriter(TableWriter):
    suffix = ""

    def __init__(self, out: Path, resume: bool, min_probability: float, high_hz: float) -> None:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out}: --format raven/audacity writes one file per recording into a folder")
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
                        f"{high:.0f}", r["label"], f"{r['probability']:.4f}", f"{r['ood_score']:.4f}",
                        _cell(r["out_of_distribution"]), _cell(r["uncertain"]), str(result.source.path),
                        f"{r['start_s']:.3f}"])
        return buf.getvalue()


class AudacityWriter(_PerFileWriter):
    suffix = ".labels.txt"

    def render(self, result: FileResult, rows: list[dict[str, Any]]) -> str:
        return "".join(f"{r['start_s']:.6f}\t{r['end_s']:.6f}\t{r['label']} {r['probability']:.3f}\n" for r in rows)


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
