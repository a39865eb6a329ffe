"""Alert lifecycle: pure state machine (literal events, injected clock), then over MQTT."""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import wait_for

from monitor.config import AlertsConfig
from monitor.engine.lifecycle import Lifecycle, UnknownAlert
from monitor.model import AlertEvent, AlertState, Priority

T0 = 1764324000.0


class Clock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


def rule_event(
    state: AlertState = AlertState.ACTIVE, priority: Priority = Priority.MEDIUM, seq: int = 1
) -> AlertEvent:
    return AlertEvent(
        id="a1",
        ward="icu",
        bed="7",
        device="ox",
        patient=None,
        vital="spo2",
        rule="spo2.low",
        kind="physiological",
        priority=priority,
        state=state,
        value=88,
        limit=90,
        message="SpO2 88 % < 90 % for 15 s",
        started_at=T0,
        at=T0 + 15,
        seq=seq,
    )


def lifecycle(**cfg: float) -> tuple[Lifecycle, Clock]:
    clock = Clock()
    return Lifecycle(AlertsConfig(**cfg), clock=clock), clock  # type: ignore[arg-type]


def test_ack_then_resolve_carries_who_and_numbers_every_event():
    lc, clock = lifecycle()
    raised = lc.observe(rule_event())
    assert (raised.state, raised.seq) == (AlertState.ACTIVE, 1)
    clock.t += 30
    acked = lc.ack("a1", "nurse.kim")
    assert acked is not None
    assert (acked.state, acked.seq, acked.extra["ack_by"]) == (
        AlertState.ACKNOWLEDGED,
        2,
        "nurse.kim",
    )
    assert acked.extra["action"] == "acknowledge"
    assert acked.at == clock.t  # wall clock of the action
    assert lc.ack("a1", "someone.else") is None  # idempotent
    resolved = lc.observe(rule_event(AlertState.RESOLVED, seq=2))
    assert (resolved.state, resolved.seq, resolved.extra["ack_by"]) == (
        AlertState.RESOLVED,
        3,
        "nurse.kim",
    )
    assert "action" not in resolved.extra
    with pytest.raises(UnknownAlert):
        lc.ack("a1", "late")


def test_the_lifecycle_never_writes_into_an_event_s_extra_in_place():
    """Producers hand out copies of the alarms they keep open (``copy.copy``: the
    ``extra`` dict is shared with the kept one and with events still queued): what the
    lifecycle adds (``ack_by``, ``escalated``) goes into a new dict."""
    lc, clock = lifecycle(escalate_after_s=10)
    kept = rule_event()
    lc.observe(copy.copy(kept))
    clock.t += 11
    assert [e.extra["action"] for e in lc.tick()] == ["escalate"]
    worse = copy.copy(kept)
    worse.seq += 1
    assert lc.observe(worse).extra["escalated"] is True
    assert lc.ack("a1", "kim") is not None
    ended = copy.copy(kept)
    ended.state = AlertState.RESOLVED
    out = lc.observe(ended)
    assert (out.extra["ack_by"], out.extra["escalated"]) == ("kim", True)
    assert kept.extra == {}  # the producer's (shared) dict is as it was


def test_acknowledged_alert_stays_acknowledged_unless_it_worsens():
    lc, _clock = lifecycle()
    lc.observe(rule_event())
    lc.ack("a1", "kim")
    same = lc.observe(rule_event(priority=Priority.MEDIUM, seq=2))
    assert same.state == AlertState.ACKNOWLEDGED
    worse = lc.observe(rule_event(priority=Priority.HIGH, seq=3))
    assert (worse.state, worse.priority) == (AlertState.ACTIVE, Priority.HIGH)
    assert "ack_by" not in worse.extra  # must be acknowledged again
    assert lc.ack("a1", "kim") is not None


def test_unacknowledged_alert_escalates_once_after_delay_acked_one_never():
    lc, clock = lifecycle(escalate_after_s=120, renotify_s=0)
    lc.observe(rule_event())
    clock.t += 119
    assert lc.tick() == []
    clock.t += 1
    (esc,) = lc.tick()
    assert (esc.priority, esc.extra["escalated"], esc.extra["action"], esc.seq) == (
        Priority.HIGH,
        True,
        "escalate",
        2,
    )
    clock.t += 500
    assert lc.tick() == []  # once per activation
    later = lc.observe(rule_event(priority=Priority.MEDIUM, seq=2))
    assert later.priority == Priority.HIGH  # stays escalated
    assert later.extra["escalated"] is True

    lc2, clock2 = lifecycle(escalate_after_s=120)
    lc2.observe(rule_event())
    lc2.ack("a1", "kim")
    clock2.t += 1000
    assert lc2.tick() == []


def test_renotify_until_acknowledged():
    lc, clock = lifecycle(escalate_after_s=0, renotify_s=300)
    lc.observe(rule_event())
    clock.t += 299
    assert lc.tick() == []
    clock.t += 1
    (again,) = lc.tick()
    assert (again.state, again.extra["renotify"], again.seq) == (AlertState.ACTIVE, True, 2)
    clock.t += 300
    (third,) = lc.tick()
    assert third.seq == 3
    lc.ack("a1", "kim")
    clock.t += 10_000
    assert lc.tick() == []


def test_restore_keeps_acknowledgement_across_restart():
    lc, clock = lifecycle(escalate_after_s=10)
    stored = copy.copy(rule_event(AlertState.ACKNOWLEDGED, seq=4))
    stored.extra = {"ack_by": "kim"}
    lc.restore([stored])
    clock.t += 100
    assert lc.tick() == []  # acknowledged: no escalation
    resolved = lc.observe(rule_event(AlertState.RESOLVED, seq=2))
    assert (resolved.seq, resolved.extra["ack_by"]) == (5, "kim")


# ------------------------------------------------------------------- over MQTT


def raise_spo2(publisher, bed: str = "3") -> None:
    now = time.time()
    for i in range(20):
        publisher.publish(f"vitals/icu/{bed}/ox", {"ts": now - 25 + i, "spo2": 80})


def test_ack_by_mqtt_command_and_retained_bed_state(daemon, subscribe, publisher, broker, tmp_path):
    """1. an alert is raised; 2. the retained state topic lists it; 3. mosquitto_pub of an
    ack: `acknowledged` with ack_by, state topic updated, audit row stored; 4. a bad and an
    unknown ack are dead-lettered."""
    daemon()
    alerts = subscribe("alerts/#")
    dead = subscribe("vitalmon/deadletter")
    raise_spo2(publisher)
    raised = wait_for(alerts.json, 5, "the alert")[0]
    late = subscribe("state/icu/3/alerts")  # a dashboard connecting late
    state = wait_for(lambda: late.json(), 5, "retained state")[0]
    assert [a["id"] for a in state] == [raised["id"]]
    subprocess.run(
        [
            "mosquitto_pub",
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-t",
            "vitalmon/cmd/ack",
            "-m",
            json.dumps({"id": raised["id"], "by": "nurse.kim"}),
        ],
        check=True,
        timeout=10,
    )
    acked = wait_for(
        lambda: [a for a in alerts.json() if a["state"] == "acknowledged"], 5, "acknowledged"
    )[0]
    assert (acked["id"], acked["ack_by"], acked["seq"]) == (raised["id"], "nurse.kim", 2)
    wait_for(
        lambda: late.json()[-1] and late.json()[-1][0]["state"] == "acknowledged",
        5,
        "state topic updated",
    )
    publisher.publish("vitalmon/cmd/ack", b'{"id": 5}')
    publisher.publish("vitalmon/cmd/ack", {"id": "nope", "by": "kim"})
    letters = wait_for(lambda: len(dead.json()) >= 2 and dead.json(), 5, "two dead letters")
    assert [d["reason"] for d in letters] == ["bad_command", "unknown_alert"]
    conn = sqlite3.connect(tmp_path / "vitals.db")
    rows = wait_for(
        lambda: conn.execute("SELECT action, by, alert_id FROM audit").fetchall(), 5, "audit"
    )
    conn.close()
    assert rows == [("acknowledge", "nurse.kim", raised["id"])]


def test_vitalmon_ack_command_line(daemon, subscribe, publisher):
    d = daemon()
    alerts = subscribe("alerts/#")
    raise_spo2(publisher, bed="4")
    raised = wait_for(alerts.json, 5, "the alert")[0]
    cmd = [
        sys.executable,
        "-m",
        "monitor",
        "ack",
        raised["id"],
        "--by",
        "dr.lee",
        "-c",
        str(d.config),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    event = json.loads(out.stdout)
    assert (event["state"], event["ack_by"]) == ("acknowledged", "dr.lee")
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert again.returncode == 1
    assert "already_acknowledged" in again.stderr
    unknown = subprocess.run(
        [*cmd[:4], "0000", *cmd[5:]], capture_output=True, text=True, timeout=30, check=False
    )
    assert unknown.returncode == 1
    assert "unknown_alert" in unknown.stderr


@pytest.fixture
def fast_lifecycle_daemon(daemon):
    def make():
        d = daemon(start=False)
        text = d.config.read_text().replace(
            'topic: "alerts/{ward}/{bed}"\n  qos: 1',
            'topic: "alerts/{ward}/{bed}"\n  qos: 1\n  escalate_after_s: 2\n  renotify_s: 1\n'
            '  escalate_topic: "pager/{ward}"',
        )
        d.config.write_text(text)
        d.start()
        return d

    return make


def test_escalation_then_renotify_until_ack(fast_lifecycle_daemon, subscribe, publisher):
    """escalate_after_s 2, renotify_s 1: the alert is re-notified, escalated (also to the
    pager topic), and an ack stops both."""
    fast_lifecycle_daemon()
    alerts = subscribe("alerts/#")
    pager = subscribe("pager/#")
    raise_spo2(publisher, bed="5")
    raised = wait_for(alerts.json, 5, "the alert")[0]
    esc = wait_for(lambda: [a for a in alerts.json() if a.get("escalated")], 10, "escalation")[0]
    assert (esc["id"], esc["priority"], esc["state"]) == (raised["id"], "high", "active")
    assert wait_for(pager.json, 5, "pager copy")[0]["id"] == raised["id"]
    wait_for(lambda: any(a.get("renotify") for a in alerts.json()), 10, "a re-notification")
    publisher.publish("vitalmon/cmd/ack", {"id": raised["id"], "by": "kim"})
    wait_for(lambda: alerts.json()[-1]["state"] == "acknowledged", 5, "acknowledged")
    n = len(alerts.json())
    deadline = time.monotonic() + 3  # three re-notify periods: nothing more may come
    wait_for(lambda: time.monotonic() > deadline or len(alerts.json()) > n, 5, "quiet period")
    assert len(alerts.json()) == n


def test_pause_holds_publication_high_breaks_through_release_at_end(
    daemon, subscribe, publisher, tmp_path
):
    """1. pause bed 6 for 3 s (asked 60, capped by pause_max_s 3); 2. a medium spo2 alert on
    bed 6 is stored and on the state topic but not published; 3. a high alert on bed 6
    breaks through; 4. at the pause's end the held alert is published; 5. audited."""
    d = daemon(start=False)
    d.config.write_text(
        d.config.read_text().replace(
            'topic: "alerts/{ward}/{bed}"\n  qos: 1',
            'topic: "alerts/{ward}/{bed}"\n  qos: 1\n  pause_max_s: 3\n',
        )
    )
    d.start()
    alerts = subscribe("alerts/#")
    state = subscribe("state/icu/6/alerts")
    publisher.publish(
        "vitalmon/cmd/pause", {"ward": "icu", "bed": "6", "seconds": 60, "by": "nurse.kim"}
    )
    paused_at = time.monotonic()
    wait_for(lambda: "paused for 3 s" in d.log(), 5, "the pause")
    now = time.time()
    for i in range(20):  # spo2 88: a medium (warn) alert on the paused bed
        publisher.publish("vitals/icu/6/ox", {"ts": now - 25 + i, "spo2": 88})
    wait_for(lambda: state.json() and state.json()[-1], 5, "the alert on the state topic")
    assert alerts.json() == []  # held
    for i in range(20):  # a high alert on the same bed breaks through
        publisher.publish("vitals/icu/6/mon", {"ts": now - 25 + i, "spo2": 80})
    high = wait_for(lambda: alerts.json(), 5, "the high alert")[0]
    assert (high["priority"], high["device"]) == ("high", "mon")
    assert time.monotonic() - paused_at < 3
    released = wait_for(lambda: [a for a in alerts.json() if a["device"] == "ox"], 6, "release")
    assert (released[0]["priority"], released[0]["state"]) == ("medium", "active")
    assert time.monotonic() - paused_at >= 3
    conn = sqlite3.connect(tmp_path / "vitals.db")
    rows = conn.execute("SELECT action, by, ward, bed, detail FROM audit").fetchall()
    conn.close()
    assert rows == [("pause", "nurse.kim", "icu", "6", "3 s")]
