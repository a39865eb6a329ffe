"""MQTT bedside-monitor simulator: one JSON reading per bed per tick.

``python -m simulators mqtt --beds 6 --scenario normal --host 127.0.0.1 --port 1883``
publishes ``{"ts": ..., "hr": 72, "spo2": 97, ...}`` to ``vitals/{ward}/{bed}/{device}``
for beds ``1``..``N``, one tick a second.

Time: tick ``k`` carries event time ``ts0 + k`` and is sent ``k / speed`` seconds after
the start, so ``--speed 20`` publishes twenty simulated seconds per wall second. With
``--duration`` and a speed above 1, ``ts0`` lies in the past so that the last reading is
stamped "now": no reading is ever stamped in the future (a daemon rejects readings more
than ``rules.max_future_s`` ahead). Without ``--duration`` event time starts now and
runs ahead of the clock.

The paho network loop runs in its own thread (``loop_start``); :meth:`Simulator.run`
blocks the calling thread until the duration is over or ``stop`` is set (SIGINT/SIGTERM
in the command line), then waits (bounded) for the broker to acknowledge what was sent.
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
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from simulators import stop_on_signals
from simulators.patient import SCENARIOS, Patient, reading, ward

log = logging.getLogger("simulators.mqtt")

TOPIC = "vitals/{ward}/{bed}/{device}"
CONNECT_TIMEOUT_S = 10.0
FLUSH_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Options:
    host: str = "127.0.0.1"
    port: int = 1883
    ward: str = "icu"
    device: str = "mon1"
    qos: int = 1
    protocol: str = "5"  # "5" or "3.1.1"
    speed: float = 1.0
    #: Wall-clock seconds to run; None runs until stopped.
    duration: float | None = None
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    #: Give up (exit 1) when the first connection takes longer than this.
    connect_timeout_s: float = CONNECT_TIMEOUT_S


class Simulator:
    """Publishes readings of ``patients`` (``[(bed, Patient)]``) to an MQTT broker."""

    def __init__(self, opts: Options, patients: list[tuple[str, Patient]]) -> None:
        if opts.speed <= 0 or not math.isfinite(opts.speed):
            raise ValueError("speed must be a positive number")
        if opts.protocol not in ("5", "3.1.1"):
            raise ValueError("protocol must be '5' or '3.1.1'")
        self.opts = opts
        self.patients = patients
        self.published = 0  #: messages handed to paho
        self.confirmed = 0  #: messages acknowledged by the broker (QoS 0: written out)
        self.ticks = 0
        self.connected = threading.Event()
        # QoS > 0 messages not yet acknowledged. No lock of ours is ever held around a
        # paho call: paho calls on_publish with its own mutex held (lock-order deadlock).
        self._unconfirmed: list[paho.MQTTMessageInfo] = []
        self._stopping = False
        v5 = opts.protocol == "5"
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=opts.client_id or f"vitalmon-sim-{opts.ward}-{os.getpid()}",
            clean_session=None if v5 else True,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        c = self._client
        c.enable_logger(logging.getLogger("simulators.mqtt.paho"))
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(1000)
        c.reconnect_delay_set(1, 5)
        if opts.username is not None:
            c.username_pw_set(opts.username, opts.password)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish

    def topic(self, bed: str) -> str:
        return TOPIC.format(ward=self.opts.ward, bed=bed, device=self.opts.device)

    # ------------------------------------------------------------------ running

    def run(self, stop: threading.Event | None = None) -> int:
        """Publish until the duration is over or ``stop`` is set; -> exit code."""
        stop = stop or threading.Event()
        o = self.opts
        self._client.connect_async(o.host, o.port, keepalive=30)
        self._client.loop_start()
        try:
            deadline = time.monotonic() + o.connect_timeout_s
            while not self.connected.is_set():
                if stop.is_set():
                    return 0
                if time.monotonic() > deadline:
                    log.error(
                        "cannot connect to %s:%d within %g s", o.host, o.port, o.connect_timeout_s
                    )
                    return 1
                stop.wait(0.05)
            self._publish_loop(stop)
            self._flush()
            return 0
        finally:
            self._stopping = True
            self._client.disconnect()
            self._client.loop_stop()
            log.info(
                "stopped after %d ticks: %d messages published, %d confirmed",
                self.ticks,
                self.published,
                self.confirmed,
            )

    def _publish_loop(self, stop: threading.Event) -> None:
        o = self.opts
        wall0 = time.monotonic()
        ts0 = time.time()
        if o.duration is not None and o.speed > 1:
            ts0 -= o.duration * (o.speed - 1)
        n_ticks = None if o.duration is None else max(1, math.ceil(o.duration * o.speed))
        k = 0
        while n_ticks is None or k < n_ticks:
            ts = ts0 + k
            for bed, patient in self.patients:
                payload = json.dumps(reading(patient.sample(k), ts), separators=(",", ":"))
                self._publish(self.topic(bed), payload)
            self.ticks += 1
            k += 1
            delay = wall0 + k / o.speed - time.monotonic()
            if stop.wait(max(delay, 0.0)):
                return
        if o.duration is not None:
            stop.wait(max(0.0, wall0 + o.duration - time.monotonic()))

    def _publish(self, topic: str, payload: str) -> None:
        info = self._client.publish(topic, payload, qos=self.opts.qos)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("publish to %s failed: %s", topic, paho.error_string(info.rc))
            return
        self.published += 1
        if self.opts.qos > 0:
            self._unconfirmed.append(info)
            if len(self._unconfirmed) > 1000:
                self._unconfirmed = [i for i in self._unconfirmed if not i.is_published()]

    def _flush(self) -> None:
        """Wait (bounded) until the broker has acknowledged every QoS 1/2 message."""
        deadline = time.monotonic() + FLUSH_TIMEOUT_S
        while True:
            self._unconfirmed = [i for i in self._unconfirmed if not i.is_published()]
            if not self._unconfirmed:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        log.warning("%d messages not acknowledged by the broker at exit", len(self._unconfirmed))

    # --------------------------------------------------- paho callbacks (paho thread)

    def _on_connect(
        self, _c: paho.Client, _u: object, _flags: object, reason: Any, _props: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the connection: %s", reason)
            return
        log.info("connected to %s:%d", self.opts.host, self.opts.port)
        self.connected.set()

    def _on_disconnect(
        self, _c: paho.Client, _u: object, _flags: object, reason: object, _props: object
    ) -> None:
        self.connected.clear()
        if not self._stopping:
            log.warning("connection lost (%s); reconnecting", reason)

    def _on_publish(
        self, _c: paho.Client, _u: object, _mid: int, _reason: object, _props: object
    ) -> None:
        self.confirmed += 1  # only this thread writes it


# --------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beds", type=int, default=6, help="beds 1..N (default: %(default)s)")
    p.add_argument("--scenario", choices=SCENARIOS, default="normal")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--ward", default="icu")
    p.add_argument("--device", default="mon1")
    p.add_argument("--seed", type=int, default=None, help="default: random (logged)")
    p.add_argument("--duration", type=float, default=None, help="stop after S wall seconds")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second")
    p.add_argument("--qos", type=int, choices=[0, 1, 2], default=1)
    p.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    p.add_argument("--client-id", default=None)
    p.add_argument("--username", default=None)
    p.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S, metavar="S")


def main(args: argparse.Namespace) -> int:
    if args.beds < 1:
        print("simulators: --beds must be >= 1", file=sys.stderr)
        return 2
    if not args.speed > 0:
        print("simulators: --speed must be > 0", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    opts = Options(
        host=args.host,
        port=args.port,
        ward=args.ward,
        device=args.device,
        qos=args.qos,
        protocol=args.protocol,
        speed=args.speed,
        duration=args.duration,
        client_id=args.client_id,
        username=args.username,
        connect_timeout_s=args.connect_timeout,
    )
    sim = Simulator(opts, ward(seed, [args.scenario] * args.beds))
    log.info(
        "publishing %d bed(s) (%s, seed %d) to %s on %s:%d, MQTT %s QoS %d, "
        "1 reading/bed every %.3g s%s",
        args.beds,
        args.scenario,
        seed,
        TOPIC.format(ward=opts.ward, bed=f"{{1..{args.beds}}}", device=opts.device),
        opts.host,
        opts.port,
        opts.protocol,
        opts.qos,
        1 / opts.speed,
        "" if opts.duration is None else f" for {opts.duration:g} s",
    )
    stop = stop_on_signals(log)
    return sim.run(stop)
