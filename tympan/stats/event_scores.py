"""Event-based detection scores: precision, recall and F1 of sound events (onset collar).

As sed_eval's event-based metric with ``evaluate_offset=False``: an estimated event is a true
positive when it has the label of a reference event not yet matched and its onset lies within
``collar`` seconds of that event's onset; each reference and each estimate matches at most once.
Matching is per label and per recording; in one dimension with a fixed tolerance, matching the
references in onset order to the earliest unmatched estimate within reach is a maximum matching.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

__all__ = ["EventScores", "event_scores"]

#: (recording, label, onset_s, offset_s); the offset is not scored
EventTuple = tuple[Hashable, str, float, float]


@dataclass
class EventScores:
    tp: int
    fp: int
    fn: int
    per_class: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # label -> (tp, fp, fn)

    @staticmethod
    def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        return p, r, (2 * p * r / (p + r) if p + r else 0.0)

    @property
    def precision(self) -> float:
        return self._prf(self.tp, self.fp, self.fn)[0]

    @property
    def recall(self) -> float:
        return self._prf(self.tp, self.fp, self.fn)[1]

    @property
    def f1(self) -> float:
        """Micro-averaged over every event of every class."""
        return self._prf(self.tp, self.fp, self.fn)[2]

    @property
    def macro_f1(self) -> float:
        """Mean over the classes present in the reference of each class's F1."""
        f = [self._prf(*c)[2] for c in self.per_class.values() if c[0] + c[2] > 0]
        return sum(f) / len(f) if f else 0.0


def event_scores(reference: Iterable[EventTuple], estimated: Iterable[EventTuple], collar: float = 1.0) -> EventScores:
    """Match estimated events to reference events by label and onset (within ``collar`` seconds)."""
    ref: dict[tuple[Hashable, str], list[float]] = defaultdict(list)
    est: dict[tuple[Hashable, str], list[float]] = defaultdict(list)
    for rec, label, onset, _ in reference:
        ref[(rec, label)].append(float(onset))
    for rec, label, onset, _ in estimated:
        est[(rec, label)].append(float(onset))
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for key in set(ref) | set(est):
        r, e = sorted(ref.get(key, [])), sorted(est.get(key, []))
        used = [False] * len(e)
        tp, j = 0, 0
        for onset in r:
            while j < len(e) and (used[j] or e[j] < onset - collar - 1e-9):
                j += 1  # estimates too early for this and every later reference
            if j < len(e) and e[j] <= onset + collar + 1e-9:
                used[j] = True
                tp += 1
                j += 1
        c = per[key[1]]
        c[0] += tp
        c[1] += len(e) - tp
        c[2] += len(r) - tp
    tp, fp, fn = (sum(c[i] for c in per.values()) for i in range(3))
    return EventScores(tp, fp, fn, {k: tuple(v) for k, v in sorted(per.items())})
