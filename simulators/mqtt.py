"""MQTT bedside-monitor simulator: beds of simulated patients publishing like a real ward.

``python -m simulators mqtt --beds 50 --mix normal:0.8,sepsis:0.2 --speed 60`` publishes
to ``vitals/{ward}/{bed}/{device}`` for beds ``1``..``N``.

**Devices and rates.** Each bed has four devices (:data:`simulators.patient.GROUPS`),
each on its own topic, each reading stamped with its own event time:

=========  ====================  ============================  ===================
device     topic device level    vitals                        default interval
=========  ====================  ============================  ===================
monitor    ``--device`` (mon1)   hr, spo2, rr (continuous)     1 s each
NIBP       ``nibp``              sbp, dbp, map                 900 s (15 min)
thermo     ``thermo``            temp                          14400 s (4 h)
obs        ``obs``               o2, avpu (nurse's NEWS2 obs)  3600 s (1 h)
=========  ====================  ============================  ===================

``--device-rate spo2=1,hr=1,rr=1,nibp=900,temp=14400,obs=3600`` changes them (whole
simulated seconds between readings, 0 = never; keys not given keep their default).
Readings are due at simulated second ``k`` when ``k`` is a multiple of the interval, so
every device reports at the start (a complete NEWS2 from the first second) and the
4-hourly and hourly rounds are ward-wide, as on a ward.

*Fast runs are thinned*: ``N`` beds at ``--speed S`` would send ``N * S`` monitor
reports per wall second (50 beds at 60x: 3000 messages, 9000 readings a second, more
than a daemon on a small machine ingests: its broker queue fills and drops messages).
So that they stay below ``--max-rate`` (default 500 reports per wall second over all
beds; 0: no limit), the monitor's intervals are multiplied by
``ceil(N * S / max_rate)`` (:func:`thinning`): 50 beds at 60x report every 6 simulated
seconds. Values are those of the same simulated seconds (only fewer of them are sent);
NIBP, temperature and observations are never thinned; once a run has caught up with the
clock (below), the full rate returns.

NEWS2 with a daemon's defaults: ``rules.news2.freshness_s`` is 1800 s and only complete
scores alert, so with temperature every 4 h a bed's score is complete (and can alert)
only within 30 min after each temperature round (0, 4 h, 8 h ...); an alert once raised
stays until a complete score clears it. ``--device-rate temp=1800`` (or a daemon with
``freshness_s: 14400``) keeps the score complete all the time. So with
``--beds 50 --mix normal:0.8,sepsis:0.2 --speed 60`` against a daemon on its defaults,
every septic bed raises a high NEWS2 alert (rule ``news2``) at the 4 h round, 4 wall
minutes after the start, and the normal beds raise none (checked end to end; the pure
equivalent is tests/test_scenarios.py).

**Formats** (``--format``; all decode with :func:`monitor.sources.codecs.decode`):

* ``object`` (default): one JSON reading object per device and reading time,
  ``{"ts": 1764324000.0, "hr": 72, "spo2": 97, "rr": 15}``;
* ``batch``: a JSON array of the reading objects of one device of one bed, published
  every ``--batch`` simulated seconds (default 5);
* ``senml``: a SenML pack (RFC 8428) per device of one bed, every ``--batch`` simulated
  seconds: ``bn`` ``urn:dev:{ward}:{bed}:{device}:``, ``bt`` the first reading's time,
  names HR, SpO2, RR, NBPSys, NBPDias, NBPMean, Temp (vitalmon's default aliases) with
  units and relative ``t``. SenML carries numbers only: the ``obs`` device (an ACVPU
  letter) publishes reading objects in every format.

**Device status.** ``artefacts``: while the SpO2 probe is off the monitor publishes
``{"ts": ..., "status": "sensor_off"}`` alone (values sent with it would be refused),
and its first reading after carries ``"status": "ok"``; SenML has no status, so there
the monitor just leaves SpO2 out. ``dropout``/``unplug``: the bed's devices (unplug:
monitor and NIBP) publish nothing at all for a while (a daemon judges silence on its
wall clock: a 3 min dropout lasts 3 s at 60x and raises no ``device.stale``).
*Heartbeats*: a device that has published nothing for ``--heartbeat`` wall seconds
(default 10; 0: never) sends a status-only object ``{"ts": ..., "status": "ok"}``, as
a networked device's keep-alive, so that a daemon does not raise ``device.stale``
(``rules.stale_after_s``, 30 s wall clock) for an NIBP or thermometer between readings.
Silent devices send none; SenML cannot carry them.

**Time.** Simulated second ``k`` carries event time ``ts0 + k``, with
``ts0 = now - start_ago``, and is published ``max(k / speed, k - start_ago)`` wall
seconds after the start: ``speed`` simulated seconds per wall second, but never before
its event time has come, so no reading is ever stamped in the future (a daemon rejects
readings more than ``rules.max_future_s``, 30 s, ahead). ``start_ago``
(``--start-ago``) is by default:

* with ``--duration D`` and a speed above 1: ``D * (speed - 1)``, so the whole run is
  fast and its last reading is stamped "now" (``D * speed`` simulated seconds);
* without ``--duration`` and a speed above 1: :data:`DEFAULT_BACKLOG_S` (8 h): the
  simulation starts 8 h in the past, runs at ``speed`` until it has caught up with the
  clock (8 h / (speed - 1): about 8 min at ``--speed 60``, enough for the sepsis course
  and two temperature rounds), then goes on in real time, for as long as it runs;
* at speed 1 or below: 0 (starts now, never ahead).

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
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from simulators import ConnectionLog, stop_on_signals
from simulators.patient import SCENARIOS, Patient, assign, observation, parse_mix, reading, ward

log = logging.getLogger("simulators.mqtt")

TOPIC = "vitals/{ward}/{bed}/{device}"
CONNECT_TIMEOUT_S = 10.0
FLUSH_TIMEOUT_S = 5.0

FORMATS: Final = ("object", "batch", "senml")
#: ``--device-rate`` keys -> default simulated seconds between readings (0: never).
DEFAULT_RATES: Final[Mapping[str, int]] = {
    "hr": 1,
    "spo2": 1,
    "rr": 1,
    "nibp": 900,
    "temp": 14400,
    "obs": 3600,
}
#: What each rate key publishes, and from which device group.
RATE_VITALS: Final[dict[str, tuple[str, ...]]] = {
    "hr": ("hr",),
    "spo2": ("spo2",),
    "rr": ("rr",),
    "nibp": ("sbp", "dbp", "map"),
    "temp": ("temp",),
    "obs": ("o2", "avpu"),
}
GROUP_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "mon": ("hr", "spo2", "rr"),
    "nibp": ("nibp",),
    "thermo": ("temp",),
    "obs": ("obs",),
}
#: Topic device level of each group but the monitor (``--device``).
DEVICE_NAMES: Final[dict[str, str]] = {"nibp": "nibp", "thermo": "thermo", "obs": "obs"}
#: SenML name and unit per vital (names are vitalmon's default aliases).
SENML: Final[dict[str, tuple[str, str]]] = {
    "hr": ("HR", "beat/min"),
    "spo2": ("SpO2", "%"),
    "rr": ("RR", "1/min"),
    "sbp": ("NBPSys", "mmHg"),
    "dbp": ("NBPDias", "mmHg"),
    "map": ("NBPMean", "mmHg"),
    "temp": ("Temp", "Cel"),
}
#: Event time before now at which a fast run without --duration starts.
DEFAULT_BACKLOG_S: Final = 8 * 3600.0
DEFAULT_BATCH_S: Final = 5
DEFAULT_HEARTBEAT_S: Final = 10.0
DEFAULT_MAX_RATE: Final = 500.0


def parse_rates(text: str) -> dict[str, int]:
    """``"spo2=1,nibp=900"`` -> every rate key's interval (the defaults for the others).

    ValueError unless each item is ``key=seconds`` with a known key and a whole number
    of seconds >= 0.
    """
    rates = dict(DEFAULT_RATES)
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{item.strip()!r} is not key=seconds")
        if key not in DEFAULT_RATES:
            raise ValueError(f"unknown rate {key!r} (known: {', '.join(DEFAULT_RATES)})")
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"{key}={value.strip()!r} is not a number of seconds") from None
        if seconds < 0 or seconds != int(seconds):
            raise ValueError(f"{key}={value.strip()}: a whole number of seconds >= 0")
        rates[key] = int(seconds)
    return rates


def clock_lead(speed: float, duration: float | None, start_ago: float | None) -> float:
    """How far (event seconds) before now the first reading is stamped."""
    if start_ago is not None:
        return start_ago
    if speed <= 1:
        return 0.0
    if duration is not None:
        return duration * (speed - 1)
    return DEFAULT_BACKLOG_S


def send_at(k: int, speed: float, lead: float) -> float:
    """Wall seconds after the start at which simulated second ``k`` is published: at
    ``speed``, but never before its event time (``now - lead + k``) has come."""
    return max(k / speed, k - lead)


def thinning(rates: Mapping[str, int], beds: int, speed: float, max_rate: float) -> int:
    """By how much the monitor's intervals are multiplied so that ``beds`` monitors at
    ``speed`` send at most about ``max_rate`` reports per wall second (0: no limit)."""
    steps = [rates.get(k, 0) for k in GROUP_KEYS["mon"] if rates.get(k, 0) > 0]
    if not steps or max_rate <= 0:
        return 1
    return max(1, math.ceil(beds * speed / (min(steps) * max_rate) - 1e-9))


def thinned(rates: Mapping[str, int], factor: int) -> dict[str, int]:
    """``rates`` with the monitor's (continuous) intervals multiplied by ``factor``."""
    return {k: v * factor if k in GROUP_KEYS["mon"] else v for k, v in rates.items()}


# --------------------------------------------------------------------------- feed


@dataclass(frozen=True, slots=True)
class Message:
    bed: str
    group: str  #: device group (:data:`simulators.patient.GROUPS`)
    topic: str
    payload: bytes


def _dump(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class Feed:
    """What the simulator publishes, simulated second by simulated second. Pure: no
    clock, no network; the same patients and calls give the same messages."""

    def __init__(
        self,
        patients: list[tuple[str, Patient]],
        *,
        ward: str = "icu",
        device: str = "mon1",
        fmt: str = "object",
        rates: Mapping[str, int] | None = None,
        batch_s: int = DEFAULT_BATCH_S,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
        if batch_s < 1:
            raise ValueError("batch must be >= 1 s")
        self.patients = patients
        self.ward = ward
        self.fmt = fmt
        self.rates = dict(DEFAULT_RATES if rates is None else rates)
        bad = sorted(set(self.rates) - set(DEFAULT_RATES))
        if bad:
            raise ValueError(f"unknown rates {bad} (known: {', '.join(DEFAULT_RATES)})")
        self.batch_s = batch_s
        self.names = {"mon": device, **DEVICE_NAMES}
        self.set_rates(self.rates)
        self._pending: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def set_rates(self, rates: Mapping[str, int]) -> None:
        """Change the intervals (from the next simulated second on)."""
        self.rates = dict(rates)
        #: Device groups with anything to publish.
        self.groups = [
            g for g, keys in GROUP_KEYS.items() if any(self.rates.get(k, 0) > 0 for k in keys)
        ]
        mon = [self.rates[k] for k in GROUP_KEYS["mon"] if self.rates.get(k, 0) > 0]
        self.mon_step = min(mon) if mon else 0

    def topic(self, bed: str, group: str) -> str:
        return TOPIC.format(ward=self.ward, bed=bed, device=self.names[group])

    def due(self, key: str, k: int) -> bool:
        every = self.rates.get(key, 0)
        return every > 0 and k % every == 0

    def objects(self, patient: Patient, k: int, ts: float) -> list[tuple[str, dict[str, Any]]]:
        """The reading objects of ``patient``'s devices at simulated second ``k``."""
        t = float(k)
        out: list[tuple[str, dict[str, Any]]] = []
        sample: dict[str, float] | None = None
        with_status = self.fmt != "senml"
        for group in self.groups:
            keys = [key for key in GROUP_KEYS[group] if self.due(key, k)]
            if not keys or patient.silent(t, group):
                continue
            if group == "obs":
                out.append((group, dict(observation(patient.obs(t), ts))))
                continue
            if group == "mon" and with_status and patient.sensor_off(t):
                out.append((group, {"ts": round(ts, 3), "status": "sensor_off"}))
                continue
            if sample is None:
                sample = patient.sample(t)
            vitals = {v: sample[v] for key in keys for v in RATE_VITALS[key] if v in sample}
            if not vitals:
                continue
            obj: dict[str, Any] = dict(reading(vitals, ts))
            if group == "mon" and with_status and self._probe_back(patient, k):
                obj["status"] = "ok"
            out.append((group, obj))
        return out

    def _probe_back(self, patient: Patient, k: int) -> bool:
        """The monitor's previous report was "sensor off" and this one is not."""
        step = self.mon_step
        return step > 0 and k >= step and patient.sensor_off(float(k - step))

    def tick(self, k: int, ts: float) -> list[Message]:
        """The messages to publish once simulated second ``k`` (event time ``ts``) is due."""
        out: list[Message] = []
        for bed, patient in self.patients:
            for group, obj in self.objects(patient, k, ts):
                if self.fmt == "object" or (self.fmt == "senml" and group == "obs"):
                    out.append(Message(bed, group, self.topic(bed, group), _dump(obj)))
                else:
                    self._pending.setdefault((bed, group), []).append(obj)
        if self.fmt != "object" and (k + 1) % self.batch_s == 0:
            out += self.flush()
        return out

    def flush(self) -> list[Message]:
        """The batches (``batch``, ``senml``) collected and not yet published."""
        out: list[Message] = []
        for (bed, group), objs in self._pending.items():
            doc = objs if self.fmt == "batch" else self.senml(bed, group, objs)
            if doc:
                out.append(Message(bed, group, self.topic(bed, group), _dump(doc)))
        self._pending = {}
        return out

    def senml(self, bed: str, group: str, objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Reading objects as one SenML pack (``bn`` names the bed's device)."""
        bt = objs[0]["ts"]
        records: list[dict[str, Any]] = []
        for obj in objs:
            dt = round(obj["ts"] - bt, 3)
            for vital, value in obj.items():
                if vital not in SENML:
                    continue
                name, unit = SENML[vital]
                rec: dict[str, Any] = {"n": name, "u": unit, "v": value}
                if dt:
                    rec["t"] = dt
                records.append(rec)
        if records:
            base = {"bn": f"urn:dev:{self.ward}:{bed}:{self.names[group]}:", "bt": bt}
            records[0] = {**base, **records[0]}
        return records

    def heartbeat(
        self, bed: str, patient: Patient, group: str, k: int, ts: float
    ) -> Message | None:
        """A status-only keep-alive of a device at simulated second ``k`` (None: a silent
        device, or SenML, which cannot carry one)."""
        if (self.fmt == "senml" and group != "obs") or patient.silent(float(k), group):
            return None
        off = group == "mon" and patient.sensor_off(float(k))
        obj = {"ts": round(ts, 3), "status": "sensor_off" if off else "ok"}
        doc: object = [obj] if self.fmt == "batch" else obj
        return Message(bed, group, self.topic(bed, group), _dump(doc))


# ---------------------------------------------------------------------- publisher


@dataclass(frozen=True, slots=True)
class Options:
    host: str = "127.0.0.1"
    port: int = 1883
    ward: str = "icu"
    #: Topic device level of the bedside monitor (continuous vitals).
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
    fmt: str = "object"
    #: Seconds between readings per rate key (:data:`DEFAULT_RATES`).
    rates: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_RATES))
    #: Simulated seconds collected per batch / SenML pack.
    batch_s: int = DEFAULT_BATCH_S
    #: Event seconds before now of the first reading; None: see :func:`clock_lead`.
    start_ago: float | None = None
    #: Wall seconds of silence after which a device sends a keep-alive; 0: never.
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    #: At most about this many monitor reports per wall second over all beds (the
    #: continuous vitals are thinned at high speeds, see :func:`thinning`); 0: no limit.
    max_rate: float = DEFAULT_MAX_RATE


class Simulator(ConnectionLog):
    """Publishes readings of ``patients`` (``[(bed, Patient)]``) to an MQTT broker."""

    log = log  #: (for the ConnectionLog callbacks)

    def __init__(self, opts: Options, patients: list[tuple[str, Patient]]) -> None:
        if opts.speed <= 0 or not math.isfinite(opts.speed):
            raise ValueError("speed must be a positive number")
        if opts.protocol not in ("5", "3.1.1"):
            raise ValueError("protocol must be '5' or '3.1.1'")
        if opts.start_ago is not None and not (
            opts.start_ago >= 0 and math.isfinite(opts.start_ago)
        ):
            raise ValueError("start_ago must be a number of seconds >= 0")
        self.opts = opts
        self.patients = patients
        #: The monitor's intervals are multiplied by this while running fast.
        self.thinning = thinning(opts.rates, len(patients), opts.speed, opts.max_rate)
        self.feed = Feed(
            patients,
            ward=opts.ward,
            device=opts.device,
            fmt=opts.fmt,
            rates=thinned(opts.rates, self.thinning),
            batch_s=opts.batch_s,
        )
        self.published = 0  #: messages handed to paho
        self.confirmed = 0  #: messages acknowledged by the broker (QoS 0: written out)
        self.heartbeats = 0  #: keep-alives among the published
        self.offline = 0  #: published while disconnected (paho sends them on reconnecting)
        self.ticks = 0
        #: Event time of simulated second 0 (set when publishing starts).
        self.ts0: float | None = None
        self.connected = threading.Event()
        # QoS > 0 messages not yet acknowledged. No lock of ours is ever held around a
        # paho call: paho calls on_publish with its own mutex held (lock-order deadlock).
        self._unconfirmed: list[paho.MQTTMessageInfo] = []
        self._stopping = False
        self._client = self._new_client(f"vitalmon-sim-{opts.ward}-{os.getpid()}", 1000)

    def topic(self, bed: str, group: str = "mon") -> str:
        return self.feed.topic(bed, group)

    # ------------------------------------------------------------------ running

    def run(self, stop: threading.Event | None = None) -> int:
        """Publish until the duration is over or ``stop`` is set; -> exit code."""
        stop = stop or threading.Event()
        try:
            failed = self._wait_connected(self._client, stop)
            if failed is not None:
                return failed
            self._publish_loop(stop)
            self._flush()
            return 0
        finally:
            self._stopping = True
            self._client.disconnect()
            self._client.loop_stop()
            log.info(
                "stopped after %d simulated s: %d messages published (%d keep-alives, %d while "
                "disconnected), %d confirmed",
                self.ticks,
                self.published,
                self.heartbeats,
                self.offline,
                self.confirmed,
            )

    def _publish_loop(self, stop: threading.Event) -> None:
        o = self.opts
        lead = clock_lead(o.speed, o.duration, o.start_ago)
        wall0 = time.monotonic()
        ts0 = self.ts0 = time.time() - lead
        if lead > 0:
            log.info(
                "event time starts %.0f s ago%s",
                lead,
                ""
                if o.speed <= 1
                else f"; at {o.speed:g}x it catches up with the clock "
                f"after {lead / (o.speed - 1):.0f} wall s, then runs in real time",
            )
        feed = self.feed
        if self.thinning > 1:
            log.info(
                "%d monitors at %gx: continuous vitals every %d simulated s instead of every "
                "second (at most ~%g reports per wall second: --max-rate)",
                len(self.patients),
                o.speed,
                feed.mon_step,
                o.max_rate,
            )
        last_sent: dict[tuple[str, str], float] = {}
        next_check = wall0 + o.heartbeat_s
        caught_up = lead == 0 or o.speed <= 1
        k = 0
        try:
            while True:
                due = send_at(k, o.speed, lead)
                if o.duration is not None and k > 0 and due >= o.duration:
                    break
                delay = wall0 + due - time.monotonic()
                if stop.wait(max(delay, 0.0)):
                    return
                if not caught_up and k - lead >= k / o.speed:
                    caught_up = True
                    log.info("event time has caught up with the clock: real time from now on")
                    if self.thinning > thinning(o.rates, len(self.patients), 1.0, o.max_rate):
                        self.thinning = thinning(o.rates, len(self.patients), 1.0, o.max_rate)
                        feed.set_rates(thinned(o.rates, self.thinning))
                ts = ts0 + k
                now = time.monotonic()
                for msg in feed.tick(k, ts):
                    self._publish(msg.topic, msg.payload)
                    last_sent[(msg.bed, msg.group)] = now
                if o.heartbeat_s > 0 and now >= next_check:
                    next_check = now + 1.0
                    self._heartbeats(k, ts, now, last_sent, wall0)
                self.ticks += 1
                k += 1
        finally:
            for msg in feed.flush():
                self._publish(msg.topic, msg.payload)
        if o.duration is not None:
            stop.wait(max(0.0, wall0 + o.duration - time.monotonic()))

    def _heartbeats(
        self, k: int, ts: float, now: float, last_sent: dict[tuple[str, str], float], wall0: float
    ) -> None:
        for bed, patient in self.patients:
            for group in self.feed.groups:
                if now - last_sent.get((bed, group), wall0) < self.opts.heartbeat_s:
                    continue
                msg = self.feed.heartbeat(bed, patient, group, k, ts)
                if msg is not None:
                    self._publish(msg.topic, msg.payload)
                    self.heartbeats += 1
                    last_sent[(bed, group)] = now

    def _publish(self, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=self.opts.qos)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("publish to %s failed: %s", topic, paho.error_string(info.rc))
            return
        self.published += 1
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            # queued by paho for the reconnection; its info raises on is_published()
            self.offline += 1
            return
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

    def _on_publish(
        self, _c: paho.Client, _u: object, _mid: int, _reason: object, _props: object
    ) -> None:
        self.confirmed += 1  # only this thread writes it


# --------------------------------------------------------------------- command line


def _mix_arg(text: str) -> dict[str, float]:
    try:
        return parse_mix(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _rates_arg(text: str) -> dict[str, int]:
    try:
        return parse_rates(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


EPILOG = f"""\
scenarios: {", ".join(SCENARIOS)} (see simulators/patient.py for their courses).
--mix gives each scenario a fraction of the beds (summing to 1), assigned to beds at
random but deterministically for the seed, e.g. --mix normal:0.9,sepsis:0.05,copd:0.05.
copd beds score NEWS2 on SpO2 scale 2 only when the daemon knows it (admit them with the
copd profile). Event time: with --speed above 1 and no --duration the run starts 8 h in
the past (--start-ago) and catches up with the clock; no reading is stamped ahead of it.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--beds", type=int, default=6, help="beds 1..N (default: %(default)s)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--scenario", choices=SCENARIOS, default="normal", help="every bed's")
    which.add_argument(
        "--mix",
        type=_mix_arg,
        default=None,
        metavar="S:F,...",
        help="fraction of the beds per scenario, e.g. normal:0.8,sepsis:0.2",
    )
    p.add_argument("--format", choices=FORMATS, default="object", dest="fmt")
    p.add_argument(
        "--device-rate",
        type=_rates_arg,
        default=None,
        metavar="K=S,...",
        help="simulated seconds between readings (0: never) per "
        + ", ".join(f"{k} ({v})" for k, v in DEFAULT_RATES.items()),
    )
    p.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH_S,
        metavar="S",
        help="batch/senml: simulated seconds per message (default %(default)s)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--ward", default="icu")
    p.add_argument("--device", default="mon1", help="the bedside monitor's topic device level")
    p.add_argument("--seed", type=int, default=None, help="default: random (logged)")
    p.add_argument("--duration", type=float, default=None, help="stop after S wall seconds")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second")
    p.add_argument(
        "--start-ago",
        type=float,
        default=None,
        metavar="S",
        help="event time of the first reading, S seconds before now (default: see below)",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=DEFAULT_HEARTBEAT_S,
        metavar="S",
        help="keep-alive of a device silent for S wall seconds (0: never; default %(default)s)",
    )
    p.add_argument(
        "--max-rate",
        type=float,
        default=DEFAULT_MAX_RATE,
        metavar="N",
        help="at most ~N monitor reports per wall second over all beds: at high speeds the "
        "continuous vitals are reported every n simulated s (0: no limit; default %(default)g)",
    )
    p.add_argument("--qos", type=int, choices=[0, 1, 2], default=1)
    p.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    p.add_argument("--client-id", default=None)
    p.add_argument("--username", default=None)
    p.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S, metavar="S")


def describe(scenarios: list[str]) -> str:
    """``normal 40, sepsis 10 (beds 3, 8, ...)``: the beds of each scenario."""
    counts = Counter(scenarios)
    parts = []
    for name in SCENARIOS:
        if not counts[name]:
            continue
        if name == "normal" or counts[name] == len(scenarios):
            parts.append(f"{name} {counts[name]}")
        else:
            beds = ", ".join(str(i + 1) for i, s in enumerate(scenarios) if s == name)
            parts.append(f"{name} {counts[name]} (beds {beds})")
    return ", ".join(parts)


def main(args: argparse.Namespace) -> int:
    def bad(msg: str) -> int:
        print(f"simulators: {msg}", file=sys.stderr)
        return 2

    if args.beds < 1:
        return bad("--beds must be >= 1")
    if not args.speed > 0:
        return bad("--speed must be > 0")
    if args.batch < 1:
        return bad("--batch must be >= 1")
    if args.start_ago is not None and not args.start_ago >= 0:
        return bad("--start-ago must be >= 0")
    if args.seed is not None and args.seed < 0:
        return bad("--seed must be >= 0")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    rates = args.device_rate if args.device_rate is not None else dict(DEFAULT_RATES)
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
        fmt=args.fmt,
        rates=rates,
        batch_s=args.batch,
        start_ago=args.start_ago,
        heartbeat_s=max(args.heartbeat, 0.0),
        max_rate=max(args.max_rate, 0.0),
    )
    scenarios = assign(seed, args.beds, args.mix) if args.mix else [args.scenario] * args.beds
    sim = Simulator(opts, ward(seed, scenarios))
    log.info(
        "publishing %d bed(s) (%s; seed %d) to %s on %s:%d, MQTT %s QoS %d, format %s, "
        "every %s simulated s, %g simulated s per wall s%s",
        args.beds,
        describe(scenarios),
        seed,
        TOPIC.format(ward=opts.ward, bed=f"{{1..{args.beds}}}", device="{device}"),
        opts.host,
        opts.port,
        opts.protocol,
        opts.qos,
        opts.fmt,
        ", ".join(f"{k} {v}" for k, v in rates.items() if v > 0),
        opts.speed,
        "" if opts.duration is None else f", for {opts.duration:g} s",
    )
    if min(rates["temp"], rates["obs"]) == 0:
        log.info("no temperature or no o2/avpu: a daemon's NEWS2 stays partial (no NEWS2 alerts)")
    elif max(rates["temp"], rates["obs"]) > 1800:
        log.info(
            "NEWS2 on a daemon with rules.news2.freshness_s 1800 is complete (and alerts) "
            "only within 30 min after each temperature/observation round"
        )
    stop = stop_on_signals(log)
    return sim.run(stop)
