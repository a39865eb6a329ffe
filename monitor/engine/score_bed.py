"""NEWS2 per bed: what the engine keeps of each bed's score, and which device feeds each
parameter when several measure it (:class:`_Sources`, part of
:class:`~monitor.engine.score.News2Scores`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from monitor.config import News2Config
from monitor.engine.news2 import Score, sub_score
from monitor.engine.news2_tracker import News2Tracker
from monitor.engine.threshold import Active
from monitor.model import Priority

#: Which device a NEWS2 parameter prefers when several measure it (README, "NEWS2"),
#: by the device's kind: its name's last dotted part (``MON1.ecg``) or the name itself.
#: ECG and arterial line first, then any other device (a chart, a thermometer), then
#: the pulse oximeter's pulse, then the cuff's.
SOURCE_RANK: dict[str, int] = {
    "ecg": 0,
    "abp": 0,
    "art": 0,
    "pleth": 2,
    "spo2": 2,
    "pulse": 2,
    "tele": 2,
    "spo2t": 2,
    "nibp": 3,
    "cuff": 3,
}


def source_rank(device: str) -> int:
    """Lower is preferred (:data:`SOURCE_RANK`; any other kind 1)."""
    return SOURCE_RANK.get(device.rsplit(".", 1)[-1].lower(), 1)


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
    #: the score last computed (None: none in this run yet)
    score: Score | None = None
    #: the bed's present: the newest event time its score was computed at
    clock: float = -math.inf
    #: the next instant of time-driven work (a hold ending, an input expiring), or None
    due: float | None = None
    #: the earliest key (``due + lag``) the bed has in the heap of due beds (None: none)
    queued: float | None = None
    #: how far the bed's input lags the wall clock (arrival - event time of its latest
    #: scored reading; 0 with no arrival time, as in a replay): on the daemon's clock the
    #: bed's present is ``now - lag``, so a tick never overtakes readings still on their
    #: way (a backlog after an outage, a simulation catching up, charting done late)
    lag: float = 0.0
    #: an alert carried over a restart, no input of it in this run: closed by then
    restored_until: float | None = None
    #: parameter -> device -> (ts, value) of its latest value: the parameter's source
    sources: dict[str, dict[str, tuple[float, float | bool | str]]] = field(default_factory=dict)
    #: parameter -> the device whose value the score uses
    source: dict[str, str] = field(default_factory=dict)
    #: :attr:`score` stands: since it was computed, inputs changed only to values of the
    #: same sub-score, and none it left out can come in with the clock alone (one held
    #: too far ahead): News2Scores.settle then need not compute it again
    stands: bool = False
    #: the earliest and latest event time of those values (each must count at the settle)
    span: tuple[float, float] = (math.inf, -math.inf)


class _Sources:
    """Each parameter's source device, and the value it holds (part of News2Scores)."""

    cfg: News2Config

    def _take(
        self, bed: _Bed, vital: str, device: str, value: float | bool | str, ts: float
    ) -> bool:
        """A parameter's value from ``device``; -> whether the score's input changed.

        One device at a time is a parameter's source, never a mix that alternates: among
        the devices whose latest value is within ``source_s`` of ``ts``, the preferred
        kind (:func:`source_rank`), then the current source, then the name; when none is
        that recent, the newest value."""
        seen = bed.sources.get(vital)
        if seen is None:
            seen = bed.sources[vital] = {}
        held = seen.get(device)
        if held is not None and ts < held[0]:
            return False  # older than what this device said already
        seen[device] = (ts, value)
        if len(seen) == 1:  # the common case: one device measures it
            bed.source[vital] = device
            return self._set(bed, vital, value, ts)
        current = bed.source.get(vital)
        recent = [d for d, (t, _v) in seen.items() if t >= ts - self.cfg.source_s]
        if recent:
            best = min(recent, key=lambda d: (source_rank(d), d != current, d))
        else:
            best = max(seen, key=lambda d: seen[d][0])
        if best != device and best == current:
            return False  # the preferred source stays; this value is kept aside
        bed.source[vital] = best
        t, v = seen[best]
        return self._set(bed, vital, v, t)

    @staticmethod
    def _set(bed: _Bed, vital: str, value: float | bool | str, ts: float) -> bool:
        """Hold ``value`` from ``ts`` (:meth:`News2Tracker.set`); -> whether it changed.
        The score stands while every change keeps its parameter's sub-score."""
        if not bed.tracker.set(vital, value, ts):
            return False
        if bed.stands:
            held = bed.score.components.get(vital) if bed.score is not None else None
            if (
                held is not None
                and not isinstance(value, str)
                and sub_score(vital, value, bed.tracker.scale) == held
            ):
                lo, hi = bed.span
                bed.span = (ts if ts < lo else lo, ts if ts > hi else hi)
            else:
                bed.stands = False
        return True
