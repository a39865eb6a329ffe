"""Technical alarms a device reports about itself: sensor off, no sensor, searching, ...

Pure: no I/O, no clock; every time is the event time of a status or reading.

Contract of :class:`SensorState`:

* One alarm per (ward, bed, device, flag) of :data:`~monitor.model.DEVICE_FLAGS`, kind
  ``technical``, rule / priority / text from the flag's entry, ``vital`` ``""``, ``value``
  1.0 while the flag is present (0.0 in the resolution), ``limit`` 0.0, ``id`` from
  :func:`~monitor.model.alert_id` with the onset, ``started_at`` = ``at`` = the ts of the
  status that first carried the flag, ``seq`` 1.
* :meth:`~SensorState.observe`: a :class:`~monitor.model.DeviceStatus` is the device's
  full set of flags. A flag new to the set raises its alarm; a flag gone from it
  resolves its alarm (``seq`` + 1, ``at`` = the status ts). A flag still present changes
  nothing: an alarm is raised once and resolved once, never re-sent every interval
  (kapacitor #2075). A status older than the device's latest processed one is ignored
  (out of order), and so is one at the same ts: one state per instant, the first wins (a
  second is a redelivered duplicate or a contradiction, and could raise an id again).
  Flags that are not DEVICE_FLAGS keys are ignored.
* :meth:`~SensorState.reading`: a valid value from the device, newer than its latest
  status, contradicts "cannot measure": it resolves the device's alarms whose flag has
  the 4th DEVICE_FLAGS element True (sensor off, no sensor, sensor fault, searching),
  ``at`` = the reading ts, which becomes the device's watermark (statuses up to it are out
  of order). Signal-quality alarms (low perfusion, motion, ...) stay: values do flow
  under them. A flag resolved this way that a later status still carries raises a new
  alarm (the device says it again; a lost "ok" must not hide the next sensor-off).
  Constant time, and a single dict lookup when the device has no open alarm.
* :meth:`~SensorState.reset_bed` (discharge): resolves every open alarm of the bed, ``at``
  = the last event time seen for that device (status or reading), which becomes its
  watermark: a late or redelivered status from before the discharge raises nothing; a
  newer one still carrying a flag raises a new alarm (keeping empty beds quiet is the
  caller's decision).
* :meth:`~SensorState.forget` (a device or bed forgotten, ``rules.stale_expire_s``):
  resolves their open alarms and drops everything kept of them, watermarks included.

Events returned are the caller's to change (the lifecycle numbers them): a raise is a
copy of the alarm kept here; a resolution is no longer kept.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection

from monitor.model import (
    DEVICE_FLAGS,
    AlertEvent,
    AlertState,
    DeviceStatus,
    Priority,
    Reading,
    new_alert,
)

KIND = "technical"

_Device = tuple[str, str, str]  # (ward, bed, device)


class SensorState:
    def __init__(self) -> None:
        #: device -> ts of its latest processed status (the out-of-order watermark)
        self._status_ts: dict[_Device, float] = {}
        #: device -> flag -> its open alarm; a device without open alarms has no entry
        self._open: dict[_Device, dict[str, AlertEvent]] = {}
        #: device -> latest reading ts seen while it had open alarms (for reset_bed)
        self._seen: dict[_Device, float] = {}

    @property
    def open(self) -> dict[_Device, dict[str, AlertEvent]]:
        """Devices with a no-measurement alarm open (read-only view: empty when none is,
        and :meth:`reading` then has nothing to do)."""
        return self._open

    def observe(self, s: DeviceStatus) -> list[AlertEvent]:
        """A device's status: -> resolutions of flags gone, then raises of new flags."""
        key = (s.ward, s.bed, s.device)
        last = self._status_ts.get(key)
        if last is not None and s.ts <= last:
            return []  # out of order or same instant: what holds was already said
        self._status_ts[key] = s.ts
        alarms = self._open.get(key, {})
        out: list[AlertEvent] = []
        for flag in sorted(alarms.keys() - s.flags):
            out.append(self._resolve(key, flag, s.ts))
        new = sorted(f for f in s.flags if f in DEVICE_FLAGS and f not in alarms)
        if new:
            alarms = self._open.setdefault(key, {})
            for flag in new:
                rule, priority, text, _blind = DEVICE_FLAGS[flag]
                event = new_alert(
                    ward=s.ward,
                    bed=s.bed,
                    device=s.device,
                    patient=s.patient,
                    vital="",
                    rule=rule,
                    kind=KIND,
                    priority=Priority(priority),
                    value=1.0,
                    limit=0.0,
                    message=f"{s.device}: {text}",
                    started=s.ts,
                )
                alarms[flag] = event
                out.append(copy.copy(event))
        return out

    def reading(self, r: Reading) -> list[AlertEvent]:
        """A valid value from a device: -> resolutions of its no-measurement alarms."""
        key = (r.ward, r.bed, r.device)
        alarms = self._open.get(key)
        if not alarms:
            return []  # the common case: one lookup
        if r.ts > self._seen.get(key, -math.inf):
            self._seen[key] = r.ts
        if r.ts <= self._status_ts[key]:
            return []  # not newer than what the device last said about itself
        blind = sorted(f for f in alarms if DEVICE_FLAGS[f][3])
        if blind:
            # newer than the status it contradicts: a status up to it is out of order now
            # (a redelivered duplicate of that status must not raise the same id again)
            self._status_ts[key] = r.ts
        return [self._resolve(key, f, r.ts, "values again") for f in blind]

    def reset_bed(self, ward: str, bed: str) -> list[AlertEvent]:
        """Discharge: -> resolutions of every open alarm of the bed."""
        out: list[AlertEvent] = []
        for key in [k for k in self._open if k[0] == ward and k[1] == bed]:
            at = max(self._status_ts[key], self._seen.get(key, self._status_ts[key]))
            for flag in sorted(self._open[key]):
                out.append(self._resolve(key, flag, at, "bed discharged"))
            self._status_ts[key] = at  # a status up to ``at`` is from before the discharge
        return out

    def forget(
        self, devices: Collection[_Device], beds: Collection[tuple[str, str]], at: float
    ) -> list[AlertEvent]:
        """These devices, and every device of these beds, are forgotten: -> resolutions of
        their open alarms (``at``, or later: never before their last word)."""

        def gone(k: _Device) -> bool:
            return k in devices or (k[0], k[1]) in beds

        out: list[AlertEvent] = []
        for key in [k for k in self._open if gone(k)]:
            last = max(self._status_ts.get(key, -math.inf), self._seen.get(key, -math.inf))
            for flag in sorted(self._open[key]):
                out.append(self._resolve(key, flag, max(at, last), "device forgotten"))
        for key in [k for k in self._status_ts if gone(k)]:
            del self._status_ts[key]
        return out

    def __len__(self) -> int:
        """Devices with a status watermark (the largest map here)."""
        return len(self._status_ts)

    def active(self) -> int:
        """Open alarms, all devices."""
        return sum(len(alarms) for alarms in self._open.values())

    def _resolve(self, key: _Device, flag: str, at: float, why: str = "") -> AlertEvent:
        """Close the device's alarm for ``flag`` at ``at`` (event time)."""
        alarms = self._open[key]
        event = alarms.pop(flag)
        if not alarms:
            del self._open[key]
            self._seen.pop(key, None)
        event.seq += 1
        event.state = AlertState.RESOLVED
        event.value = 0.0
        event.at = at
        text = DEVICE_FLAGS[flag][2]
        event.message = f"{key[2]}: {text} — cleared after {at - event.started_at:.0f} s"
        if why:
            event.message += f" ({why})"
        return event
