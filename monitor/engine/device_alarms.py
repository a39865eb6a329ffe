"""Alarms and INOPs a device reports itself: ``***xTachy 160>140``, ``SpO2T No Pulse``, ...

Pure: no I/O, no clock; every time is the event time of a report.

Contract of :class:`DeviceAlarms`:

* One alert per (ward, bed, device, key) of a :class:`~monitor.model.DeviceAlarm`: kind
  from the alarm (``device``: a physiological alarm the device raised; ``technical``: an
  INOP), rule :data:`RULE_ALARM` (``device.alarm``) for kind ``device`` and
  :data:`RULE_INOP` (``device.inop``) for ``technical``, priority from the alarm,
  ``vital`` ``""``, ``value`` and ``limit`` NaN (the device gives none: ``null`` in the
  published JSON), ``message`` the device's own text verbatim, ``extra``
  ``{"source": <class>, "device_alarm": <key>}``, ``id`` from
  :func:`~monitor.model.alert_id` with the rule ``device.alarm:<key>`` and the onset (so
  two alarms of one device never share an id), ``started_at`` = ``at`` = the ts of the
  report that first carried it, ``seq`` 1.
* :meth:`~DeviceAlarms.observe`: a :class:`~monitor.model.DeviceAlarmReport` is the
  device's full set of alarms. A key new to the set raises its alert. A key still
  present with another priority is one event of the same alert (``active``, the new
  priority, the new text as message, ``at`` = the report ts, ``seq`` + 1): a yellow
  alarm turning red escalates the alert it is. The text alone changing (the value in
  it) is no event, but the latest text is kept for later events. A key whose kind
  changes (an alarm becoming an INOP) resolves the old alert and raises a new one. A key
  gone from the set resolves its alert (message: the last text + `` — ended (no longer
  reported by the device)``, ``at`` = the report ts). A complete report speaks only for
  the alarms complete reports raised: an alarm raised by a report that is not complete
  (below: PCD-04 news, a separate transaction from the numerics) ends only by such news.
  Events of one report: resolutions first (by key), then changes and raises in the
  report's order. A report older than the device's latest processed one is ignored (out
  of order). One at the same ts is the later word and is applied (HL7 times have whole
  seconds: numerics and then an alarm in the same second must not lose the alarm); a
  redelivered duplicate changes nothing, and an alarm ended at that instant is not
  raised again within it (its id would repeat). Two alarms with one key in a report:
  the first of the highest priority.
* A report that is not ``complete`` (IHE PCD-04: one alarm's news) changes only the
  alarms it names: an active one raises or changes its alert as above; one marked
  ``active`` False resolves its alert (message: the last text + `` — ended (reported
  over by the device)``); the others stand. Its order is per alarm: news of a key older
  than that key's latest is ignored, and so is a raise at the same instant as the end
  it would undo; news older than the device's latest complete report is ignored.
* :meth:`~DeviceAlarms.reset_bed` (discharge): resolves every open alert of the bed at
  the device's latest report ts (`` — ended (patient discharged)``); that ts stays the
  device's watermark, so a late or redelivered report from before the discharge raises
  nothing, while a newer one that still carries an alarm raises a new alert.
* :meth:`~DeviceAlarms.restore` (restart): an alert open at the last stop is carried on
  under its id: the next report of its device goes on with it or ends it.
* :meth:`~DeviceAlarms.active`: open alerts, all devices.

Events returned are the caller's to change (the lifecycle numbers them): a raise or a
change is a copy of the alert kept here (with its own ``extra``); a resolution is no
longer kept.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection

from monitor.model import (
    AlertEvent,
    AlertState,
    DeviceAlarm,
    DeviceAlarmReport,
    Priority,
    new_alert,
)

RULE_ALARM = "device.alarm"
RULE_INOP = "device.inop"
RULES = (RULE_ALARM, RULE_INOP)
#: ``kind`` of a DeviceAlarm -> the alert's rule.
_RULE = {"device": RULE_ALARM, "technical": RULE_INOP}
ENDED = " — ended (no longer reported by the device)"
ENDED_BY_DEVICE = " — ended (reported over by the device)"
DISCHARGED = " — ended (patient discharged)"
FORGOTTEN = " — ended (device forgotten after rules.stale_expire_s of silence)"

_RANK = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2}

_Device = tuple[str, str, str]  # (ward, bed, device)


def rule_of(kind: str) -> str:
    """The rule of a device-reported alarm of ``kind`` (``device`` or ``technical``)."""
    return _RULE.get(kind, RULE_ALARM)


class _Open:
    __slots__ = ("complete", "event", "text")

    def __init__(self, event: AlertEvent, text: str, complete: bool = True) -> None:
        self.event = event  #: the alert's latest published state
        self.text = text  #: the device's latest text for it (may be newer than the event's)
        #: raised by a complete report (a full set ends it), or by news (only news does)
        self.complete = complete


class DeviceAlarms:
    def __init__(self) -> None:
        #: device -> ts of its latest processed report (the out-of-order watermark)
        self._ts: dict[_Device, float] = {}
        #: device -> key -> its open alert; a device without open alerts has no entry
        self._open: dict[_Device, dict[str, _Open]] = {}
        #: (device, key) -> ts of its latest news in a report that is not complete
        self._key_ts: dict[tuple[_Device, str], float] = {}
        #: (device, key) -> ts a complete report last ended it at
        self._ended: dict[tuple[_Device, str], float] = {}

    def observe(self, report: DeviceAlarmReport) -> list[AlertEvent]:
        """A device's full set of alarms: -> resolutions of alarms gone, then changes and
        raises."""
        dev = (report.ward, report.bed, report.device)
        last = self._ts.get(dev)
        if not report.complete:
            if last is not None and report.ts < last:
                return []  # older than the device's latest full set
            return self._news(dev, report)
        if last is not None and report.ts < last:
            return []  # out of order: what holds was already said
        self._ts[dev] = report.ts
        ts = report.ts
        wanted: dict[str, DeviceAlarm] = {}
        for a in report.alarms:
            kept = wanted.get(a.key)
            if a.active and (kept is None or _RANK[a.priority] > _RANK[kept.priority]):
                wanted[a.key] = a
        alarms = self._open.get(dev, {})
        out: list[AlertEvent] = []
        for key in sorted(
            k
            for k, o in alarms.items()
            if o.complete and (k not in wanted or o.event.kind != wanted[k].kind)
        ):
            out.append(self._resolve(dev, key, ts, ENDED))
            if key not in wanted:  # (a kind change raises it anew below)
                self._ended[(dev, key)] = ts
        if not wanted:
            return out
        for a in wanted.values():
            if self._ended.get((dev, a.key)) == ts and a.key not in self._open.get(dev, {}):
                continue  # ended at this very instant: not raised again within it
            out += self._active(dev, report, a)
        return out

    def _news(self, dev: _Device, report: DeviceAlarmReport) -> list[AlertEvent]:
        """A report that is not complete: only the alarms it names change."""
        out: list[AlertEvent] = []
        for a in report.alarms:
            key = (dev, a.key)
            last = self._key_ts.get(key)
            is_open = a.key in self._open.get(dev, {})
            if last is not None and (
                report.ts < last or (report.ts == last and a.active and not is_open)
            ):
                continue  # older news of this alarm, or a raise undoing its end
            self._key_ts[key] = report.ts
            if a.active:
                if is_open and self._open[dev][a.key].event.kind != a.kind:
                    out.append(self._resolve(dev, a.key, report.ts, ENDED))
                out += self._active(dev, report, a)
            elif is_open:
                self._open[dev][a.key].text = a.text or self._open[dev][a.key].text
                out.append(self._resolve(dev, a.key, report.ts, ENDED_BY_DEVICE))
        return out

    def _active(self, dev: _Device, report: DeviceAlarmReport, a: DeviceAlarm) -> list[AlertEvent]:
        """``a`` is active: -> its raise, its priority change, or nothing."""
        alarms = self._open.setdefault(dev, {})
        held = alarms.get(a.key)
        if held is None:
            event = _raise(report, a)
            alarms[a.key] = _Open(event, a.text, report.complete)
            return [_copy(event)]
        held.text = a.text
        if a.priority == held.event.priority:
            return []  # the same alarm, perhaps with a new value in its text: no event
        e = held.event
        e.seq += 1
        e.priority = a.priority
        e.state = AlertState.ACTIVE
        e.message = a.text
        e.at = report.ts
        e.extra = {**e.extra, "source": a.source}
        return [_copy(e)]

    def reset_bed(self, ward: str, bed: str) -> list[AlertEvent]:
        """Discharge: -> resolutions of every open alert of the bed."""
        out: list[AlertEvent] = []
        for dev in [d for d in self._open if d[0] == ward and d[1] == bed]:
            times = [t for (d, _k), t in self._key_ts.items() if d == dev]
            if dev in self._ts:
                times.append(self._ts[dev])
            at = max(times, default=None)  # the device's latest word (None: restored)
            for key in sorted(self._open[dev]):
                out.append(self._resolve(dev, key, at, DISCHARGED))
                if at is not None:  # a redelivered report of that instant raises nothing
                    self._ended[(dev, key)] = at
        for ended in [k for k in self._ended if k[0][0] == ward and k[0][1] == bed]:
            if ended[0] not in self._ts:
                del self._ended[ended]
        return out

    def forget(
        self, devices: Collection[_Device], beds: Collection[tuple[str, str]], at: float
    ) -> list[AlertEvent]:
        """These devices, and every device of these beds, are forgotten (``rules.
        stale_expire_s``): -> resolutions of their open alerts; nothing is kept of them."""

        def gone(d: _Device) -> bool:
            return d in devices or (d[0], d[1]) in beds

        out: list[AlertEvent] = []
        for dev in [d for d in self._open if gone(d)]:
            for key in sorted(self._open[dev]):
                out.append(self._resolve(dev, key, at, FORGOTTEN))
        for dev in [d for d in self._ts if gone(d)]:
            del self._ts[dev]
        for k in [k for k in self._key_ts if gone(k[0])]:
            del self._key_ts[k]
        for k in [k for k in self._ended if gone(k[0])]:
            del self._ended[k]
        return out

    def restore(self, event: AlertEvent) -> bool:
        """An alert open at the last stop: kept open under its id until its device says
        otherwise. False when it is not one of ours (no ``device_alarm`` key)."""
        key = event.extra.get("device_alarm")
        if event.rule not in RULES or not isinstance(key, str) or not key:
            return False
        e = _copy(event)
        e.value = math.nan  # (stored as NULL)
        e.limit = math.nan
        dev = (e.ward, e.bed, e.device)
        self._open.setdefault(dev, {})[key] = _Open(e, e.message)
        return True

    def active(self) -> int:
        """Open alerts, all devices."""
        return sum(len(alarms) for alarms in self._open.values())

    def _resolve(self, dev: _Device, key: str, at: float | None, why: str) -> AlertEvent:
        """Close the device's alert for ``key`` at ``at`` (event time; None: its last)."""
        alarms = self._open[dev]
        held = alarms.pop(key)
        if not alarms:
            del self._open[dev]
        e = held.event
        e.seq += 1
        e.state = AlertState.RESOLVED
        e.at = e.at if at is None else max(at, e.at)
        e.message = held.text + why
        return e


def _raise(report: DeviceAlarmReport, a: DeviceAlarm) -> AlertEvent:
    rule = rule_of(a.kind)
    return new_alert(
        ward=report.ward,
        bed=report.bed,
        device=report.device,
        patient=report.patient,
        vital="",
        rule=rule,
        kind=a.kind,
        priority=a.priority,
        value=math.nan,
        limit=math.nan,
        message=a.text,
        started=report.ts,
        id_rule=f"{RULE_ALARM}:{a.key}",
        extra={"source": a.source, "device_alarm": a.key},
    )


def _copy(e: AlertEvent) -> AlertEvent:
    """A copy the caller may change, ``extra`` included (the lifecycle writes into it)."""
    out = copy.copy(e)
    out.extra = dict(e.extra)
    return out
