"""Technical alarms about the data itself: a device (or an expected bed) gone silent.

IEC 60601-1-8 keeps technical alarms apart from physiological ones (``kind:
"technical"``). Silence is measured on the **wall clock** of arrival (the one place
event time cannot tell: no reading means no event time), per (ward, bed, device):

* ``device.stale``: no reading from a device for ``rules.stale_after_s``, or for
  ``rules.stale_factor`` times the device's own interval when that is longer (the
  median of its last five intervals, on the readings' event time, so a backlog arriving
  in a burst does not shrink it): a cuff cycling every 15 minutes is stale after 45
  minutes, a 1 Hz oximeter after 30 s. A device whose interval is not known yet (one
  reading so far: a spot check, a charting system, a cuff's first cycle) waits
  ``rules.stale_unknown_s``, unless its readings are declared continuous (source or
  ``rules.modes``): a stream that stops after one reading is stale after
  ``stale_after_s``. A device known only by statuses (no reading) also.
  Resolves with the device's next reading;
* a bed listed under ``beds:`` that has **never** sent anything is stale too (device
  ``*``) once ``stale_after_s`` has passed since the daemon started: Kapacitor's deadman
  misses exactly this (kapacitor #1951).

One alert per silence: raised once, resolved once (never re-sent every interval,
kapacitor #2075).

**Expiry** (:meth:`Staleness.expire`, ``rules.stale_expire_s``): a device of a bed
nobody expects (not under ``beds:``, not admitted) whose ``device.stale`` has lasted
``stale_expire_s`` (silent for its stale limit plus ``stale_expire_s``) is forgotten: its
alarm resolves (the recovery is always emitted) and the engine frees what it keeps of
the device, and of the bed with its last watched device. A device is never forgotten
before it could be stale, so every silence still raises its alarm once; an expected bed
never expires. The clock is the same wall clock (and restarts with :meth:`grace`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

from monitor.engine.modes import Cadence
from monitor.model import CONTINUOUS, AlertEvent, AlertState, Priority, new_alert

RULE = "device.stale"
_Device = tuple[str, str, str]  # (ward, bed, device)
ANY_DEVICE = "*"


class Staleness:
    def __init__(
        self,
        stale_after_s: float,
        expected_beds: Iterable[tuple[str, str]],
        started: float,
        factor: float = 3.0,
        unknown_s: float | None = None,
        expire_s: float | None = None,
    ) -> None:
        self.stale_after_s = stale_after_s
        #: a device of a bed nobody expects, stale this long, is forgotten (None: never)
        self.expire_s = expire_s
        self.factor = factor
        #: a device with one reading so far (no interval yet) is stale after this
        self.unknown_s = stale_after_s if unknown_s is None else unknown_s
        #: (ward, bed, device) -> its cadence (event time)
        self._cadence: dict[tuple[str, str, str], Cadence] = {}
        #: devices whose readings are declared continuous (source or rules.modes)
        self._continuous: set[tuple[str, str, str]] = set()
        #: (ward, bed, device) -> wall clock of the last reading
        self._seen: dict[tuple[str, str, str], float] = {
            (ward, bed, ANY_DEVICE): started for ward, bed in expected_beds
        }
        self._open: dict[tuple[str, str, str], AlertEvent] = {}
        #: Devices whose source watches its own link (serial: device.silent and
        #: device.disconnected), as (ward, bed) -> device names: never counted here, so
        #: one silence is one alarm. A name covers its channels too (``hl7`` covers
        #: ``hl7.pleth``).
        self.exempt: dict[tuple[str, str], set[str]] = {}

    def seen(
        self,
        ward: str,
        bed: str,
        device: str,
        now: float,
        ts: float | None = None,
        mode: str | None = None,
        watch: bool = True,
    ) -> list[AlertEvent]:
        """A reading (event time ``ts``; None: a status) arrived at ``now``: note it;
        -> the resolutions of alarms it ends. ``watch`` False: a sign of life of the bed
        (a device's alarm report), not a device to watch for silence by that name (a
        monitor's channels are watched, ``MX800.ecg``, ...)."""
        if watch and not self._exempt(ward, bed, device):
            key = (ward, bed, device)
            self._seen[key] = now
            if ts is not None:
                cadence = self._cadence.get(key)
                if cadence is None:
                    cadence = self._cadence[key] = Cadence()
                cadence.add(ts)
                if mode == CONTINUOUS:
                    self._continuous.add(key)
        out = []
        for key in ((ward, bed, device), (ward, bed, ANY_DEVICE)):
            if key[2] == ANY_DEVICE:
                self._seen.pop(key, None)  # the bed has spoken: device keys take over
            event = self._open.pop(key, None)
            if event is not None:
                event.seq += 1
                event.state = AlertState.RESOLVED
                event.at = now
                event.message = f"data from {device} again after {now - event.started_at:.0f} s"
                out.append(event)
        return out

    def watch_elsewhere(self, ward: str, bed: str, device: str) -> None:
        """``device`` of the bed (and its channels) is watched by its own source."""
        self.exempt.setdefault((ward, bed), set()).add(device)

    def _exempt(self, ward: str, bed: str, device: str) -> bool:
        names = self.exempt.get((ward, bed))
        if not names:
            return False
        return device in names or device.split(".", 1)[0] in names

    def expect(self, ward: str, bed: str, now: float) -> None:
        """A bed was admitted: silent from ``now`` on unless a device of it is known."""
        if not any(k[0] == ward and k[1] == bed for k in self._seen):
            self._seen[(ward, bed, ANY_DEVICE)] = now

    def forget(self, ward: str, bed: str, now: float) -> list[AlertEvent]:
        """A bed was discharged: nothing is expected of it; -> resolutions of its alarms."""
        out = []
        for key in [k for k in self._seen if k[0] == ward and k[1] == bed]:
            del self._seen[key]
            self._cadence.pop(key, None)
            self._continuous.discard(key)
        for key in [k for k in self._open if k[0] == ward and k[1] == bed]:
            event = self._open.pop(key)
            event.seq += 1
            event.state = AlertState.RESOLVED
            event.at = now
            event.message = "patient discharged: alarm closed"
            out.append(event)
        return out

    def limit(self, key: tuple[str, str, str]) -> float:
        """Seconds of silence after which the device is stale."""
        cadence = self._cadence.get(key)
        if cadence is None or key in self._continuous:  # statuses only, or a stream
            median = None if cadence is None else cadence.median
            return (
                self.stale_after_s
                if median is None
                else max(self.stale_after_s, self.factor * median)
            )
        if cadence.median is not None:
            return max(self.stale_after_s, self.factor * cadence.median)
        return max(self.stale_after_s, self.unknown_s)

    def grace(self, now: float) -> None:
        """Restart every silence count at ``now``: after the broker was unreachable, the
        devices were not silent, we were deaf (one alarm per device would be a storm)."""
        for key in self._seen:
            self._seen[key] = max(self._seen[key], now)

    def check(self, now: float) -> list[AlertEvent]:
        """Alarms due now (called about once a second)."""
        out = []
        for key, last in self._seen.items():
            if key in self._open:
                continue
            limit = self.limit(key)
            if now - last < limit:
                continue
            ward, bed, device = key
            what = (
                "bed expected but never sent data"
                if device == ANY_DEVICE
                else (f"no data from {device}")
            )
            event = new_alert(
                ward=ward,
                bed=bed,
                device=device,
                patient=None,
                vital="",
                rule=RULE,
                kind="technical",
                priority=Priority.MEDIUM,
                value=round(now - last, 1),
                limit=limit,
                message=f"{what} for {now - last:.0f} s",
                started=now,
            )
            self._open[key] = event
            out.append(event)
        return [copy.copy(e) for e in out]  # the open alarm is ours to update later

    def expire(
        self, now: float, expected: Callable[[str, str], bool]
    ) -> tuple[list[AlertEvent], list[_Device], set[tuple[str, str]]]:
        """Devices of beds not ``expected`` (ward, bed) that have been stale for
        ``expire_s`` at ``now``: forgotten here. -> (the resolutions of their alarms, the
        devices, the beds left without any device watched). Only stale devices can expire,
        so this looks at the open alarms alone."""
        if self.expire_s is None or not self._open:
            return [], [], set()
        gone = []
        for key in self._open:
            last = self._seen.get(key)
            if last is None or now - last < self.limit(key) + self.expire_s:
                continue
            if not expected(key[0], key[1]):
                gone.append(key)
        if not gone:
            return [], [], set()
        out = []
        for key in gone:
            silent = now - self._seen.pop(key)
            self._cadence.pop(key, None)
            self._continuous.discard(key)
            event = self._open.pop(key)
            event.seq += 1
            event.state = AlertState.RESOLVED
            event.at = now
            what = "the bed never sent data" if key[2] == ANY_DEVICE else f"no data from {key[2]}"
            event.message = (
                f"{what} for {_duration(silent)}: a bed neither listed under beds "
                "nor admitted; forgotten (rules.stale_expire_s)"
            )
            out.append(event)
        touched = {(k[0], k[1]) for k in gone}
        alive = {(k[0], k[1]) for k in self._seen if (k[0], k[1]) in touched}
        return out, gone, touched - alive

    def __len__(self) -> int:
        """Devices (and expected beds) watched."""
        return len(self._seen)


def _duration(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 90:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
