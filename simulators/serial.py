"""Serial bedside-device simulator: one patient's device output on a pseudo-terminal.

``python -m simulators serial --format masimo --scenario desaturation --link /tmp/ttySIM``
opens a pty pair, prints ``device: /dev/pts/N`` (one line on stdout, flushed), points
the ``--link`` symlink at it, and writes the lines a real device would send, at the
device's real rate, to the master side. A reader (vitalmon's serial source, pyserial,
``cat``) opens the slave path -- or the stable link -- as if it were ``/dev/ttyUSB0``.

Formats (each one a pure function: vitals and a time in, bytes out):

* ``masimo`` -- :func:`format_masimo`: Masimo Rad-8 ASCII, one line a second, CRLF,
  local device time, dashes for a missing value, ``EXC`` the exception bit field
  (:data:`EXC_NORMAL`; :data:`EXC_SENSOR_OFF` in the ``sensor_off`` scenario);
* ``nellcor`` -- :func:`nellcor_header` then :func:`format_nellcor`: Nellcor N-560 ASCII
  mode, a header (model, alarm limits, column titles) at power-on and every
  :data:`NELLCOR_HEADER_EVERY` lines, a data line every 2 s with status flags;
* ``hl7`` -- :func:`format_hl7`: an IHE PCD-01 style HL7 v2.6 ORU^R01 (MSH, PID, PV1,
  OBR, one OBX per vital with MDC codes) every 5 s, in MLLP framing;
* ``jsonl`` -- :func:`format_jsonl`: the MQTT simulator's JSON reading object, one a line.

Time: frame ``k`` describes simulated second ``k * interval`` of the patient
(:class:`simulators.patient.Patient`, the same patient as bed 1 of ``simulators mqtt``
with the same ``--seed``), carries event time ``ts0 + k * interval`` and is written
``k / rate`` wall seconds after the start, on the monotonic clock (each deadline is
computed from the start, so delays never accumulate). ``rate`` is ``speed / interval``:
``--speed 20`` runs twenty simulated seconds per wall second, ``--rate 20`` twenty frames
per wall second. As in ``simulators mqtt``, with ``--duration`` and a speed above 1 the
first frame is stamped in the past so that the last one is stamped "now".

A pty does not enforce a baud rate, and nothing paces a writer: the master fd is
non-blocking and a frame that does not fit into the pty's buffer (about 19 KB on Linux
when nobody reads) is dropped whole and counted, as a real device's output is lost when
nobody listens. A frame written only in part is completed before the next one is sent;
if it still cannot be, the next frame is dropped, so a reader never sees half lines
glued together. Bytes a reader writes to the device are read and discarded. The
simulator keeps the slave side open too (that keeps it raw, and a reader may come and
go): what was written before a reader opened the port waits in the buffer, unless the
reader discards its input on open, as pyserial does.

Unplugging (``--unplug-after S``) closes both ends of the pair: a reader's next read
fails at once (pyserial raises ``SerialException``: "device reports readiness to read but
returned no data"), the kernel removes ``/dev/pts/N`` as soon as the master is closed
(even while the reader still holds its fd), and the ``--link`` symlink is removed too,
like a ``/dev/serial/by-id`` link when a USB adapter is pulled. The device keeps
measuring meanwhile (frames are counted as ``unplugged``, not sent). ``--replug-after S``
opens a new pair S seconds later -- usually with another ``/dev/pts`` number -- prints
its path again and re-creates the link: only a reader that opens the link finds it.

The sensor-off scenario (``--scenario sensor_off``, this simulator's own) is a ``normal``
patient whose oximeter probe is off for :data:`SENSOR_OFF_S` of every
:data:`SENSOR_CYCLE_S` seconds, starting after :data:`SENSOR_ON_S`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import math
import os
import sys
import threading
import time
import tty
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Final, TextIO

import numpy as np

from simulators import patient as patient_model
from simulators import stop_on_signals
from simulators.patient import INTEGER_VITALS, Patient, bed_seed, reading

log = logging.getLogger("simulators.serial")

FORMATS: Final = ("masimo", "nellcor", "hl7", "jsonl")
#: The patient model's scenarios and this simulator's own ``sensor_off``.
SCENARIOS: Final = (*patient_model.SCENARIOS, "sensor_off")
#: Simulated seconds between two frames: each device's real rate.
INTERVAL_S: Final[dict[str, float]] = {"masimo": 1.0, "nellcor": 2.0, "hl7": 5.0, "jsonl": 1.0}

#: Masimo ``EXC`` bits: what every line of a normally working Rad-8 carries, and "sensor
#: off the patient".
EXC_NORMAL: Final = 0x800
EXC_SENSOR_OFF: Final = 0x020

#: ``sensor_off`` scenario: the probe is on for SENSOR_ON_S, then off for SENSOR_OFF_S,
#: every SENSOR_CYCLE_S seconds.
SENSOR_ON_S: Final = 30.0
SENSOR_OFF_S: Final = 15.0
SENSOR_CYCLE_S: Final = SENSOR_ON_S + SENSOR_OFF_S

#: The Nellcor header is sent at power-on and again every this many data lines, so that a
#: reader connecting mid-stream sees the limits and the column layout.
NELLCOR_HEADER_EVERY: Final = 25

_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)

Vitals = Mapping[str, float | None]


# ------------------------------------------------------------------- Masimo Rad-8


def _num(vitals: Vitals, key: str) -> float | None:
    v = vitals.get(key)
    return None if v is None or not math.isfinite(v) else float(v)


def format_masimo(
    t: float,
    vitals: Vitals,
    exc: int = EXC_NORMAL,
    *,
    serial_number: int = 145838,
    alarm: int = 0,
) -> bytes:
    """One Masimo Rad-8 line at epoch ``t`` (device clock: local time), with CRLF.

    ``vitals``: ``spo2`` (%), ``hr`` (pulse rate /min), ``pi`` (perfusion index %); a
    missing or None value is sent as dashes. SpCO, SpMet, DESAT and PIDELTA are never
    measured by this device. ``alarm`` and ``exc`` are the hex bit fields.
    """
    stamp = datetime.fromtimestamp(t).strftime("%m/%d/%y %H:%M:%S")
    spo2 = _num(vitals, "spo2")
    bpm = _num(vitals, "hr")
    pi = _num(vitals, "pi")
    s = "---" if spo2 is None else f"{round(spo2):03d}"
    b = "---" if bpm is None else f"{round(bpm):03d}"
    p = "--.--" if pi is None else f"{pi:05.2f}"
    return (
        f"{stamp} SN={serial_number:010d} SPO2={s}% BPM={b} PI={p}% SPCO=--.-% SPMET=--.-% "
        f"DESAT=-- PIDELTA=+-- ALARM={alarm:04X} EXC={exc:06X}\r\n"
    ).encode("ascii")


# ------------------------------------------------------------------ Nellcor N-560


@dataclass(frozen=True, slots=True)
class NellcorLimits:
    """The monitor's alarm limits, printed in its header and behind its status flags.
    The defaults are vitalmon's default SpO2 and HR limits."""

    spo2_low: int = 90
    spo2_high: int = 100
    pr_low: int = 50
    pr_high: int = 120


DEFAULT_LIMITS: Final = NellcorLimits()


#: Status column: six 3-character slots from column 44. The capture shows ``MO`` (motion)
#: in the first slot and ``AO`` (audible alarm off) in the last; the others are assigned
#: by kind: pulse/sensor, SpO2 limit, pulse-rate limit, battery, alarm silence, alarm off.
NELLCOR_STATUS_SLOTS: Final = (
    ("SD", "LP", "LM", "PS", "MO"),
    ("SL", "SH"),
    ("PL", "PH"),
    ("LB", "BU"),
    ("AS",),
    ("AO",),
)


def nellcor_header(limits: NellcorLimits = DEFAULT_LIMITS) -> bytes:
    """The N-560 header: model and limits, patient mode, column titles (CRLF lines)."""
    return (
        f"N-560    VERSION 1.61.00    CRC:XXXX  SpO2 Limit: {limits.spo2_low}-"
        f"{limits.spo2_high}%    PR Limit: {limits.pr_low}-{limits.pr_high}BPM\r\n"
        "                             ADULT           25SAT-S \r\n"
        "TIME                 %SpO2   BPM     PA     Status\r\n"
    ).encode("ascii")


def nellcor_status(
    vitals: Vitals,
    limits: NellcorLimits = DEFAULT_LIMITS,
    *,
    sensor_off: bool = False,
) -> frozenset[str]:
    """The flags an N-560 shows for these vitals: SD (sensor disconnected), SL/SH (SpO2
    beyond its limits), PL/PH (pulse rate beyond its limits)."""
    flags: set[str] = set()
    if sensor_off:
        flags.add("SD")
    spo2 = _num(vitals, "spo2")
    bpm = _num(vitals, "hr")
    if spo2 is not None and round(spo2) < limits.spo2_low:
        flags.add("SL")
    if spo2 is not None and round(spo2) > limits.spo2_high:
        flags.add("SH")
    if bpm is not None and round(bpm) < limits.pr_low:
        flags.add("PL")
    if bpm is not None and round(bpm) > limits.pr_high:
        flags.add("PH")
    return frozenset(flags)


def format_nellcor(t: float, vitals: Vitals, status: frozenset[str] = frozenset()) -> bytes:
    """One N-560 data line at epoch ``t`` (local time), with CRLF.

    Columns as in the capture: time ``DD-Mon-YY HH:MM:SS``, then SpO2, pulse rate and
    pulse amplitude (``pa``, 0-254) right-aligned in 3 characters at columns 21, 29 and
    37 (``---`` when missing), then the status slots (:data:`NELLCOR_STATUS_SLOTS`).
    Trailing blanks are not sent.
    """
    d = datetime.fromtimestamp(t)
    stamp = f"{d.day:02d}-{_MONTHS[d.month - 1]}-{d.year % 100:02d} {d:%H:%M:%S}"

    def col(key: str) -> str:
        v = _num(vitals, key)
        return "---" if v is None else f"{round(v):>3d}"

    slots = []
    for codes in NELLCOR_STATUS_SLOTS:
        shown = [c for c in codes if c in status]
        slots.append(f"{shown[0] if shown else '':<3}")
    line = f"{stamp}   {col('spo2')}     {col('hr')}     {col('pa')}    {''.join(slots)}"
    return (line.rstrip() + "\r\n").encode("ascii")


# ------------------------------------------------------------------ HL7 (PCD-01)


@dataclass(frozen=True, slots=True)
class Location:
    """Where the device is: PV1-3 (point of care ^ room ^ bed) and the patient."""

    point_of_care: str = "ICU"
    room: str = "1"
    bed: str = "1"
    patient_id: str = "SIM0001"
    patient_name: str = "SIMULATED^PATIENT"
    #: MSH-3 / MSH-4: sending application and the device's id.
    application: str = "VITALMON_SIM"
    device_id: str = "SIM0000000001"


DEFAULT_LOCATION: Final = Location()


#: vital -> (OBX-3 MDC code and name, OBX-4 sub-id MDS.VMD.channel, OBX-6 unit). Sub-ids
#: and units follow the Comen PCD-01 sample; its ECG heart rate has none (1.4.1 here).
HL7_OBSERVATIONS: Final[dict[str, tuple[str, str, str]]] = {
    "spo2": ("150456^MDC_PULS_OXIM_SAT_O2^MDC", "1.3.1", "262688^MDC_DIM_PERCENT^MDC"),
    "hr": ("147842^MDC_ECG_HEART_RATE^MDC", "1.4.1", "264864^MDC_DIM_BEAT_PER_MIN^MDC"),
    "rr": ("151562^MDC_RESP_RATE^MDC", "1.14.1", "264928^MDC_DIM_RESP_PER_MIN^MDC"),
    "sbp": ("150021^MDC_PRESS_BLD_NONINV_SYS^MDC", "1.1.9", "266016^MDC_DIM_MMHG^MDC"),
    "dbp": ("150022^MDC_PRESS_BLD_NONINV_DIA^MDC", "1.1.9", "266016^MDC_DIM_MMHG^MDC"),
    "map": ("150023^MDC_PRESS_BLD_NONINV_MEAN^MDC", "1.1.9", "266016^MDC_DIM_MMHG^MDC"),
    "temp": ("150344^MDC_TEMP^MDC", "1.2.1", "268192^MDC_DIM_DEGC^MDC"),
}


def hl7_time(t: float) -> str:
    """``YYYYMMDDHHMMSS+ZZZZ`` in local time, as PCD-01 devices send it."""
    return datetime.fromtimestamp(t).astimezone().strftime("%Y%m%d%H%M%S%z")


def format_hl7(
    t: float,
    vitals: Vitals,
    *,
    control_id: str,
    location: Location = DEFAULT_LOCATION,
) -> bytes:
    """An ORU^R01 message (segments ending in CR) in MLLP framing ``0x0B ... 0x1C 0x0D``.

    One OBX per vital present in ``vitals`` (:data:`HL7_OBSERVATIONS`); a missing vital
    has no OBX. ``control_id`` is MSH-10, unique per message.
    """
    ts = hl7_time(t)
    loc = location
    segments = [
        f"MSH|^~\\&|{loc.application}|{loc.device_id}|||{ts}||ORU^R01^ORU_R01|{control_id}"
        "|P|2.6||||||UNICODE UTF-8",
        f"PID|||{loc.patient_id}||{loc.patient_name}|||U",
        f"PV1||I|{loc.point_of_care}^{loc.room}^{loc.bed}",
        f"OBR|1|||182777000^monitoring of patient^SCT|||{ts}",
    ]
    n = 0
    for vital, (code, sub, unit) in HL7_OBSERVATIONS.items():
        v = _num(vitals, vital)
        if v is None:
            continue
        n += 1
        value = str(round(v)) if vital in INTEGER_VITALS else f"{v:.1f}"
        mdc = code.split("^", 1)[0]
        segments.append(f"OBX|{n}|NM|{code}|{sub}.{mdc}|{value}|{unit}|||||F|||{ts}")
    payload = "\r".join(segments) + "\r"
    return b"\x0b" + payload.encode("utf-8") + b"\x1c\x0d"


# ----------------------------------------------------------------------- JSON lines


def format_jsonl(t: float, vitals: Vitals, status: str | None = None) -> bytes:
    """The MQTT simulator's reading object (``{"ts": ..., "hr": 72, ...}``) and LF.

    ``status`` (``"ok"``, ``"sensor_off"``) is added as the ``status`` key when given.
    """
    sample = {k: v for k, v in vitals.items() if v is not None and math.isfinite(v)}
    obj: dict[str, float | int | str] = dict(reading(sample, t))
    if status is not None:
        obj["status"] = status
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode("ascii")


# ------------------------------------------------------------------ the device


def sensor_is_off(scenario: str, t: float) -> bool:
    """Whether the oximeter probe is off at simulated second ``t``."""
    return scenario == "sensor_off" and t % SENSOR_CYCLE_S >= SENSOR_ON_S


def perfusion_index(seed: int, t: float) -> float:
    """A deterministic perfusion index (%) at ``t``: a per-patient level between 1.5 and
    6 %, a slow +-15 % swing and per-second noise."""
    base = 1.5 + 4.5 * float(np.random.default_rng([seed, 3]).uniform())
    noise = float(np.random.default_rng([seed, 4, math.floor(t)]).normal(0.0, 0.04))
    pi = base * (1 + 0.15 * math.sin(2 * math.pi * t / 97.0) + noise)
    return round(min(max(pi, 0.02), 20.0), 2)


class Device:
    """What one simulated device sends: ``frame(k, ts)`` is frame ``k``'s bytes. Pure:
    the bytes depend only on the constructor arguments, ``k`` and ``ts``."""

    def __init__(
        self,
        fmt: str,
        scenario: str,
        seed: int,
        *,
        interval_s: float | None = None,
        location: Location = DEFAULT_LOCATION,
        limits: NellcorLimits = DEFAULT_LIMITS,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
        self.fmt = fmt
        self.scenario = scenario
        self.seed = seed
        self.interval_s = INTERVAL_S[fmt] if interval_s is None else interval_s
        if not self.interval_s > 0 or not math.isfinite(self.interval_s):
            raise ValueError("interval must be a positive number of seconds")
        #: The same patient as bed 1 of ``simulators mqtt --seed SEED``.
        self.patient = Patient(
            bed_seed(seed, 0), "normal" if scenario == "sensor_off" else scenario
        )
        self.location = location
        self.limits = limits
        self.serial_number = self.patient.seed % 10**10

    def vitals(self, t: float) -> dict[str, float | None]:
        """The patient's vitals at simulated second ``t``, with the device's own ``pi``
        (perfusion index, %) and ``pa`` (Nellcor pulse amplitude); None for what the
        oximeter cannot measure while its probe is off."""
        out: dict[str, float | None] = dict(self.patient.sample(t))
        pi = perfusion_index(self.patient.seed, t)
        out["pi"] = pi
        out["pa"] = float(min(254, round(pi * 18)))
        if sensor_is_off(self.scenario, t):
            for k in ("spo2", "pi", "pa") if self.fmt == "hl7" else ("spo2", "hr", "pi", "pa"):
                out[k] = None
        return out

    def frame(self, k: int, ts: float) -> bytes:
        """Frame ``k`` (simulated second ``k * interval``), stamped with epoch ``ts``."""
        t = k * self.interval_s
        v = self.vitals(t)
        off = sensor_is_off(self.scenario, t)
        if self.fmt == "masimo":
            exc = EXC_SENSOR_OFF if off else EXC_NORMAL
            return format_masimo(ts, v, exc, serial_number=self.serial_number)
        if self.fmt == "nellcor":
            line = format_nellcor(ts, v, nellcor_status(v, self.limits, sensor_off=off))
            if k % NELLCOR_HEADER_EVERY == 0:
                return nellcor_header(self.limits) + line
            return line
        if self.fmt == "hl7":
            stamp = datetime.fromtimestamp(ts).strftime("%Y%m%d%H%M%S")
            return format_hl7(ts, v, control_id=f"{stamp}{k % 10000:04d}", location=self.location)
        if self.scenario == "sensor_off":
            # The probe is off: the object carries the flag alone (vitals sent with it
            # would be refused); "ok" ends it.
            return format_jsonl(ts, {} if off else v, "sensor_off" if off else "ok")
        return format_jsonl(ts, v)


# ---------------------------------------------------------------------- the pty


@dataclass(frozen=True, slots=True)
class Options:
    fmt: str = "masimo"
    scenario: str = "normal"
    seed: int = 0
    #: Symlink made to point at the device (replaced if it exists, removed at exit).
    link: str | None = None
    #: Simulated seconds between frames; None: the device's own (:data:`INTERVAL_S`).
    interval_s: float | None = None
    #: Frames per wall second; None: ``speed / interval``.
    rate: float | None = None
    #: Simulated seconds per wall second (ignored when ``rate`` is given).
    speed: float = 1.0
    #: Wall seconds to run; None runs until stopped.
    duration: float | None = None
    #: Wall seconds after the start at which the device is unplugged, and after the
    #: unplug at which it is plugged in again.
    unplug_after: float | None = None
    replug_after: float | None = None
    location: Location = field(default_factory=Location)


@dataclass(slots=True)
class _Port:
    master: int
    slave: int
    path: str


class SerialSimulator:
    """Writes a :class:`Device`'s frames to a pty's master side, paced on the monotonic
    clock; unplugs and replugs it on schedule."""

    def __init__(self, opts: Options, out: TextIO | None = None) -> None:
        self.device = Device(
            opts.fmt,
            opts.scenario,
            opts.seed,
            interval_s=opts.interval_s,
            location=opts.location,
        )
        rate = opts.rate if opts.rate is not None else opts.speed / self.device.interval_s
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError("rate and speed must be positive numbers")
        if opts.replug_after is not None and opts.unplug_after is None:
            raise ValueError("--replug-after needs --unplug-after")
        if opts.scenario == "unplug" and opts.unplug_after is None:
            # the scenario's own schedule (simulated seconds), in wall seconds at this speed
            speed = rate * self.device.interval_s
            opts = replace(
                opts,
                unplug_after=patient_model.UNPLUG_AT_S / speed,
                replug_after=patient_model.UNPLUG_S / speed,
            )
        self.opts = opts
        self.rate = rate
        #: Simulated seconds per wall second.
        self.speed = rate * self.device.interval_s
        self._out = out if out is not None else sys.stdout
        self._port: _Port | None = None
        self._pending = b""
        self.frames = 0  #: frames the device produced
        self.written = 0  #: frames written whole to the pty
        self.dropped = 0  #: frames dropped because the pty's buffer was full
        self.unplugged = 0  #: frames produced while unplugged (not sent)
        self.plugs = 0  #: pty pairs opened
        #: Device paths opened so far, in order.
        self.paths: list[str] = []

    @property
    def path(self) -> str | None:
        """The current device path; None while unplugged."""
        return None if self._port is None else self._port.path

    # ------------------------------------------------------------------ running

    def run(self, stop: threading.Event | None = None) -> int:
        """Write frames until the duration is over or ``stop`` is set; -> exit code."""
        stop = stop or threading.Event()
        o = self.opts
        try:
            self._plug()
            wall0 = time.monotonic()
            ts0 = time.time()
            if o.duration is not None and self.speed > 1:
                ts0 -= o.duration * (self.speed - 1)
            end = None if o.duration is None else wall0 + o.duration
            unplug_at = None if o.unplug_after is None else wall0 + o.unplug_after
            replug_at: float | None = None
            k = 0
            next_frame = wall0
            while not stop.is_set():
                now = time.monotonic()
                if end is not None and now >= end:
                    break
                if unplug_at is not None and now >= unplug_at:
                    unplug_at = None
                    self._unplug()
                    if o.replug_after is not None:
                        replug_at = now + o.replug_after
                if replug_at is not None and now >= replug_at:
                    replug_at = None
                    self._plug()
                if now >= next_frame:
                    self._send(self.device.frame(k, ts0 + k * self.device.interval_s))
                    k += 1
                    next_frame = wall0 + k / self.rate
                    continue
                self._drain()
                wake = min(t for t in (next_frame, end, unplug_at, replug_at) if t is not None)
                stop.wait(max(wake - time.monotonic(), 0.0))
            return 0
        finally:
            self._unplug()
            log.info(
                "stopped: %d frames, %d written, %d dropped (buffer full), %d while unplugged",
                self.frames,
                self.written,
                self.dropped,
                self.unplugged,
            )

    # -------------------------------------------------------------- the pty pair

    def _plug(self) -> None:
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            path = os.ttyname(slave)
            if self.opts.link is not None:
                make_link(self.opts.link, path)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        # The slave stays open here too: its raw mode holds, and with nobody reading the
        # data waits in its buffer (then frames are dropped) instead of failing.
        self._port = _Port(master, slave, path)
        self._pending = b""
        self.plugs += 1
        self.paths.append(path)
        log.info(
            "device %s%s: %s every %g s (simulated), %g frames/s",
            path,
            "" if self.opts.link is None else f" (link {self.opts.link})",
            self.device.fmt,
            self.device.interval_s,
            self.rate,
        )
        with contextlib.suppress(OSError, ValueError):  # stdout closed: keep running
            print(f"device: {path}", file=self._out, flush=True)

    def _unplug(self) -> None:
        port, self._port = self._port, None
        if port is None:
            return
        if self.opts.link is not None:
            remove_link(self.opts.link, port.path)
        os.close(port.master)  # the kernel removes port.path now
        os.close(port.slave)
        self._pending = b""
        log.info("unplugged %s", port.path)

    # ------------------------------------------------------------------ writing

    def _send(self, data: bytes) -> None:
        self.frames += 1
        port = self._port
        if port is None:
            self.unplugged += 1
            return
        if self._pending:
            self._pending = self._write(port, self._pending)
            if self._pending:
                self._drop()
                return
        rest = self._write(port, data)
        if len(rest) == len(data):
            self._drop()
            return
        self._pending = rest
        self.written += 1

    def _write(self, port: _Port, data: bytes) -> bytes:
        """Write what fits without blocking; -> what is left."""
        try:
            n = os.write(port.master, data)
        except BlockingIOError:
            return data
        except OSError as e:
            log.warning("write to %s failed: %s", port.path, os.strerror(e.errno or errno.EIO))
            return data
        return data[n:]

    def _drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 100 == 0:
            log.warning("nobody reads %s: %d frames dropped so far", self.path, self.dropped)

    def _drain(self) -> None:
        """Read and discard what a reader wrote to the device."""
        port = self._port
        if port is None:
            return
        with contextlib.suppress(OSError):
            while os.read(port.master, 4096):
                pass


def make_link(link: str, target: str) -> None:
    """Point ``link`` at ``target``, atomically replacing whatever ``link`` was."""
    if os.path.isdir(link) and not os.path.islink(link):
        raise IsADirectoryError(f"{link} is a directory")
    tmp = f"{link}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def remove_link(link: str, target: str) -> None:
    """Remove ``link`` if it still points at ``target`` (and not at someone else's)."""
    with contextlib.suppress(OSError):
        if os.readlink(link) == target:
            os.unlink(link)


# --------------------------------------------------------------------- command line

EPILOG = """\
The device path (a /dev/pts/N) is printed on stdout as "device: PATH", again after each
replug. --unplug-after S closes the pty pair S wall seconds after the start: the reader's
next read fails, /dev/pts/N disappears and the --link symlink is removed, as when a USB
adapter is pulled. --replug-after S opens a new pair S seconds after the unplug; it gets
a new /dev/pts number, so only a reader configured with the --link path finds it again
(use --link for replug to be useful). SIGINT/SIGTERM stop cleanly and remove the link.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--format", choices=FORMATS, default="masimo", dest="fmt")
    p.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="normal",
        help="sensor_off: a normal patient whose probe is off 15 s of every 45 s",
    )
    p.add_argument("--seed", type=int, default=None, help="default: random (logged)")
    p.add_argument(
        "--link", default=None, metavar="PATH", help="symlink PATH -> the device (replaced)"
    )
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--rate", type=float, default=None, metavar="HZ", help="frames per wall second"
    )
    pace.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="simulated seconds per wall second (default 1)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="S",
        help="simulated seconds between frames (default: masimo 1, nellcor 2, hl7 5, jsonl 1)",
    )
    p.add_argument(
        "--duration", type=float, default=None, metavar="S", help="stop after S wall seconds"
    )
    p.add_argument(
        "--unplug-after", type=float, default=None, metavar="S", help="unplug after S wall s"
    )
    p.add_argument(
        "--replug-after",
        type=float,
        default=None,
        metavar="S",
        help="plug in again S wall s after the unplug (needs --link to be found)",
    )
    p.add_argument("--point-of-care", default="ICU", help="HL7 PV1-3.1")
    p.add_argument("--room", default="1", help="HL7 PV1-3.2")
    p.add_argument("--bed", default="1", help="HL7 PV1-3.3")


def main(args: argparse.Namespace) -> int:
    def bad(msg: str) -> int:
        print(f"simulators: {msg}", file=sys.stderr)
        return 2

    if args.rate is not None and not args.rate > 0:
        return bad("--rate must be > 0")
    if not args.speed > 0:
        return bad("--speed must be > 0")
    if args.interval is not None and not args.interval > 0:
        return bad("--interval must be > 0")
    if args.duration is not None and not args.duration > 0:
        return bad("--duration must be > 0")
    if args.unplug_after is not None and args.unplug_after < 0:
        return bad("--unplug-after must be >= 0")
    if args.replug_after is not None:
        if args.unplug_after is None:
            return bad("--replug-after needs --unplug-after")
        if args.replug_after < 0:
            return bad("--replug-after must be >= 0")
        if args.link is None:
            log.warning("--replug-after without --link: the new device has a new path")
    if args.seed is not None and args.seed < 0:
        return bad("--seed must be >= 0")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    opts = Options(
        fmt=args.fmt,
        scenario=args.scenario,
        seed=seed,
        link=args.link,
        interval_s=args.interval,
        rate=args.rate,
        speed=args.speed,
        duration=args.duration,
        unplug_after=args.unplug_after,
        replug_after=args.replug_after,
        location=Location(point_of_care=args.point_of_care, room=args.room, bed=args.bed),
    )
    sim = SerialSimulator(opts)
    log.info("simulating a %s device (%s, seed %d)", opts.fmt, opts.scenario, seed)
    stop = stop_on_signals(log)
    try:
        return sim.run(stop)
    except OSError as e:
        print(f"simulators: {e}", file=sys.stderr)
        return 1
