"""Flapping detection: a real threshold rule driven with oscillating SpO2, literal events
for the edge cases, and a property: recovery is always emitted.

Pure and on event time: no broker, no sleeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import FlappingConfig
from monitor.engine.flapping import Flapping
from monitor.engine.threshold import Active, SeriesKey, ThresholdRule
from monitor.engine.window import Window
from monitor.model import AlertEvent, AlertState, Priority, alert_id

T0 = 1764324000.0  # 2025-11-28T10:00:00Z
ACTIVE, RESOLVED = AlertState.ACTIVE, AlertState.RESOLVED
LOW, MEDIUM, HIGH = Priority.LOW, Priority.MEDIUM, Priority.HIGH
CFG = FlappingConfig(window_s=60, high=6, low=2)

# one dip: raised after the 2 s delay, resolved by the first normal reading (8 s a cycle)
DIP = [80.0] * 4 + [97.0] * 4  # crit (< 85): priority high
WARN_DIP = [88.0] * 4 + [97.0] * 4  # warn only (85..90): priority medium


class Bed:
    """A real ``spo2.low`` rule (warn 90, crit 85, delay 2 s, band 2) on one bed's window,
    one reading a second, its events through :class:`Flapping` as the engine does."""

    def __init__(self, flap: Flapping, bed: str = "7") -> None:
        self.flap = flap
        self.rule = ThresholdRule("spo2", "low", 90, 85, delay_s=2, clear_band=2, max_gap_s=30)
        self.key = SeriesKey("icu", bed, "mon1", "spo2")
        self.win = Window(120)
        self.active: Active | None = None
        self.t = 0.0
        self.raw: list[AlertEvent] = []  #: what the rule emitted
        self.out: list[AlertEvent] = []  #: what the filter passed on

    def feed(self, values: Sequence[float]) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        for v in values:
            ts = T0 + self.t
            self.win.add(ts, v)
            self.active, ev = self.rule.evaluate(
                self.key, self.win.ts, self.win.values, self.active, "MRN-1"
            )
            step = [ev] if ev is not None else []
            self.raw += step
            out += self.flap.filter(step)
            out += self.flap.tick(self.key.ward, self.key.bed, ts)
            self.t += 1
        self.out += out
        return out


def rules_of(events: Sequence[AlertEvent]) -> list[tuple[str, str, str]]:
    return [(e.rule, str(e.state), str(e.priority)) for e in events]


def ev(
    ident: str,
    state: AlertState,
    at: float,
    seq: int,
    priority: Priority = MEDIUM,
    rule: str = "spo2.low",
    bed: str = "7",
) -> AlertEvent:
    return AlertEvent(
        id=ident,
        ward="icu",
        bed=bed,
        device="mon1",
        patient="MRN-1",
        vital=rule.partition(".")[0],
        rule=rule,
        kind="physiological",
        priority=priority,
        state=state,
        value=80.0,
        limit=85.0,
        message="m",
        started_at=T0,
        at=T0 + at,
        seq=seq,
    )


def storm(
    flap: Flapping, cycles: int, start: float = 0, rule: str = "spo2.low"
) -> list[AlertEvent]:
    """Raise/resolve pairs of new alerts, 5 s apart, one event per step."""
    out: list[AlertEvent] = []
    for i in range(cycles):
        at = start + 10 * i
        out += flap.filter([ev(f"{rule}-{at}", ACTIVE, at, 1, rule=rule)])
        out += flap.filter([ev(f"{rule}-{at}", RESOLVED, at + 5, 2, rule=rule)])
    return out


# ------------------------------------------------------------------ a real rule


def test_storm_gives_one_flapping_alert_and_holds_the_raises():
    flap = Flapping(CFG)
    bed = Bed(flap)
    out = bed.feed(DIP * 10 + [97.0] * 10)
    assert len(bed.raw) == 20  # the rule: 10 raises, 10 resolves
    assert rules_of(out) == [
        *[("spo2.low", "active", "high"), ("spo2.low", "resolved", "high")] * 3,
        ("spo2.low.flapping", "active", "high"),
    ]
    assert out[:6] == bed.raw[:6] and all(a is b for a, b in zip(out[:6], bed.raw[:6], strict=True))
    alarm = out[-1]
    sixth = bed.raw[5]
    assert (alarm.at, alarm.started_at, alarm.seq, alarm.value, alarm.limit) == (
        sixth.at,
        sixth.at,
        1,
        6.0,
        6.0,
    )
    assert alarm.id == alert_id("icu", "7", "mon1", "spo2.low.flapping", sixth.at)
    assert (alarm.kind, alarm.vital, alarm.device, alarm.patient) == (
        "physiological",
        "spo2",
        "mon1",
        "MRN-1",
    )
    assert alarm.message == (
        "SpO2 low alarm flapping: 6 changes in 1 min; its alarms are held until it settles"
    )
    assert flap.flapping() == 1
    assert flap.counts["episodes"] == 1
    assert flap.counts["held"] == 14


def test_settling_while_still_in_alarm_publishes_the_active_alert():
    flap = Flapping(CFG)
    bed = Bed(flap)
    bed.feed(DIP * 10)
    out = bed.feed([82.0] * 120)  # stays low: one held raise, then no change at all
    raise_ = bed.raw[-1]
    assert raise_.state == ACTIVE
    assert rules_of(out) == [
        ("spo2.low.flapping", "resolved", "high"),
        ("spo2.low", "active", "high"),
    ]
    settled, current = out
    assert settled.at == bed.raw[-3].at + 60  # only 2 changes left in the last 60 s
    assert settled.seq == 2
    assert settled.message == "SpO2 low alarm settled: 2 changes in the last 1 min"
    assert current == raise_ and current is not raise_  # a copy, its own `at`
    assert flap.flapping() == 0
    # later changes pass through again, recovery included
    assert flap.filter([dataclasses.replace(raise_, state=RESOLVED, seq=2)])[0].state == RESOLVED


def test_settling_after_recovery_resolves_the_flapping_alert_only():
    flap = Flapping(CFG)
    bed = Bed(flap)
    bed.feed(DIP * 10)
    out = bed.feed([97.0] * 120)
    assert rules_of(out) == [("spo2.low.flapping", "resolved", "high")]
    assert flap.flapping() == 0


def test_recovery_of_a_published_alert_passes_during_flapping():
    flap = Flapping(CFG)
    bed = Bed(flap)
    # one alert swinging high <-> medium: its 6th change (a priority change) starts flapping
    out = bed.feed([80.0] * 3 + [88.0, 88.0, 80.0, 80.0, 80.0] * 3)
    ids = {e.id for e in bed.raw}
    assert len(ids) == 1
    assert rules_of(out) == [
        ("spo2.low", "active", "high"),
        ("spo2.low", "active", "medium"),
        ("spo2.low", "active", "high"),
        ("spo2.low", "active", "medium"),
        ("spo2.low", "active", "high"),
        ("spo2.low.flapping", "active", "high"),
    ]
    out = bed.feed([97.0] * 3)
    assert rules_of(out) == [("spo2.low", "resolved", "high")]  # not held
    assert out[0] is bed.raw[-1]
    assert flap.flapping() == 1
    out = bed.feed([97.0] * 70)
    assert rules_of(out) == [("spo2.low.flapping", "resolved", "high")]


def test_a_higher_priority_during_the_episode_updates_the_flapping_alert():
    flap = Flapping(CFG)
    bed = Bed(flap)
    out = bed.feed(WARN_DIP * 4)
    assert rules_of(out)[-1] == ("spo2.low.flapping", "active", "medium")
    first = out[-1]
    out = bed.feed(DIP)  # a crit dip, held
    assert rules_of(out) == [("spo2.low.flapping", "active", "high")]
    update = out[0]
    assert (update.id, update.seq, update.state, update.started_at) == (
        first.id,
        2,
        ACTIVE,
        first.started_at,
    )
    assert update.at == bed.raw[-2].at  # the held raise
    assert update.value == 9.0  # changes in the window
    assert first.priority == MEDIUM  # what was emitted is never changed afterwards
    assert bed.feed(DIP) == []  # high again: nothing new
    out = bed.feed([97.0] * 70)
    assert [(e.id, e.seq, e.state) for e in out] == [(first.id, 3, RESOLVED)]


# ------------------------------------------------------------------ literal events


def test_disabled_is_the_identity():
    flap = Flapping(FlappingConfig(enabled=False, window_s=60, high=6, low=2))
    events = [ev(f"a{i}", ACTIVE if i % 2 == 0 else RESOLVED, i, 1) for i in range(20)]
    assert flap.filter(events) is events
    assert flap.tick("icu", "7", T0 + 10_000) == []
    assert flap.flapping() == 0


def test_keys_are_independent():
    flap = Flapping(CFG)
    out = storm(flap, 4)
    assert rules_of(out)[-1] == ("spo2.low.flapping", "active", "medium")
    other_rule = ev("hr", ACTIVE, 40, 1, rule="hr.high")
    other_bed = ev("b8", ACTIVE, 40, 1, bed="8")
    assert flap.filter([other_rule, other_bed]) == [other_rule, other_bed]
    assert flap.tick("icu", "8", T0 + 40) == []
    assert storm(flap, 4, rule="hr.low") == storm(Flapping(CFG), 4, rule="hr.low")
    assert flap.flapping() == 2
    out = flap.tick("icu", "7", T0 + 200)
    assert [e.rule for e in out] == ["spo2.low.flapping", "hr.low.flapping"]
    assert flap.flapping() == 0


def test_the_resolve_that_starts_flapping_passes_but_a_raise_is_held():
    flap = Flapping(CFG)
    raised = storm(flap, 2) + flap.filter([ev("x", ACTIVE, 20, 1)])
    assert len(raised) == 5
    out = flap.filter([r := ev("x", RESOLVED, 25, 2)])
    assert [e.rule for e in out] == ["spo2.low", "spo2.low.flapping"] and out[0] is r

    flap = Flapping(CFG)
    storm(flap, 2)
    flap.filter([ev("y", ACTIVE, 20, 1)])
    flap.filter([ev("y", RESOLVED, 25, 2)])  # 6th: enters, passes
    flap.filter([ev("z", ACTIVE, 30, 1)])  # held
    assert flap.counts["held"] == 1


def test_an_event_that_settles_a_key_comes_after_the_flapping_resolve():
    flap = Flapping(CFG)
    storm(flap, 4)  # flapping from the 6th change (t=25)
    late = ev("late", ACTIVE, 500, 1, priority=HIGH)
    out = flap.filter([late])  # no tick in between: the event's own time settles it
    assert [(e.rule, e.state) for e in out] == [
        ("spo2.low.flapping", RESOLVED),
        ("spo2.low", ACTIVE),
    ]
    assert out[0].at == late.at and out[1] is late
    assert flap.flapping() == 0


def test_held_alert_resolved_unseen_leaves_no_trace():
    flap = Flapping(CFG)
    storm(flap, 3)
    held = [ev("h", ACTIVE, 31, 1), ev("h", ACTIVE, 32, 2, priority=HIGH)]
    out = flap.filter(held)
    assert [(e.rule, e.priority) for e in out] == [("spo2.low.flapping", HIGH)]
    assert flap.filter([ev("h", RESOLVED, 33, 3)]) == []
    out = flap.tick("icu", "7", T0 + 200)
    assert [e.rule for e in out] == ["spo2.low.flapping"]


def test_alert_from_before_a_restart_resolves_during_flapping():
    """An id never seen with seq > 1 (carried over a restart) counts as published."""
    flap = Flapping(CFG)
    storm(flap, 3)
    assert flap.filter([ev("old", ACTIVE, 31, 7)]) == []  # priority change: held
    out = flap.filter([ev("old", RESOLVED, 32, 8)])
    assert [(e.id, e.state) for e in out] == [("old", RESOLVED)]


def test_reset_bed_resolves_the_flapping_alert_and_forgets():
    flap = Flapping(CFG)
    alarm = storm(flap, 5)[-1]
    assert alarm.rule == "spo2.low.flapping"
    out = flap.reset_bed("icu", "7")
    assert [(e.id, e.state, e.seq, e.at) for e in out] == [(alarm.id, RESOLVED, 2, T0 + 45)]
    assert flap.flapping() == 0
    assert flap.tick("icu", "7", T0 + 46) == []
    assert flap.reset_bed("icu", "7") == []
    again = ev("new", ACTIVE, 50, 1)
    assert flap.filter([again]) == [again]  # no history left


def test_idle_keys_are_forgotten():
    flap = Flapping(CFG)
    for i in range(200):
        e = ev(f"k{i}", ACTIVE, i * 100, 1, bed=str(i))
        assert flap.filter([e]) == [e]
    assert len(flap._keys) < 64


@pytest.mark.parametrize(("seconds", "text"), [(600, "10 min"), (90, "90 s"), (7200, "2 h")])
def test_window_in_messages(seconds: float, text: str):
    flap = Flapping(FlappingConfig(window_s=seconds, high=2, low=0))
    out = flap.filter([ev("n", ACTIVE, 0, 1, rule="news2"), ev("n", ACTIVE, 1, 2, rule="news2")])
    assert out[-1].message == (
        f"NEWS2 alarm flapping: 2 changes in {text}; its alarms are held until it settles"
    )


# ------------------------------------------------------------------ property

steps = st.lists(
    st.tuples(
        st.sampled_from(["change", "change", "tick"]),
        st.integers(0, 40),  # seconds since the previous step
        st.sampled_from([LOW, MEDIUM, HIGH]),
        st.booleans(),  # change of an open alert: resolve (else a priority change)
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(steps=steps, high=st.integers(2, 7), low_frac=st.floats(0, 0.99))
def test_recovery_is_always_emitted(steps, high: int, low_frac: float):
    low = int(low_frac * high)
    window = 100.0
    flap = Flapping(FlappingConfig(window_s=window, high=high, low=low))
    out: list[AlertEvent] = []
    t = 0.0
    open_: AlertEvent | None = None
    n = 0

    def rule_event(state: AlertState, priority: Priority) -> None:
        nonlocal open_, n
        if open_ is None:
            n += 1
            e = ev(f"a{n}", state, t, 1, priority)
        else:
            e = dataclasses.replace(open_, state=state, priority=priority, at=T0 + t)
            e.seq += 1
        open_ = None if state == RESOLVED else e
        out.extend(flap.filter([e]))

    for kind, dt, priority, resolve in steps:
        t += dt
        if kind == "tick":
            out.extend(flap.tick("icu", "7", T0 + t))
        elif open_ is None or not resolve:
            rule_event(ACTIVE, priority)
        else:
            rule_event(RESOLVED, open_.priority)
    # the rule resolves, and the window elapses
    t += 1
    if open_ is not None:
        rule_event(RESOLVED, open_.priority)
    out.extend(flap.tick("icu", "7", T0 + t + window + 1))

    last: dict[str, AlertEvent] = {}
    flapping = False
    for e in out:
        prev = last.get(e.id)
        assert prev is None or (prev.state != RESOLVED and e.seq > prev.seq), "out of order"
        last[e.id] = e
        if e.rule == "spo2.low.flapping":
            flapping = e.state != RESOLVED
        else:
            assert not (flapping and e.state == ACTIVE), "a rule's alert passed while flapping"
    # every alert passed on, the rule's and the flapping alert, ends resolved
    assert all(e.state == RESOLVED for e in last.values()), [
        (e.rule, e.id, e.state) for e in last.values() if e.state != RESOLVED
    ]
    assert flap.flapping() == 0
