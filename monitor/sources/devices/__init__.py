"""Device formats: bytes from a serial line or an HL7 feed -> readings. No I/O here.

Contract of a device format (see :class:`Parser`):

* A **framer** cuts the byte stream into frames: :class:`LineFramer` (CR/LF lines) for the
  ASCII formats, :class:`MllpFramer` (``0x0B`` ... ``0x1C 0x0D``) for HL7. Both keep a
  bounded buffer: an over-long frame is dropped (counted ``too_long``) and framing
  resynchronises on the next delimiter, so garbage or a wrong baud rate never grows
  memory or stops the stream.
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

from collections import Counter
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Literal, Protocol

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
    """Bytes -> HL7 messages framed ``0x0B <message> 0x1C 0x0D``. Bytes outside a frame
    are skipped (counted ``garbage``); a frame over ``max_bytes`` is dropped."""

    START = 0x0B
    END = b"\x1c\x0d"

    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self.too_long = 0
        self.garbage = 0

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf
        buf += data
        while buf:
            if buf[0] != self.START:
                i = buf.find(bytes([self.START]))
                skipped = len(buf) if i < 0 else i
                self.garbage += skipped
                del buf[:skipped]
                continue
            end = buf.find(self.END)
            if end < 0:
                if len(buf) > self.max_bytes:
                    self.too_long += 1
                    del buf[:1]  # resynchronise on the next start byte
                    continue
                break
            if end - 1 > self.max_bytes:
                self.too_long += 1  # complete, but over the bound: dropped all the same
            else:
                out.append(bytes(buf[1:end]))
            del buf[: end + 2]
        return out


def _first(buf: bytearray, start: int, seps: tuple[bytes, ...]) -> int:
    found = [i for i in (buf.find(s, start) for s in seps) if i >= 0]
    return min(found) if found else -1


def frame(payload: bytes) -> bytes:
    """An HL7 message in MLLP framing."""
    return b"\x0b" + payload + b"\x1c\x0d"
