"""Flapping detection on event time (Kapacitor's ``.flapping(low, high)`` in spirit). Pure: no I/O.

Contract of :class:`Flapping` (configured by :class:`~monitor.config.FlappingConfig`):

* **Key** = (ward, bed, device, rule) of an :class:`~monitor.model.AlertEvent`. Every
  event a rule emits is one *change* of its key (raise, priority change, resolve); its
  ``at`` (event time) is recorded. Changes are counted within ``(t - window_s, t]``, ``t``
  being the newest event time seen for the key (an event's ``at``, or a :meth:`tick`).
* **Entering**: the event that makes the count reach ``high`` puts the key into an
  *episode*: one new alert, rule ``<rule>.flapping`` (same kind, vital, device and
  patient), priority the highest of the key's changes in the window, ``value`` the
  count, ``limit`` = ``high``, ``started_at`` = ``at`` = that event's ``at``, ``seq`` 1.
  The triggering event itself is held, unless it is a resolve (see below).
* **During an episode** the key's events are **held** (not returned); the latest held
  event is kept per alert id. A held event of a higher priority than the flapping
  alert's updates it (same id, ``seq + 1``, that priority, ``value`` the count).
* **Recovery is always emitted**: a resolve passes at once unless its alert was raised
  during the episode and never passed on (then the alert and its resolve both vanish).
  An alert first seen here with ``seq > 1`` is taken as raised before this filter saw
  it (e.g. carried over a restart), so its resolve passes too.
* **Leaving**: once at most ``low`` changes fall within the window (checked by
  :meth:`tick` for every reading of the bed, and by :meth:`filter` at each event's
  ``at``), the flapping alert resolves (``at`` = that time) and then, per held alert id
  in first-held order, its latest held event is emitted (a copy, its own ``at``) if it
  is not a resolve: consumers get the rule's current state. An event that ends an
  episode in :meth:`filter` comes after those, as it would outside an episode.
  ``low < high`` (validated), so one event can never both enter and leave.
* ``enabled: false``: :meth:`filter` returns its input unchanged, :meth:`tick` ``[]``.

Events passed on are the very objects given; events made here are new objects, and
held events are never mutated. A key keeps at most ``high`` times outside an episode
(plus what falls within the window during one) and is forgotten once it has no change
within the window and is not flapping. :meth:`tick` costs one dict lookup for a bed
with no episode.

Worked example (``window_s`` 600, ``high`` 6, ``low`` 2), ``spo2.low`` alternating every
10 s from t=0: the raises at 0, 20, 40 and resolves at 10, 30 pass; the resolve at 50 is
the 6th change: it passes (its raise was published), then ``spo2.low.flapping`` is
raised. Later raises (and their resolves) are held. At the first reading where at most
2 changes lie within the last 600 s, ``spo2.low.flapping`` resolves, followed by
``spo2.low``'s active alert if the SpO2 is still low.
"""

from __future__ import annotations

import collections
import dataclasses
from collections import deque
from typing import NamedTuple

from monitor.config import FlappingConfig
from monitor.model import LABELS, AlertEvent, AlertState, Priority, fmt_value, new_alert

_RANK = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2}
SUFFIX = ".flapping"


class _Key(NamedTuple):
    ward: str
    bed: str
    device: str
    rule: str


@dataclasses.dataclass(slots=True)
class _Episode:
    """One open ``<rule>.flapping`` alert and what it holds back."""

    #: our own record of the latest flapping-alert event (copies of it are emitted, since
    #: consumers such as the lifecycle renumber and annotate what they are given)
    alert: AlertEvent
    #: latest held event per alert id, in first-held order
    held: dict[str, AlertEvent] = dataclasses.field(default_factory=dict)
    #: ids raised during the episode and never passed on
    unpublished: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(slots=True)
class _State:
    #: (at, priority) of the key's changes within the window, oldest first
    changes: deque[tuple[float, Priority]] = dataclasses.field(default_factory=deque)
    now: float = float("-inf")  #: newest event time seen for the key
    #: ids passed on in a non-resolved state and not yet passed on resolved
    published: set[str] = dataclasses.field(default_factory=set)
    episode: _Episode | None = None


class Flapping:
    def __init__(self, cfg: FlappingConfig) -> None:
        self.cfg = cfg
        self.counts: collections.Counter[str] = collections.Counter()
        self._keys: dict[_Key, _State] = {}
        #: (ward, bed) -> keys of that bed in an episode
        self._flapping: dict[tuple[str, str], dict[_Key, None]] = {}  # ordered set
        self._now = float("-inf")  #: newest event time seen overall (for forgetting keys)
        self._sweep_at = 64  #: sweep idle keys when there are this many

    # ------------------------------------------------------------------ public

    def filter(self, events: list[AlertEvent]) -> list[AlertEvent]:
        """Rule events of one engine step (in order) -> the events to pass on."""
        if not self.cfg.enabled:
            return events
        out: list[AlertEvent] = []
        for e in events:
            self._one(e, out)
        if len(self._keys) >= self._sweep_at:
            self._sweep()
        return out

    def tick(self, ward: str, bed: str, ts: float) -> list[AlertEvent]:
        """A reading of this bed at event time ts: ends flapping episodes of the bed that
        have settled; -> their events."""
        keys = self._flapping.get((ward, bed))
        if not keys or not self.cfg.enabled:
            return []
        out: list[AlertEvent] = []
        for key in list(keys):
            st = self._keys[key]
            st.now = max(st.now, ts)
            self._prune(st)
            if len(st.changes) <= self.cfg.low:
                out += self._leave(key, st, st.now)
        return out

    @property
    def beds(self) -> dict[tuple[str, str], dict[_Key, None]]:
        """Beds with a rule flapping (read-only view: empty when none flaps, and
        :meth:`tick` then has nothing to do)."""
        return self._flapping

    def flapping(self) -> int:
        """Number of keys currently flapping."""
        return sum(len(keys) for keys in self._flapping.values())

    def reset_bed(self, ward: str, bed: str, why: str = "bed discharged") -> list[AlertEvent]:
        """Bed discharged (or forgotten: ``why``): forget its history; resolve its open
        flapping alerts (events returned, at = the episode's latest event time)."""
        out: list[AlertEvent] = []
        for key in [k for k in self._keys if k.ward == ward and k.bed == bed]:
            st = self._keys.pop(key)
            if st.episode is not None:
                self._prune(st)
                out.append(self._resolve_alert(key, st.episode, st, st.now, ended=why))
        self._flapping.pop((ward, bed), None)
        return out

    # ------------------------------------------------------------------ internals

    def _one(self, e: AlertEvent, out: list[AlertEvent]) -> None:
        key = _Key(e.ward, e.bed, e.device, e.rule)
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = _State()
        self._record(st, e)
        resolved = e.state == AlertState.RESOLVED
        ep = st.episode
        if ep is None:
            if len(st.changes) < self.cfg.high:
                self._pass(st, e, out)
                return
            # entering: the triggering event passes only if it is a recovery
            ep = _Episode(self._raise_alert(key, st, e))
            if resolved:
                self._pass(st, e, out)
            else:
                self._hold(st, ep, e)
            out.append(_copy(ep.alert))
            self._start(key, st, ep)
            return
        if len(st.changes) <= self.cfg.low:
            # settled by this event's own time: leave, then treat it as outside an episode
            if e.id in ep.unpublished and resolved:
                self._hold(st, ep, e)  # never shown: raise and resolve both vanish
                out += self._leave(key, st, st.now)
                return
            ep.held.pop(e.id, None)  # superseded by e itself
            ep.unpublished.discard(e.id)
            out += self._leave(key, st, st.now)
            self._pass(st, e, out)
            return
        if resolved and e.id not in ep.unpublished:
            ep.held.pop(e.id, None)
            self._pass(st, e, out)  # recovery is always emitted
            return
        self._hold(st, ep, e)
        if _RANK[e.priority] > _RANK[ep.alert.priority]:
            ep.alert = dataclasses.replace(
                ep.alert,
                priority=e.priority,
                state=AlertState.ACTIVE,
                value=float(len(st.changes)),
                at=e.at,
                seq=ep.alert.seq + 1,
                message=self._flapping_message(key, e.vital, len(st.changes)),
            )
            out.append(_copy(ep.alert))

    def _record(self, st: _State, e: AlertEvent) -> None:
        changes = st.changes
        if not changes or e.at >= changes[-1][0]:
            changes.append((e.at, e.priority))
        else:  # out of order (rare): keep the deque sorted by time
            i = len(changes)
            while i > 0 and changes[i - 1][0] > e.at:
                i -= 1
            changes.insert(i, (e.at, e.priority))
        st.now = max(st.now, e.at)
        self._now = max(self._now, e.at)
        self._prune(st)

    def _prune(self, st: _State) -> None:
        horizon = st.now - self.cfg.window_s
        changes = st.changes
        while changes and changes[0][0] <= horizon:
            changes.popleft()
        if st.episode is None:
            # outside an episode only the newest `high` changes can matter
            while len(changes) > self.cfg.high:
                changes.popleft()

    def _pass(self, st: _State, e: AlertEvent, out: list[AlertEvent]) -> None:
        if e.state == AlertState.RESOLVED:
            st.published.discard(e.id)
        else:
            st.published.add(e.id)
        out.append(e)

    def _hold(self, st: _State, ep: _Episode, e: AlertEvent) -> None:
        self.counts["held"] += 1
        if e.state == AlertState.RESOLVED and e.id in ep.unpublished:
            del ep.held[e.id]  # raised and resolved unseen: nothing to show for it
            ep.unpublished.discard(e.id)
            return
        # (any other resolve passes: only raises and priority changes get here)
        if e.id not in ep.held and e.id not in st.published and e.seq <= 1:
            ep.unpublished.add(e.id)  # a raise, held
        elif e.id not in st.published and e.id not in ep.unpublished:
            st.published.add(e.id)  # raised before this filter saw it: counts as shown
        ep.held[e.id] = e

    def _start(self, key: _Key, st: _State, ep: _Episode) -> None:
        st.episode = ep
        self.counts["episodes"] += 1
        self._flapping.setdefault((key.ward, key.bed), {})[key] = None

    def _leave(self, key: _Key, st: _State, at: float) -> list[AlertEvent]:
        ep = st.episode
        assert ep is not None
        st.episode = None
        bed = (key.ward, key.bed)
        keys = self._flapping.get(bed)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._flapping[bed]
        out = [self._resolve_alert(key, ep, st, at)]
        for held in ep.held.values():
            if held.state == AlertState.RESOLVED:
                continue  # (defensive: resolves pass or are dropped, never kept)
            out.append(_copy(held))
            st.published.add(held.id)
        self._prune(st)
        return out

    def _raise_alert(self, key: _Key, st: _State, e: AlertEvent) -> AlertEvent:
        rule = key.rule + SUFFIX
        n = len(st.changes)
        priority = max((p for _, p in st.changes), key=_RANK.__getitem__)
        return new_alert(
            ward=key.ward,
            bed=key.bed,
            device=key.device,
            patient=e.patient,
            vital=e.vital,
            rule=rule,
            kind=e.kind,
            priority=priority,
            value=float(n),
            limit=float(self.cfg.high),
            message=self._flapping_message(key, e.vital, n),
            started=e.at,
        )

    def _resolve_alert(
        self, key: _Key, ep: _Episode, st: _State, at: float, *, ended: str | None = None
    ) -> AlertEvent:
        n = len(st.changes)
        what = _describe(key.rule, ep.alert.vital)
        if ended:
            message = f"{what} alarm flapping ended: {ended}"
        else:
            message = f"{what} alarm settled: {_changes(n)} in the last {_span(self.cfg.window_s)}"
        return dataclasses.replace(
            ep.alert,
            state=AlertState.RESOLVED,
            value=float(n),
            at=at,
            seq=ep.alert.seq + 1,
            message=message,
            extra=dict(ep.alert.extra),
        )

    def _flapping_message(self, key: _Key, vital: str, n: int) -> str:
        return (
            f"{_describe(key.rule, vital)} alarm flapping: {_changes(n)} in "
            f"{_span(self.cfg.window_s)}; its alarms are held until it settles"
        )

    def _sweep(self) -> None:
        """Forget keys with no change within the window that are not flapping."""
        horizon = self._now - self.cfg.window_s
        idle = [
            k
            for k, st in self._keys.items()
            if st.episode is None and (not st.changes or st.changes[-1][0] <= horizon)
        ]
        for k in idle:
            del self._keys[k]
        self._sweep_at = max(64, 2 * len(self._keys))


def _copy(e: AlertEvent) -> AlertEvent:
    return dataclasses.replace(e, extra=dict(e.extra))


def _describe(rule: str, vital: str) -> str:
    """``spo2.low`` -> ``SpO2 low``; ``spo2.trend_down`` -> ``SpO2 trend down``;
    ``news2`` -> ``NEWS2``."""
    if vital and rule == vital:
        return LABELS.get(vital, vital)
    if vital and rule.startswith(vital + "."):
        rest = rule[len(vital) + 1 :].replace("_", " ")
        return f"{LABELS.get(vital, vital)} {rest}"
    return rule


def _changes(n: int) -> str:
    return f"{n} change" if n == 1 else f"{n} changes"


def _span(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{fmt_value(seconds / 3600)} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{fmt_value(seconds / 60)} min"
    return f"{fmt_value(seconds)} s"
