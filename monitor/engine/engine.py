"""The engine: per-series windows and rules, evaluated on event time.

Contract of :class:`Engine`:

* ``put(batch)`` is what sources await to hand readings in; it waits while the
  bounded queue is full (back-pressure).
* ``run()`` takes batches in arrival order. For each reading it updates its series'
  window, evaluates that series' rules at the series' newest reading, then hands the
  batch's readings and any alert events to every sink (awaiting their back-pressure),
  the durable sink last so that alerts never wait behind storage; the batch's ``done``
  goes to the durable sink, which calls it after its commit.
* ``stop()`` is called after every source has stopped; ``run()`` returns once all that
  was queued before it has been processed and handed on.
* ``process(readings)`` is the synchronous core, used by ``run`` and by replays.
* ``tick(now)`` does the time-driven rule work due by ``now`` (NEWS2 holds and input
  expiry); ``run`` calls it for a batch with a ``tick`` (the daemon's clock, once a
  second), and ``process`` does a bed's due work up to each reading's event time first,
  so a replay without a clock gets the same events, dated the same.
* ``capacity`` (set by the daemon; None in a replay) bounds what input can make the
  engine keep: a reading of a bed, device or series beyond ``engine.max_*`` or the
  ``engine.new_*`` rates is stored flagged, not evaluated, and raises ``engine.capacity``
  (:mod:`monitor.engine.capacity`). ``sweep(now)``, the daemon's wall-clock housekeeping,
  forgets the devices of beds nobody expects once stale for ``rules.stale_expire_s``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol, TypeVar

from monitor.config import Profile, RulesConfig
from monitor.engine.capacity import CAPACITY, RATE_LIMITED, Capacity
from monitor.engine.device_alarms import DeviceAlarms
from monitor.engine.flapping import Flapping
from monitor.engine.lifecycle import Lifecycle
from monitor.engine.modes import Cadence, Modes
from monitor.engine.plausibility import HISTORY, IMPLAUSIBLE, LATE, Peer, Plausibility
from monitor.engine.score import RULE as NEWS2_RULE
from monitor.engine.score import News2Scores, ScoreUpdate
from monitor.engine.sensor import SensorState
from monitor.engine.technical import Staleness
from monitor.engine.threshold import PRIORITY, Active, SeriesKey, ThresholdRule
from monitor.engine.trend import TrendRule, build_trend_rules
from monitor.engine.window import Window
from monitor.model import (
    INTERMITTENT,
    Admission,
    AlertEvent,
    AlertState,
    BedCommand,
    DeviceAlarmReport,
    DeviceStatus,
    Priority,
    Reading,
)
from monitor.queues import put_end
from monitor.sinks import Sink
from monitor.sources import Batch

log = logging.getLogger("vitalmon.engine")


class ScoreSink(Protocol):
    async def write_scores(self, updates: list[ScoreUpdate]) -> None: ...


Rule = ThresholdRule | TrendRule
#: Why a stored reading was not evaluated (``counts`` keys, metric label ``reason``):
#: older than its series' present by more than max_lag_s; the same measurement again;
#: and the flags a reading is stored with (monitor.engine.plausibility); beyond the
#: engine's bounds or rates (monitor.engine.capacity: stored flagged so, never watched).
NOT_EVALUATED = ("late", "repeated", "implausible", "disputed", "history", CAPACITY, RATE_LIMITED)
#: A device (or bed) forgotten after rules.stale_expire_s: what its alarms say.
FORGOTTEN = (
    "forgotten after rules.stale_expire_s of silence (a bed neither listed under beds "
    "nor admitted); alarm closed"
)
#: Readings behind their device's present, advancing, arriving live, in a row: the
#: device's clock went back; its new time becomes the present (Engine._rebase).
REBASE_AFTER = 3
#: What the engine gates besides readings (monitor.engine.capacity).
_Item = TypeVar("_Item", DeviceStatus, DeviceAlarmReport)
#: Profile of a bed nobody assigned one to.
DEFAULT_PROFILE = "adult"


class _Series:
    __slots__ = (
        "active",
        "auto_spot",
        "behind",
        "cadence",
        "configured",
        "entry",
        "flagged",
        "gap",
        "last",
        "next_eval",
        "rules",
        "window",
    )

    def __init__(self, span_s: float, rules: list[Rule], configured: str | None) -> None:
        self.window = Window(span_s)
        self.active: list[Active | None] = [None] * len(rules)
        self.next_eval: list[float] = [float("-inf")] * len(rules)  #: throttled (trend) rules
        self.cadence = Cadence()  #: the series' own interval (event time)
        self.configured = configured  #: its mode from rules.modes.patterns (None: none)
        self.flagged = False  #: an implausible or disputed run, or its alarm, is open
        #: the newest value measured (evaluated or disputed): what another device of the
        #: bed measuring the vital is compared with; (-inf, nan) before any
        self.last: tuple[float, float] = (float("-inf"), math.nan)
        #: readings behind the device's present, advancing, in a row: (count, first ts,
        #: first arrival, latest ts) -> the device's clock went back (Engine._rebase)
        self.behind: tuple[int, float, float, float] = (0, 0.0, 0.0, float("-inf"))
        #: from the cadence (kept up to date by retune): auto mode says intermittent, and
        #: the longest gap a continuous run may have
        self.auto_spot = True
        self.gap = 0.0
        self.set_rules(rules)

    def beyond(self, value: float) -> bool:
        """Whether ``value`` is beyond the least extreme limit of a threshold rule."""
        lo, hi = self.entry
        return (lo is not None and value < lo) or (hi is not None and value > hi)

    def retune(self, modes: Modes, max_gap_s: float) -> None:
        """The cadence changed (or the config): what the mode and the gap follow from it."""
        self.auto_spot = modes.resolve(None, None, self.cadence) == INTERMITTENT
        self.gap = modes.max_gap(max_gap_s, self.cadence)

    def set_rules(self, rules: list[Rule]) -> None:
        self.rules = rules  #: the rules of the bed's profile for this vital
        #: least extreme low and high threshold limits (plausibility: "within limits")
        lows = [r._entry for r in rules if isinstance(r, ThresholdRule) and r.side == "low"]
        highs = [r._entry for r in rules if isinstance(r, ThresholdRule) and r.side == "high"]
        self.entry = (max(lows) if lows else None, min(highs) if highs else None)
        #: a continuous series sampled less often than its window keeps what a run needs
        self.window.min_keep = max([2, *(r.confirm for r in rules if isinstance(r, ThresholdRule))])

    def reset_window(self) -> None:
        """A new timeline (the device's clock went back): what the window held is from
        another time; the cadence's intervals stay (the device's rate did not change)."""
        old = self.window
        self.window = Window(old.span_s, min_keep=old.min_keep)
        self.next_eval = [float("-inf")] * len(self.rules)
        self.cadence.last = float("-inf")


class Engine:
    def __init__(
        self,
        rules: RulesConfig,
        sinks: Sequence[Sink],
        queue_size: int = 10_000,
        durable: Sink | None = None,
        lifecycle: Lifecycle | None = None,
        profiles: Mapping[str, Profile] | None = None,
        beds: Mapping[tuple[str, str], str] | None = None,
    ) -> None:
        self.sinks = list(sinks)
        #: The sink whose commit releases a batch at its origin (the journal).
        self.durable = durable
        #: Acknowledge / escalate / re-notify; rule events pass through it on their way out.
        self.lifecycle = lifecycle
        self.scores = News2Scores(rules.news2)
        #: A rule raising and clearing over and over becomes one ``flapping`` alert.
        self.flapping = Flapping(rules.flapping)
        #: Device-reported sensor/signal flags -> technical alarms.
        self.sensors = SensorState()
        #: Alarms and INOPs devices report themselves -> alerts (kind device/technical).
        self.device_alarms = DeviceAlarms()
        #: Where changed NEWS2 scores go (the MQTT publisher: retained score topic).
        self.score_sink: ScoreSink | None = None
        #: Silence per device (wall clock of arrival); set by the daemon.
        self.staleness: Staleness | None = None
        #: Bounds and rates on new beds, devices and series; set by the daemon (None: none,
        #: as in a replay, whose input is bounded by its recording).
        self.capacity: Capacity | None = None
        #: Called with the seconds from a batch's arrival to the alert events it raised.
        self.on_latency: Callable[[float], None] | None = None
        self._score_updates: list[ScoreUpdate] = []
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=queue_size)
        self.series: dict[SeriesKey, _Series] = {}
        #: (ward, bed, device) -> the newest event time the device has shown (history is
        #: older); the device is a series' device before its ".channel": a monitor's
        #: channels share its clock, another device keeps its own
        self._dev_now: dict[tuple[str, str, str], float] = {}
        #: (ward, bed, vital) -> its series, one per device (plausibility: disputes)
        self._peers: dict[tuple[str, str, str], list[_Series]] = {}
        self.counts: Counter[str] = Counter()
        self._last_failure_log = -math.inf  #: monotonic time of the last failure logged
        #: (ward, bed) -> profile name, for beds not on the default profile.
        self.bed_profile: dict[tuple[str, str], str] = {}
        #: (ward, bed) -> profile from the config's ``beds``.
        self.config_beds: dict[tuple[str, str], str] = dict(beds or {})
        #: (ward, bed) -> admission (``vitalmon/cmd/admit``) until discharged.
        self.admissions: dict[tuple[str, str], Admission] = {}
        #: (ward, bed) -> admitted patient id (alerts carry it when readings do not).
        self.patients: dict[tuple[str, str], str] = {}
        self._configure(rules, profiles)
        for ward, bed in self.config_beds:
            self._assign(ward, bed, None)

    def _configure(self, rules: RulesConfig, profiles: Mapping[str, Profile] | None) -> None:
        """Build every profile's rules from ``rules`` (and ``profiles``: the effective
        limits per profile, see :meth:`Config.resolve_profiles`)."""
        self.cfg = rules
        self.modes = Modes(rules.modes)
        plausibility: Plausibility | None = getattr(self, "plausibility", None)
        if plausibility is None:
            self.plausibility = Plausibility(rules.plausibility)
        else:
            plausibility.configure(rules.plausibility)
        for key, series in getattr(self, "series", {}).items():
            series.configured = self.modes.configured(key.device, key.vital)
            series.retune(self.modes, rules.max_gap_s)
        if not profiles:
            profiles = {
                DEFAULT_PROFILE: Profile(DEFAULT_PROFILE, dict(rules.thresholds), rules.news2.scale)
            }
        self.profiles = dict(profiles)
        trends = build_trend_rules(rules.trends)
        self.rulesets: dict[str, dict[str, list[Rule]]] = {}
        for name, profile in self.profiles.items():
            ruleset: dict[str, list[Rule]] = {
                vital: list(ThresholdRule.from_config(vital, tc, rules.max_gap_s))
                for vital, tc in profile.thresholds.items()
            }
            for vital, trend_rules in trends.items():
                ruleset.setdefault(vital, []).extend(trend_rules)
            self.rulesets[name] = ruleset
        #: The default profile's rules per vital.
        self.rules = self.rulesets.get(DEFAULT_PROFILE) or next(iter(self.rulesets.values()))
        #: Event time each vital's window keeps: long enough for its slowest rule.
        self.span_s = {
            vital: max(rules.window_s, rules.trends.needs_s(vital))
            for ruleset in self.rulesets.values()
            for vital in ruleset
        }

    def ruleset(self, ward: str, bed: str) -> dict[str, list[Rule]]:
        name = self.bed_profile.get((ward, bed), DEFAULT_PROFILE)
        return self.rulesets.get(name, self.rules)

    def _new_series(self, key: SeriesKey) -> _Series:
        rules = self.ruleset(key.ward, key.bed).get(key.vital, [])
        span = self.span_s.get(key.vital, self.cfg.window_s)
        configured = self.modes.configured(key.device, key.vital)
        series = self.series[key] = _Series(span, rules, configured)
        series.retune(self.modes, self.cfg.max_gap_s)
        self._peers.setdefault((key.ward, key.bed, key.vital), []).append(series)
        if self.capacity is not None:  # (counted: an alert carried over keeps its series)
            self.capacity.keep(key.ward, key.bed, key.device)
        return series

    def expected(self, ward: str, bed: str) -> bool:
        """Listed under ``beds:`` or admitted: always evaluated, never expires."""
        return (ward, bed) in self.config_beds or (ward, bed) in self.admissions

    def _admit(
        self, ward: str, bed: str, device: str, new_series: bool, now: float | None
    ) -> str | None:
        """None: the engine may keep the device (and a new series); else why not."""
        if self.capacity is None:
            return None
        at = time.time() if now is None else now
        return self.capacity.admit(
            ward, bed, device, new_series, self.expected(ward, bed), len(self.series), at
        )

    def _refuse(
        self, why: str, ward: str, bed: str, now: float | None, reading: bool = True
    ) -> list[AlertEvent]:
        """Count a refusal; -> the capacity alarm when it raises it."""
        assert self.capacity is not None
        if reading:
            self.counts[why] += 1
        event = self.capacity.refuse(
            why, ward, bed, time.time() if now is None else now, len(self.series), reading
        )
        return [] if event is None else [event]

    def _gate(self, items: list[_Item], now: float, raised: list[AlertEvent]) -> list[_Item]:
        """Statuses or device alarm reports: those of devices the engine may keep."""
        kept = []
        for it in items:
            why = self._admit(it.ward, it.bed, it.device, False, now)
            if why is None:
                kept.append(it)
            else:
                raised += self._refuse(why, it.ward, it.bed, now, reading=False)
        return kept

    def _others(self, key: SeriesKey, series: _Series) -> list[Peer]:
        """The latest valid value of the vital from the bed's other devices."""
        return [
            (*o.last, o.entry)
            for o in self._peers.get((key.ward, key.bed, key.vital), ())
            if o is not series and o.last[0] > -math.inf
        ]

    def restore(self, alerts: Sequence[AlertEvent]) -> list[AlertEvent]:
        """Carry alerts that were active at the last stop into this run.

        Each goes on with its id and seq, and resolves as soon as a reading allows. An
        alert whose rule no longer exists is resolved now; those events are returned.
        """
        orphans: list[AlertEvent] = []
        for e in alerts:
            if e.rule == NEWS2_RULE:
                self.scores.restore(e, time.time())
                continue
            if self.device_alarms.restore(e):
                continue  # the device's next report goes on with it or ends it
            key = SeriesKey(e.ward, e.bed, e.device, e.vital)
            rules = self.ruleset(e.ward, e.bed).get(e.vital, [])
            index = next((i for i, r in enumerate(rules) if r.name == e.rule), None)
            if index is None:
                e.seq += 1
                e.state = AlertState.RESOLVED
                e.message = f"{e.rule}: rule no longer configured; alarm closed at restart"
                if e.rule.endswith(".flapping"):
                    e.message = f"{e.rule}: flapping is judged afresh after a restart; closed"
                elif e.kind == "technical":
                    e.message = (
                        f"{e.rule}: judged afresh after a restart (raised again if the "
                        "condition persists)"
                    )
                orphans.append(e)
                continue
            series = self.series.get(key) or self._new_series(key)
            levels = rules[index].limits
            level = 2 if e.priority == Priority.HIGH and 2 in levels else min(levels)
            series.active[index] = Active(e.id, level, e.started_at, e.seq, e.device, e.patient)
        if alerts:
            log.info(
                "carried over %d active alert(s) from the last run", len(alerts) - len(orphans)
            )
        return orphans

    # ------------------------------------------------------------ beds, profiles

    def _profile_of(self, ward: str, bed: str) -> str:
        adm = self.admissions.get((ward, bed))
        if adm is not None and adm.profile is not None:
            return adm.profile
        return self.config_beds.get((ward, bed), DEFAULT_PROFILE)

    def _assign(self, ward: str, bed: str, at: float | None) -> list[AlertEvent]:
        """Give the bed the rules and NEWS2 scale of its profile (admission, else config)."""
        name = self._profile_of(ward, bed)
        if name not in self.profiles:
            log.warning(
                "bed %s/%s: profile %r is no longer configured; using %s",
                ward,
                bed,
                name,
                DEFAULT_PROFILE,
            )
            name = DEFAULT_PROFILE
        if name == DEFAULT_PROFILE:
            self.bed_profile.pop((ward, bed), None)
        else:
            self.bed_profile[(ward, bed)] = name
        self.scores.set_scale(ward, bed, self.profiles[name].news2_scale)
        return self._rebind(lambda k: k.ward == ward and k.bed == bed, at)

    def _rebind(self, which: Callable[[SeriesKey], bool], at: float | None) -> list[AlertEvent]:
        """Series chosen by ``which`` take their bed's current rules. A rule kept (same
        name) keeps its alert, so an active alarm is never reset by new limits; an alarm
        of a rule the bed no longer has is resolved."""
        events: list[AlertEvent] = []
        for key, series in self.series.items():
            if not which(key):
                continue
            rules = self.ruleset(key.ward, key.bed).get(key.vital, [])
            series.window.span_s = self.span_s.get(key.vital, self.cfg.window_s)
            old = {
                r.name: (r, a, n)
                for r, a, n in zip(series.rules, series.active, series.next_eval, strict=True)
            }
            series.active = []
            series.next_eval = []
            for rule in rules:
                _r, a, n = old.pop(rule.name, (rule, None, float("-inf")))
                series.active.append(a)
                series.next_eval.append(n)
            series.set_rules(rules)
            when = series.window.newest if at is None else at
            for rule, a, _n in old.values():
                if a is not None:
                    events.append(
                        self._close(
                            key,
                            rule,
                            a,
                            series,
                            when,
                            f"{rule.name} no longer applies to this bed "
                            "(limits changed); alarm closed",
                        )
                    )
        return events

    def _close(
        self, key: SeriesKey, rule: Rule, a: Active, series: _Series, at: float, message: str
    ) -> AlertEvent:
        """The resolution of an alert closed by an operator action, not by its rule."""
        a.seq += 1
        trend = isinstance(rule, TrendRule)
        level = a.level if a.level in rule.limits else min(rule.limits)
        value = float(series.window.values[-1]) if len(series.window) else math.nan
        self.counts["alert_resolved"] += 1
        return AlertEvent(
            id=a.id,
            ward=key.ward,
            bed=key.bed,
            device=a.device,
            patient=a.patient,
            vital=key.vital,
            rule=rule.name,
            kind="trend" if trend else "physiological",
            priority=rule.priority if isinstance(rule, TrendRule) else PRIORITY[level],
            state=AlertState.RESOLVED,
            value=value,
            limit=rule.limits[level],
            message=message,
            started_at=a.started_at,
            at=at,
            seq=a.seq,
        )

    def check_admit(self, a: Admission) -> None:
        """ValueError with the reason when ``a`` cannot be applied."""
        if a.profile is not None and a.profile not in self.profiles:
            raise ValueError(
                f"unknown profile {a.profile!r} (known: {', '.join(sorted(self.profiles))})"
            )
        current = self.admissions.get((a.ward, a.bed))
        if current is not None and current.patient != a.patient:
            raise ValueError(
                f"bed {a.ward}/{a.bed} is occupied by another patient: discharge it first"
            )
        limit = None if self.capacity is None else self.capacity.cfg.max_beds
        if current is None and limit is not None and len(self.admissions) >= limit:
            # admitted beds are always evaluated and never expire: bounded too
            raise ValueError(
                f"{limit} beds admitted already (engine.max_beds): discharge one first"
            )

    def admit(self, a: Admission) -> list[AlertEvent]:
        """A patient is in the bed (re-admitting the same patient changes the profile)."""
        self.check_admit(a)
        self.admissions[(a.ward, a.bed)] = a
        self.patients[(a.ward, a.bed)] = a.patient
        if self.staleness is not None:
            self.staleness.expect(a.ward, a.bed, time.time())
        return self._assign(a.ward, a.bed, a.at)

    def discharge(self, ward: str, bed: str, at: float) -> list[AlertEvent]:
        """The bed is empty: its alerts resolve, its windows and scores reset."""
        events: list[AlertEvent] = []
        if self.capacity is not None:
            self.capacity.forget_bed(ward, bed)
        self.admissions.pop((ward, bed), None)
        self.patients.pop((ward, bed), None)
        for key in [k for k in self.series if k.ward == ward and k.bed == bed]:
            series = self.series.pop(key)
            self._peers.pop((ward, bed, key.vital), None)
            for rule, a in zip(series.rules, series.active, strict=True):
                if a is not None:
                    events.append(
                        self._close(key, rule, a, series, at, "patient discharged: alarm closed")
                    )
        events += self.flapping.reset_bed(ward, bed)
        events += self.sensors.reset_bed(ward, bed)
        events += self.device_alarms.reset_bed(ward, bed)
        events += self.plausibility.reset_bed(ward, bed, at)
        update, event = self.scores.discharge(ward, bed, at)
        if update is not None:
            self._score_updates.append(update)
        if event is not None:
            events.append(event)
        if self.staleness is not None:
            events += self.staleness.forget(ward, bed, at)
        self._assign(ward, bed, at)  # back to the bed's configured profile
        return events

    def restore_admissions(self, admissions: Sequence[Admission]) -> None:
        """Beds admitted at the last stop (from the store)."""
        for stored in admissions:
            a = stored
            if a.profile is not None and a.profile not in self.profiles:
                log.warning(
                    "bed %s/%s was admitted with profile %r, no longer configured; "
                    "using the bed's configured profile",
                    a.ward,
                    a.bed,
                    a.profile,
                )
                a = replace(a, profile=None)
            self.admissions[(a.ward, a.bed)] = a
            self.patients[(a.ward, a.bed)] = a.patient
            self._assign(a.ward, a.bed, None)

    def reconfigure(
        self,
        rules: RulesConfig,
        profiles: Mapping[str, Profile],
        beds: Mapping[tuple[str, str], str],
    ) -> list[AlertEvent]:
        """New limits and profiles (SIGHUP): windows, active alerts (and so their
        acknowledgements) and admissions are kept; the next reading of each series is
        evaluated with the new rules. -> resolutions of alerts whose rule is gone."""
        self._configure(rules, profiles)
        self.scores.reconfigure(rules.news2)
        self.flapping.cfg = rules.flapping
        self.config_beds = dict(beds)
        self.bed_profile = {}
        for ward, bed in {*self.config_beds, *self.admissions, *self.scores.scales}:
            name = self._profile_of(ward, bed)
            if name not in self.profiles:
                name = DEFAULT_PROFILE
            if name != DEFAULT_PROFILE:
                self.bed_profile[(ward, bed)] = name
            self.scores.set_scale(ward, bed, self.profiles[name].news2_scale)
        if self.staleness is not None:
            self.staleness.stale_after_s = rules.stale_after_s
            self.staleness.factor = rules.stale_factor
            self.staleness.unknown_s = rules.stale_unknown_s
            self.staleness.expire_s = rules.stale_expire_s
        return self._rebind(lambda k: True, None)

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
            self.counts["batches"] += 1  # progress, for the watchdog
            raised = list(batch.alarms)
            try:
                raised += self._evaluate(batch)
            except Exception:  # noqa: BLE001 - one bad batch never stops the ward's alarms
                self._failed(batch)
            if self._score_updates:
                # one publication per bed and batch: its latest score (a reading object
                # carrying all seven parameters is not six partial scores and a full one)
                latest = {(u.ward, u.bed): u for u in self._score_updates}
                self._score_updates = []
                if self.score_sink is not None:
                    await self.score_sink.write_scores(list(latest.values()))
            for e in raised:
                if e.patient is None:  # technical alarms of an admitted bed name its patient
                    e.patient = self.patients.get((e.ward, e.bed))
            if self.lifecycle is not None:
                raised = [self.lifecycle.observe(e) for e in raised]
            events = [*batch.events, *raised]  # batch.events went through the lifecycle
            # alerts first: their publication never queues behind bulk storage (a slow or
            # refusing disk delays the journal, not the ward's alarms)
            for sink in sorted(self.sinks, key=lambda s: s is self.durable):
                if sink is self.durable:  # (a transient batch's readings come again, durably)
                    await sink.write([] if batch.transient else batch.readings, events, batch.done)
                else:
                    await sink.write(batch.readings, events)
            await asyncio.sleep(0)  # a busy queue never suspends: let the others run

    def _evaluate(self, batch: Batch) -> list[AlertEvent]:
        """Everything a batch makes the rules say (``run``, one batch at a time)."""
        raised: list[AlertEvent] = []
        if batch.tick is not None:  # the clock: time-driven work due by then first
            raised += self.tick(batch.tick)
        for cmd in batch.bed_commands:
            raised += self.apply(cmd)
        statuses, reports = batch.statuses, batch.device_alarms
        refused = 0
        if self.capacity is not None:  # devices beyond the bounds: stored, not evaluated
            now = batch.received_at or time.time()
            statuses = self._gate(statuses, now, raised) if statuses else statuses
            reports = self._gate(reports, now, raised) if reports else reports
            refused = self.counts[CAPACITY] + self.counts[RATE_LIMITED]
        for status in statuses:  # before the readings: a reading newer than a
            raised += self.sensors.observe(status)  # "sensor off" ends it
        for report in reports:  # the device's own alarms and INOPs
            raised += self.device_alarms.observe(report)
        from_rules = self.process(batch.readings, batch.received_at or None, batch.snapshot)
        if from_rules and batch.received_at and self.on_latency is not None:
            self.on_latency(time.time() - batch.received_at)  # ingest -> alert
        raised += from_rules
        if self.staleness is not None:
            arrived = batch.received_at or time.time()
            checked = refused != self.counts[CAPACITY] + self.counts[RATE_LIMITED]
            for r in batch.readings:
                if checked and r.flag in (CAPACITY, RATE_LIMITED):
                    continue  # not kept: never watched for silence
                mode = Modes.declared(self.modes.configured(r.device, r.vital), r.mode)
                raised += self.staleness.seen(r.ward, r.bed, r.device, arrived, r.ts, mode)
            for st in statuses:  # a status is a sign of life too
                raised += self.staleness.seen(st.ward, st.bed, st.device, arrived)
            for rep in reports:  # a device's full alarm set: the bed spoke
                if rep.complete:  # (PCD-04 news comes when alarms change)
                    raised += self.staleness.seen(
                        rep.ward, rep.bed, rep.device, arrived, watch=False
                    )
        return raised

    def _failed(self, batch: Batch) -> None:
        """A batch made the engine raise (a defect, or input no check foresaw): its
        readings are still stored and acknowledged, the next batch is evaluated as usual,
        the failure is counted (``vitalmon_engine_errors_total``) and logged with its
        traceback at most once a minute (never its readings: they may name a patient)."""
        self.counts["engine_errors"] += 1
        now = time.monotonic()
        if now - self._last_failure_log >= 60.0:
            self._last_failure_log = now
            log.exception(
                "engine: a batch of %d reading(s) could not be evaluated (%d so "
                "far); stored, not evaluated",
                len(batch.readings),
                self.counts["engine_errors"],
            )

    def take_score_updates(self) -> list[ScoreUpdate]:
        """The NEWS2 score changes since the last call (``run`` publishes them; a replay,
        which publishes none, takes them so that they do not pile up)."""
        updates, self._score_updates = self._score_updates, []
        return updates

    def tick(self, now: float) -> list[AlertEvent]:
        """Time-driven rule work due at or before ``now`` (the daemon's clock, once a
        second): NEWS2 holds that have elapsed and inputs that have expired, each dated at
        the instant it became due. Score updates go out with the batch; -> alert events
        (through the flapping filter, counted, like other score events)."""
        updates, events = self.scores.tick(now)
        return self._score_due(updates, events)

    def sweep(self, now: float) -> list[AlertEvent]:
        """Wall-clock housekeeping (the daemon's, once a second while connected to the
        broker: a deaf daemon forgets nothing): devices of beds nobody expects that have
        been stale for ``rules.stale_expire_s`` are forgotten with all the engine keeps of
        them (and their bed with its last device), their alarms resolved; the capacity
        alarm resolves after a quiet minute. -> the alert events (not yet through the
        lifecycle)."""
        events: list[AlertEvent] = []
        if self.staleness is not None:
            resolved, devices, beds = self.staleness.expire(now, self.expected)
            if devices:
                events += resolved
                events += self._forget(devices, beds, now)
                self.counts["devices_expired"] += len(devices)
                log.info(
                    "%d device(s) of beds neither listed nor admitted forgotten after "
                    "rules.stale_expire_s of silence (%d bed(s) with them)",
                    len(devices),
                    len(beds),
                )
        if self.capacity is not None:
            events += self.capacity.sweep(now, len(self.series))
        return events

    def _forget(
        self, devices: list[tuple[str, str, str]], beds: set[tuple[str, str]], at: float
    ) -> list[AlertEvent]:
        """Free what the engine keeps of ``devices`` (ward, bed, device) and of whole
        ``beds``: windows, peers, device presents, sensor and device-alarm state,
        plausibility runs, NEWS2 sources (a bed's score too), flapping, the capacity
        count. Their open alerts resolve (``at``: the wall clock). -> those events."""
        gone = set(devices)
        events: list[AlertEvent] = []
        for key in [
            k for k in self.series if (k.ward, k.bed) in beds or (k.ward, k.bed, k.device) in gone
        ]:
            series = self.series.pop(key)
            where = (key.ward, key.bed, key.vital)
            peers = [p for p in self._peers.get(where, ()) if p is not series]
            if peers:
                self._peers[where] = peers
            else:
                self._peers.pop(where, None)
            for rule, a in zip(series.rules, series.active, strict=True):
                if a is not None:
                    events.append(self._close(key, rule, a, series, at, FORGOTTEN))
        touched = {(w, b) for w, b, _d in gone} | beds
        used = {
            (k.ward, k.bed, k.device.partition(".")[0])
            for k in self.series
            if (k.ward, k.bed) in touched
        }
        for where in [w for w in self._dev_now if (w[0], w[1]) in touched and w not in used]:
            del self._dev_now[where]
        events += self.sensors.forget(gone, beds, at)
        events += self.device_alarms.forget(gone, beds, at)
        events += self.plausibility.forget(gone, beds, at)
        for ward, bed, device in gone:
            if (ward, bed) not in beds:
                self.scores.forget_device(ward, bed, device)
                if self.capacity is not None:
                    self.capacity.forget_device(ward, bed, device)
        for ward, bed in beds:
            events += self.flapping.reset_bed(ward, bed, why="bed forgotten")
            update, event = self.scores.discharge(ward, bed, at)
            if update is not None:
                self._score_updates.append(update)  # (clears its retained score)
            if event is not None:
                event.message = f"NEWS2: {FORGOTTEN}"
                events.append(event)
            self.bed_profile.pop((ward, bed), None)
            if self.capacity is not None:
                self.capacity.forget_bed(ward, bed)
        return events

    def _score_due(self, updates: list[ScoreUpdate], events: list[AlertEvent]) -> list[AlertEvent]:
        self._score_updates += updates
        if not events:
            return []
        for e in events:
            self.counts[f"alert_{e.state}"] += 1
        return self.flapping.filter(events)

    def apply(self, cmd: BedCommand) -> list[AlertEvent]:
        """An admission or discharge, in queue order with the readings."""
        a = cmd.admission
        if cmd.action == "discharge":
            return self.discharge(a.ward, a.bed, a.at)
        try:
            return self.admit(a)
        except ValueError as exc:  # checked before it was queued; changed since
            log.warning("admission to %s/%s not applied: %s", a.ward, a.bed, exc)
            return []

    def active_alerts(self) -> int:
        return sum(a is not None for s in self.series.values() for a in s.active)

    def process(
        self, readings: list[Reading], received_at: float | None = None, snapshot: bool = False
    ) -> list[AlertEvent]:
        """Evaluate readings in order; returns the alert events they cause.

        ``received_at`` (the daemon's wall clock of arrival; None in a replay, whose
        readings are all in the past) guards event time: a reading stamped ahead of it is
        evaluated at it. A reading older than its bed's present by more than
        ``rules.max_age_s`` is history; the present is the newest event time the bed has
        shown, advancing reading by reading (a stream, a backlog, a replay: the same at
        any batching), or, for a ``snapshot`` (one HL7 message: a monitor's view at one
        moment), the newest of the whole batch, whatever order its observations come in.
        A reading that is not evaluated for a reason of its own (implausible, disputed,
        history) is replaced in ``readings`` by a copy carrying its flag, so that it is
        stored so.
        """
        events: list[AlertEvent] = []
        self.scores.arrival = received_at  # (NEWS2: how far each bed lags the clock)
        flapping = self.flapping
        cfg = self.cfg
        modes = self.modes
        last = len(readings) - 1
        clamp = cfg.max_future_s is not None  # (None: event time runs free, a simulation)
        ranges = self.plausibility.ranges
        # each device's present: the newest event time it has shown (a snapshot: all of it)
        dev_now = self._dev_now
        for r in readings if snapshot else ():
            at = r.ts if received_at is None or not clamp else min(r.ts, received_at)
            where = (r.ward, r.bed, r.device.partition(".")[0])
            if at > dev_now.get(where, -math.inf):
                dev_now[where] = at
        for n, arrived in enumerate(readings):
            r = arrived
            self.counts["readings"] += 1
            if received_at is not None and r.ts > received_at and clamp:
                # a device clock ahead (within rules.max_future_s, or the source had
                # refused it): evaluated at its arrival, never ahead of the wall clock
                self.counts["clamped"] += 1
                r = replace(r, ts=received_at)
            # NEWS2 work due before this reading (holds ending, inputs expiring), as the
            # daemon's clock tick would have done it: a replay gets the same events
            due = self.scores.advance(r.ward, r.bed, r.ts)
            if due is not None:
                events += self._score_due(*due)
            # NEWS2 is recomputed once per bed and instant (see News2Scores.observe)
            nxt = readings[n + 1] if n < last else None
            settle = nxt is None or nxt.ts != r.ts or nxt.bed != r.bed or nxt.ward != r.ward
            key = SeriesKey(r.ward, r.bed, r.device, r.vital)
            series = self.series.get(key)
            if series is None:
                why = self._admit(r.ward, r.bed, r.device, True, received_at)
                if why is not None:  # beyond a bound or a rate: stored so, not evaluated
                    readings[n] = replace(arrived, flag=why)
                    events += self._refuse(why, r.ward, r.bed, received_at)
                    if snapshot:
                        self._unpresent(r)
                    events += self._settle(r, settle)
                    continue
                series = self._new_series(key)
            win = series.window
            flag = None
            where = (r.ward, r.bed, r.device.partition(".")[0])
            present = dev_now.get(where, -math.inf)
            if r.ts > present:
                dev_now[where] = r.ts
            newest = win.newest
            if r.ts < present - cfg.max_age_s:
                flag = HISTORY  # e.g. yesterday's NIBP repeated in every message
            elif r.ts < newest - cfg.max_lag_s:
                flag = LATE  # too late to change the present
            if flag is not None and self._rebase(key, series, r, received_at, where):
                flag, win, newest = None, series.window, -math.inf  # the device's new time
            elif flag is None:
                series.behind = (0, 0.0, 0.0, -math.inf)
            if flag is None:
                if (r.ts == newest and r.value == win.values[-1]) or (
                    r.ts < newest and win.holds(r.ts, r.value)
                ):  # the same measurement again (a redelivery, or its degraded-mode copy)
                    self.counts["repeated"] += 1
                    events += self._settle(r, settle)
                    continue
                rng = ranges.get(r.vital)
                if rng is not None and not rng[0] <= r.value <= rng[1]:
                    flag = IMPLAUSIBLE
                else:
                    if series.beyond(r.value) and len(self._peers[(r.ward, r.bed, r.vital)]) > 1:
                        flag = self.plausibility.dispute(r, self._others(key, series))
                    if r.ts >= series.last[0]:
                        series.last = (r.ts, r.value)  # measured (a disputed value too)
                if flag is not None or series.flagged:
                    declared = Modes.declared(series.configured, r.mode)
                    spot = series.auto_spot if declared is None else declared == INTERMITTENT
                    plaus = self.plausibility.observe(r, flag, spot, self._crit(series, r.value))
                    series.flagged = flag is not None or self.plausibility.is_open(key)
                    for e in plaus:
                        self.counts[f"alert_{e.state}"] += 1
                    events += plaus
            if flag is not None:
                self.counts[flag] += 1
                readings[n] = replace(arrived, flag=flag)
                # an implausible or disputed value was still measured then: the series'
                # cadence goes on
                if flag not in (HISTORY, LATE) and series.cadence.add(r.ts):
                    series.retune(modes, cfg.max_gap_s)
                events += self._settle(r, settle)
                continue
            previous = series.cadence.last
            if series.cadence.add(r.ts):
                series.retune(modes, cfg.max_gap_s)
            win.add(r.ts, r.value)
            update, score_event = self.scores.observe(r, settle)
            if update is not None:
                self._score_updates.append(update)
            step: list[AlertEvent] = []
            if score_event is not None:
                step.append(score_event)
            rules = series.rules
            if rules:
                mode = Modes.declared(series.configured, r.mode)  # the operator's, the source's
                if mode is None:  # auto: the cadence, and a reading long after the last one
                    # is judged on its own whatever came before (a cuff after STAT cycles)
                    long_after = r.ts - previous > modes.cfg.continuous_max_interval_s
                    spot = series.auto_spot or (long_after and previous > -math.inf)
                else:
                    spot = mode == INTERMITTENT
                gap = cfg.max_gap_s if spot else series.gap
                ts, vals = win.ts, win.values
                newest = win.newest
                for i, rule in enumerate(rules):
                    every = getattr(rule, "every_s", 0.0)
                    if every:  # trend rules: at most once per `every` of event time
                        if newest < series.next_eval[i]:
                            continue
                        series.next_eval[i] = newest + every
                    patient = r.patient or self.patients.get((r.ward, r.bed))
                    active, event = rule.evaluate(
                        key, ts, vals, series.active[i], patient, spot, gap
                    )
                    series.active[i] = active
                    if event is not None:
                        step.append(event)
            if step:
                for event in step:
                    self.counts[f"alert_{event.state}"] += 1
                events += flapping.filter(step)
            events += flapping.tick(r.ward, r.bed, r.ts)  # (a dict lookup when none flaps)
            events += self.sensors.reading(r)  # values again: "sensor off" is over
        return events

    def _rebase(
        self,
        key: SeriesKey,
        series: _Series,
        r: Reading,
        received_at: float | None,
        where: tuple[str, str, str],
    ) -> bool:
        """``r`` is behind its device's present (history) or its series' (late). When
        :data:`REBASE_AFTER` such readings in a row advance and arrive live (spread over
        at least half their event-time span: a resent backlog arrives in a burst), the
        device's clock went back (a step, a time zone change): its new time becomes the
        present, the series' window starts again, and this reading is evaluated. A repeat
        of an old value never advances, and stays history. -> whether rebased.

        The daemon only: a replay (no arrival time) cannot tell a clock from a backlog."""
        if received_at is None:
            return False
        count, first_ts, first_rx, latest = series.behind
        if r.ts <= latest:
            return False  # not advancing: a repeat, or an older value resent
        if count == 0:
            first_ts, first_rx = r.ts, received_at
        count += 1
        series.behind = (count, first_ts, first_rx, r.ts)
        if count < REBASE_AFTER or received_at - first_rx < 0.5 * (r.ts - first_ts):
            return False
        ahead = max(self._dev_now.get(where, r.ts), series.window.newest) - r.ts
        self._dev_now[where] = r.ts
        series.reset_window()
        series.behind = (0, 0.0, 0.0, -math.inf)
        self.counts["clock_rebased"] += 1
        log.warning(
            "%s/%s %s: %d readings in a row %.0f s behind the device's own present, "
            "arriving live: its clock went back; judged on its new time from now",
            key.ward,
            key.bed,
            key.device,
            count,
            ahead,
        )
        return True

    def _crit(self, series: _Series, value: float) -> bool:
        """Whether ``value`` is beyond a crit limit of the series' threshold rules."""
        return any(
            2 in rule.limits and bool(rule.beyond(2, value))
            for rule in series.rules
            if isinstance(rule, ThresholdRule)
        )

    def _settle(self, r: Reading, settle: bool) -> list[AlertEvent]:
        """A reading that is not evaluated still closes its instant for NEWS2 (what came
        before it at the same instant counts)."""
        if not settle:
            return []
        update, score_event = self.scores.settle(r.ward, r.bed, r.ts)
        if update is not None:
            self._score_updates.append(update)
        if score_event is None:
            return []
        self.counts[f"alert_{score_event.state}"] += 1
        return self.flapping.filter([score_event])

    def _unpresent(self, r: Reading) -> None:
        """A refused reading of a snapshot set its device's present: forgotten unless the
        engine keeps a device of the bed by that name (the present is the engine's)."""
        where = (r.ward, r.bed, r.device.partition(".")[0])
        if where not in self._dev_now or self.capacity is None:
            return
        devices = self.capacity.beds.get((r.ward, r.bed), {})
        if not any(d.partition(".")[0] == where[2] for d in devices):
            del self._dev_now[where]
