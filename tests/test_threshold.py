"""Threshold rules: worked examples (Kapacitor style) and properties against a reference.

Everything runs on event time through ``Engine.process`` (synchronous), or on
``ThresholdRule`` directly; nothing here waits or does I/O.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
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


def series(
    vital: str, points: Sequence[tuple[float, float]], bed: str = "7", mode: str | None = None
) -> list[Reading]:
    """``mode``: as a source gives it (None: the engine infers it from the cadence)."""
    return [Reading(T0 + t, "icu", bed, "mon1", vital, float(v), "MRN-1", mode) for t, v in points]


def spot(vital: str, points: Sequence[tuple[float, float]], bed: str = "7") -> list[Reading]:
    """Intermittent readings (a cuff cycle, a thermometer), marked so as sources do (HL7
    ``nibp``, OBX-17 ``APERIODIC``): each is judged on its own, however close in time."""
    return series(vital, points, bed, "intermittent")


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
    # cuff readings (intermittent), band 5: one low reading raises, one normal resolves
    events = run(spot("sbp", [(0, 120), (1, 85), (2, 121)]))
    assert summary(events) == [(1, "active", "medium", 1), (2, "resolved", "medium", 2)]
    assert events[1].message == "SBP 121 mmHg back above 90 mmHg; alarm lasted 1 s"


def test_resolve_from_crit_carries_high_priority():
    events = run(spot("sbp", [(0, 120), (1, 70), (2, 120)]))
    assert summary(events) == [(1, "active", "high", 1), (2, "resolved", "high", 2)]


def test_band_applies_to_sbp_too():
    events = run(spot("sbp", [(0, 120), (1, 85), (2, 94), (3, 94.9), (4, 95)]))
    assert summary(events) == [(1, "active", "medium", 1), (4, "resolved", "medium", 2)]


def test_gap_longer_than_max_gap_breaks_the_run():
    # 82 at t=0 and t=40 spans 40 s but with a 40 s hole (max_gap_s 30): no alarm
    pts = [(-1, 97), (0, 82), (40, 82)] + [(t, 82) for t in range(41, 60)]
    got = one_by_one(series("spo2", pts))
    # the run restarts at t=40 and needs 15 s from there
    assert [(e.at - T0, str(e.priority), e.started_at - T0) for _, e in got] == [(55, "high", 40)]


def test_gap_of_exactly_max_gap_does_not_break_the_run():
    # a 1 Hz series (normal readings first: its cadence, the median of its last five
    # intervals, stays 1 s), so the longest gap its runs may have is max_gap_s itself
    # (1.5 x 1 s is less); then 82 at t=0, 10, 20
    pts = [*every_second([97] * 10, start=-10), (0, 82), (10, 82), (20, 82)]
    cfg = rules(max_gap_s=10)
    assert summary(run(series("spo2", pts), cfg)) == [(20, "active", "high", 1)]
    cfg = rules(max_gap_s=9.5)
    assert run(series("spo2", pts), cfg) == []


def test_sparse_readings_are_never_blind():
    # This test used to assert that readings 6 s apart never raise when max_gap_s is 5:
    # that was the defect (a series sparser than max_gap_s could never alarm, whatever
    # its values). Now a series is never blind because of its own cadence:
    pts = [(t, 70.0) for t in range(0, 600, 6)]
    # in auto mode the very first reading has no interval yet: it is judged on its own
    # (intermittent), so SpO2 70 raises at once, whatever max_gap_s
    for max_gap in (5, 6):
        got = run(series("spo2", pts), rules(max_gap_s=max_gap))
        assert summary(got) == [(0, "active", "high", 1)]
        assert got[0].started_at == T0
    # declared continuous, the run tolerates gaps of max(max_gap_s, 1.5 x 6 s): 6 s gaps
    # never break it, and it raises once it has held delay_s (15 s) as before
    continuous = {"patterns": {"*": "continuous"}}
    for max_gap in (5, 6):
        got = run(series("spo2", pts), rules(max_gap_s=max_gap, modes=continuous))
        assert summary(got) == [(18, "active", "high", 1)]
        assert got[0].started_at == T0
    # readings 10 minutes apart (beyond continuous_max_interval_s) are intermittent:
    # the first one beyond the limit raises at its own reading
    # (one message each: a single batch spanning more than max_age_s would make its
    # oldest readings history)
    pts = [(0, 97.0), (600, 96.0), (1200, 97.0), (1800, 70.0), (2400, 70.0), (3000, 97.0)]
    got = one_by_one(series("spo2", pts), rules(max_gap_s=5))
    assert [(i, *s) for (i, _), s in zip(got, summary([e for _, e in got]), strict=True)] == [
        (3, 1800, "active", "high", 1),
        (5, 3000, "resolved", "high", 2),
    ]
    assert got[0][1].message == "SpO2 70 % < 85 %"


def test_gap_does_not_resolve_an_active_alert():
    # a 1 Hz series (continuous: normal readings first establish its cadence) raises after
    # 15 s; a 180 s dropout (the median interval stays 1 s) keeps the alert, which only
    # the newest reading's value resolves
    pts = [*every_second([97.0] * 10, start=-10)]
    pts += [(t, 80.0) for t in range(20)] + [(200, 80.0), (201, 97)]
    events = run(series("spo2", pts))
    assert summary(events) == [(15, "active", "high", 1), (201, "resolved", "high", 2)]
    assert events[0].started_at == T0


def test_delay_zero_fires_on_one_reading():
    # a thermometer's spot checks (intermittent): one reading beyond raises
    events = run(spot("temp", [(0, 37.0), (1, 39.6), (2, 37.0)]))
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
    a = spot("sbp", [(0, 120), (1, 85)], bed="1")
    b = spot("sbp", [(0, 85), (1, 120)], bed="2")
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
    # an NIBP cuff reading is one validated measurement: no second cycle awaited. Cycles
    # 15 min apart are intermittent (auto mode: the cadence is beyond
    # continuous_max_interval_s), and `confirm` (default 2) is artefact rejection for
    # continuous series only: an intermittent reading is judged on its own whatever it says
    for confirm in (None, 2, 3):
        cfg = rules({"sbp": {"confirm": confirm}})
        got = run(series("sbp", [(0, 120), (900, 75)]), cfg)
        assert summary(got) == [(900, "active", "high", 1)]
    # the same when the source says so (HL7 nibp), however close the cycles
    assert summary(run(spot("sbp", [(0, 120), (60, 75)]))) == [(60, "active", "high", 1)]
    # to await a second cycle, the series is declared continuous: then confirm 2 holds
    # the first 75 back, and the run (gaps of up to 1.5 x 300 s) raises at the second
    cfg = rules(modes={"patterns": {"*/sbp": "continuous"}})
    assert run(series("sbp", [(0, 120), (300, 75)]), cfg) == []
    got = run(series("sbp", [(0, 120), (300, 75), (600, 75)]), cfg)
    assert summary(got) == [(600, "active", "high", 1)]
    assert got[0].started_at == T0 + 300


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
    events = run(spot("sbp", [(0, 85), (1, 120), (2, 85), (3, 120)]))
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

#: The model's constants, restated from the README ("Measurement modes", "Plausibility")
#: rather than imported: the reference shares no code with the engine.
CONTINUOUS_MAX_INTERVAL = 120.0  # rules.modes.continuous_max_interval_s
GAP_FACTOR = 1.5  # rules.modes.gap_factor
CADENCE_INTERVALS = 5  # the cadence is the median of this many latest intervals
WINDOW = 300.0  # rules.window_s (no trend rules: nothing needs a longer window)
HR_PLAUSIBLE = (20.0, 250.0)  # rules.plausibility.ranges.hr


@dataclass(frozen=True)
class Side:
    side: str
    limits: dict[int, float]  # 1 warn, 2 crit (either may be missing)
    delay: float
    band: float
    confirm: int = 2

    def beyond(self, level: int, v: float) -> bool:
        lim = self.limits[level]
        return v < lim if self.side == "low" else v > lim

    def holds(self, level: int, v: float) -> bool:
        lim = self.limits[level]
        return v < lim + self.band if self.side == "low" else v > lim - self.band


@dataclass(frozen=True)
class Judged:
    """A reading the rules see, with how it is judged."""

    index: int  # its index among all the readings given
    t: float
    v: float
    spot: bool  # intermittent: judged on its own
    max_gap: float  # continuous: the longest gap its run may have


def judged(
    pts: Sequence[tuple[float, float]], max_gap_s: float, declared: str | None
) -> list[Judged]:
    """The readings the rules evaluate, each judged in the mode of its series at that
    reading. An implausible value is stored, never evaluated (not in the window), but it
    was measured: its time counts for the cadence.

    ``declared``: the mode a pattern or the source gives (None: auto). Auto: the cadence
    is the median of the last five intervals between the readings so far (this one
    included; times strictly increase here); continuous while it is at most
    ``CONTINUOUS_MAX_INTERVAL``, intermittent beyond and while there is no interval yet;
    and a reading more than ``CONTINUOUS_MAX_INTERVAL`` after the one before it is
    intermittent whatever the cadence (a cuff's regular cycle after a burst of STAT
    cycles). A continuous run tolerates gaps of max(max_gap_s, GAP_FACTOR x the cadence).
    """
    out: list[Judged] = []
    intervals = [b - a for (a, _), (b, _) in itertools.pairwise(pts)]
    for k, (t, v) in enumerate(pts):
        if not HR_PLAUSIBLE[0] <= v <= HR_PLAUSIBLE[1]:
            continue
        recent = intervals[max(0, k - CADENCE_INTERVALS) : k]  # up to reading k's own
        cadence = statistics.median(recent) if recent else None
        if declared is not None:
            mode = declared
        elif (
            cadence is not None
            and cadence <= CONTINUOUS_MAX_INTERVAL
            and intervals[k - 1] <= CONTINUOUS_MAX_INTERVAL
        ):
            mode = "continuous"
        else:
            mode = "intermittent"
        gap = max_gap_s if cadence is None else max(max_gap_s, GAP_FACTOR * cadence)
        out.append(Judged(k, t, v, mode == "intermittent", gap))
    return out


def reference(side: Side, seen: Sequence[Judged]) -> list[tuple[Any, ...]]:
    """Brute force, straight from the spec. -> [(reading index, at, state, priority,
    started_at, value, limit)].

    Raising level L at reading k, intermittent: reading k is beyond L (the run starts at
    k). Continuous: walking back from k through the window (readings at most ``WINDOW``
    older than k, and the newest max(2, confirm) whatever their age), every reading is
    beyond L, no gap between neighbours exceeds k's max gap, the walk reaches a reading
    at least ``delay`` before k and holds at least ``confirm`` readings. Keeping level L:
    the newest reading is within L's limit plus the band.
    """

    def run_start(level: int, k: int) -> int | None:
        now = seen[k]
        if not side.beyond(level, now.v):
            return None
        if now.spot:
            return k
        j = k
        reached = side.delay <= 0
        keep = max(2, side.confirm)  # the window keeps its newest `keep` readings anyway
        while (
            j > 0
            and (seen[j - 1].t >= now.t - WINDOW or k - j + 2 <= keep)
            and side.beyond(level, seen[j - 1].v)
            and seen[j].t - seen[j - 1].t <= now.max_gap
        ):
            j -= 1
            reached = reached or now.t - seen[j].t >= side.delay
        return j if reached and k - j + 1 >= side.confirm else None

    prio = {1: "medium", 2: "high"}
    entry = side.limits[min(side.limits)]
    out: list[tuple[Any, ...]] = []
    level, started = 0, 0.0
    for k, r in enumerate(seen):
        held = next(
            (lv for lv in (2, 1) if lv <= level and lv in side.limits and side.holds(lv, r.v)),
            0,
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
            started = seen[start].t
        if new == 0:
            out.append((r.index, r.t, "resolved", prio[level], started, r.v, entry))
        else:
            out.append((r.index, r.t, "active", prio[new], started, r.v, side.limits[new]))
        level = new
    return out


def test_reference_judges_modes_as_documented():
    # the reference itself, on the README's cases (so that a property failure points at
    # the engine, not at the reference)
    hourly = [(3600.0 * i, 150.0) for i in range(3)]
    assert [(j.spot, j.max_gap) for j in judged(hourly, 30, None)] == [
        (True, 30),
        (True, 5400),
        (True, 5400),
    ]
    second = [(float(i), 80.0) for i in range(8)]
    assert [j.spot for j in judged(second, 30, None)] == [True] + [False] * 7
    assert [j.spot for j in judged(second, 30, "intermittent")] == [True] * 8
    assert [j.spot for j in judged(hourly, 30, "continuous")] == [False] * 3
    # the median of the last five intervals: one long gap does not change it
    pts = [*second, (68.0, 80.0), (69.0, 80.0)]
    assert [j.max_gap for j in judged(pts, 30, None)][-2:] == [30, 30]
    # implausible values are not evaluated, but their times make the cadence
    implausible = [(0, 80), (1, 10), (2, 300), (3, 80)]
    assert [(j.index, j.spot) for j in judged(implausible, 30, None)] == [(0, True), (3, False)]
    hr_high = Side("high", {1: 120, 2: 140}, 10, 5)
    # hourly 150s: raised on the first (spot) reading; 1 Hz 150s after 10 s and 2 readings
    assert reference(hr_high, judged(hourly, 30, None)) == [
        (0, 0.0, "active", "high", 0.0, 150, 140)
    ]
    ramp = [(float(i), 80.0 if i < 3 else 150.0) for i in range(15)]
    assert reference(hr_high, judged(ramp, 30, None)) == [
        (13, 13.0, "active", "high", 3.0, 150, 140)
    ]


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
    of a second so that every difference of timestamps is exact. Steps from 1/4 s to an
    hour, around the continuous/intermittent boundary (120 s) too; some values implausible.
    """
    near = edges(cfg) if cfg else [39.5, 40, 49.5, 50, 120, 120.5, 140]
    segments = draw(
        st.lists(
            st.tuples(
                st.integers(20, 150) | st.sampled_from([*near, 10.0, 300.0]),
                st.integers(1, 25),
                # step, 1/4 s: up to 12 s, 30 s, 40 s, 100 s, 120 s, 121 s, 10 min, 1 h
                st.integers(1, 48) | st.sampled_from([120, 160, 400, 480, 484, 2400, 14400]),
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


def sides(cfg: dict[str, Any]) -> dict[str, Side]:
    out = {}
    for name in ("low", "high"):
        lv = cfg[name]
        if lv is not None:
            limits = {lvl: float(lv[k]) for lvl, k in ((1, "warn"), (2, "crit")) if k in lv}
            confirm = cfg["confirm"] or 2  # hr is not a spot vital: 2 by default
            out[f"hr.{name}"] = Side(name, limits, cfg["delay_s"], cfg["clear_band"], confirm)
    return out


def hr_rules(cfg: dict[str, Any], **kw: Any) -> RulesConfig:
    # A recording of hours given as one batch: its older readings would be history
    # (rules.max_age_s, tests/test_modes.py), which these properties are not about.
    return rules({"hr": cfg}, max_age_s=1e9, **kw)


PROPS = settings(max_examples=250, deadline=None)


Case = tuple[dict[str, Any], list[tuple[float, float]]]
config_and_series = hr_configs().flatmap(lambda c: st.tuples(st.just(c), hr_series(c)))


@PROPS
@given(
    config_and_series,
    st.sampled_from([1.0, 3.0, 10.0, 30.0]),
    st.sampled_from([None, "auto", "continuous", "intermittent"]),  # rules.modes.patterns
    st.sampled_from([None, "continuous", "intermittent"]),  # Reading.mode (the source)
)
# A run longer than the window: its start is the oldest reading the window still holds
# (found in CI after the default window_s went from 600 to 300 s).
@example(
    (
        {
            "low": None,
            "high": {"warn": 110, "crit": 110},
            "delay_s": 0,
            "clear_band": 0,
            "confirm": None,
        },
        [(0.25, 20.0), (0.5, 20.0), (0.75, 111.0)]
        + [(120.0 * i + 0.75, 110.5) for i in range(1, 4)],
    ),
    1.0,
    None,
    None,
)
def test_engine_matches_reference(
    case: Case, max_gap: float, pattern: str | None, hint: str | None
):
    cfg, pts = case
    readings = [replace(r, mode=hint) for r in series("hr", pts)]
    modes = {"patterns": {"mon1/hr": pattern}} if pattern else {}
    config = hr_rules(cfg, max_gap_s=max_gap, modes=modes)
    got = one_by_one(readings, config)
    # the operator's pattern first ("auto": the cadence, whatever the source says), then
    # the source's word, then the cadence
    declared = hint if pattern is None else (None if pattern == "auto" else pattern)
    seen = judged(pts, max_gap, declared)
    for rule, side in sides(cfg).items():
        expected = [
            (k, T0 + t, s, p, T0 + st_, v, lim) for k, t, s, p, st_, v, lim in reference(side, seen)
        ]
        assert observed(got, rule) == expected
    # one batch gives exactly the events of one reading at a time
    batch = run(readings, config)
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
    events = run(series("hr", pts), hr_rules(cfg, max_gap_s=max_gap))
    check_structure(events, all_resolved=True)
    assert len(events) <= len(pts)  # never one event per reading beyond


@PROPS
@given(config_and_series, st.integers(-(10**7), 10**7))
def test_replay_invariance_under_time_shift(case: Case, shift_s: int):
    cfg, pts = case
    shift = shift_s / 4  # exact: stays on the quarter-second grid
    a = run(series("hr", pts), hr_rules(cfg))
    b = run(series("hr", [(t + shift, v) for t, v in pts]), hr_rules(cfg))

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
    # artefact rejection is for continuous series: declared so, their very first reading
    # is not judged on its own either (in auto mode it is: tests/test_modes.py)
    cfg = rules(
        {"hr": {"delay_s": delay}, "spo2": {"delay_s": delay}},
        window_s=7200,
        modes={"patterns": {"*": "continuous"}},
    )
    t = 0.0
    hr, spo2 = [], []
    for gap in gaps:
        t += gap
        hr.append((t, NORMAL))
        spo2.append((t, 97.0))
    # isolated readings beyond (each with normal neighbours), as extreme as plausible
    # (20 and 250: the plausibility range's ends) and beyond (implausible: not evaluated)
    for i in data.draw(st.sets(st.integers(0, len(gaps) - 1).filter(lambda i: i % 2 == 0))):
        hr[i] = (hr[i][0], data.draw(st.sampled_from([0.0, 20.0, 30.0, 39.0, 141.0, 250.0, 350.0])))
        spo2[i] = (spo2[i][0], data.draw(st.sampled_from([0.0, 20.0, 50.0, 84.9, 89.9])))
    events = run(series("hr", hr) + series("spo2", spo2), cfg)
    assert events == []
