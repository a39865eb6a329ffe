"""NEWS2 holds and input expiry run on time (pure: literal readings, no sleeps).

The daemon ticks the engine once a second (``Batch([], tick=now)``); a replay has no
clock and relies on ``Engine.process`` doing a bed's due work before each reading. Both
must give the same events, dated when they became due.
"""

from __future__ import annotations

import asyncio
import copy
from datetime import datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import News2Config, RulesConfig
from monitor.engine import Engine
from monitor.engine.news2 import PARAMETERS
from monitor.engine.news2_tracker import News2Tracker
from monitor.engine.score import News2Scores, ScoreUpdate
from monitor.model import AVPU_CODES, AlertEvent, AlertState, Priority, Reading
from monitor.sources import Batch

T0 = 1764324000.0
H = 3600.0
#: NEWS2 0 (every parameter normal)
NORMAL = {"rr": 16, "spo2": 97, "o2": 0, "sbp": 120, "hr": 75, "avpu": 0, "temp": 37.0}
#: NEWS2 7: rr 25 (3), spo2 93 (2), hr 115 (2)
SEVEN = {**NORMAL, "rr": 25, "spo2": 93, "hr": 115}
#: NEWS2 5: rr 25 (3), hr 115 (2)
FIVE = {**NORMAL, "rr": 25, "hr": 115}


def charted(values: dict[str, float], t: float, bed: str = "12") -> list[Reading]:
    """One charted set: every value at the same event time."""
    return [Reading(T0 + t, "icu", bed, "obs", k, float(v)) for k, v in values.items()]


def chart(
    s: News2Scores, values: dict[str, float], t: float, bed: str = "12"
) -> tuple[list[ScoreUpdate], list[AlertEvent]]:
    """A set fed the engine's way: the bed's due work first, then the set (one instant)."""
    updates: list[ScoreUpdate] = []
    events: list[AlertEvent] = []
    due = s.advance("icu", bed, T0 + t)
    if due is not None:
        updates += due[0]
        events += due[1]
    rs = charted(values, t, bed)
    for k, r in enumerate(rs):
        u, e = s.observe(r, settle=k == len(rs) - 1)
        updates += [u] if u else []
        events += [e] if e else []
    return updates, events


# ------------------------------------------------------------------------ holds


def test_a_hold_ends_on_the_clock_without_any_further_input():
    """Intermittent observations: 7, then a complete set scoring 0. The alert resolves at
    lower_since + hold_s from a tick, not an hour later with the next set."""
    s = News2Scores(News2Config())
    _, (raised,) = chart(s, SEVEN, 0)
    assert (raised.state, raised.priority) == (AlertState.ACTIVE, Priority.HIGH)
    updates, events = chart(s, NORMAL, 600)
    assert events == []  # held 60 s
    assert [u.payload["news2"] for u in updates if u.payload] == [0]
    assert s.tick(T0 + 659.999) == ([], [])
    updates, (resolved,) = s.tick(T0 + 700)  # the daemon's tick, 40 s after it was due
    assert updates == []  # the score did not change: only the alert follows it
    assert resolved.state is AlertState.RESOLVED and resolved.id == raised.id
    assert resolved.at == T0 + 660  # dated when it became due, not at the tick
    assert resolved.message.startswith("NEWS2 0: no trigger")
    assert s.tick(T0 + 700) == ([], [])  # idempotent
    assert chart(s, NORMAL, H)[1] == []  # (no alert left for the next set)


def test_a_step_down_is_dated_at_the_end_of_its_hold():
    s = News2Scores(News2Config(hold_s=120))
    chart(s, SEVEN, 0)
    chart(s, FIVE, 30)  # medium from t=30
    updates, (down,) = s.tick(T0 + 1000)
    assert (down.state, down.priority, down.at) == (AlertState.ACTIVE, Priority.MEDIUM, T0 + 150)
    assert updates == []


def test_a_reading_after_the_due_instant_gives_the_clocks_event_first():
    """Replay (no clock): the next set finds the hold due since t=660 and closes it there
    before it is scored: resolved at 660, then the new set raises a new alert."""
    s = News2Scores(News2Config())
    chart(s, SEVEN, 0)
    chart(s, NORMAL, 600)
    _, events = chart(s, SEVEN, H)
    assert [(e.state, e.at) for e in events] == [
        (AlertState.RESOLVED, T0 + 660),
        (AlertState.ACTIVE, T0 + H),
    ]
    assert events[0].id != events[1].id


# ----------------------------------------------------------------------- expiry


def test_expiry_closes_a_high_alert_at_last_input_plus_freshness():
    """7 charted at t=0; rr, spo2, o2, sbp and hr again at t=600 (still 7); ACVPU and
    temperature are not. At 1800 they expire: the score turns partial and the alert
    closes, both dated 1800. At 2400 the rest expires (no alert left to close); a fresh
    complete set that still scores 7 raises a new alert."""
    s = News2Scores(News2Config())
    _, (raised,) = chart(s, SEVEN, 0)
    again = {k: v for k, v in SEVEN.items() if k not in ("avpu", "temp")}
    assert chart(s, again, 600)[1] == []
    assert s.tick(T0 + 1799.999) == ([], [])
    (update,), (closed,) = s.tick(T0 + 1800)
    assert update.payload is not None
    assert update.payload["partial"] is True
    assert update.payload["missing"] == ["avpu", "temp"]
    assert update.payload["at"] == "2025-11-28T10:30:00.000Z"
    assert update.payload["news2"] == 7  # a lower bound now: no longer alerting
    assert (closed.id, closed.state, closed.priority) == (
        raised.id,
        AlertState.RESOLVED,
        Priority.HIGH,
    )
    assert closed.at == T0 + 1800
    assert closed.message == (
        "NEWS2 evidence expired: no fresh avpu, temp (older than 1800 s); alert closed"
    )
    (update,), events = s.tick(T0 + 5000)
    assert events == []
    assert update.payload is not None
    assert update.payload["missing"] == list(PARAMETERS) and update.payload["at"].endswith(
        "10:40:00.000Z"
    )
    _, (new,) = chart(s, SEVEN, 5400)
    assert new.state is AlertState.ACTIVE and new.id != raised.id


def test_expiry_is_not_held_and_with_alert_partial_a_partial_score_still_triggers():
    """alert_partial: the partial score (7 without avpu and temp) still triggers high, so
    nothing happens at 1800; at 2400 nothing is left: closed at once (no hold)."""
    s = News2Scores(News2Config(alert_partial=True, hold_s=600))
    chart(s, SEVEN, 0)
    chart(s, {k: v for k, v in SEVEN.items() if k not in ("avpu", "temp")}, 600)
    updates, events = s.tick(T0 + 2399)
    assert [u.payload["missing"] for u in updates if u.payload] == [["avpu", "temp"]]
    assert events == []
    _, (closed,) = s.tick(T0 + 2400)
    assert closed.at == T0 + 2400 and closed.state is AlertState.RESOLVED
    assert closed.message.startswith("NEWS2 evidence expired: no fresh rr, spo2, o2, sbp, hr")


def test_a_partial_score_on_a_reading_closes_an_open_alert_at_once():
    """Scored on a reading (observe alone, no due work first): the inputs are stale, the
    score partial -> the alert closes there. (Before: it stayed open indefinitely.)"""
    s = News2Scores(News2Config())
    chart(s, SEVEN, 0)
    update, closed = s.observe(charted({"hr": 80}, 2000)[0])
    assert update is not None and update.payload is not None
    assert update.payload["partial"] is True
    assert closed is not None and closed.state is AlertState.RESOLVED
    assert closed.at == T0 + 2000
    assert closed.message == (
        "NEWS2 evidence expired: no fresh rr, spo2, o2, sbp, avpu, temp "
        "(older than 1800 s); alert closed"
    )


def test_a_set_charted_exactly_freshness_s_later_replaces_the_old_one_seamlessly():
    """Charted every 30 min with freshness_s 1800: the old set expires the instant the new
    one is measured; the score is never partial, the alert never closes and reopens."""
    s = News2Scores(News2Config())
    chart(s, SEVEN, 0)
    for t in (1800, 3600, 5400):
        assert chart(s, SEVEN, t) == ([], [])
    assert s.beds[("icu", "12")].active is not None
    # the daemon's way can only differ if its tick lands on that very instant first
    ticked = News2Scores(News2Config())
    chart(ticked, SEVEN, 0)
    assert ticked.tick(T0 + 1799.5) == ([], [])
    assert chart(ticked, SEVEN, 1800) == ([], [])


def test_an_alert_carried_over_a_restart_closes_when_its_evidence_must_have_expired():
    stored = AlertEvent(
        id="0123456789abcdef",
        ward="icu",
        bed="12",
        device="news2",
        patient=None,
        vital="news2",
        rule="news2",
        kind="score",
        priority=Priority.HIGH,
        state=AlertState.ACTIVE,
        value=7.0,
        limit=7.0,
        message="NEWS2 7: emergency response",
        started_at=T0,
        at=T0,
        seq=1,
    )
    restarted = News2Scores(News2Config())
    restarted.restore(stored, now=T0 + 600)  # restarted 10 min later, no input since
    assert restarted.tick(T0 + 2399) == ([], [])
    updates, (closed,) = restarted.tick(T0 + 3000)
    assert updates == []
    assert (closed.id, closed.state, closed.at, closed.seq) == (
        stored.id,
        AlertState.RESOLVED,
        T0 + 2400,
        2,
    )
    assert "none since the restart" in closed.message
    # an input after the restart scores partial: the alert closes then, not later
    again = News2Scores(News2Config())
    again.restore(stored, now=T0 + 600)
    _, (closed,) = chart(again, {"spo2": 93}, 700)
    assert closed.at == T0 + 700 and closed.message.startswith("NEWS2 evidence expired")
    assert again.tick(T0 + 9999)[1] == []


# ----------------------------------------------------------------------- engine


def news2_events(events: list[AlertEvent]) -> list[tuple[str, str, str, float, str]]:
    return [
        (e.id, str(e.state), str(e.priority), e.at, e.message) for e in events if e.rule == "news2"
    ]


def test_engine_tick_counts_filters_and_queues_the_score_updates():
    eng = Engine(RulesConfig(), sinks=[])
    eng.process(charted(SEVEN, 0))
    eng._score_updates.clear()
    assert eng.tick(T0 + 1000) == []
    (closed,) = [e for e in eng.tick(T0 + 2000) if e.rule == "news2"]
    assert closed.at == T0 + 1800 and closed.state is AlertState.RESOLVED
    assert eng.counts["alert_resolved"] == 1
    assert [u.payload["partial"] for u in eng._score_updates if u.payload] == [True]
    assert eng.tick(T0 + 2000) == []


class _Sink:
    name = "test"

    def __init__(self) -> None:
        self.writes: list[tuple[list[Reading], list[AlertEvent]]] = []
        self.scores: list[ScoreUpdate] = []

    async def write(self, readings: Any, events: Any, done: Any = None) -> None:
        self.writes.append((list(readings), list(events)))

    async def write_scores(self, updates: list[ScoreUpdate]) -> None:
        self.scores += updates


def test_engine_run_does_a_batchs_tick_before_its_readings():
    """A batch with no readings and a tick (the daemon's heartbeat) goes through run():
    the expiry is published and the alert closes; a batch with a tick and a reading of
    the bed does the tick's work first."""
    sink = _Sink()
    eng = Engine(RulesConfig(), sinks=[sink])  # type: ignore[list-item]
    eng.score_sink = sink

    async def main() -> None:
        runner = asyncio.create_task(eng.run())
        await eng.put(Batch(charted(SEVEN, 0)))
        await eng.put(Batch([], tick=T0 + 1000))  # nothing due
        await eng.put(Batch([], tick=T0 + 1801))
        await eng.put(Batch(charted(SEVEN, 1900), tick=T0 + 1900))
        eng.stop()
        await runner

    asyncio.run(main())
    per_batch = [news2_events(evs) for _, evs in sink.writes]
    assert [[(state, at - T0) for _, state, _, at, _ in b] for b in per_batch] == [
        [("active", 0)],
        [],
        [("resolved", 1800)],
        [("active", 1900)],
    ]
    assert [r for r, _ in sink.writes[1:3]] == [[], []]
    assert [(u.payload or {}).get("partial") for u in sink.scores] == [False, True, False]
    assert eng.counts["batches"] == 4


def test_a_tick_never_overtakes_a_bed_whose_readings_arrive_late():
    """The daemon's clock against a backlog (readings redelivered after an outage, a
    simulation catching up, charting done late): a bed is judged at its own present,
    the clock minus how late its readings arrive. Its inputs do not expire under it."""
    eng = Engine(RulesConfig(), sinks=[])
    late = 3 * H  # the readings arrive 3 h after they were taken
    (raised,) = news2_events(eng.process(charted(SEVEN, 0), received_at=T0 + late))
    assert eng.tick(T0 + late + 1) == []  # (at T0 + late, everything is > 30 min old)
    for k in range(1, 5):  # the backlog goes on: a set every 10 min of event time
        assert news2_events(eng.process(charted(SEVEN, 600 * k), received_at=T0 + late + k)) == []
        assert news2_events(eng.tick(T0 + late + k + 0.5)) == []
    # then silence: the last set (t=2400, arrived at late + 4) expires at 4200 of event
    # time, which is late + 4 + 1800 on the clock
    lag = late + 4 - 2400
    assert news2_events(eng.tick(T0 + 4200 + lag - 0.5)) == []
    (closed,) = news2_events(eng.tick(T0 + 4200 + lag))
    assert closed[0] == raised[0] and closed[1:4] == ("resolved", "high", T0 + 4200)
    assert closed[4].startswith("NEWS2 evidence expired")


def _daemon_and_replay(sets: list[tuple[float, dict[str, float]]], cfg: RulesConfig):
    """The same charted sets (a) the daemon's way: Engine.tick every second of event
    time in between, and (b) the replay's: Engine.process alone."""
    daemon, replay = Engine(cfg, sinks=[]), Engine(cfg, sinks=[])
    a: list[AlertEvent] = []
    b: list[AlertEvent] = []
    for n, (t, values) in enumerate(sets):
        if n:
            prev = int(sets[n - 1][0])
            for sec in range(prev + 1, int(t)):  # the heartbeat, between the sets
                a += daemon.tick(T0 + sec)
        a += daemon.process(charted(values, t))
        b += replay.process(charted(values, t))
    return a, b, daemon, replay


def test_replay_and_daemon_give_the_same_news2_events():
    """Hourly charted sets (inputs fresh for 90 min): 0, then 7, then 0, then 7, then
    nothing for 2 h, then a complete set (7), then 0. The daemon ticks every second
    between them; the replay has no clock. Same alert events (id, state, priority, at,
    message) and the same scores, up to the last set."""
    sets = [
        (0, NORMAL),
        (H, SEVEN),
        (2 * H, NORMAL),
        (3 * H, SEVEN),
        (5 * H, SEVEN),
        (6 * H, NORMAL),
    ]
    cfg = RulesConfig(news2=News2Config(freshness_s=5400))
    a, b, daemon, replay = _daemon_and_replay(sets, cfg)
    assert news2_events(a) == news2_events(b)
    got = [(state, prio, at - T0, msg.split(":")[0]) for _, state, prio, at, msg in news2_events(a)]
    assert (
        got
        == [
            ("active", "high", H, "NEWS2 7"),
            ("resolved", "high", 2 * H + 60, "NEWS2 0"),  # the hold, on time
            ("active", "high", 3 * H, "NEWS2 7"),
            ("resolved", "high", 3 * H + 5400, "NEWS2 evidence expired"),  # on time
            ("active", "high", 5 * H, "NEWS2 7"),
            ("resolved", "high", 6 * H + 60, "NEWS2 0"),  # (from the daemon's tick only)
        ][:5]
    )  # the last is due after the last reading: the replay has not seen it
    assert len({e[0] for e in news2_events(a)}) == 3  # three alerts
    assert [u.payload for u in daemon._score_updates] == [u.payload for u in replay._score_updates]
    assert [(u.payload or {}).get("partial") for u in replay._score_updates] == [
        False,
        False,
        False,
        False,
        True,
        False,
        False,
    ]
    # after the last reading the daemon goes on: the hold of the last set ends on time
    tail = news2_events(daemon.tick(T0 + 6 * H + 61))
    assert [(state, at - T0) for _, state, _, at, _ in tail] == [("resolved", 6 * H + 60)]


def test_a_replay_closes_the_alert_of_a_bed_that_has_no_reading_any_more():
    """vitalmon replay's play(): bed 12 charted once (7), bed 13 charted every 10 min
    until t=3000. Bed 12's expiry at 1800 is in the replay, dated 1800, in time order
    with bed 13's readings (the replay ticks itself at each recorded instant)."""
    from monitor.replay import play

    readings = charted(SEVEN, 0, bed="12")
    for k in range(6):
        readings += charted(NORMAL, 600 * k, bed="13")
    readings.sort(key=lambda r: r.ts)
    (events,) = play(readings, [Engine(RulesConfig(), sinks=[])])
    got = [(e.bed, str(e.state), e.at - T0) for e in events if e.rule == "news2"]
    assert got == [("12", "active", 0), ("12", "resolved", 1800)]
    (closed,) = [e for e in events if e.rule == "news2" and e.state is AlertState.RESOLVED]
    assert closed.message.startswith("NEWS2 evidence expired: no fresh rr, spo2")


# ----------------------------------------------------------------- properties

#: options per parameter (NEWS2 points in comments)
OPTIONS: dict[str, list[float]] = {
    "rr": [16, 21, 25],  # 0, 2, 3
    "spo2": [97, 94, 91],  # 0, 1, 3
    "o2": [0, 1],  # 0, 2
    "sbp": [120, 105, 90],  # 0, 1, 3
    "hr": [75, 95, 115, 135],  # 0, 1, 2, 3
    "avpu": [0, 1],  # A 0, C 3
    "temp": [37.0, 38.5, 39.5],  # 0, 1, 2
}
GAPS = [1, 30, 59, 60, 61, 300, 600, 1199, 1200, 1201, 1799, 1800, 1801, 3600]
_RANK = {None: 0, Priority.LOW: 1, Priority.MEDIUM: 2, Priority.HIGH: 3}


@st.composite
def charted_sets(draw: Any) -> list[tuple[float, dict[str, float]]]:
    """Charted sets at integer seconds: mostly complete, sometimes a few parameters."""
    out: list[tuple[float, dict[str, float]]] = []
    t = 0.0
    for i in range(draw(st.integers(1, 12))):
        t += draw(st.sampled_from(GAPS)) if i else 0.0
        if draw(st.integers(0, 3)):  # 3 in 4: complete
            values = {p: draw(st.sampled_from(o)) for p, o in OPTIONS.items()}
        else:
            params = draw(st.lists(st.sampled_from(PARAMETERS), min_size=1, unique=True))
            values = {p: draw(st.sampled_from(OPTIONS[p])) for p in params}
        out.append((t, values))
    return out


def _trigger_rank(payload: dict[str, Any]) -> int:
    if payload["news2"] >= 7:
        return 3
    if payload["news2"] >= 5:
        return 2
    return 1 if 3 in payload["components"].values() else 0


def _epoch(iso_at: str) -> float:
    return round(datetime.fromisoformat(iso_at.replace("Z", "+00:00")).timestamp(), 3)


class _Watch:
    """What a ward display sees: the retained score and the alert, checked at every
    event and at every moment the monitor is asked (a set charted, a tick)."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.pub: dict[str, Any] | None = None
        self.history: list[tuple[float, int, bool]] = []  # (at, trigger rank, partial)
        self.alert = 0  # rank of the open alert's priority (0: none)
        self.last_at = -1.0

    def below_since(self, rank: int) -> float | None:
        start = None
        for at, r, _partial in self.history:
            start = (start if start is not None else at) if r < rank else None
        return start

    def see(self, updates: list[ScoreUpdate], events: list[AlertEvent]) -> None:
        items: list[tuple[float, int, Any]] = [
            (_epoch(u.payload["at"]), 0, u) for u in updates if u.payload is not None
        ]
        items += [(round(e.at, 3), 1, e) for e in events]
        for at, kind, item in sorted(items, key=lambda x: (x[0], x[1])):
            assert at >= self.last_at  # in time order
            self.last_at = at
            if kind == 0:
                self.pub = item.payload
                self.history.append((at, _trigger_rank(item.payload), item.payload["partial"]))
                continue
            e: AlertEvent = item
            assert self.pub is not None
            new = 0 if e.state is AlertState.RESOLVED else _RANK[e.priority]
            partial, rank = self.pub["partial"], _trigger_rank(self.pub)
            if e.state is AlertState.ACTIVE:
                assert not partial and new == rank  # the alert follows a complete score
            elif partial:  # no evidence: closed at once, and saying so
                assert e.message.startswith("NEWS2 evidence expired: no fresh ")
            else:
                assert rank == 0
            if new < self.alert and not (e.state is AlertState.RESOLVED and partial):
                start = self.below_since(self.alert)  # a step down: after a full hold
                assert start is not None and at >= start + self.hold - 1e-3
            self.alert = new

    def check(self, now: float, truth: dict[str, Any]) -> None:
        """At ``now`` (after the monitor's work due by then)."""
        if self.pub is None:
            return
        assert {k: self.pub[k] for k in truth} == truth  # the score of this instant
        rank = _trigger_rank(self.pub)
        if self.alert:
            assert not self.pub["partial"]  # never an alert on expired evidence
            assert rank <= self.alert  # a rise is immediate
            if rank < self.alert:  # lower: only within its hold
                start = self.below_since(self.alert)
                assert start is not None and now < start + self.hold
        elif not self.pub["partial"]:
            assert rank == 0  # a complete score that triggers has its alert


def _truth(tracker: News2Tracker, at: float, fresh: float) -> dict[str, Any]:
    s = tracker.current(at, fresh, strict=True)
    return {"news2": s.total, "missing": list(s.missing), "components": dict(s.components)}


def _feed_tracker(tracker: News2Tracker, values: dict[str, float], t: float) -> None:
    for r in charted(values, t):
        v: float | bool | str = r.value
        if r.vital == "avpu":
            v = AVPU_CODES[int(r.value)]
        elif r.vital == "o2":
            v = bool(r.value)
        tracker.update(r.vital, v, r.ts)


@settings(max_examples=300, deadline=None)
@given(
    hold=st.sampled_from([0.0, 60.0, 600.0]),
    fresh=st.sampled_from([1200.0, 1800.0]),
    sets=charted_sets(),
    ticks=st.lists(st.integers(0, 40_000), max_size=30),
)
def test_score_and_alert_never_disagree_and_holds_and_expiry_run_on_time(
    hold: float, fresh: float, sets: list[tuple[float, dict[str, float]]], ticks: list[int]
) -> None:
    """Random charted sets and random tick times (at half seconds: never the instant of a
    set): at every event and every moment asked, an open alert has a complete score at
    or above its trigger, or a lower one for less than hold_s; a step down comes only
    after a full hold; the retained score is the score of that instant. Ticks are
    idempotent, and the replay (no ticks) gives the same events up to its last set."""
    cfg = News2Config(hold_s=hold, freshness_s=fresh)
    clocked, plain = News2Scores(cfg), News2Scores(cfg)
    watch = _Watch(hold)
    tracker = News2Tracker()
    when = sorted(
        [(float(t), 0, i) for i, (t, _v) in enumerate(sets)] + [(k + 0.5, 1, -1) for k in ticks]
    )
    got: list[AlertEvent] = []
    replayed: list[AlertEvent] = []
    for t, kind, i in when:
        if kind == 1:
            updates, events = clocked.tick(T0 + t)
            assert clocked.tick(T0 + t) == ([], [])  # idempotent
        else:
            values = sets[i][1]
            updates, events = chart(clocked, values, t)
            replayed += chart(plain, values, t)[1]
            _feed_tracker(tracker, values, t)
        got += events
        watch.see(updates, events)
        watch.check(T0 + t, _truth(tracker, T0 + t, fresh))
    last = T0 + sets[-1][0]
    assert [e for e in got if e.at <= last] == replayed
    # the daemon goes on after the last set: everything is closed when the evidence is
    # gone, at the latest freshness_s after the last set
    updates, events = clocked.tick(T0 + 10**6)
    watch.see(updates, events)
    watch.check(T0 + 10**6, _truth(tracker, T0 + 10**6, fresh))
    assert watch.alert == 0 and watch.pub is not None and watch.pub["partial"]


@settings(max_examples=200, deadline=None)
@given(
    hold=st.sampled_from([0.0, 60.0, 600.0]),
    sets=charted_sets(),
    t1=st.floats(0, 30_000),
    t2=st.floats(0, 30_000),
)
def test_tick_t1_then_t2_is_tick_t2_alone(
    hold: float, sets: list[tuple[float, dict[str, float]]], t1: float, t2: float
) -> None:
    t1, t2 = sorted((t1, t2))
    s = News2Scores(News2Config(hold_s=hold))
    for t, values in sets:
        chart(s, values, t)
    start = T0 + sets[-1][0]
    twice = copy.deepcopy(s)
    u1, e1 = twice.tick(start + t1)
    u2, e2 = twice.tick(start + t2)
    once_u, once_e = s.tick(start + t2)
    assert (u1 + u2, e1 + e2) == (once_u, once_e)
    assert twice.tick(start + t2) == s.tick(start + t2) == ([], [])
    # and the two go on alike
    assert twice.tick(start + 10**6) == s.tick(start + 10**6)


def test_ten_thousand_quiet_beds_cost_one_comparison_per_tick():
    s = News2Scores(News2Config())
    for b in range(10_000):
        chart(s, NORMAL, 0, bed=str(b))
    assert len(s._heap) == 10_000
    for sec in range(1, 1800):
        assert s.tick(T0 + sec) == ([], [])
    updates, events = s.tick(T0 + 1800)  # every set expires now
    assert len(updates) == 10_000 and events == []
    assert all(b.due is None for b in s.beds.values())
