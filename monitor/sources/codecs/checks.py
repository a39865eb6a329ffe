"""The checks of one reading object, field by field (ts, value, status, patient, device,
mode), and the reference path's reading object (:func:`_decode_object`); the fast path
(:mod:`monitor.sources.codecs.fast`) takes the same helpers for what it does not inline."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from monitor.model import AVPU_CODES, DEVICE_FLAGS, MODES, VITALS, DeviceStatus, Reading
from monitor.sources.codecs.base import _MAX_TS, _META, _MIN_TS, _STATUS_OK, Decoded, Limits, Origin


def _float(raw: int | float) -> float:
    """float(), except that an integer too large for a double becomes +-inf (no OverflowError)."""
    try:
        return float(raw)
    except OverflowError:
        return math.inf if raw > 0 else -math.inf


def parse_ts(raw: Any, now: float, limits: Limits) -> tuple[float | None, str, str]:
    """-> (ts, cause, detail); ts is None when rejected."""
    if raw is None:
        return now, "", ""
    if isinstance(raw, bool):
        return None, "bad_ts", "ts is a boolean"
    if isinstance(raw, int | float):
        ts = _float(raw)
    elif isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return None, "bad_ts", f"ts {raw[:40]!r} is not ISO 8601"
        if dt.tzinfo is None:
            return None, "bad_ts", f"ts {raw[:40]!r} has no UTC offset"
        ts = dt.timestamp()
    else:
        return None, "bad_ts", f"ts is a {type(raw).__name__}"
    if not math.isfinite(ts) or not _MIN_TS <= ts < _MAX_TS:
        return None, "bad_ts", f"ts {raw!r} out of range (epoch seconds expected)"
    if limits.max_future_s is not None and ts > now + limits.max_future_s:
        return None, "future_ts", f"ts {ts:.3f} is {ts - now:.0f} s in the future"
    return ts, "", ""


def check_value(vital: str, raw: Any) -> tuple[float | None, str, str]:
    """-> (value, cause, detail) for one vital's raw JSON value.

    NEWS2 inputs: ``o2`` is true/false (or 1/0) -> 1.0/0.0; ``avpu`` is a letter A, C,
    V, P or U (any case) -> 0..4 (:data:`~monitor.model.AVPU_CODES`).
    """
    if vital == "o2":
        if isinstance(raw, bool) or raw in (0, 1):
            return float(raw), "", ""
        return None, "wrong_type", f"o2={raw!r:.40} is not true/false"
    if vital == "avpu":
        letter = raw.strip().upper() if isinstance(raw, str) else ""
        if len(letter) == 1 and letter in AVPU_CODES:
            return float(AVPU_CODES.index(letter)), "", ""
        return None, "wrong_type", f"avpu={raw!r:.40} is not one of A, C, V, P, U"
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None, "wrong_type", f"{vital}={raw!r:.40} is not a number"
    value = _float(raw)
    if not math.isfinite(value):
        return None, "not_finite", f"{vital}={value}"
    _unit, lo, hi = VITALS[vital]
    if not lo <= value <= hi:
        return None, "implausible", f"{vital}={value:g} outside [{lo:g}, {hi:g}]"
    return value, "", ""


def parse_status(raw: Any) -> tuple[frozenset[str] | None, str]:
    """-> (flags, detail) for a reading object's raw ``status``; flags is None when refused.

    ``"ok"`` and ``[]`` are the empty set; flags are matched case-insensitively.
    """
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list):
        items = raw
    else:
        return None, f"status is a {type(raw).__name__}, not a string or list of strings"
    flags: set[str] = set()
    ok = False
    for item in items:
        if not isinstance(item, str):
            return None, f"status element {item!r:.40} is a {type(item).__name__}, not a string"
        key = item.strip().lower()
        if key == _STATUS_OK:
            ok = True
        elif key in DEVICE_FLAGS:
            flags.add(key)
        else:
            known = ", ".join([_STATUS_OK, *DEVICE_FLAGS])
            return None, f"unknown status flag {item!r:.40} (known: {known})"
    if ok and flags:
        return None, f"status {_STATUS_OK!r} together with flags {sorted(flags)}"
    return frozenset(flags), ""


def _decode_object(
    obj: dict[str, Any],
    origin: Origin,
    now: float,
    limits: Limits,
    out: Decoded,
    payload: bytes,
) -> None:
    ts, cause, detail = parse_ts(obj.get("ts"), now, limits)
    if ts is None:
        out.reject(cause, detail, origin, payload)
        return
    patient = obj.get("patient")
    device = obj.get("device", origin.device)
    if patient is not None and (isinstance(patient, bool) or not isinstance(patient, str | int)):
        out.reject("bad_field", "patient is not a string", origin, payload)
        return
    if not isinstance(device, str) or not device:
        out.reject("bad_field", "device is not a non-empty string", origin, payload)
        return
    pid = None if patient is None else str(patient)
    mode = obj.get("mode")
    if mode is not None and mode not in MODES:
        out.reject(
            "bad_field", f"mode {mode!r:.40} is not one of {', '.join(MODES)}", origin, payload
        )
        return
    found = "status" in obj  # a status alone is a valid object (a valid status or not)
    # flags under which the device cannot measure
    blind = _status(obj, ts, origin, device, pid, out, payload) if found else []
    for key, raw in obj.items():
        vital, value = _field(key, raw, blind, device, origin, out, payload)
        found = found or vital
        if value is not None:
            out.readings.append(Reading(ts, origin.ward, origin.bed, device, key, value, pid, mode))
    if not found:
        out.reject("empty", "no vitals (and no status) in reading object", origin, payload)


def _status(
    obj: dict[str, Any],
    ts: float,
    origin: Origin,
    device: str,
    pid: str | None,
    out: Decoded,
    payload: bytes,
) -> list[str]:
    """The object's ``status`` -> its :class:`~monitor.model.DeviceStatus` in ``out`` (or a
    ``bad_status`` rejection); -> the flags under which the device cannot measure."""
    flags, detail = parse_status(obj["status"])
    if flags is None:
        out.reject("bad_status", detail, origin, payload)
        return []
    out.statuses.append(DeviceStatus(ts, origin.ward, origin.bed, device, flags, pid))
    return sorted(f for f in flags if DEVICE_FLAGS[f][3])


def _field(
    key: str,
    raw: Any,
    blind: list[str],
    device: str,
    origin: Origin,
    out: Decoded,
    payload: bytes,
) -> tuple[bool, float | None]:
    """One field of a reading object -> (whether it is a vital, its checked value: None
    when it is refused, with its rejection in ``out``, or not a vital)."""
    if key in _META:
        return False, None
    if key not in VITALS:
        out.reject("unknown_vital", f"field {key[:40]!r}", origin, payload)
        return False, None
    if blind:
        out.reject(
            "sensor_flag",
            f"{key}={raw!r:.40} while {device[:40]} reports {', '.join(blind)}",
            origin,
            payload,
        )
        return True, None
    value, cause, detail = check_value(key, raw)
    if value is None:
        out.reject(cause, detail, origin, payload)
    return True, value
