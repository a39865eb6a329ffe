"""NEWS2 in the engine (pure, literal readings) and over a real mosquitto."""

from __future__ import annotations

import time

from conftest import wait_for

from monitor.config import News2Config
from monitor.engine.score import News2Scores
from monitor.model import AlertState, Priority, Reading

T0 = 1764324000.0
FULL = {"rr": 16, "spo2": 97, "o2": 0, "sbp": 120, "hr": 75, "avpu": 0, "temp": 37.0}


def readings(values: dict[str, float], t: float) -> list[Reading]:
    return [Reading(T0 + t, "icu", "12", "mon", k, float(v)) for k, v in values.items()]


def feed(scores: News2Scores, values: dict[str, float], t: float) -> tuple[list, list]:
    updates, events = [], []
    for r in readings(values, t):
        u, e = scores.observe(r)
        updates += [u] if u else []
        events += [e] if e else []
    return updates, events


def test_walk_from_0_to_7_raises_low_medium_high_then_resolves():
    s = News2Scores(News2Config())
    updates, events = feed(s, FULL, 0)
    assert updates[-1].payload["news2"] == 0
    assert updates[-1].payload["partial"] is False
    assert events == []
    steps = [({"rr": 25}, 3, Priority.LOW), ({"hr": 115}, 5, Priority.MEDIUM),
             ({"spo2": 93}, 7, Priority.HIGH)]  # fmt: skip
    ids = set()
    for i, (change, total, priority) in enumerate(steps, 1):
        updates, (event,) = feed(s, change, i)
        assert updates[-1].payload["news2"] == total
        assert (event.state, event.priority, event.kind, event.rule) == (
            AlertState.ACTIVE, priority, "score", "news2")  # fmt: skip
        assert event.value == total
        ids.add(event.id)
    assert len(ids) == 1
    _, (resolved,) = feed(s, {"rr": 16, "hr": 75, "spo2": 97}, 10)
    assert resolved.state == AlertState.RESOLVED
    assert resolved.id in ids
    assert resolved.seq == 4


def test_partial_score_names_what_is_missing_and_stale_inputs_expire():
    s = News2Scores(News2Config(freshness_s=600))
    updates, _ = feed(s, {"hr": 75}, 0)
    assert updates[-1].payload["partial"] is True
    assert set(updates[-1].payload["missing"]) == {"rr", "spo2", "o2", "sbp", "avpu", "temp"}
    feed(s, FULL, 10)
    updates, _ = feed(s, {"hr": 76}, 1000)  # everything else is now older than 600 s
    assert set(updates[-1].payload["missing"]) == {"rr", "spo2", "o2", "sbp", "avpu", "temp"}


def test_scores_and_score_alerts_over_mqtt(daemon, subscribe, publisher):
    """Over real mosquitto: a bed walked from NEWS2 0 to 7 gives the low, medium and high
    score alerts at the right readings; the retained score topic follows; a dashboard
    subscribing late gets the current score."""
    daemon()
    alerts = subscribe("alerts/#")
    scores = subscribe("scores/#")
    now = time.time() - 20
    full = {"rr": 16, "spo2": 97, "o2": False, "sbp": 120, "hr": 75, "avpu": "A", "temp": 37.0}
    walk = [full, {"rr": 25}, {"hr": 115}, {"spo2": 93}, {"rr": 16, "hr": 75, "spo2": 97}]
    want_totals = [0, 3, 5, 7, 0]
    for i, (step, total) in enumerate(zip(walk, want_totals, strict=True)):
        publisher.publish("vitals/icu/12/mon", {"ts": now + i, **step})
        wait_for(lambda t=total: scores.json() and scores.json()[-1]["news2"] == t, 5,
                 f"score {total}")  # fmt: skip
    score_alerts = [a for a in alerts.json() if a["rule"] == "news2"]
    got = [(a["state"], a["priority"]) for a in score_alerts]
    assert got == [("active", "low"), ("active", "medium"), ("active", "high"),
                   ("resolved", "high")]  # fmt: skip
    assert len({a["id"] for a in score_alerts}) == 1
    assert "emergency response" in score_alerts[2]["message"]
    late = subscribe("scores/icu/12")
    current = wait_for(late.json, 5, "the retained score")[-1]
    assert current["news2"] == 0
    assert set(current) >= {"news2", "partial", "missing", "components", "at"}


def test_partial_scores_alert_only_when_configured():
    quiet = News2Scores(News2Config())
    _, events = feed(quiet, {"spo2": 82}, 0)  # SpO2 alone: partial, red parameter
    assert events == []
    loud = News2Scores(News2Config(alert_partial=True))
    _, (event,) = feed(loud, {"spo2": 82}, 0)
    assert (event.priority, event.state) == (Priority.LOW, AlertState.ACTIVE)
    assert "partial, missing" in event.message


def test_an_instant_is_one_change_of_the_score_not_one_per_vital():
    """An object with several vitals at one event time moves the score once: with rr
    back to normal and spo2 falling in the same object, the 'single parameter 3' alert
    stays open. Scored vital by vital, it would resolve (rr) and raise again (spo2)."""
    s = News2Scores(News2Config())
    feed(s, FULL, 0)
    _, (raised,) = feed(s, {"rr": 25}, 1)
    assert raised.state is AlertState.ACTIVE and raised.priority is Priority.LOW
    both = readings({"rr": 16, "spo2": 91}, 2)
    assert s.observe(both[0], settle=False) == (None, None)
    update, event = s.observe(both[1])
    assert event is None  # same trigger, same priority: nothing to say
    assert update is not None and update.payload is not None
    assert update.payload["components"]["rr"] == 0
    assert update.payload["components"]["spo2"] == 3
    # the same two readings fed with settle on each: resolve, then raise again
    t = News2Scores(News2Config())
    feed(t, FULL, 0)
    feed(t, {"rr": 25}, 1)
    _, events = feed(t, {"rr": 16, "spo2": 91}, 2)
    assert [e.state for e in events] == [AlertState.RESOLVED, AlertState.ACTIVE]


def test_engine_settles_the_score_per_bed_and_instant():
    """Engine.process: readings of one bed at one instant are one score change, whatever
    else the batch holds; a new instant or another bed settles the one before."""
    from monitor.config import RulesConfig
    from monitor.engine import Engine

    eng = Engine(RulesConfig(), sinks=[])
    eng.process(readings(FULL, 0))
    eng.process(readings({"rr": 25}, 1))
    other = [Reading(T0 + 2, "icu", "13", "mon", k, float(v)) for k, v in FULL.items()]
    batch = [*readings({"rr": 16}, 2)[:1], *readings({"spo2": 91}, 2), *other]
    events = [e for e in eng.process(batch) if e.rule == "news2"]
    assert events == []  # bed 12: rr and spo2 at t=2 are one change; bed 13 scores 0
    (e,) = [e for e in eng.process(readings({"spo2": 97}, 3)) if e.rule == "news2"]
    assert e.state is AlertState.RESOLVED
