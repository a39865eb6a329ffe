"""SenML packs (RFC 8428): records with base fields, names resolved to vitals through
aliases, units converted to vitalmon's (:data:`_UNITS`, also the HL7 parser's)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from monitor.model import Reading
from monitor.sources.codecs.base import Decoded, Limits, Origin
from monitor.sources.codecs.checks import _float, check_value, parse_ts

#: SenML: times below 2**28 are relative to "now" (RFC 8428 section 4.5.3).
_SENML_REL: Final = 2**28

#: SenML units accepted per vital, with the conversion to vitalmon's unit.
_UNITS: Final[dict[str, dict[str, tuple[float, float]]]] = {
    "hr": {
        "beat/min": (1, 0),
        "beats/min": (1, 0),
        "1/min": (1, 0),
        "/min": (1, 0),
        "bpm": (1, 0),
        "Hz": (60, 0),
        "beat/s": (60, 0),
    },
    "spo2": {"%": (1, 0), "%EL": (1, 0), "/": (100, 0)},
    "rr": {"breaths/min": (1, 0), "1/min": (1, 0), "/min": (1, 0), "rpm": (1, 0), "Hz": (60, 0)},
    "sbp": {"mmHg": (1, 0), "kPa": (7.50062, 0)},
    "dbp": {"mmHg": (1, 0), "kPa": (7.50062, 0)},
    "map": {"mmHg": (1, 0), "kPa": (7.50062, 0)},
    "temp": {"Cel": (1, 0), "degC": (1, 0), "K": (1, -273.15), "degF": (5 / 9, -32 * 5 / 9)},
    "etco2": {"mmHg": (1, 0), "kPa": (7.50062, 0), "%": (7.13, 0)},
}


def resolve_name(name: str, aliases: Mapping[str, str]) -> str | None:
    """A SenML name (``urn:dev:mac:00aa:SpO2``, ``HR``, ``pulse``) -> vital, or None."""
    for candidate in (name, _last_segment(name)):
        key = candidate.strip().lower()
        if key in aliases:
            return aliases[key]
    return None


def _last_segment(name: str) -> str:
    for sep in (":", "/", ";", "."):
        name = name.rsplit(sep, 1)[-1]
    return name


def _decode_senml(
    records: list[dict[str, Any]],
    origin: Origin,
    now: float,
    limits: Limits,
    out: Decoded,
    payload: bytes,
) -> None:
    bn, bt, bu, bv = "", 0.0, None, 0.0
    for rec in records:
        # Base fields apply to this record and every later one (RFC 8428 4.1).
        if "bn" in rec:
            if not isinstance(rec["bn"], str):
                out.reject("bad_shape", "SenML bn is not a string", origin, payload)
                return
            bn = rec["bn"]
        if "bt" in rec:
            if isinstance(rec["bt"], bool) or not isinstance(rec["bt"], int | float):
                out.reject("bad_ts", "SenML bt is not a number", origin, payload)
                return
            bt = _float(rec["bt"])
        if "bu" in rec:
            bu = rec["bu"]
        if "bv" in rec:
            if isinstance(rec["bv"], bool) or not isinstance(rec["bv"], int | float):
                out.reject("wrong_type", "SenML bv is not a number", origin, payload)
                return
            bv = _float(rec["bv"])
        name = bn + str(rec.get("n", ""))
        if "v" not in rec and "bv" not in rec:
            if any(k in rec for k in ("vs", "vb", "vd", "s")):
                out.reject(
                    "wrong_type", f"SenML record {name[:60]!r} has no numeric v", origin, payload
                )
            continue  # a record carrying only base fields
        vital = resolve_name(name, limits.aliases)
        if vital is None:
            out.reject("unknown_vital", f"SenML name {name[:60]!r}", origin, payload)
            continue
        raw_v = rec.get("v", 0)
        if isinstance(raw_v, bool) or not isinstance(raw_v, int | float):
            out.reject("wrong_type", f"SenML {name[:60]!r} v={raw_v!r:.40}", origin, payload)
            continue
        t_raw = rec.get("t", 0)
        if isinstance(t_raw, bool) or not isinstance(t_raw, int | float):
            out.reject("bad_ts", f"SenML {name[:60]!r} t is not a number", origin, payload)
            continue
        t = bt + _float(t_raw)
        if math.isfinite(t) and t < _SENML_REL:
            t = now + t  # relative time: 0 means "now"
        ts, cause, detail = parse_ts(t, now, limits)
        if ts is None:
            out.reject(cause, detail, origin, payload)
            continue
        unit = rec.get("u", bu)
        scale, offset = 1.0, 0.0
        if unit is not None:
            conv = _UNITS[vital].get(str(unit))
            if conv is None:
                out.reject(
                    "bad_unit",
                    f"{vital} in {unit!r:.20} (accepted: {sorted(_UNITS[vital])})",
                    origin,
                    payload,
                )
                continue
            scale, offset = conv
        value, cause, detail = check_value(vital, (bv + _float(raw_v)) * scale + offset)
        if value is None:
            out.reject(cause, detail, origin, payload)
            continue
        out.readings.append(Reading(ts, origin.ward, origin.bed, origin.device, vital, value))
