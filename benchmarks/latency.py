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

``--journal normal,slow,stalled`` measures the same with the daemon's journal (its SQLite
store) slowed down from outside, as a slow or hung disk would, a fresh daemon for each
(bed count, mode). A thread of this process with a connection of its own to the store file
takes SQLite's write lock (``BEGIN IMMEDIATE``) for the whole measurement (from its first
probe to its last; released before the grace period in which late answers are still
counted):

* ``normal``: not at all (the default, and the only mode unless asked for);
* ``slow``: held ``--slow-hold`` (0.2 s), released (``ROLLBACK``), ``--slow-gap`` (0.05 s)
  free, again: each of the daemon's commits waits in SQLite's busy handler, the journal's
  throughput drops;
* ``stalled``: held throughout. The daemon's commits wait in the busy handler (its
  timeout is 30 s; after it they fail with "database is locked", the store raises
  ``store.failed`` and degrades). The stalled measurement lasts at most ``--stall-max``
  (20 s) so that it stays in the blocked-commit phase; the daemon's warnings (its log)
  are printed below the table, after the time the lock was taken.

Before the load starts, every load bed is filled (``common.Fill``, ward ``load``):
``--fill-s`` of event time (default: what the default rules need, 4 h 5 min), a reading
every ``--fill-step`` (300) s per series, fast, ending 2 s behind the wall clock, so the
trend and baseline rules have their full span of history when the live load takes over.
``--synchronous normal,full``: a daemon with each ``store.synchronous`` per bed count.

Every probe sent counts: ``sent/lost`` (lost: no answer by the end of the grace period),
and the percentiles ``lost=inf`` count a lost probe as infinitely late (the answered
ones' percentiles are shown too). Targets (issue 16): at 1,000 beds, ours' p99 (lost=inf)
<= the broker's own round-trip p99 (lost=inf) + 2 ms, measured in the same run; at 5,000
beds the daemon keeps up (committed >= 98 % of the readings offered).

``silent s`` is the longest stretch during the measurement with no alert arriving
although probes went out every ``--interval``; the JSON has every probe's send time and
latency (``timeline``).

    python benchmarks/latency.py [--beds 100,1000,5000] [--seconds 15] [--quick] [--json FILE]
                                 [--journal normal,slow,stalled] [--synchronous normal,full]
                                 [--fill-s S] [--fill-step S]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import random
import sqlite3
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from common import (
    SIX,
    Broker,
    Daemon,
    Fill,
    Load,
    RawPublisher,
    default_fill_s,
    fill_line,
    fill_options,
    forget_session,
    machine,
    machine_line,
    parser,
    percentile,
    table,
    target,
    targets_table,
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
#: An alert event's ``at`` may be up to this many ms before its probe's ts: the daemon
#: clamps a reading's time to the receive time of its batch (``Engine``: never ahead of
#: the wall clock), and a batch's receive time is its first message's.
CLAMP_MS = 5
HISTOGRAM = "vitalmon_ingest_to_alert_seconds"
JOURNAL_MODES = ("normal", "slow", "stalled")
#: The daemon's SQLite busy timeout (``monitor.sinks.sqlite.connect``): a commit waiting
#: longer for the write lock fails ("database is locked") and the store degrades.
BUSY_TIMEOUT_S = 30.0
SYNCHRONOUS = ("normal", "full")
FILL_STEP_S = 300.0
QUICK_FILL_S = 600.0
#: target: ours' p99 <= the broker's p99 + this, at TARGET_BEDS
TARGET_MARGIN_MS = 2.0
TARGET_BEDS = 1000
#: target: not saturated (kept up >= TARGET_KEPT_UP_PCT) at SATURATION_BEDS
SATURATION_BEDS = 5000
TARGET_KEPT_UP_PCT = 98.0


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
        self.clamped = 0  # alert events whose ``at`` came before their probe's ts

    def _on_message(self, _c: paho.Client, _u: object, m: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        if m.topic == ECHO_TOPIC:
            with self._lock:
                self.got.setdefault("echo:" + m.payload.decode(), now)
            return
        at = json.loads(m.payload).get("at")
        if not isinstance(at, str):
            return
        self.take(round(datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() * 1000), now)

    def take(self, at_ms: int, now: float) -> None:
        """An alert event whose ``at`` is ``at_ms`` (epoch ms) arrived at ``now``."""
        with self._lock:
            # the event's ``at`` is the probe's ts, or earlier when the daemon clamped it
            # to its receive time (a batch's, which began before the probe arrived)
            for ahead in range(CLAMP_MS + 1):
                key = f"alert:{at_ms + ahead}"
                if key in self.sent and key not in self.got:
                    self.got[key] = now
                    self.clamped += ahead > 0
                    return

    def ours(self) -> None:
        ms = int(time.time() * 1000)  # (never ahead of the wall clock, as a device's is not)
        self.n_ours += 1  # raise, resolve, raise, ...
        payload = json.dumps(
            {"ts": ms / 1000, "mode": "intermittent", "temp": 41.0 if self.n_ours % 2 else 37.0}
        )
        self.sent[f"alert:{ms}"] = time.perf_counter()
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

    def timeline(self, kind: str, t0: float) -> list[tuple[float, float | None]]:
        """-> (publish time from ``t0`` in s, latency in ms or None: lost) per probe."""
        with self._lock:
            got = dict(self.got)
        return [
            (round(t - t0, 4), round((got[k] - t) * 1000, 2) if k in got else None)
            for k, t in self.sent.items()
            if k.startswith(kind)
        ]

    def silence(self, kind: str, t0: float, t1: float) -> float:
        """The longest stretch of ``t0``..``t1`` (perf_counter) in which no answer of
        ``kind`` arrived, in seconds."""
        with self._lock:
            arrivals = sorted(t for k, t in self.got.items() if k.startswith(kind) and t0 < t < t1)
        return max(b - a for a, b in itertools.pairwise([t0, *arrivals, t1]))

    def pending(self) -> int:
        with self._lock:
            return sum(1 for k in self.sent if k not in self.got)

    def close(self) -> None:
        for c in (self.pub, self.sub):
            c.disconnect()
            c.loop_stop()


class JournalBlocker:
    """A slow (``slow``) or hung (``stalled``) disk under the daemon's journal, from
    outside: a thread with a SQLite connection of its own to the store file takes the
    write lock (``BEGIN IMMEDIATE``) and releases it (``ROLLBACK``, nothing written), so
    the daemon's commits wait in SQLite's busy handler. ``normal``: does nothing."""

    def __init__(self, db: Path, mode: str, hold_s: float, gap_s: float) -> None:
        if mode not in JOURNAL_MODES:
            raise ValueError(f"journal mode {mode!r}: one of {', '.join(JOURNAL_MODES)}")
        self.db, self.mode, self.hold_s, self.gap_s = db, mode, hold_s, gap_s
        self.cycles = 0  # times the lock was taken and released
        self.held_s = 0.0  # in all
        self.waits: list[float] = []  # s each BEGIN IMMEDIATE waited (the daemon had it)
        self.error: str | None = None
        self.started = 0.0  # monotonic, when the lock was first held
        self._stop = threading.Event()
        self._locked = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> JournalBlocker:
        if self.mode == "normal":
            return self
        self._thread = threading.Thread(target=self._run, name="journal-blocker", daemon=True)
        self._thread.start()
        if not self._locked.wait(15) or self.error is not None:
            self.stop()
            raise RuntimeError(f"could not take the store's write lock: {self.error}")
        return self

    def _run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=10, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.is_set():
                asked = time.monotonic()
                conn.execute("BEGIN IMMEDIATE")
                got = time.monotonic()
                self.waits.append(got - asked)
                if not self._locked.is_set():
                    self.started = got
                    self._locked.set()
                self._stop.wait(self.hold_s if self.mode == "slow" else None)
                conn.execute("ROLLBACK")
                self.held_s += time.monotonic() - got
                self.cycles += 1
                if self._stop.wait(self.gap_s):
                    break
        except sqlite3.Error as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self._locked.set()
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()

    def stop(self) -> dict[str, Any]:
        """Release the lock (if held); -> what was done."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(15)
            self._thread = None
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode != "normal":
            out.update(
                cycles=self.cycles,
                held_s=round(self.held_s, 3),
                error=self.error,
                hold_s=self.hold_s if self.mode == "slow" else None,
                gap_s=self.gap_s if self.mode == "slow" else None,
            )
            if self.waits:
                out["lock_wait_ms"] = {
                    "p50": round(1000 * percentile(self.waits, 50), 1),
                    "max": round(1000 * max(self.waits), 1),
                }
        return out


def daemon_log(path: Path) -> list[str]:
    """The daemon's log lines (level warning and above: all it writes in a benchmark)."""
    try:
        return [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def metrics(d: Daemon) -> dict[str, float]:
    """The daemon's metrics; {} when it does not answer (it died: the log says why)."""
    try:
        return d.metrics()
    except OSError:
        return {}


def committed(d: Daemon) -> int | None:
    m = metrics(d)
    return int(m.get("vitalmon_readings_committed_total", 0)) if m else None


def histogram(m: dict[str, float]) -> dict[str, float]:
    """The daemon's own ``vitalmon_ingest_to_alert_seconds`` (message taken in by the
    source -> rules evaluated): its count and sum."""
    return {"count": m.get(HISTOGRAM + "_count", 0.0), "sum": m.get(HISTOGRAM + "_sum", 0.0)}


def stats(ms: list[float], missing: int) -> dict[str, Any]:
    """Latencies of the answered probes and the count of lost ones -> n (answered),
    ``missing`` (lost), ``sent``; percentiles of the answered (``p50_ms`` ...), and with
    every lost probe counted as infinitely late (``p50_ms_lost_inf`` ...: null when
    infinite, i.e. when more than 1 - p of the probes were lost)."""
    out: dict[str, Any] = {"n": len(ms), "missing": missing, "sent": len(ms) + missing}
    if not ms:
        return out
    with_lost = ms + [math.inf] * missing
    for p in (50, 95, 99):
        out[f"p{p}_ms"] = percentile(ms, p)
        v = percentile(with_lost, p)
        out[f"p{p}_ms_lost_inf"] = None if v == math.inf else v
    out["max_ms"] = max(ms)
    return out


def probe_options(p: argparse.ArgumentParser, beds: str, fill_step: float) -> None:
    """The options latency.py and peer.py share: the load, the probes, the fill."""
    p.add_argument("--beds", default=beds, help="background load, beds at 1 Hz (comma-separated)")
    p.add_argument("--seconds", type=float, default=15.0, help="measurement per run")
    p.add_argument("--warmup", type=float, default=5.0, help="live load before measuring")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between probes")
    fill_options(p, fill_step)


def fill_load(d: Daemon, port: int, beds: int, fill: Fill | None) -> dict[str, Any] | None:
    """Fill the load's beds (ward ``load``) in ``d`` up to 2 s behind the clock."""
    if fill is None:
        return None
    pub = RawPublisher(port, f"{d.client_id}-fill")
    try:
        return fill.run(
            pub, [str(b) for b in range(1, beds + 1)], lambda: sum(d.accounted()), _behind
        )
    finally:
        pub.drain()
        pub.close()


def _behind() -> float:
    return time.time() - 2


def run_beds(
    work: Path,
    port: int,
    beds: int,
    warmup: float,
    seconds: float,
    interval: float,
    journal: str = "normal",
    hold_s: float = 0.2,
    gap_s: float = 0.05,
    grace_s: float = GRACE_S,
    fill: Fill | None = None,
    synchronous: str = "normal",
) -> dict[str, Any]:
    name = f"beds-{beds}-{journal}-{synchronous}"
    client_id = f"bench-lat-{name}"
    daemon = Daemon(work / name, port, client_id=client_id, rules=RULES, synchronous=synchronous)
    with daemon.start() as d:
        filled = fill_load(d, port, beds, fill)
        load = Load(port, beds)
        try:
            probes = Probes(port)
            try:
                time.sleep(warmup)
                m0 = d.metrics()
                h0 = histogram(m0)
                blocker = JournalBlocker(d.db, journal, hold_s, gap_s)
                c0 = committed(d)
                blocker.start()
                locked_wall = time.time()
                t0, p0 = time.monotonic(), time.perf_counter()
                next_at = time.monotonic()
                rng = random.Random(3)  # jittered: never in step with the load's ticks
                try:
                    while time.monotonic() - t0 < seconds:
                        probes.ours()
                        time.sleep(interval * rng.uniform(0.25, 0.75))
                        probes.echo()
                        next_at += interval * rng.uniform(0.5, 1.5)
                        time.sleep(max(0.0, next_at - time.monotonic()))
                    c1, t1, p1 = committed(d), time.monotonic(), time.perf_counter()
                finally:
                    lock = blocker.stop()  # released: late answers still come in the grace
                with contextlib.suppress(RuntimeError):  # what is left is counted as lost
                    wait_for(lambda: probes.pending() == 0, grace_s, "the last probes")
                m1 = metrics(d)
                h1 = histogram(m1)
                ours_ms, ours_missing = probes.latencies("alert:")
                clamped = probes.clamped
                echo_ms, echo_missing = probes.latencies("echo:")
                silent = {
                    "ours_s": probes.silence("alert:", p0, p1),
                    "baseline_s": probes.silence("echo:", p0, p1),
                }
                timeline = {
                    "ours": probes.timeline("alert:", p0),
                    "baseline": probes.timeline("echo:", p0),
                }
            finally:
                probes.close()
        finally:
            load_summary = load.stop()
        # None: still running when the measurement ended (then stopped by us)
        exited = d.proc.poll() if d.proc is not None else None
    log_lines = daemon_log(daemon.logfile)
    forget_session(port, client_id)
    offered = beds * len(SIX)  # readings/s
    through = {
        name: m1.get(f"vitalmon_readings_{name}_total", 0.0)
        - m0.get(f"vitalmon_readings_{name}_total", 0.0)
        for name in ("received", "committed", "duplicates")
        if m1
    }
    rate = (c1 - c0) / (t1 - t0) if c0 is not None and c1 is not None else 0.0
    inside = {"count": h1["count"] - h0["count"], "sum_s": h1["sum"] - h0["sum"]}
    if inside["count"]:
        inside["mean_ms"] = 1000 * inside["sum_s"] / inside["count"]
    return {
        "beds": beds,
        "journal": journal,
        "synchronous": synchronous,
        "fill": filled,
        "offered_readings_per_s": offered,
        "committed_readings_per_s": rate,
        "kept_up_pct": 100 * rate / offered if offered else 100.0,
        "ours": stats(ours_ms, ours_missing),
        "baseline": stats(echo_ms, echo_missing),
        "daemon_ingest_to_alert": inside,
        # from the warm-up's end to the end of the grace period: what the daemon took in
        # and committed (a stalled journal's backlog comes in after the release)
        "through_grace": through,
        # readings taken in but not evaluated (late, history, ...) from the warm-up's end
        # to the end of the grace period, by reason
        "not_evaluated": {
            k.partition("{")[2].rstrip("}"): v - m0.get(k, 0.0)
            for k, v in m1.items()
            if k.startswith("vitalmon_readings_not_evaluated_total") and v - m0.get(k, 0.0)
        },
        "ours_at_clamped": clamped,
        "load": load_summary,
        "measured_s": t1 - t0,
        "silent": silent,
        "lock": lock,
        "lock_started_at": locked_wall if journal != "normal" else None,
        "daemon_exited": exited,
        "daemon_log": log_lines,
        "timeline": timeline,
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "latency")
    probe_options(p, "100,1000,5000", FILL_STEP_S)
    p.add_argument(
        "--synchronous",
        default=",".join(SYNCHRONOUS),
        help="the daemon's store.synchronous, a daemon each: normal, full",
    )
    p.add_argument(
        "--journal",
        default="normal",
        help="journal modes, comma-separated: normal, slow (write lock held "
        "--slow-hold s, free --slow-gap s, again), stalled (held throughout)",
    )
    p.add_argument("--slow-hold", type=float, default=0.2, help="slow: s the lock is held")
    p.add_argument("--slow-gap", type=float, default=0.05, help="slow: s it is free between")
    p.add_argument(
        "--grace",
        type=float,
        default=GRACE_S,
        help="s after the probes in which late answers still count",
    )
    p.add_argument(
        "--stall-max",
        type=float,
        default=20.0,
        help="stalled: measure at most this long (the daemon's commits fail "
        f"after its {BUSY_TIMEOUT_S:g} s busy timeout)",
    )
    args = p.parse_args(argv)
    beds = [int(b) for b in args.beds.split(",")]
    modes = [m.strip() for m in args.journal.split(",") if m.strip()]
    if bad := [m for m in modes if m not in JOURNAL_MODES]:
        p.error(f"--journal: unknown mode(s) {', '.join(bad)} (one of {', '.join(JOURNAL_MODES)})")
    syncs = [m.strip() for m in args.synchronous.split(",") if m.strip()]
    if bad := [m for m in syncs if m not in SYNCHRONOUS]:
        p.error(f"--synchronous: {', '.join(bad)} (normal or full)")
    seconds, warmup = args.seconds, args.warmup
    fill_s = default_fill_s() if args.fill_s is None else args.fill_s
    if args.quick:
        beds, seconds, warmup = [200], 2.0, 1.0
        fill_s = QUICK_FILL_S if args.fill_s is None else fill_s
    fill = Fill(fill_s, args.fill_step, SIX, ward="load") if fill_s > 0 else None
    result: dict[str, Any] = {
        "machine": machine(),
        "fill_s": fill_s,
        "fill_step_s": args.fill_step,
        "synchronous": syncs,
        "seconds": seconds,
        "warmup_s": warmup,
        "interval_s": args.interval,
        "journal": modes,
        "slow_hold_s": args.slow_hold,
        "slow_gap_s": args.slow_gap,
        "stall_max_s": args.stall_max,
        "busy_timeout_s": BUSY_TIMEOUT_S,
        "grace_s": args.grace,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="vitalmon-latency-") as tmp:
        work = Path(tmp)
        with Broker(work / "broker") as broker:
            for n, mode, sync in itertools.product(beds, modes, syncs):
                secs = min(seconds, args.stall_max) if mode == "stalled" else seconds
                result["runs"].append(
                    run_beds(
                        work,
                        broker.port,
                        n,
                        warmup,
                        secs,
                        args.interval,
                        mode,
                        args.slow_hold,
                        args.slow_gap,
                        args.grace,
                        fill,
                        sync,
                    )
                )
                print(f"{n} beds, journal {mode}, {sync}: done", file=sys.stderr, flush=True)
    result["targets"] = targets(result)
    print(report(result))
    write_json(args.json, result)
    return 0


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """p99 at TARGET_BEDS (or the largest bed count run) and saturation at
    SATURATION_BEDS (or the largest), journal normal, per synchronous mode."""
    runs = [r for r in result["runs"] if r.get("journal", "normal") == "normal"]
    if not runs:
        return []
    counts = {r["beds"] for r in runs}
    p99_beds = TARGET_BEDS if TARGET_BEDS in counts else max(counts)
    sat_beds = SATURATION_BEDS if SATURATION_BEDS in counts else max(counts)
    out = []
    for r in runs:
        if r["beds"] == p99_beds:
            base = r["baseline"].get("p99_ms_lost_inf")
            ours = r["ours"].get("p99_ms_lost_inf", None) if r["ours"].get("n") else None
            goal = (base if base is not None else math.inf) + TARGET_MARGIN_MS
            t = target(
                f"latency p99 (lost=inf), {r['beds']:,} beds, synchronous "
                f"{r.get('synchronous', 'normal')}: <= broker p99 + {TARGET_MARGIN_MS:g} ms",
                goal,
                math.inf if ours is None else ours,
                "ms",
                at_least=False,
            )
            t["broker_p99_ms"] = base
            t["margin_ms"] = None if ours is None else goal - ours
            out.append(t)
        if r["beds"] == sat_beds:
            out.append(
                target(
                    f"latency: {r['beds']:,} beds not saturated (kept up), synchronous "
                    f"{r.get('synchronous', 'normal')}",
                    TARGET_KEPT_UP_PCT,
                    r["kept_up_pct"],
                    "%",
                )
            )
    return out


def _ms(s: dict[str, Any], key: str) -> str:
    if key.endswith("_lost_inf") and s.get("missing") and s.get(key) is None:
        return "inf"  # more than 1 - p of the probes were lost
    v = s.get(key)
    return f"{v:.1f}" if v is not None else "-"


#: Daemon log lines printed per run under the table (the JSON has them all).
LOG_LINES = 12


def report(result: dict[str, Any]) -> str:
    rows = []
    modes = result.get("journal", ["normal"])
    for r in result["runs"]:
        o, b = r["ours"], r["baseline"]
        rows.append(
            [
                f"{r['beds']:,}",
                r.get("synchronous", "normal"),
                r.get("journal", "normal"),
                f"{r['offered_readings_per_s']:,}",
                f"{r['kept_up_pct']:.0f}",
                f"{o['n'] + o['missing']}/{o['missing']}",
                _ms(o, "p50_ms"),
                _ms(o, "p95_ms"),
                _ms(o, "p99_ms"),
                _ms(o, "p99_ms_lost_inf"),
                _ms(o, "max_ms"),
                f"{r['silent']['ours_s']:.2f}",
                _ms(r["daemon_ingest_to_alert"], "mean_ms"),
                f"{b['n'] + b['missing']}/{b['missing']}",
                _ms(b, "p50_ms"),
                _ms(b, "p95_ms"),
                _ms(b, "p99_ms"),
                _ms(b, "p99_ms_lost_inf"),
                _ms(b, "max_ms"),
                f"{r['silent']['baseline_s']:.2f}",
            ]
        )
    lines = [
        machine_line(result["machine"]),
        f"background load: beds at 1 Hz, six vitals per message, QoS 1; {result['warmup_s']:g} s "
        f"warm-up, then {result['seconds']:g} s of probes every {result['interval_s']:g} s "
        "(ours and baseline alternately); milliseconds",
        "ours: temp probe published -> its alert event received on alerts/probe/1; "
        "baseline: publish -> receive on bench/echo (same clients, same broker, same load)",
        "in-daemon mean: the daemon's vitalmon_ingest_to_alert_seconds over the probes "
        "(message taken in by the source -> rules evaluated; sum / count)",
        "silent s: the longest stretch of the measurement in which no answer arrived",
        "sent/lost: probes sent / not answered by the end of the grace period; p50-p99 and max "
        "of the answered ones; p99 lost=inf: with every lost probe counted as infinitely late; "
        "sync: the daemon's store.synchronous",
        fill_line(max(result["runs"], key=lambda r: r["beds"]).get("fill"))
        + " (per bed count and daemon; ward load, the background load's beds)",
    ]
    if modes != ["normal"]:
        lines.append(
            f"journal: normal = untouched; slow = the store's write lock taken from outside "
            f"(BEGIN IMMEDIATE) {result['slow_hold_s']:g} s, free {result['slow_gap_s']:g} s, "
            f"again; stalled = held throughout (at most {result['stall_max_s']:g} s; the "
            f"daemon's busy timeout is {result['busy_timeout_s']:g} s); released at the end "
            f"of the probes, late answers counted for {result['grace_s']:g} s more"
        )
    lines += [
        "",
        table(
            [
                "beds",
                "sync",
                "journal",
                "readings/s",
                "kept up %",
                "ours sent/lost",
                "p50",
                "p95",
                "p99",
                "p99 lost=inf",
                "max",
                "silent s",
                "in-daemon mean",
                "base sent/lost",
                "p50",
                "p95",
                "p99",
                "p99 lost=inf",
                "max",
                "silent s",
            ],
            rows,
        ),
    ]
    for r in result["runs"]:
        lock, logs = r.get("lock", {}), r.get("daemon_log", [])
        if r.get("journal", "normal") == "normal" and not logs and r.get("daemon_exited") is None:
            continue
        head = f"\n{r['beds']:,} beds, journal {r.get('journal', 'normal')}:"
        if lock.get("cycles"):
            head += (
                f" lock taken {lock['cycles']} time(s), held {lock['held_s']:.1f} s of "
                f"{r['measured_s']:.1f} s"
            )
            if "lock_wait_ms" in lock:
                head += (
                    f"; taking it waited for the daemon p50 {lock['lock_wait_ms']['p50']} "
                    f"ms, max {lock['lock_wait_ms']['max']} ms"
                )
        if lock.get("error"):
            head += f"; blocker failed: {lock['error']}"
        if r.get("daemon_exited") is not None:
            head += f"; THE DAEMON EXITED on its own (code {r['daemon_exited']})"
        lines.append(head)
        started = r.get("lock_started_at")
        if started:
            lines.append(f"  lock taken at {iso(started)}")
        lines.append(f"  daemon log ({len(logs)} line(s)):" if logs else "  daemon log: empty")
        lines += [f"    {line}" for line in logs[:LOG_LINES]]
        if len(logs) > LOG_LINES:
            lines.append(f"    ... {len(logs) - LOG_LINES} more in the JSON")
    lines += ["", targets_table(result.get("targets", []))]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
