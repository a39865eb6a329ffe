"""decode() (msgspec and a fast path for the common shapes) against decode_stdlib() (the
stdlib ``json`` path vitalmon always had, kept as the reference): the same readings,
statuses and rejections, cause and detail, for every payload, well-formed or hostile.

Where the two JSON parsers differ (NaN/Infinity, numbers beyond a double, lone surrogates,
invalid UTF-8, a BOM, deep nesting), decode() hands the payload to the reference path:
the worked examples below pin each difference, and that the common payloads never take it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.config import DEFAULT_ALIASES
from monitor.model import DEVICE_FLAGS, VITALS, Reading
from monitor.sources import codecs
from monitor.sources.codecs import Decoded, Limits, Origin, decode, decode_stdlib

NOW = 1764324000.0  # 2025-11-28T10:00:00Z
ORIGIN = Origin("vitals/icu/7/mon1", "icu", "7", "mon1")
LIMITS = Limits(aliases=DEFAULT_ALIASES)
#: No example database (as conftest's profile): a run never depends on an earlier one.
PROPS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def outcome(d: Decoded) -> tuple[list[Any], list[Any], list[Any]]:
    """Everything decode() returns, floats by repr and type (so -0.0 != 0.0, 1 != 1.0)."""
    readings = [
        (
            repr(r.ts),
            type(r.ts),
            r.ward,
            r.bed,
            r.device,
            r.vital,
            repr(r.value),
            type(r.value),
            r.patient,
            r.mode,
            r.flag,
        )
        for r in d.readings
    ]
    rejections = [(x.cause, x.detail, x.topic, x.payload) for x in d.rejections]
    statuses = [(repr(s.ts), s.ward, s.bed, s.device, s.flags, s.patient) for s in d.statuses]
    return readings, rejections, statuses


def same(payload: bytes, now: float = NOW, limits: Limits = LIMITS) -> Decoded:
    """decode(payload) after checking that it gives exactly what the reference gives."""
    new = decode(payload, ORIGIN, now, limits)
    ref = decode_stdlib(payload, ORIGIN, now, limits)
    assert outcome(new) == outcome(ref)
    assert new.readings == ref.readings  # and the dataclasses compare equal
    return new


def causes(d: Decoded) -> list[str]:
    return [r.cause for r in d.rejections]


@pytest.fixture
def fallbacks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The payloads decode() hands to the reference path while the test runs."""
    seen: list[bytes] = []
    fast_doc = codecs._fast_doc

    def spy(payload: bytes) -> Any:
        doc = fast_doc(payload)
        if doc is codecs._REFERENCE:
            seen.append(payload)
        return doc

    monkeypatch.setattr(codecs, "_fast_doc", spy)
    return seen


# ------------------------------------------------------------ the common case is fast


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


#: What devices and simulators send (benchmarks/common.py bed_messages, simulators/).
COMMON: dict[str, bytes] = {
    "single": _dumps({"ts": NOW - 10, "hr": 78}),
    "single, int ts": _dumps({"ts": int(NOW) - 10, "spo2": 97}),
    "single, no ts": _dumps({"hr": 78}),
    "single, ISO ts": _dumps({"ts": "2025-11-28T09:59:50Z", "hr": 78}),
    "object": _dumps(
        {"ts": NOW - 1, "hr": 78, "spo2": 97, "rr": 16, "sbp": 122, "dbp": 76, "map": 91}
    ),
    "object, pretty": json.dumps({"ts": NOW - 1, "hr": 78, "temp": 36.9}, indent=2).encode(),
    "object with patient, device, mode": _dumps(
        {"ts": NOW, "hr": 70, "patient": "MRN-1", "device": "cuff", "mode": "intermittent"}
    ),
    "numeric patient": _dumps({"ts": NOW, "hr": 70, "patient": 12345}),
    "NEWS2 inputs": _dumps({"ts": NOW, "rr": 18, "o2": True, "avpu": "A", "temp": 37.1}),
    "status ok": _dumps({"ts": NOW, "status": "ok", "spo2": 97}),
    "status flags": _dumps({"ts": NOW, "status": ["sensor_off", "motion"], "spo2": 0}),
    "batch of 100": _dumps([{"ts": NOW - 100 + i, "hr": 60 + i % 30} for i in range(100)]),
    "batch of 10 objects": _dumps(
        [{"ts": NOW - 10 + i, "hr": 70, "spo2": 97, "rr": 14} for i in range(10)]
    ),
    "batch of 600": _dumps([{"ts": NOW - 600 + i, "hr": 70} for i in range(600)]),
    "SenML": _dumps(
        [
            {"bn": "urn:dev:mac:0024befffe804ff1:", "bt": NOW - 10, "n": "SpO2", "u": "%", "v": 97},
            {"n": "HR", "u": "beat/min", "v": 72, "t": 1},
            {"n": "resp", "u": "1/min", "v": 14, "t": 3.5},
        ]
    ),
    # refused, but ordinary: these too stay on the fast path
    "implausible": _dumps({"ts": NOW, "hr": 400, "spo2": 101.5}),
    "wrong type": _dumps({"ts": NOW, "hr": "72", "spo2": None, "rr": [14]}),
    "unknown field": _dumps({"ts": NOW, "pulse": 72}),
    "future ts": _dumps({"ts": NOW + 3600, "hr": 72}),
    "milliseconds": _dumps({"ts": int(NOW * 1000), "hr": 72}),
    "bad status": _dumps({"ts": NOW, "status": "lead_off", "hr": 72}),
    "empty": b"{}",
    "top-level number": b"42",
    "mixed array": b'[{"hr": 70}, 5, "x", [1]]',
}


@pytest.mark.parametrize("payload", COMMON.values(), ids=COMMON.keys())
def test_common_payloads_never_take_the_reference_path(payload: bytes, fallbacks: list[bytes]):
    same(payload)
    assert fallbacks == []


def test_common_payloads_decode_as_expected():
    """A few of them in full, so that 'the same as the reference' is not 'the same bug'."""
    d = same(COMMON["object"])
    assert [(r.vital, r.value) for r in d.readings] == [
        ("hr", 78.0),
        ("spo2", 97.0),
        ("rr", 16.0),
        ("sbp", 122.0),
        ("dbp", 76.0),
        ("map", 91.0),
    ]
    assert all(type(r.value) is float and r.ts == NOW - 1 for r in d.readings)
    d = same(COMMON["batch of 100"])
    assert [(r.ts, r.value) for r in d.readings] == [
        (NOW - 100 + i, float(60 + i % 30)) for i in range(100)
    ]
    d = same(COMMON["object with patient, device, mode"])
    (r,) = d.readings
    assert (r.device, r.patient, r.mode, r.flag) == ("cuff", "MRN-1", "intermittent", None)
    assert same(COMMON["numeric patient"]).readings[0].patient == "12345"


# ------------------------------------------------- where the two parsers differ


def _loads_fails(payload: bytes) -> bool:
    try:
        msgspec.json.decode(payload)
    except codecs._LOADS_ERRORS:
        return True
    return False


@pytest.mark.parametrize(
    ("payload", "cause"),
    [
        # json reads these as floats, refused per field; msgspec refuses the document
        (b'{"hr": 72, "spo2": NaN}', "not_finite"),
        (b'{"hr": 72, "spo2": Infinity}', "not_finite"),
        (b'{"hr": 72, "spo2": -Infinity}', "not_finite"),
        (b'{"hr": 72, "spo2": 1e400}', "not_finite"),
        (b'{"hr": 72, "spo2": -1.8e308}', "not_finite"),
        (b'[{"n": "hr", "v": 72}, {"n": "spo2", "v": NaN}]', "not_finite"),
        (b'{"ts": Infinity, "hr": 72}', "bad_ts"),
        # json keeps a lone surrogate in the string: the detail shows it
        (b'{"hr": 72, "\\ud800": 1}', "unknown_vital"),
        (b'{"hr": 72, "avpu": "\\udc00"}', "wrong_type"),
        (b'{"hr": 72, "status": "\\ud83d"}', "bad_status"),
        # the document refused by both: json's cause and message
        (b'\xef\xbb\xbf{"hr": 72}', "malformed_json"),  # UTF-8 BOM
        (b'{"hr": 72,}', "malformed_json"),
        (b'{"hr": 1' + b"0" * 4300 + b"}", "malformed_json"),  # over int_max_str_digits
        (b'{"hr": 72, "x": "\xff"}', "not_utf8"),
        (b'{"hr": 72, "x": "\xed\xa0\x80"}', "not_utf8"),  # a surrogate, UTF-8 encoded
        (b'{"hr": 72, "x": "\xc0\xae"}', "not_utf8"),  # overlong
        (b'{"hr": 72, "x": "\xf4\x90\x80\x80"}', "not_utf8"),  # beyond U+10FFFF
        (b"\xff{", "not_utf8"),  # not UTF-8 and not JSON: not_utf8 first, as always
        (b"[" * 60_000, "malformed_json"),
        (b"[" * 2000 + b"]" * 2000, "malformed_json"),  # deeper than json goes
    ],
)
def test_payloads_msgspec_refuses_take_the_reference_path(
    payload: bytes, cause: str, fallbacks: list[bytes]
):
    assert _loads_fails(payload)
    d = same(payload)
    assert cause in causes(d)
    assert fallbacks == [payload]


def test_json_messages_are_the_details():
    (rej,) = same(b'\xef\xbb\xbf{"hr": 72}').rejections
    assert rej.detail.startswith("Unexpected UTF-8 BOM")
    (rej,) = same(b'{"hr": 72, "x": "\xff"}').rejections
    assert rej.detail.startswith("'utf-8' codec can't decode byte 0xff")
    d = same(b'{"hr": 72, "spo2": NaN}')
    assert [(r.cause, r.detail) for r in d.rejections] == [("not_finite", "spo2=nan")]
    d = same(b'{"hr": 72, "\\ud800": 1}')
    assert [(r.cause, r.detail) for r in d.rejections] == [("unknown_vital", "field '\\ud800'")]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # both parsers keep integers of any size (orjson would make floats of these)
        (b'{"hr": 72, "patient": 18446744073709551616}', ("18446744073709551616", [])),
        (b'{"hr": 72, "patient": -9223372036854775809}', ("-9223372036854775809", [])),
        (b'{"hr": 72, "patient": ' + b"9" * 40 + b"}", ("9" * 40, [])),
    ],
)
def test_big_integers_stay_integers(payload: bytes, expected: tuple[str, list[str]]):
    d = same(payload)
    assert (d.readings[0].patient, causes(d)) == expected


def test_big_integers_as_values_and_times():
    d = same(b'{"hr": 72, "spo2": 18446744073709551616}')
    assert [(r.cause, r.detail) for r in d.rejections] == [
        ("implausible", "spo2=1.84467e+19 outside [0, 100]")
    ]
    d = same(b'{"hr": 72, "spo2": 1' + b"0" * 400 + b"}")  # beyond a double: +inf
    assert [(r.cause, r.detail) for r in d.rejections] == [("not_finite", "spo2=inf")]
    d = same(b'{"ts": 18446744073709551616, "hr": 72}')
    assert d.rejections[0].detail == "ts 18446744073709551616 out of range (epoch seconds expected)"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # json and msgspec: the last value, at the place of the first key
        (b'{"hr": 70, "spo2": 97, "hr": 72}', [("hr", 72.0), ("spo2", 97.0)]),
        (b'{"hr": 70, "hr": "x", "rr": 12}', [("rr", 12.0)]),
        (b'{"ts": 1, "hr": 70, "ts": 1764324000}', [("hr", 70.0)]),
        (b'{"\\u0068r": 70}', [("hr", 70.0)]),  # an escaped key is the same key
    ],
)
def test_duplicate_keys(payload: bytes, expected: list[tuple[str, float]]):
    d = same(payload)
    assert [(r.vital, r.value) for r in d.readings] == expected


def test_duplicate_status_keys_and_the_refused_value():
    d = same(b'{"hr": 70, "hr": true}')
    assert causes(d) == ["wrong_type"]
    d = same(b'{"status": "sensor_off", "hr": 70, "status": "ok"}')
    assert [r.vital for r in d.readings] == ["hr"]


@pytest.mark.parametrize(
    "depth", [1, 3, 64, 255, 256, 257, 300, 900, *range(985, 1001), 1024, 1025, 5000]
)
@pytest.mark.parametrize("shape", ["array", "object", "in a field", "in a batch", "in SenML"])
def test_nesting(depth: int, shape: str):
    """Up to _MAX_FAST_DEPTH the fast path (both parsers read the same document); deeper,
    the reference path, which json refuses at its recursion limit (about 1000 levels,
    less the stack below the call)."""
    inner = "[" * depth + "]" * depth
    text = {
        "array": inner,
        "object": '{"a":' * depth + "1" + "}" * depth,
        "in a field": '{"hr": 72, "spo2": ' + inner + "}",
        "in a batch": '[{"hr": 72}, ' + inner + "]",
        "in SenML": '[{"n": "hr", "v": 72}, {"n": ' + inner + ', "v": 1}]',
    }[shape]
    same(text.encode())


def test_deep_documents_take_the_reference_path(fallbacks: list[bytes]):
    limit = codecs._MAX_FAST_DEPTH
    shallow = ('{"hr": 72, "spo2": ' + "[" * (limit - 1) + "]" * (limit - 1) + "}").encode()
    deep = ('{"hr": 72, "spo2": ' + "[" * limit + "]" * limit + "}").encode()
    decode(shallow, ORIGIN, NOW, LIMITS)
    assert fallbacks == []
    decode(deep, ORIGIN, NOW, LIMITS)
    assert fallbacks == [deep]


def test_deeper_than():
    assert not codecs._deeper_than("[[[", 1)
    assert not codecs._deeper_than([], 1)
    assert codecs._deeper_than([[]], 1)
    assert not codecs._deeper_than([{"a": [1, 2]}, {"b": {}}], 3)
    assert codecs._deeper_than([{"a": [1, [2]]}], 3)
    nested: Any = 1
    for _ in range(100_000):  # no recursion: no RecursionError
        nested = [nested]
    assert codecs._deeper_than(nested, 99_999)
    assert not codecs._deeper_than(nested, 100_000)


# ------------------------------------------------------------- the fast Reading


def test_fast_reading_builder_is_a_reading():
    # if this fails, Reading's fields changed: decode() then builds readings with
    # Reading(...), correct but slower; update _BUILT / _reading_builder in codecs.py
    assert codecs._new_reading is not Reading
    args = (NOW, "icu", "7", "mon1", "hr", 72.0, "p", "continuous")
    fast, slow = codecs._new_reading(*args), Reading(*args)
    assert type(fast) is Reading
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    assert dataclasses.astuple(fast) == dataclasses.astuple(slow)
    assert fast.flag is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.value = 1.0  # type: ignore[misc]
    assert dataclasses.replace(fast, value=73.0) == Reading(*args[:5], 73.0, *args[6:])


# --------------------------------------------------------------- differential


@pytest.mark.parametrize("vital", sorted(VITALS))
def test_every_edge_of_every_range(vital: str):
    """The fast path's inlined checks, at each edge of each vital's range and of ts."""
    for text in EDGES[vital]:
        for ts in TS_EDGES:
            same(f'{{"ts": {ts}, "{vital}": {text}, "hr": 70}}'.encode())
        same(f'[{{"{vital}": {text}}}, {{"status": "motion", "{vital}": {text}}}]'.encode())
        same(f'{{"status": ["searching"], "{vital}": {text}}}'.encode())
        same(f'[{{"n": "{vital}", "v": {text}}}]'.encode())
    for ts in TS_EDGES:
        same(f'{{"ts": {ts}, "{vital}": 1}}'.encode(), limits=Limits(max_future_s=None))
        same(f'{{"ts": {ts}, "{vital}": 1}}'.encode(), limits=Limits(max_future_s=0))


#: JSON whitespace, and none.
ws = st.sampled_from(["", "", "", " ", "\n", "\t", "\r\n", "  "])

#: Number tokens, as written on the wire: ordinary, at the edges, and hostile.
numbers = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.integers(-(10**40), 10**40).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(min_value=-5, max_value=400, allow_nan=False).map(repr),
    st.floats(min_value=NOW - 1e6, max_value=NOW + 100).map(repr),
    st.integers(int(NOW) - 10**6, int(NOW) + 100).map(str),
    st.tuples(st.integers(0, 10**20), st.integers(0, 10**20), st.integers(-400, 400)).map(
        lambda t: f"{t[0]}.{t[1]}e{t[2]}"
    ),
    st.sampled_from(
        [
            "NaN",
            "Infinity",
            "-Infinity",
            "nan",
            "inf",
            "1e400",
            "-1e400",
            "1e-400",
            "1.8e308",
            "1.7976931348623157e308",
            "5e-324",
            "-0",
            "-0.0",
            "0e5",
            "1E2",
            "1.5E-3",
            "0.1e1",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "1" + "0" * 30,
            "1" + "0" * 4299,
            "1" + "0" * 4300,
            "1764324000250",
            "946684799",
        ]
    ),
)


def _edges(lo: float, hi: float) -> list[str]:
    """Numbers at and around the edges of a plausible range, as written on the wire."""
    out = set()
    for x in (lo, hi):
        out |= {repr(x), str(int(x)), str(int(x) + 1), str(int(x) - 1), repr(x + 0.01)}
        out |= {repr(x - 0.01), repr(math.nextafter(x, math.inf))}
        out.add(repr(math.nextafter(x, -math.inf)))
    return sorted(out)


#: Per vital: values at the edges of its range, and the other JSON types (o2, avpu).
EDGES: dict[str, list[str]] = {
    vital: [*_edges(lo, hi), "-0.0", "true", "false", "null", '"A"', '" u "', '"x"', "[1]"]
    for vital, (_unit, lo, hi) in VITALS.items()
}
edges = {vital: st.sampled_from(texts) for vital, texts in EDGES.items()}
TS_EDGES = [
    "946684800",
    "946684799",
    "946684800.0",
    repr(math.nextafter(946_684_800.0, 0)),
    "4102444800",
    "4102444799.999",
    repr(NOW + 30),
    repr(math.nextafter(NOW + 30, math.inf)),
    str(int(NOW) + 30),
    str(int(NOW) + 31),
    repr(NOW),
    "null",
]
ts_edges = st.sampled_from(TS_EDGES)

#: String contents that the codec gives a meaning to.
meaningful = st.sampled_from(
    [
        *VITALS,
        "ts",
        "patient",
        "device",
        "status",
        "mode",
        "ok",
        "OK",
        *DEVICE_FLAGS,
        "SENSOR_OFF",
        "continuous",
        "intermittent",
        "A",
        " v ",
        "X",
        "2025-11-28T10:00:00Z",
        "2025-11-28T09:59:59.5+00:00",
        "2025-11-28T10:00:00",
        "urn:dev:mac:00aa:",
        "SpO2",
        "HR",
        "pulse",
        "Temperature",
        "%",
        "Cel",
        "degF",
        "K",
        "mmHg",
        "kPa",
        "beat/min",
        "",
    ]
)


def _string(s: str, ascii_only: bool) -> str:
    return json.dumps(s, ensure_ascii=ascii_only)


strings = st.one_of(
    st.builds(_string, meaningful, st.booleans()),
    st.builds(_string, st.text(max_size=12), st.booleans()),
    st.sampled_from(
        [
            '"\\ud800"',  # lone high surrogate
            '"\\udc00x"',  # lone low surrogate
            '"\\ud83d\\ude00"',  # a pair: one emoji
            '"\\ud800\\u0041"',
            '"\\u0000"',
            '"\\u0068r"',  # "hr"
            '"\\/"',
            '"\\x"',  # invalid escape
            '"a\nb"',  # a raw control character
            '"a\x7fb"',
            '"unterminated',
        ]
    ),
)

keys = st.one_of(
    meaningful.map(json.dumps),
    st.sampled_from(["bn", "bt", "bu", "bv", "n", "t", "u", "v", "vs", "vb", "s"]).map(json.dumps),
    strings,
)

scalars = st.one_of(numbers, strings, st.sampled_from(["true", "false", "null", "tru", "nul"]))


@st.composite
def json_texts(draw: st.DrawFn, max_depth: int = 3) -> str:
    """JSON text (mostly valid) built token by token, so that duplicate keys, every number
    spelling and broken tokens occur, which json.dumps never writes."""

    def value(depth: int) -> str:
        kind = draw(st.integers(0, 9)) if depth < max_depth else 0
        if kind <= 4:
            return draw(scalars)
        if kind <= 7:
            n = draw(st.integers(0, 7))
            pairs = [
                draw(ws) + draw(keys) + draw(ws) + ":" + draw(ws) + value(depth + 1) + draw(ws)
                for _ in range(n)
            ]
            return "{" + ",".join(pairs) + "}"
        n = draw(st.integers(0, 6))
        return "[" + ",".join(draw(ws) + value(depth + 1) + draw(ws) for _ in range(n)) + "]"

    return draw(ws) + value(0) + draw(ws)


@st.composite
def reading_texts(draw: st.DrawFn) -> str:
    """Mostly well-formed reading objects, batches and SenML packs, with a hostile token
    in some of them."""
    vital_value = st.one_of(
        st.integers(0, 400).map(str),
        st.floats(min_value=-1, max_value=360, allow_nan=False).map(repr),
        numbers,
        scalars,
    )

    def obj() -> str:
        fields = []
        if draw(st.booleans()):
            fields.append(
                '"ts":'
                + draw(
                    st.one_of(
                        ts_edges,
                        st.floats(min_value=NOW - 1e5, max_value=NOW + 60).map(repr),
                        st.integers(int(NOW) - 10**5, int(NOW) + 60).map(str),
                        numbers,
                        strings,
                    )
                )
            )
        for vital in draw(st.lists(st.sampled_from(sorted(VITALS)), max_size=8)):
            fields.append(json.dumps(vital) + ":" + draw(edges[vital] | vital_value))
        for meta in draw(st.lists(st.sampled_from(["patient", "device", "mode", "status"]))):
            raw = draw(
                st.one_of(
                    scalars,
                    st.lists(meaningful.map(json.dumps) | scalars, max_size=3).map(
                        lambda xs: "[" + ",".join(xs) + "]"
                    ),
                )
            )
            fields.append(json.dumps(meta) + ":" + raw)
        if draw(st.integers(0, 4)) == 0:
            fields.append(draw(keys) + ":" + draw(scalars))
        order = draw(st.permutations(fields))
        return "{" + ",".join(order) + "}"

    def senml() -> str:
        records = []
        for _ in range(draw(st.integers(1, 6))):
            rec = draw(
                st.dictionaries(
                    st.sampled_from(["bn", "bt", "bu", "bv", "n", "t", "u", "v", "vs", "s"]),
                    st.one_of(meaningful.map(json.dumps), numbers, scalars),
                    max_size=6,
                )
            )
            records.append("{" + ",".join(f'"{k}":{v}' for k, v in rec.items()) + "}")
        return "[" + ",".join(records) + "]"

    kind = draw(st.integers(0, 5))
    if kind <= 1:
        return obj()
    if kind <= 3:
        return "[" + ",".join(obj() for _ in range(draw(st.integers(1, 5)))) + "]"
    if kind == 4:
        return senml()
    return draw(json_texts())


BOM = b"\xef\xbb\xbf"
BAD_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\xc0\x80",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\x80",
]


@st.composite
def mutated(draw: st.DrawFn, texts: st.SearchStrategy[str]) -> bytes:
    """The text as UTF-8, sometimes with a BOM, invalid UTF-8, a cut or nested deep."""
    payload = draw(texts).encode("utf-8", "surrogatepass")
    how = draw(st.integers(0, 9))
    if how == 0:
        payload = BOM + payload
    elif how == 1:
        at = draw(st.integers(0, len(payload)))
        payload = payload[:at] + draw(st.sampled_from(BAD_UTF8)) + payload[at:]
    elif how == 2:
        payload = payload[: draw(st.integers(0, len(payload)))]
    elif how == 3:
        depth = draw(st.sampled_from([2, 10, 255, 256, 257, 990, 1000, 1024, 1025, 3000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"hr":', "}"), ('[{"n":', "}]")]))
        payload = opener.encode() * depth + payload + closer.encode() * depth
    return payload


@PROPS
@given(mutated(reading_texts()))
@example(b'{"hr": 72, "spo2": NaN, "hr": 1e400}')
@example(b'{"ts": 1764324000, "\\ud800": 1, "patient": 18446744073709551616, "rr": 12}')
@example(BOM + b'[{"hr": 72}]')
@example(b'[{"bn": "x:", "n": "hr", "v": Infinity}, {"n": "spo2", "v": 97}]')
@example(b'{"status": ["motion", "\\udc00"], "hr": 70}')
@example(b'[{"n":' * 497 + b"0" + b"}]" * 497)  # json's recursion limit (once failed)
def test_reading_like_payloads_decode_as_the_reference(payload: bytes):
    same(payload)


@PROPS
@given(mutated(json_texts(max_depth=4)))
def test_arbitrary_json_texts_decode_as_the_reference(payload: bytes):
    same(payload)


@PROPS
@given(st.binary(max_size=200))
def test_arbitrary_bytes_decode_as_the_reference(payload: bytes):
    same(payload)


@PROPS
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=10)
        | st.sampled_from(sorted(VITALS)),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from([*VITALS, "ts", "status", "n", "v"]) | st.text(max_size=5),
                children,
                max_size=5,
            )
        ),
        max_leaves=20,
    ),
    st.sampled_from([LIMITS, Limits(max_future_s=None), Limits(max_future_s=0)]),
)
def test_json_dumps_documents_decode_as_the_reference(doc: Any, limits: Limits):
    """What json.dumps writes (NaN and Infinity included) under different limits."""
    same(json.dumps(doc).encode(), limits=limits)


def canon(doc: Any) -> Any:
    """A document with every scalar tagged by its type (True != 1, 1 != 1.0, -0.0 != 0.0)."""
    if isinstance(doc, dict):
        return ("dict", [(k, canon(v)) for k, v in doc.items()])
    if isinstance(doc, list):
        return ("list", [canon(v) for v in doc])
    if isinstance(doc, float):
        return ("float", repr(doc))  # repr: NaN equal to itself, -0.0 unlike 0.0
    return (type(doc).__name__, doc)


@PROPS
@given(mutated(json_texts(max_depth=4)))
def test_msgspec_reads_what_json_reads(payload: bytes):
    """The premise of the fast path: whatever msgspec accepts (not too deep), json reads
    as the same document, down to each scalar's type and each key's order."""
    try:
        doc = msgspec.json.decode(payload)
    except codecs._LOADS_ERRORS:
        return  # decode() asks the reference
    if codecs._deeper_than(doc, codecs._MAX_FAST_DEPTH):
        return  # so it does here
    assert canon(json.loads(payload.decode("utf-8"))) == canon(doc)


def test_reference_is_what_decode_always_was():
    """decode_stdlib keeps the stdlib parse: NaN is a float to it, refused per field."""
    d = decode_stdlib(b'{"hr": NaN, "spo2": 97}', ORIGIN, NOW, LIMITS)
    assert causes(d) == ["not_finite"]
    assert [(r.vital, r.value) for r in d.readings] == [("spo2", 97.0)]
    assert math.isnan(json.loads("NaN"))
