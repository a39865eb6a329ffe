"""Masimo Rad-8 / Radical-7 / Radical-5 ASCII serial output (9600 8N1, one line a second).

A line (Rad-8 "ASCII 1" mode; Radical-5 lines lack SN, SPCO, SPMET, DESAT, PIDELTA)::

    02/24/18 04:48:53 SN=0000145838 SPO2=097% BPM=080 PI=04.96% SPCO=--.-% SPMET=--.-%
    DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800

* ``MM/DD/YY HH:MM:SS`` starts every line; a line without it, or without any of SPO2,
  BPM and EXC, is not a Masimo line: one ``bad_line``.
* Two lines merged: a line has no start marker, so a line cut short (cable glitch, device
  reset, buffer overrun) runs into the next one. A line with a second date or time after
  its stamp (or a stamp mid-line), a key twice (``SPO2=`` ... ``SPO2=``, any case), or more
  than :data:`MAX_FIELDS` ``KEY=value`` fields is refused as a whole: one ``bad_line``
  ("two lines merged (a line cut short?)"), no reading, no status. Its values would mix
  two samples (the cut line's stamp and SpO2 with the next line's pulse rate).
* ``SPO2`` -> ``spo2``, ``BPM`` -> ``hr``. Dashes mean "no value" (no reading, no
  rejection). A value outside :data:`~monitor.model.VITALS` is ``implausible``, one that is
  not a number ``wrong_type``.
* Not vitals, ignored: ``PI`` (perfusion index), ``SPCO``, ``SPMET``, ``DESAT``,
  ``PIDELTA``, ``PVI``, any other ``KEY=value`` and any token that is not one; ``SN`` (the
  device's serial number) is ignored and masked in rejected payloads.
* Time: :func:`~monitor.sources.devices.text.line_time` (clock ``receive``: the receive
  time; clock ``device``: the line's stamp in the device's zone, ``bad_ts`` beyond
  ``max_skew_s``: the line's values are refused, its status keeps the receive time).

``EXC``, the exception bit field (hex), -> a :class:`~monitor.model.DeviceStatus` on each
line carrying it: the full set of flags (empty when no mapped bit is set). Bits and names
from MD PnP's ``poxrad_discrete.h`` (Radical-5/7 serial interface):

==========  ==============================  ===========================================
bit         Masimo                          vitalmon flag
==========  ==============================  ===========================================
0x000001    No Sensor                       ``no_sensor``
0x000002    Defective Sensor                ``sensor_fault``
0x000004    Low Perfusion                   ``low_perfusion``
0x000008    Pulse Search                    ``searching``
0x000010    Interference                    ``interference``
0x000020    Sensor Off                      ``sensor_off``
0x000040    Ambient Light                   ``interference``
0x000080    Unrecognized Sensor             ``sensor_fault``
0x000100    Incompatible Sensor             ``sensor_fault``
0x000200    reserved                        --
0x000400    Low Signal IQ                   ``low_signal``
0x000800    Masimo SET (informational)      -- (set in normal operation)
0x001000    No Cable Connected              ``no_sensor`` (no cable: no sensor either)
0x002000    Cable Life Expired              ``sensor_fault``
0x004000    Incompatible Cable              ``sensor_fault``
0x008000    Unrecognized Cable              ``sensor_fault``
0x010000    Defective Cable                 ``sensor_fault``
0x020000    Sensor Calibrating              -- (no matching vitalmon flag)
0x040000    Sensor Life Expired             ``sensor_fault``
0x080000    Emitter Temp Out of Range       -- (no documented effect on the values)
0x100000    Sensor Current Limit Exceeded   -- (no documented effect on the values)
0x200000    SpCO Low Confidence             -- (SpCO is not a vitalmon vital)
0x400000    SpMET Low Confidence            -- (SpMET is not a vitalmon vital)
0x800000    reserved                        --
==========  ==============================  ===========================================

Under ``no_sensor``, ``sensor_fault``, ``searching`` and ``sensor_off`` (DEVICE_FLAGS: no
measurement) any value on the line is refused as ``sensor_flag``, as the MQTT codec does.

``ALARM``, the device's own alarm bits (hex), raises nothing: vitalmon judges the values
itself. Only bit 0x0020 "Alarm Silenced" is used: it adds ``alarms_off``. Ignored: 0x0001
/ 0x0002 SpO2 high/low, 0x0004 / 0x0008 pulse rate high/low, 0x0010 alarm active, 0x0040
low battery, 0x0100-0x0800 SpCO/SpMET limits, 0x1000 desaturation index, 0x2000 PI delta.

A line without ``EXC`` gives no status (its flags are unknown, not "all clear"); an
``EXC`` or ``ALARM`` that is not hex is refused (``bad_status``) and the line gives no
status either, while its values still count.
"""

from __future__ import annotations

import re
from typing import Final

from monitor.sources.devices import DeviceContext, Parsed
from monitor.sources.devices.text import emit_line, line_time

#: EXC bit -> vitalmon flag (bits absent here are ignored; see the module docstring).
EXC_FLAGS: Final[dict[int, str]] = {
    0x000001: "no_sensor",
    0x000002: "sensor_fault",
    0x000004: "low_perfusion",
    0x000008: "searching",
    0x000010: "interference",
    0x000020: "sensor_off",
    0x000040: "interference",
    0x000080: "sensor_fault",
    0x000100: "sensor_fault",
    0x000400: "low_signal",
    0x001000: "no_sensor",
    0x002000: "sensor_fault",
    0x004000: "sensor_fault",
    0x008000: "sensor_fault",
    0x010000: "sensor_fault",
    0x040000: "sensor_fault",
}
#: ALARM bit "Alarm Silenced".
ALARM_SILENCED: Final = 0x0020

#: Line field -> vital, in the order readings are emitted.
FIELDS: Final[dict[str, str]] = {"SPO2": "spo2", "BPM": "hr"}

#: The most ``KEY=value`` fields a line may have. The widest line known (Radical-7 with
#: PVI) has 11; a firmware printing a few more parameters still fits. More: two lines.
MAX_FIELDS: Final = 16

_STAMP: Final = re.compile(
    r"([0-9]{2})/([0-9]{2})/([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})(?=\s|$)"
)
#: A date or a time anywhere after a line's stamp: the next line's (no value has / or :).
_ANOTHER_STAMP: Final = re.compile(r"[0-9]{2}/[0-9]{2}/[0-9]{2}|[0-9]{2}:[0-9]{2}:[0-9]{2}")
_KEY: Final = re.compile(r"[A-Z][A-Z0-9]{0,11}")  # a key shown in a detail (never a value)
_HEX: Final = re.compile(r"[0-9A-Fa-f]{1,8}")
_SN: Final = re.compile(rb"SN=\S*")


def exc_flags(exc: int) -> frozenset[str]:
    """The vitalmon flags an EXC value sets."""
    return frozenset(flag for bit, flag in EXC_FLAGS.items() if exc & bit)


class MasimoParser:
    """Masimo ASCII lines -> readings, one status per line, rejections. Stateless."""

    def parse(self, frame: bytes, ctx: DeviceContext) -> Parsed:
        out = Parsed()
        shown = _SN.sub(b"SN=*", frame)  # the payload kept with rejections
        text = frame.decode("latin-1").strip(" \t\r\n\x00")
        m = _STAMP.match(text)
        fields: dict[str, str] = {}
        merged = ""
        if not m:
            if _STAMP.search(text):  # the next line's date and time, after a cut one
                merged = "a date and time mid-line"
        else:
            rest = text[m.end() :]
            if _ANOTHER_STAMP.search(rest):
                merged = "a second date/time"
            for token in rest.split():
                key, eq, value = token.partition("=")
                if not eq:
                    continue
                key = key.upper()
                if key in fields and not merged:
                    merged = f"{key if _KEY.fullmatch(key) else 'a key'}= twice"
                fields.setdefault(key, value.removesuffix("%"))
            if len(fields) > MAX_FIELDS and not merged:
                merged = f"more than {MAX_FIELDS} fields"
        if merged:
            out.reject(
                "bad_line",
                f"two lines merged (a line cut short?): {merged} ({len(frame)} bytes; not used)",
                shown,
            )
            return out
        if not m or not fields.keys() & {"SPO2", "BPM", "EXC"}:
            out.reject(
                "bad_line",
                f"not a Masimo line ({len(frame)} bytes; expected MM/DD/YY HH:MM:SS"
                " then SPO2=, BPM=, EXC=)",
                shown,
            )
            return out

        mm, dd, yy, hh, mi, ss = (int(g) for g in m.groups())
        year = 2000 + yy if yy < 69 else 1900 + yy  # as strptime's %y
        ts, problem = line_time(ctx, (year, mm, dd, hh, mi, ss))

        flags: frozenset[str] | None = None
        exc, alarm = fields.get("EXC"), fields.get("ALARM")
        if exc is not None:
            named = (("EXC", exc), ("ALARM", alarm))
            bad = [f"{k}={v[:20]!r}" for k, v in named if v is not None and not _HEX.fullmatch(v)]
            if bad:
                out.reject("bad_status", f"{', '.join(bad)} not hex", shown)
            else:
                flags = exc_flags(int(exc, 16))
                if alarm is not None and int(alarm, 16) & ALARM_SILENCED:
                    flags |= {"alarms_off"}

        values = [(vital, fields[key]) for key, vital in FIELDS.items() if key in fields]
        emit_line(out, ctx, values, flags, ts, problem, shown)
        return out
