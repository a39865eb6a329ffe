"""Nellcor N-560 (and N-5xx / NPB-2xx data port family) real-time ASCII output.

What the data port prints (a sample, ``tests/data/device_messages/nellcor_serial``)::

    N-560    VERSION 1.61.00    CRC:XXXX  SpO2 Limit: 95-100%    PR Limit: 59-148BPM
                                 ADULT           25SAT-S
    TIME                 %SpO2   BPM     PA     Status
    07-Jan-04 11:24:54   100     102      36    MO             AO

* Header lines (model/version/limits, mode and SatSeconds, the column headings; printed
  at start and again now and then) are skipped silently. The column heading line is kept:
  its column positions, counted from ``TIME``, place the values of a data line that leaves
  one blank, counted from the line's date (so leading blanks shift nothing).
* A data line is ``DD-Mon-YY HH:MM:SS`` (month in English, any case), ``%SpO2`` -> ``spo2``,
  ``BPM`` -> ``hr``, ``PA`` (pulse amplitude, not a vital: ignored), then up to four
  two-letter status codes. Dashes or a blank mean "no value". Anything else is
  ``bad_line`` (a damaged status column could hide "sensor off": the line is not used).
* Two lines merged (a line has no start marker: one cut short runs into the next): a line
  with a date or time after its own date, or a header line with one, is ``bad_line``
  ("two lines merged (a line cut short?)"), never a reading nor a skipped header. A cut
  data line followed by any whole line is refused anyway (its next token is no value or
  status code); a cut header followed by a data line used to be skipped as a header.
* Time: as :mod:`.masimo` (clock ``receive`` / ``device`` with ``max_skew_s``).

Each data line -> a :class:`~monitor.model.DeviceStatus` with the full set of its flags.
Codes: the NPB-290 operator's manual (data port appendix, the same print format) lists
AO, AS, LB, LP, MO, PH, PL, PS, SD, SH, SL. BU, LM and SO are from the later N-595 / N-600
lists as remembered, not checked against a copy here (their meaning is unambiguous; a
device that never prints them loses nothing). The sample shows AO and MO.

====  =====================================  ============================================
code  meaning                                vitalmon flag
====  =====================================  ============================================
AO    Alarm Off                              ``alarms_off``
AS    Alarm Silence                          ``alarms_off``
MO    Patient Motion                         ``motion``
PS    Pulse Search                           ``searching``
LP    Loss of Pulse                          ``searching`` (the device's Pulse Search
                                             indicator flashes on loss of pulse)
LM    Loss of Pulse with Patient Motion      ``searching``, ``motion``
SD    Sensor Disconnect (from the monitor)   ``no_sensor`` (SO is "off the patient")
SO    Sensor Off (the patient)               ``sensor_off``
LB    Low Battery                            -- (not a sensor/signal condition)
BU    Battery in Use                         --
PH    Pulse Rate High Limit Alarm            -- (the device's own limit alarms: vitalmon
PL    Pulse Rate Low Limit Alarm             --  judges the values itself)
SH    Sat High Limit Alarm                   --
SL    Sat Low Limit Alarm                    --
====  =====================================  ============================================

Other two-letter codes are ignored. Under ``no_sensor``, ``sensor_off`` and ``searching``
any value on the line is refused as ``sensor_flag``.
"""

from __future__ import annotations

import re
from typing import Final

from monitor.sources.devices import DeviceContext, Parsed
from monitor.sources.devices.text import emit_line, line_time

#: Status code -> vitalmon flags (codes absent here are ignored).
STATUS_FLAGS: Final[dict[str, frozenset[str]]] = {
    "AO": frozenset({"alarms_off"}),
    "AS": frozenset({"alarms_off"}),
    "MO": frozenset({"motion"}),
    "PS": frozenset({"searching"}),
    "LP": frozenset({"searching"}),
    "LM": frozenset({"searching", "motion"}),
    "SD": frozenset({"no_sensor"}),
    "SO": frozenset({"sensor_off"}),
}

MONTHS: Final = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")

#: The value columns, in order: (heading, vital or None when ignored).
COLUMNS: Final = (("%SPO2", "spo2"), ("BPM", "hr"), ("PA", None))
#: Where the headings start on the N-560, counted from ``TIME`` / a data line's date
#: (used until a heading line is seen).
DEFAULT_STARTS: Final = (21, 29, 37)

_STAMP: Final = re.compile(
    rf"([0-9]{{2}})-({'|'.join(MONTHS)})-([0-9]{{2}})"
    r" ([0-9]{2}):([0-9]{2}):([0-9]{2})(?=\s|$)",
    re.IGNORECASE,
)
#: A date or a time after a line's date: the next line's (no value has one).
_ANOTHER_STAMP: Final = re.compile(
    rf"[0-9]{{2}}-(?:{'|'.join(MONTHS)})-[0-9]{{2}}|[0-9]{{2}}:[0-9]{{2}}:[0-9]{{2}}",
    re.IGNORECASE,
)
_VALUE: Final = re.compile(r"[0-9]+|-+")
_CODE: Final = re.compile(r"[A-Z]{2}")
_TOKEN: Final = re.compile(r"\S+")
_MODEL: Final = re.compile(r"(?:N|NPB)-[0-9]+[A-Z]*", re.IGNORECASE)
_MODE: Final = re.compile(
    r"ADULT|NEONATE|NEONATAL|PEDIATRIC|PEDI|INFANT|TREND|OFF|[0-9]*SAT-S", re.IGNORECASE
)
#: The ``bad_line`` detail of a line that runs into the next.
MERGED: Final = "two lines merged (a line cut short?)"


class NellcorParser:
    """N-560 data port lines -> readings, one status per data line, rejections."""

    def __init__(self) -> None:
        #: Start columns of %SpO2, BPM, PA from TIME (from the last heading line).
        self._starts: tuple[int, int, int] = DEFAULT_STARTS

    def parse(self, frame: bytes, ctx: DeviceContext) -> Parsed:
        out = Parsed()
        text = frame.decode("latin-1").rstrip(" \t\r\n\x00")
        body = text.lstrip(" \x00")  # positions are counted from the date
        m = _STAMP.match(body)
        if not m:
            if _STAMP.search(body):  # the next line's date and time, after a cut one
                out.reject(
                    "bad_line", f"{MERGED}: a date and time mid-line ({len(frame)} bytes)", frame
                )
                return out
            if not self._header(text):
                out.reject(
                    "bad_line",
                    f"not an N-560 line ({len(frame)} bytes; expected DD-Mon-YY HH:MM:SS"
                    " and values, or a header)",
                    frame,
                )
            return out
        if _ANOTHER_STAMP.search(body, m.end()):
            out.reject("bad_line", f"{MERGED}: a second date/time ({len(frame)} bytes)", frame)
            return out
        tokens = [(t.start(), t.group()) for t in _TOKEN.finditer(body, m.end())]
        n = 0
        while n < len(tokens) and _VALUE.fullmatch(tokens[n][1]):
            n += 1
        values, codes = tokens[:n], [t for _, t in tokens[n:]]
        cells = self._place(values)
        if cells is None or not all(_CODE.fullmatch(c) for c in codes) or len(codes) > 4:
            out.reject(
                "bad_line", f"N-560 data line with unexpected fields ({len(frame)} bytes)", frame
            )
            return out

        dd, mon, yy, hh, mi, ss = m.groups()
        month = MONTHS.index(mon.upper()) + 1
        year = 2000 + int(yy) if int(yy) < 69 else 1900 + int(yy)  # as strptime's %y
        ts, problem = line_time(ctx, (year, month, int(dd), int(hh), int(mi), int(ss)))
        flags: frozenset[str] = frozenset()
        for code in codes:
            flags |= STATUS_FLAGS.get(code, frozenset())
        pairs = [(vital, raw) for (_h, vital), raw in zip(COLUMNS, cells, strict=True) if vital]
        emit_line(out, ctx, pairs, flags, ts, problem, frame)
        return out

    def _place(self, values: list[tuple[int, str]]) -> list[str] | None:
        """Value tokens -> the three cells (blank when absent); None when they do not fit."""
        if len(values) == len(COLUMNS):
            return [v for _, v in values]
        if len(values) > len(COLUMNS):
            return None
        cells = [""] * len(COLUMNS)
        for pos, value in values:
            i = min(range(len(COLUMNS)), key=lambda c: abs(self._starts[c] - pos))
            if cells[i]:
                return None
            cells[i] = value
        return cells

    def _header(self, text: str) -> bool:
        """Is ``text`` a header line? A column heading line also sets the column starts."""
        tokens = text.split()
        if not tokens:
            return True
        upper = text.upper()
        if tokens[0].upper() == "TIME":
            time_col = upper.find("TIME")
            starts = [upper.find(f" {h}") + 1 - time_col for h, _ in COLUMNS]
            if all(s > 0 for s in starts) and starts == sorted(starts):
                self._starts = (starts[0], starts[1], starts[2])
            return True
        if _MODEL.fullmatch(tokens[0]) or "VERSION" in upper or "CRC:" in upper:
            return True
        return all(_MODE.fullmatch(t) for t in tokens)
