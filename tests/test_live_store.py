"""The SQLite event store: schema version, filters, CSV/Parquet export through ``tympan events``,
and a writer process killed mid-stream leaving a store that reopens intact."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tympan.batch.event_tables import read_event_table
from tympan.cli import main
from tympan.contracts.events import Event
from tympan.errors import DataError
from tympan.live.store import SCHEMA_VERSION, EventStore

REPO = Path(__file__).resolve().parents[1]


def _event(i: int, label: str = "dog", p: float = 0.9, ood: int = 0) -> Event:
    return Event(label=label, index=0, start_s=10.0 * i, end_s=10.0 * i + 3, duration_s=3.0, peak_s=10.0 * i + 1,
                 peak_probability=p, mean_probability=p - 0.1, windows=3, ood_windows=ood, max_ood_score=0.5,
                 source="cam1", start_time=f"2026-01-01T00:{i:02d}:00+00:00")


def test_store_round_trip_filters_and_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "events.db"
    with EventStore(db) as s:
        for i, (label, p, ood) in enumerate([("dog", 0.9, 0), ("siren", 0.6, 0), ("dog", 0.55, 2), ("rain", 0.95, 0)]):
            s.add_event(_event(i, label, p, ood))
        assert s.count() == 4 and s.integrity() == "ok"
    with EventStore(db, readonly=True) as s:
        assert [e.label for e in s.events(label=["dog"])] == ["dog", "dog"]
        assert [e.label for e in s.events(min_probability=0.8)] == ["dog", "rain"]
        assert [e.label for e in s.events(since_s=12, until_s=25)] == ["siren", "dog"]
        assert [e.label for e in s.events(trusted_only=True)] == ["dog", "siren", "rain"]
        assert s.events()[1] == _event(1, "siren", 0.6)
    assert main(["events", "list", str(db), "--class", "dog", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["peak_probability"] for x in lines] == [0.9, 0.55]
    assert main(["events", "list", str(db), "--since", "2026-01-01T00:02:00+00:00"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "dog" in out[0] and "OOD windows 2" in out[0] and "rain" in out[1]
    assert main(["events", "export", str(db), "--out", str(tmp_path / "e.parquet"), "--trusted"]) == 0
    rows = read_event_table(tmp_path / "e.parquet")
    assert [(r["file"], r["label"], r["windows"]) for r in rows] == [("cam1", "dog", 3), ("cam1", "siren", 3),
                                                                    ("cam1", "rain", 3)]
    assert main(["events", "export", str(db), "--out", str(tmp_path / "e.csv")]) == 0
    assert len(read_event_table(tmp_path / "e.csv")) == 4


def test_bad_stores_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DataError, match="not a tympan event store"):
        EventStore(junk)
    assert main(["events", "list", str(tmp_path / "missing.db")]) == 2
    assert "no event store there" in capsys.readouterr().err
    db = tmp_path / "old.db"
    EventStore(db).close()
    with sqlite3.connect(db) as c:
        c.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(DataError, match=f"schema version 99, this tympan reads {SCHEMA_VERSION}"):
        EventStore(db)
    assert main(["events", "list", str(db), "--since", "yesterday"]) == 2
    assert "neither seconds nor an ISO 8601 time" in capsys.readouterr().err


WRITER = """
import sys
from tympan.contracts.events import Event
from tympan.live.store import EventStore
s = EventStore(sys.argv[1])
i = 0
while True:
    s.add_windows([("cam1", i * 0.5, i * 0.5 + 5, "dog", 0.5, 0.1, 0, 0, 0, None)] * 50)
    s.add_event(Event(label="dog", index=0, start_s=i, end_s=i + 1, duration_s=1, peak_s=i, peak_probability=0.9,
                      mean_probability=0.8, windows=2, max_ood_score=0.0, source="cam1"))
    print(i, flush=True)
    i += 1
"""


def test_a_killed_writer_leaves_a_store_that_reopens_intact(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True, env=env)
    confirmed = -1
    deadline = time.monotonic() + 60
    try:
        while confirmed < 200 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            confirmed = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-write: it never stops between commits
        proc.wait(10)
    assert confirmed >= 200, "the writer did not get going"
    with EventStore(db) as s:  # reopens for writing: WAL recovery
        assert s.integrity() == "ok"
        n = s.count()
        assert n >= confirmed + 1  # every event it reported committed is there
        events = s.events()
        assert [e.start_s for e in events] == [float(i) for i in range(n)]
        s.add_event(events[0])  # and takes new ones
        assert s.count() == n + 1
