"""Per-series sliding windows: order, expiry by span and by count, out-of-order inserts."""

from __future__ import annotations

import bisect

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.engine.window import Window

T0 = 1764324000.0


def contents(w: Window) -> list[tuple[float, float]]:
    return list(zip(w.ts.tolist(), w.values.tolist(), strict=True))


def test_empty_window():
    w = Window(60)
    assert len(w) == 0
    assert w.newest == float("-inf")
    assert w.ts.size == 0
    assert w.values.size == 0


def test_in_order_appends():
    w = Window(60)
    for i in range(5):
        assert w.add(T0 + i, 90.0 + i) == i
    assert contents(w) == [(T0 + i, 90.0 + i) for i in range(5)]
    assert w.newest == T0 + 4
    assert w.ts.dtype == np.float64


def test_equal_timestamps_keep_arrival_order():
    w = Window(60)
    w.add(T0, 1.0)
    assert w.add(T0, 2.0) == 1
    w.add(T0 + 1, 3.0)
    assert w.add(T0, 4.0) == 2  # inserted after the readings with the same ts
    assert contents(w) == [(T0, 1.0), (T0, 2.0), (T0, 4.0), (T0 + 1, 3.0)]


def test_expiry_by_span():
    w = Window(10)
    for i in range(10):
        w.add(T0 + i, float(i))
    w.add(T0 + 15, 15.0)
    # horizon is T0+5: the reading exactly at the horizon stays, older ones go
    assert w.ts.tolist() == [T0 + i for i in range(5, 10)] + [T0 + 15]
    assert w.add(T0 + 100, 100.0) == 0
    assert contents(w) == [(T0 + 100, 100.0)]


def test_expiry_keeps_values_aligned_with_ts():
    w = Window(5)
    for i in range(200):
        w.add(T0 + i * 0.5, float(i))
    assert len(w) == 11
    assert w.values.tolist() == [float(i) for i in range(189, 200)]
    assert w.ts.tolist() == [T0 + i * 0.5 for i in range(189, 200)]


def test_max_samples():
    w = Window(1000, max_samples=3)
    for i in range(10):
        w.add(T0 + i, float(i))
    assert contents(w) == [(T0 + 7, 7.0), (T0 + 8, 8.0), (T0 + 9, 9.0)]
    w.add(T0 + 8.5, 8.5)  # out of order: the oldest goes
    assert contents(w) == [(T0 + 8, 8.0), (T0 + 8.5, 8.5), (T0 + 9, 9.0)]
    w.add(T0 + 1, 1.0)  # older than everything kept: inserted and dropped at once
    assert contents(w) == [(T0 + 8, 8.0), (T0 + 8.5, 8.5), (T0 + 9, 9.0)]


def test_out_of_order_insert():
    w = Window(60)
    for t in (0, 2, 4, 6):
        w.add(T0 + t, float(t))
    assert w.add(T0 + 3, 3.0) == 2
    assert w.add(T0 + 1, 1.0) == 1
    assert w.add(T0 - 1, -1.0) == 0
    assert w.add(T0 + 5, 5.0) == 6
    assert contents(w) == [(T0 + t, float(t)) for t in range(-1, 7)]
    assert w.newest == T0 + 6


def test_out_of_order_insert_older_than_span_is_dropped():
    w = Window(10)
    w.add(T0, 0.0)
    w.add(T0 + 20, 20.0)
    w.add(T0 + 5, 5.0)
    assert contents(w) == [(T0 + 20, 20.0)]


def test_growth_and_compaction_keep_contents():
    w = Window(50, initial=4)
    ref: list[tuple[float, float]] = []
    for i in range(1000):
        t = T0 + i * 0.1
        w.add(t, float(i))
        ref.append((t, float(i)))
    horizon = ref[-1][0] - 50
    assert contents(w) == [p for p in ref if p[0] >= horizon]


class Reference:
    """The obvious model: a sorted list; drop what is older than the newest minus the span,
    then all but the newest ``max_samples``."""

    def __init__(self, span_s: float, max_samples: int) -> None:
        self.span_s = span_s
        self.max_samples = max_samples
        self.items: list[tuple[float, float]] = []

    def add(self, ts: float, value: float) -> None:
        i = bisect.bisect_right([t for t, _ in self.items], ts)
        self.items.insert(i, (ts, value))
        newest = self.items[-1][0]
        self.items = [p for p in self.items if p[0] >= newest - self.span_s]
        self.items = self.items[max(0, len(self.items) - self.max_samples) :]


# timestamps on a 1/8 s grid, so equal ones happen and the arithmetic is exact
offsets = st.integers(min_value=-400, max_value=4000).map(lambda k: T0 + k / 8)
ops = st.lists(st.tuples(offsets, st.integers(0, 10**6)), max_size=120)
drifting = st.lists(
    st.tuples(st.integers(min_value=-80, max_value=40), st.integers(0, 10**6)), max_size=200
)


@settings(max_examples=300, deadline=None)
@given(
    ops,
    st.sampled_from([1.0, 5.0, 20.0, 600.0]),
    st.sampled_from([1, 3, 16, 100_000]),
    st.sampled_from([1, 4, 64]),
)
def test_window_matches_reference_model(
    adds: list[tuple[float, int]], span: float, max_samples: int, initial: int
):
    w = Window(span, max_samples=max_samples, initial=initial)
    ref = Reference(span, max_samples)
    inserted: list[float] = []
    for ts, v in adds:
        idx = w.add(ts, float(v))
        ref.add(ts, float(v))
        inserted.append(ts)
        got = contents(w)
        assert got == ref.items
        # ts is sorted, and is the sorted multiset of inserted timestamps within the horizon
        assert w.ts.tolist() == sorted(w.ts.tolist())
        horizon = max(inserted) - span
        within = sorted(t for t in inserted if t >= horizon)
        assert w.ts.tolist() == within[max(0, len(within) - max_samples) :]
        assert w.newest == (got[-1][0] if got else float("-inf"))
        if idx >= 0:  # the index of the new reading, unless it was expired at once
            assert got[idx] == (ts, float(v))
        else:
            assert ts < horizon or len(within) > max_samples


@settings(max_examples=200, deadline=None)
@given(drifting)
def test_mostly_in_order_stream(steps: list[tuple[int, int]]):
    """A realistic stream: forward steps with occasional late readings."""
    w = Window(30.0, initial=2)
    ref = Reference(30.0, 100_000)
    t = T0
    for step, v in steps:
        t += step / 4
        w.add(t, float(v))
        ref.add(t, float(v))
    assert contents(w) == ref.items
