"""NEWS2 (RCP 2017): every chart boundary, the rounding convention, worked examples,
the per-bed tracker on event time, and properties of the score.

Pure: nothing here waits or does I/O.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.engine.news2 import (
    PARAMETERS,
    Inputs,
    Score,
    score,
    score_avpu,
    score_hr,
    score_o2,
    score_rr,
    score_sbp,
    score_spo2,
    score_temp,
)
from monitor.engine.news2_tracker import News2Tracker
from monitor.model import Priority, Reading

LOW, MEDIUM, HIGH = Priority.LOW, Priority.MEDIUM, Priority.HIGH
NORMAL = Inputs(rr=16, spo2=97, o2=False, sbp=120, hr=72, avpu="A", temp=37.0)
RANK: dict[Priority | None, int] = {None: 0, LOW: 1, MEDIUM: 2, HIGH: 3}


def cases(table: Sequence[tuple[float, int]]) -> list[object]:
    return [pytest.param(v, s, id=f"{v}->{s}") for v, s in table]


# ---------------------------------------------------------- chart boundaries

RR = [(0, 3), (8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (60, 3)]
SPO2_1 = [(50, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)]
# scale 2: the same up to 92 on air and on oxygen
SPO2_2_LOW = [(50, 3), (83, 3), (84, 2), (85, 2), (86, 1), (87, 1), (88, 0), (92, 0)]
SPO2_2_AIR = [(93, 0), (94, 0), (95, 0), (96, 0), (97, 0), (100, 0)]
SPO2_2_O2 = [(93, 1), (94, 1), (95, 2), (96, 2), (97, 3), (100, 3)]
SBP = [(50, 3), (90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3)]
HR = [(20, 3), (40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1), (111, 2)]
HR += [(130, 2), (131, 3), (200, 3)]
TEMP = [(30.0, 3), (34.9, 3), (35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0), (38.1, 1)]
TEMP += [(39.0, 1), (39.1, 2), (42.0, 2)]


@pytest.mark.parametrize(("value", "expected"), cases(RR))
def test_rr(value: float, expected: int) -> None:
    assert score_rr(value) == expected


@pytest.mark.parametrize(("value", "expected"), cases(SPO2_1))
@pytest.mark.parametrize("o2", [False, True])
def test_spo2_scale1_ignores_oxygen(value: float, expected: int, o2: bool) -> None:
    assert score_spo2(value) == expected
    assert score_spo2(value, 1, o2) == expected


@pytest.mark.parametrize(("value", "expected"), cases(SPO2_2_LOW))
@pytest.mark.parametrize("o2", [False, True])
def test_spo2_scale2_up_to_92(value: float, expected: int, o2: bool) -> None:
    assert score_spo2(value, 2, o2) == expected


@pytest.mark.parametrize(("value", "expected"), cases(SPO2_2_AIR))
def test_spo2_scale2_on_air(value: float, expected: int) -> None:
    assert score_spo2(value, 2, o2=False) == expected


@pytest.mark.parametrize(("value", "expected"), cases(SPO2_2_O2))
def test_spo2_scale2_on_oxygen(value: float, expected: int) -> None:
    assert score_spo2(value, 2, o2=True) == expected


def test_spo2_bad_scale() -> None:
    with pytest.raises(ValueError, match="scale"):
        score_spo2(90, 3)  # type: ignore[arg-type]


def test_air_or_oxygen() -> None:
    assert score_o2(True) == 2
    assert score_o2(False) == 0


@pytest.mark.parametrize(("value", "expected"), cases(SBP))
def test_sbp(value: float, expected: int) -> None:
    assert score_sbp(value) == expected


@pytest.mark.parametrize(("value", "expected"), cases(HR))
def test_hr(value: float, expected: int) -> None:
    assert score_hr(value) == expected


@pytest.mark.parametrize(("letter", "expected"), [("A", 0), ("C", 3), ("V", 3), ("P", 3), ("U", 3)])
def test_acvpu(letter: str, expected: int) -> None:
    assert score_avpu(letter) == expected


@pytest.mark.parametrize("letter", ["a", "N", "", "AV", "alert"])
def test_acvpu_refuses_other_letters(letter: str) -> None:
    with pytest.raises(ValueError, match="ACVPU"):
        score_avpu(letter)


@pytest.mark.parametrize(("value", "expected"), cases(TEMP))
def test_temp(value: float, expected: int) -> None:
    assert score_temp(value) == expected


# ------------------------------------------------- values between chart rows


@pytest.mark.parametrize(
    ("fn", "value", "expected"),
    [
        (score_rr, 8.49, 3),
        (score_rr, 8.5, 1),
        (score_rr, 11.49, 1),
        (score_rr, 11.5, 0),
        (score_rr, 20.5, 2),
        (score_rr, 24.4999, 2),
        (score_rr, 24.5, 3),
        (score_spo2, 91.49, 3),
        (score_spo2, 91.5, 2),
        (score_spo2, 95.5, 0),
        (score_sbp, 90.49, 3),
        (score_sbp, 90.5, 2),
        (score_sbp, 110.5, 0),
        (score_sbp, 219.49, 0),
        (score_sbp, 219.5, 3),
        (score_hr, 40.5, 1),
        (score_hr, 50.5, 0),
        (score_hr, 90.5, 1),
        (score_hr, 130.49, 2),
        (score_hr, 130.5, 3),
        (score_temp, 35.04, 3),
        (score_temp, 35.049999, 3),
        (score_temp, 35.05, 1),
        (score_temp, 36.05, 0),
        (score_temp, 38.04, 0),
        (score_temp, 38.05, 1),
        (score_temp, 39.049, 1),
        (score_temp, 39.05, 2),
        (score_temp, 37, 0),
    ],
    ids=lambda x: getattr(x, "__name__", str(x)),
)
def test_round_half_up_to_chart_resolution(
    fn: Callable[[float], int], value: float, expected: int
) -> None:
    assert fn(value) == expected


def test_spo2_scale2_rounds_before_the_oxygen_rows() -> None:
    assert score_spo2(92.49, 2, o2=True) == 0
    assert score_spo2(92.5, 2, o2=True) == 1
    assert score_spo2(87.5, 2, o2=True) == 0
    assert score_spo2(96.5, 2, o2=True) == 3


def test_rounding_is_decimal_on_the_written_value() -> None:
    # the double nearest 35.05 is a hair below it; the value as written is what counts
    assert Decimal.from_float(35.05) < Decimal("35.05")
    assert round(35.05, 1) == 35.0  # what binary rounding would give
    assert score_temp(35.05) == 1
    assert score_temp((35.0 + 35.1) / 2) == 1  # an averaged device value


@pytest.mark.parametrize(
    "fn", [score_rr, score_spo2, score_sbp, score_hr, score_temp], ids=lambda f: f.__name__
)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_refused(fn: Callable[[float], int], bad: float) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        fn(bad)


INTEGER_SCORERS: list[Callable[[float], int]] = [
    score_rr,
    score_spo2,
    lambda v: score_spo2(v, 2, o2=True),
    lambda v: score_spo2(v, 2, o2=False),
    score_sbp,
    score_hr,
]


@given(
    fn=st.sampled_from(INTEGER_SCORERS),
    n=st.integers(0, 300),
    f=st.floats(0, 0.49),
)
def test_property_integer_rows_round_half_up(fn: Callable[[float], int], n: int, f: float) -> None:
    assert fn(n + f) == fn(n)
    assert fn(n - f) == fn(n)
    assert fn(n + 0.5) == fn(n + 1)


@given(k=st.integers(200, 450), f=st.floats(0, 0.049))
def test_property_temp_rounds_half_up_to_tenths(k: int, f: float) -> None:
    assert score_temp(k / 10 + f) == score_temp(k / 10)
    assert score_temp(k / 10 - f) == score_temp(k / 10)
    half = float(f"{k // 10}.{k % 10}5")  # e.g. 35.05
    assert score_temp(half) == score_temp((k + 1) / 10)


# ----------------------------------------------------------- score, triggers


def test_all_normal_patient_scores_zero() -> None:
    s = score(NORMAL)
    assert s.total == 0
    assert s.components == dict.fromkeys(PARAMETERS, 0)
    assert s.missing == () and not s.partial and s.red == ()
    assert s.trigger() == (None, "")
    assert s.risk == "low"


def test_textbook_patient() -> None:
    # febrile, tachycardic, tachypnoeic, on air, alert
    s = score(Inputs(rr=24, spo2=95, o2=False, sbp=105, hr=115, avpu="A", temp=38.5))
    assert s.components == {
        "rr": 2,
        "spo2": 1,
        "o2": 0,
        "sbp": 1,
        "hr": 2,
        "avpu": 0,
        "temp": 1,
    }
    assert s.total == 7
    assert s.red == ()
    assert s.trigger() == (HIGH, "emergency response")
    assert s.risk == "high"


def test_module_docstring_example_scale2() -> None:
    copd = Inputs(rr=26, spo2=89, o2=True, sbp=135, hr=96, avpu="A", temp=37.2, scale=2)
    s = score(copd)
    assert s.components == {
        "rr": 3,
        "spo2": 0,
        "o2": 2,
        "sbp": 0,
        "hr": 1,
        "avpu": 0,
        "temp": 0,
    }
    assert s.total == 6
    assert s.red == ("rr",)
    assert s.trigger() == (MEDIUM, "urgent response")
    # the same patient wrongly on scale 1
    s1 = score(dataclasses.replace(copd, scale=1))
    assert (s1.components["spo2"], s1.total, s1.trigger()[0]) == (3, 9, HIGH)


def test_new_confusion_alone_is_a_red_score() -> None:
    s = score(dataclasses.replace(NORMAL, avpu="C"))
    assert (s.total, s.red, s.risk) == (3, ("avpu",), "low-medium")
    assert s.trigger() == (LOW, "urgent ward review")


@pytest.mark.parametrize(
    ("changes", "total", "priority"),
    [
        ({"sbp": 90}, 3, LOW),  # red alone
        ({"sbp": 90, "hr": 95}, 4, LOW),
        ({"sbp": 90, "hr": 115}, 5, MEDIUM),  # red and 5: medium wins
        ({"hr": 115, "rr": 22, "temp": 38.5}, 5, MEDIUM),  # no red
        ({"hr": 115, "rr": 22}, 4, None),
        ({"sbp": 90, "hr": 115, "temp": 38.5}, 6, MEDIUM),
        ({"sbp": 90, "hr": 115, "temp": 39.5}, 7, HIGH),
    ],
)
def test_trigger_highest_wins(changes: dict[str, float], total: int, priority: Priority) -> None:
    s = score(dataclasses.replace(NORMAL, **changes))  # type: ignore[arg-type]
    assert s.total == total
    got, message = s.trigger()
    assert got is priority
    expected = {
        None: "",
        LOW: "urgent ward review",
        MEDIUM: "urgent response",
        HIGH: "emergency response",
    }
    assert message == expected[priority]


def test_walk_from_zero_to_seven() -> None:
    """One parameter changes at a time; the tracker is fed on event time."""
    steps: list[tuple[str, float | str, int, Priority | None]] = [
        ("rr", 25, 3, LOW),  # red score alone: urgent ward review
        ("temp", 38.3, 4, LOW),
        ("hr", 95, 5, MEDIUM),
        ("sbp", 105, 6, MEDIUM),
        ("spo2", 95, 7, HIGH),
    ]
    tr = News2Tracker()
    for vital in PARAMETERS:
        v = getattr(NORMAL, vital)
        assert tr.update(vital, v, 0.0)
    s = tr.current(at=0.0, freshness_s=3600)
    assert (s.total, s.trigger()[0]) == (0, None)
    inputs = NORMAL
    for i, (vital, value, total, priority) in enumerate(steps, start=1):
        tr.update(vital, value, 60.0 * i)
        s = tr.current(at=60.0 * i, freshness_s=3600)
        inputs = dataclasses.replace(inputs, **{vital: value})  # type: ignore[arg-type]
        assert s == score(inputs)
        assert (s.total, s.trigger()[0]) == (total, priority), vital
        assert not s.partial


# --------------------------------------------------------- partial / missing


def test_nothing_known() -> None:
    s = score(Inputs())
    assert (s.total, s.components, s.missing) == (0, {}, PARAMETERS)
    assert s.partial
    assert s.trigger() == (None, "")


def test_partial_score_triggers_on_what_it_has() -> None:
    s = score(Inputs(rr=30, hr=135))
    assert s.components == {"rr": 3, "hr": 3}
    assert s.missing == ("spo2", "o2", "sbp", "avpu", "temp")
    assert s.partial
    assert s.red == ("rr", "hr")
    assert s.total == 6
    assert s.trigger() == (MEDIUM, "urgent response")


def test_scale2_without_o2_input_scores_spo2_as_on_air() -> None:
    s = score(Inputs(spo2=98, scale=2))
    assert s.components == {"spo2": 0}
    assert "o2" in s.missing
    assert score(Inputs(spo2=98, o2=True, scale=2)).components == {"spo2": 3, "o2": 2}


# -------------------------------------------------------------- tracker


def filled(scale: int = 1) -> News2Tracker:
    tr = News2Tracker(scale=scale)  # type: ignore[arg-type]
    for vital in PARAMETERS:
        tr.update(vital, getattr(NORMAL, vital), 0.0)
    return tr


def test_tracker_empty() -> None:
    s = News2Tracker().current(at=0.0, freshness_s=60)
    assert s.missing == PARAMETERS and s.total == 0


def test_tracker_freshness_is_inclusive_and_per_parameter() -> None:
    tr = filled()
    tr.update("rr", 30, 100.0)
    s = tr.current(at=400.0, freshness_s=300)
    assert s.components == {"rr": 3}  # the others, from t=0, are 400 s old
    assert s.partial and s.red == ("rr",)
    assert s.trigger() == (LOW, "urgent ward review")
    s = tr.current(at=300.0, freshness_s=300)  # exactly freshness_s old: counted
    assert s.missing == () and s.total == 3
    s = tr.current(at=400.000001, freshness_s=300)
    assert "rr" not in s.components


def test_tracker_value_slightly_ahead_of_at_counts() -> None:
    tr = News2Tracker()
    tr.update("hr", 140, 1000.5)
    assert tr.current(at=1000.0, freshness_s=10).components == {"hr": 3}
    assert tr.current(at=980.0, freshness_s=10).components == {}


def test_tracker_keeps_the_newest_by_event_time() -> None:
    tr = News2Tracker()
    assert tr.update("hr", 140, 10.0)
    assert not tr.update("hr", 70, 5.0)  # late arrival of an older reading
    assert tr.latest("hr") == (10.0, 140.0)
    assert tr.update("hr", 70, 10.0)  # same event time: replaces
    assert tr.latest("hr") == (10.0, 70.0)


def test_tracker_arrival_order_does_not_matter() -> None:
    updates = [("hr", 120.0, 3.0), ("hr", 60.0, 1.0), ("rr", 22.0, 2.0), ("rr", 10.0, 4.0)]
    a, b = News2Tracker(), News2Tracker()
    for u in updates:
        a.update(*u)
    for u in reversed(updates):
        b.update(*u)
    assert a.current(5.0, 10) == b.current(5.0, 10)
    assert a.current(5.0, 10).components == {"rr": 1, "hr": 2}


@pytest.mark.parametrize(
    ("value", "on_oxygen"), [(True, True), (False, False), (1, True), (0, False), (1.0, True)]
)
def test_tracker_o2_takes_bool_or_0_1(value: float, on_oxygen: bool) -> None:
    tr = News2Tracker()
    tr.update("o2", value, 0.0)
    assert tr.current(0.0, 1).components == {"o2": 2 if on_oxygen else 0}


@pytest.mark.parametrize("value", [2, 0.5, -1, float("nan")])
def test_tracker_o2_refuses_other_numbers(value: float) -> None:
    tr = News2Tracker()
    tr.update("o2", True, 0.0)
    with pytest.raises(ValueError, match="o2"):
        tr.update("o2", value, 1.0)
    assert tr.latest("o2") == (0.0, True)  # unchanged


@pytest.mark.parametrize(("letter", "expected"), [("a", 0), (" v ", 3), ("C", 3), ("u", 3)])
def test_tracker_avpu_letters(letter: str, expected: int) -> None:
    tr = News2Tracker()
    tr.update("avpu", letter, 0.0)
    assert tr.current(0.0, 1).components == {"avpu": expected}


def test_tracker_refuses_bad_values() -> None:
    tr = News2Tracker()
    with pytest.raises(ValueError, match="ACVPU"):
        tr.update("avpu", "X", 0.0)
    with pytest.raises(TypeError):
        tr.update("avpu", 1.0, 0.0)
    with pytest.raises(TypeError):
        tr.update("hr", "fast", 0.0)
    with pytest.raises(ValueError, match="finite"):
        tr.update("hr", float("nan"), 0.0)
    with pytest.raises(ValueError, match="event time"):
        tr.update("hr", 80, float("nan"))
    with pytest.raises(ValueError, match="freshness"):
        tr.current(0.0, -1)
    assert tr.current(0.0, 1).components == {}


def test_tracker_ignores_other_vitals() -> None:
    tr = News2Tracker()
    assert not tr.update("dbp", 80, 0.0)
    assert not tr.update("etco2", 35, 0.0)
    assert tr.current(0.0, 1).missing == PARAMETERS


def test_tracker_scale2_and_changing_scale() -> None:
    tr = filled(scale=2)
    tr.update("spo2", 97, 1.0)
    tr.update("o2", 1.0, 1.0)
    assert tr.current(1.0, 60).components["spo2"] == 3
    tr.update("o2", 0.0, 2.0)
    assert tr.current(2.0, 60).components["spo2"] == 0
    tr.scale = 1
    assert tr.current(2.0, 60).components["spo2"] == 0
    tr.update("spo2", 90, 3.0)
    assert tr.current(3.0, 60).components["spo2"] == 3


def test_tracker_fed_from_readings() -> None:
    t0 = 1764324000.0
    readings = [
        Reading(t0, "icu", "7", "mon1", "hr", 118.0),
        Reading(t0 + 1, "icu", "7", "mon1", "spo2", 93.5),
        Reading(t0 + 1, "icu", "7", "mon1", "dbp", 60.0),
        Reading(t0 + 2, "icu", "7", "vent", "o2", 1.0),
    ]
    tr = News2Tracker()
    for r in readings:
        tr.update(r.vital, r.value, r.ts)
    s = tr.current(t0 + 2, 60)
    assert s.components == {"spo2": 1, "o2": 2, "hr": 2}  # 93.5 rounds to 94
    assert s.total == 5 and s.trigger()[0] is MEDIUM


def test_tracker_reads_no_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> float:
        raise AssertionError("the wall clock was read")

    for name in ("time", "monotonic", "perf_counter", "time_ns", "monotonic_ns"):
        monkeypatch.setattr(time, name, boom)
    tr = filled()
    tr.update("hr", 135, 50.0)
    assert tr.current(50.0, 100).total == 3


# --------------------------------------------------------------- properties

# bounded st.floats never draws NaN or infinities
maybe = st.none
inputs_st = st.builds(
    Inputs,
    rr=maybe() | st.floats(0, 150),
    spo2=maybe() | st.floats(0, 100),
    o2=maybe() | st.booleans(),
    sbp=maybe() | st.floats(0, 350),
    hr=maybe() | st.floats(0, 350),
    avpu=maybe() | st.sampled_from(["A", "C", "V", "P", "U"]),
    temp=maybe() | st.floats(20, 45),
    scale=st.sampled_from([1, 2]),
)


@given(inputs_st)
def test_property_score_is_consistent(inputs: Inputs) -> None:
    s = score(inputs)
    assert s.total == sum(s.components.values())
    assert all(c in {0, 1, 2, 3} for c in s.components.values())
    assert list(s.components) + list(s.missing) == sorted(
        PARAMETERS, key=lambda p: (p in s.missing, PARAMETERS.index(p))
    )
    assert set(s.components).isdisjoint(s.missing)
    assert set(s.components) | set(s.missing) == set(PARAMETERS)
    assert s.missing == tuple(p for p in PARAMETERS if getattr(inputs, p) is None)
    assert s.partial == bool(s.missing)
    assert s.red == tuple(p for p, c in s.components.items() if c == 3)


@given(inputs_st)
def test_property_trigger_follows_the_rcp_thresholds(inputs: Inputs) -> None:
    s = score(inputs)
    priority, message = s.trigger()
    if s.total >= 7:
        assert priority is HIGH
    elif s.total >= 5:
        assert priority is MEDIUM
    elif s.red:
        assert priority is LOW
    else:
        assert (priority, message) == (None, "")
    assert (message == "") == (priority is None)


@given(inputs_st, st.sets(st.sampled_from(PARAMETERS)))
def test_property_missing_parameters_can_only_add(inputs: Inputs, drop: set[str]) -> None:
    full = score(inputs)
    part = score(dataclasses.replace(inputs, **dict.fromkeys(drop)))  # type: ignore[arg-type]
    assert part.total <= full.total
    assert RANK[part.trigger()[0]] <= RANK[full.trigger()[0]]


@given(inputs_st)
def test_property_scale2_differs_only_in_spo2(inputs: Inputs) -> None:
    one = score(dataclasses.replace(inputs, scale=1)).components
    two = score(dataclasses.replace(inputs, scale=2)).components
    one.pop("spo2", None)
    two.pop("spo2", None)
    assert one == two


@given(st.floats(0, 92), st.booleans())
def test_property_scale2_up_to_92_ignores_oxygen(value: float, o2: bool) -> None:
    assert score_spo2(value, 2, o2) == score_spo2(value, 2, not o2)


# (scorer, normal band low, normal band high): the score never decreases moving away
U_SHAPED: list[tuple[str, Callable[[float], int], float, float, float, float]] = [
    ("rr", score_rr, 12, 20, 0, 150),
    ("sbp", score_sbp, 111, 219, 0, 350),
    ("hr", score_hr, 51, 90, 0, 350),
    ("temp", score_temp, 36.1, 38.0, 20, 45),
    ("spo2 scale 1", score_spo2, 96, 100, 0, 100),
    ("spo2 scale 2 air", lambda v: score_spo2(v, 2, o2=False), 88, 100, 0, 100),
    ("spo2 scale 2 oxygen", lambda v: score_spo2(v, 2, o2=True), 88, 92, 0, 100),
]


@given(
    case=st.sampled_from(U_SHAPED),
    a=st.floats(0, 1),
    b=st.floats(0, 1),
)
def test_property_monotone_away_from_the_normal_band(
    case: tuple[str, Callable[[float], int], float, float, float, float], a: float, b: float
) -> None:
    _, fn, lo, hi, vmin, vmax = case
    x, y = sorted((vmin + a * (vmax - vmin), vmin + b * (vmax - vmin)))
    assert fn(lo) == 0 and fn(hi) == 0
    if y <= hi:  # lowering from y to x (both at or below the band's top)
        assert fn(x) >= fn(y)
    if x >= lo:  # raising from x to y (both at or above the band's bottom)
        assert fn(y) >= fn(x)


@given(st.floats(0, 110.49), st.floats(0, 110.49))
def test_property_lowering_sbp_below_111_never_lowers_its_score(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert score_sbp(lo) >= score_sbp(hi)


def test_score_is_frozen() -> None:
    s = score(NORMAL)
    assert isinstance(s, Score)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.total = 3  # type: ignore[misc]
