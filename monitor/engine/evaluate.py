"""Evaluation: each reading through its series' guards (event time, repeats, plausibility,
capacity) into its window and rules, NEWS2 and flapping. Part of :class:`Engine`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from monitor.engine.modes import Modes
from monitor.engine.plausibility import HISTORY, IMPLAUSIBLE, LATE, Peer
from monitor.engine.series import Rule, _Series
from monitor.engine.state import EngineState
from monitor.engine.threshold import SeriesKey, ThresholdRule
from monitor.model import (
    INTERMITTENT,
    AlertEvent,
    DeviceAlarmReport,
    DeviceStatus,
    Reading,
)

log = logging.getLogger("vitalmon.engine")

#: Readings behind their device's present, advancing, arriving live, in a row: the
#: device's clock went back; its new time becomes the present (Engine._rebase).
REBASE_AFTER = 3
#: What the engine gates besides readings (monitor.engine.capacity).
_Item = TypeVar("_Item", DeviceStatus, DeviceAlarmReport)


class Evaluation(EngineState):
    """Readings -> alert events, in order, on event time."""

    #: Skip the threshold rules a reading cannot change (nothing open, the value within
    #: the least extreme limit). False: every rule sees every reading, the reference the
    #: differential tests compare with (tests/test_engine_gate.py).
    gate_quiet: bool = True

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
        gate = self.gate_quiet
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
        self.counts["readings"] += len(readings)
        flapping_beds = flapping.beds  # (the same dicts all batch long: read per reading)
        sensors_open = self.sensors.open
        for n, arrived in enumerate(readings):
            r = arrived
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
            rules: Sequence[Rule] = series.rules
            if (
                gate
                and r.ts >= newest  # (the reading is the series' newest)
                and r.ts < series.due
                and not any(series.active)
            ):  # no trend rule due, nothing open: only a value beyond a least extreme
                # limit can change a threshold rule (the gate below, for all at once)
                low, high = series.entry
                if (low is None or r.value >= low) and (high is None or r.value <= high):
                    rules = ()
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
                value = float(vals[-1])  # (the series' newest: this one, unless it came late)
                patient = r.patient or self.patients.get((r.ward, r.bed))
                for i, rule in enumerate(rules):
                    quiet = series.quiet[i]
                    if quiet is not None:  # a threshold rule with nothing open: only a value
                        # beyond its least extreme limit can change it (ThresholdRule.level)
                        low, entry = quiet
                        if (
                            gate
                            and series.active[i] is None
                            and (value >= entry if low else value <= entry)
                        ):
                            continue
                    else:  # trend rules: at most once per `every_s` of event time
                        if newest < series.next_eval[i]:
                            continue
                        series.next_eval[i] = newest + series.every[i]
                    active, event = rule.evaluate(
                        key, ts, vals, series.active[i], patient, spot, gap, win.history
                    )
                    series.active[i] = active
                    if event is not None:
                        step.append(event)
                series.redue()
            if step:
                for event in step:
                    self.counts[f"alert_{event.state}"] += 1
                events += flapping.filter(step)
            if flapping_beds:
                events += flapping.tick(r.ward, r.bed, r.ts)
            if sensors_open:
                events += self.sensors.reading(r)  # values again: "sensor off" is over
        return events

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
