"""Scale: readings/s through 1, 2 and 3 instances on a NATS JetStream cluster, side by
side with one instance on mosquitto, in the same run; and the takeover time.

The load is the same pre-encoded stream for every variant: ``--beds`` beds, one message
per bed and second with six vitals (hr spo2 rr sbp dbp map, normal values), ``--seconds``
seconds of event time ending just behind the wall clock, sent by one raw QoS 1 publisher
(at most 1,000 unacknowledged) as fast as the broker acknowledges.

* mosquitto, 1 instance: a fresh mosquitto and ``python -m monitor run`` with the MQTT
  source (the single-machine set-up);
* nats, k instances (k = 1, 2, 3): a fresh 3-node NATS cluster (``monitor/natsd.py``,
  JetStream replicas 3), k daemons with the JetStream source (``--partitions``
  partitions) sharing it, the daemons' own MQTT (alerts) on the cluster; the publisher
  sends to a node's MQTT listener.

Per variant the clock runs from the first publish until the instances' summed
``vitalmon_readings_committed_total`` has grown by the stream's readings (every reading
captured, stored in the stream, delivered, evaluated, committed and acknowledged).
``captured`` is when the stream held every message. The takeover: after the 3-instance
run, one instance is killed with SIGKILL; the clock runs until the survivors'
``vitalmon_jetstream_partitions_owned`` sum to every partition again.

Alert latency, per variant after its load: ``--probes`` beds each get 30 readings of
SpO2 82 (event time 1 s apart, sent 20 ms apart by a paho client on the same listener
as the load); a paho subscriber on the daemons' MQTT (``alerts/#``) takes each bed's
``spo2.low``. Its latency runs from the publish of the reading that raised it (the
event's ``at``) to its arrival: capture, stream, evaluation, and in the cluster the
de-duplicating alert stream and the owner's relay.

    python benchmarks/scale.py [--quick] [--json FILE] [--beds N] [--seconds S]
                               [--partitions P] [--lease S]
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    SIX,
    Broker,
    Daemon,
    RawPublisher,
    encode_all,
    machine,
    machine_line,
    normal_value,
    parser,
    percentile,
    table,
    wait_for,
    write_json,
)

from monitor.natsd import NatsCluster, find_nats_server


def messages(beds: int, seconds: int, seed: int = 7) -> list[tuple[str, bytes]]:
    import random

    rng = random.Random(seed)
    start = time.time() - seconds - 5
    out = []
    for s in range(seconds):
        for b in range(1, beds + 1):
            doc = {"ts": round(start + s, 3), **{v: normal_value(rng, v) for v in SIX}}
            out.append((f"vitals/icu/{b}/mon1", json.dumps(doc).encode()))
    return out


def jetstream_daemon(
    work: Path, cluster: NatsCluster, name: str, partitions: int, lease: float
) -> Daemon:
    d = Daemon(work, cluster.mqtt_ports[0], client_id=f"vitalmon-{name}")
    text = d.config.read_text()
    text = text.replace(
        """sources:
  - type: mqtt
    topic: "vitals/{ward}/{bed}/{device}"
    qos: 1
""",
        f"""sources:
  - type: jetstream
    servers: {json.dumps(cluster.urls)}
    capture_mqtt: {json.dumps([f"127.0.0.1:{p}" for p in cluster.mqtt_ports])}
    partitions: {partitions}
    instance: {name}
    lease_s: {lease}
    ack_wait_s: {max(2.0, lease)}
""",
    ).replace("  client_id: ", '  protocol: "3.1.1"\n  client_id: ')
    d.config.write_text(text)
    return d


async def stream_messages(urls: list[str], stream: str = "VITALMON_READINGS") -> int:
    import nats

    nc = await nats.connect(urls)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    finally:
        await nc.close()


OWNED = 'vitalmon_jetstream_partitions_owned{stream="VITALMON_READINGS"}'


def owned(daemons: list[Daemon]) -> int:
    """Partitions the daemons own between them (their /metrics)."""
    return int(sum(d.metrics().get(OWNED, 0) for d in daemons))


def run_load(
    port: int,
    packets: list[bytes],
    daemons: list[Daemon],
    readings: int,
    cluster: NatsCluster | None,
    n_messages: int,
    timeout: float,
) -> dict[str, Any]:
    before = sum(d.committed() for d in daemons)
    pub = RawPublisher(port, f"bench-{os.getpid()}-{time.monotonic_ns()}")
    t0 = time.monotonic()
    pub.send(packets)
    sent = time.monotonic() - t0
    captured = None
    if cluster is not None:
        base = asyncio.run(stream_messages(cluster.urls)) - n_messages
        wait_for(
            lambda: asyncio.run(stream_messages(cluster.urls)) >= base + n_messages,
            timeout,
            "the stream holds every message",
            every=0.2,
        )
        captured = time.monotonic() - t0
    wait_for(
        lambda: sum(d.committed() for d in daemons) - before >= readings,
        timeout,
        "every reading committed",
        every=0.1,
    )
    took = time.monotonic() - t0
    pub.close()
    return {
        "readings_per_s": readings / took,
        "messages_per_s": n_messages / took,
        "seconds": took,
        "publish_seconds": sent,
        "captured_per_s": None if captured is None else n_messages / captured,
    }


def alert_latency(pub_port: int, alert_port: int, probes: int, tag: str) -> list[float]:
    """Seconds from the publish of the reading that raised each probe bed's spo2.low to
    the alert's arrival on MQTT (see the module's docstring)."""
    from datetime import datetime

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    arrived: dict[str, tuple[float, float]] = {}
    ready = threading.Event()

    def on_message(_c: Any, _u: Any, m: Any) -> None:
        doc = json.loads(m.payload)
        if doc.get("rule") == "spo2.low" and doc.get("state") == "active":
            at = datetime.fromisoformat(doc["at"]).timestamp()
            arrived.setdefault(doc["bed"], (time.monotonic(), at))

    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"lat-sub-{tag}")

    def on_connect(c: Any, *_: Any) -> None:
        c.subscribe("alerts/#", qos=1)

    sub.on_connect = on_connect
    sub.on_subscribe = lambda *_: ready.set()
    sub.on_message = on_message
    sub.connect("127.0.0.1", alert_port)
    sub.loop_start()
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"lat-pub-{tag}")
    pub.connect("127.0.0.1", pub_port)
    pub.loop_start()
    out = []
    try:
        assert ready.wait(30), "the alert subscriber did not subscribe"
        for i in range(probes):
            bed = f"lat-{tag}-{i}"
            t0 = round(time.time() - 60)
            sent: dict[float, float] = {}
            for s in range(30):
                ts = float(t0 + s)
                sent[ts] = time.monotonic()
                doc = {"ts": ts, "spo2": 82, "hr": 80}
                pub.publish(f"vitals/icu/{bed}/mon1", json.dumps(doc), qos=1)
                time.sleep(0.02)
            got = wait_for(lambda b=bed: arrived.get(b), 30, f"{bed}'s spo2.low", every=0.005)
            came, at = got
            out.append(came - sent[min(sent, key=lambda t: abs(t - at))])
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.loop_stop()
        sub.disconnect()
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "scale")
    p.add_argument("--beds", type=int, default=None, help="beds (default 500; quick 50)")
    p.add_argument("--seconds", type=int, default=None, help="event time s (default 20; quick 4)")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--lease", type=float, default=2.0, help="lease_s of the instances")
    p.add_argument("--probes", type=int, default=None, help="alert latency probes (20; quick 3)")
    args = p.parse_args(argv)
    if find_nats_server() is None:
        print(
            "scale.py: nats-server is not installed (pip install -e '.[cluster]')", file=sys.stderr
        )
        return 2
    beds = args.beds or (50 if args.quick else 500)
    seconds = args.seconds or (4 if args.quick else 20)
    probes = args.probes or (3 if args.quick else 20)
    timeout = 120.0 if args.quick else 600.0
    msgs = messages(beds, seconds)
    packets = encode_all(msgs)
    readings = len(msgs) * len(SIX)
    result: dict[str, Any] = {
        "machine": machine(),
        "beds": beds,
        "seconds": seconds,
        "messages": len(msgs),
        "readings": readings,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="vitalmon-scale-") as tmp:
        work = Path(tmp)
        with (
            Broker(work / "mosquitto") as broker,
            Daemon(work / "single", broker.port).start() as d,
        ):
            run = run_load(broker.port, packets, [d], readings, None, len(msgs), timeout)
            run["alert_latency_s"] = alert_latency(broker.port, broker.port, probes, "m")
            result["runs"].append({"variant": "mosquitto", "instances": 1, **run})
        for k in (1, 2, 3):
            cluster = NatsCluster(work / f"nats{k}", nodes=3)
            cluster.start()
            daemons = [
                jetstream_daemon(work / f"js{k}", cluster, name, args.partitions, args.lease)
                for name in "abc"[:k]
            ]
            try:
                for d in daemons:
                    d.start()
                wait_for(
                    lambda ds=daemons: owned(ds) == args.partitions,
                    60,
                    "every partition owned",
                    every=0.2,
                )
                run = run_load(
                    cluster.mqtt_ports[1], packets, daemons, readings, cluster, len(msgs), timeout
                )
                run["alert_latency_s"] = alert_latency(
                    cluster.mqtt_ports[1], cluster.mqtt_ports[0], probes, f"n{k}"
                )
                result["runs"].append({"variant": "nats", "instances": k, **run})
                if k == 3:
                    victim = daemons[0]
                    assert victim.proc is not None
                    victim.proc.send_signal(signal.SIGKILL)
                    victim.proc.wait()
                    t0 = time.monotonic()
                    rest = daemons[1:]
                    wait_for(
                        lambda ds=rest: owned(ds) == args.partitions,
                        60,
                        "takeover",
                        every=0.05,
                    )
                    result["takeover_s"] = time.monotonic() - t0
                    result["lease_s"] = args.lease
            finally:
                for d in daemons:
                    d.stop()
                cluster.stop()
    base = result["runs"][0]["readings_per_s"]
    rows = []
    for r in result["runs"]:
        cap = r["captured_per_s"]
        rows.append(
            [
                f"{r['variant']}, {r['instances']} instance" + ("s" if r["instances"] > 1 else ""),
                f"{r['readings_per_s']:,.0f}",
                f"{r['messages_per_s']:,.0f}",
                "-" if cap is None else f"{cap:,.0f}",
                f"{r['readings_per_s'] / base:.2f}x",
                f"{percentile(r['alert_latency_s'], 50) * 1000:.1f}",
                f"{max(r['alert_latency_s']) * 1000:.1f}",
            ]
        )
    print(
        f"scale: {beds} beds x {seconds} s, {len(msgs):,} messages, {readings:,} readings; "
        f"{args.partitions} partitions, replicas 3"
    )
    print(machine_line(result["machine"]))
    print(
        table(
            [
                "variant",
                "readings/s",
                "messages/s",
                "captured msg/s",
                "vs mosquitto",
                "alert p50 ms",
                "alert max ms",
            ],
            rows,
        )
    )
    if "takeover_s" in result:
        print(
            f"takeover after SIGKILL of 1 of 3 instances: {result['takeover_s']:.2f} s "
            f"(lease_s {args.lease:g})"
        )
    if args.json:
        write_json(Path(args.json), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
