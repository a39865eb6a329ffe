"""NEWS2 per bed, in the engine: scores recomputed on input changes, alerts on triggers.

For each bed a :class:`~monitor.engine.news2_tracker.News2Tracker` keeps the latest value of
each parameter (whichever device sent it). When a reading of an input arrives, the
score at that reading's event time is recomputed from the values measured less than
``rules.news2.freshness_s`` before it (a value expires at ``ts + freshness_s``). A
changed score is published (retained) as ``{"news2", "partial", "missing", "components",
"at"}``; the RCP triggers raise one alert per bed, rule ``news2``, kind ``score``:

* any single parameter scoring 3 -> priority ``low``, "urgent ward review";
* aggregate 5-6 -> ``medium``, "urgent response";
* aggregate >= 7 -> ``high``, "emergency response".

The alert follows the trigger (same id): up at once, down (or resolved when no trigger
applies) once the lower trigger has lasted ``hold_s`` of event time. Only complete scores
alert unless ``alert_partial`` is set.

**Time-driven work.** Two things happen with no reading at all: a pending step-down whose
``hold_s`` has elapsed (due at ``lower_since + hold_s``), and the expiry of a parameter
(due at ``ts + freshness_s`` of its value: from that instant on the score is computed
without it). :meth:`News2Scores.tick` does all such work due at or before ``now``, in time
order, each event dated at the instant it became due (not at ``now``): the daemon calls it
once a second on its clock. :meth:`News2Scores.advance` does the same for one bed, for work due
before a reading's event time, and the engine calls it before each reading, so a replay (no clock)
produces the same events, at the same instants, as the daemon whose clock ticked in
between. Each bed keeps its next due instant; a heap of them makes a tick with nothing
due one comparison, whatever the number of beds. On the daemon's clock a bed is judged at
its own present, ``now`` minus how late its latest reading arrived (``lag``): a backlog
being caught up never has its inputs expired under it by the wall clock.

**Expiry policy: an alert never outlives its evidence.** When an input expires the score
is recomputed without it and published (dated at the expiry). If a score alert is open and
the score is now partial (``alert_partial`` false), or no longer triggers at all, the
alert *resolves at that same instant* with "NEWS2 evidence expired: no fresh avpu, temp
(older than 1800 s); alert closed" -- at once, not after ``hold_s``: the hold damps a score
wavering between two *measured* triggers, while here nothing is measured any more. (A
partial score that still triggers with ``alert_partial`` follows the normal trigger logic.)
A separate "score expired" technical alert is deliberately not raised: the retained score
topic already says ``partial`` and names the expired parameters in ``missing``, overdue
observations are a charting matter (the ward's obs schedule, and device silence is already
a technical alarm), and a fresh complete set that still triggers raises a new alert at
once. So the score topic and the alert never disagree: while the alert is active the
retained score is complete (partial only with ``alert_partial``) and at or above its
trigger, save for a lower trigger during its hold; when the score turns partial the alert
resolves at the same instant. A partial score computed on a reading (e.g. the first one
after a restart, whose inputs were not carried over) resolves an open alert the same way.
An alert carried over a restart with no input in this run closes at ``freshness_s`` after
the restart at the latest: its evidence is at most that old.
"""

from __future__ import annotations

import heapq
import logging
import math

from monitor.config import News2Config
from monitor.engine.news2 import PARAMETERS, Scale, Score
from monitor.engine.news2_tracker import News2Tracker
from monitor.engine.score_alert import _LIMIT, _RANK, RULE, _Alerting
from monitor.engine.score_bed import SOURCE_RANK, _Bed, _Sources, source_rank
from monitor.engine.threshold import Active
from monitor.model import AVPU_CODES, AlertEvent, AlertState, Reading, iso
from monitor.pipeline import ScoreUpdate  # (re-exported: its old place)

log = logging.getLogger("vitalmon.engine")


__all__ = ["RULE", "SOURCE_RANK", "News2Scores", "ScoreUpdate", "source_rank"]

_PARAMETERS = frozenset(PARAMETERS)  # (a set: asked for every reading)


class News2Scores(_Sources, _Alerting):
    #: Skip computing a score that stands (:attr:`_Bed.stands`). False: every settle
    #: computes it, the reference the differential tests compare with
    #: (tests/test_engine_gate.py).
    shortcut: bool = True

    def __init__(self, cfg: News2Config) -> None:
        self.cfg = cfg
        self.beds: dict[tuple[str, str], _Bed] = {}
        #: SpO2 scale per bed (from its profile); others use ``cfg.scale``.
        self.scales: dict[tuple[str, str], Scale] = {}
        #: (due + lag, bed): beds with time-driven work, earliest first. An entry is
        #: live while it equals its bed's ``queued``; others are skipped when popped.
        self._heap: list[tuple[float, tuple[str, str]]] = []
        #: Wall-clock arrival of the readings being fed (set by the engine for each batch;
        #: None in a replay): a bed's ``lag`` is taken from it when its score is settled.
        self.arrival: float | None = None

    def reconfigure(self, cfg: News2Config) -> None:
        """New settings (SIGHUP): every bed's next due instant is recomputed with them."""
        self.cfg = cfg
        for key, bed in self.beds.items():
            bed.stands = False
            self._schedule(key, bed)

    def _bed(self, ward: str, bed: str) -> _Bed:
        b = self.beds.get((ward, bed))
        if b is None:
            scale = self.scales.get((ward, bed), self.cfg.scale)
            b = self.beds[(ward, bed)] = _Bed(News2Tracker(scale))
        return b

    def set_scale(self, ward: str, bed: str, scale: Scale) -> None:
        """The bed's SpO2 scale (a clinical decision, per patient): from the next reading."""
        self.scales[(ward, bed)] = scale
        if (ward, bed) in self.beds:
            b = self.beds[(ward, bed)]
            b.tracker.scale = scale
            b.stands = False

    def discharge(
        self, ward: str, bed: str, at: float
    ) -> tuple[ScoreUpdate | None, AlertEvent | None]:
        """Forget the bed: -> (cleared score, resolution of its open score alert)."""
        self.scales.pop((ward, bed), None)
        b = self.beds.pop((ward, bed), None)
        if b is None:
            return None, None
        event = None
        if b.active is not None and b.priority is not None:
            a = b.active
            a.seq += 1
            event = a.event(
                ward,
                bed,
                RULE,
                RULE,
                "score",
                b.priority,
                AlertState.RESOLVED,
                math.nan,
                _LIMIT[b.priority],
                "patient discharged: score alert closed",
                at,
            )
        return ScoreUpdate(ward, bed, None), event

    def forget_device(self, ward: str, bed: str, device: str) -> None:
        """The device is forgotten (``rules.stale_expire_s``): no longer a source of any
        parameter of the bed (its values expired from the score long before)."""
        b = self.beds.get((ward, bed))
        if b is None:
            return
        for seen in b.sources.values():
            seen.pop(device, None)
        for vital in [v for v, d in b.source.items() if d == device]:
            del b.source[vital]

    def observe(
        self, r: Reading, settle: bool = True
    ) -> tuple[ScoreUpdate | None, AlertEvent | None]:
        """Feed one reading; -> (score update if it changed, alert event if any).

        The score is recomputed at ``settle``: pass False while the next reading is of the
        same bed at the same event time (an object with six vitals is one change of the
        score, not six, and the score never mixes half of an instant with the one
        before). Any reading may settle, a NEWS2 input or not."""
        if self.cfg.enabled and r.vital in _PARAMETERS:
            bed = self.beds.get((r.ward, r.bed)) or self._bed(r.ward, r.bed)
            value: float | bool | str = r.value
            if r.vital == "avpu":
                value = AVPU_CODES[int(r.value)]
            elif r.vital == "o2":
                value = bool(r.value)
            if self._take(bed, r.vital, r.device, value, r.ts):
                bed.changed = True
                if r.patient is not None:
                    bed.patient = r.patient
        if not settle:
            return None, None
        return self.settle(r.ward, r.bed, r.ts)

    def settle(
        self, ward: str, bed_name: str, ts: float
    ) -> tuple[ScoreUpdate | None, AlertEvent | None]:
        """Recompute the bed's score at ``ts`` if an input changed since the last time."""
        bed = self.beds.get((ward, bed_name))
        if bed is None or not bed.changed:
            return None, None
        bed.changed = False
        # the bed's present never goes back: a late reading is scored with the present
        at = ts if ts > bed.clock else bed.clock
        bed.clock = at
        if self.arrival is not None:
            bed.lag = self.arrival - at
        if self.shortcut and bed.stands and (bed.due is None or bed.due > at):
            # nothing expires by `at` and every changed value counts at `at` with the
            # sub-score the standing score has: computing it again would give it again
            # (so no update, and the trigger judged it already)
            lo, hi = bed.span
            fresh = self.cfg.freshness_s
            if at < lo + fresh and hi - at <= fresh and bed.restored_until is None:
                bed.span = (math.inf, -math.inf)
                self._schedule((ward, bed_name), bed)
                return None, None
        before = bed.score
        s = bed.tracker.current(at, self.cfg.freshness_s, strict=True)
        bed.score = s
        bed.restored_until = None
        update = self._publish(ward, bed_name, bed, s, at)
        # (an input expiring exactly now, not charted again, is an expiry like any other)
        expired = before is not None and any(p not in s.components for p in before.components)
        event = self._trigger(ward, bed_name, at, bed, s, expired)
        # (a value left out for being ahead comes in with the clock alone: no standing)
        bed.stands = not bed.tracker.ahead(at, self.cfg.freshness_s)
        bed.span = (math.inf, -math.inf)
        self._schedule((ward, bed_name), bed)
        return update, event

    def restore(self, e: AlertEvent, now: float | None = None) -> None:
        """An alert open at the last stop goes on. Its inputs were not carried over: it
        closes (evidence expired) ``freshness_s`` after ``max(e.at, now)`` unless a score
        of this run takes over before (``now``: the restart, on the clock of event time)."""
        bed = self._bed(e.ward, e.bed)
        bed.active = Active(e.id, _RANK[e.priority], e.started_at, e.seq, e.device, e.patient)
        bed.priority = e.priority
        bed.stands = False
        if bed.score is None:
            since = e.at if now is None else max(e.at, now)
            bed.restored_until = since + self.cfg.freshness_s
            self._schedule((e.ward, e.bed), bed)

    # ------------------------------------------------------------ time-driven work

    def tick(self, now: float) -> tuple[list[ScoreUpdate], list[AlertEvent]]:
        """All time-driven work due at or before ``now`` (event time), every bed, in time
        order: holds that have elapsed, inputs that have expired. Each update and event is
        dated at the instant it became due. Idempotent: a second ``tick(now)`` finds
        nothing; ``tick(t1)`` then ``tick(t2)`` gives what ``tick(t2)`` alone gives.
        Cheap: a heap of the beds' next due instants; nothing due costs one comparison.

        A bed whose readings arrive late (``lag``, from :attr:`arrival`) is judged at its
        own present, ``now - lag``: work due later waits for its readings or the clock."""
        updates: list[ScoreUpdate] = []
        events: list[AlertEvent] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            d, key = heapq.heappop(heap)
            bed = self.beds.get(key)
            if bed is None or bed.queued != d:
                continue  # superseded (the bed's due moved, or it was discharged)
            bed.queued = None
            if bed.due is not None and bed.due + bed.lag <= now:
                self._work(key, bed, updates, events)  # (re-queues the bed's next due)
            else:
                self._schedule(key, bed)
        return updates, events

    def advance(
        self, ward: str, bed_name: str, until: float
    ) -> tuple[list[ScoreUpdate], list[AlertEvent]] | None:
        """The bed's time-driven work due before ``until`` (a reading's event time, before
        the reading is applied), as :meth:`tick` would have done it. None: none due (the
        common case: one dict lookup and one comparison).

        Work due exactly at ``until`` is left to the reading's own score at that instant:
        a set charted exactly ``freshness_s`` after the last one replaces it without a
        moment of partial score in between (and so without closing and reopening the
        alert), and a hold ending then steps down to the trigger of that instant."""
        key = (ward, bed_name)
        bed = self.beds.get(key)
        if bed is None or bed.due is None or bed.due >= until:
            return None
        updates: list[ScoreUpdate] = []
        events: list[AlertEvent] = []
        while bed.due is not None and bed.due < until:
            self._work(key, bed, updates, events)
        return updates, events

    def _work(
        self,
        key: tuple[str, str],
        bed: _Bed,
        updates: list[ScoreUpdate],
        events: list[AlertEvent],
    ) -> None:
        """Do the bed's work due at ``bed.due``: recompute the score there (inputs older
        than ``freshness_s`` drop out), then judge the alert (a hold ending, evidence
        expiring). Every due instant is later than the bed's present, so this moves it on."""
        ward, name = key
        assert bed.due is not None
        at = bed.due if bed.due > bed.clock else bed.clock  # (later only after a reload)
        bed.clock = at
        event = None
        if bed.score is None:  # an alert carried over a restart, no input since
            if bed.active is not None and bed.priority is not None:
                event = self._expire(ward, name, at, bed, PARAMETERS, 0, "none since the restart")
            bed.restored_until = None
        else:
            before = bed.score
            s = bed.tracker.current(at, self.cfg.freshness_s, strict=True)
            bed.score = s
            update = self._publish(ward, name, bed, s, at)
            if update is not None:
                updates.append(update)
            expired = any(p not in s.components for p in before.components)
            event = self._trigger(ward, name, at, bed, s, expired)
            bed.stands = not bed.tracker.ahead(at, self.cfg.freshness_s)
            bed.span = (math.inf, -math.inf)
        if event is not None:
            events.append(event)
        self._schedule(key, bed)
        if bed.due is not None and bed.due <= at:  # (cannot happen: see _schedule)
            log.error("NEWS2 %s/%s: next due %r not after %r; dropped", ward, name, bed.due, at)
            bed.due, bed.queued = None, math.inf  # (its heap entry is stale: never looped)

    def _schedule(self, key: tuple[str, str], bed: _Bed) -> None:
        """Recompute the bed's next due instant and queue it if earlier than its queued one.

        Due: the expiry ``ts + freshness_s`` of each input the last score counted (which
        it counted because ``at < ts + freshness_s``: always after the bed's present); the
        end of a pending hold, ``lower_since + hold_s`` (after the present, or the alert
        would have stepped down); a restored alert's horizon."""
        due: float | None = None
        if bed.score is not None:
            fresh = self.cfg.freshness_s
            for p in bed.score.components:
                held = bed.tracker.latest(p)
                if held is not None and (due is None or held[0] + fresh < due):
                    due = held[0] + fresh
        if bed.active is not None:
            if bed.lower_since is not None:
                t = bed.lower_since + self.cfg.hold_s
                due = t if due is None or t < due else due
            if bed.restored_until is not None:
                t = bed.restored_until
                due = t if due is None or t < due else due
        bed.due = due
        if due is not None and (bed.queued is None or due + bed.lag < bed.queued):
            bed.queued = due + bed.lag
            heapq.heappush(self._heap, (bed.queued, key))

    def _publish(
        self, ward: str, bed_name: str, bed: _Bed, s: Score, at: float
    ) -> ScoreUpdate | None:
        sig = (s.total, tuple(s.components.items()), s.missing)
        if sig == bed.last:
            return None
        bed.last = sig
        return ScoreUpdate(
            ward,
            bed_name,
            {
                "news2": s.total,
                "partial": s.partial,
                "missing": list(s.missing),
                "components": dict(s.components),
                "risk": s.risk,
                "at": iso(at),
            },
        )
