"""Line-oriented text formats: JSON lines (``jsonl``) and CSV (``csv``), plus the helpers
the ASCII device formats (:mod:`.masimo`, :mod:`.nellcor`) share. No I/O here.

``jsonl`` -- one MQTT-style reading object per line (README, "Readings"), decoded by
:func:`monitor.sources.codecs.decode` exactly as an MQTT payload is: same fields, same
``status``, same rejection causes. A ``ts`` in the object is honoured (event time); without
one the reading is stamped :attr:`DeviceContext.now`. ``max_skew_s`` is the limit for a
``ts`` in the future (``future_ts``). ``patient`` falls back to the context's.

``csv`` -- the first non-empty line is a header: an optional ``ts`` column (epoch seconds
or ISO 8601 with a UTC offset; a blank cell means "now") and one column per vital
(names of :data:`~monitor.model.VITALS`, any case). Then one row per instant:

* unknown columns: one ``unknown_vital`` rejection when the header is read, the column
  is ignored afterwards (a header without any known vital is refused as a whole, and rows
  are ``bad_line`` until a usable header comes); empty column names are ignored;
* a row with the wrong number of fields: ``bad_line``; a blank cell: no value;
* values are checked like JSON ones (:func:`~monitor.sources.codecs.check_value`):
  ``o2`` takes ``true``/``false``/``1``/``0``, ``avpu`` a letter A C V P U;
* a header line again (the device restarted; any line naming a known vital) replaces the
  header.

Device lines (Masimo, Nellcor): :func:`line_time` decides a line's time from
:attr:`DeviceContext.clock`; :func:`emit_line` turns the values and flags of one line into
readings, one :class:`~monitor.model.DeviceStatus` and rejections.
"""

from __future__ import annotations

import csv
import re
from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from monitor.model import DEVICE_FLAGS, VITALS, DeviceStatus, Reading, Rejection
from monitor.sources.codecs import Limits, Origin, check_value, decode, parse_ts
from monitor.sources.devices import DeviceContext, Parsed

#: Rejection causes of device formats that :data:`monitor.sources.codecs.CAUSES` lacks.
DEVICE_CAUSES: Final[dict[str, str]] = {
    "bad_line": "a device line not in the configured format (garbage, wrong baud rate),"
    " or a CSV row with the wrong number of fields",
}

_NUMBER: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE: Final = frozenset(
    {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
)
_BOOLS: Final = {"true": True, "false": False}


# ------------------------------------------------------------------ device line helpers


def is_no_value(raw: str) -> bool:
    """Blank, or dashes (``---``, ``--.-``, ``+--``): the device has no value."""
    return not raw or ("-" in raw and not raw.strip("-+."))


def line_time(
    ctx: DeviceContext, stamp: tuple[int, int, int, int, int, int] | None
) -> tuple[float, str]:
    """A device line's time -> ``(ts, problem)``.

    Clock ``receive``: ``ctx.now``. Clock ``device``: ``stamp`` (year, month, day, hour,
    minute, second) in ``ctx.tz`` (None: the local zone). ``problem`` is a ``bad_ts``
    detail, with ``ts`` = ``ctx.now``, when the stamp is not a date or is further than
    ``ctx.max_skew_s`` from ``ctx.now``.
    """
    if ctx.clock != "device":
        return ctx.now, ""
    if stamp is None:
        return ctx.now, "no device time on the line"
    year, month, day, hour, minute, second = stamp
    text = f"{year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d}"
    try:
        ts = datetime(year, month, day, hour, minute, second, tzinfo=ctx.tz).timestamp()
    except (ValueError, OverflowError, OSError):
        return ctx.now, f"device time {text} is not a valid date/time"
    off = ts - ctx.now
    if not abs(off) <= ctx.max_skew_s:
        return ctx.now, (
            f"device clock off by {off:+.0f} s ({text}; max_skew_s {ctx.max_skew_s:g})"
        )
    return ts, ""


def number(raw: str) -> Any:
    """A cell/field as check_value expects it: a float when it is a number, else the text
    (which check_value refuses as ``wrong_type``)."""
    if _NUMBER.fullmatch(raw) or raw.lower() in _NON_FINITE:
        return float(raw)
    return raw


def emit_line(
    out: Parsed,
    ctx: DeviceContext,
    values: list[tuple[str, str]],
    flags: frozenset[str] | None,
    ts: float,
    problem: str,
    frame: bytes,
) -> None:
    """One device line -> ``out``: a status with ``flags`` (unless None: the line tells
    nothing about them), and the ``(vital, raw)`` values that are not blank/dashes.

    ``problem`` (from :func:`line_time`): the values are refused as one ``bad_ts``. While a
    flag under which the device cannot measure is set, each is refused as ``sensor_flag``.
    """
    if flags is not None:
        out.statuses.append(DeviceStatus(ts, ctx.ward, ctx.bed, ctx.device, flags, ctx.patient))
    present = [(vital, raw) for vital, raw in values if not is_no_value(raw)]
    if not present:
        return
    if problem:
        out.reject("bad_ts", f"{problem}: {', '.join(v for v, _ in present)} not used", frame)
        return
    blind = sorted(f for f in flags or () if DEVICE_FLAGS[f][3])
    for vital, raw in present:
        if blind:
            out.reject(
                "sensor_flag",
                f"{vital}={raw[:40]!r} while {ctx.device[:40]} reports {', '.join(blind)}",
                frame,
            )
            continue
        value, cause, detail = check_value(vital, number(raw))
        if value is None:
            out.reject(cause, detail, frame)
            continue
        out.readings.append(Reading(ts, ctx.ward, ctx.bed, ctx.device, vital, value, ctx.patient))


# ----------------------------------------------------------------------------- jsonl


class JsonLinesParser:
    """One MQTT-style JSON reading object (or array of them) per line."""

    def parse(self, frame: bytes, ctx: DeviceContext) -> Parsed:
        out = Parsed()
        payload = frame.removeprefix(b"\xef\xbb\xbf")  # a BOM at the start of a stream
        if not payload.strip():
            return out
        origin = Origin(topic="", ward=ctx.ward, bed=ctx.bed, device=ctx.device)
        dec = decode(payload, origin, ctx.now, Limits(max_future_s=ctx.max_skew_s))
        pid = ctx.patient
        out.readings = [
            r if r.patient is not None or pid is None else replace(r, patient=pid)
            for r in dec.readings
        ]
        out.statuses = [
            s if s.patient is not None or pid is None else replace(s, patient=pid)
            for s in dec.statuses
        ]
        out.rejections = [
            Rejection(r.cause, r.detail, "", r.payload[:1024]) for r in dec.rejections
        ]
        return out


# ------------------------------------------------------------------------------- csv


class CsvParser:
    """A header line, then rows of values (see the module docstring)."""

    def __init__(self) -> None:
        #: The current header: column index -> "ts" | vital, for the columns used.
        self._columns: dict[int, str] | None = None
        self._width = 0

    def parse(self, frame: bytes, ctx: DeviceContext) -> Parsed:
        out = Parsed()
        try:
            text = frame.removeprefix(b"\xef\xbb\xbf").decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            out.reject("not_utf8", str(exc)[:200], frame)
            return out
        if not text:
            return out
        try:
            fields = [f.strip() for f in next(csv.reader([text]))]
        except (csv.Error, StopIteration) as exc:
            out.reject("bad_line", f"not a CSV line: {str(exc)[:100]}", frame)
            return out
        names = [f.lower() for f in fields]
        if any(n in VITALS for n in names) or (
            self._columns is None and not any(_NUMBER.fullmatch(f) for f in fields)
        ):
            self._header(names, out, frame)
            return out
        if self._columns is None:
            out.reject("bad_line", "a row before any header naming a known vital", frame)
            return out
        if len(fields) != self._width:
            out.reject("bad_line", f"{len(fields)} fields, the header has {self._width}", frame)
            return out
        self._row(fields, ctx, out, frame)
        return out

    def _header(self, names: list[str], out: Parsed, frame: bytes) -> None:
        columns: dict[int, str] = {}
        unknown: list[str] = []
        dupes: list[str] = []
        for i, name in enumerate(names):
            if not name:
                continue
            if name != "ts" and name not in VITALS:
                unknown.append(name[:40])
            elif name in columns.values():
                dupes.append(name)
            else:
                columns[i] = name
        if unknown:
            out.reject("unknown_vital", f"CSV columns {unknown[:20]} ignored", frame)
        if dupes:
            out.reject("bad_line", f"duplicate CSV columns {dupes} ignored", frame)
        if not any(c in VITALS for c in columns.values()):
            if not unknown:  # unknown_vital already says why
                out.reject("bad_line", "CSV header without any known vital", frame)
            self._columns, self._width = None, 0
            return
        self._columns, self._width = columns, len(names)

    def _row(self, fields: list[str], ctx: DeviceContext, out: Parsed, frame: bytes) -> None:
        assert self._columns is not None
        ts: float | None = ctx.now
        for i, col in self._columns.items():
            if col == "ts" and fields[i]:
                raw = fields[i]
                ts, cause, detail = parse_ts(
                    float(raw) if _NUMBER.fullmatch(raw) else raw,
                    ctx.now,
                    Limits(max_future_s=ctx.max_skew_s),
                )
                if ts is None:
                    out.reject(cause, detail, frame)
                    return
        assert ts is not None
        for i, vital in self._columns.items():
            raw = fields[i]
            if vital == "ts" or not raw:
                continue
            value, cause, detail = check_value(vital, _cell(vital, raw))
            if value is None:
                out.reject(cause, detail, frame)
                continue
            out.readings.append(
                Reading(ts, ctx.ward, ctx.bed, ctx.device, vital, value, ctx.patient)
            )


def _cell(vital: str, raw: str) -> Any:
    if vital == "avpu":
        return raw
    if vital == "o2" and raw.lower() in _BOOLS:
        return _BOOLS[raw.lower()]
    return number(raw)
