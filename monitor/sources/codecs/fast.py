"""The fast path of :func:`~monitor.sources.codecs.decode`: msgspec parses, and reading
objects in the common shape become readings with their checks inlined; whatever msgspec
might read otherwise than ``json`` takes the reference path (see
:mod:`monitor.sources.codecs`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Final

import msgspec

from monitor.model import MODES, VITALS, Reading
from monitor.sources.codecs.base import _MAX_TS, _MIN_TS, Decoded, Limits, Origin
from monitor.sources.codecs.checks import _field, _status, parse_ts

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
    blind = _status(obj, ts, origin, device, pid, out, payload) if found else []
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
        vital, value = _field(key, raw, blind, device, origin, out, payload)  # as _decode_object
        found = found or vital
        if value is not None:
            readings.append(_new_reading(ts, ward, bed, device, key, value, pid, mode))
    if not found:
        out.reject("empty", "no vitals (and no status) in reading object", origin, payload)
