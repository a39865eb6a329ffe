"""A bedside device on a serial port (RS-232, USB-serial adapter, pty).

Contract (see :mod:`monitor.sources`): ``run(emit, reject)`` opens the port with
pyserial through ``serial_asyncio_fast`` and turns its bytes into frames (lines, or MLLP
for HL7), each frame into readings and device statuses by the configured format
(:mod:`monitor.sources.devices`), emitted in order with back-pressure. ``stop()`` ends
``run`` at once; what was emitted is the engine's.

The port is the weak link, so it never stops the daemon:

* missing at start-up, or lost later (a cable pulled, an adapter unplugged, the pty
  closed: reads raise within ~10 ms), it is reopened with jittered backoff
  (``retry_min_s`` .. ``retry_max_s``) and ``device.disconnected`` is raised once, until
  data flows again. ``startup_error_behavior: error`` makes a port missing at start-up
  fatal instead (Telegraf's ``startup_error_behavior``);
* open but quiet for ``silent_after_s`` (a writer that stopped raises no error at all):
  ``device.silent``, resolved by the next bytes;
* garbage, wrong-baud noise, over-long lines and duplicates are refused by cause
  (dead letters, counted), never raised;
* with ``format: hl7`` (MLLP framing), a frame cut short (a start byte ``0x0B`` before
  its end ``0x1C 0x0D``: the device gave up on a message mid-way and sent the next) is
  discarded, counted ``truncated`` and dead-lettered ``truncated_frame`` (its size and
  control id, never its content), logged once per opening of the port; the message after
  it is read on its own, as on the MLLP listener (:mod:`monitor.sources.hl7mllp`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zoneinfo
from collections import Counter
from dataclasses import replace

import serial
import serial_asyncio_fast

from monitor.config import SerialSourceConfig
from monitor.metrics import Sample, sample
from monitor.model import DeviceAlarmReport, DeviceStatus, Reading
from monitor.sources import Batch, Emit, Reject, SourceContext, register_source
from monitor.sources.devices import (
    FORMATS,
    DeviceContext,
    LineFramer,
    MllpFramer,
    Parser,
    make_parser,
    truncated_frame,
)
from monitor.sources.link import DISCONNECTED, SILENT, LinkAlarms
from monitor.sources.unmapped import Unmapped

log = logging.getLogger("vitalmon.source.serial")

READ_CHUNK = 4096


class SerialSource:
    def __init__(self, cfg: SerialSourceConfig, silent_after_s: float) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.silent_after_s = cfg.silent_after_s or silent_after_s
        self.device = cfg.device_name
        self.alarms = LinkAlarms(cfg.ward, cfg.bed, self.device)
        #: opened, lost, bytes, frames, readings, too_long, garbage and truncated (MLLP),
        #: rejected[<cause>]: totals over every opening of the port
        self.counts: Counter[str] = Counter()
        #: observations the format maps to no vital, by code (HL7; the metric)
        self.unmapped = Unmapped(self.name, log)
        self.connected = asyncio.Event()  #: set while the port is open
        self._tz = zoneinfo.ZoneInfo(cfg.timezone) if cfg.timezone else None
        self._stopping = asyncio.Event()
        self._last_rx = 0.0  #: receive time given to the latest frame

    # ------------------------------------------------------------------ control

    def check(self) -> None:
        """``startup_error_behavior: error``: raise OSError now if the port cannot open."""
        if self.cfg.startup_error_behavior != "error":
            return
        try:
            serial.Serial(self.cfg.port, self.cfg.baudrate).close()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise OSError(f"serial port {self.cfg.port}: {exc}") from None

    def stop(self) -> None:
        self._stopping.set()

    def samples(self) -> list[Sample]:
        """``/metrics``: whether the port is open."""
        is_open = 1 if self.connected.is_set() else 0
        return [sample("vitalmon_serial_port_open", is_open, port=self.cfg.port)]

    # --------------------------------------------------------------------- run

    async def run(self, emit: Emit, reject: Reject) -> None:
        delay = self.cfg.retry_min_s
        first = True
        while not self._stopping.is_set():
            try:
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=self.cfg.port,
                    baudrate=self.cfg.baudrate,
                    bytesize=self.cfg.bytesize,
                    parity=self.cfg.parity,
                    stopbits=self.cfg.stopbits,
                )
            except (serial.SerialException, OSError, ValueError) as exc:
                if first:
                    log.warning("%s: cannot open (%s); retrying", self.name, _reason(exc))
                await self._alarm(emit, DISCONNECTED, f"cannot open {self.cfg.port}")
                first = False
                await self._sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.cfg.retry_max_s)
                continue
            first = False
            delay = self.cfg.retry_min_s
            self.counts["opened"] += 1
            self._last_rx = max(self._last_rx, time.time())  # what is read came after this
            self.connected.set()
            log.info("%s: open (%s, %d baud)", self.name, self.cfg.format, self.cfg.baudrate)
            try:
                lost = await self._read(reader, emit, reject)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    writer.close()
            if lost is not None:
                self.counts["lost"] += 1
                log.warning("%s: lost (%s); reopening", self.name, lost)
                await self._clear(emit, SILENT, "port lost; silence no longer counted")
                await self._alarm(emit, DISCONNECTED, f"{self.cfg.port} lost: {lost}")

    async def _read(self, reader: asyncio.StreamReader, emit: Emit, reject: Reject) -> str | None:
        """Read until the port is lost (-> the reason) or stop() (-> None)."""
        framing = FORMATS[self.cfg.format]
        framer = MllpFramer() if framing == "mllp" else LineFramer(self.cfg.max_line_bytes)
        parser = make_parser(self.cfg.format)
        warned = False  #: a frame cut short was logged since the port opened
        stopping = asyncio.ensure_future(self._stopping.wait())
        last_data = time.monotonic()
        try:
            while True:
                read = asyncio.ensure_future(reader.read(READ_CHUNK))
                timeout = max(0.0, last_data + self.silent_after_s - time.monotonic())
                done, _ = await asyncio.wait(
                    {read, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if stopping in done:
                    read.cancel()
                    return None
                if read not in done:  # open, but nothing for silent_after_s
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await read
                    await self._alarm(
                        emit, SILENT, f"no data for {self.silent_after_s:g} s with the port open"
                    )
                    last_data = time.monotonic()  # (raised once; re-armed for the log)
                    continue
                try:
                    data = read.result()
                except (serial.SerialException, OSError) as exc:
                    return _reason(exc)
                if not data:
                    return "end of file"
                last_data = time.monotonic()
                self.counts["bytes"] += len(data)
                await self._clear(emit, DISCONNECTED, "data again")
                await self._clear(emit, SILENT, "data again")
                too_long = framer.too_long
                if isinstance(framer, MllpFramer):
                    garbage = framer.garbage
                    frames = framer.feed(data)
                    self.counts["garbage"] += framer.garbage - garbage
                    for cut in framer.take_truncated():
                        self._truncated(cut, reject, warned)
                        warned = True
                else:
                    frames = framer.feed(data)
                self.counts["too_long"] += framer.too_long - too_long
                await self._frames(frames, parser, emit, reject)
        finally:
            stopping.cancel()

    def _truncated(self, cut: bytes, reject: Reject, warned: bool) -> None:
        """An MLLP frame cut short by the next start byte: discarded, dead-lettered without
        its content (patient data), never merged into the next message."""
        self.counts["truncated"] += 1
        rejection = truncated_frame(cut, self.name)
        reject(rejection)
        log.log(
            logging.DEBUG if warned else logging.WARNING,
            "%s: the device sent an %s",
            self.name,
            rejection.detail,
        )

    async def _frames(
        self, frames: list[bytes], parser: Parser, emit: Emit, reject: Reject
    ) -> None:
        if not frames:
            return
        now = time.time()
        ctx = DeviceContext(
            self.cfg.ward,
            self.cfg.bed,
            self.device,
            now,
            self.cfg.clock,
            self._tz,
            self.cfg.max_skew_s,
        )
        readings: list[Reading] = []
        statuses: list[DeviceStatus] = []
        reports: list[DeviceAlarmReport] = []
        # frames read together arrived since the previous read: spread over that interval,
        # never later than now, each distinct (a burst is many readings, not one reading
        # and its duplicates)
        step = (now - self._last_rx) / len(frames) if now > self._last_rx else 0.0
        for f in frames:
            self.counts["frames"] += 1
            t = max(self._last_rx + step, self._last_rx + 1e-6)
            self._last_rx = t
            parsed = parser.parse(f, replace(ctx, now=t))
            readings += parsed.readings
            statuses += parsed.statuses
            reports += parsed.device_alarms
            self.unmapped.add(parsed.unmapped)
            for rej in parsed.rejections:
                self.counts[f"rejected[{rej.cause}]"] += 1
                reject(replace(rej, topic=self.name))
        if readings or statuses or reports:
            self.counts["readings"] += len(readings)
            await emit(
                Batch(
                    readings,
                    None,
                    now,
                    statuses=statuses,
                    device_alarms=reports,
                    snapshot=self.cfg.format == "hl7",
                )
            )

    # ------------------------------------------------------------------ alarms

    async def _alarm(self, emit: Emit, rule: str, detail: str) -> None:
        event = self.alarms.raise_(rule, detail, time.time())
        if event is not None:
            log.warning("%s: technical alarm %s: %s", self.name, rule, detail)
            await emit(Batch([], alarms=[event]))

    async def _clear(self, emit: Emit, rule: str, detail: str) -> None:
        if not self.alarms.is_open(rule):
            return
        event = self.alarms.clear(rule, detail, time.time())
        if event is not None:
            log.info("%s: %s resolved", self.name, rule)
            await emit(Batch([], alarms=[event]))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


@register_source(SerialSourceConfig)
def _build(cfg: SerialSourceConfig, ctx: SourceContext) -> SerialSource:
    source = SerialSource(cfg, ctx.rules.stale_after_s)
    ctx.watch_elsewhere(cfg.ward, cfg.bed, source.device)  # its own link alarms
    return source


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "returned no data" in text:  # pyserial's words for a port that went away
        return "the port went away (device unplugged, adapter removed or pty closed)"
    return text[:200]
