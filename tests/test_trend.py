"""Trend rules: slopes and baseline deviation on event time, against literal readings.

The rules are driven as the engine drives threshold rules: each reading goes into its
series' :class:`Window`, then every rule is evaluated at the newest reading. Nothing here
waits or does I/O.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from monitor.engine.threshold import Active, SeriesKey
from monitor.engine.trend import (
    BaselineRule,
    SlopeRule,
    TrendConfig,
    TrendRule,
    build_trend_rules,
    ls_slope,
    median,
)
from monitor.engine.window import Window
from monitor.model import AlertEvent, AlertState, Priority

T0 = 1764324000.0  # 2025-11-28T10:00:00Z
ACTIVE, RESOLVED = AlertState.ACTIVE, AlertState.RESOLVED
MIN = 60.0


def key(vital: str) -> SeriesKey:
    return SeriesKey("icu", "7", "mon1", vital)


def drive(
    rules: Sequence[TrendRule], points: Iterable[tuple[float, float]], start: float = T0
) -> list[AlertEvent]:
    """Feed (t, value) readings one by one, as Engine.process does; -> the events."""
    vital = rules[0].vital
    win = Window(max(r.needs_s for r in rules))
    active: list[Active | None] = [None] * len(rules)
    events: list[AlertEvent] = []
    for t, v in points:
        win.add(start + t, float(v))
        for i, rule in enumerate(rules):
            active[i], ev = rule.evaluate(key(vital), win.ts, win.values, active[i], "MRN-1")
            if ev is not None:
                events.append(ev)
    return events


def default_rule(name: str) -> TrendRule:
    vital = name.split(".", maxsplit=1)[0]
    (rule,) = [r for r in build_trend_rules(TrendConfig())[vital] if r.name == name]
    return rule


def summary(events: Sequence[AlertEvent], start: float = T0) -> list[tuple[float, str, int]]:
    return [(round(e.at - start, 3), str(e.state), e.seq) for e in events]


def linear(
    v0: float, per_min: float, until: float, every: float = 10, t0: float = 0
) -> list[tuple[float, float]]:
    return [(t, v0 + per_min * (t - t0) / MIN) for t in np.arange(t0, until + every / 2, every)]


def polyfit_slope(ts: np.ndarray, vals: np.ndarray) -> float:
    """Reference: np.polyfit on times relative to the first (well conditioned)."""
    return float(np.polyfit(ts - ts[0], vals, 1)[0])


# --------------------------------------------------------------------------- config


def test_default_config_and_rule_names():
    cfg = TrendConfig()
    assert cfg.slope["spo2"].down is not None
    assert (cfg.slope["spo2"].down.rate, cfg.slope["spo2"].down.per_s) == (3, 600)
    assert cfg.slope["spo2"].down.window_s == 600
    assert cfg.slope["spo2"].up is None
    hr = cfg.slope["hr"].up
    assert hr is not None
    assert (hr.rate, hr.per_s, hr.window_s, hr.min_readings, hr.min_coverage) == (
        25,
        1800,
        1800,
        10,
        0.6,
    )
    assert (hr.clear_fraction, hr.priority) == (0.5, Priority.MEDIUM)
    base = cfg.baseline["hr"].up
    assert base is not None
    assert (base.delta, base.recent_s, base.baseline_s, base.min_baseline_s) == (
        30,
        300,
        14400,
        3600,
    )
    names = {v: [r.name for r in rs] for v, rs in build_trend_rules(cfg).items()}
    assert names == {
        "spo2": ["spo2.trend_down", "spo2.baseline_down"],
        "hr": ["hr.trend_up", "hr.baseline_up"],
        "sbp": ["sbp.trend_down", "sbp.baseline_down"],
        "rr": ["rr.trend_up", "rr.baseline_up"],
    }
    assert cfg.needs_s() == 300 + 4 * 3600
    assert TrendConfig(baseline={"hr": None, "spo2": None, "sbp": None, "rr": None}).needs_s(
        "hr"
    ) == (1800)
    assert TrendConfig(enabled=False).needs_s() == 0
    assert build_trend_rules(TrendConfig(enabled=False)) == {}
    assert default_rule("spo2.trend_down").limits == {1: -3}
    assert default_rule("hr.baseline_up").needs_s == 14700


def test_config_overrides_merge_per_vital_and_direction():
    cfg = TrendConfig.model_validate(
        {
            "slope": {
                "hr": {"up": {"rate": 20}, "down": {"rate": 30, "priority": "high"}},
                "spo2": None,
                "temp": {"up": {"rate": 1, "per_s": 3600, "window_s": 3600}},
            },
            "baseline": {"rr": {"up": None}, "sbp": {"enabled": False}},
        }
    )
    assert cfg.slope["hr"].up is not None
    assert (cfg.slope["hr"].up.rate, cfg.slope["hr"].up.window_s) == (20, 1800)
    assert cfg.slope["hr"].down is not None
    assert cfg.slope["hr"].down.priority == Priority.HIGH
    assert cfg.slope["hr"].down.window_s == 600
    assert not cfg.slope["spo2"].enabled
    names = {v: [r.name for r in rs] for v, rs in build_trend_rules(cfg).items()}
    assert names == {
        "hr": ["hr.trend_up", "hr.trend_down", "hr.baseline_up"],
        "sbp": ["sbp.trend_down"],
        "rr": ["rr.trend_up"],
        "temp": ["temp.trend_up"],
        "spo2": ["spo2.baseline_down"],
    }
    rule = build_trend_rules(cfg)["temp"][0]
    assert isinstance(rule, SlopeRule)
    assert rule._per == "1 h"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"slope": {"pulse": {"up": {"rate": 1}}}}, "unknown vital 'pulse'"),
        ({"slope": {"hr": {"up": {"rate": 0}}}}, "greater than 0"),
        ({"slope": {"hr": {"sideways": {"rate": 1}}}}, "Extra inputs"),
        ({"slope": {"hr": {"up": {"rate": 1, "clear_fraction": 1}}}}, "less than 1"),
        ({"slope": {"hr": {"down": {}}}}, "rate"),
        ({"baseline": {"hr": {"up": {"min_baseline_s": 7200, "baseline_s": 3600}}}}, "<="),
        ({"windows": 1}, "Extra inputs"),
    ],
)
def test_config_errors(data, fragment):
    with pytest.raises(ValidationError) as exc:
        TrendConfig.model_validate(data)
    assert fragment in str(exc.value)


def test_config_is_frozen():
    cfg = TrendConfig()
    with pytest.raises(ValidationError):
        cfg.enabled = False  # type: ignore[misc]


# ---------------------------------------------------------------------- slope rules


def test_linear_spo2_fall_raises_once_when_span_reached():
    """4 % per 10 min, a reading every 10 s: raises at t=360 (60 % of the 600 s window)."""
    rule = default_rule("spo2.trend_down")
    events = drive([rule], linear(97, -0.4, until=1200))
    assert summary(events) == [(360, "active", 1)]
    (e,) = events
    assert e.message == "SpO2 falling 4 % per 10 min"
    assert (e.rule, e.vital, e.kind, e.priority) == ("spo2.trend_down", "spo2", "trend", "medium")
    assert e.value == pytest.approx(-4.0)
    assert e.limit == -3
    assert e.started_at == e.at == T0 + 360
    assert (e.ward, e.bed, e.device, e.patient) == ("icu", "7", "mon1", "MRN-1")


def test_not_before_min_readings():
    rule = default_rule("spo2.trend_down")
    # every 60 s: 10 readings span 540 s, so the span (360 s) is not what waits
    assert summary(drive([rule], linear(97, -0.4, until=1800, every=60))) == [(540, "active", 1)]
    # every 70 s: a 600 s window never holds 10 readings
    assert drive([rule], linear(97, -0.4, until=3600, every=70)) == []
    # fewer readings allowed: the span decides again
    few = SlopeRule("spo2", "down", 3, min_readings=3)
    assert summary(drive([few], linear(97, -0.4, until=1800, every=70))) == [(420, "active", 1)]


def test_slow_fall_does_not_raise():
    rule = default_rule("spo2.trend_down")
    assert drive([rule], linear(99, -0.2, until=2 * 3600)) == []  # 2 % per 10 min


def test_rising_rules_and_messages():
    hr = default_rule("hr.trend_up")
    events = drive([hr], linear(80, 1.0, until=3600, every=5))  # 30 /min per 30 min
    assert summary(events) == [(1080, "active", 1)]  # 60 % of 1800 s
    assert events[0].message == "HR rising 30 /min per 30 min"
    assert events[0].limit == 25
    rr = default_rule("rr.trend_up")
    assert drive([rr], linear(14, 0.2, until=3600, every=5)) == []  # 6 /min per 30 min
    sbp = default_rule("sbp.trend_down")
    (e,) = drive([sbp], linear(140, -1.0, until=3600, every=30))
    assert e.message == "SBP falling 30 mmHg per 30 min"


def test_noise_around_flat_line_never_raises():
    rng = np.random.default_rng(20251128)
    t = np.arange(0, 3 * 3600, 2.0)
    spo2 = np.clip(np.round(97 + rng.normal(0, 1.0, len(t))), 0, 100)
    assert drive(build_trend_rules(TrendConfig())["spo2"], zip(t, spo2, strict=True)) == []
    t = np.arange(0, 5 * 3600, 5.0)
    hr = np.round(80 + rng.normal(0, 3.0, len(t)))
    assert drive(build_trend_rules(TrendConfig())["hr"], zip(t, hr, strict=True)) == []


def test_recovery_resolves_with_same_id():
    rule = default_rule("spo2.trend_down")
    fall = linear(97, -0.4, until=900)
    flat = [(t, fall[-1][1]) for t in np.arange(910, 2400, 10)]
    points = fall + flat
    events = drive([rule], points)
    assert [(str(e.state), e.seq) for e in events] == [("active", 1), ("resolved", 2)]
    raised, resolved = events
    assert raised.id == resolved.id
    assert raised.started_at == resolved.started_at == T0 + 360
    # it resolves at the first reading whose 10 min slope (polyfit) is above -1.5
    ts = np.array([T0 + t for t, _ in points])
    vals = np.array([v for _, v in points])
    first = next(
        t
        for t in ts
        if t > T0 + 900
        and polyfit_slope(ts[(ts >= t - 600) & (ts <= t)], vals[(ts >= t - 600) & (ts <= t)]) * 600
        > -1.5
    )
    assert resolved.at == first
    assert resolved.value > -1.5
    lasted = resolved.at - raised.at
    # at SpO2's resolution (whole %), below the clear level 1.5 as written
    assert resolved.message.startswith("SpO2 trend eased: falling 1 % per 10 min;")
    assert resolved.message.endswith(f"per 10 min; alarm lasted {lasted:.0f} s")
    # a later fall is a new alert, with a new id
    again = drive([rule], [*points, *linear(fall[-1][1], -0.5, until=3600, t0=2400)])
    assert [(str(e.state), e.seq) for e in again] == [
        ("active", 1),
        ("resolved", 2),
        ("active", 1),
    ]
    assert again[2].id != again[0].id


def test_resolved_as_steady_and_reversed():
    rule = SlopeRule("spo2", "down", 3, clear_fraction=0)  # clears only on a reversal
    fall = linear(97, -0.4, until=900)
    rise = linear(fall[-1][1], 0.5, until=2400, t0=910)
    events = drive([rule], fall + rise)
    assert [str(e.state) for e in events] == ["active", "resolved"]
    assert events[1].value >= 0
    assert "trend eased: steady;" in events[1].message or "rising" in events[1].message


def oscillating(amplitude: float, hours: float = 2) -> list[tuple[float, float]]:
    """-0.3 %/min (3 % per 10 min) plus a 20 min sine: the 10 min slope swings around -3."""
    t = np.arange(0, hours * 3600, 10.0)
    v = 100 - 0.3 * t / MIN + amplitude * np.sin(2 * np.pi * t / 1200)
    return list(zip(t.tolist(), v.tolist(), strict=True))


def test_hysteresis_prevents_flapping():
    points = oscillating(0.4)
    ts = np.array([T0 + t for t, _ in points])
    vals = np.array([v for _, v in points])
    ref = np.array(
        [
            polyfit_slope(ts[(ts >= t - 600) & (ts <= t)], vals[(ts >= t - 600) & (ts <= t)]) * 600
            for t in ts[60:]
        ]
    )
    # the slope really does cross the limit, back and forth, many times ...
    crossings = np.count_nonzero(np.diff(np.sign(ref + 3)))
    assert crossings >= 10
    assert ref.min() < -3.4
    assert ref.max() > -2.6
    # ... but never eases to half of it: one alert, never resolved
    assert ref.max() < -1.5
    events = drive([default_rule("spo2.trend_down")], points)
    assert [(str(e.state), e.seq) for e in events] == [("active", 1)]
    # without the band (clear just below the limit) the same series flaps
    flappy = SlopeRule("spo2", "down", 3, clear_fraction=0.95)
    events = drive([flappy], points)
    assert len(events) >= 8
    assert [str(e.state) for e in events[:4]] == ["active", "resolved", "active", "resolved"]


# ------------------------------------------------------------------- baseline rules


def hr_step(
    before_s: float, step: float, step_s: float, after_s: float = 3600, every: float = 10
) -> list[tuple[float, float]]:
    """HR 78 for ``before_s``, then 78 + step for ``step_s``, then 78 again."""
    out: list[tuple[float, float]] = []
    for t in np.arange(0, before_s + step_s + after_s, every):
        high = before_s <= t < before_s + step_s
        out.append((float(t), 78 + step if high else 78.0))
    return out


def test_baseline_raises_on_sustained_step_and_resolves():
    rule = default_rule("hr.baseline_up")
    events = drive([rule], hr_step(2 * 3600, 35, 30 * MIN))
    # 30 readings in the recent 5 min: the median turns at the 16th high one (t=7350)
    # and back at the 16th normal one after the step ends at t=9000
    assert summary(events) == [(7350, "active", 1), (9150, "resolved", 2)]
    raised, resolved = events
    assert raised.id == resolved.id
    assert (raised.rule, raised.kind, raised.priority) == ("hr.baseline_up", "trend", "medium")
    assert raised.message == "HR 113 /min: 35 /min above baseline 78 /min"
    assert (raised.value, raised.limit) == (113, 108)
    assert resolved.message == (
        "HR 78 /min back within 15 /min of baseline 78 /min; alarm lasted 1800 s"
    )
    assert (resolved.value, resolved.limit) == (78, 108)


def test_baseline_needs_its_minimum_length():
    rule = default_rule("hr.baseline_up")
    # 30 min of baseline before the step: not enough; by the time 1 h is covered, the
    # step is over (and the baseline is still 78)
    assert drive([rule], hr_step(30 * MIN, 35, 20 * MIN)) == []
    # 65 min: the step starts once the 1 h baseline is there
    assert [str(e.state) for e in drive([rule], hr_step(65 * MIN, 35, 20 * MIN))] == [
        "active",
        "resolved",
    ]
    # a smaller step does not raise
    assert drive([rule], hr_step(2 * 3600, 25, 30 * MIN)) == []


def test_baseline_needs_recent_readings():
    rule = BaselineRule("hr", "up", 30, min_recent_readings=5)
    # a reading every 90 s: at most 4 in the recent 5 min
    assert drive([rule], hr_step(2 * 3600, 35, 30 * MIN, every=90)) == []
    sparse = BaselineRule("hr", "up", 30, min_recent_readings=2)
    assert len(drive([sparse], hr_step(2 * 3600, 35, 30 * MIN, every=90))) == 2


def test_a_lasting_change_becomes_the_new_baseline():
    rule = default_rule("hr.baseline_up")
    events = drive([rule], hr_step(2 * 3600, 35, 4 * 3600, after_s=0))
    assert [str(e.state) for e in events] == ["active", "resolved"]
    # resolved once 113 is more than half of the baseline: about baseline_s / 2 later
    assert events[1].message.endswith("of baseline 113 /min; alarm lasted 7350 s")


def test_falling_baseline_rule():
    rule = default_rule("spo2.baseline_down")
    points = [(float(t), 97.0 if t < 7200 or t >= 9000 else 91.0) for t in range(0, 12000, 5)]
    events = drive([rule], points)
    assert [str(e.state) for e in events] == ["active", "resolved"]
    assert events[0].message == "SpO2 91 %: 6 % below baseline 97 %"
    assert events[0].limit == 92


def test_baseline_median_is_bounded_and_close():
    rng = np.random.default_rng(7)
    ts = T0 + np.arange(0, 4 * 3600 + 300, 1.0)
    vals = 80 + rng.normal(0, 3, len(ts))
    exact = BaselineRule("hr", "up", 30)
    capped = BaselineRule("hr", "up", 30, max_baseline_samples=1000)
    e, c = exact.levels(ts, vals), capped.levels(ts, vals)
    assert e is not None
    assert c is not None
    assert e[0] == c[0] == pytest.approx(float(np.median(vals[ts > ts[-1] - 300])))
    assert e[1] == pytest.approx(float(np.median(vals[ts <= ts[-1] - 300])))
    assert c[1] == pytest.approx(e[1], abs=0.3)


# ----------------------------------------------------------------------- event time


def scenario(gaps: np.ndarray) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """SpO2 and HR at irregular times: a fall and recovery, a step up and back."""
    t = np.cumsum(gaps)
    spo2 = np.where(t < 3 * 3600, 97.0, np.maximum(97 - 0.45 * (t - 3 * 3600) / MIN, 90.0))
    hr = np.where((t > 2 * 3600) & (t < 2.5 * 3600), 118.0, 80.0)
    return (
        list(zip(t.tolist(), spo2.tolist(), strict=True)),
        list(zip(t.tolist(), hr.tolist(), strict=True)),
    )


def id_pattern(events: Sequence[AlertEvent]) -> list[int]:
    ids = [e.id for e in events]
    return [ids.index(i) for i in ids]


def test_event_time_invariance_and_irregular_spacing():
    rng = np.random.default_rng(11)
    # times on a 1/1024 s grid: exact in float64, so shifted runs compare exactly
    gaps = np.round(rng.uniform(2, 30, 1500) * 1024) / 1024
    spo2, hr = scenario(gaps)
    cfg = build_trend_rules(TrendConfig())

    def run(shift: float) -> list[AlertEvent]:
        start = T0 + shift
        return drive(cfg["spo2"], spo2, start) + drive(cfg["hr"], hr, start)

    base = run(0)
    assert [(e.rule, str(e.state)) for e in base] == [
        ("spo2.trend_down", "active"),
        ("spo2.baseline_down", "active"),
        ("spo2.trend_down", "resolved"),
        ("spo2.baseline_down", "resolved"),  # 90 % has become the baseline
        ("hr.baseline_up", "active"),
        ("hr.trend_up", "active"),  # the step up looks like a rise over 30 min
        ("hr.trend_up", "resolved"),
        ("hr.baseline_up", "resolved"),
    ]
    assert id_pattern(base) == [0, 1, 0, 1, 4, 5, 5, 4]
    # irregular spacing: the fall is raised at the first reading where the polyfit slope
    # over the last 10 min, of at least 10 readings spanning 360 s, reaches -3 % per 10 min
    ts = np.array([T0 + t for t, _ in spo2])
    vals = np.array([v for _, v in spo2])

    def counts(i: int) -> bool:
        part = (ts >= ts[i] - 600) & (ts <= ts[i])
        if np.count_nonzero(part) < 10 or ts[i] - ts[part][0] < 360:
            return False
        return polyfit_slope(ts[part], vals[part]) * 600 <= -3

    assert base[0].at == ts[next(i for i in range(len(ts)) if counts(i))]
    for shift in (-86400 * 30 + 0.25, 12345.5, 7 * 86400.0):
        moved = run(shift)
        assert [(e.rule, str(e.state), e.seq, e.message) for e in moved] == [
            (e.rule, str(e.state), e.seq, e.message) for e in base
        ]
        assert [e.at - shift for e in moved] == [e.at for e in base]
        assert [e.started_at - shift for e in moved] == [e.started_at for e in base]
        assert [e.value for e in moved] == pytest.approx([e.value for e in base])
        # the same events share an id; the onset differs, so the ids do
        assert id_pattern(moved) == id_pattern(base)
        assert not {e.id for e in moved} & {e.id for e in base}
    assert [e.id for e in run(0)] == [e.id for e in base]  # deterministic


# ----------------------------------------------------------------------- properties


gaps_st = st.lists(st.floats(0.1, 120, allow_nan=False), min_size=2, max_size=200)


@settings(max_examples=200, deadline=None)
@given(gaps_st, st.data())
def test_slope_equals_polyfit(gaps, data):
    ts = T0 + np.cumsum(gaps)
    vals = np.array(
        data.draw(st.lists(st.floats(0, 300), min_size=len(ts), max_size=len(ts))),
        dtype=np.float64,
    )
    ref = polyfit_slope(ts, vals)
    scale = max(1.0, float(np.ptp(vals))) / float(np.ptp(ts))
    assert ls_slope(ts, vals) == pytest.approx(ref, rel=1e-7, abs=1e-9 * scale)
    assert ls_slope(ts - ts[-1], vals) == pytest.approx(ref, rel=1e-7, abs=1e-9 * scale)
    # the rule fits over its window only, in units per per_s
    window = float(ts[-1] - ts[0]) / 2
    rule = SlopeRule("hr", "up", 1, per_s=60, window_s=window, min_readings=2, min_coverage=0.01)
    got = rule.slope(ts, vals)
    part = ts >= ts[-1] - window
    if np.count_nonzero(part) >= 2 and ts[-1] - ts[part][0] >= 0.01 * window:
        assert got is not None
        assert got == pytest.approx(
            polyfit_slope(ts[part], vals[part]) * 60, rel=1e-7, abs=1e-9 * scale * 60
        )
    else:
        assert got is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1, 1), min_size=1, max_size=301))
def test_median_equals_numpy(values):
    a = np.array(values, dtype=np.float64)
    assert median(a) == pytest.approx(float(np.median(a)))


def small_rules() -> list[TrendRule]:
    """Short windows, so random walks raise and resolve often."""
    return [
        SlopeRule("hr", "up", 10, per_s=60, window_s=120, min_readings=3, min_coverage=0.3),
        SlopeRule("hr", "down", 10, per_s=60, window_s=120, min_readings=3, min_coverage=0.3),
        BaselineRule(
            "hr",
            "up",
            6,
            recent_s=30,
            baseline_s=300,
            min_baseline_s=60,
            min_baseline_readings=5,
            min_recent_readings=2,
        ),
        BaselineRule(
            "hr",
            "down",
            6,
            recent_s=30,
            baseline_s=300,
            min_baseline_s=60,
            min_baseline_readings=5,
            min_recent_readings=2,
        ),
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.5, 20), st.floats(-6, 6)),
        min_size=1,
        max_size=400,
    )
)
def test_events_alternate_per_rule_with_seq_1_2(steps):
    t, v, points = 0.0, 80.0, []
    for gap, dv in steps:
        t += gap
        v = min(max(v + dv, 30.0), 200.0)
        points.append((t, v))
    events = drive(small_rules(), points)
    by_rule: dict[str, list[AlertEvent]] = defaultdict(list)
    by_id: dict[str, list[AlertEvent]] = defaultdict(list)
    for e in events:
        by_rule[e.rule].append(e)
        by_id[e.id].append(e)
    for evs in by_rule.values():
        states = [e.state for e in evs]
        assert states == [ACTIVE, RESOLVED] * (len(states) // 2) + [ACTIVE] * (len(states) % 2)
        assert [e.at for e in evs] == sorted(e.at for e in evs)
    for evs in by_id.values():
        assert [(e.state, e.seq) for e in evs] in (
            [(ACTIVE, 1)],
            [(ACTIVE, 1), (RESOLVED, 2)],
        )
        assert len({(e.rule, e.started_at) for e in evs}) == 1
        assert evs[0].started_at == evs[0].at
    for e in events:
        assert e.kind == "trend"
        assert math.isfinite(e.value)
        assert math.isfinite(e.limit)
