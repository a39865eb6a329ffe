"""Plausibility: values a patient cannot have never raise a physiological alarm. Pure.

Contract of :class:`Plausibility` (the engine asks it about each reading before the
rules, in event-time order per series; no clock is read):

* a reading's flag, or None when it may be evaluated (:meth:`~Plausibility.check`; the
  engine makes the same two tests inline on its hot path):

  - ``implausible``: the value is outside ``rules.plausibility.ranges[vital]`` (a probe
    off sending 0, a transducer flushed to 300, a pleth counting 277);
  - ``disputed`` (:meth:`~Plausibility.dispute`): the value is beyond ``entry`` (the
    least extreme limits of the series' threshold rules) while another device of the
    same bed measured the same vital within ``cross_s`` (event time) at a value within
    all of its limits that differs by more than ``disagree[vital]``: two devices
    contradict each other and the one that says "normal" is believed, for this reading
    (e.g. HR 150 from the pleth while the ECG says 80). ``peers`` are the other devices'
    newest measured values, disputed ones included: when both devices change together
    (a real arrhythmia both see), the second to report finds the first already abnormal
    and is evaluated, and so is the first from its next reading on. Asked only when the
    value is beyond ``entry``, so a normal reading costs a range check. Each device stays
    its own series: rules never mix values of two devices.

  A flagged reading is stored with its flag and counted, never evaluated by any rule.
* :meth:`~Plausibility.observe`: a flag that **persists** (two or more consecutive
  readings of the series spanning at least ``persist_s``), or a disputed intermittent
  reading (one measurement: nobody would hear of it otherwise), raises one technical
  alarm ``<vital>.implausible`` or ``<vital>.disputed`` (kind technical; priority high
  when the value is beyond a crit limit of the series, else medium: "check the patient
  and the sensors"); the series' next reading without that flag resolves it. Raised
  once, resolved once.
* :meth:`~Plausibility.reset_bed` resolves the bed's alarms (discharge).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Iterable

from monitor.config import PlausibilityConfig
from monitor.model import (
    LABELS,
    VITALS,
    AlertEvent,
    AlertState,
    Priority,
    Reading,
    fmt_compare,
    fmt_reading,
    new_alert,
)

IMPLAUSIBLE = "implausible"
DISPUTED = "disputed"
HISTORY = "history"
LATE = "late"

_Key = tuple[str, str, str, str]  # ward, bed, device, vital
_Run = tuple[str, str, str, str, str]  # ward, bed, device, vital, flag
#: another device's latest valid value of the vital: (ts, value, its (low, high) entry)
Peer = tuple[float, float, tuple[float | None, float | None]]


class Plausibility:
    def __init__(self, cfg: PlausibilityConfig) -> None:
        self.configure(cfg)
        #: (series, flag) -> (ts of the first flagged reading of the current run, count)
        self._run: dict[_Run, tuple[float, int]] = {}
        self._open: dict[_Run, AlertEvent] = {}

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

    def observe(
        self, r: Reading, flag: str | None, spot: bool = False, crit: bool = False
    ) -> list[AlertEvent]:
        """After :meth:`check`: -> the technical alarm ``<vital>.<flag>`` raised, or those
        of the series resolved (a reading without that flag). ``spot``: the reading is
        intermittent (one measurement: a dispute raises its alarm at once); ``crit``: its
        value is beyond a crit limit of the series (the alarm is then high)."""
        key = (r.ward, r.bed, r.device, r.vital)
        out: list[AlertEvent] = []
        for other in (IMPLAUSIBLE, DISPUTED):
            if other != flag:
                self._run.pop((*key, other), None)
                out += self._resolve((*key, other), r.ts, _resolution(other, r))
        if flag not in (IMPLAUSIBLE, DISPUTED):
            return out
        run = (*key, flag)
        first, count = self._run.get(run, (r.ts, 0))
        first = min(first, r.ts)
        count += 1
        self._run[run] = (first, count)
        persisted = count >= 2 and r.ts - first >= self.cfg.persist_s
        if run in self._open or not (persisted or (spot and flag == DISPUTED)):
            return out
        rule = f"{r.vital}.{flag}"
        unit = VITALS[r.vital][0]
        label = LABELS.get(r.vital, r.vital)
        if flag == IMPLAUSIBLE:
            lo, hi = self.ranges[r.vital]
            op, edge = ("<", lo) if r.value < lo else (">", hi)
            shown, limit = fmt_compare(r.vital, r.value, op, edge)
            message = (
                f"{label} {shown} {unit} {op} {limit} {unit}: implausible (plausible "
                f"{lo:g}-{hi:g} {unit})"
            )
        else:
            edge = math.nan
            message = (
                f"{label} {fmt_reading(r.vital, r.value)} {unit} from {r.device} "
                "disagrees with another device of the bed, which reads within limits"
            )
        if not spot or flag == IMPLAUSIBLE:
            message += f" for {r.ts - first:.0f} s"
        message += "; check the patient and the sensors"
        event = new_alert(
            ward=r.ward,
            bed=r.bed,
            device=r.device,
            patient=r.patient,
            vital=r.vital,
            rule=rule,
            kind="technical",
            priority=Priority.HIGH if crit else Priority.MEDIUM,
            value=r.value,
            limit=edge,
            message=message,
            started=first,
            at=r.ts,
        )
        self._open[run] = event
        out.append(copy.copy(event))
        return out

    def _resolve(self, run: _Run, at: float, why: str) -> list[AlertEvent]:
        event = self._open.pop(run, None)
        if event is None:
            return []
        event.seq += 1
        event.state = AlertState.RESOLVED
        event.at = at
        event.message = f"{LABELS.get(run[3], run[3])}: {why}; lasted {at - event.started_at:.0f} s"
        return [event]

    def reset_bed(self, ward: str, bed: str, at: float) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        for run in [k for k in self._open if k[0] == ward and k[1] == bed]:
            out += self._resolve(run, at, "patient discharged")
        for run in [k for k in self._run if k[0] == ward and k[1] == bed]:
            del self._run[run]
        return out

    def forget(
        self,
        devices: Collection[tuple[str, str, str]],
        beds: Collection[tuple[str, str]],
        at: float,
    ) -> list[AlertEvent]:
        """These devices, and every device of these beds, are forgotten (``rules.
        stale_expire_s``): -> resolutions of their alarms; their runs dropped."""

        def gone(k: _Run) -> bool:
            return (k[0], k[1], k[2]) in devices or (k[0], k[1]) in beds

        out: list[AlertEvent] = []
        for run in [k for k in self._open if gone(k)]:
            out += self._resolve(run, max(at, self._open[run].at), "device forgotten")
        for run in [k for k in self._run if gone(k)]:
            del self._run[run]
        return out

    def active(self) -> int:
        return len(self._open)

    def is_open(self, key: _Key) -> bool:
        """Whether the series has an implausible or disputed run or alarm going on."""
        return any(
            (*key, f) in self._run or (*key, f) in self._open for f in (IMPLAUSIBLE, DISPUTED)
        )


def _resolution(flag: str, r: Reading) -> str:
    if flag == IMPLAUSIBLE:
        return f"plausible values again ({_text(r)})"
    return f"no longer disputed ({_text(r)})"


def _text(r: Reading) -> str:
    unit = VITALS[r.vital][0]
    return f"{LABELS.get(r.vital, r.vital)} {fmt_reading(r.vital, r.value)} {unit}".rstrip()
