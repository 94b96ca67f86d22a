"""What every ``/stream`` session of one app shares: the event store and the alert rules and sinks.

``tympan serve --store DB --alerts RULES.toml`` (settings ``store``, ``alerts``): the trust of
``tympan listen --store --alerts`` for streams sent to the server. One
:class:`~tympan.live.store.EventStore` per app, opened for several threads (the sessions' forward
passes run on the decode threads; its statements run under a lock, WAL keeps it safe under a
kill), and one :class:`~tympan.live.alerts.AlertManager` (its sinks deliver on their own threads,
so an alert never holds up a stream). Both are opened before the port is bound: a bad rules file
or a store that cannot be written is one line and exit 2, not a server that starts without them.
A ``[drift]`` table in the rules gives each stream its own :class:`~tympan.live.drift.DriftMonitor`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tympan.contracts.events import Event
from tympan.live.alerts import AlertManager, load_alerts
from tympan.live.store import EventStore

if TYPE_CHECKING:  # SciPy's stats and scikit-learn: imported by the streams that check drift only
    from tympan.live.drift import DriftMonitor

__all__ = ["StreamOutputs"]

log = logging.getLogger("tympan.serving")


class _StoreWriter:
    """The listener's store: a write that fails (disk full) is logged and counted, and the stream
    goes on classifying; the listener never sees the error."""

    def __init__(self, store: EventStore) -> None:
        self.store, self.failed = store, 0

    def add_event(self, event: Event) -> None:
        try:
            self.store.add_event(event)
        except sqlite3.Error as exc:
            self.failed += 1
            log.error("tympan: event store %s: event of %s not stored (%s; %d so far)", self.store.path,
                      event.source, exc, self.failed)


class StreamOutputs:
    """The shared store and alert manager of one app (either may be None)."""

    def __init__(self, store: EventStore | None, alerts: AlertManager | None) -> None:
        self.store, self.alerts = store, alerts
        self.writer = _StoreWriter(store) if store is not None else None

    @classmethod
    def open(cls, store: str | Path | None, alerts: str | Path | None, classes: Sequence[str]) -> StreamOutputs | None:
        """Both opened (the rules checked against ``classes``), or a :class:`~tympan.errors.DataError`
        naming the problem; None when neither is asked for."""
        if store is None and alerts is None:
            return None
        manager = None
        if alerts is not None:
            manager = load_alerts(alerts, classes, log=lambda m: log.warning("tympan: %s", m))
        try:
            db = EventStore(store, shared=True) if store is not None else None
        except BaseException:
            if manager is not None:
                manager.close()
            raise
        return cls(db, manager)

    def drift_monitor(self, bundle: Any, *, hop_s: float, clip_s: float) -> DriftMonitor | None:
        """A new stream's drift check, when the rules have a ``[drift]`` table."""
        if self.alerts is None or self.alerts.drift is None:
            return None
        from tympan.live.drift import DriftMonitor

        return DriftMonitor.from_table(bundle, self.alerts.drift, hop_s=hop_s, clip_s=clip_s)

    def close(self) -> None:
        """Deliver the queued alerts (each sink waits up to 30 s), then close the store."""
        if self.alerts is not None:
            self.alerts.close()
        if self.store is not None:
            self.store.close()
