"""OBX-5 values as HL7 numbers, the markers sent in place of a measurement, and HL7
DTM/TS times."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Final

from monitor.sources.devices.hl7.message import _Msg, _Seg

_MIN_TS = 946_684_800.0  #: 2000-01-01: earlier HL7 times are a clock never set

#: Values monitors send in place of a measurement (no probe, no value): -> ``no_sensor``.
NO_VALUE_MARKERS: Final = frozenset(
    {-100.0, -999.0, -99.9, -9999.0, 8388607.0, -8388608.0, 2047.0, -2048.0}
)

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_DTM = re.compile(
    r"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?(?:([+-])(\d{2})(\d{2}))?"
)


def _value_text(msg: _Msg, seg: _Seg) -> str:
    """OBX-5 as a number's text: NM as is; SN ``[comparator]^num`` when it is exact."""
    parts = msg.comps(seg, 5)
    if len(parts) >= 2 and parts[0].strip() in ("", "=") and not "".join(parts[2:]).strip():
        return parts[1].strip()
    return "^".join(parts).strip()


def _number(raw: str) -> float | None:
    """An HL7 NM: optional sign, digits, optional decimal point (no exponent, no NaN)."""
    if _NUMBER.fullmatch(raw) is None:
        return None
    value = float(raw)
    return value if math.isfinite(value) else None


def parse_dtm(raw: str, tz: tzinfo | None) -> float | None:
    """HL7 DTM/TS ``YYYYMMDDHHMM[SS[.S+]][+/-ZZZZ]`` (a TS precision component after
    ``^`` is ignored) -> epoch seconds; no offset: in ``tz`` (None: local). None when it
    is not one (a date alone included)."""
    m = _DTM.fullmatch(raw.split("^", 1)[0].strip())
    if m is None:
        return None
    y, mo, d, h, mi = (int(m.group(i)) for i in range(1, 6))
    s = int(m.group(6) or 0)
    us = int((m.group(7) or "0").ljust(6, "0"))
    try:
        dt = datetime(y, mo, d, h, mi, s, us)
        if m.group(8):
            oh, om = int(m.group(9)), int(m.group(10))
            if oh > 14 or om > 59:
                return None
            offset = timedelta(hours=oh, minutes=om)
            dt = dt.replace(tzinfo=timezone(offset if m.group(8) == "+" else -offset))
        elif tz is not None:
            dt = dt.replace(tzinfo=tz)
        return dt.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _first_time(candidates: Iterable[str], tz: tzinfo | None) -> float | None:
    for raw in candidates:
        if raw.strip():
            ts = parse_dtm(raw, tz)
            if ts is not None:
                return ts
    return None
