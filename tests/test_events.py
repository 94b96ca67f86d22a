"""Sound events from window predictions (tympan.inference.events): exact boundaries on
hand-made windows, hysteresis, trust flags, merge gap and minimum duration, the streaming form
against an independent offline reference, and the per-window uncertainty flag against the
one prediction path's."""

from __future__ import annotations

import numpy as np
import pytest

from tympan.errors import DataError
from tympan.inference import TrustParams, UncertaintyPolicy, uncertain_mask, uncertainty_reasons
from tympan.inference.events import EventConfig, EventDetector, EventRule, WindowScores, detect_events

CLASSES = ["dog", "siren", "rain"]


def _probs(col: list[float], k: int = 0, n_classes: int = 3) -> np.ndarray:
    p = np.zeros((len(col), n_classes))
    p[:, k] = col
    return p


def _scores(n: int, ood=(), background=(), uncertain=()) -> WindowScores:
    def mask(ix):
        m = np.zeros(n, bool)
        m[list(ix)] = True
        return m

    return WindowScores(np.zeros((n, 3)), mask(ood), np.where(mask(ood), 5.0, -1.0), mask(background),
                        mask(uncertain))


CASE_A = [0.0, 0.6, 0.4, 0.35, 0.2, 0.1, 0.7, 0.1, 0.8, 0.9]  # 1 s windows, 1 s hop


def test_hysteresis_boundaries_exact():
    starts = np.arange(10.0)
    ev = detect_events(starts, starts + 1, _probs(CASE_A), CLASSES, EventConfig(EventRule(on=0.5, off=0.3)))
    assert [(e.label, e.start_s, e.end_s, e.windows) for e in ev] == [
        ("dog", 1.0, 4.0, 3), ("dog", 6.0, 7.0, 1), ("dog", 8.0, 10.0, 2)]
    first = ev[0]
    assert first.peak_probability == 0.6 and first.peak_s == 1.5
    assert first.mean_probability == pytest.approx((0.6 + 0.4 + 0.35) / 3, abs=1e-4)
    assert first.duration_s == 3.0 and first.trusted
    # without hysteresis (off = on) the 0.4 window ends the first event at once
    ev = detect_events(starts, starts + 1, _probs(CASE_A), CLASSES, EventConfig(EventRule(on=0.5, off=0.5)))
    assert [(e.start_s, e.end_s) for e in ev] == [(1.0, 2.0), (6.0, 7.0), (8.0, 10.0)]


def test_merge_gap_and_min_duration():
    starts = np.arange(10.0)
    merged = detect_events(starts, starts + 1, _probs(CASE_A), CLASSES,
                           EventConfig(EventRule(on=0.5, off=0.3, merge_gap_s=1.5)))
    assert [(e.start_s, e.end_s, e.windows) for e in merged] == [(1.0, 4.0, 3), (6.0, 10.0, 3)]
    assert merged[1].peak_probability == 0.9 and merged[1].peak_s == 9.5
    long = detect_events(starts, starts + 1, _probs(CASE_A), CLASSES,
                         EventConfig(EventRule(on=0.5, off=0.3, min_duration_s=2.0)))
    assert [(e.start_s, e.end_s) for e in long] == [(1.0, 4.0), (8.0, 10.0)]


def test_overlapping_windows_own_their_central_hop():
    # 2 s windows every 1 s: a window owns centre +- 0.5 s; the first one owns from 0; an
    # event open at the end lasts to its last window's end
    starts = np.arange(6.0)
    col = [0.9, 0.9, 0.1, 0.1, 0.9, 0.9]
    ev = detect_events(starts, starts + 2, _probs(col), CLASSES, EventConfig(EventRule(on=0.5, off=0.3)))
    assert [(e.start_s, e.end_s, e.windows) for e in ev] == [(0.0, 2.5, 2), (4.5, 7.0, 2)]


def test_overlap_places_boundaries_inside_the_firing_windows():
    # 5 s windows every 1 s; a window fires once it holds 1 s of the sound: windows starting at
    # 3..6 put the sound at 3 + 5 - 1 = 7 .. 6 + 1 = 7, the event one hop around it
    starts = np.arange(10.0)
    col = [0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.9, 0.0, 0.0, 0.0]
    cfg = EventConfig(EventRule(on=0.5, off=0.3), overlap_s=1.0)
    ev = detect_events(starts, starts + 5, _probs(col), CLASSES, cfg, hop_s=1.0)
    assert [(e.start_s, e.end_s, e.windows) for e in ev] == [(6.5, 7.5, 4)]
    lone = [0.0, 0.0, 0.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # start 6.5 > end 4.5: around 5.5
    ev = detect_events(starts, starts + 5, _probs(lone), CLASSES, cfg, hop_s=1.0)
    assert [(e.start_s, e.end_s) for e in ev] == [(5.0, 6.0)]


def test_ood_and_background_windows_never_open_an_event_but_are_counted_inside():
    starts = np.arange(6.0)
    col = [0.9, 0.9, 0.9, 0.2, 0.9, 0.9]
    sc = _scores(6, ood=[0, 2], background=[4], uncertain=[2])
    ev = detect_events(starts, starts + 1, _probs(col), CLASSES, EventConfig(), scores=sc)
    # window 0 is OOD: the event opens at window 1 and carries window 2's OOD flag; window 4 is
    # background, so the second event opens at window 5
    assert [(e.start_s, e.end_s, e.windows) for e in ev] == [(1.0, 3.0, 2), (5.0, 6.0, 1)]
    assert (ev[0].ood_windows, ev[0].background_windows, ev[0].uncertain_windows) == (1, 0, 1)
    assert ev[0].max_ood_score == 5.0 and not ev[0].trusted
    assert ev[1].ood_windows == 0 and ev[1].trusted


def test_per_class_rules_and_only():
    starts = np.arange(4.0)
    p = np.array([[0.6, 0.6, 0.0], [0.6, 0.6, 0.0], [0.1, 0.1, 0.0], [0.1, 0.1, 0.0]])
    cfg = EventConfig.from_dict({"on": 0.5, "off": 0.3, "classes": {"siren": {"on": 0.7}}})
    assert [e.label for e in detect_events(starts, starts + 1, p, CLASSES, cfg)] == ["dog"]
    cfg = EventConfig.from_dict({"only": ["siren"], "on": 0.5, "off": 0.3})
    assert [e.label for e in detect_events(starts, starts + 1, p, CLASSES, cfg)] == ["siren"]


def test_config_from_toml_and_bad_settings(tmp_path):
    f = tmp_path / "events.toml"
    f.write_text('[events]\non = 0.6\noff = 0.4\nmerge_gap_s = 2.0\n[events.classes.siren]\non = 0.8\n')
    cfg = EventConfig.from_toml(f)
    assert cfg.default == EventRule(0.6, 0.4, 0.0, 2.0)
    assert EventConfig.from_toml(f, on=0.7).rule("dog") == EventRule(0.7, 0.4, 0.0, 2.0)
    assert EventConfig.from_toml(f, on=0.7).rule("siren").on == 0.8  # a class keeps its own keys
    assert cfg.rule("siren") == EventRule(0.8, 0.4, 0.0, 2.0)
    with pytest.raises(DataError, match="off <= on"):
        EventRule(on=0.3, off=0.5)
    with pytest.raises(DataError, match="unknown event settings: onn"):
        EventConfig.from_dict({"onn": 0.5})
    with pytest.raises(DataError, match="unknown classes in the event settings: cat"):
        EventDetector(CLASSES, EventConfig.from_dict({"classes": {"cat": {"on": 0.9}}}), hop_s=1.0)
    f.write_text("on = [")
    with pytest.raises(DataError, match="cannot read event settings"):
        EventConfig.from_toml(f)


def test_streaming_emits_each_event_when_it_closes():
    starts = np.arange(10.0)
    det = EventDetector(CLASSES, EventConfig(EventRule(on=0.5, off=0.3)), hop_s=1.0)
    emitted = {}
    for i, p in enumerate(_probs(CASE_A)):
        for e in det.push(starts[i], starts[i] + 1, p):
            emitted[(e.start_s, e.end_s)] = i
    assert emitted == {(1.0, 4.0): 4, (6.0, 7.0): 7}  # at the window that fell below `off`
    assert [(e.start_s, e.end_s) for e in det.flush()] == [(8.0, 10.0)]
    # with a merge gap an event waits until the gap has passed without the class coming back
    det = EventDetector(CLASSES, EventConfig(EventRule(on=0.5, off=0.3, merge_gap_s=1.5)), hop_s=1.0)
    emitted = {}
    for i, p in enumerate(_probs(CASE_A)):
        for e in det.push(starts[i], starts[i] + 1, p):
            emitted[(e.start_s, e.end_s)] = i
    assert emitted == {(1.0, 4.0): 6}  # the first window starting 1.5 s or more after its end


def test_streaming_confirms_events_when_their_minimum_duration_is_met():
    starts = np.arange(10.0)
    log: list[tuple] = []
    det = EventDetector(CLASSES, EventConfig(EventRule(on=0.5, off=0.3, min_duration_s=2.0)), hop_s=1.0,
                        on_open=lambda e: log.append(("open", i, e.start_s, e.end_s, e.windows)))
    for i, p in enumerate(_probs(CASE_A)):
        log += [("close", i, e.start_s, e.end_s, e.windows) for e in det.push(starts[i], starts[i] + 1, p)]
    i = 10
    log += [("close", i, e.start_s, e.end_s, e.windows) for e in det.flush()]
    # the 1-4 s event is confirmed at its second window (2 s long), three windows before it closes;
    # the lone 6-7 s window is never confirmed (too short); 8-10 s at its second window
    assert log == [("open", 2, 1.0, 3.0, 2), ("close", 4, 1.0, 4.0, 3), ("open", 9, 8.0, 10.0, 2),
                   ("close", 10, 8.0, 10.0, 2)]
    # with a merge gap: an event is confirmed once its merged parts span the minimum duration
    log = []
    det = EventDetector(CLASSES, EventConfig(EventRule(on=0.5, off=0.3, min_duration_s=3.0, merge_gap_s=1.5)),
                        hop_s=1.0, on_open=lambda e: log.append(("open", i, e.start_s, e.end_s)))
    for i, p in enumerate(_probs(CASE_A)):
        log += [("close", i, e.start_s, e.end_s) for e in det.push(starts[i], starts[i] + 1, p)]
    i = 10
    log += [("close", i, e.start_s, e.end_s) for e in det.flush()]
    # 6 - 4 = 2 s is beyond the gap, so 6-10 s is an event of its own (7-8 s is within the gap),
    # confirmed once it spans 3 s (at the window starting at 8: 6-9 s)
    assert log == [("open", 3, 1.0, 4.0), ("close", 6, 1.0, 4.0), ("open", 8, 6.0, 9.0), ("close", 10, 6.0, 10.0)]


def _reference(starts, ends, p, ood, bg, unc, score, hop, rule: EventRule, overlap=None):
    """Offline, per class and written independently: runs, then merge, then the duration filter."""
    n, k = p.shape
    w = ends - starts
    d = w / 2 if overlap is None else np.minimum(w, overlap)
    own_a = [starts[0]] + [float(np.clip(starts[i] + w[i] - d[i] - hop / 2, starts[i], ends[i])) for i in range(1, n)]
    own_b = [float(np.clip(starts[i] + d[i] + hop / 2, starts[i], ends[i])) for i in range(n)]
    out = []
    for c in range(k):
        runs, cur = [], None
        for i in range(n):
            if cur is None and not (ood[i] or bg[i]) and p[i, c] >= rule.on:
                cur = [i]
            elif cur is not None and p[i, c] >= rule.off:
                cur.append(i)
            elif cur is not None:
                runs.append(cur)
                cur = None
        if cur is not None:
            runs.append(cur)
        segs = [[own_a[r[0]], (ends[r[-1]] if r[-1] == n - 1 else own_b[r[-1]]), list(r)] for r in runs]
        for sg in segs:
            if sg[1] < sg[0]:
                mid = (sg[0] + sg[1]) / 2
                sg[0], sg[1] = mid - hop / 2, mid + hop / 2
        merged = []
        for s in segs:
            if merged and s[0] - merged[-1][1] < rule.merge_gap_s:
                merged[-1][1] = s[1]
                merged[-1][2] += s[2]
            else:
                merged.append(s)
        for a, b, ix in merged:
            if b - a + 1e-9 >= rule.min_duration_s:
                out.append((c, round(a, 3), round(b, 3), len(ix), round(max(p[ix, c]), 4),
                            round(float(np.mean(p[ix, c])), 4), int(ood[ix].sum()), int(bg[ix].sum()),
                            int(unc[ix].sum()), round(float(score[ix].max()), 4)))
    return sorted(out, key=lambda t: (t[1], t[0]))


@pytest.mark.parametrize("seed", range(8))
def test_streaming_equals_batch_equals_reference(seed):
    rng = np.random.default_rng(seed)
    n, win, hop = 300, 5.0, [2.5, 1.0, 5.0][seed % 3]
    starts = np.arange(n) * hop
    ends = starts + win
    raw = rng.normal(size=(n + 8, 3)).cumsum(0)
    p = 1 / (1 + np.exp(-(raw[8:] - raw[:-8]) * 0.8))  # smooth, wandering probabilities
    ood, bg, unc = rng.random(n) < 0.08, rng.random(n) < 0.05, rng.random(n) < 0.2
    score = rng.normal(size=n)
    rule = EventRule(on=0.7, off=[0.7, 0.5, 0.3][seed % 3], min_duration_s=[0, 5, 10][seed % 3],
                     merge_gap_s=[0, 3, 8][(seed // 3) % 3])
    overlap = [None, 0.75][(seed // 2) % 2]
    cfg = EventConfig(rule, overlap_s=overlap)
    sc = WindowScores(p, ood, score, bg, unc)
    batch = detect_events(starts, ends, p, CLASSES, cfg, scores=sc, hop_s=hop)
    opened: list[tuple] = []
    det = EventDetector(CLASSES, cfg, hop_s=hop, on_open=lambda e: opened.append((e.index, e.start_s, len(stream))))
    stream = []
    for i in range(n):
        got = det.push(starts[i], ends[i], p[i], **sc.flags(i))
        stream += got
    stream += det.flush()
    # every event is confirmed once, with its final start, before it closes; nothing else is
    closed_at = {(e.index, e.start_s): j for j, e in enumerate(stream)}
    assert sorted(o[:2] for o in opened) == sorted(closed_at)
    assert all(at <= closed_at[(k, start)] for k, start, at in opened)
    stream = sorted(stream, key=lambda e: (e.start_s, e.index))
    assert [e.model_dump() for e in stream] == [e.model_dump() for e in batch]
    ref = _reference(starts, ends, p, ood, bg, unc, score, hop, rule, overlap)
    assert len(ref) > 5
    assert [(e.index, e.start_s, e.end_s, e.windows, e.peak_probability, e.mean_probability, e.ood_windows,
             e.background_windows, e.uncertain_windows, e.max_ood_score) for e in batch] == ref


def test_uncertain_mask_matches_uncertainty_reasons():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(5, 0.3), size=200)
    ood, bg = rng.random(200) < 0.1, rng.random(200) < 0.1
    params = TrustParams(ood_threshold=0.0, policy=UncertaintyPolicy())
    mask = uncertain_mask(p, ood, bg, params.policy)
    ref = [uncertainty_reasons(p[i], 1.0 if ood[i] else -1.0, params, bool(bg[i]))[0] for i in range(200)]
    assert mask.tolist() == ref
    assert 0 < mask.sum() < 200


# ----------------------------------------------------------------- event-based scores
def test_event_scores_hand_computed():
    from tympan.stats.event_scores import event_scores

    ref = [("r1", "dog", 10.0, 15.0), ("r1", "dog", 30.0, 35.0), ("r1", "siren", 12.0, 20.0), ("r2", "dog", 5.0, 9.0)]
    est = [("r1", "dog", 10.8, 14.0),   # TP (0.8 s late)
           ("r1", "dog", 11.5, 16.0),   # FP: the 10 s dog is taken, 30 s is too far
           ("r1", "dog", 28.9, 33.0),   # FP: 1.1 s early
           ("r1", "siren", 11.0, 19.0),  # TP (exactly 1 s early)
           ("r2", "siren", 5.0, 9.0)]   # FP: wrong label (and the r2 dog is missed)
    s = event_scores(ref, est, collar=1.0)
    assert (s.tp, s.fp, s.fn) == (2, 3, 2)
    assert s.precision == pytest.approx(2 / 5) and s.recall == pytest.approx(2 / 4)
    assert s.f1 == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert s.per_class == {"dog": (1, 2, 2), "siren": (1, 1, 0)}
    assert s.macro_f1 == pytest.approx((2 * (1 / 3) * (1 / 3) / (2 / 3) + 2 / 3) / 2)
    assert event_scores([], []).f1 == 0.0


def test_event_scores_is_a_maximum_matching():
    from scipy.optimize import linear_sum_assignment

    from tympan.stats.event_scores import event_scores

    rng = np.random.default_rng(3)
    for _ in range(30):
        r = np.sort(rng.uniform(0, 30, rng.integers(0, 12)))
        e = np.sort(rng.uniform(0, 30, rng.integers(0, 12)))
        s = event_scores([("x", "a", t, t) for t in r], [("x", "a", t, t) for t in e], collar=1.0)
        best = 0
        if len(r) and len(e):
            ok = np.abs(r[:, None] - e[None, :]) <= 1.0
            rows, cols = linear_sum_assignment(-ok.astype(float))
            best = int(ok[rows, cols].sum())
        assert s.tp == best and s.fp == len(e) - best and s.fn == len(r) - best
