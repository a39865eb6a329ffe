"""Issue 17's acceptance, automated as docs/scaling.md walks it on one machine.

A 3-node NATS cluster (``monitor.natsd``, free ports), three ``vitalmon run`` instances
with the guide's configuration (12 partitions, ``lease_s`` 10), 1,000 simulated beds
publishing MQTT at 1 Hz (``python -m simulators mqtt --max-rate 0``) for ``--duration``
seconds, and one more bed (``acc/1``) that this script publishes itself:

1. at ``desat_at`` the bed desaturates (SpO2 82); 10 s later its owning instance is
   killed with SIGKILL; the script measures when ``spo2.low`` of the bed is raised, by
   whom, and how often;
2. at ``nats_kill_at`` one NATS node is killed (not the ones the devices use), and
   started again 30 s later;
3. at ``restart_at`` the killed instance is started again: the partitions rebalance;
4. at the end, once every partition's backlog is drained: the readings stored (all
   three journals, distinct) against the readings in the stream, the messages in the
   stream against those the devices had PUBACKs for, and every alert event's
   (id, seq) seen once.

    python scripts/cluster_acceptance.py --dir /tmp/acc [--duration 180]

Prints a table and exits 1 if a check fails. Takes about ``duration`` + 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from monitor.natsd import NatsCluster
from monitor.sources.jetstream.subjects import bed_partition

TEMPLATE = "vitals/{ward}/{bed}/{device}"
PARTS = 12


def config(d: Path, name: str, cluster: NatsCluster, metrics: int) -> Path:
    servers = json.dumps(cluster.urls)
    capture = json.dumps([f"127.0.0.1:{p}" for p in cluster.mqtt_ports])
    path = d / f"{name}.yaml"
    path.write_text(
        f"""mqtt:
  host: 127.0.0.1
  port: {cluster.mqtt_ports[0]}
  protocol: "3.1.1"
  client_id: vitalmon-{name}
sources:
  - type: jetstream
    servers: {servers}
    capture_mqtt: {capture}
    instance: {name}
    partitions: {PARTS}
store:
  - type: sqlite
    path: {d / f"{name}.db"}
metrics:
  listen: 127.0.0.1:{metrics}
"""
    )
    return path


class Instances:
    def __init__(self, d: Path, cluster: NatsCluster) -> None:
        self.d = d
        self.cfg = {n: config(d, n, cluster, 19464 + i) for i, n in enumerate("abc")}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        log = (self.d / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "-c", str(self.cfg[name])],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "monitor",
                "cluster",
                "-c",
                str(self.cfg["a"]),
                "--format",
                "json",
            ],
            capture_output=True,
            check=False,
            text=True,
            timeout=30,
        )
        return json.loads(out.stdout) if out.returncode == 0 else {}


def wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout} s waiting for {what}")


class Alerts:
    """Every alert event on the cluster's MQTT, with its arrival time."""

    def __init__(self, port: int) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="acceptance-alerts")
        c.on_connect = lambda cl, *_: cl.subscribe("alerts/#", qos=1)
        c.on_subscribe = lambda *_: ready.set()

        def on_message(_c: Any, _u: Any, m: paho.MQTTMessage) -> None:
            with self.lock:
                self.events.append((time.time(), json.loads(m.payload)))

        c.on_message = on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert ready.wait(30)
        self.client = c

    def of(self, ward: str, bed: str, rule: str) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [
                (t, e)
                for t, e in self.events
                if (e.get("ward"), e.get("bed"), e.get("rule")) == (ward, bed, rule)
            ]


class Bed:
    """The bed this script drives: 1 Hz, SpO2 97 until desaturated, then 82."""

    def __init__(self, port: int) -> None:
        self.low = threading.Event()
        self.stop = threading.Event()
        self.published = 0
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id="acceptance-bed")
        up = threading.Event()
        self.c.on_connect = lambda *_: up.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert up.wait(30)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        nxt = time.time()
        while not self.stop.is_set():
            spo2 = 82 if self.low.is_set() else 97
            doc = {"ts": round(time.time(), 3), "hr": 80, "spo2": spo2, "rr": 14}
            info = self.c.publish("vitals/acc/1/mon1", json.dumps(doc), qos=1)
            deadline = time.monotonic() + 60  # (kept by paho and sent again on reconnect)
            while not info.is_published() and time.monotonic() < deadline:
                time.sleep(0.01)
            self.published += info.is_published()
            nxt += 1.0
            self.stop.wait(max(0.0, nxt - time.time()))


async def stream_readings(urls: list[str]) -> tuple[int, int, set[tuple[Any, ...]]]:
    """(messages, distinct messages, distinct readings) in the stream, the probe
    excluded, decoded as vitalmon decodes them. At least once: a device that re-sends a
    message whose PUBACK it lost (a NATS node killed) puts it in twice."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from monitor.config import DEFAULT_ALIASES
    from monitor.sources.codecs import Limits, Origin, decode
    from monitor.sources.jetstream.subjects import stored_topic

    nc = await nats.connect(urls)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        "vitalmon.p.>",
        durable=None,
        stream="VITALMON_READINGS",
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
    )
    limits = Limits(64 * 1024, None, dict(DEFAULT_ALIASES))
    msgs = 0
    distinct: set[tuple[str, bytes]] = set()
    readings: set[tuple[Any, ...]] = set()
    while True:
        try:
            batch = await sub.fetch(1000, timeout=3)
        except Exception:  # noqa: BLE001 - nothing more
            break
        for m in batch:
            _n, topic = stored_topic("vitalmon", m.subject)
            _v, ward, bed, device = topic.split("/")
            if ward == "probe":
                continue
            msgs += 1
            distinct.add((topic, bytes(m.data)))
            stamp = m.metadata.timestamp.timestamp()
            got = decode(m.data, Origin(topic, ward, bed, device), stamp, limits)
            readings |= {(r.ward, r.bed, r.device, r.vital, r.ts) for r in got.readings}
    await nc.close()
    return msgs, len(distinct), readings


def stored(d: Path) -> tuple[int, set[tuple[Any, ...]]]:
    """(rows, distinct readings) over the three journals."""
    rows, seen = 0, set()
    for n in "abc":
        db = sqlite3.connect(d / f"{n}.db")
        for row in db.execute("SELECT ward, bed, device, vital, ts FROM readings"):
            if row[0] != "probe":
                rows += 1
                seen.add(row)
        db.close()
    return rows, seen


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--beds", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=180.0)
    args = ap.parse_args()
    d = args.dir.resolve()
    d.mkdir(parents=True, exist_ok=True)
    cluster = NatsCluster(d / "nats", nodes=3)
    cluster.start()
    inst = Instances(d, cluster)
    results: list[tuple[str, str, bool]] = []
    try:
        for n in "abc":
            inst.start(n)
        wait(
            lambda: (
                (s := inst.status()).get("members") == ["a", "b", "c"]
                and s.get("capture")
                and all(r["owner"] for r in s["partition_map"])
            ),
            60,
            "three members sharing the partitions",
        )
        alerts = Alerts(cluster.mqtt_ports[0])
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "simulators",
                "mqtt",
                "--port",
                str(cluster.mqtt_ports[1]),
                "--protocol",
                "3.1.1",
                "--beds",
                str(args.beds),
                "--scenario",
                "normal",
                "--duration",
                str(args.duration),
                "--max-rate",
                "0",
                "--seed",
                "17",
                "--start-ago",
                "0",
            ],
            stdout=(d / "sim.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        bed = Bed(cluster.mqtt_ports[0])
        t0 = time.monotonic()
        part = bed_partition(TEMPLATE, "acc", "1", PARTS)

        def at(s: float) -> None:
            time.sleep(max(0.0, t0 + s - time.monotonic()))

        at(40)
        bed.low.set()
        desat = time.time()
        owner = next(r["owner"] for r in inst.status()["partition_map"] if r["partition"] == part)
        at(50)
        inst.kill(owner)
        killed = time.time()
        raised = wait(lambda: alerts.of("acc", "1", "spo2.low"), 60, "spo2.low of acc/1")
        raised_at = raised[0][0]
        new_owner = next(
            (
                n
                for n in "abc"
                if n != owner
                and re.search(rf"alert {raised[0][1]['id']} active", (d / f"{n}.log").read_text())
            ),
            None,
        )
        takeover = max(
            (
                float(m.group(1))
                for n in "abc"
                if n != owner
                for m in re.finditer(
                    r"^vitalmon_jetstream_takeover_seconds\{[^}]*\} (\S+)$",
                    _metrics(19464 + "abc".index(n)),
                    re.M,
                )
            ),
            default=float("nan"),
        )
        at(90)
        victim = 2  # neither the devices' node (0, 1) nor the alerts subscriber's (0)
        cluster.kill(victim)
        at(120)
        cluster.restart(victim)
        inst.start(owner)
        wait(
            lambda: (
                (s := inst.status()).get("members") == ["a", "b", "c"]
                and {r["owner"] for r in s["partition_map"]} == {"a", "b", "c"}
            ),
            90,
            "the restarted instance back in the partition map",
        )
        rebalanced = time.time()
        sim.wait(args.duration + 120)
        bed.stop.set()
        bed.thread.join()
        wait(
            lambda: all(
                (r["pending"] or 0) == 0 and (r["ack_pending"] or 0) == 0
                for r in inst.status().get("partition_map", [{"pending": 1}])
            ),
            120,
            "every partition drained",
        )
        time.sleep(2)  # (the last commits' acks: counted from the journals below)
        msgs, distinct_msgs, readings = asyncio.run(stream_readings(cluster.urls))
        rows, kept = stored(d)
        sim_log = (d / "sim.log").read_text()
        m = re.search(r"(\d+) messages published .* (\d+) confirmed", sim_log)
        confirmed = int(m.group(2)) if m else -1
        events = collections.Counter((e["id"], e["seq"]) for _t, e in alerts.events)
        twice = sum(1 for c in events.values() if c > 1)
        raised_n = len([e for _t, e in raised if e["state"] == "active" and e["seq"] == 1])
        results += [
            (
                "bed acc/1 owner killed (SIGKILL)",
                f"{owner}, {killed - desat:.1f} s after the desaturation",
                True,
            ),
            ("spo2.low raised, times", str(raised_n), raised_n == 1),
            ("raised by", str(new_owner), new_owner not in (None, owner)),
            ("raised after the kill", f"{raised_at - killed:.1f} s", True),
            ("takeover (metric, new owners)", f"{takeover:.1f} s", True),
            (
                "bound: lease 10 s + renewal 2.5 s + takeover + delay 15 s",
                f"{12.5 + takeover + 15:.1f} s",
                raised_at - killed <= 12.5 + takeover + 15,
            ),
            ("messages PUBACKed (simulator + bed)", str(confirmed + bed.published), True),
            (
                "messages in the stream (distinct)",
                f"{msgs} ({distinct_msgs})",
                distinct_msgs >= confirmed + bed.published,
            ),
            ("readings in the stream (distinct)", str(len(readings)), True),
            ("readings stored (distinct, 3 journals)", str(len(kept)), kept == readings),
            ("  in the stream, not stored", str(len(readings - kept)), not readings - kept),
            ("  stored, not in the stream", str(len(kept - readings)), not kept - readings),
            ("rows stored (stored twice)", f"{rows} ({rows - len(kept)})", True),
            ("alert events seen twice (id, seq)", str(twice), twice == 0),
            ("alert events seen", str(sum(events.values())), True),
            ("rebalanced after the restart", f"{rebalanced - killed:.0f} s after the kill", True),
        ]
        alerts.client.loop_stop()
    finally:
        inst.stop_all()
        cluster.stop()
    width = max(len(r[0]) for r in results) if results else 10
    for what, value, ok in results:
        print(f"{what:<{width}}  {value:<40}  {'ok' if ok else 'FAILED'}")
    return 0 if results and all(ok for _w, _v, ok in results) else 1


def _metrics(port: int) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return ""


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
