"""The public life of an alert once a rule has raised it: acknowledge, escalate, re-notify.

Pure state (no I/O); the clock is injected. One owner changes it, the engine
(:class:`monitor.engine.Engine`), in the order of its queue: it passes every alert event
through :meth:`Lifecycle.observe` (the rules', and the technical alarms raised outside
them, which come to it in batches), applies operator acknowledgements (``Batch.acks``)
through :meth:`Lifecycle.ack`, and at each clock tick (about once a second) takes the
escalations and re-notifications due from :meth:`Lifecycle.tick`. Others only read it
(:meth:`active`, :meth:`due`). Every event that leaves carries the
alert's next ``seq``, so consumers can order an alert's events.

States (IEC 60601-1-8 / IHE ACM ideas): ``active`` -> ``acknowledged`` -> ``resolved``.

* **Acknowledge** (``{"id", "by"}``): state ``acknowledged`` with ``ack_by``; it stops
  escalation and re-notification. If the condition then worsens (the rule raises the
  priority), the alert is ``active`` again and must be acknowledged again.
* **Escalate**: active and unacknowledged for ``escalate_after_s`` (wall clock): priority
  one level up (``high`` stays ``high``), ``"escalated": true``, once per activation.
* **Re-notify**: active and unacknowledged, re-published every ``renotify_s`` with
  ``"renotify": true``.
* **Resolve** comes from the rule and always ends the alert, acknowledged or not.

Events made here (not by a rule) say so in ``"action"``: ``acknowledge``, ``escalate``
or ``renotify``; the store keeps them as the audit trail.

``at`` of an acknowledgement, escalation or re-notification is the wall-clock time of
that action; ``at`` of a rule's event stays the reading's event time.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from monitor.config import AlertsConfig
from monitor.model import AlertEvent, AlertState, Priority
from monitor.pipeline import Carried, UnknownAlert  # (UnknownAlert: its old place)

_RANK = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2}
_UP = {Priority.LOW: Priority.MEDIUM, Priority.MEDIUM: Priority.HIGH, Priority.HIGH: Priority.HIGH}


#: Fields that describe one event only, not the alert: not carried to the next event.
_TRANSIENT = ("renotify", "action")


@dataclass(slots=True)
class _Tracked:
    last: AlertEvent  #: the latest event published
    rule_priority: Priority  #: the priority the rule gives it (before escalation)
    active_since: float  #: wall clock of the (re)activation that escalation counts from
    notified_at: float  #: wall clock of the latest publication
    acked_by: str | None = None
    escalated: bool = False


class Lifecycle:
    def __init__(self, cfg: AlertsConfig, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self._clock = clock
        self._alerts: dict[str, _Tracked] = {}

    def __contains__(self, alert_id: str) -> bool:
        return alert_id in self._alerts

    def active(self) -> list[AlertEvent]:
        """The latest event of every alert not resolved."""
        return [t.last for t in self._alerts.values()]

    def restore(self, events: Iterable[AlertEvent]) -> None:
        """Take over alerts that were open at the last stop (their last stored event)."""
        now = self._clock()
        for e in events:
            t = _Tracked(copy.copy(e), e.priority, now, now)
            if e.state == AlertState.ACKNOWLEDGED:
                t.acked_by = str(e.extra.get("ack_by", "?"))
            t.escalated = bool(e.extra.get("escalated", False))
            if t.escalated:
                t.rule_priority = _down(e.priority)
            self._alerts[e.id] = t

    def observe(self, e: AlertEvent) -> AlertEvent:
        """A rule's event on its way out: number it and apply the alert's lifecycle."""
        now = self._clock()
        t = self._alerts.get(e.id)
        if t is None:
            if e.state == AlertState.RESOLVED:
                return e  # not tracked (e.g. closed at restore): pass through
            self._alerts[e.id] = _Tracked(copy.copy(e), e.priority, now, now)
            return e
        e.seq = t.last.seq + 1
        # (a new dict: a producer's copy shares ``extra`` with the alarm it keeps open)
        if e.state == AlertState.RESOLVED:
            added: dict[str, object] = {}
            if t.acked_by is not None:
                added["ack_by"] = t.acked_by
            if t.escalated:
                added["escalated"] = True
            if added:
                e.extra = {**e.extra, **added}
            del self._alerts[e.id]
            return e
        worse = _RANK[e.priority] > _RANK[t.rule_priority]
        t.rule_priority = e.priority
        if worse and t.acked_by is not None:
            t.acked_by = None  # a worse condition needs a new acknowledgement
            t.active_since = now
            t.escalated = False
        extra = {k: v for k, v in e.extra.items() if k not in _TRANSIENT}
        if t.escalated:
            e.priority = _UP[e.priority]
            extra["escalated"] = True
        if t.acked_by is not None:
            e.state = AlertState.ACKNOWLEDGED
            extra["ack_by"] = t.acked_by
        e.extra = extra
        t.last = copy.copy(e)
        t.notified_at = now
        return e

    def forget_beds(self, beds: set[tuple[str, str]]) -> int:
        """Stop tracking the alerts of ``beds`` (handed over to another instance, which
        carries them on): no event. -> how many."""
        gone = [i for i, t in self._alerts.items() if (t.last.ward, t.last.bed) in beds]
        for i in gone:
            del self._alerts[i]
        return len(gone)

    def record(self, alert_id: str) -> Carried | None:
        """The alert as the cluster keeps it for a partition's next owner (None: not
        open)."""
        t = self._alerts.get(alert_id)
        if t is None:
            return None
        return Carried(
            copy.copy(t.last),
            str(t.rule_priority),
            t.active_since,
            t.notified_at,
            t.acked_by,
            t.escalated,
        )

    def carry(
        self, alerts: Iterable[Carried], ours: Callable[[str, str], bool]
    ) -> list[AlertEvent]:
        """Take on a partition's open alerts from its last owner (``ours``: its beds):
        each goes on with its seq, acknowledgement, escalation and timers. An alert of
        those beds tracked here and not among them (the replay raised it) is forgotten
        without an event if one of them is the same condition (same bed, device, vital
        and rule: its onset lay before what the replay covered); otherwise nobody was
        told of it (the last owner keeps an alert in the cluster before it publishes it):
        -> the events that announce those now."""
        carried = {c.event.id: c for c in alerts}
        slots = {_slot(c.event) for c in carried.values()}
        announce: list[AlertEvent] = []
        for i, t in list(self._alerts.items()):
            if i in carried or not ours(t.last.ward, t.last.bed):
                continue
            if _slot(t.last) in slots:
                del self._alerts[i]
            else:
                t.notified_at = self._clock()
                announce.append(copy.copy(t.last))
        for i, c in carried.items():
            t = _Tracked(
                copy.copy(c.event), Priority(c.rule_priority), c.active_since, c.notified_at
            )
            t.acked_by, t.escalated = c.acked_by, c.escalated
            self._alerts[i] = t
        return announce

    def ack(self, alert_id: str, by: str) -> AlertEvent | None:
        """Acknowledge; returns the event to publish, or None if already acknowledged."""
        t = self._alerts.get(alert_id)
        if t is None:
            raise UnknownAlert(alert_id)
        if t.acked_by is not None:
            return None
        t.acked_by = by
        return self._emit(
            t, state=AlertState.ACKNOWLEDGED, extra={"ack_by": by, "action": "acknowledge"}
        )

    def tick(self) -> list[AlertEvent]:
        """Escalations and re-notifications due now."""
        now = self._clock()
        out = []
        for t in list(self._alerts.values()):
            action = self._action(t, now)
            if action == "escalate":
                t.escalated = True
                out.append(
                    self._emit(
                        t,
                        priority=_UP[t.last.priority],
                        extra={"escalated": True, "action": "escalate"},
                    )
                )
            elif action == "renotify":
                out.append(self._emit(t, extra={"renotify": True, "action": "renotify"}))
        return out

    def due(self) -> bool:
        """Whether :meth:`tick` would have anything to do now (changes nothing)."""
        now = self._clock()
        return any(self._action(t, now) is not None for t in self._alerts.values())

    def _action(self, t: _Tracked, now: float) -> str | None:
        """What the alert is due for now: ``escalate``, ``renotify`` or None."""
        if t.acked_by is not None:
            return None
        cfg = self.cfg
        if (
            cfg.escalate_after_s > 0
            and not t.escalated
            and now - t.active_since >= cfg.escalate_after_s
        ):
            return "escalate"
        if cfg.renotify_s > 0 and now - t.notified_at >= cfg.renotify_s:
            return "renotify"
        return None

    def _emit(
        self,
        t: _Tracked,
        *,
        state: AlertState | None = None,
        priority: Priority | None = None,
        extra: dict[str, object],
    ) -> AlertEvent:
        now = self._clock()
        e = copy.copy(t.last)
        e.extra = {k: v for k, v in e.extra.items() if k not in _TRANSIENT} | extra
        e.seq = t.last.seq + 1
        e.at = now
        if state is not None:
            e.state = state
        if priority is not None:
            e.priority = priority
        t.last = copy.copy(e)
        t.notified_at = now
        return e


def _slot(e: AlertEvent) -> tuple[str, str, str, str, str]:
    """One condition: an alert of it at a time."""
    return (e.ward, e.bed, e.device, e.vital, e.rule)


def _down(p: Priority) -> Priority:
    return {Priority.HIGH: Priority.MEDIUM, Priority.MEDIUM: Priority.LOW}.get(p, p)
