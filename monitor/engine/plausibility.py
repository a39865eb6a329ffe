"""Plausibility: values a patient cannot have never raise a physiological alarm. Pure.

Contract of :class:`Plausibility` (the engine calls it for each reading before the rules,
in event-time order per series; no clock is read):

* :meth:`~Plausibility.check` -> the reading's flag, or None when it may be evaluated:

  - ``implausible``: the value is outside ``rules.plausibility.ranges[vital]`` (a probe
    off sending 0, a transducer flushed to 300, a pleth counting 277);
  - ``disputed``: the value is beyond ``entry`` (the least extreme limits of the
    series' threshold rules, passed in by the engine) while another device of the same
    bed measured the same vital within ``cross_s`` (event time) at a value within all
    of its limits that differs by more than ``disagree[vital]``: two devices contradict
    each other and the one that says "normal" is believed, for this reading (e.g. HR 150
    from the pleth while the ECG says 80). The engine passes the other devices' latest
    valid readings (``peers``: their windows' newest) only when the value is beyond
    ``entry``, so a normal reading costs a range check. Each device stays its own
    series: rules never mix values of two devices.

  A flagged reading is stored with its flag and counted, never evaluated by any rule.
* Implausible values that **persist** (two or more consecutive readings of the series
  spanning at least ``persist_s``) raise one technical alarm ``<vital>.implausible``
  (priority medium, kind technical); the series' next plausible reading resolves it.
  Raised once, resolved once.
* :meth:`~Plausibility.reset_bed` resolves the bed's alarms (discharge).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from monitor.config import PlausibilityConfig
from monitor.model import (
    LABELS,
    VITALS,
    AlertEvent,
    AlertState,
    Priority,
    Reading,
    alert_id,
    fmt_compare,
    fmt_reading,
)

IMPLAUSIBLE = "implausible"
DISPUTED = "disputed"
HISTORY = "history"

_Key = tuple[str, str, str, str]  # ward, bed, device, vital
#: another device's latest valid value of the vital: (ts, value, its (low, high) entry)
Peer = tuple[float, float, tuple[float | None, float | None]]


class Plausibility:
    def __init__(self, cfg: PlausibilityConfig) -> None:
        self.configure(cfg)
        #: series -> (ts of the first implausible reading of the current run, count)
        self._run: dict[_Key, tuple[float, int]] = {}
        self._open: dict[_Key, AlertEvent] = {}

    def configure(self, cfg: PlausibilityConfig) -> None:
        self.cfg = cfg
        self.ranges = {v: (r.low, r.high) for v, r in cfg.ranges.items() if r is not None}

    def check(
        self, r: Reading, entry: tuple[float | None, float | None], peers: Iterable[Peer] = ()
    ) -> str | None:
        """The flag of ``r`` (None: evaluate it). ``entry``: the series' least extreme
        low and high limits (None: no such side); ``peers``: the other devices of the bed
        measuring the vital (the engine passes them only when ``r`` is beyond ``entry``,
        see :meth:`dispute`)."""
        rng = self.ranges.get(r.vital)
        if rng is not None and not rng[0] <= r.value <= rng[1]:
            return IMPLAUSIBLE
        lo, hi = entry
        if (lo is not None and r.value < lo) or (hi is not None and r.value > hi):
            return self.dispute(r, peers)
        return None

    def dispute(self, r: Reading, peers: Iterable[Peer]) -> str | None:
        """``disputed`` when a peer within ``cross_s`` is within all of its limits and
        differs from ``r`` by more than ``disagree[vital]``, else None. (``r`` is beyond
        a limit of its series; the caller checked.)"""
        disagree = self.cfg.disagree.get(r.vital)
        if disagree is None:
            return None
        for ts, other, (lo, hi) in peers:
            normal = not ((lo is not None and other < lo) or (hi is not None and other > hi))
            if normal and abs(ts - r.ts) <= self.cfg.cross_s and abs(other - r.value) > disagree:
                return DISPUTED
        return None

    def observe(self, r: Reading, flag: str | None) -> list[AlertEvent]:
        """After :meth:`check`: -> the ``<vital>.implausible`` alarm raised or resolved."""
        key = (r.ward, r.bed, r.device, r.vital)
        if flag != IMPLAUSIBLE:
            if flag is None:
                self._run.pop(key, None)
                return self._resolve(key, r.ts, f"plausible values again ({_text(r)})")
            return []
        first, count = self._run.get(key, (r.ts, 0))
        first = min(first, r.ts)
        count += 1
        self._run[key] = (first, count)
        if key in self._open or count < 2 or r.ts - first < self.cfg.persist_s:
            return []
        rule = f"{r.vital}.implausible"
        lo, hi = self.ranges[r.vital]
        unit = VITALS[r.vital][0]
        op, edge = ("<", lo) if r.value < lo else (">", hi)
        shown, limit = fmt_compare(r.vital, r.value, op, edge)
        event = AlertEvent(
            id=alert_id(r.ward, r.bed, r.device, rule, first), ward=r.ward, bed=r.bed,
            device=r.device, patient=r.patient, vital=r.vital, rule=rule, kind="technical",
            priority=Priority.MEDIUM, state=AlertState.ACTIVE, value=r.value,
            limit=lo if r.value < lo else hi,
            message=f"{LABELS.get(r.vital, r.vital)} {shown} {unit} {op} {limit} {unit}: "
                    f"implausible (plausible {lo:g}-{hi:g} {unit}) for {r.ts - first:.0f} s;"
                    " check the sensor and the patient",
            started_at=first, at=r.ts, seq=1,
        )  # fmt: skip
        self._open[key] = event
        return [copy.copy(event)]

    def _resolve(self, key: _Key, at: float, why: str) -> list[AlertEvent]:
        event = self._open.pop(key, None)
        if event is None:
            return []
        event.seq += 1
        event.state = AlertState.RESOLVED
        event.at = at
        event.message = f"{LABELS.get(key[3], key[3])}: {why}; lasted {at - event.started_at:.0f} s"
        return [event]

    def reset_bed(self, ward: str, bed: str, at: float) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        for key in [k for k in self._open if k[0] == ward and k[1] == bed]:
            out += self._resolve(key, at, "patient discharged")
        for key in [k for k in self._run if k[0] == ward and k[1] == bed]:
            del self._run[key]
        return out

    def active(self) -> int:
        return len(self._open)

    def is_open(self, key: _Key) -> bool:
        """Whether the series has an implausible run or alarm going on."""
        return key in self._run or key in self._open


def _text(r: Reading) -> str:
    unit = VITALS[r.vital][0]
    return f"{LABELS.get(r.vital, r.vital)} {fmt_reading(r.vital, r.value)} {unit}".rstrip()
