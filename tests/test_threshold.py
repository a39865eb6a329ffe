"""Threshold rules: worked examples (Kapacitor style) and properties against a reference.

Everything runs on event time through ``Engine.process`` (synchronous), or on
``ThresholdRule`` directly; nothing here waits or does I/O.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import RulesConfig
from monitor.engine import Engine
from monitor.engine.threshold import SeriesKey, ThresholdRule
from monitor.model import VITALS, AlertEvent, AlertState, Priority, Reading

T0 = 1764324000.0  # 2025-11-28T10:00:00Z
ACTIVE, RESOLVED = AlertState.ACTIVE, AlertState.RESOLVED
MEDIUM, HIGH = Priority.MEDIUM, Priority.HIGH


def rules(thresholds: dict[str, Any] | None = None, **kw: Any) -> RulesConfig:
    # thresholds alone here: no trends, and no flapping detection (which holds a storm's
    # raises by design: tests/test_flapping.py)
    data: dict[str, Any] = {"trends": {"enabled": False}, "flapping": {"enabled": False}, **kw}
    if thresholds is not None:
        data["thresholds"] = thresholds
    return RulesConfig.model_validate(data)


def series(vital: str, points: Sequence[tuple[float, float]], bed: str = "7") -> list[Reading]:
    return [Reading(T0 + t, "icu", bed, "mon1", vital, float(v), "MRN-1") for t, v in points]


def every_second(values: Sequence[float], start: float = 0) -> list[tuple[float, float]]:
    return [(start + i, v) for i, v in enumerate(values)]


def run(readings: Sequence[Reading], cfg: RulesConfig | None = None) -> list[AlertEvent]:
    return Engine(cfg or rules(), sinks=[]).process(readings)


def one_by_one(readings: Sequence[Reading], cfg: RulesConfig | None = None):
    """-> [(index of the reading that caused it, event)], feeding readings one at a time."""
    eng = Engine(cfg or rules(), sinks=[])
    return [(i, ev) for i, r in enumerate(readings) for ev in eng.process([r])]


def summary(events: Sequence[AlertEvent]) -> list[tuple[float, str, str, int]]:
    return [(e.at - T0, str(e.state), str(e.priority), e.seq) for e in events]


# ------------------------------------------------------------------ worked examples


def test_docstring_worked_example_spo2():
    """spo2.low warn 90 crit 85, delay 15 s, clear band 2, one reading a second."""
    values = [97] * 10 + [82] * 30 + [88, 91, 97]
    events = run(series("spo2", every_second(values)))
    assert summary(events) == [
        (25, "active", "high", 1),  # condition from t=10, held 15 s at t=25
        (40, "active", "medium", 2),  # 88 >= 85+2: back to warn, same alert
        (42, "resolved", "medium", 3),  # 91 < 92 held warn; 97 clears
    ]
    raised, lowered, resolved = events
    assert len({e.id for e in events}) == 1
    assert {e.started_at for e in events} == {T0 + 10}
    assert raised.message == "SpO2 82 % < 85 % for 15 s"
    assert (raised.value, raised.limit, raised.rule, raised.vital) == (82, 85, "spo2.low", "spo2")
    assert (lowered.value, lowered.limit) == (88, 90)
    assert (resolved.value, resolved.limit) == (97, 90)
    assert resolved.message == "SpO2 97 % back above 90 %; alarm lasted 32 s"
    for e in events:
        assert (e.ward, e.bed, e.device, e.patient, e.kind) == (
            "icu",
            "7",
            "mon1",
            "MRN-1",
            "physiological",
        )
    assert raised.to_json()["started_at"] == "2025-11-28T10:00:10.000Z"
    assert raised.to_json()["at"] == "2025-11-28T10:00:25.000Z"


def test_readme_worked_example():
    """97 x10, 82 x30, 97: one raise at t=25, resolved by the first 97 at t=40."""
    values = [97] * 10 + [82] * 30 + [97]
    got = one_by_one(series("spo2", every_second(values)))
    assert [(i, e.at - T0, str(e.state), str(e.priority), e.seq) for i, e in got] == [
        (25, 25, "active", "high", 1),
        (40, 40, "resolved", "high", 2),
    ]
    assert got[0][1].id == got[1][1].id
    assert got[0][1].message == "SpO2 82 % < 85 % for 15 s"


def test_raise_after_exactly_delay_not_before():
    values = [97] * 5 + [88] * 30
    got = one_by_one(series("spo2", every_second(values)))
    assert [(i, str(e.state), str(e.priority)) for i, e in got] == [(20, "active", "medium")]
    ((_, ev),) = got
    assert ev.at == T0 + 20
    assert ev.started_at == T0 + 5
    assert ev.message == "SpO2 88 % < 90 % for 15 s"


def test_raise_with_irregular_spacing_waits_for_the_full_delay():
    # 88 at t=0, 7, 14.9: spans only 14.9 s; at t=15.1 it has held 15.1 s
    pts = [(-1, 97), (0, 88), (7, 88), (14.9, 88), (15.1, 88)]
    got = one_by_one(series("spo2", pts))
    assert [(i, e.at - T0) for i, e in got] == [(4, pytest.approx(15.1))]


def test_escalate_keeps_id_and_raises_priority_then_deescalates():
    values = [97] * 5 + [88] * 20 + [82] * 20 + [88] * 3 + [97]
    events = run(series("spo2", every_second(values)))
    assert summary(events) == [
        (20, "active", "medium", 1),  # 88 from t=5, 15 s
        (40, "active", "high", 2),  # 82 from t=25, its own 15 s
        (45, "active", "medium", 3),  # 88 >= 87: de-escalation follows the newest reading
        (48, "resolved", "medium", 4),
    ]
    assert len({e.id for e in events}) == 1
    assert events[1].limit == 85
    assert events[1].message == "SpO2 82 % < 85 % for 15 s"
    assert {e.started_at for e in events} == {T0 + 5}


def test_jump_straight_to_crit_raises_high_directly():
    values = [97] * 5 + [80] * 20
    assert summary(run(series("spo2", every_second(values)))) == [(20, "active", "high", 1)]


def test_crit_needs_its_own_delay_while_warn_is_active():
    # 88 from t=5 (warn at t=20); a single 80 at t=22 does not escalate
    values = [97] * 5 + [88] * 17 + [80] + [88] * 10
    assert summary(run(series("spo2", every_second(values)))) == [(20, "active", "medium", 1)]


def test_hysteresis_holds_until_limit_plus_band():
    values = [97] * 5 + [88] * 16 + [90, 91, 91.9, 91.99, 92]
    events = run(series("spo2", every_second(values)))
    assert summary(events) == [(20, "active", "medium", 1), (25, "resolved", "medium", 2)]
    assert events[1].value == 92


def test_hysteresis_on_crit_level():
    # crit 85 + band 2: 86 keeps high, 87 de-escalates to medium
    values = [97] * 5 + [80] * 16 + [84, 86, 86.9, 87, 89, 91, 92]
    events = run(series("spo2", every_second(values)))
    assert summary(events) == [
        (20, "active", "high", 1),
        (24, "active", "medium", 2),
        (27, "resolved", "medium", 3),
    ]


def test_resolve_is_emitted_even_for_a_short_alert():
    # sbp has delay 0 and band 5: one low reading raises, one normal reading resolves
    events = run(series("sbp", [(0, 120), (1, 85), (2, 121)]))
    assert summary(events) == [(1, "active", "medium", 1), (2, "resolved", "medium", 2)]
    assert events[1].message == "SBP 121 mmHg back above 90 mmHg; alarm lasted 1 s"


def test_resolve_from_crit_carries_high_priority():
    events = run(series("sbp", [(0, 120), (1, 70), (2, 120)]))
    assert summary(events) == [(1, "active", "high", 1), (2, "resolved", "high", 2)]


def test_band_applies_to_sbp_too():
    events = run(series("sbp", [(0, 120), (1, 85), (2, 94), (3, 94.9), (4, 95)]))
    assert summary(events) == [(1, "active", "medium", 1), (4, "resolved", "medium", 2)]


def test_gap_longer_than_max_gap_breaks_the_run():
    # 82 at t=0 and t=40 spans 40 s but with a 40 s hole (max_gap_s 30): no alarm
    pts = [(-1, 97), (0, 82), (40, 82)] + [(t, 82) for t in range(41, 60)]
    got = one_by_one(series("spo2", pts))
    # the run restarts at t=40 and needs 15 s from there
    assert [(e.at - T0, str(e.priority), e.started_at - T0) for _, e in got] == [(55, "high", 40)]


def test_gap_of_exactly_max_gap_does_not_break_the_run():
    pts = [(-1, 97), (0, 82), (10, 82), (20, 82)]
    cfg = rules(max_gap_s=10)
    assert summary(run(series("spo2", pts), cfg)) == [(20, "active", "high", 1)]
    cfg = rules(max_gap_s=9.5)
    assert run(series("spo2", pts), cfg) == []


def test_sparse_readings_never_raise_when_every_gap_is_too_long():
    pts = [(t, 70.0) for t in range(0, 600, 6)]
    assert run(series("spo2", pts), rules(max_gap_s=5)) == []
    assert summary(run(series("spo2", pts), rules(max_gap_s=6))) == [(18, "active", "high", 1)]


def test_gap_does_not_resolve_an_active_alert():
    pts = [(t, 80.0) for t in range(20)] + [(200, 80.0), (201, 97)]
    events = run(series("spo2", pts))
    assert summary(events) == [(15, "active", "high", 1), (201, "resolved", "high", 2)]


def test_delay_zero_fires_on_one_reading():
    events = run(series("temp", [(0, 37.0), (1, 39.6), (2, 37.0)]))
    assert summary(events) == [(1, "active", "high", 1), (2, "resolved", "high", 2)]
    assert events[0].message == "Temp 39.6 °C > 39.5 °C"
    assert events[0].started_at == T0 + 1


def test_first_reading_beyond_with_delay_zero():
    assert summary(run(series("sbp", [(0, 210)]))) == [(0, "active", "high", 1)]


def test_high_side_mirrors_low_side():
    # hr.high warn 120 crit 140, delay 10, band 5
    values = [80] * 5 + [145] * 12 + [137, 135.1, 135, 116, 115]
    events = run(series("hr", every_second(values)))
    assert summary(events) == [
        (15, "active", "high", 1),  # 145 from t=5, 10 s
        (19, "active", "medium", 2),  # 135 is not > 140-5
        (21, "resolved", "medium", 3),  # 115 is not > 120-5
    ]
    assert {e.rule for e in events} == {"hr.high"}
    assert events[0].message == "HR 145 /min > 140 /min for 10 s"
    assert events[2].message == "HR 115 /min back below 120 /min; alarm lasted 16 s"


def test_low_and_high_side_of_one_vital_are_separate_alerts():
    values = [80] * 3 + [35] * 11 + [80] + [150] * 11 + [80]
    events = run(series("hr", every_second(values)))
    assert [(e.rule, str(e.state), str(e.priority)) for e in events] == [
        ("hr.low", "active", "high"),
        ("hr.low", "resolved", "high"),
        ("hr.high", "active", "high"),
        ("hr.high", "resolved", "high"),
    ]
    assert len({e.id for e in events}) == 2


def test_series_are_independent_per_bed():
    a = series("sbp", [(0, 120), (1, 85)], bed="1")
    b = series("sbp", [(0, 85), (1, 120)], bed="2")
    events = run([a[0], b[0], a[1], b[1]])
    assert [(e.bed, str(e.state)) for e in events] == [
        ("2", "active"),
        ("1", "active"),
        ("2", "resolved"),
    ]
    assert len({e.id for e in events}) == 2


def test_disabled_threshold_and_vital_without_rules():
    cfg = rules({"sbp": None})
    assert run(series("sbp", [(0, 60)]), cfg) == []
    assert run(series("dbp", [(0, 10), (1, 290)])) == []


def test_custom_thresholds_merge_with_defaults():
    cfg = rules({"spo2": {"delay_s": 0}})  # keeps the limits; confirm stays 2 (continuous)
    pts = [(0, 97), (1, 84), (2, 84)]
    assert summary(run(series("spo2", pts), cfg)) == [(2, "active", "high", 1)]
    cfg = rules({"spo2": {"delay_s": 0, "confirm": 1}})
    assert summary(run(series("spo2", pts), cfg)) == [(1, "active", "high", 1)]


def test_single_reading_spike_between_normal_neighbours_never_alarms():
    # delay_s 0 leaves the artefact rule alone to hold it back: HR 200 for one reading
    cfg = rules({"hr": {"delay_s": 0}})
    assert run(series("hr", [(0, 80), (1, 200), (2, 80), (3, 81)]), cfg) == []
    # two consecutive readings are a measurement, not an artefact
    got = run(series("hr", [(0, 80), (1, 200), (2, 200), (3, 80)]), cfg)
    assert summary(got) == [(2, "active", "high", 1), (3, "resolved", "high", 2)]


def test_spot_measurements_alarm_on_one_reading():
    # an NIBP cuff reading is one validated measurement: no second cycle awaited
    got = run(series("sbp", [(0, 120), (900, 75)]))
    assert summary(got) == [(900, "active", "high", 1)]
    cfg = rules({"sbp": {"confirm": 2}})
    assert run(series("sbp", [(0, 120), (900, 75)]), cfg) == []


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["hr", "spo2", "rr", "map"]),
    st.lists(st.floats(0, 350), min_size=1, max_size=3),
    st.integers(3, 40),
    st.integers(3, 40),
)
def test_property_no_physiological_alarm_from_one_spike(vital, spikes, before, after):
    # any single reading, whatever its value, between normal neighbours (1 s apart),
    # repeated several times: no threshold alarm, for every default continuous vital
    normal = {"hr": 80.0, "spo2": 97.0, "rr": 14.0, "map": 85.0}[vital]
    lo, hi = VITALS[vital][1], VITALS[vital][2]
    pts: list[tuple[float, float]] = []
    t = 0
    for spike in spikes:
        for _ in range(before):
            pts.append((t, normal))
            t += 1
        pts.append((t, min(max(spike, lo), hi)))
        t += 1
    pts += [(t + i, normal) for i in range(after)]
    cfg = rules({vital: {"delay_s": 0}})  # the delay would hide it anyway: test the rule
    assert [e for e in run(series(vital, pts), cfg) if e.kind == "physiological"] == []


def test_out_of_order_reading_within_max_lag_is_inserted():
    # 82 from t=10, but the reading of t=17 is a 97 that arrives late (after t=24)
    pts = [(t, 82.0) for t in range(10, 25) if t != 17]
    late = (17, 97.0)
    tail = [(t, 82.0) for t in range(25, 40)]
    ordered = series("spo2", [(0, 97.0), *pts, late, *tail])
    eng = Engine(rules(), sinks=[])
    events = eng.process(ordered)
    # the run is broken at t=17, so it only holds 15 s at t=33 (from t=18)
    assert summary(events) == [(33, "active", "high", 1)]
    assert events[0].started_at == T0 + 18
    assert eng.counts["late"] == 0


def test_reading_later_than_max_lag_is_not_evaluated():
    pts = [(t, 82.0) for t in range(10, 25) if t != 17]
    ordered = series("spo2", [(0, 97.0), *pts, (17, 97.0), (25, 82.0)])
    eng = Engine(rules(max_lag_s=5), sinks=[])
    events = eng.process(ordered)
    assert summary(events) == [(25, "active", "high", 1)]
    assert eng.counts["late"] == 1
    assert eng.counts["readings"] == len(ordered)


def test_same_recording_same_ids_in_another_engine():
    values = [97] * 5 + [80] * 20 + [97]
    a = run(series("spo2", every_second(values)))
    b = run(series("spo2", every_second(values)))
    assert [e.id for e in a] == [e.id for e in b]
    assert len(a) == 2


def test_a_new_alert_after_resolution_gets_a_new_id():
    events = run(series("sbp", [(0, 85), (1, 120), (2, 85), (3, 120)]))
    assert [e.seq for e in events] == [1, 2, 1, 2]
    assert events[0].id == events[1].id != events[2].id == events[3].id


# ------------------------------------------------------------ ThresholdRule directly

KEY = SeriesKey("icu", "7", "mon1", "spo2")


def arrays(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    ts = np.array([T0 + t for t, _ in points], dtype=np.float64)
    return ts, np.array([v for _, v in points], dtype=np.float64)


def test_rule_level_and_evaluate_directly():
    rule = ThresholdRule("spo2", "low", 90, 85, 15, 2, 30)
    ts, vals = arrays(every_second([97] * 5 + [82] * 16))
    assert rule.level(0, ts[:-1], vals[:-1]) == (0, None)  # held 14 s only
    assert rule.level(0, ts, vals) == (2, 5)  # run started at index 5
    active, ev = rule.evaluate(KEY, ts, vals, None, "p")
    assert active is not None
    assert ev is not None
    assert (ev.state, ev.priority, ev.seq, ev.patient) == (ACTIVE, HIGH, 1, "p")
    # the same window again: no new event
    again, none = rule.evaluate(KEY, ts, vals, active, "p")
    assert again is active
    assert none is None
    ts2, vals2 = arrays([*every_second([97] * 5 + [82] * 16), (21, 97)])
    gone, res = rule.evaluate(KEY, ts2, vals2, active, "p")
    assert gone is None
    assert res is not None
    assert (res.state, res.priority, res.seq, res.id) == (RESOLVED, HIGH, 2, ev.id)


def test_rule_with_only_a_crit_level():
    rule = ThresholdRule("hr", "high", None, 150, 0, 5, 30)
    ts, vals = arrays([(0, 149), (1, 151)])
    assert rule.level(0, ts[:1], vals[:1]) == (0, None)
    assert rule.level(0, ts, vals) == (2, 1)
    ts, vals = arrays([(0, 151), (1, 146)])
    assert rule.level(2, ts, vals) == (2, None)  # 146 > 150-5: held
    ts, vals = arrays([(0, 151), (1, 145)])
    assert rule.level(2, ts, vals) == (0, None)


def test_rules_from_config():
    cfg = rules()
    hr = ThresholdRule.from_config("hr", cfg.thresholds["hr"], 30)
    assert [r.name for r in hr] == ["hr.low", "hr.high"]
    assert hr[1].limits == {1: 120, 2: 140}
    assert (hr[1].delay_s, hr[1].band) == (10, 5)
    assert ThresholdRule.from_config("sbp", rules({"sbp": None}).thresholds["sbp"], 30) == []


@pytest.mark.parametrize(
    ("vital", "side", "warn", "crit", "delay", "band"),
    [
        ("spo2", "low", 90, 85, 15, 2),
        ("hr", "low", 50, 40, 10, 5),
        ("hr", "high", 120, 140, 10, 5),
        ("rr", "low", 8, 5, 15, 2),
        ("rr", "high", 24, 30, 15, 2),
        ("sbp", "low", 90, 80, 0, 5),
        ("sbp", "high", 180, 200, 0, 5),
        ("map", "low", 65, 55, 10, 3),
        ("temp", "low", 35.5, 35.0, 0, 0.2),
        ("temp", "high", 38.0, 39.5, 0, 0.2),
    ],
)
def test_default_limits(vital: str, side: str, warn: float, crit: float, delay: float, band: float):
    (rule,) = [r for r in Engine(rules(), sinks=[]).rules[vital] if r.side == side]
    assert rule.limits == {1: warn, 2: crit}
    assert (rule.delay_s, rule.band) == (delay, band)


# ------------------------------------------------------------------------ reference


@dataclass(frozen=True)
class Side:
    side: str
    limits: dict[int, float]  # 1 warn, 2 crit (either may be missing)
    delay: float
    band: float
    max_gap: float
    confirm: int = 2

    def beyond(self, level: int, v: float) -> bool:
        lim = self.limits[level]
        return v < lim if self.side == "low" else v > lim

    def holds(self, level: int, v: float) -> bool:
        lim = self.limits[level]
        return v < lim + self.band if self.side == "low" else v > lim - self.band


def reference(side: Side, pts: Sequence[tuple[float, float]]) -> list[tuple[Any, ...]]:
    """Brute force, straight from the spec. -> [(reading index, at, state, priority,
    started_at, value, limit)].

    Raising level L at reading k: walking back from k, every reading is beyond L, no gap
    between neighbours exceeds max_gap, and the walk reaches a reading at least ``delay``
    before k. Keeping level L: the newest reading is within L's limit plus the band.
    """

    def run_start(level: int, k: int) -> int | None:
        if not side.beyond(level, pts[k][1]):
            return None
        j = k
        reached = pts[k][0] - pts[j][0] >= side.delay
        while j > 0 and side.beyond(level, pts[j - 1][1]):
            if pts[j][0] - pts[j - 1][0] > side.max_gap:
                break
            j -= 1
            reached = reached or pts[k][0] - pts[j][0] >= side.delay
        return j if reached and k - j + 1 >= side.confirm else None

    prio = {1: "medium", 2: "high"}
    entry = side.limits[min(side.limits)]
    out: list[tuple[Any, ...]] = []
    level, started = 0, 0.0
    for k, (t, v) in enumerate(pts):
        held = next(
            (lv for lv in (2, 1) if lv <= level and lv in side.limits and side.holds(lv, v)), 0
        )
        new, start = held, None
        for lv in (2, 1):
            if lv in side.limits and lv > held:
                start = run_start(lv, k)
                if start is not None:
                    new = lv
                    break
        if new == level:
            continue
        if level == 0:
            assert start is not None
            started = pts[start][0]
        if new == 0:
            out.append((k, t, "resolved", prio[level], started, v, entry))
        else:
            out.append((k, t, "active", prio[new], started, v, side.limits[new]))
        level = new
    return out


def observed(events_by_reading: Sequence[tuple[int, AlertEvent]], rule: str):
    return [
        (i, e.at, str(e.state), str(e.priority), e.started_at, e.value, e.limit)
        for i, e in events_by_reading
        if e.rule == rule
    ]


# -------------------------------------------------------------------- strategies

#: hr (range 0..350): low limits 40..60, high 110..130, band <= 5, so 85 is normal for all
NORMAL = 85.0


@st.composite
def hr_configs(draw: st.DrawFn) -> dict[str, Any]:
    def levels(lo: int, hi: int, sign: int) -> dict[str, float] | None:
        kind = draw(st.sampled_from(["both", "warn", "crit", "none"]))
        warn = draw(st.integers(lo, hi))
        crit = warn + sign * draw(st.integers(0, 15))
        return {
            "both": {"warn": warn, "crit": crit},
            "warn": {"warn": warn},
            "crit": {"crit": crit},
            "none": None,
        }[kind]

    low = levels(40, 60, -1)
    high = levels(110, 130, +1)
    if low is None and high is None:
        low = {"warn": 50, "crit": 40}
    return {
        "low": low,
        "high": high,
        "delay_s": draw(st.sampled_from([0, 0.5, 1, 2.5, 5, 10, 15, 30])),
        "clear_band": draw(st.sampled_from([0, 0.5, 2, 5])),
        "confirm": draw(st.sampled_from([None, 1, 2, 3])),
    }


def edges(cfg: dict[str, Any]) -> list[float]:
    """Values on and next to every limit and every limit +- band."""
    out = {NORMAL}
    band = cfg["clear_band"]
    for lv in (cfg["low"], cfg["high"]):
        for lim in (lv or {}).values():
            for x in (lim - band, lim, lim + band):
                out.update((x - 0.5, x, x + 0.5))
    return sorted(out)


@st.composite
def hr_series(draw: st.DrawFn, cfg: dict[str, Any] | None = None) -> list[tuple[float, float]]:
    """Runs of one value (so conditions hold for a while) with irregular spacing, in quarters
    of a second so that every difference of timestamps is exact."""
    near = edges(cfg) if cfg else [39.5, 40, 49.5, 50, 120, 120.5, 140]
    segments = draw(
        st.lists(
            st.tuples(
                st.integers(20, 150) | st.sampled_from(near),
                st.integers(1, 25),
                st.integers(1, 48) | st.sampled_from([120, 160, 400]),  # step, 1/4 s
            ),
            min_size=1,
            max_size=8,
        )
    )
    q = 0
    pts: list[tuple[float, float]] = []
    for value, count, step in segments:
        for _ in range(count):
            jitter = draw(st.sampled_from([0, 0, 0, 1, -1])) if step > 1 else 0
            q += step + jitter
            pts.append((q / 4, float(value)))
    return pts


def sides(cfg: dict[str, Any], max_gap: float) -> dict[str, Side]:
    out = {}
    for name in ("low", "high"):
        lv = cfg[name]
        if lv is not None:
            limits = {lvl: float(lv[k]) for lvl, k in ((1, "warn"), (2, "crit")) if k in lv}
            confirm = cfg["confirm"] or 2  # hr is measured continuously: 2 by default
            out[f"hr.{name}"] = Side(
                name, limits, cfg["delay_s"], cfg["clear_band"], max_gap, confirm
            )
    return out


PROPS = settings(max_examples=250, deadline=None)


Case = tuple[dict[str, Any], list[tuple[float, float]]]
config_and_series = hr_configs().flatmap(lambda c: st.tuples(st.just(c), hr_series(c)))


@PROPS
@given(config_and_series, st.sampled_from([1.0, 3.0, 10.0, 30.0]))
def test_engine_matches_reference(case: Case, max_gap: float):
    cfg, pts = case
    readings = series("hr", pts)
    got = one_by_one(readings, rules({"hr": cfg}, max_gap_s=max_gap))
    for rule, side in sides(cfg, max_gap).items():
        expected = [
            (k, T0 + t, s, p, T0 + st_, v, lim) for k, t, s, p, st_, v, lim in reference(side, pts)
        ]
        assert observed(got, rule) == expected
    # one batch gives exactly the events of one reading at a time
    batch = run(readings, rules({"hr": cfg}, max_gap_s=max_gap))
    assert [e.to_json() for e in batch] == [e.to_json() for _, e in got]


def check_structure(events: Sequence[AlertEvent], all_resolved: bool) -> None:
    by_id: dict[str, list[AlertEvent]] = defaultdict(list)
    for e in events:
        by_id[e.id].append(e)
    open_per_rule: dict[str, str] = {}
    for e in events:
        # at most one open alert per series and rule at a time
        if e.seq == 1:
            assert e.rule not in open_per_rule
            open_per_rule[e.rule] = e.id
        assert open_per_rule[e.rule] == e.id
        if e.state == RESOLVED:
            del open_per_rule[e.rule]
    for evs in by_id.values():
        assert evs[0].state == ACTIVE
        assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
        assert [e.state for e in evs[:-1]] == [ACTIVE] * (len(evs) - 1)
        assert len({(e.rule, e.started_at) for e in evs}) == 1
        for a, b in itertools.pairwise(evs):
            assert (a.state, a.priority) != (b.state, b.priority)
            assert a.at < b.at
        if all_resolved:
            assert evs[-1].state == RESOLVED
            assert evs[-1].priority == evs[-2].priority
    if all_resolved:
        assert not open_per_rule


@PROPS
@given(config_and_series, st.sampled_from([3.0, 30.0]))
def test_events_alternate_correctly(case: Case, max_gap: float):
    cfg, pts = case
    # a normal reading at the end resolves whatever is open: recovery is always emitted
    pts = [*pts, (pts[-1][0] + 1, NORMAL)]
    events = run(series("hr", pts), rules({"hr": cfg}, max_gap_s=max_gap))
    check_structure(events, all_resolved=True)
    assert len(events) <= len(pts)  # never one event per reading beyond


@PROPS
@given(config_and_series, st.integers(-(10**7), 10**7))
def test_replay_invariance_under_time_shift(case: Case, shift_s: int):
    cfg, pts = case
    shift = shift_s / 4  # exact: stays on the quarter-second grid
    a = run(series("hr", pts), rules({"hr": cfg}))
    b = run(series("hr", [(t + shift, v) for t, v in pts]), rules({"hr": cfg}))

    def strip(e: AlertEvent, dt: float) -> tuple[Any, ...]:
        return (
            e.rule,
            str(e.state),
            str(e.priority),
            e.seq,
            e.value,
            e.limit,
            e.message,
            e.at - dt,
            e.started_at - dt,
        )

    assert [strip(e, 0) for e in a] == [strip(e, shift) for e in b]
    # the ids differ (they name the start time) but have the same structure
    ids = dict(zip([e.id for e in a], [e.id for e in b], strict=True))
    assert len(set(ids.values())) == len(ids)
    assert [ids[e.id] for e in a] == [e.id for e in b]
    if shift == 0:
        assert [e.id for e in a] == [e.id for e in b]


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=0, max_value=3600, exclude_min=True),  # down to subnormal delays
    st.lists(st.floats(min_value=0.01, max_value=100), min_size=1, max_size=30),
    st.data(),
)
def test_single_reading_beyond_never_raises_with_delay(
    delay: float, gaps: list[float], data: st.DataObject
):
    cfg = rules({"hr": {"delay_s": delay}, "spo2": {"delay_s": delay}}, window_s=7200)
    t = 0.0
    hr, spo2 = [], []
    for gap in gaps:
        t += gap
        hr.append((t, NORMAL))
        spo2.append((t, 97.0))
    # isolated readings beyond (each with normal neighbours), as extreme as plausible
    for i in data.draw(st.sets(st.integers(0, len(gaps) - 1).filter(lambda i: i % 2 == 0))):
        hr[i] = (hr[i][0], data.draw(st.sampled_from([0.0, 30.0, 39.0, 141.0, 350.0])))
        spo2[i] = (spo2[i][0], data.draw(st.sampled_from([0.0, 50.0, 84.9, 89.9])))
    events = run(series("hr", hr) + series("spo2", spo2), cfg)
    assert events == []
