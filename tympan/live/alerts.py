"""Alerts: rules over events, and sinks that deliver them without blocking the listener.

Rules come from a TOML file (stdlib ``tomllib``)::

    [[rules]]
    name = "sirens"
    classes = ["siren"]          # omitted: every class
    min_probability = 0.8        # the event's peak probability
    min_duration_s = 2.0
    cooldown_s = 300             # per rule, source (stream) and class
    quiet_hours = "22:00-06:00"  # no alert whose event starts in this span (UTC, or the event's offset)
    require_trusted = true       # no OOD or background window inside the event
    on = "open"                  # "open" (default): when the event is confirmed; "close": when it ends
    sinks = ["hook"]

    [sinks.hook]
    type = "webhook"             # or "command" (argv, the alert JSON on stdin), "mqtt" (paho-mqtt)
    url = "http://127.0.0.1:8080/alerts"
    retries = 5

    [drift]                      # optional: the sliding-window check (tympan.live.drift)
    window_s = 3600              # look at the last hour of windows
    check_every_s = 60
    min_windows = 100            # non-overlapping windows before anything is concluded
    sinks = ["hook"]             # omitted: every sink; alerts of kind "model_affected"

A rule with ``on = "open"`` fires as soon as the event is confirmed (it opened and lasted its
minimum duration: :mod:`tympan.inference.events`), about one window hop after the sound, instead
of when it closes (the sound's end plus the hysteresis and merge gap). The rule is judged on the
event so far; if it does not match yet (say its ``min_duration_s`` is longer than the events'),
it is judged again on the closed event. An open alert has no clip yet: when the event closes the
same sinks get a close update (``phase = "close"``, ``update = true``: the final figures and the
clip). The clip is written when the event closes, or once ``clip_wait_s`` (default 30 s) of
stream has passed since its start, whichever comes first, so a sound that lasts for hours
still leaves its clip. ``on = "close"`` alerts once, on the closed event.

Each sink runs on its own background thread with a bounded queue: a slow or failing endpoint
never holds up classification (a full queue drops the alert and counts it). The webhook POSTs
the :class:`~tympan.contracts.events.Alert` JSON and retries with exponential backoff on
connection errors and 5xx answers. An alert carries the event, its trust flag and the file name
of a clip of the audio around it (WAV, saved atomically in the clips folder, oldest clips removed
beyond the folder's size bound).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tympan.contracts.events import Alert, DriftStatus, Event
from tympan.errors import DataError
from tympan.io import atomic_path

__all__ = ["AlertManager", "AlertRule", "ClipFolder", "load_alerts"]

#: stream seconds after an open alert's event start at which its clip is written, if not closed
CLIP_WAIT_S = 30.0


def _minutes(hhmm: str) -> int:
    h, _, m = hhmm.strip().partition(":")
    v = int(h) * 60 + int(m or 0)
    if not 0 <= v < 24 * 60:
        raise ValueError(hhmm)
    return v


@dataclass
class AlertRule:
    name: str
    classes: tuple[str, ...] | None = None
    min_probability: float = 0.0
    min_duration_s: float = 0.0
    cooldown_s: float = 0.0
    quiet_hours: tuple[int, int] | None = None  # minutes of the day [from, to)
    require_trusted: bool = False
    sinks: tuple[str, ...] = ()
    on: str = "open"  # "open": when the event is confirmed; "close": when it closes
    #: (source, class) -> stream time of the last alert: streams have clocks of their own
    _last: dict[tuple[str | None, str], float] = field(default_factory=dict, repr=False)

    def in_quiet_hours(self, when: datetime) -> bool:
        if self.quiet_hours is None:
            return False
        a, b = self.quiet_hours
        m = when.hour * 60 + when.minute
        return a <= m < b if a <= b else (m >= a or m < b)

    def matches(self, e: Event, now: datetime) -> bool:
        """Whether ``e`` raises this rule's alert (and, if so, starts its cooldown)."""
        if self.classes is not None and e.label not in self.classes:
            return False
        if e.peak_probability < self.min_probability or e.duration_s < self.min_duration_s:
            return False
        if self.require_trusted and not e.trusted:
            return False
        when = datetime.fromisoformat(e.start_time) if e.start_time else now
        if self.in_quiet_hours(when):
            return False
        key = (e.source, e.label)
        last = self._last.get(key)
        # a clock that went back is a new stream of that name (a camera that reconnected)
        if last is not None and 0 <= e.start_s - last < self.cooldown_s:
            return False
        self._last[key] = e.start_s
        return True


# ---------------------------------------------------------------------------- sinks
class _Sink:
    """A background thread delivering alerts from a bounded queue."""

    def __init__(self, name: str, log: Callable[[str], None], size: int = 256) -> None:
        self.name, self.log = name, log
        self.q: queue.Queue = queue.Queue(maxsize=size)
        self.dropped = self.sent = self.failed = 0
        self.thread = threading.Thread(target=self._loop, daemon=True, name=f"tympan-alert-{name}")
        self.thread.start()

    def submit(self, alert: Alert) -> None:
        try:
            self.q.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            self.log(f"alert sink {self.name}: queue full, alert dropped ({self.dropped} so far)")

    def _loop(self) -> None:
        while True:
            alert = self.q.get()
            if alert is None:
                return
            try:
                self.deliver(alert)
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - a sink failure is reported, never raised
                self.failed += 1
                self.log(f"alert sink {self.name}: {exc}")

    def deliver(self, alert: Alert) -> None:
        raise NotImplementedError

    def close(self, timeout: float = 30.0) -> None:
        self.q.put(None)
        self.thread.join(timeout)


class WebhookSink(_Sink):
    def __init__(self, name: str, url: str, log: Callable[[str], None], *, retries: int = 5,
                 backoff_s: float = 0.5, timeout_s: float = 10.0, headers: dict[str, str] | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise DataError(f"alert sink {name}: url must be http:// or https://")
        self.url, self.retries, self.backoff_s, self.timeout_s = url, int(retries), float(backoff_s), float(timeout_s)
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        super().__init__(name, log)

    def deliver(self, alert: Alert) -> None:
        body = alert.model_dump_json().encode()
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                    r.read()
                return
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or attempt == self.retries:
                    raise RuntimeError(f"POST {self.url}: HTTP {exc.code}") from None
            except (urllib.error.URLError, OSError) as exc:
                if attempt == self.retries:
                    raise RuntimeError(f"POST {self.url}: {exc}") from None
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


class CommandSink(_Sink):
    def __init__(self, name: str, argv: Sequence[str], log: Callable[[str], None], timeout_s: float = 30.0) -> None:
        if not argv:
            raise DataError(f"alert sink {name}: argv must name a command")
        self.argv, self.timeout_s = list(map(str, argv)), float(timeout_s)
        super().__init__(name, log)

    def deliver(self, alert: Alert) -> None:
        r = subprocess.run(self.argv, input=alert.model_dump_json().encode(), capture_output=True,
                           timeout=self.timeout_s)
        if r.returncode != 0:
            raise RuntimeError(f"{self.argv[0]} exited {r.returncode}")


class MqttSink(_Sink):
    def __init__(self, name: str, host: str, topic: str, log: Callable[[str], None], port: int = 1883) -> None:
        try:
            import paho.mqtt.publish as publish
        except ImportError as exc:
            raise DataError(f"alert sink {name}: MQTT needs paho-mqtt (pip install 'tympan[live]')") from exc
        self.publish, self.host, self.port, self.topic = publish.single, host, int(port), topic
        super().__init__(name, log)

    def deliver(self, alert: Alert) -> None:
        self.publish(self.topic, alert.model_dump_json(), hostname=self.host, port=self.port)


# ---------------------------------------------------------------------------- clips
class ClipFolder:
    """Audio clips of alerts, WAV, written atomically; the oldest removed beyond ``max_bytes``."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = Path(folder), int(max_bytes)
        self.folder.mkdir(parents=True, exist_ok=True)

    def save(self, name: str, audio: np.ndarray, sr: int) -> str:
        import soundfile as sf

        path = self.folder / name
        with atomic_path(path) as tmp:
            sf.write(tmp, audio, sr, format="WAV", subtype="PCM_16")
        self._bound()
        return path.name

    def _bound(self) -> None:
        files = sorted((p for p in self.folder.glob("*.wav")), key=lambda p: p.stat().st_mtime_ns)
        total = sum(p.stat().st_size for p in files)
        while files and total > self.max_bytes:
            p = files.pop(0)
            total -= p.stat().st_size
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- manager
class AlertManager:
    """Rules + sinks + clips; :meth:`handle` is called with each closed event."""

    def __init__(self, rules: list[AlertRule], sinks: dict[str, _Sink], clips: ClipFolder | None = None,
                 pad_s: float = 1.0) -> None:
        self.rules, self.sinks, self.clips, self.pad_s = rules, sinks, clips, float(pad_s)
        self.raised = 0
        #: the ``[drift]`` table: sinks of "model affected" alerts (None: all) and the check's
        #: settings (``window_s``, ``check_every_s``, ``min_windows``); None without the table
        self.drift_sinks: list[str] | None = None
        self.drift: dict[str, float] | None = None
        self.clip_wait_s = CLIP_WAIT_S
        #: events with open alerts: (source, label, start_s) -> [the rules that fired, the clip]
        self._open: dict[tuple[str | None, str, float], list[Any]] = {}
        #: the server's /stream sessions call in from several threads (rules' cooldowns, ``_open``)
        self._lock = threading.RLock()

    def _clip(self, key: tuple[str | None, str, float], end_s: float,
              audio: Callable[[float, float], np.ndarray | None] | None, sr: int) -> str | None:
        """The audio of the event ``key`` = (source, label, start_s) up to ``end_s``, saved."""
        source, label, start_s = key
        if self.clips is None or audio is None:
            return None
        y = audio(max(0.0, start_s - self.pad_s), end_s)
        if y is None or not len(y):
            return None
        stem = "".join(c if c.isalnum() else "_" for c in (source or "stream"))[-40:]
        return self.clips.save(f"{stem}_{start_s:010.2f}_{label}.wav", y, sr)

    def _send(self, rule: AlertRule, alert: Alert, out: list[Alert]) -> None:
        for s in rule.sinks:
            self.sinks[s].submit(alert)
        self.raised += 1
        out.append(alert)

    def handle_open(self, e: Event) -> list[Alert]:
        """A confirmed event (figures so far): the alerts of the ``on = "open"`` rules it matches."""
        with self._lock:
            return self._handle_open(e)

    def _handle_open(self, e: Event) -> list[Alert]:
        now = datetime.now(timezone.utc)
        out: list[Alert] = []
        fired = [r for r in self.rules if r.on == "open" and r.matches(e, now)]
        for rule in fired:
            self._send(rule, Alert(rule=rule.name, event=e, phase="open", trusted=e.trusted,
                                   raised_at=now.isoformat()), out)
        if fired:
            self._open[(e.source, e.label, e.start_s)] = [fired, None]
        return out

    def tick(self, now_s: float, audio: Callable[[float, float], np.ndarray | None] | None = None,
             sr: int = 16000, source: str | None = None) -> None:
        """Stream time ``now_s`` of ``source`` (None: the only one): write the clips of its
        open-alerted events started ``clip_wait_s`` ago."""
        with self._lock:
            for key, entry in self._open.items():
                if source is not None and key[0] != source:
                    continue
                if entry[1] is None and now_s - key[2] >= self.clip_wait_s:
                    entry[1] = self._clip(key, now_s, audio, sr) or ""  # "": tried, no audio kept

    def handle(self, e: Event, audio: Callable[[float, float], np.ndarray | None] | None = None,
               sr: int = 16000) -> list[Alert]:
        """A closed event: close updates of its open alerts, and the rules judged at the close."""
        with self._lock:
            return self._handle(e, audio, sr)

    def _handle(self, e: Event, audio: Callable[[float, float], np.ndarray | None] | None,
                sr: int) -> list[Alert]:
        now = datetime.now(timezone.utc)
        out: list[Alert] = []
        key = (e.source, e.label, e.start_s)
        fired, clip = self._open.pop(key, [[], None])
        tried = clip is not None
        clip = clip or None
        for rule in self.rules:
            update = any(rule is f for f in fired)
            if not update and not rule.matches(e, now):
                continue
            if not tried:
                clip, tried = self._clip(key, e.end_s + self.pad_s, audio, sr), True
            self._send(rule, Alert(rule=rule.name, event=e, phase="close", update=update, trusted=e.trusted,
                                   clip=clip, raised_at=now.isoformat()), out)
        return out

    def model_affected(self, status: DriftStatus, source: str | None = None) -> Alert:
        """The drift check found the model affected: an alert of kind ``model_affected`` to the
        ``[drift]`` table's sinks (every sink when it names none)."""
        alert = Alert(kind="model_affected", rule=f"drift ({source})" if source else "drift", drift=status,
                      trusted=False, raised_at=datetime.now(timezone.utc).isoformat())
        with self._lock:
            for name in self.drift_sinks if self.drift_sinks is not None else self.sinks:
                self.sinks[name].submit(alert)
            self.raised += 1
        return alert

    def close(self) -> None:
        for s in self.sinks.values():
            s.close()


def load_alerts(path: str | Path, classes: Sequence[str], *, clips_dir: Path | None = None,
                clips_max_mb: float = 500.0, log: Callable[[str], None] = lambda m: None) -> AlertManager:
    """An :class:`AlertManager` from a TOML file (see the module's docstring); errors name the key."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read alert rules: {exc}") from exc
    sinks: dict[str, _Sink] = {}
    for name, spec in (data.get("sinks") or {}).items():
        kind = spec.get("type")
        try:
            if kind == "webhook":
                sinks[name] = WebhookSink(name, spec["url"], log, retries=spec.get("retries", 5),
                                          backoff_s=spec.get("backoff_s", 0.5), timeout_s=spec.get("timeout_s", 10.0),
                                          headers=spec.get("headers"))
            elif kind == "command":
                sinks[name] = CommandSink(name, spec["argv"], log, spec.get("timeout_s", 30.0))
            elif kind == "mqtt":
                sinks[name] = MqttSink(name, spec["host"], spec["topic"], log, spec.get("port", 1883))
            else:
                raise DataError(f"{path}: sink {name!r} has unknown type {kind!r} (webhook, command or mqtt)")
        except KeyError as exc:
            raise DataError(f"{path}: sink {name!r} needs {exc.args[0]!r}") from None
    rules = []
    known = set(classes)
    for i, r in enumerate(data.get("rules") or []):
        name = str(r.get("name", f"rule {i + 1}"))
        bad = set(r) - {"name", "classes", "min_probability", "min_duration_s", "cooldown_s", "quiet_hours",
                        "require_trusted", "sinks", "on"}
        if bad:
            raise DataError(f"{path}: rule {name!r}: unknown keys {', '.join(sorted(bad))}")
        cls = r.get("classes")
        if cls is not None and set(cls) - known:
            raise DataError(f"{path}: rule {name!r}: unknown classes {', '.join(sorted(set(cls) - known))}")
        missing = [s for s in r.get("sinks", []) if s not in sinks]
        if missing:
            raise DataError(f"{path}: rule {name!r}: no sink named {', '.join(missing)}")
        quiet = None
        if r.get("quiet_hours"):
            try:
                a, b = str(r["quiet_hours"]).split("-")
                quiet = (_minutes(a), _minutes(b))
            except ValueError:
                raise DataError(f"{path}: rule {name!r}: quiet_hours must read like \"22:00-06:00\"") from None
        on = r.get("on", "open")
        if on not in ("open", "close"):
            raise DataError(f"{path}: rule {name!r}: on must be \"open\" or \"close\" (got {on!r})")
        rules.append(AlertRule(name, tuple(cls) if cls is not None else None, float(r.get("min_probability", 0.0)),
                               float(r.get("min_duration_s", 0.0)), float(r.get("cooldown_s", 0.0)), quiet,
                               bool(r.get("require_trusted", False)), tuple(r.get("sinks", [])), on))
    drift = data.get("drift")
    if not rules and drift is None:
        raise DataError(f"{path}: no [[rules]] and no [drift]")
    clips = ClipFolder(clips_dir, int(clips_max_mb * 1e6)) if clips_dir is not None else None
    manager = AlertManager(rules, sinks, clips)
    if drift is not None:
        bad = set(drift) - {"window_s", "check_every_s", "min_windows", "sinks"}
        if bad:
            raise DataError(f"{path}: [drift]: unknown keys {', '.join(sorted(bad))}")
        missing = [s for s in drift.get("sinks", []) if s not in sinks]
        if missing:
            raise DataError(f"{path}: [drift]: no sink named {', '.join(missing)}")
        manager.drift_sinks = list(drift["sinks"]) if "sinks" in drift else None
        manager.drift = {k: float(v) for k, v in drift.items() if k != "sinks"}
    return manager
