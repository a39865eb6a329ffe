"""Plausibility: values a patient cannot have, and devices that contradict each other.

Pure tests feed literal readings to ``Engine.process`` (event time, no clock); the
end-to-end test goes through a real mosquitto, the daemon, its SQLite store and /metrics.
"""

from __future__ import annotations

import sqlite3
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from conftest import free_port, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import DEFAULT_PLAUSIBLE, RulesConfig
from monitor.engine import Engine
from monitor.model import AlertEvent, AlertState, Priority, Reading

T0 = 1764324000.0  # 2025-11-28T10:00:00Z
EVALUATED_KINDS = ("physiological", "trend")


def rules(**kw: Any) -> RulesConfig:
    """Thresholds (and plausibility) alone: no trends, no flapping hold."""
    data: dict[str, Any] = {"trends": {"enabled": False}, "flapping": {"enabled": False}, **kw}
    return RulesConfig.model_validate(data)


def reading(t: float, vital: str, value: float, device: str = "mon", bed: str = "7") -> Reading:
    return Reading(T0 + t, "icu", bed, device, vital, float(value), "MRN-1")


def feed(eng: Engine, readings: Sequence[Reading]) -> tuple[list[AlertEvent], list[Reading]]:
    """One reading at a time (as a stream arrives); -> (events, readings as stored)."""
    events: list[AlertEvent] = []
    stored: list[Reading] = []
    for r in readings:
        batch = [r]
        events += eng.process(batch)
        stored += batch
    return events, stored


def rules_of(events: Sequence[AlertEvent]) -> list[tuple[str, str, str]]:
    return [(e.rule, e.kind, str(e.state)) for e in events]


# ------------------------------------------------------------------ implausible values


def test_zero_hr_zero_rr_and_map_10_never_raise_a_physiological_alarm():
    """60 s of a probe off sending HR 0, RR 0 and MAP 10 at 1 Hz: each of them would be
    far past the crit limits for the whole delay; none is evaluated, each is flagged,
    and the run raises one technical <vital>.implausible per series, nothing else."""
    eng = Engine(RulesConfig(), sinks=[])  # the defaults, trends and flapping included
    values = {"hr": 0, "rr": 0, "map": 10}
    readings = [reading(t, v, x) for t in range(60) for v, x in values.items()]
    events, stored = feed(eng, readings)
    assert not [e for e in events if e.kind in EVALUATED_KINDS]
    assert sorted(rules_of(events)) == [
        ("hr.implausible", "technical", "active"),
        ("map.implausible", "technical", "active"),
        ("rr.implausible", "technical", "active"),
    ]
    assert {r.flag for r in stored} == {"implausible"}
    assert eng.counts["implausible"] == len(readings)


def test_persisting_implausible_values_raise_once_and_resolve_on_the_next_plausible():
    eng = Engine(rules(), sinks=[])
    # one implausible reading: stored flagged, no alarm (a single glitch)
    events, stored = feed(eng, [reading(0, "hr", 0)])
    assert events == []
    assert stored[0].flag == "implausible"
    assert stored[0].value == 0 and stored[0].ts == T0  # the value itself is kept
    # persisting: two readings or more spanning persist_s (10 s) -> one technical alarm
    events, stored = feed(eng, [reading(5, "hr", 0)])
    assert events == []  # two readings, but only 5 s
    events, stored = feed(eng, [reading(t, "hr", 0) for t in (10, 11, 12, 20, 30)])
    (raised,) = events  # exactly one: at t=10, never again while it lasts
    # HR 0 is beyond hr's crit limit (40): the technical alarm is high ("check the patient")
    assert (raised.rule, raised.kind, raised.priority, raised.state) == (
        "hr.implausible",
        "technical",
        Priority.HIGH,
        AlertState.ACTIVE,
    )
    assert (raised.device, raised.vital, raised.seq) == ("mon", "hr", 1)
    assert (raised.started_at, raised.at) == (T0, T0 + 10)
    assert {r.flag for r in stored} == {"implausible"}
    # the next plausible reading resolves it: same id, seq 2
    events, stored = feed(eng, [reading(31, "hr", 80)])
    (resolved,) = events
    assert (resolved.id, resolved.state, resolved.seq) == (raised.id, AlertState.RESOLVED, 2)
    assert resolved.at == T0 + 31
    assert stored[0].flag is None
    # resolved once: more plausible readings say nothing more
    assert feed(eng, [reading(t, "hr", 80) for t in range(32, 40)])[0] == []
    assert eng.plausibility.active() == 0
    # a vital with no crit limit (dbp has no default limits): medium
    events, _ = feed(eng, [reading(t, "dbp", 5) for t in range(40, 52)])
    assert [(e.rule, e.priority) for e in events] == [("dbp.implausible", Priority.MEDIUM)]


def test_charted_sbp_25_between_92_and_103_raises_nothing_and_is_flagged():
    """Hourly charted observations (device "chart"): each one is judged on its own,
    so an SBP of 25 would be sbp.low at once; it is a transcription error instead."""
    eng = Engine(RulesConfig(), sinks=[])
    chart = [reading(h * 3600, "sbp", v, device="chart") for h, v in enumerate((92, 25, 103))]
    events, stored = feed(eng, chart)
    assert events == []
    assert [r.flag for r in stored] == [None, "implausible", None]
    assert eng.counts["implausible"] == 1
    # control: an SBP of 70 charted in the same way does alarm, at once (intermittent)
    eng = Engine(RulesConfig(), sinks=[])
    chart = [reading(h * 3600, "sbp", v, device="chart") for h, v in enumerate((92, 70))]
    events, _ = feed(eng, chart)
    assert [(e.rule, e.state, e.at) for e in events] == [("sbp.low", AlertState.ACTIVE, T0 + 3600)]


# ------------------------------------------------------------------ disputed values


def test_pleth_hr_150_while_the_ecg_says_80_is_disputed():
    eng = Engine(rules(), sinks=[])
    both = []
    for t in range(60):
        both += [reading(t, "hr", 80, device="ecg"), reading(t + 0.5, "hr", 150, device="pleth")]
    events, stored = feed(eng, both)
    # no hr.high from the pleth; the disagreement itself is one technical alarm (high: 150
    # is beyond hr's crit limit), raised at the pleth's first reading (no cadence yet:
    # one measurement, nobody would hear of it otherwise) and kept while it lasts
    assert [(e.rule, e.kind, e.device, e.priority, e.state, e.at) for e in events] == [
        ("hr.disputed", "technical", "pleth", Priority.HIGH, AlertState.ACTIVE, T0 + 0.5)
    ]
    assert {r.flag for r in stored if r.device == "pleth"} == {"disputed"}
    assert {r.flag for r in stored if r.device == "ecg"} == {None}
    assert eng.counts["disputed"] == 60


def test_pleth_hr_150_with_no_other_hr_device_alarms_normally():
    eng = Engine(rules(), sinks=[])
    events, stored = feed(eng, [reading(t, "hr", 150, device="pleth") for t in range(30)])
    # (its very first reading has no interval yet: judged on its own, modes contract)
    assert [(e.rule, e.device, e.priority, e.value, e.at) for e in events] == [
        ("hr.high", "pleth", Priority.HIGH, 150, T0)
    ]
    assert {r.flag for r in stored} == {None}
    # once its cadence is known it is continuous: delay (10 s) and confirmation apply
    eng = Engine(rules(), sinks=[])
    stream = [reading(t, "hr", 90, device="pleth") for t in range(10)]
    stream += [reading(t, "hr", 150, device="pleth") for t in range(10, 40)]
    events, _ = feed(eng, stream)
    assert [(e.rule, e.device, e.started_at, e.at) for e in events] == [
        ("hr.high", "pleth", T0 + 10, T0 + 20)
    ]


def test_each_device_stays_its_own_series():
    """ECG at 80 and pleth at 150 (disputed), then the ECG rises to 130: both now say
    "high", so neither is disputed; each raises hr.high on its own values."""
    eng = Engine(rules(), sinks=[])
    stream = []
    for t in range(60):
        stream += [reading(t, "hr", 80, device="ecg"), reading(t + 0.5, "hr", 150, device="pleth")]
    (disputed,) = feed(eng, stream)[0]  # the disagreement: one technical alarm
    assert (disputed.rule, disputed.device) == ("hr.disputed", "pleth")
    stream = []
    for t in range(60, 90):
        stream += [reading(t, "hr", 130, device="ecg"), reading(t + 0.5, "hr", 150, device="pleth")]
    events, stored = feed(eng, stream)
    assert {r.flag for r in stored} == {None}
    (agreed,) = [e for e in events if e.kind == "technical"]
    assert (agreed.id, agreed.state, agreed.at) == (disputed.id, AlertState.RESOLVED, T0 + 60.5)
    events = [e for e in events if e.kind != "technical"]
    by_device = {e.device: e for e in events}
    assert sorted(by_device) == ["ecg", "pleth"]
    assert len(events) == 2
    ecg, pleth = by_device["ecg"], by_device["pleth"]
    # the ECG's alarm is about the ECG's values only (warn 120: medium), from its own run
    assert (ecg.rule, ecg.value, ecg.priority, ecg.started_at) == (
        "hr.high",
        130,
        Priority.MEDIUM,
        T0 + 60,
    )
    assert ecg.at == T0 + 70
    # the pleth's run starts at its first undisputed reading, never at the ECG's
    assert (pleth.rule, pleth.value, pleth.priority) == ("hr.high", 150, Priority.HIGH)
    assert pleth.started_at == T0 + 60.5 and pleth.at == T0 + 70.5
    assert ecg.id != pleth.id


def test_a_change_both_devices_see_costs_at_most_one_reading():
    """ECG and pleth at 1 Hz both go from 80 to 180 at t=100 (SVT): the ECG's first 180
    finds the pleth at 80 (disputed), the pleth's first 180 finds the ECG already at 180
    (evaluated), and the ECG is evaluated from its next reading on. Each raises hr.high
    10 s (its delay) after its first evaluated 180: 111 and 110.5, not a minute later."""
    eng = Engine(rules(), sinks=[])
    stream = []
    for t in range(160):
        v = 80 if t < 100 else 180
        stream += [reading(t, "hr", v, device="ecg"), reading(t + 0.5, "hr", v, device="pleth")]
    events, stored = feed(eng, stream)
    raised = {e.device: e.at - T0 for e in events if e.rule == "hr.high"}
    assert raised == {"ecg": 111, "pleth": 110.5}
    assert [(r.device, r.ts - T0) for r in stored if r.flag == "disputed"] == [("ecg", 100)]
    assert not [e for e in events if e.kind == "technical"]  # one reading: not a dispute


def test_a_probe_off_run_still_tells_the_cadence_a_lone_artefact_after_it_never_alarms():
    """A 1 Hz oximeter sends SpO2 0 for a minute (probe off: implausible, flagged), then
    one reading of 60 while the probe seats, then 97. The device has been streaming at
    1 Hz all along (event time): the 60 is one reading of a continuous series, so
    artefact rejection applies and it raises nothing (it is not a spot check)."""
    eng = Engine(rules(), sinks=[])
    events, stored = feed(eng, [reading(t, "spo2", 0, device="ox") for t in range(60)])
    assert rules_of(events) == [("spo2.implausible", "technical", "active")]
    events, stored = feed(eng, [reading(60, "spo2", 60, device="ox")])
    assert rules_of(events) == [("spo2.implausible", "technical", "resolved")]
    assert stored[0].flag is None
    events, _ = feed(eng, [reading(t, "spo2", 97, device="ox") for t in range(61, 70)])
    assert events == []
    # the same holds after a disputed run: the pleth streamed at 1 Hz while disputed
    eng = Engine(rules(), sinks=[])
    stream = []
    for t in range(30):
        stream += [reading(t, "hr", 80, device="ecg"), reading(t + 0.5, "hr", 150, device="pleth")]
    assert rules_of(feed(eng, stream)[0]) == [("hr.disputed", "technical", "active")]
    eng.process([reading(40, "hr", 130, device="ecg")])  # the ECG no longer says normal
    events, _ = feed(
        eng, [reading(40.5, "hr", 150, device="pleth"), reading(41.5, "hr", 90, device="pleth")]
    )
    # one undisputed 150 between others: not an alarm on its own (the dispute is over)
    assert rules_of(events) == [("hr.disputed", "technical", "resolved")]


# ------------------------------------------------------------------ configuration


def test_a_range_set_to_null_is_switched_off():
    cfg = rules(plausibility={"ranges": {"hr": None}})
    assert "hr" not in Engine(cfg, sinks=[]).plausibility.ranges
    eng = Engine(cfg, sinks=[])
    events, stored = feed(eng, [reading(t, "hr", 0) for t in range(30)])
    assert [(e.rule, e.kind, e.priority) for e in events] == [
        ("hr.low", "physiological", Priority.HIGH)
    ]
    assert {r.flag for r in stored} == {None}
    # the other vitals keep their default ranges
    events, stored = feed(eng, [reading(t, "rr", 0) for t in range(30)])
    assert [e.rule for e in events] == ["rr.implausible"]
    assert {r.flag for r in stored} == {"implausible"}


def test_a_custom_range_applies():
    cfg = rules(plausibility={"ranges": {"hr": {"low": 30, "high": 200}}, "persist_s": 5})
    assert DEFAULT_PLAUSIBLE["hr"]["low"] < 25 and DEFAULT_PLAUSIBLE["hr"]["high"] > 210
    # HR 25 is plausible by default (hr.low, crit 40) but not under this range
    default = feed(Engine(rules(), sinks=[]), [reading(t, "hr", 25) for t in range(30)])[0]
    assert [e.rule for e in default] == ["hr.low"]
    eng = Engine(cfg, sinks=[])
    events, stored = feed(eng, [reading(t, "hr", 25) for t in range(30)])
    assert [(e.rule, e.at, e.limit) for e in events] == [("hr.implausible", T0 + 5, 30)]
    assert {r.flag for r in stored} == {"implausible"}
    events, stored = feed(eng, [reading(t, "hr", 210, bed="8") for t in range(30)])
    assert [(e.rule, e.bed, e.limit) for e in events] == [("hr.implausible", "8", 200)]
    # and a value inside it is evaluated as usual
    events, stored = feed(eng, [reading(t, "hr", 190, bed="9") for t in range(30)])
    assert [e.rule for e in events] == ["hr.high"]
    assert {r.flag for r in stored} == {None}


@st.composite
def _stream(draw: st.DrawFn) -> tuple[str, float, float, list[tuple[float, float]]]:
    vital = draw(st.sampled_from(sorted(DEFAULT_PLAUSIBLE)))
    d = DEFAULT_PLAUSIBLE[vital]
    width = d["high"] - d["low"]
    low = draw(st.floats(d["low"] - width / 4, d["low"] + width / 4))
    high = draw(st.floats(low + width / 8, d["high"] + width / 4))
    inside = st.floats(low, high)
    outside = st.one_of(
        st.floats(low - 10 * width, low, exclude_max=True),
        st.floats(high, high + 10 * width, exclude_min=True),
    )
    points = draw(
        st.lists(
            st.tuples(st.floats(0.2, 120), st.one_of(inside, outside)), min_size=1, max_size=80
        )
    )
    return vital, low, high, points


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_stream())
def test_no_reading_outside_the_configured_range_ever_raises_a_rule_alert(stream):
    """For any configured range and any stream mixing values inside and outside it,
    no reading outside the range causes a physiological or trend event (trends and
    flapping on: the whole engine)."""
    vital, low, high, points = stream
    cfg = RulesConfig.model_validate(
        {"plausibility": {"ranges": {vital: {"low": low, "high": high}}}}
    )
    eng = Engine(cfg, sinks=[])
    t = 0.0
    for dt, value in points:
        t += dt
        batch = [reading(t, vital, value)]
        events = eng.process(batch)
        if not low <= value <= high:
            assert not [e for e in events if e.kind in EVALUATED_KINDS], (value, events)
            assert batch[0].flag == "implausible"
        else:
            assert batch[0].flag is None


# ------------------------------------------------------------------ end to end


def test_implausible_sbp_over_mqtt_is_stored_flagged_and_counted(
    daemon, subscribe, publisher, tmp_path
):
    """SBP 92, 25, 103 minutes apart: no sbp.low; the 25 is stored flagged implausible
    and counted on /metrics."""
    port = free_port()
    daemon(f"metrics:\n  listen: 127.0.0.1:{port}\n")
    alerts = subscribe("alerts/#")
    now = time.time()
    for ago, sbp in ((600, 92), (300, 25), (0, 103)):
        publisher.publish("vitals/icu/41/cuff", {"ts": now - ago, "sbp": sbp})
    # a sentinel behind them (same source, same order): once its alarm is out, any alarm
    # the three readings caused is out too
    publisher.publish("vitals/icu/42/ox", {"ts": now, "spo2": 70})
    wait_for(lambda: [a for a in alerts.json() if a["bed"] == "42"], 10, "the sentinel's alarm")
    assert not [a for a in alerts.json() if a["bed"] == "41"]

    uri = f"file:{tmp_path / 'vitals.db'}?mode=ro"

    def stored() -> list[tuple[float, str | None]]:
        conn = sqlite3.connect(uri, uri=True)
        try:
            return conn.execute(
                "SELECT value, flag FROM readings WHERE bed = '41' AND vital = 'sbp' ORDER BY ts"
            ).fetchall()
        finally:
            conn.close()

    assert wait_for(lambda: len(stored()) == 3 and stored(), 10, "three stored readings") == [
        (92.0, None),
        (25.0, "implausible"),
        (103.0, None),
    ]

    def metric(name: str, **labels: str) -> float | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        want = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
        )
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    assert metric("vitalmon_readings_not_evaluated_total", reason="implausible") == 1
    assert metric("vitalmon_readings_not_evaluated_total", reason="history") == 0


def test_flagged_readings_reach_influxdb_apart_from_the_vitals(daemon, victoria, publisher):
    """HR 72, 0, 74 over MQTT with an InfluxDB sink (a real VictoriaMetrics): the two
    plausible values are ``vitals_hr``, the probe-off 0 is ``flagged_vitals_hr`` with its
    flag, so a dashboard on ``vitals`` never plots it, and nothing is lost."""
    from test_zero_loss import influx_sink

    daemon(store_extra=influx_sink(victoria))
    now = time.time()
    for i, hr in enumerate((72, 0, 74)):
        publisher.publish("vitals/icu/40/mon", {"ts": now - 3 + i, "hr": hr})
    vitals = victoria.wait_for_count(2, '{__name__="vitals_hr"}', timeout=15)
    assert sorted(p.value for p in vitals) == [72.0, 74.0]
    (flagged,) = victoria.wait_for_count(1, '{__name__=~"flagged_vitals_.*"}', timeout=15)
    assert (flagged.name, flagged.value, flagged.labels["flag"]) == (
        "flagged_vitals_hr",
        0.0,
        "implausible",
    )
    assert flagged.labels["bed"] == "40"
