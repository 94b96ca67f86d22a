"""Sound events from window predictions: the one definition.

A window's calibrated probability of a class opens an event of that class when it reaches the
class's ``on`` threshold, and the event goes on while it stays at or above ``off`` (hysteresis,
``off <= on``). Out-of-distribution and background-only windows never open an event (they may
continue one, and are counted in its trust fields). Events of one class separated by a gap
shorter than ``merge_gap_s`` are merged; events shorter than ``min_duration_s`` are dropped.

Time: a window classifies everything in its span, so the first window that fires on a sound
starts before it and the last ends after it. With ``overlap_s`` (δ: how much of a sound a window
holds when it fires; default half a window), a window starting at ``s`` places an event's start
at ``s + W - δ - hop/2`` and its end at ``s + δ + hop/2`` (within the window; ``W`` its length):
with the default, each window owns the central ``hop`` seconds of its span and consecutive
windows tile the timeline. An event whose start would fall after its end (a smaller δ on a lone
window) is one hop around their midpoint. The first window of a stream places a start at its
own start, and an event still open when the stream ends lasts to the end of its last window.
``benchmarks/events.py`` measures onsets under both choices of δ on held-out ESC-50 clips.

:class:`EventDetector` is the streaming form (windows fed one by one, events returned as they
close: at the window that falls below ``off``, or once ``merge_gap_s`` has passed); the batch
form :func:`detect_events` feeds every window and flushes, so the two give identical events.

Closing waits for the sound to end (and the merge gap to pass), seconds after it could be
known. So the streaming form also says when an event is *confirmed* (``on_open``): at the first
window where it has opened and lasted ``min_duration_s`` (counting the earlier part it will be
merged into). From then on it is certain to be emitted: its start is final and it only grows.
The confirmed event carries what is known so far (``end_s``, ``duration_s``, ``windows``, peak
and trust counts up to that window); its close gives the final figures. Every emitted event is
confirmed exactly once, before its close (an event that only reaches its minimum duration by a
lone window's one-hop span is confirmed just before it closes).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from tympan.contracts.events import Event
from tympan.errors import DataError
from tympan.inference.prediction import TrustParams, aggregate, uncertain_mask

__all__ = ["EventConfig", "EventDetector", "EventRule", "WindowScores", "detect_events", "events_from_logits",
           "window_scores"]


@dataclass(frozen=True)
class EventRule:
    """Thresholds of one class (or of every class): hysteresis, minimum duration, merge gap."""

    on: float = 0.5
    off: float = 0.3
    min_duration_s: float = 0.0
    merge_gap_s: float = 0.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.off <= self.on <= 1.0):
            raise DataError(f"event thresholds need 0 <= off <= on <= 1 (got on {self.on}, off {self.off})")
        if self.min_duration_s < 0 or self.merge_gap_s < 0:
            raise DataError("min_duration_s and merge_gap_s must not be negative")


_RULE_KEYS = ("on", "off", "min_duration_s", "merge_gap_s")


@dataclass(frozen=True)
class EventConfig:
    """A default rule, per-class overrides, and optionally the only classes to detect."""

    default: EventRule = field(default_factory=EventRule)
    classes: Mapping[str, EventRule] = field(default_factory=dict)
    only: tuple[str, ...] | None = None
    #: how much of a sound a window holds when it first fires (seconds); None: half a window
    overlap_s: float | None = None

    def rule(self, label: str) -> EventRule:
        return self.classes.get(label, self.default)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EventConfig:
        """``{"on": .., "off": .., "min_duration_s": .., "merge_gap_s": .., "only": [..],
        "classes": {"siren": {"on": 0.7}}}``; a class's keys override the defaults."""
        unknown = set(data) - {*_RULE_KEYS, "only", "classes", "overlap_s"}
        if unknown:
            raise DataError(f"unknown event settings: {', '.join(sorted(unknown))}")
        try:
            default = EventRule(**{k: float(data[k]) for k in _RULE_KEYS if k in data})
        except (TypeError, ValueError) as exc:
            raise DataError(f"event settings must be numbers: {exc}") from exc
        per: dict[str, EventRule] = {}
        for label, over in (data.get("classes") or {}).items():
            bad = set(over) - set(_RULE_KEYS)
            if bad:
                raise DataError(f"unknown event settings for {label!r}: {', '.join(sorted(bad))}")
            per[str(label)] = replace(default, **{k: float(v) for k, v in over.items()})
        only = data.get("only")
        overlap = data.get("overlap_s")
        if overlap is not None and not float(overlap) >= 0:
            raise DataError("overlap_s must not be negative")
        return cls(default, per, tuple(map(str, only)) if only else None,
                   None if overlap is None else float(overlap))

    @classmethod
    def from_toml(cls, path: str | Path | None = None, **overrides: float) -> EventConfig:
        """The ``[events]`` table of a TOML file (or the whole file when it has none), with
        ``overrides`` (e.g. command-line flags) replacing its defaults; classes keep their own keys."""
        data: dict[str, Any] = {}
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise DataError(f"{path}: cannot read event settings: {exc}") from exc
            data = dict(data.get("events", data))
        return cls.from_dict({**data, **overrides})

    def check(self, classes: Sequence[str]) -> None:
        known = set(classes)
        unknown = [c for c in [*self.classes, *(self.only or ())] if c not in known]
        if unknown:
            raise DataError(f"unknown classes in the event settings: {', '.join(sorted(set(unknown)))}")


@dataclass
class _Segment:
    start: float
    end: float
    peak: float
    peak_s: float
    psum: float
    n: int
    ood: int
    bg: int
    unc: int
    max_ood: float
    confirmed: bool = False

    def absorb(self, other: _Segment) -> None:
        """Merge a later segment of the same class into this one."""
        if other.peak > self.peak:
            self.peak, self.peak_s = other.peak, other.peak_s
        self.end = other.end
        self.psum += other.psum
        self.n += other.n
        self.ood += other.ood
        self.bg += other.bg
        self.unc += other.unc
        self.max_ood = max(self.max_ood, other.max_ood)
        self.confirmed = self.confirmed or other.confirmed


class EventDetector:
    """Streaming events: :meth:`push` one window at a time, :meth:`flush` at the end of the stream.

    ``hop_s`` is the stream's window step. Cost per window is a few NumPy operations over the
    classes, whatever the number of open events. ``on_open`` is called with each event when it
    is confirmed (see the module's docstring), during the :meth:`push` that confirms it.
    """

    def __init__(self, classes: Sequence[str], config: EventConfig | None = None, *, hop_s: float,
                 source: str | None = None, start_time: datetime | None = None,
                 on_open: Callable[[Event], None] | None = None) -> None:
        if not hop_s > 0:
            raise DataError("the window step (hop) must be positive")
        self.classes = list(classes)
        self.config = config or EventConfig()
        self.config.check(self.classes)
        rules = [self.config.rule(c) for c in self.classes]
        self.on = np.array([r.on for r in rules])
        self.off = np.array([r.off for r in rules])
        self.gap = np.array([r.merge_gap_s for r in rules])
        self.min_duration = np.array([r.min_duration_s for r in rules])
        only = self.config.only
        self.enabled = np.array([only is None or c in only for c in self.classes])
        self.hop_s = float(hop_s)
        self.source = source
        self.start_time = start_time
        k = len(self.classes)
        self.active = np.zeros(k, bool)
        self.seg_start = np.zeros(k)
        self.seg_end = np.zeros(k)
        self.peak = np.zeros(k)
        self.peak_s = np.zeros(k)
        self.psum = np.zeros(k)
        self.n = np.zeros(k, np.int64)
        self.n_ood = np.zeros(k, np.int64)
        self.n_bg = np.zeros(k, np.int64)
        self.n_unc = np.zeros(k, np.int64)
        self.max_ood = np.full(k, -np.inf)
        self.confirmed = np.zeros(k, bool)
        self.on_open = on_open
        self.pending: dict[int, _Segment] = {}
        self.windows_seen = 0
        self.last_end = 0.0

    # ------------------------------------------------------------------ streaming
    def push(self, start_s: float, end_s: float, probabilities: np.ndarray, *, ood: bool = False,
             background: bool = False, uncertain: bool = False, ood_score: float = 0.0) -> list[Event]:
        """Feed one window; returns the events that closed with it (oldest first)."""
        p = np.asarray(probabilities, np.float64)
        if p.shape != (len(self.classes),):
            raise DataError(f"expected {len(self.classes)} class probabilities, got shape {p.shape}")
        start_s, end_s = float(start_s), float(end_s)
        centre, width, half = (start_s + end_s) / 2, end_s - start_s, self.hop_s / 2
        delta = min(width, width / 2 if self.config.overlap_s is None else self.config.overlap_s)
        first = self.windows_seen == 0
        a = start_s if first else min(end_s, max(start_s, start_s + width - delta - half))
        b = min(end_s, max(start_s, start_s + delta + half))
        # no event opening here or later can start before this
        now = start_s if first else min(a, max(start_s, centre - half))
        out = self._finalize_due(now)
        eligible = not (ood or background)
        opens = ~self.active & self.enabled & (p >= self.on) if eligible else np.zeros_like(self.active)
        cont = self.active & (p >= self.off)
        for k in np.flatnonzero(self.active & ~cont):
            out += self._close(int(k), self.seg_end[k])
        if opens.any():
            self.seg_start[opens] = a
            self.peak[opens] = -1.0
            self.psum[opens] = 0.0
            for arr in (self.n, self.n_ood, self.n_bg, self.n_unc):
                arr[opens] = 0
            self.max_ood[opens] = -np.inf
            self.confirmed[opens] = False
        self.active = opens | cont
        m = self.active
        if m.any():
            higher = m & (p > self.peak)
            self.peak[higher] = p[higher]
            self.peak_s[higher] = centre
            self.psum[m] += p[m]
            self.n[m] += 1
            self.n_ood[m] += int(ood)
            self.n_bg[m] += int(background)
            self.n_unc[m] += int(uncertain)
            self.max_ood[m] = np.maximum(self.max_ood[m], float(ood_score))
            self.seg_end[m] = b
            if self.on_open is not None:
                self._confirm(m & ~self.confirmed)
        out += self._finalize_due(now)
        self.windows_seen += 1
        self.last_end = end_s
        return sorted(out, key=lambda e: (e.start_s, e.index))

    def flush(self) -> list[Event]:
        """End of the stream: close open events (to their last window's end) and emit the rest."""
        out: list[Event] = []
        for k in np.flatnonzero(self.active):
            out += self._close(int(k), max(self.seg_end[k], self.last_end))
        self.active[:] = False
        for k in list(self.pending):
            out += self._emit(k, self.pending.pop(k))
        self.windows_seen = 0
        return sorted(out, key=lambda e: (e.start_s, e.index))

    def push_many(self, starts_s: Sequence[float], ends_s: Sequence[float], probabilities: np.ndarray,
                  scores: WindowScores | None = None) -> list[Event]:
        """Feed windows in order (``scores`` gives their trust flags); returns the events closed."""
        out: list[Event] = []
        for i in range(len(starts_s)):
            flags = {} if scores is None else scores.flags(i)
            out += self.push(starts_s[i], ends_s[i], probabilities[i], **flags)
        return out

    # ------------------------------------------------------------------ internals
    def _confirm(self, candidates: np.ndarray) -> None:
        """Confirm open events that have lasted their minimum duration (with the pending part
        they will merge into). Judged on the unadjusted span: once ``end >= start`` the close
        keeps this start, so the merge decision and the duration can only stand or grow."""
        for k in np.flatnonzero(candidates):
            start, end = float(self.seg_start[k]), float(self.seg_end[k])
            if end < start:
                continue
            prev = self.pending.get(int(k))
            merges = prev is not None and start - prev.end < self.gap[k]
            first = prev.start if merges else start
            if end - first + 1e-9 < self.min_duration[k]:
                continue
            self.confirmed[k] = True
            if merges and prev.confirmed:
                continue  # the event was confirmed before this part
            seg = self._segment(int(k), start, end)
            if merges:
                whole = replace(prev)
                whole.absorb(seg)
                seg = whole
            self.on_open(self._event(int(k), seg))

    def _segment(self, k: int, start: float, end: float) -> _Segment:
        return _Segment(start, float(end), float(self.peak[k]), float(self.peak_s[k]), float(self.psum[k]),
                        int(self.n[k]), int(self.n_ood[k]), int(self.n_bg[k]), int(self.n_unc[k]),
                        float(self.max_ood[k]), bool(self.confirmed[k]))

    def _close(self, k: int, end: float) -> list[Event]:
        start = float(self.seg_start[k])
        if end < start:  # a lone window with a small overlap_s: one hop around the midpoint
            mid = (start + end) / 2
            start, end = mid - self.hop_s / 2, mid + self.hop_s / 2
        seg = self._segment(k, start, end)
        prev = self.pending.get(k)
        if prev is not None and seg.start - prev.end < self.gap[k]:
            prev.absorb(seg)
            return []
        out = self._emit(k, prev) if prev is not None else []
        self.pending[k] = seg
        return out

    def _finalize_due(self, now: float) -> list[Event]:
        """Pending events whose merge gap has passed by ``now`` (no later segment can join them).

        A class that is open again started within the gap: its pending event waits to absorb it."""
        out: list[Event] = []
        for k in [k for k, s in self.pending.items() if not self.active[k] and now - s.end >= self.gap[k]]:
            out += self._emit(k, self.pending.pop(k))
        return out

    def _emit(self, k: int, seg: _Segment) -> list[Event]:
        if seg.end - seg.start + 1e-9 < self.min_duration[k]:
            return []
        e = self._event(k, seg)
        if not seg.confirmed and self.on_open is not None:
            self.on_open(e)  # reached its minimum duration only through a lone window's span
        return [e]

    def _event(self, k: int, seg: _Segment) -> Event:
        duration = seg.end - seg.start
        when = None
        if self.start_time is not None:
            when = (self.start_time + timedelta(seconds=seg.start)).isoformat()
        return Event(label=self.classes[k], index=k, start_s=round(seg.start, 3), end_s=round(seg.end, 3),
                     duration_s=round(duration, 3), peak_s=round(seg.peak_s, 3),
                     peak_probability=round(seg.peak, 4), mean_probability=round(seg.psum / seg.n, 4),
                     windows=seg.n, ood_windows=seg.ood, background_windows=seg.bg, uncertain_windows=seg.unc,
                     max_ood_score=round(seg.max_ood, 4) if math.isfinite(seg.max_ood) else 0.0,
                     source=self.source, start_time=when)


# ---------------------------------------------------------------------- batch form
@dataclass
class WindowScores:
    """Per-window trust flags from the one prediction path (:func:`window_scores`)."""

    probabilities: np.ndarray  # (n, K) calibrated
    ood: np.ndarray  # (n,) bool
    ood_score: np.ndarray  # (n,) the deciding OOD score
    background: np.ndarray  # (n,) bool (all False without a background detector)
    uncertain: np.ndarray  # (n,) bool

    def flags(self, i: int) -> dict[str, Any]:
        return {"ood": bool(self.ood[i]), "background": bool(self.background[i]),
                "uncertain": bool(self.uncertain[i]), "ood_score": float(self.ood_score[i])}


def window_scores(logits: np.ndarray, params: TrustParams, *, embeddings: np.ndarray | None = None,
                  levels: np.ndarray | None = None) -> WindowScores:
    """Calibrated probabilities and trust flags of each window (:func:`tympan.inference.aggregate`)."""
    s = aggregate(logits, params, embeddings=embeddings, levels=levels)
    ood = s.window_out_of_distribution
    bg = s.window_background if s.window_background is not None else np.zeros(len(ood), bool)
    unc = uncertain_mask(s.window_probabilities, ood, bg, params.policy)
    return WindowScores(s.window_probabilities, ood, np.asarray(s.window_ood_score, np.float64), bg, unc)


def _hop(starts_s: np.ndarray, ends_s: np.ndarray) -> float:
    if len(starts_s) >= 2 and starts_s[1] > starts_s[0]:
        return float(starts_s[1] - starts_s[0])
    return float(ends_s[0] - starts_s[0]) if len(starts_s) else 1.0


def detect_events(starts_s: Sequence[float], ends_s: Sequence[float], probabilities: np.ndarray,
                  classes: Sequence[str], config: EventConfig | None = None, *, scores: WindowScores | None = None,
                  hop_s: float | None = None, source: str | None = None,
                  start_time: datetime | None = None) -> list[Event]:
    """Every event of one recording (batch form of :class:`EventDetector`), by start time."""
    starts, ends = np.asarray(starts_s, np.float64), np.asarray(ends_s, np.float64)
    det = EventDetector(classes, config, hop_s=hop_s or _hop(starts, ends), source=source, start_time=start_time)
    out = det.push_many(starts, ends, np.asarray(probabilities, np.float64), scores)
    return sorted(out + det.flush(), key=lambda e: (e.start_s, e.index))


def events_from_logits(logits: np.ndarray, params: TrustParams, classes: Sequence[str], starts_s: Sequence[float],
                       ends_s: Sequence[float], config: EventConfig | None = None, *,
                       embeddings: np.ndarray | None = None, levels: np.ndarray | None = None,
                       hop_s: float | None = None, source: str | None = None,
                       start_time: datetime | None = None) -> list[Event]:
    """Window logits of one recording -> its events, with the trust flags of the one path."""
    sc = window_scores(logits, params, embeddings=embeddings, levels=levels)
    return detect_events(starts_s, ends_s, sc.probabilities, classes, config, scores=sc, hop_s=hop_s,
                         source=source, start_time=start_time)
