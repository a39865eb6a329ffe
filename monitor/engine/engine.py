"""The engine: per-series windows and rules, evaluated on event time.

Contract of :class:`Engine`:

* ``put(batch)`` is what sources await to hand readings in; it waits while the
  bounded queue is full (back-pressure).
* ``run()`` takes batches in arrival order. For each reading it updates its series'
  window, evaluates that series' rules at the series' newest reading, then hands the
  batch's readings and any alert events to every sink (awaiting their back-pressure),
  the durable sink last so that alerts never wait behind storage; the batch's ``done``
  goes to the durable sink, which calls it after its commit.
* The engine owns the alert lifecycle (:class:`monitor.engine.lifecycle.Lifecycle`):
  every event it hands on passes through it, and only the engine changes it, in queue
  order: a batch's ``acks`` are applied, and a batch with a ``tick`` takes the
  escalations and re-notifications due.
* In a partitioned deployment (a JetStream source), ``keeper`` writes the lifecycle and
  admissions of the beds a batch changed to the cluster before its events go to any
  sink, and a batch's ``carry`` hands the engine a partition's state from its last owner
  (:class:`monitor.pipeline.Carry`).
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

from monitor.config import Profile, RulesConfig
from monitor.engine.beds import Beds
from monitor.engine.capacity import CAPACITY, RATE_LIMITED, Capacity
from monitor.engine.device_alarms import DeviceAlarms
from monitor.engine.evaluate import Evaluation
from monitor.engine.flapping import Flapping
from monitor.engine.lifecycle import Lifecycle
from monitor.engine.modes import Modes
from monitor.engine.score import News2Scores
from monitor.engine.sensor import SensorState
from monitor.engine.series import _Series
from monitor.engine.state import ScoreSink
from monitor.engine.system import SYSTEM_WARD
from monitor.engine.technical import Staleness
from monitor.engine.threshold import SeriesKey
from monitor.model import (
    Admission,
    AlertEvent,
)
from monitor.pipeline import Batch, Carry, ScoreUpdate, Sink, StateKeeper, UnknownAlert
from monitor.queues import put_end

log = logging.getLogger("vitalmon.engine")


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


class Engine(Beds, Evaluation):
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
        #: Whether a bed is this instance's to speak of (set by the daemon from a
        #: partitioned source): False drops an event about it before the lifecycle (a
        #: paused instance whose lease has lapsed says nothing of beds it may have lost).
        self.owner: Callable[[str, str], bool | None] | None = None
        #: Keeps the lifecycle and admissions of owned beds in the cluster before their
        #: events are handed on (a partitioned deployment; set by the daemon).
        self.keeper: StateKeeper | None = None
        #: Called with the open alerts a partition's new owner took on (the alert
        #: publisher's bed state starts from them; set by the daemon).
        self.on_carried: Callable[[list[AlertEvent]], None] | None = None
        #: Called with the beds handed over to another instance (the alert publisher
        #: forgets their bed state and pauses; set by the daemon).
        self.on_handed_over: Callable[[set[tuple[str, str]]], None] | None = None
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
            if batch.fence is not None and not batch.fence():
                self.counts["fenced"] += 1  # another instance owns it now: not ours to
                if batch.dropped is not None:  # evaluate, store or acknowledge
                    batch.dropped()
                continue
            if batch.handed_over:
                self.hand_over(set(batch.handed_over))
            done = self._lifecycle_work(batch)  # (final: made by the lifecycle)
            raised = list(batch.alarms)
            if batch.carry is not None:
                closed, announced = self._take_on(batch.carry)
                raised += closed
                done += announced
            try:
                raised += self._evaluate(batch)
            except Exception:  # noqa: BLE001 - one bad batch never stops the ward's alarms
                self._failed(batch)
            if batch.replay:  # (the scores it computes are history: the last owner's)
                self._score_updates = []
            if self._score_updates:
                # one publication per bed and batch: its latest score (a reading object
                # carrying all seven parameters is not six partial scores and a full one)
                latest = {(u.ward, u.bed): u for u in self._score_updates}
                self._score_updates = []
                if self.score_sink is not None:
                    await self.score_sink.write_scores(list(latest.values()))
            if self.owner is not None and (raised or done):
                raised, done = self._ours(raised), self._ours(done)
            for e in raised:
                if e.patient is None:  # technical alarms of an admitted bed name its patient
                    e.patient = self.patients.get((e.ward, e.bed))
            if self.lifecycle is not None:
                raised = [self.lifecycle.observe(e) for e in raised]
            events = [*batch.events, *done, *raised]
            if batch.replay:  # state rebuilt; stored and published by the last owner
                self.counts["replayed"] += len(batch.readings)
                continue
            if self.keeper is not None and (events or batch.bed_commands):
                await self._keep(events, batch)  # (in the cluster before anyone hears)
            # alerts first: their publication never queues behind bulk storage (a slow or
            # refusing disk delays the journal, not the ward's alarms)
            for sink in sorted(self.sinks, key=lambda s: s is self.durable):
                if sink is self.durable:  # (a transient batch's readings come again, durably)
                    await sink.write([] if batch.transient else batch.readings, events, batch.done)
                else:
                    await sink.write(batch.readings, events)
            await asyncio.sleep(0)  # a busy queue never suspends: let the others run

    def _take_on(self, carry: Carry) -> tuple[list[AlertEvent], list[AlertEvent]]:
        """A partition's state from its last owner (:class:`monitor.pipeline.Carry`):
        admissions (before its replay), or its open alerts (after). -> (alerts closed
        because their rule is gone; alerts the replay raised that nobody announced, final).
        """
        if carry.admissions:
            self.restore_admissions(carry.admissions)
            if self.staleness is not None:
                now = time.time()
                for a in carry.admissions:
                    self.staleness.expect(a.ward, a.bed, now)
        if carry.alerts is None:
            return [], []
        closed, announced = self.carry(carry.alerts, carry.ours)
        self.counts["alerts_carried"] += len(carry.alerts) - len(closed)
        self.counts["alerts_announced"] += len(announced)
        if self.on_carried is not None:
            gone = {id(e) for e in closed}
            self.on_carried([c.event for c in carry.alerts if id(c.event) not in gone])
        return closed, announced

    async def _keep(self, events: list[AlertEvent], batch: Batch) -> None:
        """Hand the keeper the alerts and admissions a batch changed, as they are now."""
        assert self.keeper is not None
        lifecycle = self.lifecycle
        alerts = {
            e.id: (e.ward, e.bed, lifecycle.record(e.id) if lifecycle else None)
            for e in events
            if e.ward != SYSTEM_WARD
        }
        beds = {
            (c.admission.ward, c.admission.bed): self.admissions.get(
                (c.admission.ward, c.admission.bed)
            )
            for c in batch.bed_commands
        }
        await self.keeper.keep(alerts, beds)

    def _ours(self, events: list[AlertEvent]) -> list[AlertEvent]:
        """``events`` less those about beds another instance owns now."""
        owner = self.owner
        assert owner is not None
        kept = [e for e in events if e.ward == SYSTEM_WARD or owner(e.ward, e.bed) is not False]
        if len(kept) != len(events):
            self.counts["fenced_events"] += len(events) - len(kept)
        return kept

    def _lifecycle_work(self, batch: Batch) -> list[AlertEvent]:
        """The lifecycle's own events for a batch (the engine owns the lifecycle; nothing
        else changes it): escalations and re-notifications due at a clock tick, then the
        batch's acknowledgements, each answered through its ``outcome``."""
        out: list[AlertEvent] = []
        lifecycle = self.lifecycle
        if lifecycle is not None and batch.tick is not None:
            out += lifecycle.tick()
        for ack in batch.acks:
            try:  # (no lifecycle, as in a replay: nothing is open)
                event = (
                    _no_alert(ack.alert_id)
                    if lifecycle is None
                    else lifecycle.ack(ack.alert_id, ack.by)
                )
            except UnknownAlert as exc:
                if ack.outcome is not None and not ack.outcome.done():
                    ack.outcome.set_exception(exc)
                continue
            if event is not None:
                # who: claimed (ack_by) and broker-verified (ack_identity, null if unknown)
                event.extra = {**event.extra, "ack_identity": ack.identity}
                out.append(event)
            if ack.outcome is not None and not ack.outcome.done():
                ack.outcome.set_result(event)
        return out

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
        if self.staleness is not None and not batch.replay:  # (replayed: old news)
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

    def hand_over(self, beds: set[tuple[str, str]]) -> None:
        """``beds`` now belong to another instance (their stream partition moved): forget
        all the engine keeps of them, their admissions, silence watch and lifecycle too,
        without an event. Their new owner rebuilt the same state by replay and carries
        their alerts on; anything said here would be said twice, or wrongly (a
        ``device.stale`` for a bed that sends to its new owner)."""
        now = time.time()
        resolved = self.counts["alert_resolved"]
        self._forget([], beds, now)  # (its resolutions are the new owner's to make)
        self.counts["alert_resolved"] = resolved
        self._score_updates = [u for u in self._score_updates if (u.ward, u.bed) not in beds]
        for ward, bed in beds:
            self.admissions.pop((ward, bed), None)
            self.patients.pop((ward, bed), None)
            if self.staleness is not None:
                self.staleness.forget(ward, bed, now)
        if self.lifecycle is not None:
            self.lifecycle.forget_beds(beds)
        if self.on_handed_over is not None:
            self.on_handed_over(beds)
        self.counts["beds_handed_over"] += len(beds)
        log.info("%d bed(s) handed over to another instance: forgotten here", len(beds))

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

    def active_alerts(self) -> int:
        return sum(a is not None for s in self.series.values() for a in s.active)


def _no_alert(alert_id: str) -> AlertEvent | None:
    raise UnknownAlert(alert_id)
