"""Technical alarms for silence: pure (injected times), then over mosquitto."""

from __future__ import annotations

import time

from conftest import wait_for

from monitor.engine.technical import Staleness
from monitor.model import AlertState


def test_device_goes_silent_raises_once_and_resolves_on_data():
    s = Staleness(30, [], started=0.0)
    assert s.seen("icu", "7", "ox", 100.0) == []
    assert s.check(129.0) == []
    (raised,) = s.check(130.0)
    assert (raised.rule, raised.kind, raised.device, raised.state) == (
        "device.stale",
        "technical",
        "ox",
        AlertState.ACTIVE,
    )
    assert s.check(500.0) == []  # once, not every interval
    (resolved,) = s.seen("icu", "7", "ox", 600.0)
    assert (resolved.id, resolved.state, resolved.seq) == (raised.id, AlertState.RESOLVED, 2)


def test_expected_bed_that_never_sent_anything_is_stale():
    s = Staleness(30, [("icu", "9")], started=0.0)
    assert s.check(29.0) == []
    (raised,) = s.check(30.0)
    assert (raised.ward, raised.bed, raised.device) == ("icu", "9", "*")
    assert "never sent" in raised.message
    resolved = s.seen("icu", "9", "mon", 40.0)
    assert [e.state for e in resolved] == [AlertState.RESOLVED]
    assert s.check(60.0) == []  # the device now counts from its own reading at 40
    (device,) = s.check(70.0)
    assert device.device == "mon"


def test_silent_bed_and_device_over_mqtt(daemon, subscribe, publisher):
    """stale_after_s 2 and an expected bed icu/20: 1. the bed never sends -> alarm;
    2. a device streams (two readings a second apart: its interval is known), then stops
    -> alarm; 3. it sends again -> resolved (same id)."""
    d = daemon(start=False)
    d.config.write_text(
        d.config.read_text().replace(
            "rules:\n", "beds:\n  icu/20: {}\nrules:\n  stale_after_s: 2\n"
        )
    )
    d.start()
    alerts = subscribe("alerts/#")
    never = wait_for(lambda: [a for a in alerts.json() if a["bed"] == "20"], 10, "bed 20 stale")
    assert (never[0]["rule"], never[0]["device"], never[0]["kind"]) == (
        "device.stale",
        "*",
        "technical",
    )
    publisher.publish("vitals/icu/21/mon", {"ts": time.time() - 1, "hr": 70})
    publisher.publish("vitals/icu/21/mon", {"ts": time.time(), "hr": 70})
    silent = wait_for(
        lambda: [a for a in alerts.json() if a["bed"] == "21" and a["state"] == "active"],
        10,
        "bed 21 stale",
    )[0]
    publisher.publish("vitals/icu/21/mon", {"ts": time.time(), "hr": 71})
    back = wait_for(
        lambda: [a for a in alerts.json() if a["bed"] == "21" and a["state"] == "resolved"],
        5,
        "bed 21 back",
    )[0]
    assert back["id"] == silent["id"]


def test_grace_after_the_broker_was_unreachable_avoids_a_storm():
    s = Staleness(30, [("icu", "9")], started=0.0)
    s.seen("icu", "7", "ox", 10.0)
    s.grace(100.0)  # we were cut off until 100: nobody is stale yet
    assert s.check(129.0) == []
    assert len(s.check(130.0)) == 2


def test_device_reported_sensor_off_over_mqtt(daemon, subscribe, publisher):
    """1. the oximeter says sensor_off (its spo2 in the same object is refused, not
    alarmed); 2. the same status again raises nothing more; 3. values again resolve it;
    4. low_perfusion alongside values is a low-priority technical alarm of its own."""
    daemon()
    alerts = subscribe("alerts/#")
    dead = subscribe("vitalmon/deadletter")
    now = time.time()
    publisher.publish("vitals/icu/22/ox", {"ts": now - 10, "status": "sensor_off", "spo2": 0})
    publisher.publish("vitals/icu/22/ox", {"ts": now - 9, "status": ["sensor_off"]})
    raised = wait_for(alerts.json, 5, "sensor.off")
    assert [(a["rule"], a["kind"], a["priority"], a["state"]) for a in raised] == [
        ("sensor.off", "technical", "medium", "active")
    ]
    assert [d["reason"] for d in wait_for(dead.json, 5, "refused value")] == ["sensor_flag"]
    publisher.publish("vitals/icu/22/ox", {"ts": now - 8, "spo2": 97, "hr": 70})
    publisher.publish("vitals/icu/22/ox", {"ts": now - 7, "spo2": 97, "status": "low_perfusion"})
    events = wait_for(lambda: len(alerts.json()) >= 3 and alerts.json(), 5, "three events")
    assert [(a["rule"], a["state"]) for a in events] == [
        ("sensor.off", "active"),
        ("sensor.off", "resolved"),
        ("signal.low_perfusion", "active"),
    ]
    assert events[1]["id"] == events[0]["id"]
    assert events[2]["priority"] == "low"


def test_devices_watched_by_their_own_link_are_not_counted_channels_included():
    # a serial source watches its port (device.silent / device.disconnected): the same
    # silence must not also be device.stale, for its HL7 channels (hl7.pleth) either
    s = Staleness(30, [("icu", "14")], started=0.0)
    s.watch_elsewhere("icu", "14", "hl7")
    for device in ("hl7", "hl7.pleth", "hl7.ecg"):
        s.seen("icu", "14", device, 10.0)
    s.seen("icu", "14", "other", 10.0)
    assert [(e.device, e.rule) for e in s.check(100.0)] == [("other", "device.stale")]
