"""NEWS2 per bed, in the engine: scores recomputed on input changes, alerts on triggers.

For each bed a :class:`~monitor.engine.news2.News2Tracker` keeps the latest value of
each parameter (whichever device sent it). When a reading of an input arrives, the
score at that reading's event time is recomputed from the values within
``rules.news2.freshness_s``. A changed score is published (retained) as
``{"news2", "partial", "missing", "components", "at"}``; the RCP triggers raise one
alert per bed, rule ``news2``, kind ``score``:

* any single parameter scoring 3 -> priority ``low``, "urgent ward review";
* aggregate 5-6 -> ``medium``, "urgent response";
* aggregate >= 7 -> ``high``, "emergency response".

The alert follows the trigger (same id): up at once, down (or resolved when no trigger
applies) once the lower trigger has lasted ``hold_s`` of event time, re-checked on every
input reading. Only complete scores alert unless ``alert_partial`` is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from monitor.config import News2Config
from monitor.engine.news2 import PARAMETERS, News2Tracker, Scale, Score
from monitor.engine.threshold import Active
from monitor.model import AVPU_CODES, AlertEvent, AlertState, Priority, Reading, alert_id, iso

RULE = "news2"
_RANK = {None: 0, Priority.LOW: 1, Priority.MEDIUM: 2, Priority.HIGH: 3}
_LIMIT = {Priority.LOW: 3.0, Priority.MEDIUM: 5.0, Priority.HIGH: 7.0}


@dataclass(frozen=True, slots=True)
class ScoreUpdate:
    """A bed's new NEWS2 score, for the retained score topic (None: clear it)."""

    ward: str
    bed: str
    payload: dict[str, Any] | None


@dataclass(slots=True)
class _Bed:
    tracker: News2Tracker
    last: tuple[object, ...] | None = None
    active: Active | None = None
    priority: Priority | None = None
    patient: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: an input changed since the score was last computed
    changed: bool = False
    #: event time since which the trigger has been below the alert's priority
    lower_since: float | None = None


class News2Scores:
    def __init__(self, cfg: News2Config) -> None:
        self.cfg = cfg
        self.beds: dict[tuple[str, str], _Bed] = {}
        #: SpO2 scale per bed (from its profile); others use ``cfg.scale``.
        self.scales: dict[tuple[str, str], Scale] = {}

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
            self.beds[(ward, bed)].tracker.scale = scale

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
            event = AlertEvent(
                id=a.id, ward=ward, bed=bed, device=RULE, patient=a.patient, vital=RULE,
                rule=RULE, kind="score", priority=b.priority, state=AlertState.RESOLVED,
                value=math.nan, limit=_LIMIT[b.priority],
                message="patient discharged: score alert closed", started_at=a.started_at,
                at=at, seq=a.seq,
            )  # fmt: skip
        return ScoreUpdate(ward, bed, None), event

    def observe(
        self, r: Reading, settle: bool = True
    ) -> tuple[ScoreUpdate | None, AlertEvent | None]:
        """Feed one reading; -> (score update if it changed, alert event if any).

        The score is recomputed at ``settle``: pass False while the next reading is of the
        same bed at the same event time (an object with six vitals is one change of the
        score, not six, and the score never mixes half of an instant with the one
        before). Any reading may settle, a NEWS2 input or not."""
        if self.cfg.enabled and r.vital in PARAMETERS:
            bed = self._bed(r.ward, r.bed)
            value: float | bool | str = r.value
            if r.vital == "avpu":
                value = AVPU_CODES[int(r.value)]
            elif r.vital == "o2":
                value = bool(r.value)
            if bed.tracker.update(r.vital, value, r.ts):
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
        s = bed.tracker.current(ts, self.cfg.freshness_s)
        sig = (s.total, tuple(s.components.items()), s.missing)
        update = None
        if sig != bed.last:
            bed.last = sig
            update = ScoreUpdate(ward, bed_name, {
                "news2": s.total, "partial": s.partial, "missing": list(s.missing),
                "components": dict(s.components), "risk": s.risk, "at": iso(ts),
            })  # fmt: skip
        return update, self._trigger(ward, bed_name, ts, bed, s)

    def restore(self, e: AlertEvent) -> None:
        bed = self._bed(e.ward, e.bed)
        bed.active = Active(e.id, _RANK[e.priority], e.started_at, e.seq, e.device, e.patient)
        bed.priority = e.priority

    def _trigger(
        self, ward: str, bed_name: str, at: float, bed: _Bed, s: Score
    ) -> AlertEvent | None:
        if s.partial and not self.cfg.alert_partial:
            return None
        priority, why = s.trigger()
        if priority == bed.priority:
            bed.lower_since = None
            return None
        if _RANK[priority] < _RANK[bed.priority] and self.cfg.hold_s > 0:
            if bed.lower_since is None:
                bed.lower_since = at
            if at - bed.lower_since < self.cfg.hold_s:
                return None
        bed.lower_since = None
        if bed.active is None:
            assert priority is not None
            ident = alert_id(ward, bed_name, RULE, RULE, at)
            bed.active = Active(ident, _RANK[priority], at, 0, RULE, bed.patient)
        a = bed.active
        a.seq += 1
        parts = ", ".join(f"{k} {v}" for k, v in s.components.items() if v)
        if priority is None:
            state, shown = AlertState.RESOLVED, bed.priority or Priority.LOW
            message = f"NEWS2 {s.total}: no trigger ({parts or 'all parameters 0'})"
            bed.active = None
        else:
            state, shown = AlertState.ACTIVE, priority
            message = f"NEWS2 {s.total}: {why} ({parts})"
            if s.partial:
                message += f"; partial, missing {', '.join(s.missing)}"
        bed.priority = priority
        return AlertEvent(
            id=a.id, ward=ward, bed=bed_name, device=RULE, patient=a.patient, vital=RULE,
            rule=RULE, kind="score", priority=shown, state=state, value=float(s.total),
            limit=_LIMIT[shown], message=message, started_at=a.started_at, at=at, seq=a.seq,
        )  # fmt: skip
