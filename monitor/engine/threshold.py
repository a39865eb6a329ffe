"""Threshold rules with two levels, a condition delay and hysteresis. Pure: no I/O.

One :class:`ThresholdRule` is one side (``low`` or ``high``) of one vital, e.g.
``spo2.low``. Levels: 0 ok, 1 warn (priority ``medium``), 2 crit (priority ``high``).

Worked example, ``spo2.low`` with warn 90, crit 85, ``delay_s`` 15, clear band 2, one
reading a second::

    t=0..9   97                       level 0
    t=10     82   condition starts    level 0 (has not held for 15 s yet)
    t=25     82   held 15 s           level 2: raise  "SpO2 82 % < 85 % for 15 s"
    t=40     88   >= 85+2, still < 90 level 1: same alert, priority medium
    t=41     91   < 90+2              level 1 (hysteresis: not cleared yet)
    t=42     97   >= 92               level 0: resolved (recovery is always emitted)

A continuous series (:mod:`monitor.engine.modes`): raising to level L needs every
reading in the last ``delay_s`` of event time to be beyond L's limit, the run reaching
back at least ``delay_s`` and no gap in it longer than ``max_gap`` (the engine passes
max(``rules.max_gap_s``, 1.5 x the series' own interval)). An intermittent reading
(``spot``: a cuff cycle, a spot check, a charted value) is one validated measurement:
it alone raises the level it is beyond. Keeping level L needs only the newest reading
within L's limit plus the clear band. The level is the higher of the two, so
escalation waits for its own delay while de-escalation and recovery follow the newest
reading.

**Artefact rejection** (documented rule, continuous series): raising also needs the
run to hold at least ``confirm`` consecutive readings (default 2). A single reading
beyond a limit between normal neighbours (a probe knocked, a transducer flushed)
therefore never raises a physiological alarm, whatever ``delay_s``. It is stored, and
the naive comparison in ``vitalmon replay`` counts what it would cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from monitor.config import ThresholdConfig
from monitor.engine.window import Array
from monitor.model import (
    LABELS,
    VITALS,
    AlertEvent,
    AlertState,
    Priority,
    alert_id,
    fmt_compare,
    fmt_limit,
    states_truth,
)

PRIORITY = {1: Priority.MEDIUM, 2: Priority.HIGH}
_EPS = 1e-6


@dataclass(slots=True)
class Active:
    """An alert that has been raised and not yet resolved."""

    id: str
    level: int
    started_at: float
    seq: int
    device: str
    patient: str | None

    def event(
        self,
        ward: str,
        bed: str,
        vital: str,
        rule: str,
        kind: str,
        priority: Priority,
        state: AlertState,
        value: float,
        limit: float,
        message: str,
        at: float,
    ) -> AlertEvent:
        """This alert's event at ``at`` (its id, device, patient, onset and count)."""
        return AlertEvent(
            id=self.id,
            ward=ward,
            bed=bed,
            device=self.device,
            patient=self.patient,
            vital=vital,
            rule=rule,
            kind=kind,
            priority=priority,
            state=state,
            value=value,
            limit=limit,
            message=message,
            started_at=self.started_at,
            at=at,
            seq=self.seq,
        )


class SeriesKey(NamedTuple):
    """One series: a vital of a device at a bed. (A tuple: made and hashed per reading.)"""

    ward: str
    bed: str
    device: str
    vital: str


class ThresholdRule:
    def __init__(
        self,
        vital: str,
        side: Literal["low", "high"],
        warn: float | None,
        crit: float | None,
        delay_s: float,
        clear_band: float,
        max_gap_s: float,
        confirm: int = 1,
    ) -> None:
        self.vital = vital
        self.side = side
        self.name = f"{vital}.{side}"
        self.limits: dict[int, float] = {
            lvl: lim for lvl, lim in ((1, warn), (2, crit)) if lim is not None
        }
        self.delay_s = delay_s
        self.band = clear_band
        self.max_gap_s = max_gap_s
        #: artefact rejection: consecutive readings beyond a limit needed to raise it
        self.confirm = confirm
        self._levels_desc = sorted(self.limits, reverse=True)
        # the least extreme limit: a reading within it cannot raise anything
        self._entry = self.limits[min(self.limits)]

    @classmethod
    def from_config(cls, vital: str, cfg: ThresholdConfig, max_gap_s: float) -> list[ThresholdRule]:
        rules: list[ThresholdRule] = []
        if not cfg.enabled:
            return rules
        for side in ("low", "high"):
            lv = cfg.low if side == "low" else cfg.high
            if lv is not None:
                rules.append(
                    cls(
                        vital,
                        side,
                        lv.warn,
                        lv.crit,
                        cfg.delay_s,
                        cfg.clear_band,
                        max_gap_s,
                        cfg.min_readings(vital),
                    )
                )
        return rules

    # -------------------------------------------------------------- level logic

    def beyond(self, level: int, values: Array | float) -> npt.NDArray[np.bool_]:
        lim = self.limits[level]
        return np.less(values, lim) if self.side == "low" else np.greater(values, lim)

    def holds(self, level: int, value: float) -> bool:
        lim = self.limits[level]
        return value < lim + self.band if self.side == "low" else value > lim - self.band

    def _run_start(self, level: int, ts: Array, vals: Array, max_gap: float) -> int | None:
        """Index where the current run beyond ``level`` started, if it is long enough."""
        n = len(ts)
        if self.delay_s <= 0:
            i0 = n - 1
        else:
            i0 = int(np.searchsorted(ts, ts[-1] - self.delay_s + _EPS, side="right")) - 1
            # the newest reading alone never covers a delay > 0 (even one below _EPS)
            i0 = min(i0, n - 2)
        i0 = min(i0, n - self.confirm)  # artefact rejection: `confirm` readings at least
        if i0 < 0:
            return None
        if not np.all(self.beyond(level, vals[i0:])):
            return None
        if n - i0 > 1 and np.max(np.diff(ts[i0:])) > max_gap:
            return None
        # how far back does the run go? (for started_at and the message)
        within = self.beyond(level, vals[: i0 + 1])
        start = 0
        outside = np.flatnonzero(~within)
        if len(outside):
            start = int(outside[-1]) + 1
        gaps = np.flatnonzero(np.diff(ts[: i0 + 1]) > max_gap)
        if len(gaps):
            start = max(start, int(gaps[-1]) + 1)
        return start

    def level(
        self,
        current: int,
        ts: Array,
        vals: Array,
        spot: bool = False,
        max_gap: float | None = None,
    ) -> tuple[int, int | None]:
        """-> (new level, index where a newly raised level's run started).

        ``spot``: the newest reading is an intermittent measurement, judged on its own (a
        level is raised when it alone is beyond the limit). ``max_gap``: the longest gap a
        continuous run may have (default ``max_gap_s``)."""
        newest = float(vals[-1])
        held = 0
        for lvl in range(current, 0, -1):
            if lvl in self.limits and self.holds(lvl, newest):
                held = lvl
                break
        entry = self._entry  # plain float comparison: this is the per-reading hot path
        if not (newest < entry if self.side == "low" else newest > entry):
            return held, None
        gap = self.max_gap_s if max_gap is None else max_gap
        for lvl in self._levels_desc:
            if lvl <= held:
                break
            if spot:
                if self.beyond(lvl, newest):
                    return lvl, len(ts) - 1
                continue
            start = self._run_start(lvl, ts, vals, gap)
            if start is not None:
                return lvl, start
        return held, None

    # ------------------------------------------------------------------ events

    def evaluate(
        self,
        key: SeriesKey,
        ts: Array,
        vals: Array,
        active: Active | None,
        patient: str | None,
        spot: bool = False,
        max_gap: float | None = None,
        history: object = None,
    ) -> tuple[Active | None, AlertEvent | None]:
        """Evaluate at the newest reading of a series; -> (new active state, event).
        ``spot`` and ``max_gap`` as in :meth:`level`; ``history`` (the trend rules'
        signature) is not read: thresholds judge raw readings only."""
        current = active.level if active else 0
        new, start = self.level(current, ts, vals, spot, max_gap)
        if new == current:
            return active, None
        at = float(ts[-1])
        value = float(vals[-1])
        if active is None:
            started = float(ts[start]) if start is not None else at
            active = Active(
                alert_id(key.ward, key.bed, key.device, self.name, started),
                new,
                started,
                0,
                key.device,
                patient,
            )
        active.seq += 1
        if new == 0:
            lim = self.limits[min(self.limits)]
            event = self._event(
                key,
                active,
                current,
                AlertState.RESOLVED,
                value,
                lim,
                at,
                self._resolved_message(value, lim, at - active.started_at),
            )
            return None, event
        active.level = new
        lim = self.limits[new]
        dur = at - (float(ts[start]) if start is not None else active.started_at)
        event = self._event(
            key,
            active,
            new,
            AlertState.ACTIVE,
            value,
            lim,
            at,
            self._active_message(value, lim, dur),
        )
        return active, event

    def _event(
        self,
        key: SeriesKey,
        a: Active,
        level: int,
        state: AlertState,
        value: float,
        limit: float,
        at: float,
        message: str,
    ) -> AlertEvent:
        return a.event(
            key.ward,
            key.bed,
            self.vital,
            self.name,
            "physiological",
            PRIORITY[level],
            state,
            value,
            limit,
            message,
            at,
        )

    def _active_message(self, value: float, limit: float, duration: float) -> str:
        # values at the vital's resolution, with the decimals each comparison needs to be
        # true as written (model.fmt_compare): "Temp 38.04 °C > 38.0 °C", never "38 > 38"
        unit = VITALS[self.vital][0]
        label = LABELS[self.vital]
        if not self.beyond_value(limit, value):
            # kept by hysteresis (or stepped down a level): say so, never a false comparison.
            # It clears once the value is at or past the band edge (holds() is strict).
            low = self.side == "low"
            clear = limit + self.band if low else limit - self.band
            shown, clear_text = fmt_compare(self.vital, value, "<" if low else ">", clear)
            word = "above" if low else "below"
            return (
                f"{label} {shown} {unit}, near the {fmt_limit(self.vital, limit)} {unit} "
                f"limit (clears at {clear_text} {unit} or {word})"
            )
        op = "<" if self.side == "low" else ">"
        shown, limit_text = fmt_compare(self.vital, value, op, limit)
        text = f"{label} {shown} {unit} {op} {limit_text} {unit}"
        if duration >= 1:
            text += f" for {duration:.0f} s"
        return text

    def beyond_value(self, limit: float, value: float) -> bool:
        return value < limit if self.side == "low" else value > limit

    def _resolved_message(self, value: float, limit: float, lasted: float) -> str:
        unit = VITALS[self.vital][0]
        low = self.side == "low"
        op = ">" if low else "<"
        shown, limit_text = fmt_compare(self.vital, value, op, limit)
        if states_truth(shown, op, limit_text):
            back = f"back {'above' if low else 'below'} {limit_text} {unit}"
        else:
            # exactly at the limit (a clear band of 0): no longer beyond it, but not "above"
            shown, limit_text = fmt_compare(self.vital, value, f"{op}=", limit)
            back = f"back within the {limit_text} {unit} limit"
        return f"{LABELS[self.vital]} {shown} {unit} {back}; alarm lasted {lasted:.0f} s"
