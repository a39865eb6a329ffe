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

The package: :mod:`~monitor.sources.codecs.base` (:class:`Origin`, :class:`Decoded`,
:class:`Limits`, :data:`CAUSES`), :mod:`~monitor.sources.codecs.checks` (ts, values,
status; the reference path's reading objects), :mod:`~monitor.sources.codecs.fast`
(msgspec and the fast path) and :mod:`~monitor.sources.codecs.senml` (SenML packs, units).
:func:`decode` and :func:`decode_stdlib` are here, and look :func:`_fast_doc` up here
(where tests replace it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from monitor.sources.codecs.base import (
    _MAX_TS,
    _META,
    _MIN_TS,
    _STATUS_OK,
    CAUSES,
    Decoded,
    Limits,
    Origin,
)
from monitor.sources.codecs.checks import (
    _decode_object,
    _float,
    check_value,
    parse_status,
    parse_ts,
)
from monitor.sources.codecs.fast import (
    _BUILT,
    _LOADS_ERRORS,
    _MAX_FAST_DEPTH,
    _RANGES,
    _REFERENCE,
    _deeper_than,
    _fast_doc,
    _loads,
    _new_reading,
    _object_fast,
    _reading_builder,
)
from monitor.sources.codecs.senml import _SENML_REL, _UNITS, _decode_senml, resolve_name


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
            _decode_doc(doc, origin, now, limits, out, payload, _object_fast)
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
    _decode_doc(doc, origin, now, limits, out, payload, _decode_object)
    return out


def _decode_doc(
    doc: Any,
    origin: Origin,
    now: float,
    limits: Limits,
    out: Decoded,
    payload: bytes,
    decode_object: Callable[[dict[str, Any], Origin, float, Limits, Decoded, bytes], None],
) -> None:
    """A parsed document (the same from json and msgspec) -> ``out``: an object through
    ``decode_object`` (:func:`_object_fast` or the reference :func:`_decode_object`), an
    array as a SenML pack or a batch of objects."""
    if type(doc) is dict:
        decode_object(doc, origin, now, limits, out, payload)
    elif type(doc) is list and doc:
        # A non-object element is refused on its own: it never takes the others down.
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
                decode_object(obj, origin, now, limits, out, payload)
    else:
        out.reject("bad_shape", f"top-level JSON {type(doc).__name__}", origin, payload)
    if len(out.statuses) > 1:
        out.statuses.sort(key=lambda s: s.ts)  # stable: same ts keeps payload order


__all__ = [
    "CAUSES",
    "_BUILT",
    "_LOADS_ERRORS",
    "_MAX_FAST_DEPTH",
    "_MAX_TS",
    "_META",
    "_MIN_TS",
    "_RANGES",
    "_REFERENCE",
    "_SENML_REL",
    "_STATUS_OK",
    "_UNITS",
    "Decoded",
    "Limits",
    "Origin",
    "_decode_doc",
    "_decode_object",
    "_decode_senml",
    "_deeper_than",
    "_fast_doc",
    "_float",
    "_loads",
    "_new_reading",
    "_object_fast",
    "_reading_builder",
    "check_value",
    "decode",
    "decode_stdlib",
    "parse_status",
    "parse_ts",
    "resolve_name",
]
