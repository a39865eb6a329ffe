"""Device formats: bytes from a serial line or an HL7 feed -> readings. No I/O here.

Contract of a device format (see :class:`Parser`):

* A **framer** cuts the byte stream into frames: :class:`LineFramer` (CR/LF lines) for the
  ASCII formats, :class:`MllpFramer` (``0x0B`` ... ``0x1C 0x0D``) for HL7, on a serial
  line and on the MLLP listener alike. Both keep a bounded buffer: an over-long frame is
  dropped (counted ``too_long``) and framing resynchronises on the next delimiter, so
  garbage or a wrong baud rate never grows memory or stops the stream. An MLLP start byte
  always starts a new frame: a frame cut short (no end before the next start) is set
  aside, counted ``truncated``, never merged into the next message.
* A **parser** (one per format, made by :func:`make_parser`) turns one frame into a
  :class:`Parsed`: readings, device statuses (sensor/signal flags -> technical alarms),
  the device's own alarm reports (HL7), counts of observations it could not map to a
  vital (HL7) and rejections with a cause. It never raises on any input (property-tested), and keeps
  only the state its format needs (a CSV header, a Nellcor header).
* Where a reading's time comes from is :attr:`DeviceContext.clock`: ``receive`` (the
  default: the moment the frame was read) or ``device`` (the device's own clock, in
  :attr:`DeviceContext.tz`, refused beyond ``max_skew_s`` from the receive time).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Literal, Protocol

from monitor.hl7v2 import frame as frame  # (its old place: the MLLP framer below)
from monitor.model import DeviceAlarmReport, DeviceStatus, Reading, Rejection

Clock = Literal["receive", "device"]

#: Formats and the framing they use.
FORMATS: dict[str, Literal["line", "mllp"]] = {
    "masimo": "line",
    "nellcor": "line",
    "jsonl": "line",
    "csv": "line",
    "hl7": "mllp",
}


@dataclass(frozen=True, slots=True)
class DeviceContext:
    """Who the device is and when its frame arrived."""

    ward: str
    bed: str
    device: str
    now: float  #: receive time (wall clock, epoch s)
    clock: Clock = "receive"
    tz: tzinfo | None = None  #: device clock's zone (None: the system's local zone)
    #: With clock "device": a device time further than this from ``now`` is refused
    #: (``bad_ts``): a clock never set, or set to another zone.
    max_skew_s: float = 300.0
    patient: str | None = None


@dataclass(slots=True)
class Parsed:
    readings: list[Reading] = field(default_factory=list)
    statuses: list[DeviceStatus] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    #: The alarms and INOPs each device reports itself: its full set, one report per
    #: device and frame (HL7 ``MDIL-ALERT`` segments; :mod:`monitor.engine.device_alarms`).
    device_alarms: list[DeviceAlarmReport] = field(default_factory=list)
    #: Observations that map to no vital, by a short text of their code (never a value,
    #: never patient data): counted, exported as a metric, never dropped silently.
    unmapped: Counter[str] = field(default_factory=Counter)

    def reject(self, cause: str, detail: str, frame: bytes = b"") -> None:
        self.rejections.append(Rejection(cause, detail, "", frame[:1024]))


class Parser(Protocol):
    def parse(self, frame: bytes, ctx: DeviceContext) -> Parsed:
        """One frame (without its delimiters) -> readings, statuses, rejections."""
        ...


def make_parser(fmt: str) -> Parser:
    """A fresh parser for one device connection."""
    if fmt == "masimo":
        from monitor.sources.devices.masimo import MasimoParser

        return MasimoParser()
    if fmt == "nellcor":
        from monitor.sources.devices.nellcor import NellcorParser

        return NellcorParser()
    if fmt == "jsonl":
        from monitor.sources.devices.text import JsonLinesParser

        return JsonLinesParser()
    if fmt == "csv":
        from monitor.sources.devices.text import CsvParser

        return CsvParser()
    if fmt == "hl7":
        from monitor.sources.devices.hl7 import Hl7Parser

        return Hl7Parser()
    raise ValueError(f"unknown device format {fmt!r} (known: {', '.join(FORMATS)})")


class LineFramer:
    """Bytes -> lines (split on LF; a trailing CR is stripped; CR alone also ends a line,
    as some devices send it). Lines longer than ``max_bytes`` are dropped and counted."""

    def __init__(self, max_bytes: int = 4096) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._discarding = False
        self.too_long = 0

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf
        buf += data
        start = 0
        while True:
            cut = _first(buf, start, (b"\n", b"\r"))
            if cut < 0:
                break
            line = bytes(buf[start:cut])
            start = cut + 1
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > self.max_bytes:
                self.too_long += 1
                continue
            if line:
                out.append(line)
        del buf[:start]
        if len(buf) > self.max_bytes:
            self.too_long += 1
            buf.clear()
            self._discarding = True  # drop the rest of this line too
        return out


class MllpFramer:
    """Bytes -> HL7 messages framed ``0x0B <message> 0x1C 0x0D``.

    * Bytes outside a frame are skipped (counted ``garbage``); a frame over ``max_bytes``
      is dropped (``too_long``), and the bytes after it up to the next start byte are part
      of it, not garbage.
    * A start byte (``0x0B``, which HL7 text never contains) always starts a new frame. A
      frame still open when the next one starts was cut short (its sender gave up on it
      mid-way and sent the next): it is never merged into the next message (whose readings
      would be lost, and whose control id would go unanswered), but set aside for
      :meth:`take_truncated` (counted ``truncated``) and the next frame read on its own. A
      stray start byte (nothing but blanks after it before the next) is only ``garbage``.
    """

    START = 0x0B
    END = b"\x1c\x0d"

    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self.too_long = 0
        self.garbage = 0
        self.truncated = 0
        self._cut: list[bytes] = []
        self._dropping = False  #: inside a frame dropped as too long

    def take_truncated(self) -> list[bytes]:
        """The frames cut short since the last call (each at most ``max_bytes``): for the
        caller to count and dead-letter (their size and control id, never their content)."""
        cut, self._cut = self._cut, []
        return cut

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf
        buf += data
        start = bytes([self.START])
        while buf:
            if buf[0] != self.START:
                i = buf.find(start)
                skipped = len(buf) if i < 0 else i
                if not self._dropping:
                    self.garbage += skipped
                del buf[:skipped]
                continue
            self._dropping = False
            end = buf.find(self.END, 1)
            nxt = buf.find(start, 1, len(buf) if end < 0 else end)
            if nxt >= 0:  # the next frame starts before this one ended: cut short
                payload = bytes(buf[1:nxt])
                if payload.strip(b"\x1c\r\n\t "):
                    self.truncated += 1
                    self._cut.append(payload[: self.max_bytes])
                else:
                    self.garbage += nxt  # a stray start byte
                del buf[:nxt]
                continue
            if end < 0:
                if len(buf) - 1 > self.max_bytes:
                    self.too_long += 1  # dropped while it grows; the rest of it too
                    self._dropping = True
                    del buf[:]
                break
            if end - 1 > self.max_bytes:
                self.too_long += 1  # complete, but over the bound: dropped all the same
            else:
                out.append(bytes(buf[1:end]))
            del buf[: end + 2]
        return out


#: The name the MLLP listener's fix introduced: :class:`MllpFramer` itself now.
RestartingMllpFramer = MllpFramer


def mllp_control_id(payload: bytes) -> str:
    """MSH-10 of a message cut short, when its MSH segment came whole (its own field
    separator, MSH-1); for a log line or a dead letter's detail: letters, digits and
    ``.-_`` only, at most 40 characters; else ""."""
    parts = re.split(rb"[\r\n]", payload.lstrip(), maxsplit=1)
    head = parts[0]
    if len(parts) < 2 or not head.startswith(b"MSH") or len(head) < 4:
        return ""
    fields = head.split(head[3:4])
    raw = fields[9] if len(fields) > 9 else b""
    return re.sub(r"[^0-9A-Za-z._-]", "", raw.decode("latin-1"))[:40]


def truncated_frame(cut: bytes, topic: str, then: str = "") -> Rejection:
    """The dead letter of an MLLP frame cut short by the next start byte (one of
    :meth:`MllpFramer.take_truncated`): its size and control id, never its content (patient
    data); ``then`` follows "discarded" in its detail (what else became of it)."""
    control = mllp_control_id(cut)
    said = f", control id {control}" if control else ""
    detail = (
        f"MLLP frame of {len(cut)} bytes{said} cut short by the next start byte"
        f" (no end 0x1C 0x0D): discarded{then}"
    )
    return Rejection("truncated_frame", detail, topic)


def _first(buf: bytearray, start: int, seps: tuple[bytes, ...]) -> int:
    found = [i for i in (buf.find(s, start) for s in seps) if i >= 0]
    return min(found) if found else -1
