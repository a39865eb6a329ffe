"""Payload codecs: bytes -> readings and rejections. Pure functions, no I/O.

Accepted payloads (UTF-8 JSON):

* a reading object ``{"ts": 1764324000.25, "hr": 72, "spo2": 97, ...}``;
* a JSON array of reading objects (a batch);
* a SenML pack (RFC 8428): an array of records with ``bn``/``n``, ``bt``/``t``, ``v``,
  ``u`` (and ``bu``, ``bv``), names resolved to vitals through aliases.

A bad field never takes a good one down with it: each vital of each object is
accepted or rejected on its own, with a cause from :data:`CAUSES`.

Device-reported state: a reading object may carry ``"status"``, what the device says
about its own sensor and signal: one flag or a list of them, keys of
:data:`~monitor.model.DEVICE_FLAGS` (any case), or ``"ok"`` / ``[]`` for all clear. It
becomes a :class:`~monitor.model.DeviceStatus` (the device's full set of flags at the
object's ``ts``) in :attr:`Decoded.statuses`, in event-time order:

* an object with a status and no vitals is valid (not ``empty``);
* a status that is not a string or a list of strings, names an unknown flag, or combines
  ``"ok"`` with flags is refused as a whole (``bad_status``); the object's vitals still
  count;
* while the status holds a flag under which the device cannot measure (the 4th element
  of its DEVICE_FLAGS entry: sensor off, no sensor, sensor fault, searching), the
  object's vitals are not trusted: each is refused as ``sensor_flag``, whatever its value.

SenML packs carry no status.

Decoding (issue 16): :func:`decode` parses with msgspec and builds readings on a fast path
for the common shapes; :func:`decode_stdlib` is the reference, the stdlib ``json`` path this
module always had. Both give exactly the same readings, statuses and rejections (causes
and details) for every payload: whatever msgspec refuses, or may read differently from
``json``, goes to the reference path for that payload alone:

* ``NaN``, ``Infinity``, ``-Infinity`` and numbers beyond a double (``1e400``): ``json``
  reads them as floats, refused per field (``not_finite``); msgspec refuses the document;
* lone surrogates in ``\\u`` escapes (``json`` keeps them in the string);
* invalid UTF-8 (``not_utf8``), a UTF-8 BOM and malformed JSON (``malformed_json``): the
  reference path gives the cause and the detail, i.e. ``json``'s own message;
* nesting deeper than :data:`_MAX_FAST_DEPTH`: both decoders stop at the interpreter's
  recursion limit, at slightly different depths.

Both read integers of any size as Python ints (up to ``sys.get_int_max_str_digits()``
digits; longer ones are malformed_json for both) and keep the last of duplicate keys at
the place of the first.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import msgspec

from monitor.model import (
    AVPU_CODES,
    DEVICE_FLAGS,
    MODES,
    VITALS,
    DeviceStatus,
    Reading,
    Rejection,
)

#: Every rejection cause, with what it means (README, "Dead letters").
CAUSES: Final[dict[str, str]] = {
    "too_large": "payload larger than max_payload_bytes",
    "not_utf8": "payload is not UTF-8",
    "malformed_json": "payload is not valid JSON",
    "bad_shape": "JSON is not a reading object, an array of them, or a SenML pack",
    "bad_topic": "topic does not match the source's template (or a level is empty)",
    "bad_ts": "ts missing its UTC offset, not a number/ISO 8601 string, or out of range",
    "future_ts": "ts further ahead of the receive time than rules.max_future_s (clock skew)",
    "wrong_type": "a vital's value is not a number",
    "not_finite": "a vital's value is NaN or infinite",
    "implausible": "a vital's value is outside what a patient can have",
    "unknown_vital": "a field or SenML name that is not a known vital",
    "bad_unit": "a SenML unit that does not fit the vital",
    "bad_field": "patient/device is not a string, or mode is not continuous/intermittent",
    "empty": "a reading object with no vitals (and no status)",
    "bad_status": "a status that is not a string or list of strings, names an unknown flag,"
    " or combines ok with flags",
    "sensor_flag": "a value sent while the device itself reports it cannot measure"
    " (sensor off, no sensor, searching)",
    "overflow": "a QoS 0 message arriving while the engine is saturated (QoS 1 waits instead)",
}

#: Fields of a reading object that are not vitals.
_META: Final = frozenset({"ts", "patient", "device", "status", "mode"})

#: A status meaning "all clear" (as is an empty list).
_STATUS_OK: Final = "ok"

#: Earliest plausible event time (2000-01-01); catches milliseconds sent as seconds too.
_MIN_TS: Final = 946_684_800.0
#: Latest plausible event time (2100-01-01): epoch milliseconds are bad_ts whatever max_future_s.
_MAX_TS: Final = 4_102_444_800.0
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


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a payload came from: topic levels resolved to ward/bed/device."""

    topic: str
    ward: str
    bed: str
    device: str


@dataclass(slots=True)
class Decoded:
    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    #: Device-reported states, in event-time order (see the module docstring).
    statuses: list[DeviceStatus] = field(default_factory=list)

    def reject(self, cause: str, detail: str, origin: Origin, payload: bytes = b"") -> None:
        self.rejections.append(Rejection(cause, detail, origin.topic, payload))


@dataclass(frozen=True, slots=True)
class Limits:
    """Decoder settings that come from the config."""

    max_payload_bytes: int = 64 * 1024
    max_future_s: float | None = 30.0  #: None: no limit (event time runs free)
    aliases: Mapping[str, str] = field(default_factory=dict)


#: The hot path's JSON parser (msgspec, untyped: dicts, lists, str, int, float, bool, None).
_loads: Final[Callable[[bytes], Any]] = msgspec.json.Decoder().decode
#: What it raises on a document it refuses: msgspec.DecodeError (its ValidationError too,
#: for a number beyond a double; a ValueError in 0.23, not in 0.19), a
#: UnicodeDecodeError (0.19, on invalid UTF-8), RecursionError (nested too deep).
_LOADS_ERRORS: Final = (msgspec.MsgspecError, ValueError, RecursionError)
#: Documents nested deeper than this take the reference path (legitimate ones nest 3 deep:
#: a batch of objects with a status list). ``json`` and msgspec each stop near the
#: interpreter's recursion limit (1000 by default, less the caller's own stack), a few
#: levels apart; well below it, both read the same document.
_MAX_FAST_DEPTH: Final = 256

#: Plausible ranges of the numeric vitals (not o2/avpu, which take other JSON types).
_RANGES: Final[dict[str, tuple[float, float]]] = {
    vital: (lo, hi) for vital, (_unit, lo, hi) in VITALS.items() if vital not in ("o2", "avpu")
}


#: _fast_doc(): the payload is for the reference path.
_REFERENCE: Final = object()


def decode(payload: bytes, origin: Origin, now: float, limits: Limits) -> Decoded:
    """Decode one MQTT payload into readings and rejections."""
    return _decode(payload, origin, now, limits, True)


def decode_stdlib(payload: bytes, origin: Origin, now: float, limits: Limits) -> Decoded:
    """The reference decoder: stdlib ``json``, then the checks, one field at a time: what
    :func:`decode` did before issue 16, and does still for the payloads its fast path
    leaves alone. The tests hold the two to the same result for every payload
    (tests/test_codecs_decoder.py); the benchmark (benchmarks/codec.py) compares them."""
    return _decode(payload, origin, now, limits, False)


def _decode(payload: bytes, origin: Origin, now: float, limits: Limits, fast: bool) -> Decoded:
    # decode() and decode_stdlib() call json.loads() at the same depth of the stack, hence
    # with the same room below the recursion limit: the same verdict on deep documents.
    out = Decoded()
    if len(payload) > limits.max_payload_bytes:
        out.reject(
            "too_large", f"{len(payload)} bytes > {limits.max_payload_bytes}", origin, payload[:256]
        )
        return out
    if fast:
        doc = _fast_doc(payload)
        if doc is not _REFERENCE:
            _decode_fast(doc, origin, now, limits, out, payload)
            return out
    # the reference path: UTF-8, then json, its verdict and message on what it refuses
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        out.reject("not_utf8", str(exc), origin, payload)
        return out
    try:
        doc = json.loads(text)  # NaN/Infinity parse to floats and are refused per field
    except (ValueError, RecursionError) as exc:
        out.reject("malformed_json", str(exc)[:200], origin, payload)
        return out
    if isinstance(doc, dict):
        _decode_object(doc, origin, now, limits, out, payload)
    elif isinstance(doc, list) and doc:
        # A non-object element is refused on its own: it never takes the others down.
        records = [r for r in doc if isinstance(r, dict)]
        for r in doc:
            if not isinstance(r, dict):
                out.reject("bad_shape", f"array element is a {type(r).__name__}", origin, payload)
        if any(("n" in r or "bn" in r) for r in records):
            _decode_senml(records, origin, now, limits, out, payload)
        else:
            for obj in records:
                _decode_object(obj, origin, now, limits, out, payload)
    else:
        out.reject("bad_shape", f"top-level JSON {type(doc).__name__}", origin, payload)
    if len(out.statuses) > 1:
        out.statuses.sort(key=lambda s: s.ts)  # stable: same ts keeps payload order
    return out


def _fast_doc(payload: bytes) -> Any:
    """The payload parsed by msgspec, or :data:`_REFERENCE` where json might read it
    otherwise or refuse it with its own message (see the module docstring)."""
    try:
        doc = _loads(payload)
    except _LOADS_ERRORS:
        return _REFERENCE  # NaN/Infinity/1e400, lone surrogates, not UTF-8, malformed
    if payload.count(b"[") + payload.count(b"{") > _MAX_FAST_DEPTH and _deeper_than(
        doc, _MAX_FAST_DEPTH
    ):
        return _REFERENCE
    return doc


def _decode_fast(
    doc: Any, origin: Origin, now: float, limits: Limits, out: Decoded, payload: bytes
) -> None:
    """The reference path's dispatch on a document msgspec parsed (the same document
    json would give), objects through :func:`_object_fast`."""
    if type(doc) is dict:
        _object_fast(doc, origin, now, limits, out, payload)
    elif type(doc) is list and doc:
        records = [r for r in doc if type(r) is dict]
        if len(records) != len(doc):
            for r in doc:
                if type(r) is not dict:
                    out.reject(
                        "bad_shape", f"array element is a {type(r).__name__}", origin, payload
                    )
        if any(("n" in r or "bn" in r) for r in records):
            _decode_senml(records, origin, now, limits, out, payload)
        else:
            for obj in records:
                _object_fast(obj, origin, now, limits, out, payload)
    else:
        out.reject("bad_shape", f"top-level JSON {type(doc).__name__}", origin, payload)
    if len(out.statuses) > 1:
        out.statuses.sort(key=lambda s: s.ts)  # stable: same ts keeps payload order


def _deeper_than(doc: Any, limit: int) -> bool:
    """Whether ``doc`` nests lists and objects more than ``limit`` deep (the document
    itself is level 1). Iterative: no recursion limit of its own."""
    if type(doc) is not dict and type(doc) is not list:
        return False
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


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
    blind: list[str] = []  # flags under which the device cannot measure
    if found:
        flags, detail = parse_status(obj["status"])
        if flags is None:
            out.reject("bad_status", detail, origin, payload)
        else:
            out.statuses.append(DeviceStatus(ts, origin.ward, origin.bed, device, flags, pid))
            blind = sorted(f for f in flags if DEVICE_FLAGS[f][3])
    for key, raw in obj.items():
        if key in _META:
            continue
        if key not in VITALS:
            out.reject("unknown_vital", f"field {key[:40]!r}", origin, payload)
            continue
        found = True
        if blind:
            out.reject(
                "sensor_flag",
                f"{key}={raw!r:.40} while {device[:40]} reports {', '.join(blind)}",
                origin,
                payload,
            )
            continue
        value, cause, detail = check_value(key, raw)
        if value is None:
            out.reject(cause, detail, origin, payload)
            continue
        out.readings.append(Reading(ts, origin.ward, origin.bed, device, key, value, pid, mode))
    if not found:
        out.reject("empty", "no vitals (and no status) in reading object", origin, payload)


#: Reading's fields that :func:`_new_reading` takes, in order (the rest keep their default).
_BUILT: Final = ("ts", "ward", "bed", "device", "vital", "value", "patient", "mode")

_Builder = Callable[[float, str, str, str, str, float, str | None, str | None], Reading]


def _reading_builder() -> _Builder:
    """-> a function that makes ``Reading(ts, ward, bed, device, vital, value, patient,
    mode)``, an equal object, in about half the time of the dataclass's ``__init__``
    (which, the class being frozen, sets each field through ``object.__setattr__`` by
    name): it fills the slots through their descriptors. Only while Reading is a slotted
    dataclass whose fields start with :data:`_BUILT`, the others having a plain default,
    and with no ``__post_init__``; otherwise, Reading itself."""
    fields = dataclasses.fields(Reading)
    names = tuple(f.name for f in fields)
    rest = fields[len(_BUILT) :]
    if (
        names[: len(_BUILT)] != _BUILT
        or getattr(Reading, "__slots__", ()) != names
        or hasattr(Reading, "__post_init__")
        or any(f.default is dataclasses.MISSING for f in rest)
    ):
        return Reading
    new = object.__new__
    setters = [getattr(Reading, name).__set__ for name in _BUILT]
    set_ts, set_ward, set_bed, set_device, set_vital, set_value, set_patient, set_mode = setters
    defaults = [(getattr(Reading, f.name).__set__, f.default) for f in rest]

    def build(
        ts: float,
        ward: str,
        bed: str,
        device: str,
        vital: str,
        value: float,
        patient: str | None,
        mode: str | None,
    ) -> Reading:
        r: Reading = new(Reading)
        set_ts(r, ts)
        set_ward(r, ward)
        set_bed(r, bed)
        set_device(r, device)
        set_vital(r, vital)
        set_value(r, value)
        set_patient(r, patient)
        set_mode(r, mode)
        for set_default, default in defaults:
            set_default(r, default)
        return r

    return build


#: Reading(...) on the fast path (see :func:`_reading_builder`).
_new_reading: Final = _reading_builder()


def _object_fast(
    obj: dict[str, Any],
    origin: Origin,
    now: float,
    limits: Limits,
    out: Decoded,
    payload: bytes,
) -> None:
    """:func:`_decode_object`, with the checks of the common case inlined: a ts and values
    that are plain numbers in range go straight into readings; anything else takes the
    same helpers, in the same order, as there."""
    raw_ts = obj.get("ts")
    t = type(raw_ts)
    if raw_ts is None:
        ts = now
    elif (
        (t is float or t is int)
        and _MIN_TS <= raw_ts < _MAX_TS
        and (limits.max_future_s is None or raw_ts <= now + limits.max_future_s)
    ):
        ts = float(raw_ts)  # exact: an int in range is far below 2**53
    else:
        parsed, cause, detail = parse_ts(raw_ts, now, limits)
        if parsed is None:
            out.reject(cause, detail, origin, payload)
            return
        ts = parsed
    patient = obj.get("patient")
    device = obj.get("device", origin.device)
    if patient is None:
        pid = None
    elif type(patient) is str:
        pid = patient
    elif type(patient) is int:
        pid = str(patient)
    else:
        out.reject("bad_field", "patient is not a string", origin, payload)
        return
    if type(device) is not str or not device:
        out.reject("bad_field", "device is not a non-empty string", origin, payload)
        return
    mode = obj.get("mode")
    if mode is not None and mode not in MODES:
        out.reject(
            "bad_field", f"mode {mode!r:.40} is not one of {', '.join(MODES)}", origin, payload
        )
        return
    found = "status" in obj
    blind: list[str] = []
    if found:
        flags, detail = parse_status(obj["status"])
        if flags is None:
            out.reject("bad_status", detail, origin, payload)
        else:
            out.statuses.append(DeviceStatus(ts, origin.ward, origin.bed, device, flags, pid))
            blind = sorted(f for f in flags if DEVICE_FLAGS[f][3])
    ward, bed, readings, ranges = origin.ward, origin.bed, out.readings, _RANGES
    for key, raw in obj.items():
        bounds = ranges.get(key)
        if bounds is not None and not blind:
            t = type(raw)
            # NaN fails the comparison; bool is not int here (type, not isinstance)
            if (t is float or t is int) and bounds[0] <= raw <= bounds[1]:
                found = True
                readings.append(_new_reading(ts, ward, bed, device, key, float(raw), pid, mode))
                continue
        # the rest, as _decode_object
        if key in _META:
            continue
        if key not in VITALS:
            out.reject("unknown_vital", f"field {key[:40]!r}", origin, payload)
            continue
        found = True
        if blind:
            out.reject(
                "sensor_flag",
                f"{key}={raw!r:.40} while {device[:40]} reports {', '.join(blind)}",
                origin,
                payload,
            )
            continue
        value, cause, detail = check_value(key, raw)
        if value is None:
            out.reject(cause, detail, origin, payload)
            continue
        readings.append(_new_reading(ts, ward, bed, device, key, value, pid, mode))
    if not found:
        out.reject("empty", "no vitals (and no status) in reading object", origin, payload)


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
