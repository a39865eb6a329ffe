"""Event time against the clock: readings stamped ahead of their arrival, history
repeated in every message, repeats and late readings; the MQTT codec's refusals.

Pure tests feed literal readings to ``Engine.process(readings, received_at)``; the
end-to-end tests go through a real mosquitto and the daemon.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from conftest import wait_for

from monitor.config import RulesConfig
from monitor.engine import Engine
from monitor.model import AlertEvent, AlertState, Priority, Reading
from monitor.sources.codecs import Limits, Origin, decode

T0 = 1764324000.0  # 2025-11-28T10:00:00Z
DAY = 86400.0


def rules(**kw: Any) -> RulesConfig:
    data: dict[str, Any] = {"trends": {"enabled": False}, "flapping": {"enabled": False}, **kw}
    return RulesConfig.model_validate(data)


def reading(ts: float, vital: str, value: float, device: str = "mon", bed: str = "7") -> Reading:
    return Reading(ts, "icu", bed, device, vital, float(value), "MRN-1")


def arrive(
    eng: Engine, readings: Sequence[Reading], received_at: float
) -> tuple[list[AlertEvent], list[Reading]]:
    """One message: -> (events, its readings as stored)."""
    batch = list(readings)
    events = eng.process(batch, received_at)
    return events, batch


# ------------------------------------------------------------------ clock ahead


def test_one_reading_stamped_ahead_is_clamped_and_does_not_blind_the_series():
    """60 s of SpO2 97, one reading stamped 240 s ahead of its arrival, then SpO2 70,
    all at 1 Hz: evaluated at its arrival, the odd one leaves the series' present where
    it is, so the 70s (correctly stamped) raise spo2.low within the delay."""
    eng = Engine(rules(), sinks=[])
    events: list[AlertEvent] = []
    for t in range(60):
        events += arrive(eng, [reading(T0 + t, "spo2", 97)], T0 + t)[0]
    ahead, stored = arrive(eng, [reading(T0 + 60 + 240, "spo2", 97)], T0 + 60)
    events += ahead
    assert eng.counts["clamped"] == 1
    assert stored[0].flag is None
    first_70 = T0 + 61
    for t in range(61, 181):
        events += arrive(eng, [reading(T0 + t, "spo2", 70)], T0 + t)[0]
    assert eng.counts["late"] == 0
    raised = [e for e in events if e.rule == "spo2.low" and e.state == AlertState.ACTIVE]
    assert raised, "spo2.low never raised: the reading ahead blinded the series"
    # delay_s 15, plus the one confirming reading at most
    assert raised[0].at - first_70 <= 16
    assert raised[0].started_at == first_70
    assert raised[0].priority == Priority.HIGH
    assert eng.counts["clamped"] == 1


def test_a_reading_ahead_never_pushes_the_bed_present_so_its_history_is_not_judged():
    """A reading clamped to its arrival is the bed's present, not its stamp: a NIBP
    taken 10 minutes before arrival (within max_age_s) is still evaluated."""
    eng = Engine(rules(), sinks=[])
    arrive(eng, [reading(T0 + 900, "hr", 80)], T0)  # 900 s ahead, clamped to T0
    events, stored = arrive(eng, [reading(T0 - 600, "sbp", 70, device="cuff")], T0 + 1)
    assert stored[0].flag is None
    assert [(e.rule, e.at) for e in events] == [("sbp.low", T0 - 600)]


# ------------------------------------------------------------------ history


def test_yesterdays_nibp_repeated_in_every_message_is_history_then_a_fresh_one_alarms():
    """HL7-like: every 60 s a message with the current HR and the same NIBP (SBP 70,
    measured 23 h ago). The NIBP is stored flagged history, counted, never alarmed; the
    first fresh NIBP of SBP 70 alarms, dated at its own event time."""
    eng = Engine(rules(), sinks=[])
    old_nibp = T0 - 23 * 3600
    events: list[AlertEvent] = []
    flags: list[str | None] = []
    for i in range(20):
        now = T0 + 60 * i
        got, stored = arrive(
            eng, [reading(now, "hr", 80, device="hl7"), reading(old_nibp, "sbp", 70, "hl7")], now
        )
        events += got
        assert [r.vital for r in stored] == ["hr", "sbp"]
        assert stored[1].ts == old_nibp and stored[1].value == 70  # stored as it came
        flags += [r.flag for r in stored]
    assert events == []
    assert flags == [None, "history"] * 20
    assert eng.counts["history"] == 20
    # the NIBP arrives first in its message: the bed's present is already known
    eng2 = Engine(rules(), sinks=[])
    arrive(eng2, [reading(T0, "hr", 80, device="hl7")], T0)
    got, stored = arrive(
        eng2, [reading(old_nibp, "sbp", 70, "hl7"), reading(T0 + 60, "hr", 80, "hl7")], T0 + 60
    )
    assert got == [] and stored[0].flag == "history"
    # a fresh NIBP: SBP 70 measured now -> sbp.low at its own ts (a cuff reading is
    # judged on its own), the old one still history alongside it
    fresh = T0 + 60 * 20
    got, stored = arrive(
        eng,
        [reading(fresh, "hr", 80, "hl7"), reading(fresh - 30, "sbp", 70, "hl7")],
        fresh,
    )
    assert [(e.rule, e.state, e.priority, e.at, e.started_at) for e in got] == [
        ("sbp.low", AlertState.ACTIVE, Priority.HIGH, fresh - 30, fresh - 30)
    ]
    assert [r.flag for r in stored] == [None, None]
    # ... and it is repeated in every later message: the same measurement, no more alarms
    for i in range(21, 25):
        now = T0 + 60 * i
        got, stored = arrive(
            eng, [reading(now, "hr", 80, "hl7"), reading(fresh - 30, "sbp", 70, "hl7")], now
        )
        assert got == []
    assert eng.counts["repeated"] == 4
    assert eng.counts["history"] == 20


def test_history_is_measured_against_the_device_not_the_series():
    """max_age_s (900 s) from the newest event time the device has shown (a monitor's
    channels share its clock): 899 s old is evaluated, 901 s old is history. Another
    device of the bed keeps its own present: a thermometer whose clock is 20 min behind
    the monitor is never history for it (it would be blind otherwise)."""
    eng = Engine(rules(), sinks=[])
    arrive(eng, [reading(T0, "hr", 80, "mon.ecg")], T0)
    _, stored = arrive(eng, [reading(T0 - 899, "sbp", 120, "mon.nibp")], T0 + 1)
    assert stored[0].flag is None
    _, stored = arrive(eng, [reading(T0 - 901, "temp", 36.8, "mon.temp")], T0 + 1)
    assert stored[0].flag == "history"
    events, stored = arrive(eng, [reading(T0 - 1200, "temp", 39.9, "thermo")], T0 + 1)
    assert stored[0].flag is None
    assert [e.rule for e in events] == ["temp.high"]
    eng = Engine(rules(max_age_s=3600), sinks=[])
    arrive(eng, [reading(T0, "hr", 80, "mon.ecg")], T0)
    _, stored = arrive(eng, [reading(T0 - 901, "temp", 36.8, "mon.temp")], T0 + 1)
    assert stored[0].flag is None


# ------------------------------------------------------------------ repeats, late


def test_the_same_reading_twice_is_repeated_and_raises_nothing_twice():
    # a spot NIBP of 70 sent twice: one alarm
    eng = Engine(rules(), sinks=[])
    first, _ = arrive(eng, [reading(T0, "sbp", 70, "cuff")], T0)
    assert [e.rule for e in first] == ["sbp.low"]
    again, stored = arrive(eng, [reading(T0, "sbp", 70, "cuff")], T0 + 5)
    assert again == []
    assert stored[0].flag is None  # (not a flag: stored as is, the store absorbs it)
    assert eng.counts["repeated"] == 1
    # a continuous arterial line (1 Hz): one artefact of 70 between 120s is never an
    # alarm, and its duplicate does not make it a confirmed run of two
    eng = Engine(rules(), sinks=[])
    events: list[AlertEvent] = []
    for t in range(10):
        events += arrive(eng, [reading(T0 + t, "sbp", 120, "art")], T0 + t)[0]
    events += arrive(eng, [reading(T0 + 10, "sbp", 70, "art")], T0 + 10)[0]
    events += arrive(eng, [reading(T0 + 10, "sbp", 70, "art")], T0 + 10.5)[0]
    for t in range(11, 20):
        events += arrive(eng, [reading(T0 + t, "sbp", 120, "art")], T0 + t)[0]
    assert events == []
    assert eng.counts["repeated"] == 1


def test_readings_older_than_max_lag_are_late():
    eng = Engine(rules(), sinks=[])
    for t in range(100, 110):
        arrive(eng, [reading(T0 + t, "spo2", 97)], T0 + t)
    # 70 s older than the series' newest (max_lag_s 60), with a value that would alarm
    events, stored = arrive(eng, [reading(T0 + 39, "spo2", 60)], T0 + 110)
    assert events == []
    assert stored[0].flag == "late"  # stored flagged: left out of stats and reports
    assert eng.counts["late"] == 1
    # within max_lag_s it is evaluated (out of order but not late)
    arrive(eng, [reading(T0 + 60, "spo2", 97)], T0 + 110)
    assert eng.counts["late"] == 1
    # a late reading of another series is judged against its own series, not the bed
    arrive(eng, [reading(T0 + 30, "hr", 80)], T0 + 111)
    assert eng.counts["late"] == 1


def test_a_device_clock_that_went_back_is_rebased_a_resent_backlog_is_not():
    """1. A monitor streams SpO2 97 at 1 Hz; its clock steps back 1 h (an NTP step, a
    time zone change) and it goes on, live, now reading 80: the first readings are
    history, and from the third advancing one arriving live its new time is the present
    and the alarm follows as for any stream (delay 15 s). Nothing is blind for an hour.
    2. A backlog of the same old readings arriving in one burst is not a clock: it stays
    history (no alert dated an hour ago). 3. A replay (no arrival time) never rebases."""
    eng = Engine(rules(), sinks=[])
    for t in range(60):
        arrive(eng, [reading(T0 + t, "spo2", 97)], T0 + t)
    events: list[AlertEvent] = []
    flags = []
    for i in range(40):  # live: arrival T0 + 60 + i, stamped an hour earlier
        got, stored = arrive(eng, [reading(T0 + 60 + i - 3600, "spo2", 80)], T0 + 60 + i)
        events += got
        flags.append(stored[0].flag)
    assert flags[:2] == ["history", "history"]
    assert set(flags[2:]) == {None}
    assert eng.counts["clock_rebased"] == 1
    (raised,) = [e for e in events if e.rule == "spo2.low"]
    assert raised.started_at == T0 + 62 - 3600  # its run starts at the rebase
    assert raised.at == T0 + 62 - 3600 + 15
    # 2. a backlog: the same, all arriving at once
    eng = Engine(rules(), sinks=[])
    for t in range(60):
        arrive(eng, [reading(T0 + t, "spo2", 97)], T0 + t)
    backlog = [reading(T0 + 60 + i - 3600, "spo2", 80) for i in range(40)]
    got, stored = arrive(eng, backlog, T0 + 61)
    assert got == [] and {r.flag for r in stored} == {"history"}
    assert eng.counts["clock_rebased"] == 0
    # 3. a replay has no arrival time: the same readings stay history
    eng = Engine(rules(), sinks=[])
    eng.process([reading(T0 + t, "spo2", 97) for t in range(60)])
    replayed = [reading(T0 + 60 + i - 3600, "spo2", 80) for i in range(40)]
    assert eng.process(replayed) == []
    assert {r.flag for r in replayed} == {"history"}


# ------------------------------------------------------------------ the MQTT codec

ORIGIN = Origin("vitals/icu/7/mon", "icu", "7", "mon")


def _decode(obj: dict[str, Any], now: float = T0):
    return decode(json.dumps(obj).encode(), ORIGIN, now, Limits())


def test_codec_refuses_a_reading_too_far_ahead_and_accepts_skew_within_limits():
    assert Limits().max_future_s == RulesConfig().max_future_s == 30
    out = _decode({"ts": T0 + 240, "spo2": 97})
    assert out.readings == []
    assert [rej.cause for rej in out.rejections] == ["future_ts"]
    out = _decode({"ts": T0 + 20, "spo2": 97})
    assert out.rejections == []
    assert [(r.ts, r.value) for r in out.readings] == [(T0 + 20, 97)]
    out = _decode({"ts": T0 + 31, "spo2": 97})
    assert [rej.cause for rej in out.rejections] == ["future_ts"]


def test_codec_mode_field():
    out = _decode({"ts": T0, "spo2": 97, "mode": "sometimes"})
    assert out.readings == []
    assert [rej.cause for rej in out.rejections] == ["bad_field"]
    out = _decode({"ts": T0, "spo2": 97, "hr": 70, "mode": "intermittent"})
    assert out.rejections == []
    assert {(r.vital, r.mode) for r in out.readings} == {
        ("spo2", "intermittent"),
        ("hr", "intermittent"),
    }
    out = _decode({"ts": T0, "spo2": 97, "mode": "continuous"})
    assert [r.mode for r in out.readings] == ["continuous"]
    out = _decode({"ts": T0, "spo2": 97})
    assert [r.mode for r in out.readings] == [None]
    assert _decode({"ts": T0, "spo2": 97, "mode": 1}).rejections[0].cause == "bad_field"


# ------------------------------------------------------------------ end to end


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _active(alerts, bed: str) -> dict[str, dict[str, Any]]:
    return {a["rule"]: a for a in alerts.json() if a["bed"] == bed and a["state"] == "active"}


def test_hourly_readings_over_mqtt_alarm_at_the_abnormal_reading(daemon, subscribe, publisher):
    """Charted hourly observations: the abnormal set alarms as it arrives (each reading
    judged on its own), with no further reading; so does a bed's very first reading."""
    daemon()
    alerts = subscribe("alerts/#")
    now = time.time()
    want = {"spo2.low", "hr.high", "rr.high", "map.low"}
    normal = {"spo2": 97, "hr": 80, "rr": 16, "map": 85}
    abnormal = {"spo2": 80, "hr": 150, "rr": 35, "map": 50}
    publisher.publish("vitals/icu/31/chart", {"ts": now - 3600, **normal})
    publisher.publish("vitals/icu/31/chart", {"ts": now, **abnormal})
    got = wait_for(
        lambda: want <= set(_active(alerts, "31")) and _active(alerts, "31"),
        10,
        "the four alarms of bed 31",
    )
    for rule in want:
        assert got[rule]["device"] == "chart"
        assert got[rule]["kind"] == "physiological"
        # dated at the abnormal reading, not the normal one an hour before
        assert got[rule]["at"] == got[rule]["started_at"]
        assert got[rule]["priority"] == "high"
    publisher.publish("vitals/icu/32/chart", {"ts": now, **abnormal})
    first = wait_for(
        lambda: want <= set(_active(alerts, "32")) and _active(alerts, "32"),
        10,
        "the four alarms of bed 32",
    )
    assert {first[rule]["device"] for rule in want} == {"chart"}


def test_a_reading_ahead_is_dead_lettered_and_the_stream_behind_it_alarms(
    daemon, subscribe, publisher
):
    """Over MQTT the +240 s reading is refused (future_ts, beyond max_future_s 30) and
    dead-lettered; SpO2 70 at 1 Hz, correctly stamped, then raises spo2.low."""
    daemon()
    alerts = subscribe("alerts/#")
    dead = subscribe("vitalmon/deadletter")
    topic = "vitals/icu/33/ox"
    for _ in range(3):
        publisher.publish(topic, {"ts": time.time(), "spo2": 97})
    publisher.publish(topic, {"ts": time.time() + 240, "spo2": 97})
    letter = wait_for(dead.json, 10, "the dead letter")[0]
    assert letter["reason"] == "future_ts"
    assert letter["topic"] == topic
    assert json.loads(letter["payload"])["spo2"] == 97
    # the patient's stream, paced at ~1 Hz on the wall clock (pacing is the scenario)
    first_70 = time.time()
    deadline = time.monotonic() + 45
    next_at = time.monotonic()
    raised: list[dict[str, Any]] = []
    while not raised:
        assert time.monotonic() < deadline, "spo2.low never arrived"
        if time.monotonic() >= next_at:
            publisher.publish(topic, {"ts": time.time(), "spo2": 70})
            next_at += 1.0
        raised = [a for a in alerts.json() if a["bed"] == "33" and a["rule"] == "spo2.low"]
        time.sleep(0.02)  # (the poll interval, as wait_for)
    (alarm,) = raised
    assert alarm["state"] == "active" and alarm["priority"] == "high"
    assert alarm["device"] == "ox"
    assert [d["reason"] for d in dead.json()] == ["future_ts"]
    # continuous at 1 Hz: it waited for its delay (15 s), it was not a spot check
    at, started = epoch(alarm["at"]), epoch(alarm["started_at"])
    assert started >= first_70 - 0.01
    assert 15 <= at - started <= 20
