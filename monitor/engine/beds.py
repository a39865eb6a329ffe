"""The bed registry: profiles, admissions and discharges, and the rules each bed's series
take from them (``rebind``); alerts carried over a restart. Part of :class:`Engine`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from monitor.config import AlertsConfig, Profile, RulesConfig
from monitor.engine.modes import Modes
from monitor.engine.plausibility import Plausibility
from monitor.engine.score import RULE as NEWS2_RULE
from monitor.engine.series import Rule, Spans, _Series, _spans
from monitor.engine.state import EngineState
from monitor.engine.system import SYSTEM_WARD
from monitor.engine.threshold import PRIORITY, Active, SeriesKey, ThresholdRule
from monitor.engine.trend import TrendRule, build_trend_rules
from monitor.model import (
    Admission,
    AlertEvent,
    AlertState,
    BedCommand,
    Priority,
)
from monitor.pipeline import Carried

log = logging.getLogger("vitalmon.engine")

#: Profile of a bed nobody assigned one to.
DEFAULT_PROFILE = "adult"


class Beds(EngineState):
    """Which rules each bed's series run, and who is in the bed."""

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
        #: What each vital's series keeps (:class:`Spans`): the raw window, and the
        #: minutes its trend rules read beyond it.
        self.spans: dict[str, Spans] = {}
        for ruleset in self.rulesets.values():
            for vital, vrules in ruleset.items():
                old = self.spans.get(vital, (rules.window_s, 0.0, 0.0))
                self.spans[vital] = _spans(vrules, *old)

    def ruleset(self, ward: str, bed: str) -> dict[str, list[Rule]]:
        name = self.bed_profile.get((ward, bed), DEFAULT_PROFILE)
        return self.rulesets.get(name, self.rules)

    def _new_series(self, key: SeriesKey) -> _Series:
        rules = self.ruleset(key.ward, key.bed).get(key.vital, [])
        spans = self.spans.get(key.vital, (self.cfg.window_s, 0.0, 0.0))
        configured = self.modes.configured(key.device, key.vital)
        series = self.series[key] = _Series(spans, rules, configured)
        series.retune(self.modes, self.cfg.max_gap_s)
        self._peers.setdefault((key.ward, key.bed, key.vital), []).append(series)
        if self.capacity is not None:  # (counted: an alert carried over keeps its series)
            self.capacity.keep(key.ward, key.bed, key.device)
        return series

    def expected(self, ward: str, bed: str) -> bool:
        """Listed under ``beds:`` or admitted: always evaluated, never expires."""
        return (ward, bed) in self.config_beds or (ward, bed) in self.admissions

    def restore(self, alerts: Sequence[AlertEvent]) -> list[AlertEvent]:
        """Carry alerts that were active at the last stop into this run.

        Each goes on with its id and seq, and resolves as soon as a reading allows. An
        alert whose rule no longer exists is resolved now; those events are returned.
        """
        orphans = self._restore_rules(alerts, "restart")
        if self.lifecycle is not None:  # (the system's alarms are judged afresh)
            gone = {id(e) for e in orphans}  # (identity: linear however many alerts)
            self.lifecycle.restore(
                [e for e in alerts if id(e) not in gone and e.ward != SYSTEM_WARD]
            )
        if alerts:
            log.info(
                "carried over %d active alert(s) from the last run", len(alerts) - len(orphans)
            )
        return orphans

    def carry(
        self, alerts: Sequence[Carried], ours: Callable[[str, str], bool]
    ) -> tuple[list[AlertEvent], list[AlertEvent]]:
        """Take on a partition's open alerts from the instance that owned it (``ours``:
        its beds), after its replay rebuilt the windows. The last owner's alerts are the
        truth about what was announced: each goes on with its id, seq, acknowledgement,
        escalation and timers, in place of what the replay raised for the same condition
        (whose onset the replay may not reach), or set again as after a restart if the
        replay raised nothing. An alert the replay raised that the last owner had not
        announced (it died between the reading and the alert) is announced now. ->
        (alerts closed because their rule is gone, as after a restart; the announcements,
        final)."""
        keep = {c.event.id for c in alerts}
        slots = {
            (c.event.ward, c.event.bed, c.event.device, c.event.vital, c.event.rule) for c in alerts
        }
        live: set[str] = set()
        for key, series in self.series.items():
            if ours(key.ward, key.bed):
                for i, a in enumerate(series.active):
                    if a is None:
                        continue
                    if a.id in keep:
                        live.add(a.id)
                    elif (key.ward, key.bed, key.device, key.vital, series.rules[i].name) in slots:
                        series.active[i] = None  # (the carried one is set below)
        tracked = {e.id for e in self.lifecycle.active()} if self.lifecycle else set()
        fresh = [c.event for c in alerts if c.event.id not in live | tracked]
        orphans = self._restore_rules(fresh, "takeover")
        announce: list[AlertEvent] = []
        if self.lifecycle is not None:
            gone = {e.id for e in orphans}
            announce = self.lifecycle.carry([c for c in alerts if c.event.id not in gone], ours)
        return orphans, announce

    def _restore_rules(self, alerts: Sequence[AlertEvent], why: str) -> list[AlertEvent]:
        """The rules' side of carrying ``alerts`` on: each rule's open alert set again
        (NEWS2 and devices' alarms to their trackers). -> those whose rule is gone (or a
        technical alarm, judged afresh), resolved."""
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
                e.message = f"{e.rule}: rule no longer configured; alarm closed at {why}"
                if e.rule.endswith(".flapping"):
                    e.message = f"{e.rule}: flapping is judged afresh after a {why}; closed"
                elif e.kind == "technical":
                    e.message = (
                        f"{e.rule}: judged afresh after a {why} (raised again if the "
                        "condition persists)"
                    )
                orphans.append(e)
                continue
            series = self.series.get(key) or self._new_series(key)
            levels = rules[index].limits
            level = 2 if e.priority == Priority.HIGH and 2 in levels else min(levels)
            series.active[index] = Active(e.id, level, e.started_at, e.seq, e.device, e.patient)
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
            series.respan(self.spans.get(key.vital, (self.cfg.window_s, 0.0, 0.0)))
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
        return a.event(
            key.ward,
            key.bed,
            key.vital,
            rule.name,
            "trend" if trend else "physiological",
            rule.priority if isinstance(rule, TrendRule) else PRIORITY[level],
            AlertState.RESOLVED,
            value,
            rule.limits[level],
            message,
            at,
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
        alerts: AlertsConfig | None = None,
    ) -> list[AlertEvent]:
        """New limits and profiles (SIGHUP), and the lifecycle's ``alerts`` settings
        (escalation, re-notification): windows, active alerts (and so their
        acknowledgements) and admissions are kept; the next reading of each series is
        evaluated with the new rules. -> resolutions of alerts whose rule is gone."""
        if alerts is not None and self.lifecycle is not None:
            self.lifecycle.cfg = alerts
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
