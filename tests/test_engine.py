"""Engine state carried across a restart (pure: literal alert events and readings)."""

from __future__ import annotations

import copy
import itertools

from monitor.config import RulesConfig
from monitor.engine import Engine
from monitor.model import INTERMITTENT, AlertEvent, AlertState, Priority, Reading

T0 = 1764324000.0


def active(
    rule: str = "spo2.low", vital: str = "spo2", priority: Priority = Priority.HIGH, seq: int = 1
) -> AlertEvent:
    return AlertEvent(
        id="abc",
        ward="icu",
        bed="7",
        device="ox",
        patient=None,
        vital=vital,
        rule=rule,
        kind="physiological",
        priority=priority,
        state=AlertState.ACTIVE,
        value=80,
        limit=85,
        message="m",
        started_at=T0 - 60,
        at=T0 - 30,
        seq=seq,
    )


def reading(value: float, t: float = 0, vital: str = "spo2") -> Reading:
    return Reading(T0 + t, "icu", "7", "ox", vital, value)


def test_restored_alert_is_held_then_resolved_with_next_seq():
    eng = Engine(RulesConfig(), sinks=[])
    assert eng.restore([active(seq=3)]) == []
    assert eng.active_alerts() == 1
    assert eng.process([reading(84)]) == []  # still beyond crit: held, nothing new
    (ev,) = eng.process([reading(88, 1)])  # de-escalates to warn
    assert (ev.id, ev.seq, ev.priority, ev.state) == ("abc", 4, Priority.MEDIUM, AlertState.ACTIVE)
    (ev,) = eng.process([reading(97, 2)])
    assert (ev.id, ev.seq, ev.state) == ("abc", 5, AlertState.RESOLVED)
    assert ev.started_at == T0 - 60
    assert eng.active_alerts() == 0


def test_alert_of_a_rule_no_longer_configured_is_resolved_at_restore():
    eng = Engine(RulesConfig.model_validate({"thresholds": {"hr": {"enabled": False}}}), sinks=[])
    (ev,) = eng.restore([active(rule="hr.high", vital="hr", priority=Priority.MEDIUM, seq=2)])
    assert (ev.id, ev.seq, ev.state) == ("abc", 3, AlertState.RESOLVED)
    assert eng.active_alerts() == 0


def test_restored_priority_clamped_to_existing_levels():
    cfg = RulesConfig.model_validate({"thresholds": {"spo2": {"low": {"warn": 90}}}})
    eng = Engine(cfg, sinks=[])
    eng.restore([active(priority=Priority.HIGH)])
    (ev,) = eng.process([reading(97)])
    assert ev.state == AlertState.RESOLVED
    assert ev.priority == Priority.MEDIUM


def test_a_system_alarm_handed_on_is_never_changed_by_its_resolution():
    """The raise event goes down the pipeline (queued for the store and the broker); the
    resolution must be a new event, not the same object changed, else a raise still
    queued when the condition ends (a broker that is down) goes out as resolved."""
    from monitor.engine.system import SystemAlarms

    clock = itertools.count(100.0)
    alarms = SystemAlarms("vitalmon-a", clock=lambda: next(clock))
    raised = alarms.set("sink.down", "tsdb", True, "refused")
    assert raised is not None
    before = copy.deepcopy(raised)
    resolved = alarms.set("sink.down", "tsdb", False, "writing again")
    assert resolved is not None and resolved is not raised
    assert raised == before
    assert (resolved.seq, resolved.state) == (2, AlertState.RESOLVED)


def test_system_alarm_raises_once_and_always_resolves():
    from monitor.engine.system import SystemAlarms

    clock = itertools.count(100.0)
    alarms = SystemAlarms("vitalmon-a", clock=lambda: next(clock))
    raised = alarms.set("store.full", "store", True, "bound reached")
    assert raised is not None
    assert (raised.kind, raised.priority, raised.state) == (
        "technical",
        Priority.HIGH,
        AlertState.ACTIVE,
    )
    assert (raised.ward, raised.bed, raised.device, raised.seq) == (
        "_system",
        "vitalmon-a",
        "store",
        1,
    )
    assert alarms.set("store.full", "store", True, "still full") is None  # state changes only
    resolved = alarms.set("store.full", "store", False, "back under")
    assert resolved is not None
    assert (resolved.id, resolved.seq, resolved.state) == (raised.id, 2, AlertState.RESOLVED)
    assert alarms.set("store.full", "store", False, "back under") is None
    down = alarms.set("sink.down", "tsdb", True, "refused")
    assert down is not None
    assert down.priority == Priority.MEDIUM


def test_a_storm_through_the_engine_becomes_one_flapping_alert_then_settles():
    """SBP from a cuff (intermittent: one reading alarms) jumping across 90 every reading for
    10 min, then steady and low: the default flapping rule (6 changes in 600 s) turns the
    storm into one sbp.low.flapping alert, and once settled the rule's state is told."""
    eng = Engine(RulesConfig(), sinks=[])
    storm = [
        Reading(T0 + 30 * i, "icu", "7", "nibp", "sbp", 85 if i % 2 else 110, mode=INTERMITTENT)
        for i in range(20)
    ]
    events = eng.process(storm)
    raises = [e for e in events if e.rule == "sbp.low" and e.state == AlertState.ACTIVE]
    flap = [e for e in events if e.rule == "sbp.low.flapping"]
    assert len(raises) == 3  # before it was judged flapping (the 6th change)
    assert [(e.state, e.seq) for e in flap] == [(AlertState.ACTIVE, 1)]
    steady = [
        Reading(T0 + 600 + 30 * i, "icu", "7", "nibp", "sbp", 85, mode=INTERMITTENT)
        for i in range(30)
    ]
    after = eng.process(steady)
    after = [e for e in after if e.kind != "trend"]  # (sbp falling: a trend alert, too)
    assert [(e.rule, e.state) for e in after] == [
        ("sbp.low.flapping", AlertState.RESOLVED),
        ("sbp.low", AlertState.ACTIVE),
    ]
