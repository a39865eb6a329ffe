"""Latency: an alert-triggering reading published -> its alert received, under background load,
vs the bare publish -> subscribe round trip on the same broker under the same load.

For each bed count (100, 1,000, 5,000): a fresh daemon; a background load in a process
of its own (``common.py load``: every bed publishes one object with six normal vitals
once a second, QoS 1, event time = now; the beds are spread over 100 sends a second);
a warm-up; then for ``--seconds`` a probe every ``--interval`` on average (jittered),
alternately:

* ours: ``{"ts": now, "mode": "intermittent", "temp": 41.0}`` then ``37.0`` to
  ``vitals/probe/1/mon1``. A spot thermometer's reading (``mode`` intermittent) alarms
  on its own (``delay_s`` 0 for temp), so each probe raises or resolves the
  alert (flapping detection off): the clock runs from the publish until that event
  arrives on ``alerts/probe/1`` (matched by its ``at``);
* baseline: a message to ``bench/echo`` (not a vitals topic), received by the same
  subscriber: the broker's own round trip under the same load.

Probe publisher and subscriber are paho clients in this process (QoS 1), the same for
both. ``kept up``: readings the daemon committed during the measurement / readings the
load offered; below 100 % its backlog (and the probes' latency) grows without bound.

    python benchmarks/latency.py [--beds 100,1000,5000] [--seconds 15] [--quick] [--json FILE]
"""

from __future__ import annotations

import contextlib
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from common import (
    SIX,
    Broker,
    Daemon,
    Load,
    machine,
    machine_line,
    parser,
    percentile,
    table,
    wait_for,
    write_json,
)
from paho.mqtt.enums import CallbackAPIVersion

from monitor.model import iso

RULES = """  flapping:
    enabled: false
  thresholds:
    temp: {delay_s: 0, confirm: 1}
"""
PROBE_TOPIC = "vitals/probe/1/mon1"
ALERT_TOPIC = "alerts/probe/1"
ECHO_TOPIC = "bench/echo"
GRACE_S = 10.0
HISTOGRAM = "vitalmon_ingest_to_alert_seconds"


class Probes:
    """Publishes probes and times their answers (paho's thread records arrivals)."""

    def __init__(self, port: int) -> None:
        self.sent: dict[str, float] = {}  # key -> perf_counter at publish
        self.got: dict[str, float] = {}  # key -> perf_counter at arrival
        self._lock = threading.Lock()
        ready = threading.Event()
        self.sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe-sub")
        self.sub.on_connect = lambda c, *_: c.subscribe([(ALERT_TOPIC, 1), (ECHO_TOPIC, 1)])
        self.sub.on_subscribe = lambda *_: ready.set()
        self.sub.on_message = self._on_message
        self.sub.connect("127.0.0.1", port)
        self.sub.loop_start()
        self.pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe-pub")
        self.pub.max_inflight_messages_set(1000)
        self.pub.connect("127.0.0.1", port)
        self.pub.loop_start()
        if not ready.wait(10):
            raise RuntimeError("probe subscriber did not subscribe")
        self.n_ours = 0
        self.n_echo = 0

    def _on_message(self, _c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        if m.topic == ECHO_TOPIC:
            key = "echo:" + m.payload.decode()
        else:
            key = "alert:" + json.loads(m.payload)["at"]
        with self._lock:
            self.got.setdefault(key, now)

    def ours(self) -> None:
        ts = round(time.time(), 3)
        self.n_ours += 1  # raise, resolve, raise, ...
        payload = json.dumps(
            {"ts": ts, "mode": "intermittent", "temp": 41.0 if self.n_ours % 2 else 37.0}
        )
        self.sent["alert:" + iso(ts)] = time.perf_counter()
        self.pub.publish(PROBE_TOPIC, payload, qos=1)

    def echo(self) -> None:
        self.n_echo += 1
        key = str(self.n_echo)
        self.sent["echo:" + key] = time.perf_counter()
        self.pub.publish(ECHO_TOPIC, key, qos=1)

    def latencies(self, kind: str) -> tuple[list[float], int]:
        """-> (milliseconds of the answered probes, unanswered probes)."""
        with self._lock:
            got = dict(self.got)
        out = [(got[k] - t) * 1000 for k, t in self.sent.items() if k.startswith(kind) and k in got]
        missing = sum(1 for k in self.sent if k.startswith(kind) and k not in got)
        return out, missing

    def pending(self) -> int:
        with self._lock:
            return sum(1 for k in self.sent if k not in self.got)

    def close(self) -> None:
        for c in (self.pub, self.sub):
            c.disconnect()
            c.loop_stop()


def histogram(m: dict[str, float]) -> dict[str, float]:
    """The daemon's own ``vitalmon_ingest_to_alert_seconds`` (message taken in by the
    source -> rules evaluated): its count and sum."""
    return {"count": m.get(HISTOGRAM + "_count", 0.0), "sum": m.get(HISTOGRAM + "_sum", 0.0)}


def stats(ms: list[float], missing: int) -> dict[str, Any]:
    if not ms:
        return {"n": 0, "missing": missing}
    return {
        "n": len(ms),
        "missing": missing,
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
    }


def run_beds(work: Path, port: int, beds: int, warmup: float, seconds: float,
             interval: float) -> dict[str, Any]:  # fmt: skip
    with Daemon(work / f"beds-{beds}", port, client_id=f"bench-lat-{beds}",
                rules=RULES).start() as d:  # fmt: skip
        load = Load(port, beds)
        try:
            probes = Probes(port)
            try:
                time.sleep(warmup)
                h0 = histogram(d.metrics())
                c0, t0 = d.committed(), time.monotonic()
                next_at = time.monotonic()
                rng = random.Random(3)  # jittered: never in step with the load's ticks
                while time.monotonic() - t0 < seconds:
                    probes.ours()
                    time.sleep(interval * rng.uniform(0.25, 0.75))
                    probes.echo()
                    next_at += interval * rng.uniform(0.5, 1.5)
                    time.sleep(max(0.0, next_at - time.monotonic()))
                c1, t1 = d.committed(), time.monotonic()
                with contextlib.suppress(RuntimeError):  # what is left is counted as lost
                    wait_for(lambda: probes.pending() == 0, GRACE_S, "the last probes")
                h1 = histogram(d.metrics())
                ours_ms, ours_missing = probes.latencies("alert:")
                echo_ms, echo_missing = probes.latencies("echo:")
            finally:
                probes.close()
        finally:
            load_summary = load.stop()
    offered = beds * len(SIX)  # readings/s
    committed = (c1 - c0) / (t1 - t0)
    inside = {"count": h1["count"] - h0["count"], "sum_s": h1["sum"] - h0["sum"]}
    if inside["count"]:
        inside["mean_ms"] = 1000 * inside["sum_s"] / inside["count"]
    return {
        "beds": beds,
        "offered_readings_per_s": offered,
        "committed_readings_per_s": committed,
        "kept_up_pct": 100 * committed / offered if offered else 100.0,
        "ours": stats(ours_ms, ours_missing),
        "baseline": stats(echo_ms, echo_missing),
        "daemon_ingest_to_alert": inside,
        "load": load_summary,
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "latency")
    p.add_argument("--beds", default="100,1000,5000", help="bed counts, comma-separated")
    p.add_argument("--seconds", type=float, default=15.0, help="measurement per bed count")
    p.add_argument("--warmup", type=float, default=5.0, help="load before measuring")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between probes")
    args = p.parse_args(argv)
    beds = [int(b) for b in args.beds.split(",")]
    seconds, warmup = args.seconds, args.warmup
    if args.quick:
        beds, seconds, warmup = [20, 200], 2.0, 1.0
    result: dict[str, Any] = {
        "machine": machine(), "seconds": seconds, "warmup_s": warmup,
        "interval_s": args.interval, "runs": [],
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vitalmon-latency-") as tmp:
        work = Path(tmp)
        with Broker(work / "broker") as broker:
            for n in beds:
                result["runs"].append(run_beds(work, broker.port, n, warmup, seconds,
                                               args.interval))  # fmt: skip
                print(f"{n} beds: done", file=sys.stderr, flush=True)
    print(report(result))
    write_json(args.json, result)
    return 0


def _ms(s: dict[str, Any], key: str) -> str:
    return f"{s[key]:.1f}" if key in s else "-"


def report(result: dict[str, Any]) -> str:
    rows = []
    for r in result["runs"]:
        o, b = r["ours"], r["baseline"]
        rows.append([
            f"{r['beds']:,}", f"{r['offered_readings_per_s']:,}", f"{r['kept_up_pct']:.0f}",
            f"{o['n']}/{o['missing']}", _ms(o, "p50_ms"), _ms(o, "p95_ms"), _ms(o, "p99_ms"),
            _ms(o, "max_ms"), _ms(r["daemon_ingest_to_alert"], "mean_ms"),
            f"{b['n']}/{b['missing']}", _ms(b, "p50_ms"), _ms(b, "p95_ms"),
            _ms(b, "p99_ms"), _ms(b, "max_ms"),
        ])  # fmt: skip
    return "\n".join([
        machine_line(result["machine"]),
        f"background load: beds at 1 Hz, six vitals per message, QoS 1; {result['warmup_s']:g} s "
        f"warm-up, then {result['seconds']:g} s of probes every {result['interval_s']:g} s "
        "(ours and baseline alternately); milliseconds",
        "ours: temp probe published -> its alert event received on alerts/probe/1; "
        "baseline: publish -> receive on bench/echo (same clients, same broker, same load)",
        "in-daemon mean: the daemon's vitalmon_ingest_to_alert_seconds over the probes "
        "(message taken in by the source -> rules evaluated; sum / count)",
        "",
        table(
            ["beds", "readings/s", "kept up %", "ours n/lost", "p50", "p95", "p99", "max",
             "in-daemon mean", "base n/lost", "p50", "p95", "p99", "max"],
            rows,
        ),
    ])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
