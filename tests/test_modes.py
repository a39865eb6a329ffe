"""Measurement modes: continuous and intermittent series, worked examples and properties.

Pure: literal readings through ``Engine.process`` (synchronous, event time), one message
per reading or per charted set unless a test says otherwise; nothing waits or does I/O.
The worked examples are the ones the README quotes ("Measurement modes").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import RulesConfig
from monitor.engine import Engine
from monitor.model import AlertEvent, AlertState, Reading

T0 = 1764324000.0  # 2025-11-28T10:00:00Z
ACTIVE, RESOLVED = AlertState.ACTIVE, AlertState.RESOLVED
HOUR = 3600.0
#: no example database: every run draws afresh, nothing is saved in the tree
PROPS = settings(max_examples=60, deadline=None, database=None)


def rules(**kw: Any) -> RulesConfig:
    # thresholds alone (no trends, no flapping detection), as in tests/test_threshold.py
    data: dict[str, Any] = {"trends": {"enabled": False}, "flapping": {"enabled": False}, **kw}
    return RulesConfig.model_validate(data)


def reading(
    t: float, vital: str, value: float, device: str = "mon1", mode: str | None = None
) -> Reading:
    return Reading(T0 + t, "icu", "7", device, vital, float(value), "MRN-1", mode)


def stream(
    vital: str,
    points: Sequence[tuple[float, float]],
    device: str = "mon1",
    mode: str | None = None,
) -> list[Reading]:
    return [reading(t, vital, v, device, mode) for t, v in points]


def every(interval: float, values: Sequence[float], start: float = 0) -> list[tuple[float, float]]:
    return [(start + i * interval, v) for i, v in enumerate(values)]


def feed(
    messages: Sequence[Sequence[Reading]], cfg: RulesConfig | None = None
) -> list[tuple[int, AlertEvent]]:
    """-> [(index of the message that caused it, event)], one ``process`` per message."""
    eng = Engine(cfg or rules(), sinks=[])
    return [(i, e) for i, msg in enumerate(messages) for e in eng.process(list(msg))]


def one_by_one(readings: Sequence[Reading], cfg: RulesConfig | None = None):
    return feed([[r] for r in readings], cfg)


def physiological(got: Sequence[tuple[int, AlertEvent]]) -> list[tuple[Any, ...]]:
    """The threshold events (NEWS2 scores are another kind), as (message index, time
    from T0, rule, state, priority, value, limit, started_at from T0)."""
    return [
        (i, e.at - T0, e.rule, str(e.state), str(e.priority), e.value, e.limit, e.started_at - T0)
        for i, e in got
        if e.kind == "physiological"
    ]


# ------------------------------------------------------------ worked examples (README)


def test_one_hz_oximeter_raises_after_the_delay_and_ignores_a_single_low_reading():
    """1 Hz bedside oximeter (continuous): 97 x10, then 82 x30: spo2.low high at t=25,
    when every reading of the last 15 s is below 85 (the condition started at t=10)."""
    got = one_by_one(stream("spo2", every(1, [97] * 10 + [82] * 30)))
    assert physiological(got) == [(25, 25, "spo2.low", "active", "high", 82, 85, 10)]
    assert got[0][1].message == "SpO2 82 % < 85 % for 15 s"
    # once its cadence is known, a single 82 between 97s never alarms (artefact rejection)
    values = [97] * 10 + [82] + [97] * 10 + [82] + [97] * 10
    assert one_by_one(stream("spo2", every(1, values))) == []


def test_wearable_every_five_minutes_raises_at_the_low_reading_itself():
    """A wearable sending SpO2 every 300 s (intermittent): 95, 96, 84 raises spo2.low high
    at the reading of 84; the next reading, 95, resolves it."""
    got = one_by_one(stream("spo2", every(300, [95, 96, 84, 95]), device="band1"))
    assert physiological(got) == [
        (2, 600, "spo2.low", "active", "high", 84, 85, 600),
        (3, 900, "spo2.low", "resolved", "high", 95, 90, 600),
    ]
    assert [e.message for _, e in got if e.kind == "physiological"] == [
        "SpO2 84 % < 85 %",
        "SpO2 95 % back above 90 %; alarm lasted 300 s",
    ]


def charted_set(
    t: float, spo2: float, hr: float, rr: float, map_: float, sbp: float, temp: float
) -> list[Reading]:
    """One charted observation set (one object, one instant)."""
    values = {"spo2": spo2, "hr": hr, "rr": rr, "map": map_, "sbp": sbp, "temp": temp}
    return [reading(t, vital, v, device="chart") for vital, v in values.items()]


def test_hourly_charted_set_raises_each_alert_on_the_bed_s_first_reading():
    """Hourly charted sets (intermittent): the bed's very first set, SpO2 80, HR 150,
    RR 35, MAP 50, raises spo2.low, hr.high, rr.high and map.low on that reading; the
    next hour's normal set resolves them."""
    got = feed(
        [
            charted_set(0, spo2=80, hr=150, rr=35, map_=50, sbp=120, temp=37.0),
            charted_set(HOUR, spo2=97, hr=80, rr=16, map_=85, sbp=122, temp=37.1),
            charted_set(2 * HOUR, spo2=96, hr=78, rr=15, map_=84, sbp=121, temp=36.9),
        ]
    )
    assert physiological(got) == [
        (0, 0, "spo2.low", "active", "high", 80, 85, 0),
        (0, 0, "hr.high", "active", "high", 150, 140, 0),
        (0, 0, "rr.high", "active", "high", 35, 30, 0),
        (0, 0, "map.low", "active", "high", 50, 55, 0),
        (1, HOUR, "spo2.low", "resolved", "high", 97, 90, 0),
        (1, HOUR, "hr.high", "resolved", "high", 80, 120, 0),
        (1, HOUR, "rr.high", "resolved", "high", 16, 24, 0),
        (1, HOUR, "map.low", "resolved", "high", 85, 65, 0),
    ]
    raised = [e.message for i, e in got if e.kind == "physiological" and i == 0]
    assert raised == [
        "SpO2 80 % < 85 %",
        "HR 150 /min > 140 /min",
        "RR 35 /min > 30 /min",
        "MAP 50 mmHg < 55 mmHg",
    ]


def cuff(t: float, sbp: float, dbp: float, map_: float) -> list[Reading]:
    """One cuff cycle (device ``nibp``): systolic, diastolic and mean together."""
    return [reading(t, v, x, device="nibp") for v, x in (("sbp", sbp), ("dbp", dbp), ("map", map_))]


def test_cuff_every_fifteen_minutes_raises_map_low_at_its_own_reading():
    """A cuff cycling every 15 min (intermittent): MAP 50 raises map.low high at the cycle
    that measured it, not at the next one."""
    got = feed([cuff(0, 120, 70, 87), cuff(900, 118, 68, 85), cuff(1800, 100, 25, 50)])
    assert physiological(got) == [(2, 1800, "map.low", "active", "high", 50, 55, 1800)]
    assert got[0][1].message == "MAP 50 mmHg < 55 mmHg"


def test_a_lone_cuff_map_of_31_raises_map_low_high():
    """MAP 31, the bed's first and only reading: plausible (the plausibility range of
    MAP starts at 20 mmHg), judged on its own: map.low high at once."""
    eng = Engine(rules(), sinks=[])
    events = eng.process([reading(0, "map", 31, device="nibp")])
    assert [
        (e.rule, str(e.state), str(e.priority), e.value, e.limit, e.at - T0) for e in events
    ] == [("map.low", "active", "high", 31, 55, 0)]
    assert events[0].message == "MAP 31 mmHg < 55 mmHg"
    assert eng.counts["implausible"] == 0


# ------------------------------------------------------- the source's word, patterns


def test_a_one_hz_stream_declared_intermittent_alarms_on_one_reading():
    points = every(1, [80] * 10 + [150] + [80] * 5)
    # auto: continuous (1 s cadence), so one 150 is an artefact
    assert one_by_one(stream("hr", points)) == []
    expected = [
        (10, 10, "hr.high", "active", "high", 150, 140, 10),
        (11, 11, "hr.high", "resolved", "high", 80, 120, 10),
    ]
    # the source says each reading is a spot measurement
    assert physiological(one_by_one(stream("hr", points, mode="intermittent"))) == expected
    # the operator says so (rules.modes.patterns, "device/vital" globs)
    for pattern in ("mon1/hr", "*/hr", "mon?/*", "*"):
        cfg = rules(modes={"patterns": {pattern: "intermittent"}})
        assert physiological(one_by_one(stream("hr", points), cfg)) == expected
    # a pattern for another device or vital leaves the cadence to decide
    for pattern in ("nibp/*", "mon1/spo2"):
        cfg = rules(modes={"patterns": {pattern: "intermittent"}})
        assert one_by_one(stream("hr", points), cfg) == []


def test_the_operator_s_pattern_wins_over_the_source_auto_included():
    points = every(1, [80] * 10 + [150] + [80] * 5)
    declared = stream("hr", points, mode="intermittent")
    # the first matching pattern wins: continuous, over the source's "intermittent"
    cfg = rules(modes={"patterns": {"mon1/*": "continuous", "*": "intermittent"}})
    assert one_by_one(declared, cfg) == []
    # a pattern saying "auto" overrules a source that mislabels itself: the cadence (1 s:
    # continuous) decides, so the single 150 is an artefact, not an alarm
    cfg = rules(modes={"patterns": {"mon1/hr": "auto", "*": "intermittent"}})
    assert [e for _i, e in one_by_one(declared, cfg) if e.kind == "physiological"] == []
    # without the pattern the source's word applies: one reading alarms
    assert [i for i, e in one_by_one(declared, rules()) if e.kind == "physiological"] == [10, 11]


def test_an_hourly_stream_declared_continuous_does_not_alarm_on_its_first_reading():
    points = every(HOUR, [80])
    # auto: the first reading has no interval yet and is judged on its own
    auto = physiological(one_by_one(stream("spo2", points, device="chart")))
    assert auto == [(0, 0, "spo2.low", "active", "high", 80, 85, 0)]
    # declared continuous, by the source or by a pattern: a first reading confirms nothing
    assert one_by_one(stream("spo2", points, device="chart", mode="continuous")) == []
    cfg = rules(modes={"patterns": {"chart/spo2": "continuous"}})
    assert one_by_one(stream("spo2", points, device="chart"), cfg) == []


def test_an_hourly_stream_declared_continuous_raises_at_its_second_low_reading():
    # contract (monitor/engine/modes.py): a continuous run may have gaps of up to
    # max(max_gap_s, 1.5 x the median interval); two hourly 80s are such a run
    cfg = rules(modes={"patterns": {"chart/spo2": "continuous"}})
    got = one_by_one(stream("spo2", every(HOUR, [97, 97, 80, 80]), device="chart"), cfg)
    assert physiological(got) == [(3, 3 * HOUR, "spo2.low", "active", "high", 80, 85, 2 * HOUR)]


# ------------------------------------------------------------------------------ gaps


def test_a_forty_second_dropout_breaks_a_one_hz_run():
    """1 Hz: 97 x10, 82 for 5 s, no reading for 40 s, then 82 again. The median of the
    last five intervals stays 1 s, so the longest gap a run may have is max_gap_s (30 s):
    the run restarts after the dropout and needs its own 15 s."""
    points = every(1, [97] * 10 + [82] * 5) + every(1, [82] * 20, start=54)
    got = one_by_one(stream("spo2", points))
    # without the break the 82s would have held 44 s at t=54
    assert physiological(got) == [(30, 69, "spo2.low", "active", "high", 82, 85, 54)]
    assert got[0][1].message == "SpO2 82 % < 85 % for 15 s"


def test_minute_numerics_keep_a_run_over_sixty_second_gaps_and_need_two_readings():
    """Minute numerics (MIMIC style, every 60 s: continuous). Runs tolerate gaps of
    1.5 x 60 = 90 s, longer than max_gap_s (30 s), which alone would make the series
    blind; artefact rejection still needs 2 readings."""
    got = one_by_one(stream("spo2", every(60, [97] * 5 + [84, 84, 97]), device="mimic"))
    assert physiological(got) == [
        (6, 360, "spo2.low", "active", "high", 84, 85, 300),
        (7, 420, "spo2.low", "resolved", "high", 97, 90, 300),
    ]
    assert got[0][1].message == "SpO2 84 % < 85 % for 60 s"
    # a single 84 between 97s is an artefact there too
    assert one_by_one(stream("spo2", every(60, [97] * 5 + [84] + [97] * 3))) == []


# ------------------------------------------------------------------------ properties

DEFAULT = RulesConfig()
NORMAL = {"spo2": 97.0, "hr": 80.0, "rr": 16.0, "map": 85.0, "sbp": 120.0, "temp": 37.0}
#: a crit value per rule, within the plausibility ranges
CRIT = {
    "spo2.low": 80.0,
    "hr.low": 35.0,
    "hr.high": 150.0,
    "rr.low": 4.0,
    "rr.high": 35.0,
    "map.low": 50.0,
    "sbp.low": 75.0,
    "sbp.high": 210.0,
    "temp.low": 34.5,
    "temp.high": 40.0,
}

#: intervals in quarters of a second (event times stay exact): sub-second to a day
quarters = st.integers(1, 8) | st.integers(1, 4 * 150) | st.integers(1, 4 * 86400)


def limits_near(vital: str) -> list[float]:
    """Values on and next to the default limits of ``vital`` (and its band edges)."""
    tc = DEFAULT.thresholds[vital]
    out = [NORMAL[vital]]
    for lv in (tc.low, tc.high):
        for lim in (lv.warn, lv.crit) if lv is not None else ():
            if lim is not None:
                for x in (lim - tc.clear_band, lim, lim + tc.clear_band):
                    out += [x - 0.5, x, x + 0.5]
    return out


@st.composite
def readings(draw: st.DrawFn, max_size: int = 40) -> list[Reading]:
    """One bed and device: readings of random vitals at strictly increasing times, with
    values anywhere (implausible ones too) and often near the limits; each vital is
    declared by its source or not."""
    hints = {v: draw(st.sampled_from([None, None, "continuous", "intermittent"])) for v in NORMAL}
    n = draw(st.integers(1, max_size))
    q = 0
    out: list[Reading] = []
    for _ in range(n):
        q += draw(quarters)
        vital = draw(st.sampled_from(sorted(NORMAL)))
        value = draw(st.sampled_from(limits_near(vital)) | st.integers(0, 300).map(float))
        out.append(reading(q / 4, vital, value, mode=hints[vital]))
    return out


def is_beyond(e: AlertEvent) -> bool:
    return e.value < e.limit if e.rule.endswith(".low") else e.value > e.limit


@PROPS
@given(readings())
def test_property_an_alert_is_raised_only_at_a_reading_beyond_its_limit(rs: list[Reading]):
    # default configuration with trends and flapping detection (which may hold an event
    # and emit it later: each event is checked against the reading at its own time)
    got = one_by_one(rs, RulesConfig())
    at = {r.ts: r for r in rs}  # times are distinct
    for i, e in got:
        if e.kind != "physiological" or e.rule.endswith(".flapping") or e.state != ACTIVE:
            continue
        # a raise (seq 1) or a raise to crit (priority high: raised or escalated); an
        # active medium event after seq 1 is a de-escalation, which follows hysteresis
        if e.seq == 1 or str(e.priority) == "high":
            r = at[e.at]
            assert r.ts <= rs[i].ts
            assert (r.vital, r.value) == (e.vital, e.value)
            assert is_beyond(e), e


@PROPS
@given(
    st.sampled_from(sorted(CRIT)),
    st.integers(4, 4 * 86400),  # interval, 1/4 s: 1 s to 24 h
    st.integers(0, 6),  # normal readings first
)
def test_property_no_default_setting_makes_a_series_blind(rule: str, q: int, normal: int):
    """Readings at any interval from 1 s to 24 h, then crit values: the alert is raised
    by the reading at which the run has both 2 readings and delay_s (for any interval of
    at least delay_s: by the second crit reading at the latest), and by the very first
    crit reading when the series is intermittent (interval beyond 120 s, or no interval
    yet)."""
    vital = rule.partition(".")[0]
    interval = q / 4
    delay = DEFAULT.thresholds[vital].delay_s
    needed = max(2, 1 + math.ceil(delay / interval))  # crit readings a continuous run needs
    values = [NORMAL[vital]] * normal + [CRIT[rule]] * (needed + 1)
    got = one_by_one(stream(vital, every(interval, values)), RulesConfig())
    raised = [i - normal for i, e in got if e.rule == rule and e.state == ACTIVE]
    assert raised, f"{rule} never raised at an interval of {interval} s"
    first = raised[0]
    assert 0 <= first < needed
    if interval >= delay:
        assert first <= 1
    if normal == 0 or interval > DEFAULT.modes.continuous_max_interval_s:
        assert first == 0
    e = next(e for _, e in got if e.rule == rule)
    assert (str(e.state), str(e.priority), e.value) == ("active", "high", CRIT[rule])


@PROPS
@given(readings(max_size=60))
def test_property_one_reading_at_a_time_or_all_at_once_gives_the_same_events(
    rs: list[Reading],
):
    # Default configuration (trends, flapping detection, NEWS2), except max_age_s: in one
    # batch, a reading older than the batch's newest by more than max_age_s is history
    # (never evaluated, by design: one message repeating yesterday's NIBP; see
    # tests/test_event_time.py), whereas one at a time it was the present.
    span = rs[-1].ts - rs[0].ts
    cfg = RulesConfig(max_age_s=span + 1)
    one = [e.to_json() for _, e in one_by_one(rs, cfg)]
    batch = [e.to_json() for e in Engine(cfg, sinks=[]).process(list(rs))]
    assert batch == one


def test_a_cuff_after_stat_cycles_is_not_blind() -> None:
    """A cuff over MQTT (auto mode): four STAT cycles a minute apart make its median
    interval 60 s (continuous), then it goes back to every 15 min. A reading that long
    after the one before it is judged on its own: MAP 48 alarms at its own cycle, not
    only once the median has caught up half an hour later."""
    eng = Engine(rules(), sinks=[])
    stat = [Reading(T0 + 60 * i, "icu", "7", "cuff", "map", 85.0) for i in range(5)]
    assert eng.process(stat) == []
    later = [Reading(T0 + 240 + 900 * i, "icu", "7", "cuff", "map", 48.0) for i in (1, 2, 3)]
    events = eng.process(later)
    assert [(e.rule, str(e.priority), e.at - T0) for e in events] == [
        ("map.low", "high", 240 + 900)
    ]
