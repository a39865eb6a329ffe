"""Issue 15 B12: any publisher could create unlimited beds, memory and alarms.

The engine keeps at most ``engine.max_beds`` beds, ``engine.max_series`` series and
``engine.max_devices_per_bed`` devices per bed, takes new ones at a bounded rate, and
forgets the devices of beds nobody expects once their ``device.stale`` has lasted
``rules.stale_expire_s``. Input refused is still stored (flagged), never evaluated, and
raises one ``engine.capacity`` alarm. Engine tests feed literal readings with literal
arrival times (the staleness clock); the daemon tests run the real daemon against a real
mosquitto.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import DaemonProc, wait_for
from engine_sinks import Recorder, run_batches
from paho.mqtt.enums import CallbackAPIVersion

from monitor.config import EngineConfig, RulesConfig
from monitor.engine import Engine
from monitor.engine.capacity import CAPACITY, RATE_LIMITED, RULE, Capacity, TokenBucket
from monitor.engine.technical import Staleness
from monitor.model import Admission, AlertState, DeviceStatus, Reading
from monitor.sources import Batch

T0 = 1_764_324_000.0


def bounded_engine(
    beds: Sequence[tuple[str, str]] = (), expire_s: float | None = 600.0, **limits: Any
) -> tuple[Engine, Recorder]:
    """An engine as the daemon wires it: staleness (30 s, clock from T0) and capacity."""
    sink = Recorder()
    eng = Engine(RulesConfig(), [sink], beds={b: "adult" for b in beds})
    eng.staleness = Staleness(30, beds, T0, unknown_s=30, expire_s=expire_s)
    eng.capacity = Capacity(EngineConfig(**limits))
    return eng, sink


def reading(
    ts: float,
    bed: str,
    vital: str = "hr",
    value: float = 70.0,
    device: str = "mon",
    ward: str = "junk",
) -> Reading:
    return Reading(ts, ward, bed, device, vital, value)


def beds_of(eng: Engine) -> set[tuple[str, str]]:
    return {(k.ward, k.bed) for k in eng.series}


# ------------------------------------------------------------------ pure: the bucket


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    b = TokenBucket(per_minute=60, burst=2)
    assert [b.take(100.0), b.take(100.0), b.take(100.0)] == [True, True, False]
    assert b.take(100.5) is False  # half a token
    assert b.take(101.0) is True  # one a second
    assert [b.take(1000.0), b.take(1000.0), b.take(1000.0)] == [True, True, False]  # burst 2


# ------------------------------------------------------------------ engine: bounds


def test_beds_beyond_max_beds_are_stored_flagged_not_evaluated_and_raise_one_alarm() -> None:
    """max_beds 5: 200 junk beds each send sbp 230 (sbp.high at once when evaluated). The
    first 5 are kept and alarm; the other 195 are handed to the sinks flagged
    ``capacity``, raise nothing, are never watched for silence, and one engine.capacity
    alarm is raised (not one per bed). A bed under ``beds:`` is evaluated past the bound."""
    eng, sink = bounded_engine(beds=[("icu", "1")], max_beds=5)
    junk = [Batch([reading(T0 + 1, f"j{i}", "sbp", 230)], received_at=T0 + 1) for i in range(200)]
    legit = Batch([reading(T0 + 2, "1", "sbp", 230, ward="icu")], received_at=T0 + 2)
    run_batches(eng, *junk, legit)

    assert len(sink.readings) == 201  # every reading reaches the journal
    flagged = [r for r in sink.readings if r.flag is not None]
    assert {r.flag for r in flagged} == {CAPACITY}
    assert len(flagged) == 195  # j5..j199; icu/1 came with the bound full: taken past it
    assert {r.bed for r in flagged} == {f"j{i}" for i in range(5, 200)}
    assert eng.counts[CAPACITY] == 195
    assert beds_of(eng) == {("junk", f"j{i}") for i in range(5)} | {("icu", "1")}
    assert eng.capacity is not None and eng.capacity.bed_count == 6
    raised = [(e.ward, e.bed, e.rule) for e in sink.events if e.state == AlertState.ACTIVE]
    capacity = [e for e in raised if e[2] == RULE]
    assert len(capacity) == 1  # one alarm, not one per refused bed
    assert sorted(e[1] for e in raised if e[2] == "sbp.high") == ["1", "j0", "j1", "j2", "j3", "j4"]
    # the refused beds are not watched: only the kept ones go stale
    assert eng.staleness is not None
    stale = eng.staleness.check(T0 + 100)
    assert sorted(e.bed for e in stale) == ["1", "j0", "j1", "j2", "j3", "j4"]


def test_max_series_and_devices_per_bed_bound_every_bed_listed_or_not() -> None:
    """max_series 4: a junk bed's fifth series is refused; max_devices_per_bed 2 holds for
    a listed bed too (a publisher inventing device names on a real bed), while the listed
    bed's own devices keep being evaluated past max_series, up to a reserve as large again
    (8 series in all: a listed icu/2 gets no more)."""
    listed = [("icu", "1"), ("icu", "2")]
    eng, sink = bounded_engine(beds=listed, max_series=4, max_devices_per_bed=2)
    t = T0 + 1
    normal = {"hr": 70, "spo2": 97, "rr": 16, "temp": 37, "sbp": 120}
    junk = [reading(t, "j", v, x) for v, x in normal.items()]
    real = [reading(t, "1", v, 80, d, "icu") for d in ("mon", "ox") for v in ("hr", "spo2")]
    forged = [reading(t, "1", "hr", 80, f"fake{i}", "icu") for i in range(3)]
    beyond = [reading(t, "2", "hr", 80, ward="icu")]
    run_batches(eng, Batch(junk + real + forged + beyond, received_at=t))
    flags = [(r.bed, r.device, r.vital, r.flag) for r in sink.readings if r.flag]
    assert flags == [("j", "mon", "sbp", CAPACITY)] + [
        ("1", f"fake{i}", "hr", CAPACITY) for i in range(3)
    ] + [("2", "mon", "hr", CAPACITY)]
    assert len(eng.series) == 4 + 4  # the listed bed's 4 are past max_series
    assert eng.capacity is not None and set(eng.capacity.beds[("icu", "1")]) == {"mon", "ox"}


def test_a_refused_snapshot_leaves_no_device_present_behind() -> None:
    """An HL7 message (a snapshot) of a bed refused: its readings set no device present
    that would outlive them (a map keyed by device, grown by refused input otherwise)."""
    eng, sink = bounded_engine(max_beds=1)
    kept = Batch([reading(T0, "a", device="mx.ecg")], received_at=T0, snapshot=True)
    refused = Batch(
        [reading(T0, "b", device="mx.ecg"), reading(T0, "b", "spo2", 97, "mx.pleth")],
        received_at=T0,
        snapshot=True,
    )
    run_batches(eng, kept, refused)
    assert [r.flag for r in sink.readings] == [None, CAPACITY, CAPACITY]
    assert list(eng._dev_now) == [("junk", "a", "mx")]


def test_new_beds_are_rate_limited_and_a_refused_bed_is_taken_when_a_token_is_back() -> None:
    """new_beds_per_minute 60, burst 3: 3 new beds at once, the 4th is ``rate_limited``
    (stored, counted, one alarm), and taken with its next reading a second later; the
    status of a bed refused is not kept either (no sensor alarm, no state, not watched)."""
    eng, sink = bounded_engine(new_beds_per_minute=60, new_beds_burst=3)
    first = Batch([reading(T0, f"b{i}") for i in range(4)], received_at=T0)
    again = Batch([reading(T0 + 1, "b3")], received_at=T0 + 1)
    off = DeviceStatus(T0 + 1, "junk", "b9", "ox", frozenset({"sensor_off"}))
    run_batches(eng, first, again, Batch([], received_at=T0 + 1, statuses=[off]))
    assert [(r.bed, r.flag) for r in sink.readings] == [
        ("b0", None),
        ("b1", None),
        ("b2", None),
        ("b3", RATE_LIMITED),
        ("b3", None),
    ]
    assert eng.counts[RATE_LIMITED] == 1
    assert beds_of(eng) == {("junk", f"b{i}") for i in range(4)}
    assert [e.rule for e in sink.events] == [RULE]  # the status raised no sensor.off
    assert eng.sensors.active() == 0 and len(eng.sensors) == 0
    assert eng.staleness is not None and len(eng.staleness) == 4  # b0..b3, not b9


def test_admitted_beds_are_bounded_by_max_beds_too() -> None:
    """An admitted bed is always evaluated and never expires: admissions are bounded by
    max_beds themselves (the command is refused with the reason, dead-lettered)."""
    eng, _sink = bounded_engine(max_beds=2)
    for bed in ("1", "2"):
        eng.admit(Admission("icu", bed, f"p{bed}", None, T0, "rn"))
    eng.admit(Admission("icu", "2", "p2", None, T0 + 1, "rn"))  # the same patient again: fine
    with pytest.raises(ValueError, match=r"engine\.max_beds"):
        eng.check_admit(Admission("icu", "3", "p3", None, T0 + 2, "rn"))
    eng.discharge("icu", "1", T0 + 3)
    eng.check_admit(Admission("icu", "3", "p3", None, T0 + 4, "rn"))


def test_capacity_alarm_resolves_after_a_quiet_minute() -> None:
    eng, sink = bounded_engine(max_beds=1)
    run_batches(eng, Batch([reading(T0, "a"), reading(T0, "b")], received_at=T0))
    (alarm,) = [e for e in sink.events if e.rule == RULE]
    assert alarm.state == AlertState.ACTIVE and alarm.priority == "high"
    assert "1/1 beds" in alarm.message
    assert eng.sweep(T0 + 59) == []  # (the staleness clock: wall clock of arrival)
    (resolved,) = [e for e in eng.sweep(T0 + 60) if e.rule == RULE]
    assert (resolved.id, resolved.state) == (alarm.id, AlertState.RESOLVED)
    assert eng.sweep(T0 + 200) == []  # once


# ------------------------------------------------------------------ engine: expiry


def test_an_unknown_bed_silent_past_stale_expire_s_is_forgotten_with_its_alarms() -> None:
    """stale_after_s 30, stale_expire_s 600, on the staleness clock (arrival): junk bed
    j (sbp 230: sbp.high) and a listed bed icu/1 stop at T0+1. Both go stale at T0+31;
    at T0+631 j's stale alarm resolves (same id, said why), its sbp.high resolves, and
    nothing of it is kept (series, peers, device presents, scores, capacity); icu/1 is
    expected: kept, its alarm open. A bed with two devices loses only the silent one."""
    eng, _sink = bounded_engine(beds=[("icu", "1")], expire_s=600.0)
    t = T0 + 1
    run_batches(
        eng,
        Batch(
            [
                reading(T0, "j", "sbp", 230),
                reading(t, "j", "sbp", 231),
                reading(T0, "1", "hr", 70, ward="icu"),
                reading(t, "1", "hr", 70, ward="icu"),
                reading(T0, "two", "hr", 70, "quiet"),
                reading(t, "two", "spo2", 97, "quiet"),
            ],
            received_at=t,
        ),
    )
    assert eng.staleness is not None
    stale = {(e.bed, e.device): e for e in eng.staleness.check(T0 + 31)}
    assert set(stale) == {("j", "mon"), ("1", "mon"), ("two", "quiet")}
    # "two" has another device that keeps talking
    for k in range(32, 700, 30):
        run_batches(eng, Batch([reading(T0 + k, "two", "hr", 70, "live")], received_at=T0 + k))
    assert eng.sweep(T0 + 630) == []  # 29 + 600 s of silence: not yet
    events = eng.sweep(T0 + 632)
    summary = sorted((e.bed, e.device, e.rule, e.state) for e in events)
    assert summary == [
        ("j", "mon", "device.stale", "resolved"),
        ("j", "mon", "sbp.high", "resolved"),
        ("two", "quiet", "device.stale", "resolved"),
    ]
    by_rule = {(e.bed, e.rule): e for e in events}
    assert by_rule[("j", "device.stale")].id == stale[("j", "mon")].id
    assert "forgotten" in by_rule[("j", "device.stale")].message
    assert "forgotten" in by_rule[("j", "sbp.high")].message
    assert ("junk", "j") not in beds_of(eng)
    assert not [k for k in eng._dev_now if k[1] == "j"]
    assert not [k for k in eng._peers if k[1] == "j"]
    assert ("junk", "j") not in eng.scores.beds
    assert eng.capacity is not None and ("junk", "j") not in eng.capacity.beds
    assert set(eng.capacity.beds[("junk", "two")]) == {"live"}
    assert {k.device for k in eng.series if k.bed == "two"} == {"live"}
    assert ("icu", "1") in beds_of(eng)  # expected: never expires
    assert eng.counts["devices_expired"] == 2
    assert eng.sweep(T0 + 10_000) == []  # icu/1 is still stale, never forgotten
    # the bed comes back: a new bed like any other, watched again
    run_batches(eng, Batch([reading(T0 + 10_001, "j")], received_at=T0 + 10_001))
    assert ("junk", "j") in beds_of(eng)


def test_expiry_waits_for_the_device_s_own_stale_limit() -> None:
    """A cuff every 15 min (stale after 45 min) of an unknown bed is forgotten 45 min +
    stale_expire_s after its last reading, never before its silence could alarm."""
    eng, _sink = bounded_engine(expire_s=600.0)
    cycle = [reading(T0 + k * 900, "c", "sbp", 120, "cuff") for k in range(6)]
    for r in cycle:
        run_batches(eng, Batch([r], received_at=r.ts))
    last = cycle[-1].ts
    assert eng.staleness is not None
    assert eng.staleness.check(last + 2699) == []
    assert [e.rule for e in eng.staleness.check(last + 2700)] == ["device.stale"]
    assert eng.sweep(last + 2700 + 599) == []
    assert [e.rule for e in eng.sweep(last + 2700 + 600)] == ["device.stale"]
    assert eng.series == {}


# ------------------------------------------------------------------ the real daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def active_by_rule(events: list[dict[str, Any]]) -> dict[str, set[str]]:
    """rule -> ids of alerts whose latest event is not a resolution."""
    last: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["id"] not in last or e["seq"] >= last[e["id"]]["seq"]:
            last[e["id"]] = e
    out: dict[str, set[str]] = {}
    for e in last.values():
        if e["state"] != "resolved":
            out.setdefault(e["rule"], set()).add(f"{e['ward']}/{e['bed']}")
    return out


JUNK = 5000
LIMITS = """engine:
  max_beds: 20
  max_series: 100
  new_beds_per_minute: 600
beds:
  icu/1: {}
metrics:
  listen: "127.0.0.1:%d"
"""
RULES = "  stale_after_s: 2\n  stale_unknown_s: 2\n  stale_expire_s: 3\n"


def publish_junk(port: int, n: int) -> None:
    """``n`` distinct junk bed topics, one reading each, QoS 1, all acknowledged."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="junk")
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        now = time.time()
        infos = [
            c.publish(f"vitals/junk/j{i}/dev", json.dumps({"ts": now, "hr": 70}), qos=1)
            for i in range(n)
        ]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        c.disconnect()
        c.loop_stop()


def stored(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def test_junk_bed_flood_stays_bounded_and_is_forgotten_across_a_restart(
    daemon: Callable[..., DaemonProc], subscribe: Any, publisher: Any, tmp_path: Path
) -> None:
    """5,000 distinct junk bed topics through mosquitto to the daemon (max_beds 20,
    stale_unknown_s 2, stale_expire_s 3): every reading is committed to SQLite, the
    engine never keeps more than 20 beds (and the listed one), one engine.capacity alarm
    instead of thousands of device.stale, the junk beds' stale alarms all resolve and the
    beds are forgotten, while the listed bed icu/1 still alarms. A restart raises nothing
    again for them."""
    port = free_port()
    d = daemon(RULES + LIMITS % port)
    alerts = subscribe("alerts/#")
    db = tmp_path / "vitals.db"

    publish_junk(d.broker_port, JUNK)
    # the listed bed alarms (SpO2 below 90 for 15 s, on event time) in the middle of it
    now = time.time()
    for i in range(20):
        publisher.publish("vitals/icu/1/ox", {"ts": now - 20 + i, "spo2": 82})
    wait_for(
        lambda: stored(db, "SELECT count(*) FROM readings") == JUNK + 20,
        60,
        "every reading committed",
    )
    seen_beds = [metrics(port)["vitalmon_beds"]]
    wait_for(
        lambda: active_by_rule(alerts.json()).get("spo2.low") == {"icu/1"}, 20, "icu/1 SpO2 low"
    )

    # the junk beds kept go stale after 2 s and are forgotten 3 s later: none is left
    def settled() -> bool:
        seen_beds.append(metrics(port)["vitalmon_beds"])
        junk = [
            b
            for ids in active_by_rule(alerts.json()).values()
            for b in ids
            if b.startswith("junk/")
        ]
        return not junk and seen_beds[-1] == 1

    wait_for(settled, 30, "junk beds forgotten")
    m = metrics(port)
    assert max(seen_beds) <= 20 + 1  # max_beds, and the listed bed taken past it
    events = alerts.json()
    stale_raised = {
        e["id"]
        for e in events
        if e["rule"] == "device.stale" and e["seq"] == 1 and e["ward"] == "junk"
    }
    assert 0 < len(stale_raised) < JUNK / 10  # bounded by the beds kept, not thousands
    assert len({e["id"] for e in events if e["rule"] == RULE}) == 1  # one capacity alarm
    active = active_by_rule(events)
    assert set(active) <= {RULE, "spo2.low", "device.stale"}, active
    assert m["vitalmon_alerts_active"] <= 3
    refused = sum(
        v
        for k, v in m.items()
        if k.startswith("vitalmon_readings_not_evaluated")
        and ('"capacity"' in k or '"rate_limited"' in k)
    )
    assert refused == stored(
        db, "SELECT count(*) FROM readings WHERE flag IN ('capacity', 'rate_limited')"
    )
    assert refused == JUNK - len(stale_raised)  # every junk bed kept went stale once
    assert m["vitalmon_devices_expired_total"] == len(stale_raised)
    lines = [line for line in d.log().splitlines() if "engine capacity:" in line]
    assert lines and not [line for line in lines if "junk" in line]  # counts, no names

    # restart: nothing about the junk beds is raised (or closed) again
    code, _ = d.terminate()
    assert code == 0
    open_junk = (
        "SELECT count(*) FROM (SELECT id, state, max(seq) FROM alert_events "
        "WHERE ward = 'junk' GROUP BY id) WHERE state != 'resolved'"
    )
    assert stored(db, open_junk) == 0
    before = len(alerts.json())
    d.start()
    # icu/1 is listed and silent: its device goes stale again after 2 s (the marker that
    # start-up, the restored alerts and the first checks are all through)
    wait_for(
        lambda: [
            e
            for e in alerts.json()[before:]
            if e["bed"] == "1" and e["rule"] == "device.stale" and e["state"] == "active"
        ],
        20,
        "icu/1 stale",
    )
    after = alerts.json()[before:]
    assert [e for e in after if e["ward"] == "junk"] == []
    assert metrics(port)["vitalmon_beds"] <= 1
