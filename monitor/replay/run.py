"""The replay itself: the recording through vitalmon's engine and through a naive
monitor (:func:`naive_rules`), and the comparison of the two (:class:`Report`)."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.config import RulesConfig
from monitor.engine import Engine
from monitor.model import (
    AlertEvent,
    AlertState,
    Priority,
    Reading,
    iso,
)
from monitor.replay.recording import Recording


def naive_rules(rules: RulesConfig) -> RulesConfig:
    """The same limits with no condition delay, no hysteresis, no artefact rejection, no
    trend rules and no flapping detection: what a plain threshold monitor does."""
    data = rules.model_dump()
    for tc in data["thresholds"].values():
        tc["delay_s"] = 0.0
        tc["clear_band"] = 0.0
        tc["confirm"] = 1  # no artefact rejection
    data["trends"]["enabled"] = False
    data["flapping"]["enabled"] = False
    # every value that passes the input check counts, as on a plain monitor
    data["plausibility"]["ranges"] = {v: None for v in data["plausibility"]["ranges"]}
    data["plausibility"]["disagree"] = {}
    return RulesConfig.model_validate(data)


def play(
    readings: Sequence[Reading],
    engines: Sequence[Engine],
    speed: float | None = None,
    on_events: Callable[[int, list[AlertEvent]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[list[AlertEvent]]:
    """Feed readings (in ts order) to every engine; -> each engine's alert events.

    ``speed`` None runs as fast as possible; ``N`` sleeps so that the readings of each
    instant are processed N times faster than they were recorded. Rules use event time
    only, so the events do not depend on the speed. ``on_events(engine index, events)``
    is called as soon as an instant produces events.
    """
    out: list[list[AlertEvent]] = [[] for _ in engines]
    if not readings:
        return out
    t0, w0 = readings[0].ts, clock()
    i, n = 0, len(readings)
    while i < n:
        j = i
        ts = readings[i].ts
        while j < n and readings[j].ts == ts:
            j += 1
        if speed is not None:
            wait = w0 + (ts - t0) / speed - clock()
            if wait > 0:
                sleep(wait)
        for k, engine in enumerate(engines):
            group = list(readings[i:j])
            # the clock's work due before this instant first (NEWS2 holds and expiry of
            # beds with no reading now), as the daemon's tick; process() does a bed's own
            # (what is due at the instant itself is judged with its readings)
            events = engine.tick(math.nextafter(ts, -math.inf)) + engine.process(group)
            engine.take_score_updates()  # (a replay publishes no scores: none pile up)
            if k == 0 and isinstance(readings, list):
                readings[i:j] = group  # flagged as vitalmon judged them (stored so)
            if events:
                out[k].extend(events)
                if on_events is not None:
                    on_events(k, events)
        i = j
    return out


def summarize(events: Sequence[AlertEvent], rec: Recording) -> dict[str, Any]:
    """The numbers of one monitor's run (the table and the JSON show exactly these)."""
    hours = rec.duration_s / 3600.0
    top: dict[str, Priority] = {}
    raised_at: dict[str, float] = {}
    resolved_at: dict[str, float] = {}
    by_rule: Counter[str] = Counter()
    last: dict[str, Priority] = {}
    escalations = 0
    rank = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2}
    for e in events:
        if e.state == AlertState.ACTIVE and e.id not in top:
            top[e.id] = last[e.id] = e.priority
            raised_at[e.id] = e.at
            by_rule[f"{e.rule}@{e.device}"] += 1
        elif e.state == AlertState.ACTIVE:
            if rank[e.priority] > rank[last[e.id]]:
                escalations += 1
            if rank[e.priority] > rank[top[e.id]]:
                top[e.id] = e.priority
            last[e.id] = e.priority
        elif e.state == AlertState.RESOLVED:
            resolved_at[e.id] = e.at
    end = rec.end
    intervals = sorted((raised_at[a], resolved_at.get(a, end)) for a in raised_at)
    in_alarm = 0.0
    cur_start: float | None = None
    cur_end = 0.0
    for s, e_ in intervals:
        if cur_start is None or s > cur_end:
            if cur_start is not None:
                in_alarm += cur_end - cur_start
            cur_start, cur_end = s, e_
        else:
            cur_end = max(cur_end, e_)
    if cur_start is not None:
        in_alarm += cur_end - cur_start
    raised = len(top)
    return {
        "raised": raised,
        "reached_high": sum(p == Priority.HIGH for p in top.values()),
        "medium_only": sum(p == Priority.MEDIUM for p in top.values()),
        "escalations": escalations,
        "events": len(events),
        "burden_per_h": round(raised / hours, 2) if hours > 0 else None,
        "time_in_alarm_s": round(in_alarm, 1),
        "time_in_alarm_pct": round(100.0 * in_alarm / rec.duration_s, 1)
        if rec.duration_s > 0
        else None,
        "active_at_end": sum(1 for a in raised_at if a not in resolved_at),
        "by_rule": dict(sorted(by_rule.items())),
    }


@dataclass(slots=True)
class Report:
    rec: Recording
    rules_note: str | None
    vitalmon: list[AlertEvent]
    naive: list[AlertEvent]
    speed: float | None
    elapsed_s: float
    #: the rules vitalmon ran with (fitted to the sampling interval)
    rules: RulesConfig = field(default_factory=RulesConfig)

    def summary(self) -> dict[str, dict[str, Any]]:
        return {
            "vitalmon": summarize(self.vitalmon, self.rec),
            "naive": summarize(self.naive, self.rec),
        }

    def to_json(self) -> dict[str, Any]:
        rec = self.rec
        summary = self.summary()

        def alerts(events: list[AlertEvent]) -> list[dict[str, Any]]:
            return [{"offset_s": e.at - rec.start, **e.to_json()} for e in events]

        return {
            "file": rec.path,
            "ward": rec.ward,
            "bed": rec.bed,
            "start": iso(rec.start),
            "rows": rec.rows,
            "interval_s": rec.interval_s,
            "duration_s": rec.duration_s,
            "hours": round(rec.duration_s / 3600.0, 2),
            "columns": {name: str(col) for name, col in rec.columns.items()},
            "ignored_columns": rec.ignored,
            "readings": {
                "accepted": len(rec.readings),
                "missing": sum(rec.missing.values()),
                "rejected": sum(rec.rejected.values()),
                "rejected_by_cause": {
                    f"{col}:{cause}": n for (col, cause), n in sorted(rec.rejected.items())
                },
            },
            "rules_note": self.rules_note,
            "speed": "max" if self.speed is None else self.speed,
            "vitalmon": {"summary": summary["vitalmon"], "alerts": alerts(self.vitalmon)},
            "naive": {"summary": summary["naive"], "alerts": alerts(self.naive)},
        }


def replay(
    rec: Recording,
    rules: RulesConfig | None = None,
    speed: float | None = None,
    on_event: Callable[[AlertEvent], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Report:
    """Run a recording through vitalmon's engine and the naive monitor side by side.

    ``on_event`` sees each of vitalmon's events as it happens (live printing).
    """
    fitted, note = rules if rules is not None else RulesConfig(), None
    engines = [Engine(fitted, sinks=[]), Engine(naive_rules(fitted), sinks=[])]

    def forward(k: int, events: list[AlertEvent]) -> None:
        if k == 0 and on_event is not None:
            for e in events:
                on_event(e)

    w0 = time.monotonic()
    vitalmon, naive = play(rec.readings, engines, speed, forward, sleep=sleep)
    return Report(rec, note, vitalmon, naive, speed, time.monotonic() - w0, fitted)
