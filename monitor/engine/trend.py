"""Trend rules: slope of a vital over time, and deviation from the bed's own baseline.

Pure, like :mod:`monitor.engine.threshold`: no I/O, no wall clock. Everything is
computed from the readings' own timestamps (event time) at the newest reading of a
series, so a replay at any speed, or of the same recording shifted in time, gives the
same events (shifted).

Two rule types, both with the same API as :class:`~monitor.engine.threshold.ThresholdRule`
(``name``, ``vital``, ``limits``, ``evaluate(key, ts, vals, active, patient)``) plus
``needs_s``, the event time of history each reads:

:class:`SlopeRule` (``spo2.trend_down``, ``hr.trend_up``, ...)
    Least-squares slope of value against time over the last ``window_s``, expressed in
    units per ``per_s`` (e.g. % per 10 min). It counts only with ``min_readings``
    readings in that slice spanning at least ``min_coverage * window_s``. Raises when
    the slope reaches ``rate`` in the rule's direction, clears when it falls back
    below ``clear_fraction * rate`` (hysteresis: a slope hovering at the limit does
    not flap). ``needs_s = window_s``.

    Worked example, ``spo2.trend_down`` with the defaults (3 % per 10 min over 10 min,
    10 readings spanning 6 min, clear below 1.5), one reading every 10 s::

        t=0..      97 falling 0.4 %/min    slope -4 %/10 min, span < 360 s: nothing
        t=360      94.6                    span 360 s: raise "SpO2 falling 4 % per 10 min"
        t=360..    keeps falling           still active: no event
        then flat                          slope eases above -1.5: resolved

:class:`BaselineRule` (``hr.baseline_up``, ``spo2.baseline_down``, ...)
    The recent value (median of the last ``recent_s``) against the bed's baseline (median
    of the ``baseline_s`` before that). Raises when it has moved by ``delta`` in the
    rule's direction, clears below ``clear_fraction * delta``. Cannot alert until the
    baseline holds ``min_baseline_readings`` readings spanning ``min_baseline_s``, nor
    with fewer than ``min_recent_readings`` recent readings.
    ``needs_s = recent_s + baseline_s`` (4 h 5 min by default).

    The baseline moves: a change that lasts longer than about half of ``baseline_s``
    becomes the new baseline (the median then sits on the new level) and its alert
    resolves. That is the intent (a deviation from the patient's *own recent* state);
    absolute levels stay the job of the threshold rules.

While an alert is active and the newest reading leaves too little data to judge (a gap
in the feed), the alert is held: it resolves on evidence, never on missing data.

Window length: the engine keeps ``rules.window_s`` (300 s by default) of raw readings per
series, and at least the ``recent_s`` of its baseline rules. Slopes and baselines that
reach further back read the older minutes from the series' per-minute
:class:`~monitor.engine.history.History` (``history`` argument of :meth:`evaluate`);
given raw readings that reach back far enough, they compute exactly as documented here.
:meth:`TrendConfig.needs_s` gives the longest span the rules read, for all vitals or one.

Cost per new reading and rule, k = readings in the slice it reads (measured on one
core, numpy 2.4, 1 Hz readings; a threshold rule costs about 1 µs):

* slope: one ``np.searchsorted`` (O(log n)) for the slice start, then a closed-form
  least-squares fit over the slice: about six vectorised O(k) passes (no ``np.polyfit``,
  no matrix, two k-element temporaries). About 25-30 µs for k = 600 or 1800, mostly
  numpy call overhead. With too few readings or too short a span it stops after the
  ``searchsorted``.
* baseline: two ``np.searchsorted`` and two medians by ``np.partition`` (O(k), no
  sort) over raw readings; from history, the recent median (300 readings) and a weighted
  median of about 245 minute medians and the raw readings before the recent part (one
  sort of about 300 values). The raw baseline median reads at most
  ``max_baseline_samples`` readings (an even stride through the baseline, counted back
  from its newest reading), so the cost is bounded whatever the sampling rate.

Memory: 5 minutes of raw readings (about 5 KiB at 1 Hz, up to 1.4 times that in the
window's buffer) and about 5.5 KiB of history per series with the default trend rules,
whatever their span (:mod:`monitor.engine.history`).

Nothing is cached between readings: the rule state is only the :class:`Active` alert.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal

import numpy as np

from monitor.config import (
    BaselineConfig,
    SlopeConfig,
    TrendConfig,
)
from monitor.engine.history import History, combine, stats, weighted_median
from monitor.engine.trend_rule import (
    Direction,
    Measure,
    _directions,
    _fmt_per,
    _TrendRule,
    ls_slope,
    median,
)
from monitor.engine.window import Array
from monitor.model import (
    Priority,
    fmt_compare,
    fmt_fixed,
    fmt_limit,
    fmt_reading,
    resolution,
)

__all__ = [
    "BaselineRule",
    "Measure",
    "SlopeRule",
    "TrendRule",
    "build_trend_rules",
    "ls_slope",
    "median",
]


class SlopeRule(_TrendRule):
    """Least-squares slope over the last ``window_s``; see the module docstring.

    ``value`` of its events is the slope in units per ``per_s`` (negative: falling),
    ``limit`` the signed ``rate`` (``-3`` for ``spo2.trend_down``).
    """

    def __init__(
        self,
        vital: str,
        direction: Direction,
        rate: float,
        per_s: float = 600.0,
        window_s: float = 600.0,
        min_readings: int = 10,
        min_coverage: float = 0.6,
        clear_fraction: float = 0.5,
        priority: Priority = Priority.MEDIUM,
    ) -> None:
        super().__init__(vital, direction, "trend", rate, clear_fraction, priority, window_s)
        self.rate = rate
        self.per_s = per_s
        self.window_s = window_s
        self.min_readings = max(min_readings, 2)
        self.min_span = min_coverage * window_s
        self._per = _fmt_per(per_s)

    @classmethod
    def from_config(cls, vital: str, cfg: SlopeConfig) -> list[SlopeRule]:
        if not cfg.enabled:
            return []
        return [
            cls(
                vital,
                direction,
                lim.rate,
                lim.per_s,
                lim.window_s,
                lim.min_readings,
                lim.min_coverage,
                lim.clear_fraction,
                lim.priority,
            )
            for direction, lim in _directions(cfg.up, cfg.down)
            if lim is not None
        ]

    def slope(self, ts: Array, vals: Array, history: History | None = None) -> float | None:
        """Slope at the newest reading in units per ``per_s``, or None if it does not count.

        When the window does not reach back ``window_s``, the minutes before it come from
        ``history`` (:mod:`monitor.engine.history`)."""
        n = len(ts)
        newest = float(ts[-1])
        cut = newest - self.window_s
        if history is not None and float(ts[0]) > cut:
            rows, first = history.slope_rows(cut)
            if len(rows) > 1:
                rows[-1] = stats(ts, vals)
                total, s = combine(rows)
                span = newest - min(first, float(ts[0]))
                if total < self.min_readings or span < self.min_span or math.isnan(s):
                    return None
                return s * self.per_s
        if n < self.min_readings:
            return None
        i0 = int(np.searchsorted(ts, cut, side="left"))
        if n - i0 < self.min_readings or newest - float(ts[i0]) < self.min_span:
            return None
        s = ls_slope(ts[i0:] - newest, vals[i0:])
        return None if math.isnan(s) else s * self.per_s

    def measure(self, ts: Array, vals: Array, history: History | None = None) -> Measure | None:
        s = self.slope(ts, vals, history)
        if s is None:
            return None
        return Measure(self._sign * s, round(s, 3), self.limits[1])

    def _motion(self, per: float, op: str | None = None, bound: float = 0.0) -> str:
        """ "falling 4 % per 10 min": the rate at the vital's resolution; with ``op``, with
        the decimals that keep "rate op bound" true (raised: at least the rule's rate;
        eased: below its clear level), as model.fmt_compare."""
        if op is None:
            shown = fmt_reading(self.vital, abs(per))
        else:
            shown = fmt_compare(self.vital, abs(per), op, bound)[0]
        if Decimal(shown) == 0:
            return "steady"
        return f"{'rising' if per > 0 else 'falling'} {shown} {self.unit} per {self._per}"

    def _raised(self, m: Measure) -> str:
        return f"{self.label} {self._motion(m.value, '>=', self.threshold)}"

    def _resolved(self, m: Measure, lasted: float) -> str:
        # still moving the rule's way: slower than its clear level; else the other way
        eased = self._sign * m.value > 0
        motion = self._motion(m.value, "<", self.clear_at) if eased else self._motion(m.value)
        return f"{self.label} trend eased: {motion}; alarm lasted {lasted:.0f} s"


class BaselineRule(_TrendRule):
    every_s = 30.0

    """Recent median against the bed's own baseline median; see the module docstring.

    ``value`` of its events is the recent median, ``limit`` the level that raised it
    (baseline + delta for ``up``, baseline - delta for ``down``).
    """

    def __init__(
        self,
        vital: str,
        direction: Direction,
        delta: float,
        recent_s: float = 300.0,
        baseline_s: float = 4 * 3600.0,
        min_baseline_s: float = 3600.0,
        min_baseline_readings: int = 30,
        min_recent_readings: int = 5,
        clear_fraction: float = 0.5,
        max_baseline_samples: int = 16_384,
        priority: Priority = Priority.MEDIUM,
    ) -> None:
        super().__init__(
            vital, direction, "baseline", delta, clear_fraction, priority, recent_s + baseline_s
        )
        self.delta = delta
        self.recent_s = recent_s
        self.baseline_s = baseline_s
        self.min_baseline_s = min_baseline_s
        self.min_baseline_readings = max(min_baseline_readings, 1)
        self.min_recent_readings = max(min_recent_readings, 1)
        self.max_baseline_samples = max(max_baseline_samples, 1)

    @classmethod
    def from_config(cls, vital: str, cfg: BaselineConfig) -> list[BaselineRule]:
        if not cfg.enabled:
            return []
        return [
            cls(
                vital,
                direction,
                lim.delta,
                lim.recent_s,
                lim.baseline_s,
                lim.min_baseline_s,
                lim.min_baseline_readings,
                lim.min_recent_readings,
                lim.clear_fraction,
                lim.max_baseline_samples,
                lim.priority,
            )
            for direction, lim in _directions(cfg.up, cfg.down)
            if lim is not None
        ]

    def levels(
        self, ts: Array, vals: Array, history: History | None = None
    ) -> tuple[float, float] | None:
        """(recent median, baseline median) at the newest reading, or None if too little data.

        Recent: readings with ts in (newest - recent_s, newest]; baseline: ts in
        [newest - recent_s - baseline_s, newest - recent_s]. When the window does not
        reach back that far, the minutes before it come from ``history``
        (:mod:`monitor.engine.history`).
        """
        newest = float(ts[-1])
        cut = newest - self.recent_s
        r0 = int(np.searchsorted(ts, cut, side="right"))
        if len(ts) - r0 < self.min_recent_readings:
            return None
        lo = cut - self.baseline_s
        if history is not None and float(ts[0]) > lo:
            meds, counts, first, last = history.baseline_parts(lo, cut)
            if len(meds):
                nb = float(counts.sum()) + r0
                if nb < self.min_baseline_readings:
                    return None
                if r0:
                    last = float(ts[r0 - 1])
                if last - first < self.min_baseline_s:
                    return None
                values = np.concatenate((meds, vals[:r0]))
                weights = np.concatenate((counts, np.ones(r0)))
                return median(vals[r0:]), weighted_median(values, weights)
        b0 = int(np.searchsorted(ts, lo, side="left"))
        nb = r0 - b0
        if nb < self.min_baseline_readings:
            return None
        if float(ts[r0 - 1]) - float(ts[b0]) < self.min_baseline_s:
            return None
        base = vals[b0:r0]
        if nb > self.max_baseline_samples:
            step = -(-nb // self.max_baseline_samples)  # ceil: at most max samples
            base = base[::-step]  # counted back from the newest baseline reading
        return median(vals[r0:]), median(base)

    def measure(self, ts: Array, vals: Array, history: History | None = None) -> Measure | None:
        lv = self.levels(ts, vals, history)
        if lv is None:
            return None
        recent, base = lv
        return Measure(self._sign * (recent - base), recent, base + self._sign * self.delta, base)

    def _offset(
        self, value: float, ref: float, ok: Callable[[Decimal], bool]
    ) -> tuple[str, str, str]:
        """(value, value - ref, ref) texts at the vital's resolution, with the fewest more
        decimals (up to 3) that make the written difference ``ok`` (else the plain texts).
        The difference is that of the written texts: "113: 35 above 78" always adds up."""
        res = resolution(self.vital)
        texts = []
        for d in range(res, res + 4):
            v, r = fmt_fixed(value, d), fmt_fixed(ref, d)
            diff = Decimal(v) - Decimal(r)
            texts.append((v, str(diff), r))
            if ok(diff):
                return texts[-1]
        return texts[0]

    def _deviation(self, value: float, ref: float, at_least: float) -> str:
        """ "HR 113 /min: 35 /min above baseline 78 /min"; the written deviation is at
        least ``at_least`` when the true one is."""
        up = value >= ref
        sign = 1 if up else -1
        least = Decimal(fmt_limit(self.vital, at_least))
        v, diff, r = self._offset(value, ref, lambda d: sign * d > 0 and sign * d >= least)
        u = self.unit
        dev = diff.removeprefix("-")
        return f"{self.label} {v} {u}: {dev} {u} {'above' if up else 'below'} baseline {r} {u}"

    def _raised(self, m: Measure) -> str:
        return self._deviation(m.value, m.ref, self.threshold)

    def _resolved(self, m: Measure, lasted: float) -> str:
        u = self.unit
        within = fmt_limit(self.vital, self.clear_at)
        if abs(m.value - m.ref) <= self.clear_at:
            v, _, r = self._offset(m.value, m.ref, lambda d: abs(d) <= Decimal(within))
            text = f"{self.label} {v} {u} back within {within} {u} of baseline {r} {u}"
        else:
            # past the baseline the other way (a fall after a rise): say where it is
            text = self._deviation(m.value, m.ref, self.clear_at)
        return f"{text}; alarm lasted {lasted:.0f} s"


TrendRule = SlopeRule | BaselineRule


def build_trend_rules(cfg: TrendConfig) -> dict[str, list[TrendRule]]:
    """The enabled trend rules per vital, in a stable order (slope up/down, baseline up/down)."""
    out: dict[str, list[TrendRule]] = {}
    if not cfg.enabled:
        return out
    for vital, sc in cfg.slope.items():
        out.setdefault(vital, []).extend(SlopeRule.from_config(vital, sc))
    for vital, bc in cfg.baseline.items():
        out.setdefault(vital, []).extend(BaselineRule.from_config(vital, bc))
    return {v: rules for v, rules in out.items() if rules}
