"""Alert texts are true as written: values at each vital's clinical resolution, with more
decimals only where a stated comparison needs them (``Temp 38.04 °C > 38.0 °C``, never
``Temp 38 °C > 38 °C``)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import DEFAULT_THRESHOLDS, ThresholdConfig
from monitor.engine.threshold import SeriesKey, ThresholdRule
from monitor.engine.trend import BaselineRule, Measure
from monitor.model import (
    LABELS,
    RESOLUTION,
    VITALS,
    AlertEvent,
    AlertState,
    fmt_compare,
    fmt_limit,
    fmt_reading,
)

T0 = 1764324000.0
KEY = SeriesKey("icu", "7", "mon1", "temp")
OPS = {
    "<": Decimal.__lt__,
    ">": Decimal.__gt__,
    "<=": Decimal.__le__,
    ">=": Decimal.__ge__,
}


def true_as_written(value: str, op: str, limit: str) -> bool:
    return bool(OPS[op](Decimal(value), Decimal(limit)))


def drive(rule: ThresholdRule, values: Sequence[float]) -> list[AlertEvent]:
    """One reading a second through ``rule`` alone; -> its events."""
    ts = T0 + np.arange(len(values), dtype=float)
    vals = np.asarray(values, dtype=float)
    key = KEY._replace(vital=rule.vital)
    active, out = None, []
    for i in range(len(values)):
        active, ev = rule.evaluate(key, ts[: i + 1], vals[: i + 1], active, None)
        if ev is not None:
            out.append(ev)
    return out


# ------------------------------------------------------------------ worked cases


def test_temp_just_above_the_limit_says_so() -> None:
    # temp.high warn 38.0 crit 39.5, delay 0, clear band 0.2, one reading
    rule = ThresholdRule("temp", "high", 38.0, 39.5, 0, 0.2, 60)
    raised, resolved = drive(rule, [37.0, 38.04, 37.8])
    assert raised.state == AlertState.ACTIVE
    assert raised.message == "Temp 38.04 °C > 38.0 °C"
    assert (raised.value, raised.limit) == (38.04, 38.0)
    assert resolved.message == "Temp 37.8 °C back below 38.0 °C; alarm lasted 1 s"


def test_whole_number_texts_do_not_change() -> None:
    rule = ThresholdRule("spo2", "low", 90, 85, 0, 2, 60)
    raised, resolved = drive(rule, [97, 82, 97])
    assert raised.message == "SpO2 82 % < 85 %"
    assert resolved.message == "SpO2 97 % back above 90 %; alarm lasted 1 s"
    temp = ThresholdRule("temp", "high", 38.0, 39.5, 0, 0.2, 60)
    assert drive(temp, [37.0, 39.6])[0].message == "Temp 39.6 °C > 39.5 °C"


def test_just_below_a_whole_number_limit() -> None:
    rule = ThresholdRule("spo2", "low", 90, 85, 0, 2, 60)
    assert drive(rule, [97, 89.6])[0].message == "SpO2 89.6 % < 90 %"
    assert drive(rule, [97, 84.99])[0].message == "SpO2 84.99 % < 85 %"
    assert drive(rule, [97, 89.4])[0].message == "SpO2 89 % < 90 %"  # true as it is


def test_hysteresis_text_is_true() -> None:
    # crit 85 -> warn at 91.7: not below 90, but within its clear band (< 92)
    rule = ThresholdRule("spo2", "low", 90, 85, 0, 2, 60)
    events = drive(rule, [97, 82, 91.7, 92])
    assert [e.message for e in events] == [
        "SpO2 82 % < 85 %",
        "SpO2 91.7 %, near the 90 % limit (clears at 92 % or above)",
        "SpO2 92 % back above 90 %; alarm lasted 2 s",
    ]


def test_resolved_exactly_at_the_limit_is_not_called_above_it() -> None:
    rule = ThresholdRule("spo2", "low", 90, 85, 0, 0, 60)  # no clear band
    events = drive(rule, [97, 82, 90])
    assert events[-1].message == "SpO2 90 % back within the 90 % limit; alarm lasted 1 s"
    high = ThresholdRule("temp", "high", 38.0, None, 0, 0, 60)
    events = drive(high, [37.0, 38.3, 38.0])
    assert events[-1].message == "Temp 38.0 °C back within the 38.0 °C limit; alarm lasted 1 s"


def test_baseline_texts_add_up() -> None:
    rule = BaselineRule("hr", "up", 30)
    # 113.4 - 78.6 = 34.8: written 113 - 79 = 34, which adds up and is >= 30
    assert rule._raised(Measure(34.8, 113.4, 108.6, 78.6)) == (
        "HR 113 /min: 34 /min above baseline 79 /min"
    )
    # 108.6 - 78.6 = 30.0 exactly: 109 - 79 = 30 as written
    assert rule._raised(Measure(30.0, 108.6, 108.6, 78.6)).startswith("HR 109 /min: 30 /min")
    # 108.4 - 78.4 = 30.0: 108 - 78 = 30
    assert rule._raised(Measure(30.0, 108.4, 108.4, 78.4)).startswith("HR 108 /min: 30 /min")
    assert rule._resolved(Measure(0, 80.0, 108.0, 78.0), 60) == (
        "HR 80 /min back within 15 /min of baseline 78 /min; alarm lasted 60 s"
    )
    # fallen past the baseline: "back within 15" would be false
    assert rule._resolved(Measure(-40, 38.0, 108.0, 78.0), 60) == (
        "HR 38 /min: 40 /min below baseline 78 /min; alarm lasted 60 s"
    )


# ------------------------------------------------------------------ unit cases


@pytest.mark.parametrize(
    ("vital", "value", "text"),
    [
        ("temp", 38.0, "38.0"),
        ("temp", 38.04, "38.0"),
        ("temp", 36.96, "37.0"),
        ("hr", 72, "72"),
        ("hr", 72.4, "72"),
        ("hr", 72.6, "73"),
        ("spo2", 97.0, "97"),
        ("rr", -0.2, "0"),  # never "-0"
        ("news2", 7, "7"),
    ],
)
def test_fmt_reading(vital: str, value: float, text: str) -> None:
    assert fmt_reading(vital, value) == text


@pytest.mark.parametrize(
    ("vital", "value", "op", "limit", "texts"),
    [
        ("temp", 38.04, ">", 38.0, ("38.04", "38.0")),
        ("temp", 38.1, ">", 38.0, ("38.1", "38.0")),
        ("temp", 38.0, ">=", 38.0, ("38.0", "38.0")),
        ("temp", 35.46, "<", 35.5, ("35.46", "35.5")),
        ("spo2", 89.6, "<", 90, ("89.6", "90")),
        ("spo2", 84.99, "<", 85, ("84.99", "85")),
        ("spo2", 84.9996, "<", 85, ("84.9996", "85")),  # past 3 more decimals: repr
        ("spo2", 82, "<", 85, ("82", "85")),
        ("hr", 140.2, ">", 140, ("140.2", "140")),
        ("hr", 145.7, ">", 140, ("146", "140")),
        ("spo2", 92.3, "<", 92.5, ("92", "92.5")),  # a limit finer than the vital's: kept
        ("temp", 37.0, ">", 38.0, ("37.0", "38.0")),  # not beyond: the plain texts
        ("spo2", 90, "<", 90, ("90", "90")),
    ],
)
def test_fmt_compare(
    vital: str, value: float, op: str, limit: float, texts: tuple[str, str]
) -> None:
    assert fmt_compare(vital, value, op, limit) == texts


def test_fmt_limit_hides_float_noise() -> None:
    assert fmt_limit("temp", 38.0 - 0.2) == "37.8"
    assert fmt_limit("temp", 37.800000000000004) == "37.8"
    assert fmt_limit("spo2", 92.5) == "92.5"
    assert fmt_limit("hr", 120) == "120"


def test_every_vital_has_a_resolution() -> None:
    assert set(VITALS) | {"news2"} <= set(RESOLUTION)
    assert RESOLUTION["temp"] == 1
    assert {v for v, d in RESOLUTION.items() if d != 0} == {"temp"}


# ------------------------------------------------------------------ properties

NUM = r"(-?[0-9][0-9.e+-]*)"
UNIT = r"(\S*)"
ACTIVE_RE = re.compile(rf"^(\S+) {NUM} {UNIT} ([<>]=?) {NUM} \3( for \d+ s)?$")
NEAR_RE = re.compile(
    rf"^(\S+) {NUM} {UNIT}, near the {NUM} \3 limit \(clears at {NUM} \3 or (above|below)\)$"
)
BACK_RE = re.compile(rf"^(\S+) {NUM} {UNIT} back (above|below) {NUM} \3; alarm lasted \d+ s$")
WITHIN_RE = re.compile(rf"^(\S+) {NUM} {UNIT} back within the {NUM} \3 limit; alarm lasted \d+ s$")

RULES = [
    rule
    for vital, cfg in DEFAULT_THRESHOLDS.items()
    for rule in ThresholdRule.from_config(vital, ThresholdConfig.model_validate(cfg), 60.0)
]


def close_to(text: str, value: float, vital: str) -> bool:
    """The written value is the true one at (at least) the vital's resolution."""
    half = Decimal(5) / 10 ** (RESOLUTION[vital] + 1)
    return bool(abs(Decimal(text) - Decimal(value)) <= half)


def check_message(rule: ThresholdRule, e: AlertEvent) -> None:
    unit, low = VITALS[rule.vital][0], rule.side == "low"
    msg = e.message
    if e.state == AlertState.ACTIVE and (m := ACTIVE_RE.match(msg)):
        label, value, u, op, limit = m.group(1, 2, 3, 4, 5)
        assert op == ("<" if low else ">"), msg
        assert true_as_written(value, op, limit), msg
        assert Decimal(limit) == Decimal(fmt_limit(rule.vital, e.limit)), msg
    elif e.state == AlertState.ACTIVE and (m := NEAR_RE.match(msg)):
        label, value, u, limit, clear, word = m.group(1, 2, 3, 4, 5, 6)
        assert word == ("above" if low else "below"), msg
        assert true_as_written(value, "<" if low else ">", clear), msg  # not cleared yet
        assert true_as_written(value, ">=" if low else "<=", limit), msg  # not beyond
    elif e.state == AlertState.RESOLVED and (m := BACK_RE.match(msg)):
        label, value, u, word, limit = m.group(1, 2, 3, 4, 5)
        assert word == ("above" if low else "below"), msg
        assert true_as_written(value, ">" if low else "<", limit), msg
    elif e.state == AlertState.RESOLVED and (m := WITHIN_RE.match(msg)):
        label, value, u, limit = m.group(1, 2, 3, 4)
        assert true_as_written(value, ">=" if low else "<=", limit), msg
    else:
        raise AssertionError(f"unexpected message {msg!r} ({e.state})")
    assert (label, u) == (LABELS[rule.vital], unit), msg
    assert close_to(value, e.value, rule.vital), msg


@st.composite
def readings(draw: st.DrawFn, rule: ThresholdRule) -> list[float]:
    """Runs of values in the vital's range, many of them within a band of a limit."""
    _, lo, hi = VITALS[rule.vital]
    edges = [x for lim in rule.limits.values() for x in (lim, lim + rule.band, lim - rule.band)]
    near = st.sampled_from(edges).flatmap(
        lambda x: st.floats(max(lo, x - 1.0), min(hi, x + 1.0), allow_nan=False)
    )
    exact = st.sampled_from(edges).filter(lambda x: lo <= x <= hi)
    value = st.one_of(st.floats(lo, hi, allow_nan=False), near, exact)
    runs = draw(st.lists(st.tuples(value, st.integers(1, 20)), min_size=1, max_size=8))
    out = [v for v, n in runs for _ in range(n)]
    entry = rule.limits[min(rule.limits)]
    out.append(entry + rule.band + 1 if rule.side == "low" else entry - rule.band - 1)
    return out


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(RULES).flatmap(lambda r: st.tuples(st.just(r), readings(r))))
def test_every_threshold_message_is_true_as_written(
    case: tuple[ThresholdRule, list[float]],
) -> None:
    rule, values = case
    events = drive(rule, values)
    for e in events:
        check_message(rule, e)
    if events:
        assert events[-1].state == AlertState.RESOLVED


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(RESOLUTION)),
    st.sampled_from(sorted(OPS)),
    st.floats(0, 400, allow_nan=False),
    st.floats(0, 400, allow_nan=False).map(lambda x: round(x, 1)),
)
def test_fmt_compare_is_true_when_the_comparison_is(
    vital: str, op: str, value: float, limit: float
) -> None:
    vt, lt = fmt_compare(vital, value, op, limit)
    assert Decimal(lt) == Decimal(fmt_limit(vital, limit))
    if OPS[op](Decimal(value), Decimal(limit)):
        assert true_as_written(vt, op, lt), (vt, op, lt)
    if math.isfinite(value):
        assert close_to(vt, value, vital)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["up", "down"]),
    st.integers(1, 400).map(lambda x: x / 10),  # a configured delta: 0.1 to 40
    st.floats(20, 200),
    st.floats(-60, 60),
)
def test_baseline_texts_are_true_as_written(
    direction: str, delta: float, base: float, move: float
) -> None:
    rule = BaselineRule("hr", direction, delta)  # type: ignore[arg-type]
    sign = 1 if direction == "up" else -1
    value = base + move
    m = Measure(sign * (value - base), value, base + sign * delta, base)
    texts = []
    if m.score >= delta:
        texts.append((delta, rule._raised(m)))
    if m.score < rule.clear_at:
        texts.append((0.0, rule._resolved(m, 10)))
    for least, text in texts:
        if mt := re.match(rf"^HR {NUM} /min: {NUM} /min (above|below) baseline {NUM} /min", text):
            v, d, where, b = mt.group(1, 2, 3, 4)
            step = Decimal(d) if where == "above" else -Decimal(d)
            assert Decimal(v) - Decimal(b) == step, text  # adds up as written
            assert (where == "above") == (value > base), text
            assert Decimal(d) > 0 and Decimal(d) >= Decimal(fmt_limit("hr", least)), text
        else:
            mt = re.match(rf"^HR {NUM} /min back within {NUM} /min of baseline {NUM} /min", text)
            assert mt, text
            v, c, b = mt.group(1, 2, 3)
            assert abs(Decimal(v) - Decimal(b)) <= Decimal(c), text
        assert close_to(v, value, "hr") and close_to(b, base, "hr"), text
