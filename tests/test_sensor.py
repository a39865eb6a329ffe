"""Device-reported sensor state -> technical alarms.

The rule (``SensorState``) is pure: statuses and readings with injected event times. The
MQTT source is checked twice: with a recording fake client (acknowledgement order), then
end to end over a real mosquitto (a status-only message is emitted and acknowledged).
Codec cases for ``"status"`` live in test_codecs.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

import pytest
from conftest import Broker, Publisher, until
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import MqttConfig, MqttSourceConfig, RulesConfig
from monitor.engine.sensor import SensorState
from monitor.model import (
    DEVICE_FLAGS,
    AlertEvent,
    AlertState,
    DeviceStatus,
    Priority,
    Reading,
    Rejection,
    alert_id,
)
from monitor.mqtt import Client, Deliver, Message
from monitor.sources import Batch
from monitor.sources.mqtt import MqttSource

BLIND = sorted(f for f, entry in DEVICE_FLAGS.items() if entry[3])


def status(ts: float, *flags: str, device: str = "masimo-1", bed: str = "7") -> DeviceStatus:
    return DeviceStatus(ts, "icu", bed, device, frozenset(flags), "p1")


def reading(ts: float, device: str = "masimo-1", bed: str = "7", vital: str = "spo2") -> Reading:
    return Reading(ts, "icu", bed, device, vital, 97.0, "p1")


def brief(events: list[AlertEvent]) -> list[tuple[str, str, float, int]]:
    return [(e.rule, str(e.state), e.at, e.seq) for e in events]


# ------------------------------------------------------------------------------ rule


def test_sensor_off_raises_once_and_resolves_when_cleared() -> None:
    s = SensorState()
    (raised,) = s.observe(status(100.0, "sensor_off"))
    assert raised == AlertEvent(
        id=alert_id("icu", "7", "masimo-1", "sensor.off", 100.0),
        ward="icu",
        bed="7",
        device="masimo-1",
        patient="p1",
        vital="",
        rule="sensor.off",
        kind="technical",
        priority=Priority.MEDIUM,
        state=AlertState.ACTIVE,
        value=1.0,
        limit=0.0,
        message="masimo-1: sensor off the patient",
        started_at=100.0,
        at=100.0,
        seq=1,
    )
    assert s.active() == 1
    for ts in (101.0, 102.0, 141.0):  # the device keeps saying so: never re-sent
        assert s.observe(status(ts, "sensor_off")) == []
    (resolved,) = s.observe(status(142.0))
    assert (resolved.id, resolved.state, resolved.seq) == (raised.id, AlertState.RESOLVED, 2)
    assert (resolved.started_at, resolved.at, resolved.value) == (100.0, 142.0, 0.0)
    assert resolved.message == "masimo-1: sensor off the patient — cleared after 42 s"
    assert s.active() == 0
    assert s.observe(status(143.0)) == []  # resolved once


@pytest.mark.parametrize("flag", sorted(DEVICE_FLAGS))
def test_every_flag_maps_to_its_rule_priority_and_text(flag: str) -> None:
    rule, priority, text, _blind = DEVICE_FLAGS[flag]
    (e,) = SensorState().observe(status(100.0, flag, device="ox"))
    assert (e.rule, e.priority, e.kind, e.message) == (
        rule,
        Priority(priority),
        "technical",
        f"ox: {text}",
    )


def test_the_set_replaces_the_previous_one() -> None:
    s = SensorState()
    first = s.observe(status(100.0, "sensor_off", "motion"))
    assert brief(first) == [  # in flag order: motion, sensor_off
        ("signal.motion", "active", 100.0, 1),
        ("sensor.off", "active", 100.0, 1),
    ]
    # sensor back on, still searching, motion goes on: one resolve, one raise
    assert brief(s.observe(status(110.0, "searching", "motion"))) == [
        ("sensor.off", "resolved", 110.0, 2),
        ("sensor.searching", "active", 110.0, 1),
    ]
    assert s.active() == 2
    assert sorted(brief(s.observe(status(120.0)))) == [
        ("sensor.searching", "resolved", 120.0, 2),
        ("signal.motion", "resolved", 120.0, 2),
    ]


def test_devices_and_beds_are_separate() -> None:
    s = SensorState()
    a = s.observe(status(100.0, "no_sensor", device="ox1"))
    b = s.observe(status(100.0, "no_sensor", device="ox2"))
    c = s.observe(status(100.0, "no_sensor", device="ox1", bed="8"))
    assert len({e.id for e in a + b + c}) == 3
    assert s.active() == 3
    assert s.observe(status(101.0, device="ox2")) != []
    assert s.active() == 2


def test_returned_events_are_the_callers_to_change() -> None:
    s = SensorState()
    (raised,) = s.observe(status(100.0, "sensor_off"))
    raised.seq, raised.message = 9, "changed downstream"
    (resolved,) = s.observe(status(105.0))
    assert (resolved.seq, resolved.message.startswith("masimo-1: sensor off")) == (2, True)


def test_out_of_order_status_is_ignored() -> None:
    s = SensorState()
    (raised,) = s.observe(status(100.0, "sensor_off"))
    assert s.observe(status(90.0)) == []  # older than what the device said at 100
    assert s.observe(status(95.0, "sensor_off", "motion")) == []
    # one state per instant: the first status wins (a later one is a redelivered duplicate
    # or contradicts it; processing it could raise an id already resolved)
    assert s.observe(status(100.0)) == []
    assert s.active() == 1
    (resolved,) = s.observe(status(100.5))
    assert (resolved.id, resolved.state, resolved.at) == (raised.id, AlertState.RESOLVED, 100.5)


@pytest.mark.parametrize("flag", BLIND)
def test_data_resolves_a_no_measurement_alarm(flag: str) -> None:
    s = SensorState()
    (raised,) = s.observe(status(100.0, flag))
    assert s.reading(reading(99.0)) == []  # from before the status
    assert s.reading(reading(100.0)) == []  # same instant: the status wins
    assert s.reading(reading(101.0, device="other")) == []  # another device's data
    (resolved,) = s.reading(reading(130.0))
    assert (resolved.id, resolved.state, resolved.seq, resolved.at) == (
        raised.id,
        AlertState.RESOLVED,
        2,
        130.0,
    )
    assert resolved.message.endswith("— cleared after 30 s (values again)")
    assert s.active() == 0
    assert s.reading(reading(131.0)) == []


def test_data_does_not_resolve_low_perfusion() -> None:
    s = SensorState()
    raised = s.observe(status(100.0, "sensor_off", "low_perfusion"))
    assert len(raised) == 2
    # values flow under low perfusion: only the sensor-off alarm ends
    assert brief(s.reading(reading(130.0))) == [("sensor.off", "resolved", 130.0, 2)]
    assert s.reading(reading(131.0)) == []
    assert s.active() == 1
    assert brief(s.observe(status(140.0))) == [("signal.low_perfusion", "resolved", 140.0, 2)]


def test_a_flag_ended_by_data_raises_again_when_a_newer_status_says_so() -> None:
    s = SensorState()
    (first,) = s.observe(status(100.0, "sensor_off"))
    assert len(s.reading(reading(130.0))) == 1
    # a redelivered or late status from before the reading is out of order now
    assert s.observe(status(100.0, "sensor_off")) == []
    assert s.observe(status(120.0, "sensor_off")) == []
    (again,) = s.observe(status(140.0, "sensor_off"))
    assert (again.state, again.seq, again.started_at) == (AlertState.ACTIVE, 1, 140.0)
    assert again.id != first.id


def test_reset_bed_resolves_the_beds_alarms_only() -> None:
    s = SensorState()
    s.observe(status(100.0, "sensor_off", device="ox"))
    s.observe(status(100.0, "low_perfusion", device="ox2"))
    s.observe(status(100.0, "no_sensor", device="ox", bed="8"))
    s.reading(reading(150.0, device="ox2"))  # low perfusion stays open; 150 is seen
    out = s.reset_bed("icu", "7")
    assert sorted((e.device, e.rule, e.at, e.seq, str(e.state)) for e in out) == [
        ("ox", "sensor.off", 100.0, 2, "resolved"),
        ("ox2", "signal.low_perfusion", 150.0, 2, "resolved"),
    ]
    assert all(e.message.endswith("(bed discharged)") for e in out)
    assert s.active() == 1  # bed 8
    assert s.reset_bed("icu", "7") == []
    # a late or redelivered status from before the discharge raises nothing
    assert s.observe(status(100.0, "sensor_off", device="ox")) == []
    assert s.observe(status(150.0, "low_perfusion", device="ox2")) == []
    # the device still says so later: a new alarm
    assert brief(s.observe(status(160.0, "sensor_off", device="ox"))) == [
        ("sensor.off", "active", 160.0, 1)
    ]


def test_reading_without_open_alarms_leaves_no_state() -> None:
    s = SensorState()
    for i in range(1000):
        assert s.reading(reading(100.0 + i, device=f"d{i}")) == []
    assert s.active() == 0
    assert not s._open and not s._seen and not s._status_ts


def test_flags_outside_device_flags_are_ignored() -> None:
    s = SensorState()
    assert s.observe(status(100.0, "lead_off")) == []
    assert s.active() == 0


ops = st.lists(
    st.tuples(
        st.sampled_from(["status", "reading", "reset"]),
        st.sampled_from(["ox1", "ox2"]),
        st.integers(0, 30),
        st.frozensets(st.sampled_from(sorted(DEVICE_FLAGS)), max_size=3),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_every_alarm_is_raised_once_and_resolved_at_most_once(
    steps: list[tuple[str, str, int, frozenset[str]]],
) -> None:
    s = SensorState()
    life: dict[str, list[AlertEvent]] = {}
    for op, device, t, flags in steps:
        if op == "status":
            out = s.observe(DeviceStatus(float(t), "icu", "7", device, flags))
        elif op == "reading":
            out = s.reading(Reading(float(t), "icu", "7", device, "hr", 70.0))
        else:
            out = s.reset_bed("icu", "7")
        for e in out:
            life.setdefault(e.id, []).append(e)
        opened = sum(1 for events in life.values() if events[-1].state == AlertState.ACTIVE)
        assert s.active() == opened
    for events in life.values():
        assert [e.seq for e in events] in ([1], [1, 2])
        assert events[0].state == AlertState.ACTIVE
        assert events[-1].at >= events[0].started_at
        if len(events) == 2:
            assert events[1].state == AlertState.RESOLVED


# --------------------------------------------------------------------- MQTT source


class FakeClient:
    """Records subscriptions and acknowledgements; no network."""

    def __init__(self) -> None:
        self.deliver: Deliver | None = None
        self.acked: list[int] = []

    def subscribe(self, topic_filter: str, qos: int, deliver: Deliver) -> None:
        self.deliver = deliver

    def ack(self, msg: Message) -> None:
        self.acked.append(msg.mid)

    def ack_many(self, msgs: list[Message]) -> None:
        self.acked += [m.mid for m in msgs]


def test_status_only_message_is_acknowledged_in_arrival_order() -> None:
    """A status-only message is emitted with ``done`` like a reading: its PUBACK waits for
    the commit, and for every message before it."""
    now = time.time()
    payloads = [
        {"ts": now, "hr": 70},  # 1: readings
        {"ts": now, "status": "sensor_off"},  # 2: a status only
        {"ts": now, "bogus": 1},  # 3: refused entirely: nothing to commit
        {"ts": now, "status": ["LOW_PERFUSION"], "spo2": 93},  # 4: both
    ]

    async def main() -> tuple[FakeClient, list[Batch], list[Rejection]]:
        fake = FakeClient()
        source = MqttSource(MqttSourceConfig(), RulesConfig(), cast(Client, fake))
        batches: list[Batch] = []
        rejected: list[Rejection] = []

        async def emit(batch: Batch) -> None:
            batches.append(batch)

        task = asyncio.create_task(source.run(emit, rejected.append))
        assert fake.deliver is not None
        for mid, p in enumerate(payloads, 1):
            fake.deliver(Message("vitals/icu/7/masimo-1", json.dumps(p).encode(), 1, False, mid))
        await until(lambda: len(batches) == 3 and rejected, what="three batches")
        assert fake.acked == []  # nothing committed yet
        assert batches[1].done is not None and batches[2].done is not None
        batches[1].done()  # the status commits first: held behind message 1
        assert fake.acked == []
        first = batches[0].done
        assert first is not None
        first()  # 1 commits: 1, 2 and the refused 3 go out, in order
        assert fake.acked == [1, 2, 3]
        batches[2].done()
        assert fake.acked == [1, 2, 3, 4]
        assert not source._unacked
        source.stop()
        await asyncio.wait_for(task, 5)
        return fake, batches, rejected

    _fake, batches, rejected = asyncio.run(main())
    assert [r.cause for r in rejected] == ["unknown_vital", "empty"]
    assert [(len(b.readings), len(b.statuses)) for b in batches] == [(1, 0), (0, 1), (1, 1)]
    assert batches[1].statuses == [
        DeviceStatus(now, "icu", "7", "masimo-1", frozenset({"sensor_off"}))
    ]
    assert batches[2].statuses[0].flags == {"low_perfusion"}


def test_messages_waiting_together_are_one_batch_released_together() -> None:
    """Messages already waiting when the source looks are one batch (the engine and the
    journal work per batch); its ``done`` acknowledges all of them, in arrival order, and
    a message that arrives later is a batch of its own, not held for company."""
    now = time.time()

    async def main() -> tuple[FakeClient, list[Batch]]:
        fake = FakeClient()
        source = MqttSource(MqttSourceConfig(), RulesConfig(), cast(Client, fake))
        batches: list[Batch] = []

        async def emit(batch: Batch) -> None:
            batches.append(batch)

        assert fake.deliver is not None
        for mid in range(1, 6):
            body = json.dumps({"ts": now + mid, "hr": 70 + mid}).encode()
            fake.deliver(Message(f"vitals/icu/{mid}/mon", body, 1, False, mid))
        task = asyncio.create_task(source.run(emit, lambda r: None))
        await until(lambda: batches, what="the first batch")
        fake.deliver(Message("vitals/icu/9/mon", b'{"hr": 80}', 1, False, 6))
        await until(lambda: len(batches) == 2, what="the second batch")
        assert fake.acked == []
        second_done, first_done = batches[1].done, batches[0].done
        assert second_done is not None and first_done is not None
        second_done()
        assert fake.acked == []  # behind the first batch
        first_done()
        assert fake.acked == [1, 2, 3, 4, 5, 6]
        source.stop()
        await asyncio.wait_for(task, 5)
        return fake, batches

    _fake, batches = asyncio.run(main())
    assert [[(r.bed, r.value) for r in b.readings] for b in batches] == [
        [(str(m), 70.0 + m) for m in range(1, 6)],
        [("9", 80.0)],
    ]


def test_status_only_message_over_mosquitto_is_emitted_and_acknowledged(
    broker: Broker, publisher: Publisher
) -> None:
    """Session 1: a status-only message reaches Batch.statuses and is released by its
    ``done``; a reading after it is left uncommitted. Session 2 (same persistent
    session): the broker redelivers the uncommitted reading but not the status, which
    shows the status was acknowledged (and that this test would see a redelivery)."""
    now = time.time()
    cfg = MqttConfig(port=broker.port, client_id="vitalmon-sensor-test", reconnect_min_s=0.2)

    async def publish(topic: str, payload: dict[str, Any]) -> None:
        await asyncio.to_thread(publisher.publish, topic, payload)

    async def session(
        commit: bool, send: list[tuple[str, dict[str, Any]]], expect: int
    ) -> tuple[MqttSource, list[Batch]]:
        client = Client(cfg)
        source = MqttSource(MqttSourceConfig(), RulesConfig(), client)
        batches: list[Batch] = []

        async def emit(batch: Batch) -> None:
            batches.append(batch)
            if commit and batch.done is not None:
                batch.done()  # as the journal does after its commit

        client.start()
        await asyncio.wait_for(client.connected.wait(), 10)
        task = asyncio.create_task(source.run(emit, lambda _r: None))
        try:
            for topic, payload in send:
                n = len(batches)
                await publish(topic, payload)
                if not commit:  # check each message as it comes

                    def arrived(k: int = n) -> bool:
                        return len(batches) > k

                    await until(arrived, what=f"batch for {topic}")
                    batch = batches[-1]
                    if batch.statuses:
                        assert (batch.readings, len(source._unacked)) == ([], 1)
                        assert batch.done is not None
                        batch.done()
                        assert not source._unacked  # released: PUBACK sent
            await until(lambda: len(batches) >= expect, what=f"{expect} batches")
            await until(lambda: not source._unacked or not commit, what="acknowledgements")
        finally:
            source.stop()
            await asyncio.wait_for(task, 5)
            await client.stop()
        return source, batches

    async def main() -> None:
        _src, first = await session(
            commit=False,
            send=[
                ("vitals/icu/7/masimo-1", {"ts": now, "status": "sensor_off"}),
                ("vitals/icu/7/mon1", {"ts": now, "hr": 70}),  # done withheld
            ],
            expect=2,
        )
        assert first[0].statuses == [
            DeviceStatus(now, "icu", "7", "masimo-1", frozenset({"sensor_off"}))
        ]
        assert [r.device for r in first[1].readings] == ["mon1"]
        _src, second = await session(
            commit=True, send=[("vitals/icu/7/marker", {"ts": now, "spo2": 97})], expect=2
        )
        devices: list[str] = []  # in arrival order
        for b in second:
            devices += [r.device for r in b.readings] + [x.device for x in b.statuses]
        assert devices == ["mon1", "marker"]  # redelivered reading, no status

    asyncio.run(main())
