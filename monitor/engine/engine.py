"""The engine: per-series windows and rules, evaluated on event time.

Contract of :class:`Engine`:

* ``put(batch)`` is what sources await to hand readings in; it waits while the
  bounded queue is full (back-pressure).
* ``run()`` takes batches in arrival order. For each reading it updates its series'
  window, evaluates that series' rules at the series' newest reading, then hands the
  batch's readings and any alert events to every sink (awaiting their back-pressure);
  the batch's ``done`` goes to the durable sink, which calls it after its commit.
* ``stop()`` is called after every source has stopped; ``run()`` returns once all that
  was queued before it has been processed and handed on.
* ``process(readings)`` is the synchronous core, used by ``run`` and by replays.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

from monitor.config import RulesConfig
from monitor.engine.lifecycle import Lifecycle
from monitor.engine.score import RULE as NEWS2_RULE
from monitor.engine.score import News2Scores, ScoreUpdate
from monitor.engine.technical import Staleness
from monitor.engine.threshold import Active, SeriesKey, ThresholdRule
from monitor.engine.trend import TrendRule, build_trend_rules
from monitor.engine.window import Window
from monitor.model import AlertEvent, AlertState, Priority, Reading
from monitor.queues import put_end
from monitor.sinks import Sink
from monitor.sources import Batch

log = logging.getLogger("vitalmon.engine")


class ScoreSink(Protocol):
    async def write_scores(self, updates: list[ScoreUpdate]) -> None: ...


class _Series:
    __slots__ = ("active", "next_eval", "window")

    def __init__(self, span_s: float, rules: int) -> None:
        self.window = Window(span_s)
        self.active: list[Active | None] = [None] * rules
        self.next_eval: list[float] = [float("-inf")] * rules  #: throttled (trend) rules


class Engine:
    def __init__(
        self,
        rules: RulesConfig,
        sinks: Sequence[Sink],
        queue_size: int = 10_000,
        durable: Sink | None = None,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.cfg = rules
        self.sinks = list(sinks)
        #: The sink whose commit releases a batch at its origin (the journal).
        self.durable = durable
        #: Acknowledge / escalate / re-notify; rule events pass through it on their way out.
        self.lifecycle = lifecycle
        self.scores = News2Scores(rules.news2)
        #: Where changed NEWS2 scores go (the MQTT publisher: retained score topic).
        self.score_sink: ScoreSink | None = None
        #: Silence per device (wall clock of arrival); set by the daemon.
        self.staleness: Staleness | None = None
        self._score_updates: list[ScoreUpdate] = []
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=queue_size)
        self.rules: dict[str, list[ThresholdRule | TrendRule]] = {
            vital: list(ThresholdRule.from_config(vital, tc, rules.max_gap_s))
            for vital, tc in rules.thresholds.items()
        }
        for vital, trend_rules in build_trend_rules(rules.trends).items():
            self.rules.setdefault(vital, []).extend(trend_rules)
        #: Event time each vital's window keeps: long enough for its slowest rule.
        self.span_s = {
            vital: max(rules.window_s, rules.trends.needs_s(vital)) for vital in self.rules
        }
        self.series: dict[SeriesKey, _Series] = {}
        self.counts: Counter[str] = Counter()

    def restore(self, alerts: Sequence[AlertEvent]) -> list[AlertEvent]:
        """Carry alerts that were active at the last stop into this run.

        Each goes on with its id and seq, and resolves as soon as a reading allows. An
        alert whose rule no longer exists is resolved now; those events are returned.
        """
        orphans: list[AlertEvent] = []
        for e in alerts:
            if e.rule == NEWS2_RULE:
                self.scores.restore(e)
                continue
            key = SeriesKey(e.ward, e.bed, e.device, e.vital)
            rules = self.rules.get(e.vital, [])
            index = next((i for i, r in enumerate(rules) if r.name == e.rule), None)
            if index is None:
                e.seq += 1
                e.state = AlertState.RESOLVED
                e.message = f"{e.rule}: rule no longer configured; alarm closed at restart"
                orphans.append(e)
                continue
            series = self.series.get(key)
            if series is None:
                span = self.span_s.get(e.vital, self.cfg.window_s)
                series = self.series[key] = _Series(span, len(rules))
            levels = rules[index].limits
            level = 2 if e.priority == Priority.HIGH and 2 in levels else min(levels)
            series.active[index] = Active(e.id, level, e.started_at, e.seq, e.device, e.patient)
        if alerts:
            log.info(
                "carried over %d active alert(s) from the last run", len(alerts) - len(orphans)
            )
        return orphans

    async def put(self, batch: Batch) -> None:
        await self.queue.put(batch)

    def stop(self) -> None:
        """Queue the end marker behind everything already queued (never waits)."""
        put_end(self.queue, "engine")

    async def run(self) -> None:
        while True:
            batch = await self.queue.get()
            if batch is None:
                return
            raised = self.process(batch.readings)
            if self.staleness is not None:
                arrived = batch.received_at or time.time()
                for r in batch.readings:
                    raised += self.staleness.seen(r.ward, r.bed, r.device, arrived)
            if self._score_updates:
                updates, self._score_updates = self._score_updates, []
                if self.score_sink is not None:
                    await self.score_sink.write_scores(updates)
            if self.lifecycle is not None:
                raised = [self.lifecycle.observe(e) for e in raised]
            events = [*batch.events, *raised]  # batch.events went through the lifecycle
            for sink in self.sinks:
                done = batch.done if sink is self.durable else None
                await sink.write(batch.readings, events, done)

    def active_alerts(self) -> int:
        return sum(a is not None for s in self.series.values() for a in s.active)

    def process(self, readings: Sequence[Reading]) -> list[AlertEvent]:
        """Evaluate readings in order; returns the alert events they cause."""
        events: list[AlertEvent] = []
        for r in readings:
            self.counts["readings"] += 1
            key = SeriesKey(r.ward, r.bed, r.device, r.vital)
            rules = self.rules.get(r.vital, ())
            series = self.series.get(key)
            if series is None:
                span = self.span_s.get(r.vital, self.cfg.window_s)
                series = self.series[key] = _Series(span, len(rules))
            win = series.window
            if r.ts < win.newest - self.cfg.max_lag_s:
                self.counts["late"] += 1  # stored, too late to change the present
                continue
            win.add(r.ts, r.value)
            update, score_event = self.scores.observe(r)
            if update is not None:
                self._score_updates.append(update)
            if score_event is not None:
                self.counts[f"alert_{score_event.state}"] += 1
                events.append(score_event)
            if not rules:
                continue
            ts, vals = win.ts, win.values
            newest = win.newest
            for i, rule in enumerate(rules):
                every = getattr(rule, "every_s", 0.0)
                if every:  # trend rules: at most once per `every` of event time
                    if newest < series.next_eval[i]:
                        continue
                    series.next_eval[i] = newest + every
                active, event = rule.evaluate(key, ts, vals, series.active[i], r.patient)
                series.active[i] = active
                if event is not None:
                    self.counts[f"alert_{event.state}"] += 1
                    events.append(event)
        return events
