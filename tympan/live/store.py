"""The event store: SQLite (stdlib ``sqlite3``) in WAL mode, one schema with a version.

Every event is inserted and committed in its own transaction as it closes, so a listener killed
at any moment leaves a database that reopens with every event committed before the kill (WAL
recovery on open rolls back an unfinished transaction; ``synchronous=NORMAL`` is durable against
a killed process, ``durable=True`` uses ``FULL`` for power loss too). Window rows (optional)
are committed in batches. Readers (``tympan events``, the dashboard) open the same file while a
listener writes: WAL lets them read without blocking it. ``shared=True`` opens one connection
for several threads (the server's ``/stream`` sessions): every statement runs under a lock, so
transactions of two threads never interleave on it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tympan.contracts.events import Event
from tympan.errors import DataError

__all__ = ["SCHEMA_VERSION", "EventStore"]

SCHEMA_VERSION = 1
_EVENT_COLS = [f for f in Event.model_fields]
_COLS_SQL = ", ".join(f'"{c}"' for c in _EVENT_COLS)  # quoted: "index" is an SQL keyword
_SQL_TYPE = {int: "INTEGER", float: "REAL"}
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, stored_at REAL NOT NULL, "
    + ", ".join(f'"{c}" ' + _SQL_TYPE.get(Event.model_fields[c].annotation, "TEXT") for c in _EVENT_COLS) + ")",
    "CREATE INDEX IF NOT EXISTS events_label ON events (label, start_s)",
    "CREATE INDEX IF NOT EXISTS events_source ON events (source, start_s)",
    "CREATE TABLE IF NOT EXISTS windows (id INTEGER PRIMARY KEY, source TEXT, start_s REAL, end_s REAL, "
    "label TEXT, probability REAL, ood_score REAL, out_of_distribution INTEGER, background INTEGER, "
    "uncertain INTEGER, start_time TEXT)",
    "CREATE INDEX IF NOT EXISTS windows_source ON windows (source, start_s)",
]
WINDOW_COLS = ["source", "start_s", "end_s", "label", "probability", "ood_score", "out_of_distribution",
               "background", "uncertain", "start_time"]


class EventStore:
    """Open (or create) a store; ``add_event`` commits at once, ``add_windows`` in batches."""

    def __init__(self, path: str | Path, *, durable: bool = False, readonly: bool = False,
                 shared: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if readonly and not self.path.is_file():
            raise DataError(f"{self.path}: no event store there")
        if self.path.is_dir():
            raise DataError(f"{self.path}: is a folder, not an event store")
        try:
            if readonly:
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10,
                                          check_same_thread=not shared)
            else:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise DataError(f"{self.path}: cannot create the event store's folder ({exc.strerror or exc})") from None
                self.db = sqlite3.connect(self.path, timeout=10, check_same_thread=not shared)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                with self.db:
                    for stmt in _SCHEMA:
                        self.db.execute(stmt)
                    if self.db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
                        self.db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            row = self.db.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.OperationalError as exc:  # a folder it may not write, a read-only file, locked
            raise DataError(f"{self.path}: cannot open or write the event store ({exc})") from exc
        except sqlite3.DatabaseError as exc:
            raise DataError(f"{self.path}: not a tympan event store ({exc})") from exc
        if row is None or int(row[0]) != SCHEMA_VERSION:
            found = None if row is None else row[0]
            raise DataError(f"{self.path}: event store schema version {found}, this tympan reads {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def add_event(self, event: Event) -> int:
        d = event.model_dump()
        with self._lock, self.db:
            cur = self.db.execute(
                f"INSERT INTO events (stored_at, {_COLS_SQL}) VALUES (?{', ?' * len(_EVENT_COLS)})",
                [time.time(), *(d[c] for c in _EVENT_COLS)])
        return int(cur.lastrowid)

    def add_windows(self, rows: Iterable[Sequence[Any]]) -> None:
        """Window rows in :data:`WINDOW_COLS` order, committed together."""
        with self._lock, self.db:
            self.db.executemany(f"INSERT INTO windows ({', '.join(WINDOW_COLS)}) VALUES "
                                f"({', '.join('?' * len(WINDOW_COLS))})", rows)

    # ------------------------------------------------------------------ reading
    def events(self, *, label: Sequence[str] | None = None, source: str | None = None,
               since_s: float | None = None, until_s: float | None = None, min_probability: float | None = None,
               trusted_only: bool = False, limit: int | None = None) -> list[Event]:
        """Stored events, oldest first, filtered by class, source, stream time and peak probability."""
        where, args = [], []
        if label:
            where.append(f"label IN ({', '.join('?' * len(label))})")
            args += list(label)
        if source is not None:
            where.append("source = ?")
            args.append(source)
        if since_s is not None:
            where.append("end_s >= ?")
            args.append(float(since_s))
        if until_s is not None:
            where.append("start_s <= ?")
            args.append(float(until_s))
        if min_probability is not None:
            where.append("peak_probability >= ?")
            args.append(float(min_probability))
        if trusted_only:
            where.append("ood_windows = 0 AND background_windows = 0")
        sql = f"SELECT {_COLS_SQL} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self.db.execute(sql, args).fetchall()
        return [Event(**dict(zip(_EVENT_COLS, r, strict=True))) for r in rows]

    def count(self, table: str = "events") -> int:
        if table not in ("events", "windows"):
            raise ValueError(table)
        with self._lock:
            return int(self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def integrity(self) -> str:
        with self._lock:
            return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])
