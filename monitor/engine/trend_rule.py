"""What trend rules share (:mod:`monitor.engine.trend` has the rules): the least-squares
slope and the median they compute, and :class:`_TrendRule`, the raise/resolve logic of a
rule that measures one number per evaluation and compares it with its limits."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

from monitor.config import (
    BaselineLimit,
    SlopeLimit,
)
from monitor.engine.history import History
from monitor.engine.threshold import Active, SeriesKey
from monitor.engine.window import Array
from monitor.model import (
    LABELS,
    VITALS,
    AlertEvent,
    AlertState,
    Priority,
    alert_id,
    fmt_value,
)

Direction = Literal["up", "down"]

# ============================================================================= maths


def ls_slope(t: Array, v: Array) -> float:
    """Least-squares slope of ``v`` against ``t`` (units per second), closed form.

    Centred on the means, so epoch-sized times lose no precision: with ``dt = t - mean(t)``,
    slope = sum(dt * (v - mean(v))) / sum(dt**2). NaN when the times do not vary.
    """
    n = len(t)
    dt = t - t.sum() / n  # (the mean as ndarray.mean computes it, without its overhead)
    den = float(np.dot(dt, dt))
    if den <= 0.0:
        return math.nan
    return float(np.dot(dt, v - v.sum() / n)) / den


def median(a: Array) -> float:
    """Median by ``np.partition`` (O(n), and several times faster than ``np.median``)."""
    n = len(a)
    k = n // 2
    if n % 2:
        return float(np.partition(a, k)[k])
    # one kth and a max: partitioning at (k - 1, k) costs several times more
    p = np.partition(a, k)
    return (float(p[:k].max()) + float(p[k])) / 2


def _fmt_per(per_s: float) -> str:
    """600 -> "10 min", 3600 -> "1 h", 90 -> "90 s"."""
    if per_s % 3600 == 0:
        return f"{per_s / 3600:g} h"
    if per_s % 60 == 0:
        return f"{per_s / 60:g} min"
    return f"{fmt_value(per_s)} s"


_L = TypeVar("_L", SlopeLimit, BaselineLimit)


def _directions(up: _L | None, down: _L | None) -> tuple[tuple[Direction, _L | None], ...]:
    return (("up", up), ("down", down))


# ============================================================================= rules


@dataclass(frozen=True, slots=True)
class Measure:
    """What a trend rule sees at the newest reading.

    ``score`` is the movement in the rule's direction (positive = towards alarm), in the
    units of its limit; ``value`` and ``limit`` go into the alert event.
    """

    score: float
    value: float
    limit: float
    ref: float = math.nan  #: baseline rules: the baseline median


class _TrendRule(ABC):
    """State machine shared by the trend rules: raise, hold, resolve (level 1 only)."""

    vital: str
    direction: Direction
    name: str
    threshold: float
    clear_at: float
    priority: Priority
    needs_s: float
    #: Like ThresholdRule.limits (level -> limit), for the engine's restore().
    limits: dict[int, float]
    #: The engine evaluates a trend at most once per this much event time of its series
    #: (a 10-minute slope does not change meaningfully in a second; thresholds still run
    #: on every reading). Event time, so a replay at any speed gives the same alerts.
    every_s: float = 5.0

    def __init__(
        self,
        vital: str,
        direction: Direction,
        suffix: str,
        threshold: float,
        clear_fraction: float,
        priority: Priority,
        needs_s: float,
    ) -> None:
        if vital not in VITALS:
            raise ValueError(f"unknown vital {vital!r}")
        self.vital = vital
        self.direction = direction
        self.name = f"{vital}.{suffix}_{direction}"
        self.threshold = threshold
        self.clear_at = clear_fraction * threshold
        self.priority = priority
        self.needs_s = needs_s
        self._sign = 1.0 if direction == "up" else -1.0
        self.limits = {1: self._sign * threshold}
        self.unit = VITALS[vital][0]
        self.label = LABELS[vital]

    @abstractmethod
    def measure(self, ts: Array, vals: Array, history: History | None = None) -> Measure | None:
        """The rule's view of the window (and of the older readings' ``history``) at its
        newest reading; None: too little data."""

    def evaluate(
        self,
        key: SeriesKey,
        ts: Array,
        vals: Array,
        active: Active | None,
        patient: str | None,
        spot: bool = False,  # (the threshold rules' signature)
        max_gap: float | None = None,
        history: History | None = None,
    ) -> tuple[Active | None, AlertEvent | None]:
        """Evaluate at the newest reading of a series; -> (new active state, event).

        ``ts`` (sorted, event time) and ``vals`` are the series' window, which must reach
        back ``needs_s`` before the newest reading for the rule to see all it needs.
        """
        m = self.measure(ts, vals, history)
        if m is None:
            return active, None  # too little data to judge: hold whatever state there is
        at = float(ts[-1])
        if active is None:
            if m.score < self.threshold:
                return None, None
            active = Active(
                alert_id(key.ward, key.bed, key.device, self.name, at),
                1,
                at,
                1,
                key.device,
                patient,
            )
            return active, self._event(key, active, AlertState.ACTIVE, m, at, self._raised(m))
        if m.score >= self.clear_at:
            return active, None
        active.seq += 1
        message = self._resolved(m, at - active.started_at)
        return None, self._event(key, active, AlertState.RESOLVED, m, at, message)

    def _event(
        self, key: SeriesKey, a: Active, state: AlertState, m: Measure, at: float, message: str
    ) -> AlertEvent:
        return a.event(
            key.ward,
            key.bed,
            self.vital,
            self.name,
            "trend",
            self.priority,
            state,
            m.value,
            m.limit,
            message,
            at,
        )

    @abstractmethod
    def _raised(self, m: Measure) -> str: ...

    @abstractmethod
    def _resolved(self, m: Measure, lasted: float) -> str: ...
