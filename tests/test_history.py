"""Per-minute history (monitor.engine.history) against the raw computation it replaces."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import RulesConfig
from monitor.engine import Engine
from monitor.engine.history import RES_S, History, combine, stats, weighted_median
from monitor.engine.trend import BaselineRule, SlopeRule, ls_slope, median
from monitor.engine.window import Window
from monitor.model import Reading

T0 = 1_764_324_000.0

values = st.lists(
    st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300)
@given(values)
def test_weighted_median_with_unit_weights_is_the_median(vs: list[float]) -> None:
    a = np.array(vs)
    assert weighted_median(a, np.ones(len(a))) == median(a.copy())


@settings(max_examples=300)
@given(values, st.lists(st.integers(1, 5), min_size=60, max_size=60))
def test_weighted_median_is_the_median_of_the_repeated_values(
    vs: list[float], w: list[int]
) -> None:
    a = np.array(vs)
    weights = np.array(w[: len(a)], dtype=np.float64)
    expanded = np.repeat(a, w[: len(a)])
    assert weighted_median(a, weights) == median(expanded)


@settings(max_examples=200)
@given(
    st.lists(st.floats(0.2, 30.0), min_size=3, max_size=300),
    st.lists(st.integers(1, 40), min_size=1, max_size=10),
    st.floats(-2.0, 2.0),
)
def test_combined_parts_fit_the_slope_of_all_their_readings(
    steps: list[float], cuts: list[int], rate: float
) -> None:
    """Chan's pairwise combination of per-bucket sums = one least-squares fit."""
    t = T0 + np.cumsum(steps)
    rng = np.random.default_rng(len(steps))
    v = 80 + rate * (t - T0) / 60 + rng.normal(0, 3, len(t))
    bounds = sorted({0, *(c % len(t) for c in cuts), len(t)})
    parts = [stats(t[a:b], v[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    n, slope = combine(np.array(parts))
    assert n == len(t)
    exact = ls_slope(t - t[-1], v)
    assert slope == pytest.approx(exact, rel=1e-5, abs=1e-9)  # (means of epoch times)


def _feed(window: Window, raw: list[tuple[float, float]], ts: np.ndarray, vs: np.ndarray) -> None:
    for t, v in zip(ts.tolist(), vs.tolist(), strict=True):
        window.add(t, v)
        raw.append((t, v))


def _walk(
    seconds: int, seed: int, period: float = 1.0, drift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    rng = random.Random(seed)
    ts, vs, v = [], [], 80.0
    t = T0
    while t < T0 + seconds:
        if rng.random() < 0.002:  # a gap of up to 10 min now and then
            t += rng.uniform(0, 600)
        v += rng.gauss(drift * period, 0.4)
        ts.append(t)
        vs.append(round(v))
        t += period * rng.uniform(0.5, 1.5)
    return np.array(ts), np.array(vs, dtype=np.float64)


@pytest.mark.parametrize("seed", range(6))
def test_slope_from_history_is_within_a_bucket_of_the_raw_fit(seed: int) -> None:
    rule = SlopeRule("hr", "up", 25, per_s=1800, window_s=1800)
    window = Window(300, history=History(1800, 0))
    raw: list[tuple[float, float]] = []
    ts, vs = _walk(3 * 3600, seed, drift=0.002 * (seed - 3))
    checked = 0
    for i in range(0, len(ts), 97):
        _feed(window, raw, ts[i : i + 97], vs[i : i + 97])
        rt = np.array([p[0] for p in raw])
        rv = np.array([p[1] for p in raw])
        exact = rule.slope(rt, rv)
        approx = rule.slope(window.ts, window.values, window.history)
        # the raw window never holds the whole fit: the history is read
        assert window.ts[0] > rt[-1] - 1800 or exact is None or approx is not None
        if exact is None or approx is None:
            continue  # (coverage differs by at most a bucket at the edge)
        # the fits differ only by the readings of one bucket at the window's old edge
        spread = float(np.ptp(rv[rt >= rt[-1] - 1800]))
        assert abs(approx - exact) <= 0.1 * spread + 0.05 * abs(exact) + 1e-9
        checked += 1
    assert checked > 50


@pytest.mark.parametrize("seed", range(6))
def test_baseline_from_history_is_within_the_readings_of_a_minute(seed: int) -> None:
    rule = BaselineRule("hr", "up", 30, min_baseline_s=1800)
    window = Window(300, history=History(0, rule.needs_s))
    raw: list[tuple[float, float]] = []
    ts, vs = _walk(5 * 3600, seed, drift=0.001 * (seed - 3))
    checked = 0
    for i in range(0, len(ts), 211):
        _feed(window, raw, ts[i : i + 211], vs[i : i + 211])
        rt = np.array([p[0] for p in raw])
        rv = np.array([p[1] for p in raw])
        exact = rule.levels(rt, rv)
        approx = rule.levels(window.ts, window.values, window.history)
        if exact is None or approx is None:
            assert exact is None or approx is None
            continue
        assert approx[0] == exact[0]  # the recent median is always raw
        cut = rt[-1] - rule.recent_s
        minute = np.floor(rt / RES_S)
        inside = (rt >= cut - rule.baseline_s) & (rt <= cut)
        # bound: the widest range of one minute's readings in the baseline
        widest = max(float(np.ptp(rv[inside & (minute == m)])) for m in np.unique(minute[inside]))
        assert abs(approx[1] - exact[1]) <= widest + 1.0
        checked += 1
    assert checked > 30


def test_history_exact_when_every_minute_holds_one_reading() -> None:
    """A reading a minute: each bucket is one reading and the baseline is exact."""
    rule = BaselineRule("spo2", "down", 5, min_baseline_s=1800, min_recent_readings=1)
    window = Window(300, history=History(0, rule.needs_s))
    raw: list[tuple[float, float]] = []
    rng = random.Random(3)
    ts = T0 + 60.0 * np.arange(300) + 7.0
    vs = np.array([float(rng.randint(88, 99)) for _ in ts])
    _feed(window, raw, ts, vs)
    rt, rv = np.array([p[0] for p in raw]), np.array([p[1] for p in raw])
    assert rule.levels(window.ts, window.values, window.history) == rule.levels(rt, rv)


def test_a_late_reading_joins_its_minute_exactly() -> None:
    hist = History(1800, 0)
    t = T0 + np.arange(120.0)
    v = 70 + 0.1 * np.arange(120.0)
    hist.absorb(t[:59], v[:59])
    hist.absorb(t[59:60], v[59:60])  # the minute's last reading, late
    hist.absorb(t[60:], v[60:])
    parts, first = hist.slope_parts(T0 - 1)
    assert first == T0
    n, slope = combine(parts)
    assert n == 120
    assert slope == pytest.approx(ls_slope(t - t[-1], v), rel=1e-9)


def _events(window_s: float, batches: list[list[Reading]]) -> list[tuple[str, str, float]]:
    engine = Engine(RulesConfig(window_s=window_s), sinks=[])
    out = []
    for b in batches:
        out += [(e.rule, str(e.state), e.at) for e in engine.process(list(b))]
        engine.take_score_updates()
    return out


def test_the_engine_raises_the_same_trend_alerts_as_with_raw_windows() -> None:
    """A 5-hour deterioration at 1 Hz (HR drifting up, SBP down, SpO2 down late): the
    engine with its default 300 s raw window and per-minute history raises and resolves
    the same trend alerts as one keeping 4 h 5 min of raw readings (exact), each within
    a bucket and an evaluation period of the exact time."""
    rng = random.Random(11)
    batches = []
    for s in range(5 * 3600):
        late = max(0, s - 4 * 3600)
        hr = 75 + min(late * 0.02, 40) + rng.gauss(0, 1.5)
        sbp = 130 - late * 0.01 + rng.gauss(0, 2)
        spo2 = 97 - (late > 1800) * min(4, (late - 1800) / 300) + rng.gauss(0, 0.4)
        ts = T0 + s
        batches.append(
            [
                Reading(ts, "icu", "1", "mon1", "hr", float(round(hr))),
                Reading(ts, "icu", "1", "mon1", "sbp", float(round(sbp))),
                Reading(ts, "icu", "1", "mon1", "spo2", float(round(spo2))),
            ]
        )
    exact = _events(4 * 3600 + 400, batches)
    ours = _events(RulesConfig().window_s, batches)
    kinds = [(r, s) for r, s, _ in exact]
    assert any(r.endswith("baseline_up") for r, _ in kinds)  # the scenario shows both
    assert any(r.endswith("trend_up") for r, _ in kinds)
    assert [(r, s) for r, s, _ in ours] == kinds
    for (_, _, a), (_, _, b) in zip(ours, exact, strict=True):
        assert math.isclose(a, b, abs_tol=RES_S + 30)


def test_series_keep_a_bounded_raw_window_with_history() -> None:
    engine = Engine(RulesConfig(), sinks=[])
    for s in range(3 * 3600):
        engine.process([Reading(T0 + s, "icu", "1", "mon1", "hr", 70.0 + s % 3)])
    (series,) = engine.series.values()
    assert len(series.window) <= RulesConfig().window_s + RES_S + 1
    assert series.window.history is not None
    assert len(series.window.history) >= (3 * 3600 - RulesConfig().window_s - RES_S) // 60


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 200),  # readings absorbed (a minute or a few at a time)
            st.floats(0.2, 30),  # their spacing, s
            st.lists(st.floats(-4000, 100), min_size=1, max_size=6),  # cuts asked after
        ),
        min_size=1,
        max_size=12,
    )
)
def test_slope_rows_are_slope_parts_with_a_spare_row(
    steps: list[tuple[int, float, list[float]]],
) -> None:
    """The memoised rows a slope rule combines equal the unmemoised parts (same rows, same
    order, same first time) whatever the cuts asked between absorptions."""
    hist = History(1800, 0)
    t = T0
    rng = random.Random(len(steps))
    for count, spacing, cuts in steps:
        ts = t + spacing * np.arange(1, count + 1)
        hist.absorb(ts, np.round(70 + 10 * np.sin(ts / 300) + rng.random(), 1))
        t = float(ts[-1])
        for offset in cuts:
            cut = t - 1800 + offset
            rows, first = hist.slope_rows(cut)
            parts, first_ref = hist.slope_parts(cut)
            assert first == first_ref
            assert np.array_equal(rows[:-1], parts)
            rows[-1] = (1.0, t, 70.0, 0.0, 0.0)  # (the caller's raw part: never read back)
