"""Helpers shared by the daemon benchmarks (ingest, latency, memory; rules uses the last few).

* :class:`Broker`: a fresh ``mosquitto`` on a free loopback port (a minimal configuration,
  as ``tests/conftest.py`` has, without persistence and with large queues);
* :class:`Daemon`: ``python -m monitor run -c CFG`` as a subprocess, with its metrics
  endpoint (``/metrics``, ``/healthz``) and its RSS (``/proc/PID/status``);
* :class:`RawPublisher`: an MQTT 3.1.1 QoS 1 publisher on a plain socket that sends
  pre-encoded PUBLISH packets, with a bounded window of unacknowledged messages. It costs
  next to no CPU, so what it feeds is limited by the broker and the subscriber, not by
  itself. ``python benchmarks/common.py load ...`` runs it as a paced background load
  (beds at 1 Hz) in a process of its own;
* readings, tables, machine description, JSON output.

Run the benchmarks from the repository root, with the package installed (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROOT = HERE.parent
# Measure this working tree: its `monitor` comes before an installed (or editable) one
# that may point at another checkout. The daemon runs with `-m` from ROOT for the same.
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))
from monitor import broker as mosquitto  # noqa: E402  (after the sys.path insert)
from monitor.broker import free_port  # noqa: E402
from monitor.config import RulesConfig  # noqa: E402

MOSQUITTO = mosquitto.find_mosquitto() or "/usr/sbin/mosquitto"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"

#: vital -> (mean, standard deviation, decimals): an adult ward, never beyond a limit
#: (values are drawn within 3 standard deviations, see :func:`normal_value`).
NORMAL: dict[str, tuple[float, float, int]] = {
    "hr": (78, 6, 0),
    "spo2": (97, 0.8, 0),
    "rr": (16, 1.5, 0),
    "sbp": (122, 8, 0),
    "dbp": (76, 5, 0),
    "map": (91, 5, 0),
    "temp": (36.9, 0.2, 1),
    "etco2": (38, 2, 0),
}
SIX = ("hr", "spo2", "rr", "sbp", "dbp", "map")


def normal_value(rng: random.Random, vital: str) -> float:
    """A normal value of ``vital``, rounded as a monitor reports it, within 3 SD of its
    mean: never beyond an alarm limit, never implausible (spo2 <= 100)."""
    mean, sd, decimals = NORMAL[vital]
    x = round(min(max(rng.gauss(mean, sd), mean - 3 * sd), mean + 3 * sd), decimals)
    return int(x) if decimals == 0 else x


def fill_value(rng: random.Random, vital: str, step_s: float) -> float:
    """A value for a fill one reading every ``step_s``: normal (:func:`normal_value`) at
    1 Hz; the vital's mean when sparser. A sparse fill followed by 1 Hz readings leaves
    single readings a minute apart at the old end of a trend window, each with the leverage
    of a whole minute: one of them 3 SD off makes a slope of 25 mmHg per 30 min out of
    noise (a real trend alert: sbp.trend_down), which normal values must not raise."""
    if step_s > 1.0:
        mean, _sd, decimals = NORMAL[vital]
        return float(round(mean)) if decimals == 0 else round(mean, decimals)
    return normal_value(rng, vital)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy; RuntimeError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


#: SIGTERM, then SIGKILL after a timeout -> exit code (``monitor.broker.stop``).
stop_process = mosquitto.stop


# ------------------------------------------------------------------------ broker


class Broker:
    """A fresh mosquitto on a free loopback port, in ``workdir`` (the launcher is
    :mod:`monitor.broker`, which the tests use too)."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = mosquitto.spawn(
            self.conf,
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "set_tcp_nodelay true\n"  # README: without it QoS 1 delivery caps at ~1,150 msg/s
            "max_queued_messages 10000000\n"  # a slow subscriber's backlog is kept, not dropped
            "max_inflight_messages 1000\n"  # README's recommendation (3.1.1 subscribers)
            "persistence false\n",
            self.log,
            MOSQUITTO,
        )
        mosquitto.wait_accepting(self.proc, self.port, 10, self.log)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        mosquitto.stop(self.proc)
        self.proc = None

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# ------------------------------------------------------------------------ daemon


def daemon_config(
    workdir: Path,
    broker_port: int,
    metrics_port: int,
    client_id: str,
    rules: str = "",
    synchronous: str = "normal",
) -> Path:
    """A daemon config: one MQTT source, SQLite in ``workdir`` (``store.synchronous``:
    normal or full), metrics on loopback, the engine's capacity above what any benchmark
    offers (the default ``engine.max_beds`` 2,000 would store and not evaluate the rest of
    5,000 beds, the latency probe's among them). ``rules`` is YAML appended under
    ``rules:`` (indented by two spaces)."""
    path = workdir / f"{client_id}.yaml"
    path.write_text(
        f"""mqtt:
  host: 127.0.0.1
  port: {broker_port}
  client_id: {client_id}
sources:
  - type: mqtt
    topic: "vitals/{{ward}}/{{bed}}/{{device}}"
    qos: 1
store:
  type: sqlite
  path: {workdir / (client_id + ".db")}
  synchronous: {synchronous}
alerts:
  topic: "alerts/{{ward}}/{{bed}}"
  qos: 1
metrics:
  listen: "127.0.0.1:{metrics_port}"
engine:
  max_beds: 20000
  max_series: 200000
log:
  level: warning
rules:
  stale_after_s: 3600
{rules}"""
    )
    return path


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


class Daemon:
    """``python -m monitor run -c CFG`` as a subprocess (log level warning)."""

    def __init__(
        self,
        workdir: Path,
        broker_port: int,
        client_id: str = "vitalmon-bench",
        rules: str = "",
        synchronous: str = "normal",
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.metrics_port = free_port()
        self.client_id = client_id
        self.synchronous = synchronous
        self.config = daemon_config(
            workdir, broker_port, self.metrics_port, client_id, rules, synchronous
        )
        self.db = workdir / f"{client_id}.db"
        self.logfile = workdir / f"{client_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Daemon:
        with self.logfile.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        try:
            wait_for(self._healthy, timeout, "the daemon's /healthz", every=0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited: {self.logfile.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(self.url("/healthz"), timeout=2) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.HTTPError):
            return False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def metrics(self) -> dict[str, float]:
        """``/metrics`` -> {``name`` or ``name{labels}``: value}."""
        with urllib.request.urlopen(self.url("/metrics"), timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if m is not None:
                out[m[1] + (m[2] or "")] = float(m[3])
        return out

    def committed(self) -> int:
        return int(self.metrics().get("vitalmon_readings_committed_total", 0))

    def accounted(self) -> tuple[int, int]:
        """-> (readings committed, readings refused): together, what has been handled."""
        m = self.metrics()
        refused = sum(v for k, v in m.items() if k.startswith("vitalmon_readings_rejected_total"))
        return int(m.get("vitalmon_readings_committed_total", 0)), int(refused)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def stop(self) -> int | None:
        code = stop_process(self.proc, 20)
        self.proc = None
        return code

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def rss_kib(pid: int) -> int:
    """VmRSS of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ------------------------------------------------------------------------ publisher


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw


def publish_packet(topic: str, payload: bytes, mid: int, qos: int = 1) -> bytes:
    """An MQTT 3.1.1 PUBLISH (QoS 0 or 1, not retained); ``mid`` is 1..65535."""
    body = _string(topic) + (struct.pack("!H", mid) if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body


def encode_all(messages: Iterable[tuple[str, bytes]], qos: int = 1) -> list[bytes]:
    """(topic, payload) pairs -> PUBLISH packets with cycling message ids."""
    return [
        publish_packet(topic, payload, i % 65535 + 1, qos)
        for i, (topic, payload) in enumerate(messages)
    ]


class RawPublisher:
    """MQTT 3.1.1 QoS 1 over a plain socket: pre-encoded packets, at most ``window``
    unacknowledged (every message id in flight is distinct while window < 65535)."""

    def __init__(self, port: int, client_id: str, window: int = 1000) -> None:
        if not 0 < window < 65535:
            raise ValueError("window must be 1..65534")
        self.window = window
        self.sent = 0
        self.acked = 0
        self._cond = threading.Condition()
        self._closing = False
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # CONNECT: protocol MQTT level 4, clean session, keepalive 0 (off)
        var = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _string(client_id)
        self.sock.sendall(bytes([0x10]) + _varint(len(var)) + var)
        connack = self._recv_exact(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"broker refused the connection: {connack!r}")
        self.sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_acks, name="puback-reader", daemon=True)
        self._reader.start()

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise RuntimeError("broker closed the connection")
            buf += chunk
        return buf

    def _read_acks(self) -> None:
        rest = b""
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                with self._cond:
                    self._closing = True
                    self._cond.notify_all()
                return
            data = rest + data
            n = len(data) // 4
            rest = data[n * 4 :]
            if data[: n * 4 : 4] != b"\x40" * n:  # PUBACK is 0x40 0x02 id id
                raise RuntimeError("unexpected packet from the broker (not a PUBACK)")
            with self._cond:
                self.acked += n
                self._cond.notify_all()

    def send(self, packets: Sequence[bytes], chunk: int = 100) -> None:
        """Send every packet, waiting whenever ``window`` are unacknowledged."""
        for i in range(0, len(packets), chunk):
            part = packets[i : i + chunk]
            with self._cond:
                while self.sent - self.acked + len(part) > self.window and not self._closing:
                    self._cond.wait()
                if self._closing:
                    raise RuntimeError("broker closed the connection")
                self.sent += len(part)
            self.sock.sendall(b"".join(part))

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until every packet sent is acknowledged."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.acked < self.sent:
                left = deadline - time.monotonic()
                if left <= 0 or self._closing:
                    raise RuntimeError(f"{self.sent - self.acked} messages not acknowledged")
                self._cond.wait(left)

    def close(self) -> None:
        with self._cond:
            self._closing = True
        try:
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# ------------------------------------------------------------------------ payloads


def bed_messages(
    beds: Sequence[str],
    seconds: int,
    t0: float,
    shape: str,
    ward: str = "icu",
    vitals: Sequence[str] = SIX,
    seed: int = 1,
) -> tuple[list[tuple[str, bytes]], int]:
    """Readings of ``beds`` at 1 Hz for ``seconds`` from event time ``t0``, in time order,
    as (topic, payload) messages to ``vitals/{ward}/{bed}/mon1``. ``shape``:

    * ``single``: one message per reading, ``{"ts": ..., "hr": 78}``;
    * ``object``: one message per bed and second with every vital;
    * ``array10``: one message per bed and 10 seconds, a JSON array of 10 such objects
      (a device sending its backlog; the last one may be shorter).

    -> (messages, readings)
    """
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    dumps = json.JSONEncoder(separators=(",", ":")).encode

    def values() -> dict[str, float]:
        return {name: normal_value(rng, name) for name in vitals}

    topics = {b: f"vitals/{ward}/{b}/mon1" for b in beds}
    if shape == "array10":
        for s in range(0, seconds, 10):
            for b in beds:
                objs = [{"ts": t0 + s + k, **values()} for k in range(min(10, seconds - s))]
                out.append((topics[b], dumps(objs).encode()))
        return out, seconds * len(beds) * len(vitals)
    for s in range(seconds):
        for b in beds:
            v = values()
            if shape == "object":
                out.append((topics[b], dumps({"ts": t0 + s, **v}).encode()))
            elif shape == "single":
                for name, x in v.items():
                    out.append((topics[b], dumps({"ts": t0 + s, name: x}).encode()))
            else:
                raise ValueError(f"unknown shape {shape!r}")
    return out, seconds * len(beds) * len(vitals)


READINGS_PER_MESSAGE = {"single": 1, "object": len(SIX), "array10": 10 * len(SIX)}


# ------------------------------------------------------------------------ background load


def load_main(argv: list[str]) -> int:
    """``common.py load``: beds ``1..N`` of a ward, each publishing one object (``SIX``) a
    second, spread evenly over the second (``--slots`` sends a second), event time = wall
    clock; until SIGTERM or
    ``--duration``. Prints ``ready`` once connected, ``sent N acked M`` at the end."""
    p = argparse.ArgumentParser(prog="common.py load")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--beds", type=int, required=True)
    p.add_argument("--ward", default="load")
    p.add_argument("--duration", type=float, default=3600.0)
    p.add_argument("--slots", type=int, default=100, help="sends per second")
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pub = RawPublisher(args.port, f"load-{os.getpid()}", window=60000)
    rng = random.Random(7)
    beds = [str(b) for b in range(1, args.beds + 1)]
    slots = [beds[i :: args.slots] for i in range(args.slots)]
    topics = {b: f"vitals/{args.ward}/{b}/mon1" for b in beds}
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    mid = 0
    print("ready", flush=True)
    start = time.time()
    tick = 0
    while not stop.is_set() and time.time() - start < args.duration:
        due = start + tick / args.slots
        if (wait := due - time.time()) > 0 and stop.wait(wait):
            break
        ts = round(time.time(), 3)
        packets = []
        for b in slots[tick % args.slots]:
            v = {name: normal_value(rng, name) for name in SIX}
            mid = mid % 65535 + 1
            packets.append(publish_packet(topics[b], dumps({"ts": ts, **v}).encode(), mid))
        pub.send(packets, chunk=len(packets) or 1)
        tick += 1
    print(f"sent {pub.sent} acked {pub.acked}", flush=True)
    pub.close()
    return 0


class Load:
    """The background load (``load_main``) in a process of its own."""

    def __init__(self, port: int, beds: int, ward: str = "load") -> None:
        self.beds = beds
        self.proc: subprocess.Popen[str] | None = None
        if beds <= 0:
            return
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__)),
                "load",
                "--port",
                str(port),
                "--beds",
                str(beds),
                "--ward",
                ward,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the load generator did not start")

    def stop(self) -> str:
        if self.proc is None:
            return ""
        stop_process(self.proc)
        assert self.proc.stdout is not None
        return self.proc.stdout.read().strip()


# ------------------------------------------------------------------------ fill


def default_fill_s(rules: RulesConfig | None = None) -> float:
    """The event time of history the rules need (the default rules': 4 h 5 min, the
    baseline rules' ``recent_s + baseline_s``; see ``TrendConfig.needs_s``)."""
    rules = rules or RulesConfig()
    return max(rules.window_s, rules.trends.needs_s())


def vital_needs(vitals: Sequence[str], rules: RulesConfig | None = None) -> dict[str, float]:
    """vital -> event time its window spans under ``rules`` (default: the default rules):
    ``rules.window_s`` or, longer, what its trend rules read."""
    rules = rules or RulesConfig()
    return {v: max(rules.window_s, rules.trends.needs_s(v)) for v in vitals}


def fill_options(p: argparse.ArgumentParser, step: float, what: str = "") -> None:
    """``--fill-s`` and ``--fill-step`` (see :func:`fill`)."""
    p.add_argument(
        "--fill-s",
        type=float,
        default=None,
        help="event time fed fast to every bed before measuring, so that the windows "
        f"are full (default: what the default rules need, {default_fill_s():g} s; "
        "0: no fill, the old behaviour)" + what,
    )
    p.add_argument(
        "--fill-step",
        type=float,
        default=step,
        help=f"seconds of event time between a series' fill readings (default {step:g})",
    )


class Fill:
    """Steady state before measuring: every bed's series fed ``span_s`` of event time,
    fast, so that each window is as full as the rules keep it.

    Event time runs from ``until() - span_s`` to ``until()`` (re-read after each chunk:
    with ``until = lambda: time.time() - 2`` the fill chases the wall clock and ends
    2 s behind it, so live readings follow without a gap). A vital is fed only as far
    back as its window reaches (:func:`vital_needs`: 4 h 5 min for hr, spo2, rr and sbp,
    10 min for dbp and map). One reading every ``step_s`` per series. Each message is
    one bed's JSON array of ``per_message`` objects (like a device sending its backlog),
    sent by ``pub``; never more than ``max_pending`` readings wait in the daemon
    (``handled()``: readings it has committed or refused so far), so it holds no backlog
    (whose high-water mark would stay in its RSS)."""

    def __init__(
        self,
        span_s: float,
        step_s: float = 1.0,
        vitals: Sequence[str] = SIX,
        ward: str = "icu",
        per_message: int = 60,
        max_pending: int = 20_000,
        rules: RulesConfig | None = None,
    ) -> None:
        if step_s <= 0:
            raise ValueError("the fill step must be positive")
        self.span_s, self.step_s, self.vitals, self.ward = span_s, step_s, tuple(vitals), ward
        self.per_message, self.max_pending = per_message, max_pending
        self.needs = vital_needs(self.vitals, rules)
        rng = random.Random(11)
        #: pre-drawn normal values, as JSON text per vital
        self._pool = {
            v: [json.dumps(fill_value(rng, v, step_s)) for _ in range(997)] for v in self.vitals
        }

    def _object(self, ts: float, end: float, k: int) -> str | None:
        """The JSON object of one bed at ``ts``: the vitals whose window reaches back to
        it (None: none does)."""
        parts = [f'"ts":{ts!r}']
        for v in self.vitals:
            if ts >= end - self.needs[v]:
                pool = self._pool[v]
                parts.append(f'"{v}":{pool[k % len(pool)]}')
        return "{" + ",".join(parts) + "}" if len(parts) > 1 else None

    @staticmethod
    def _taken(handled: Callable[[], int], n: int) -> bool:
        return handled() >= n

    def run(
        self,
        pub: RawPublisher,
        beds: Sequence[str],
        handled: Callable[[], int],
        until: Callable[[], float],
        progress: Callable[[float], None] | None = None,
    ) -> dict[str, Any]:
        """Feed every bed of ``beds`` -> what was fed and how long it took.
        ``progress(event_seconds_fed)`` is called after each chunk."""
        out: dict[str, Any] = {"span_s": self.span_s, "step_s": self.step_s, "beds": len(beds)}
        if self.span_s <= 0 or not beds:
            return {**out, "readings": 0, "messages": 0, "seconds": 0.0, "readings_per_s": 0.0}
        topics = [(f"vitals/{self.ward}/{b}/mon1", i * 7919) for i, b in enumerate(beds)]
        h0 = handled()
        start = float(math.floor(until() - self.span_s))
        t = start
        sent = messages = 0
        mid = 0
        t0 = time.perf_counter()
        while True:
            end = until()
            if t > end:
                break
            stamps: list[float] = []
            while t <= end and len(stamps) < self.per_message:
                stamps.append(t)
                t += self.step_s
            per_bed = 0
            packets = []
            for topic, k0 in topics:
                objs = [o for ts in stamps if (o := self._object(ts, end, k0 + int(ts)))]
                if not objs:
                    continue
                per_bed = sum(o.count(":") - 1 for o in objs)
                mid = mid % 65535 + 1
                packets.append(publish_packet(topic, ("[" + ",".join(objs) + "]").encode(), mid))
            for i in range(0, len(packets), 50):
                part = packets[i : i + 50]
                pub.send(part)
                sent += per_bed * len(part)
                wait_for(
                    partial(self._taken, handled, h0 + sent - self.max_pending),
                    600,
                    "the daemon to take in the fill",
                    every=0.05,
                )
            messages += len(packets)
            if progress is not None:
                progress(t - start)
        wait_for(partial(self._taken, handled, h0 + sent), 600, "the fill committed", every=0.05)
        seconds = time.perf_counter() - t0
        return {
            **out,
            "event_s": t - start,
            "start_ts": start,
            "end_ts": t - self.step_s,
            "readings": sent,
            "messages": messages,
            "seconds": seconds,
            "readings_per_s": sent / seconds if seconds else 0.0,
        }


def fill_line(f: dict[str, Any] | None) -> str:
    """A fill's description for the report."""
    if not f or not f.get("readings"):
        return "fill: none (--fill-s 0): windows grow from empty while measured"
    return (
        f"fill: {f['beds']:,} beds, {f['span_s'] / 3600:.2f} h of event time, a reading every "
        f"{f['step_s']:g} s per series (each vital only as far back as its window reaches), "
        f"{f['readings']:,} readings in {f['seconds']:.0f} s ({f['readings_per_s']:,.0f}/s), "
        "ending 2 s behind the clock, then measured"
    )


def forget_session(port: int, client_id: str) -> None:
    """Drop a stopped daemon's persistent session, so the broker stops queueing the next
    runs' messages for it (a clean-session connect with its client id discards it)."""
    RawPublisher(port, client_id).close()


# ------------------------------------------------------------------------ targets


def target(
    name: str, goal: float, measured: float | None, unit: str, at_least: bool = True
) -> dict[str, Any]:
    """One of the issue's targets next to what was measured. ``ratio``: how far toward
    it (measured / goal for an "at least", goal / measured for an "at most"), >= 1: met."""
    if measured is None:
        ratio = None
    elif at_least:
        ratio = measured / goal if goal else math.inf
    else:
        ratio = goal / measured if measured > 0 else math.inf
    return {
        "target": name,
        "goal": goal,
        "measured": measured,
        "unit": unit,
        "at_least": at_least,
        "ratio": ratio,
        "met": ratio is not None and ratio >= 1,
    }


def _num(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    if x == math.inf:
        return "inf"
    if abs(x) >= 100:
        text = f"{x:,.0f}"
    elif abs(x) >= 10:
        text = f"{x:.1f}"
    else:
        text = f"{x:.2f}"
    return f"{text} {unit}".strip()


def _ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return "inf" if r == math.inf else f"{r:.2f}x"


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    """The targets: goal, measured, ratio (>= 1.00x: met)."""
    if not targets:
        return "targets: none measured in this run"
    rows = [
        [
            t["target"],
            ("<= " if not t["at_least"] else ">= ") + _num(t["goal"], t["unit"]),
            _num(t["measured"], t["unit"]),
            "-"
            if t["ratio"] is None
            else ("inf" if t["ratio"] == math.inf else f"{t['ratio']:.2f}x"),
            "yes" if t["met"] else "NO",
        ]
        for t in targets
    ]
    return "targets (issue 16; ratio >= 1.00x: met):\n" + table(
        ["target", "goal", "measured", "ratio", "met"], rows
    )


# ------------------------------------------------------------------------ output


def machine() -> dict[str, Any]:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        mosq = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, check=False)
        mversion = mosq.stdout.splitlines()[0].split()[-1] if mosq.stdout else "?"
    except OSError:
        mversion = "?"
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "mosquitto": mversion,
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"machine: {m['cores']} cores ({m['usable_cores']} usable), {m['cpu']}; "
        f"python {m['python']}, sqlite {m['sqlite']}, mosquitto {m['mosquitto']}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    s = sorted(values)
    if not s:
        raise ValueError("no values")
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def parser(doc: str | None, name: str) -> argparse.ArgumentParser:
    """``--quick`` and ``--json`` (default ``benchmarks/results/NAME.json``)."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--json", type=Path, default=RESULTS / f"{name}.json", help="results file")
    return p


def _finite(x: Any) -> Any:
    """``x`` with every infinite or NaN float replaced by None (JSON has neither)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def write_json(path: Path, result: dict[str, Any]) -> None:
    """``result`` as JSON in ``path`` (infinite values, e.g. a lost probe's latency
    percentile or a target's measured value, as null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(result), indent=2, allow_nan=False) + "\n")
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:
        sys.exit(load_main(sys.argv[2:]))
    sys.exit("usage: common.py load --port P --beds N [--ward W] [--duration S]")
