"""A recorded numerics CSV published over MQTT, as the bed's monitors would have sent it.

``python -m simulators replay FILE.csv --bed B [--ward W] [--speed max|N] [--host H]
[--port P] [--map COL=vital[@device]] [--start now|recorded|ISO] [--start-ts EPOCH]
[--from-s S] [--to-s S]``

The CSV is read by :func:`monitor.replay.load_csv`, the reader of ``vitalmon replay``:
``time_s`` plus one column per numeric, MIMIC-II names mapped by
:data:`monitor.replay.DEFAULT_MAP` (``--map`` adds or overrides a column, ``COL=none``
drops it), a blank cell or ``0`` is "not available", and implausible values are left
out. Each instant of the recording becomes one QoS 1 message per device, to
``vitals/{ward}/{bed}/{device}``: ``{"ts": ..., "hr": 101.3}`` for ``ecg``,
``{"ts": ..., "sbp": 87, "dbp": 46, "map": 62}`` for ``nibp``, and so on.

**Event time.** A message's ``ts`` is ``start + time_s``, where ``start`` is

* ``--start now`` (the default): chosen when publishing begins so that the last reading
  is stamped with the wall-clock time at which it is sent: "now" at ``--speed max``,
  and ``now + duration / N`` at ``--speed N``. No reading is ever stamped ahead of the
  clock (at ``N`` < 1, the first reading is stamped "now" instead), so the daemon's
  ``rules.max_future_s`` is never exceeded, and the rules see the recording's own
  spacing, whatever the speed;
* ``--start recorded``: ``time_s`` 0 is 2000-01-01T00:00:00Z, as in ``vitalmon
  replay``, so both give the same event times and, with the same ward and rules, the
  same alert ids (``vitalmon replay``'s ward is ``default``);
* ``--start ISO`` or ``--start-ts EPOCH``: ``time_s`` 0 is that instant. Pinning it
  makes two replays produce the same alert ids at any speed.

**Speed.** ``--speed max`` publishes as fast as the broker acknowledges, with at most
``--window`` (100) messages unacknowledged. ``--speed N`` sends each instant
``time_s / N`` seconds after the first. The daemon evaluates rules on event time, so
its alerts (ids included, with a pinned start) are the same at any speed.

**Sampling.** MIMIC-II numerics are one sample a minute. The daemon judges each series
by its own cadence (README, "Measurement modes"), as ``vitalmon replay`` does: nothing
needs adjusting for the recording's sampling.

``--from-s`` / ``--to-s`` replay a slice: readings with ``from <= time_s < to``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from monitor.model import Reading, iso
from monitor.replay import (
    DEFAULT_START,
    ReplayError,
    load_csv,
    parse_map,
    parse_speed,
    parse_start,
)
from simulators import ConnectionLog, stop_on_signals
from simulators.mqtt import CONNECT_TIMEOUT_S, TOPIC

log = logging.getLogger("simulators.replay")

#: Unacknowledged messages at most at ``--speed max``.
WINDOW = 100
FLUSH_TIMEOUT_S = 30.0


@dataclass(slots=True)
class Message:
    """The readings of one device at one instant of the recording."""

    time_s: float
    device: str
    values: dict[str, float] = field(default_factory=dict)
    mode: str | None = None  #: the readings' measurement mode (a cuff: intermittent)

    def payload(self, start: float) -> str:
        head: dict[str, object] = {"ts": start + self.time_s}
        if self.mode is not None:
            head["mode"] = self.mode
        return json.dumps({**head, **self.values}, separators=(",", ":"))


def plan(readings: Sequence[Reading]) -> list[Message]:
    """Readings (``ts`` = ``time_s``, in time order) -> one message per instant and
    device, in order. Two columns mapped to the same vital of a device go in two
    messages (a JSON object holds one value per vital)."""
    out: list[Message] = []
    current: dict[str, Message] = {}
    instant: float | None = None
    for r in readings:
        if r.ts != instant:
            instant, current = r.ts, {}
        m = current.get(r.device)
        if m is None or r.vital in m.values:
            m = current[r.device] = Message(r.ts, r.device, mode=r.mode)
            out.append(m)
        m.values[r.vital] = r.value
    return out


def event_start(
    start: str,
    start_ts: float | None,
    first_s: float,
    last_s: float,
    speed: float | None,
    now: float,
) -> float:
    """Event time of ``time_s`` 0 (see the module docstring)."""
    if start_ts is not None:
        return start_ts
    mode = start.strip().lower()
    if mode == "recorded":
        return DEFAULT_START
    if mode != "now":
        return parse_start(start)
    span = last_s - first_s
    sent_over = 0.0 if speed is None else span / speed  # wall seconds first -> last
    return round(now + min(span, sent_over) - last_s, 3)


# --------------------------------------------------------------------- publisher


@dataclass(frozen=True, slots=True)
class Options:
    host: str = "127.0.0.1"
    port: int = 1883
    ward: str = "icu"
    bed: str = "1"
    #: None: as fast as the broker acknowledges (``--speed max``)
    speed: float | None = None
    start: str = "now"
    start_ts: float | None = None
    window: int = WINDOW
    protocol: str = "5"
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    connect_timeout_s: float = CONNECT_TIMEOUT_S


class Replayer(ConnectionLog):
    """Publishes ``messages`` over one MQTT connection, QoS 1, in order."""

    log = log  #: (for the ConnectionLog callbacks)

    def __init__(self, opts: Options, messages: Sequence[Message]) -> None:
        if opts.speed is not None and not (opts.speed > 0 and math.isfinite(opts.speed)):
            raise ValueError("speed must be a positive number or None (max)")
        if opts.window < 1:
            raise ValueError("window must be >= 1")
        self.opts = opts
        self.messages = messages
        self.published = 0  #: messages handed to paho
        self.confirmed = 0  #: messages acknowledged by the broker
        self.start = math.nan  #: event time of time_s 0, once publishing began
        self.connected = threading.Event()
        # At most `window` unacknowledged: released by on_publish (paho's thread). No
        # lock of ours is held around a paho call (paho calls on_publish under its mutex).
        self._slots = threading.Semaphore(opts.window)
        self._stopping = False
        self._client = self._new_client(
            f"vitalmon-replay-{opts.ward}-{opts.bed}-{os.getpid()}", max(opts.window, 20)
        )

    def topic(self, device: str) -> str:
        return TOPIC.format(ward=self.opts.ward, bed=self.opts.bed, device=device)

    def run(self, stop: threading.Event | None = None) -> int:
        """Publish everything (or until ``stop``), wait for the acknowledgements; -> exit code."""
        stop = stop or threading.Event()
        try:
            failed = self._wait_connected(self._client, stop)
            if failed is not None:
                return failed
            t0 = time.monotonic()
            self._publish_all(stop)
            flushed = self._flush(stop)
            elapsed = time.monotonic() - t0
            log.info(
                "published %d of %d messages in %.2f s (%.0f msg/s), %d confirmed",
                self.published,
                len(self.messages),
                elapsed,
                self.published / elapsed if elapsed > 0 else 0.0,
                self.confirmed,
            )
            return 0 if flushed or stop.is_set() else 1
        finally:
            self._stopping = True
            self._client.disconnect()
            self._client.loop_stop()

    def _publish_all(self, stop: threading.Event) -> None:
        o, msgs = self.opts, self.messages
        if not msgs:
            return
        first_s, last_s = msgs[0].time_s, msgs[-1].time_s
        self.start = event_start(o.start, o.start_ts, first_s, last_s, o.speed, time.time())
        if self.start + last_s > time.time() + 60:
            log.warning(
                "readings are stamped up to %s, ahead of the clock: the daemon refuses those "
                "more than rules.max_future_s (30 s) ahead",
                iso(self.start + last_s),
            )
        log.info("event time %s .. %s", iso(self.start + first_s), iso(self.start + last_s))
        wall0 = time.monotonic()
        for m in msgs:
            if o.speed is not None:
                delay = wall0 + (m.time_s - first_s) / o.speed - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
            while not self._slots.acquire(timeout=0.5):
                if stop.is_set():
                    return
            if stop.is_set():
                self._slots.release()
                return
            info = self._client.publish(self.topic(m.device), m.payload(self.start), qos=1)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self._slots.release()
                log.warning(
                    "publish to %s failed: %s", self.topic(m.device), paho.error_string(info.rc)
                )
                continue
            self.published += 1

    def _flush(self, stop: threading.Event) -> bool:
        """Wait (bounded) until the broker has acknowledged every message."""
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while self.confirmed < self.published:
            if time.monotonic() > deadline or stop.is_set():
                log.warning(
                    "%d messages not acknowledged by the broker", self.published - self.confirmed
                )
                return False
            time.sleep(0.01)
        return True

    # --------------------------------------------------- paho callbacks (paho thread)

    def _on_publish(
        self, _c: paho.Client, _u: object, _mid: int, _reason: object, _props: object
    ) -> None:
        self.confirmed += 1  # only this thread writes it
        self._slots.release()


# --------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE.csv", help="CSV with time_s and one column per numeric")
    p.add_argument("--bed", required=True)
    p.add_argument("--ward", default="icu", help="(default: %(default)s)")
    p.add_argument(
        "--speed",
        default="max",
        help="max (default: as fast as the broker acknowledges) or N: N times real time",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="COL=VITAL[@DEVICE]",
        help="map a column to a vital (COL=none ignores it); repeatable",
    )
    p.add_argument(
        "--start",
        default="now",
        metavar="now|recorded|ISO",
        help="event time of time_s 0: now (default: the last reading is stamped when it is "
        "sent), recorded (2000-01-01T00:00:00Z, as vitalmon replay) or an ISO 8601 time",
    )
    p.add_argument(
        "--start-ts",
        type=float,
        default=None,
        metavar="EPOCH",
        help="event time of time_s 0 in epoch seconds (pins the alert ids; overrides --start)",
    )
    p.add_argument(
        "--from-s",
        type=float,
        default=None,
        metavar="S",
        help="replay only readings with time_s >= S",
    )
    p.add_argument(
        "--to-s", type=float, default=None, metavar="S", help="replay only readings with time_s < S"
    )
    p.add_argument(
        "--window",
        type=int,
        default=WINDOW,
        metavar="N",
        help="unacknowledged messages at most (default: %(default)s)",
    )
    p.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    p.add_argument("--client-id", default=None)
    p.add_argument("--username", default=None)
    p.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S, metavar="S")


def load(args: argparse.Namespace) -> tuple[list[Message], float, float | None]:
    """The messages to send, the sampling interval and the speed; ReplayError for a user
    error."""
    speed = parse_speed(args.speed)
    if args.start.strip().lower() not in ("now", "recorded"):
        parse_start(args.start)  # an ISO time: refused now, not after connecting
    if args.window < 1:
        raise ReplayError("--window must be >= 1")
    lo = -math.inf if args.from_s is None else args.from_s
    hi = math.inf if args.to_s is None else args.to_s
    if not lo < hi:
        raise ReplayError(f"--from-s {args.from_s:g} must be below --to-s {args.to_s:g}")
    rec = load_csv(args.file, args.bed, args.ward, 0.0, parse_map(args.map))
    readings = [r for r in rec.readings if lo <= r.ts < hi]
    if not readings:
        raise ReplayError(f"{args.file}: no readings with {lo:g} <= time_s < {hi:g}")
    return plan(readings), rec.interval_s, speed


def main(args: argparse.Namespace) -> int:
    try:
        messages, interval_s, speed = load(args)
    except ReplayError as exc:
        print(f"simulators replay: {exc}", file=sys.stderr)
        return 1
    readings = sum(len(m.values) for m in messages)
    devices = sorted({m.device for m in messages})
    log.info(
        "replaying %s: %d readings in %d messages (%s), %.1f min of recording every %g s, "
        "to %s on %s:%d at speed %s",
        args.file,
        readings,
        len(messages),
        ", ".join(devices),
        (messages[-1].time_s - messages[0].time_s) / 60,
        interval_s,
        TOPIC.format(ward=args.ward, bed=args.bed, device="{device}"),
        args.host,
        args.port,
        "max" if speed is None else f"{speed:g}x",
    )
    opts = Options(
        host=args.host,
        port=args.port,
        ward=args.ward,
        bed=args.bed,
        speed=speed,
        start=args.start,
        start_ts=args.start_ts,
        window=args.window,
        protocol=args.protocol,
        client_id=args.client_id,
        username=args.username,
        connect_timeout_s=args.connect_timeout,
    )
    stop = stop_on_signals(log)
    return Replayer(opts, messages).run(stop)
