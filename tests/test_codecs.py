"""Payload codecs: worked examples for every payload shape and rejection cause, plus properties.

Pure logic: ``decode(payload, origin, now, limits)`` with a fixed ``now``, no broker.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.config import DEFAULT_ALIASES
from monitor.model import DEVICE_FLAGS, VITALS, DeviceStatus, Reading
from monitor.sources.codecs import CAUSES, Decoded, Limits, Origin, decode, parse_status

NOW = 1764324000.0  # 2025-11-28T10:00:00Z
ORIGIN = Origin("vitals/icu/7/mon1", "icu", "7", "mon1")
LIMITS = Limits(aliases=DEFAULT_ALIASES)

#: Causes a payload can get from decode() (bad_topic is decided by the source, before).
DECODE_CAUSES = set(CAUSES) - {"bad_topic", "overflow"}  # those two come from the source


def dec(payload: bytes | str | Any, now: float = NOW, limits: Limits = LIMITS) -> Decoded:
    if isinstance(payload, str):
        payload = payload.encode()
    elif not isinstance(payload, bytes):
        payload = json.dumps(payload).encode()
    return decode(payload, ORIGIN, now, limits)


def by_vital(d: Decoded) -> dict[str, float]:
    out = {r.vital: r.value for r in d.readings}
    assert len(out) == len(d.readings), "a vital appeared twice"
    return out


def causes(d: Decoded) -> list[str]:
    return [r.cause for r in d.rejections]


# ---------------------------------------------------------------------- reading object


def test_reading_object_from_the_spec():
    d = dec(
        b'{"ts": 1764324000.25, "hr": 72, "spo2": 97, "rr": 14, "sbp": 121, '
        b'"dbp": 79, "map": 93, "temp": 36.9}'
    )
    assert d.rejections == []
    assert by_vital(d) == {
        "hr": 72,
        "spo2": 97,
        "rr": 14,
        "sbp": 121,
        "dbp": 79,
        "map": 93,
        "temp": 36.9,
    }
    for r in d.readings:
        assert r.ts == 1764324000.25
        assert (r.ward, r.bed, r.device, r.patient) == ("icu", "7", "mon1", None)
        assert isinstance(r.value, float)


def test_etco2_and_subset_of_vitals():
    d = dec({"ts": NOW, "etco2": 38})
    assert by_vital(d) == {"etco2": 38.0}
    assert d.rejections == []


def test_missing_ts_uses_receive_time():
    d = dec({"hr": 72})
    assert [r.ts for r in d.readings] == [NOW]
    d = dec({"ts": None, "hr": 72})
    assert [r.ts for r in d.readings] == [NOW]


def test_patient_and_device_from_payload():
    d = dec({"hr": 72, "patient": "MRN-1", "device": "pump2"})
    (r,) = d.readings
    assert (r.patient, r.device) == ("MRN-1", "pump2")
    d = dec({"hr": 72, "patient": 12345})  # numeric MRNs become strings
    assert d.readings[0].patient == "12345"


def test_news2_inputs_are_readings():
    d = dec({"hr": 72, "o2": True, "avpu": "v"})
    assert by_vital(d) == {"hr": 72.0, "o2": 1.0, "avpu": 2.0}  # avpu 0..4 = A C V P U
    assert d.rejections == []
    assert by_vital(dec({"o2": 0, "avpu": "A"})) == {"o2": 0.0, "avpu": 0.0}


@pytest.mark.parametrize(
    "field", ['"o2": 0.5', '"o2": "yes"', '"avpu": "X"', '"avpu": "AC"', '"avpu": 1', '"avpu": ""']
)
def test_bad_news2_inputs_are_refused_alone(field: str):
    d = dec(f'{{"hr": 70, {field}}}')
    assert by_vital(d) == {"hr": 70.0}
    assert causes(d) == ["wrong_type"]


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2025-11-28T10:00:00Z", NOW),
        ("2025-11-28T10:00:00+00:00", NOW),
        ("2025-11-28T11:00:00+01:00", NOW),
        ("2025-11-28T05:00:00.5-05:00", NOW + 0.5),
        ("2025-11-28T09:59:59.250z", NOW - 0.75),
        (1764324000, NOW),
        (1764323999.5, NOW - 0.5),
    ],
)
def test_ts_forms_accepted(ts: Any, expected: float):
    d = dec({"ts": ts, "hr": 72})
    assert d.rejections == []
    assert [r.ts for r in d.readings] == [pytest.approx(expected, abs=1e-6)]


@pytest.mark.parametrize(
    "ts",
    [
        "2025-11-28T10:00:00",  # ISO without an offset: local time of which zone?
        "2025-11-28 10:00",
        "yesterday",
        "",
        True,
        [NOW],
        {"s": NOW},
        946684799,  # before 2000
        0,
        -1.5,
    ],
)
def test_bad_ts(ts: Any):
    d = dec({"ts": ts, "hr": 72, "spo2": 97})
    assert d.readings == []
    assert causes(d) == ["bad_ts"]


def test_epoch_milliseconds_rejected():
    d = dec({"ts": 1764324000250, "hr": 72})
    assert d.readings == []
    assert causes(d) == ["bad_ts"]
    assert "epoch seconds expected" in d.rejections[0].detail
    # ... even when the future tolerance is (unwisely) huge
    lax = Limits(max_future_s=1e13, aliases=DEFAULT_ALIASES)
    assert causes(dec({"ts": 1764324000250, "hr": 72}, limits=lax)) == ["bad_ts"]
    assert causes(dec([{"n": "hr", "v": 72, "t": 1764324000250}], limits=lax)) == ["bad_ts"]


def test_future_ts_rejected_beyond_max_future():
    assert causes(dec({"ts": NOW + 31, "hr": 72})) == ["future_ts"]  # default: 30 s of skew
    assert dec({"ts": NOW + 30, "hr": 72}).rejections == []  # the limit itself is fine
    tight = Limits(max_future_s=0, aliases=DEFAULT_ALIASES)
    assert causes(dec({"ts": NOW + 1, "hr": 72}, limits=tight)) == ["future_ts"]
    assert causes(dec({"ts": "2025-11-28T10:10:00Z", "hr": 72})) == ["future_ts"]


# ------------------------------------------------------------------ per-field causes


@pytest.mark.parametrize(
    ("bad", "cause"),
    [
        ('"spo2": "97"', "wrong_type"),
        ('"spo2": true', "wrong_type"),  # booleans are not numbers
        ('"spo2": false', "wrong_type"),
        ('"spo2": null', "wrong_type"),
        ('"spo2": [97]', "wrong_type"),
        ('"spo2": {"v": 97}', "wrong_type"),
        ('"spo2": NaN', "not_finite"),
        ('"spo2": Infinity', "not_finite"),
        ('"spo2": -Infinity', "not_finite"),
        ('"spo2": 1e400', "not_finite"),
        ('"spo2": 100.5', "implausible"),
        ('"spo2": 101', "implausible"),
        ('"spo2": -1', "implausible"),
        ('"spo2": 1' + "0" * 400, "not_finite"),  # an integer too big for a double
        ('"SpO2": 97', "unknown_vital"),  # aliases are for SenML names, not object keys
        ('"heart": 72', "unknown_vital"),
    ],
)
def test_bad_field_next_to_a_good_one_keeps_the_good_one(bad: str, cause: str):
    d = dec('{"ts": 1764324000, "hr": 72, ' + bad + ', "temp": 36.9}')
    assert by_vital(d) == {"hr": 72.0, "temp": 36.9}
    assert causes(d) == [cause]
    assert all(r.ts == NOW for r in d.readings)


@pytest.mark.parametrize(
    ("vital", "value", "ok"),
    [
        ("spo2", 100, True),
        ("spo2", 0, True),
        ("hr", 350, True),
        ("hr", 351, False),
        ("hr", 350.01, False),
        ("rr", 150, True),
        ("rr", 151, False),
        ("sbp", 351, False),
        ("dbp", 301, False),
        ("map", 301, False),
        ("temp", 20, True),
        ("temp", 19.9, False),
        ("temp", 45.1, False),
        ("etco2", 151, False),
    ],
)
def test_plausibility_limits(vital: str, value: float, ok: bool):
    d = dec({vital: value})
    if ok:
        assert by_vital(d) == {vital: value}
    else:
        assert d.readings == []
        assert causes(d) == ["implausible"]


@pytest.mark.parametrize(
    "obj",
    [
        {"hr": 72, "patient": {"id": 1}},
        {"hr": 72, "patient": True},  # a boolean is not an identifier
        {"hr": 72, "patient": [1]},
        {"hr": 72, "device": 5},
        {"hr": 72, "device": ""},
        {"hr": 72, "device": None},
    ],
)
def test_bad_meta_field(obj: dict[str, Any]):
    d = dec(obj)
    assert d.readings == []
    assert causes(d) == ["bad_field"]


@pytest.mark.parametrize("obj", [{}, {"ts": NOW}, {"patient": "p", "device": "d"}])
def test_object_without_vitals_is_empty(obj: dict[str, Any]):
    assert causes(dec(obj)) == ["empty"]


def test_object_with_only_unknown_fields():
    assert sorted(causes(dec({"foo": 1}))) == ["empty", "unknown_vital"]


# ----------------------------------------------------------------- whole payloads


def test_batch_of_reading_objects():
    d = dec(
        [
            {"ts": NOW - 2, "hr": 70, "spo2": 98},
            {"ts": NOW - 1, "hr": 71},
            {"hr": 72, "patient": "p"},
        ]
    )
    assert d.rejections == []
    got = [(r.ts, r.vital, r.value, r.patient) for r in d.readings]
    assert got == [
        (NOW - 2, "hr", 70.0, None),
        (NOW - 2, "spo2", 98.0, None),
        (NOW - 1, "hr", 71.0, None),
        (NOW, "hr", 72.0, "p"),
    ]


def test_bad_object_in_a_batch_keeps_the_others():
    d = dec(
        [
            {"ts": NOW - 2, "hr": 70},
            {"ts": "not a time", "hr": 71},
            {"ts": NOW - 1, "hr": "x", "spo2": 96},
            {"ts": NOW + 3600, "hr": 72},
        ]
    )
    assert [(r.ts, r.vital, r.value) for r in d.readings] == [
        (NOW - 2, "hr", 70.0),
        (NOW - 1, "spo2", 96.0),
    ]
    assert causes(d) == ["bad_ts", "wrong_type", "future_ts"]


def test_non_object_in_a_batch_keeps_the_objects():
    d = dec('[{"ts": 1764324000, "hr": 70}, 5, "x", {"spo2": 97}]')
    assert by_vital(d) == {"hr": 70.0, "spo2": 97.0}
    assert causes(d) == ["bad_shape", "bad_shape"]


@pytest.mark.parametrize("payload", ["42", '"hr"', "null", "true", "[]", "[1, 2]", "[[]]"])
def test_bad_shape(payload: str):
    d = dec(payload)
    assert d.readings == []
    assert causes(d)
    assert set(causes(d)) == {"bad_shape"}


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b'{"hr": 72', b"{'hr': 72}", b'{"hr": 72,}', b"hr=72", b"[" * 60_000],
)
def test_malformed_json(payload: bytes):
    d = dec(payload)
    assert d.readings == []
    assert causes(d) == ["malformed_json"]
    assert d.rejections[0].payload == payload
    assert d.rejections[0].topic == ORIGIN.topic


@pytest.mark.parametrize("payload", [b'{"hr": 72, "x": "\xff"}', b"\xfe\xff\x00{", b"\xc3\x28"])
def test_not_utf8(payload: bytes):
    d = dec(payload)
    assert d.readings == []
    assert causes(d) == ["not_utf8"]


def test_payload_over_64_kib_rejected_and_truncated():
    body = b'{"hr": 72}'
    limit = 64 * 1024
    at_limit = body + b" " * (limit - len(body))
    assert len(at_limit) == limit
    assert by_vital(dec(at_limit)) == {"hr": 72.0}
    d = dec(at_limit + b" ")
    assert d.readings == []
    assert causes(d) == ["too_large"]
    assert len(d.rejections[0].payload) <= 256  # dead letters do not keep 64 KiB blobs


def test_smaller_max_payload_bytes():
    limits = Limits(max_payload_bytes=256, aliases=DEFAULT_ALIASES)
    assert causes(dec(b'{"hr": 72}' + b" " * 247, limits=limits)) == ["too_large"]
    assert dec(b'{"hr": 72}' + b" " * 246, limits=limits).rejections == []


# --------------------------------------------------------------------------- SenML


def test_senml_pack_with_base_name_and_base_time():
    d = dec(
        [
            {"bn": "urn:dev:mac:0024befffe804ff1:", "bt": NOW - 10, "n": "SpO2", "u": "%", "v": 97},
            {"n": "HR", "u": "beat/min", "v": 72, "t": 1},
            {"n": "pulse", "v": 73, "t": 2},
            {"n": "resp", "u": "1/min", "v": 14, "t": 3.5},
        ]
    )
    assert d.rejections == []
    got = [(r.ts, r.vital, r.value) for r in d.readings]
    assert got == [
        (NOW - 10, "spo2", 97.0),
        (NOW - 9, "hr", 72.0),
        (NOW - 8, "hr", 73.0),
        (NOW - 6.5, "rr", 14.0),
    ]
    assert {(r.ward, r.bed, r.device) for r in d.readings} == {("icu", "7", "mon1")}


def test_senml_base_name_changes_midway():
    d = dec(
        [
            {"bn": "urn:dev:mac:aa:", "bt": NOW, "n": "hr", "v": 70},
            {"bn": "urn:dev:mac:bb/", "n": "spo2", "v": 95},
            {"n": "Temperature", "v": 36.6, "u": "Cel"},
        ]
    )
    assert by_vital(d) == {"hr": 70.0, "spo2": 95.0, "temp": 36.6}


@pytest.mark.parametrize(
    "name",
    ["SpO2", "spo2", "SPO2", "SaO2", "urn:dev:ow:10e2073a01080063:SpO2", "monitor/1/spo2"],
)
def test_senml_name_aliases(name: str):
    assert by_vital(dec([{"n": name, "v": 96}])) == {"spo2": 96.0}


def test_senml_custom_alias():
    limits = Limits(aliases={**DEFAULT_ALIASES, "sat": "spo2"})
    assert by_vital(dec([{"n": "SAT", "v": 96}], limits=limits)) == {"spo2": 96.0}


def test_senml_relative_times():
    d = dec([{"n": "hr", "v": 70, "t": -5}, {"n": "hr", "v": 71}, {"n": "hr", "v": 72, "t": 0}])
    assert [(r.ts, r.value) for r in d.readings] == [(NOW - 5, 70.0), (NOW, 71.0), (NOW, 72.0)]
    d = dec([{"bt": -10, "n": "hr", "v": 70}, {"n": "hr", "v": 71, "t": 4}])
    assert [r.ts for r in d.readings] == [NOW - 10, NOW - 6]


def test_senml_absolute_t_without_bt():
    d = dec([{"n": "hr", "v": 70, "t": NOW - 3}])
    assert [r.ts for r in d.readings] == [NOW - 3]


def test_senml_base_value_and_base_unit_carry_forward():
    d = dec(
        [
            {"bn": "x:", "bu": "Cel", "bv": 36, "n": "temp", "v": 0.5},
            {"n": "temp", "v": 1.0, "t": -1},
        ]
    )
    assert [(r.ts, r.value) for r in d.readings] == [(NOW, 36.5), (NOW - 1, 37.0)]


@pytest.mark.parametrize(
    ("unit", "v", "celsius"),
    [
        ("Cel", 37.0, 37.0),
        ("degC", 37.0, 37.0),
        ("K", 310.15, 37.0),
        ("degF", 98.6, 37.0),
        ("degF", 104.0, 40.0),
    ],
)
def test_senml_temperature_units(unit: str, v: float, celsius: float):
    d = dec([{"n": "temp", "u": unit, "v": v}])
    assert d.rejections == []
    (r,) = d.readings
    assert r.vital == "temp"
    assert r.value == pytest.approx(celsius, abs=1e-9)


@pytest.mark.parametrize(
    ("name", "unit", "v", "expected"),
    [
        ("hr", "Hz", 1.2, 72.0),
        ("spo2", "/", 0.97, 97.0),
        ("sbp", "kPa", 16.0, 120.0099),
        ("etco2", "%", 5.0, 35.65),
    ],
)
def test_senml_other_unit_conversions(name: str, unit: str, v: float, expected: float):
    (r,) = dec([{"n": name, "u": unit, "v": v}]).readings
    assert r.value == pytest.approx(expected, abs=1e-3)


def test_senml_bad_unit_keeps_the_rest():
    d = dec(
        [
            {"bt": NOW, "n": "temp", "u": "mmHg", "v": 37},
            {"n": "hr", "u": "Cel", "v": 72},
            {"n": "spo2", "u": "%", "v": 97},
        ]
    )
    assert by_vital(d) == {"spo2": 97.0}
    assert causes(d) == ["bad_unit", "bad_unit"]


def test_senml_converted_value_checked_for_plausibility():
    # 120 degF is 48.9 Cel: impossible for a patient, although 120 looks like a number
    assert causes(dec([{"n": "temp", "u": "degF", "v": 120}])) == ["implausible"]
    assert causes(dec([{"n": "temp", "u": "K", "v": 37}])) == ["implausible"]


@pytest.mark.parametrize(
    ("record", "cause"),
    [
        ({"n": "spo2", "vs": "97"}, "wrong_type"),
        ({"n": "spo2", "vb": True}, "wrong_type"),
        ({"n": "spo2", "v": "97"}, "wrong_type"),
        ({"n": "spo2", "v": True}, "wrong_type"),
        ({"n": "spo2", "v": float("nan")}, "not_finite"),
        ({"n": "spo2", "v": 101}, "implausible"),
        ({"n": "glucose", "v": 5.5}, "unknown_vital"),
        ({"n": "spo2", "v": 97, "t": "now"}, "bad_ts"),
        ({"n": "spo2", "v": 97, "t": 600}, "future_ts"),
        ({"n": "spo2", "v": 97, "t": 400_000_000}, "bad_ts"),  # absolute, but 1982
    ],
)
def test_senml_bad_record_keeps_the_rest(record: dict[str, Any], cause: str):
    d = dec([{"bn": "dev:", "n": "hr", "v": 72}, record, {"n": "rr", "v": 14}])
    assert by_vital(d) == {"hr": 72.0, "rr": 14.0}
    assert causes(d) == [cause]


@pytest.mark.parametrize(
    ("base", "cause"),
    [({"bn": 5}, "bad_shape"), ({"bt": "x"}, "bad_ts"), ({"bv": "x"}, "wrong_type")],
)
def test_senml_bad_base_field(base: dict[str, Any], cause: str):
    d = dec([{"n": "hr", "v": 72}, {**base, "n": "spo2", "v": 97}])
    assert by_vital(d) == {"hr": 72.0}  # records before it are kept
    assert causes(d) == [cause]


def test_senml_base_only_record_is_not_a_reading():
    d = dec([{"bn": "urn:dev:mac:00aa:", "bt": NOW}, {"n": "hr", "v": 72}])
    assert d.rejections == []
    assert by_vital(d) == {"hr": 72.0}


def test_every_decode_cause_is_documented_and_covered():
    """The examples above produce every cause decode() can give (bad_topic is the source's)."""
    payloads: list[Any] = [
        b"x" * (64 * 1024 + 1),
        b"\xff",
        b"{",
        "42",
        {"ts": "2025-11-28T10:00:00", "hr": 1},
        {"ts": NOW + 3600, "hr": 1},
        {"hr": "1"},
        '{"hr": NaN}',
        {"hr": 400},
        {"bogus": 1},
        [{"n": "temp", "u": "mmHg", "v": 37}],
        {"hr": 1, "device": 3},
        {},
        {"status": 5},
        {"status": "sensor_off", "hr": 1},
    ]
    seen = {c for p in payloads for c in causes(dec(p))}
    assert seen == DECODE_CAUSES
    assert seen <= set(CAUSES)


# ---------------------------------------------------------------------- properties

PROPS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)

#: Keys that make an arbitrary object interesting for the codec.
field_names = st.sampled_from([*VITALS, "ts", "patient", "device", "o2", "avpu", "n", "bn", "v"])
field_values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.floats(min_value=0, max_value=400)
    | st.floats(min_value=NOW - 10**6, max_value=NOW + 1000)
    | st.text(max_size=30)
    | st.sampled_from(["2025-11-28T10:00:00Z", "2025-11-28T10:00:00", "mmHg", "Cel", "HR"])
    | st.lists(st.integers(), max_size=2)
)
objects = st.dictionaries(field_names | st.text(max_size=6), field_values, max_size=10)
senml_records = st.dictionaries(
    st.sampled_from(["bn", "bt", "bu", "bv", "n", "t", "u", "v", "vs", "s"]),
    field_values | st.sampled_from(["urn:dev:x:", "SpO2", "pulse", "%", "K", "degF"]),
    max_size=6,
)


def _check_invariants(d: Decoded) -> None:
    for rej in d.rejections:
        assert rej.cause in CAUSES
        assert isinstance(rej.detail, str)
    for r in d.readings:
        assert isinstance(r, Reading)
        assert r.vital in VITALS
        _unit, lo, hi = VITALS[r.vital]
        assert math.isfinite(r.value)
        assert lo <= r.value <= hi
        assert math.isfinite(r.ts)
        assert r.ts <= NOW + LIMITS.max_future_s
        assert r.patient is None or isinstance(r.patient, str)
        assert isinstance(r.device, str)
        assert r.device


@PROPS
@given(st.binary(max_size=300))
def test_decode_never_raises_on_arbitrary_bytes(payload: bytes):
    _check_invariants(decode(payload, ORIGIN, NOW, LIMITS))


@PROPS
@given(json_values)
def test_decode_never_raises_on_arbitrary_json(doc: Any):
    d = dec(json.dumps(doc))
    _check_invariants(d)
    assert d.readings or d.rejections or _may_yield_nothing(doc)


def _may_yield_nothing(doc: Any) -> bool:
    """Payloads that are fine but carry no reading: SenML records without a value, and
    objects with only the NEWS2 fields that are accepted and ignored for now."""
    if isinstance(doc, dict):
        return "o2" in doc or "avpu" in doc
    if isinstance(doc, list) and any(isinstance(r, dict) and ("n" in r or "bn" in r) for r in doc):
        return True
    return isinstance(doc, list) and bool(doc) and all(_may_yield_nothing(r) for r in doc)


@PROPS
@given(st.one_of(objects, st.lists(objects, max_size=4), st.lists(senml_records, max_size=5)))
def test_decode_never_raises_on_reading_like_json(doc: Any):
    _check_invariants(dec(json.dumps(doc)))


finite: dict[str, st.SearchStrategy[Any]] = {
    vital: st.floats(min_value=lo, max_value=hi, allow_nan=False) | st.integers(int(lo), int(hi))
    for vital, (_unit, lo, hi) in VITALS.items()
}
finite["o2"] = st.booleans()
finite["avpu"] = st.sampled_from("ACVPU")


def as_value(vital: str, raw: Any) -> float:
    """What the codec stores for a valid raw value."""
    return float("ACVPU".index(raw)) if vital == "avpu" else float(raw)


@st.composite
def reading_objects(draw: st.DrawFn) -> dict[str, Any]:
    vitals = draw(st.lists(st.sampled_from(sorted(VITALS)), min_size=1, unique=True))
    obj: dict[str, Any] = {v: draw(finite[v]) for v in vitals}
    if draw(st.booleans()):
        obj["ts"] = draw(
            st.floats(min_value=946_684_800.0, max_value=NOW + 30)
            | st.integers(946_684_800, int(NOW))
        )
    if draw(st.booleans()):
        obj["patient"] = draw(st.text(max_size=10))
    if draw(st.booleans()):
        obj["device"] = draw(st.text(min_size=1, max_size=10))
    keys = list(obj)
    order = draw(st.permutations(keys))
    return {k: obj[k] for k in order}


@PROPS
@given(st.lists(reading_objects(), min_size=1, max_size=4), st.booleans())
def test_valid_reading_objects_round_trip_exactly(objs: list[dict[str, Any]], as_batch: bool):
    if not as_batch:
        objs = objs[:1]
    d = dec(objs if as_batch else objs[0])
    assert d.rejections == []
    expected = [
        (float(o.get("ts", NOW)), o.get("device", "mon1"), o.get("patient"), k, as_value(k, v))
        for o in objs
        for k, v in o.items()
        if k in VITALS
    ]
    got = [(r.ts, r.device, r.patient, r.vital, r.value) for r in d.readings]
    assert got == expected


def _plausible_number(vital: str, raw: Any) -> bool:
    if vital == "o2":
        return isinstance(raw, bool) or raw in (0, 1)
    if vital == "avpu":
        return isinstance(raw, str) and len(raw.strip()) == 1 and raw.strip().upper() in "ACVPU"
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return False
    _unit, lo, hi = VITALS[vital]
    return lo <= raw <= hi  # False for NaN; exact for huge integers


#: Fields of a reading object that are not vitals (README, "Readings").
META = {"ts", "patient", "device", "status", "mode"}


@PROPS
@given(objects)
# the meta fields a generated key can hit ("status" and "mode" are short enough): each
# was a falsifying example of this property once (issue 15, C19)
@example({"status": "ok"})
@example({"status": ["sensor_off"], "hr": 70})
@example({"status": 5, "hr": 70, "x": 1})
@example({"mode": "continuous", "hr": 70})
@example({"mode": "sometimes", "hr": 70})
def test_every_vital_field_is_accounted_for(obj: dict[str, Any]):
    d = dec(json.dumps(obj))
    _check_invariants(d)
    object_level = {"bad_ts", "future_ts", "bad_field"}
    if any(c in object_level for c in causes(d)):
        # the object as a whole is refused (no usable time or identity): once, nothing else
        assert d.readings == []
        assert len(d.rejections) == 1
        return
    vital_fields = [k for k in obj if k in VITALS]
    unknown = [k for k in obj if k not in VITALS and k not in META]
    # a status the device sends: refused as a whole when bad; when it says the device
    # cannot measure, every vital of the object is refused as sensor_flag
    flags = parse_status(obj["status"])[0] if "status" in obj else frozenset()
    bad_status = flags is None
    blind = bool(flags) and any(DEVICE_FLAGS[f][3] for f in flags)
    per_field = [
        c for c in causes(d) if c in {"wrong_type", "not_finite", "implausible", "sensor_flag"}
    ]
    assert len(d.readings) + len(per_field) == len(vital_fields)
    assert sorted(r.vital for r in d.readings) == sorted(
        k for k in vital_fields if not blind and _plausible_number(k, obj[k])
    )
    for r in d.readings:
        assert r.value == as_value(
            r.vital, obj[r.vital].strip().upper() if r.vital == "avpu" else obj[r.vital]
        )
    assert causes(d).count("unknown_vital") == len(unknown)
    has_empty = "empty" in causes(d)
    assert has_empty == (not vital_fields and "status" not in obj)
    assert causes(d).count("bad_status") == bad_status
    assert len(d.rejections) == len(per_field) + len(unknown) + has_empty + bad_status


# ------------------------------------------------------------ device-reported status

#: Flags under which a device cannot measure (DEVICE_FLAGS' 4th element).
BLIND = sorted(f for f, entry in DEVICE_FLAGS.items() if entry[3])
SIGNAL = sorted(f for f, entry in DEVICE_FLAGS.items() if not entry[3])


def statuses(d: Decoded) -> list[tuple[float, str, frozenset[str], str | None]]:
    return [(s.ts, s.device, s.flags, s.patient) for s in d.statuses]


@pytest.mark.parametrize(
    ("status", "flags"),
    [
        ("sensor_off", {"sensor_off"}),
        ("SENSOR_OFF", {"sensor_off"}),
        (" Searching ", {"searching"}),
        (["low_perfusion", "Motion"], {"low_perfusion", "motion"}),
        (["motion", "motion"], {"motion"}),
        ("ok", set()),
        ("OK", set()),
        (["ok"], set()),
        ([], set()),
    ],
)
def test_status_forms(status: Any, flags: set[str]) -> None:
    d = dec({"ts": NOW - 1, "status": status, "patient": "p1"})
    assert d.rejections == []  # a status alone is a valid object, not "empty"
    assert d.readings == []
    assert d.statuses == [DeviceStatus(NOW - 1, "icu", "7", "mon1", frozenset(flags), "p1")]


def test_status_without_ts_uses_receive_time_and_device_override() -> None:
    d = dec({"status": "no_sensor", "device": "masimo-1"})
    assert statuses(d) == [(NOW, "masimo-1", frozenset({"no_sensor"}), None)]


@pytest.mark.parametrize(
    ("status", "detail"),
    [
        ("sensor_of", "'sensor_of'"),
        (["motion", "lead_off"], "'lead_off'"),
        ("", "''"),
        (5, "int"),
        (1.5, "float"),
        (True, "bool"),
        (None, "NoneType"),
        ({"sensor_off": True}, "dict"),
        (["motion", 3], "int"),
        ([["motion"]], "list"),
        (["ok", "motion"], "'ok'"),
    ],
)
def test_bad_status_is_refused_as_a_whole_and_the_vitals_kept(status: Any, detail: str) -> None:
    d = dec({"status": status, "hr": 72})
    assert causes(d) == ["bad_status"]
    assert detail in d.rejections[0].detail
    assert d.statuses == []
    assert by_vital(d) == {"hr": 72}


def test_unknown_flag_detail_lists_the_known_ones() -> None:
    (rej,) = dec({"status": ["sensor_off", "lead_off"]}).rejections
    assert rej.cause == "bad_status"
    assert "'lead_off'" in rej.detail
    for flag in ["ok", *DEVICE_FLAGS]:
        assert flag in rej.detail


def test_bad_status_alone_is_one_rejection_not_also_empty() -> None:
    assert causes(dec({"status": 7})) == ["bad_status"]


@pytest.mark.parametrize("flag", BLIND)
def test_values_sent_under_a_no_measurement_flag_are_refused(flag: str) -> None:
    # whatever the value: devices send 0, -1, null or stale values while the sensor is off
    d = dec({"ts": NOW, "status": [flag, "motion"], "spo2": 0, "hr": -1, "rr": "x", "foo": 1})
    assert d.readings == []
    assert sorted(causes(d)) == ["sensor_flag", "sensor_flag", "sensor_flag", "unknown_vital"]
    assert all(flag in r.detail for r in d.rejections if r.cause == "sensor_flag")
    assert statuses(d) == [(NOW, "mon1", frozenset({flag, "motion"}), None)]


@pytest.mark.parametrize("flag", SIGNAL)
def test_values_sent_under_a_signal_quality_flag_are_kept(flag: str) -> None:
    d = dec({"ts": NOW, "status": flag, "spo2": 91, "hr": 400})
    assert by_vital(d) == {"spo2": 91}
    assert causes(d) == ["implausible"]
    assert statuses(d) == [(NOW, "mon1", frozenset({flag}), None)]


def test_status_in_a_batch_applies_to_its_own_object_only() -> None:
    d = dec(
        [
            {"ts": NOW - 1, "status": "ok", "spo2": 97},
            {"ts": NOW - 3, "status": "sensor_off", "spo2": 0},
            {"ts": NOW - 2, "spo2": 96},
        ]
    )
    assert [(r.ts, r.value) for r in d.readings] == [(NOW - 1, 97), (NOW - 2, 96)]
    assert causes(d) == ["sensor_flag"]
    # statuses come out in event-time order, whatever the payload's order
    assert [(s.ts, s.flags) for s in d.statuses] == [
        (NOW - 3, frozenset({"sensor_off"})),
        (NOW - 1, frozenset()),
    ]


def test_status_object_with_bad_ts_is_refused_once() -> None:
    d = dec({"ts": "yesterday", "status": "sensor_off"})
    assert causes(d) == ["bad_ts"]
    assert d.statuses == []


def test_senml_has_no_status() -> None:
    d = dec([{"bn": "urn:dev:x:", "bt": NOW}, {"n": "status", "vs": "sensor_off"}])
    assert d.statuses == []


status_values = (
    json_values
    | st.sampled_from(["ok", "OK", *DEVICE_FLAGS, *(f.upper() for f in DEVICE_FLAGS)])
    | st.lists(st.sampled_from(["ok", *DEVICE_FLAGS]) | st.text(max_size=12), max_size=5)
)


@PROPS
@given(status_values, st.dictionaries(st.sampled_from(sorted(VITALS)), field_values, max_size=3))
def test_decode_never_raises_on_arbitrary_status(status: Any, vitals: dict[str, Any]) -> None:
    obj = {"ts": NOW, "status": status, **vitals}
    d = dec(json.dumps(obj))
    _check_invariants(d)
    flags, _detail = parse_status(status)
    if flags is None:
        assert d.statuses == []
        assert causes(d).count("bad_status") == 1
    else:
        assert statuses(d) == [(NOW, "mon1", flags, None)]
        assert "bad_status" not in causes(d)
    blind = flags is not None and any(DEVICE_FLAGS[f][3] for f in flags)
    if blind:
        assert d.readings == []
        assert causes(d).count("sensor_flag") == len(vitals)
    else:
        assert "sensor_flag" not in causes(d)
    assert "empty" not in causes(d)


@PROPS
@given(
    st.lists(st.sampled_from(sorted(DEVICE_FLAGS)), unique=True, max_size=len(DEVICE_FLAGS)),
    st.sampled_from([str.lower, str.upper, str.title]),
    st.booleans(),
    st.integers(0, 120),
)
def test_valid_flags_round_trip(flags: list[str], case: Any, as_list: bool, hr: int) -> None:
    raw: Any = [case(f) for f in flags] if as_list or len(flags) != 1 else case(flags[0])
    d = dec({"ts": NOW - 5, "status": raw or "ok", "hr": hr})
    assert statuses(d) == [(NOW - 5, "mon1", frozenset(flags), None)]
    if any(DEVICE_FLAGS[f][3] for f in flags):
        assert (d.readings, causes(d)) == ([], ["sensor_flag"])
    else:
        assert (by_vital(d), d.rejections) == ({"hr": hr}, [])
