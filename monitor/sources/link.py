"""Technical alarms about a source's own link to a device (pure; the clock is passed in).

IEC 60601-1-8 technical alarms, kind ``technical``, one per condition per device:

* ``device.disconnected``: the port could not be opened, or was lost (a cable pulled, a
  USB adapter unplugged, the pty closed). Resolves when data flows again.
* ``device.silent``: the port is open but nothing has come for ``silent_after_s`` (a
  device switched off behind a USB adapter, a pty whose writer stopped: no error at all,
  only a timer notices). Resolves with the next bytes.

Each is raised once and resolved once, never re-sent while it lasts.
"""

from __future__ import annotations

import copy

from monitor.model import AlertEvent, AlertState, Priority, alert_id

DISCONNECTED = "device.disconnected"
SILENT = "device.silent"


class LinkAlarms:
    def __init__(self, ward: str, bed: str, device: str) -> None:
        self.ward, self.bed, self.device = ward, bed, device
        self._open: dict[str, AlertEvent] = {}

    def is_open(self, rule: str) -> bool:
        return rule in self._open

    def raise_(self, rule: str, detail: str, now: float, value: float = 0.0) -> AlertEvent | None:
        """The condition holds: -> the raise, or None when it is already raised."""
        if rule in self._open:
            return None
        event = AlertEvent(
            id=alert_id(self.ward, self.bed, self.device, rule, now),
            ward=self.ward,
            bed=self.bed,
            device=self.device,
            patient=None,
            vital="",
            rule=rule,
            kind="technical",
            priority=Priority.MEDIUM,
            state=AlertState.ACTIVE,
            value=round(value, 1),
            limit=0.0,
            message=f"{self.device}: {detail}",
            started_at=now,
            at=now,
            seq=1,
        )
        self._open[rule] = event
        return copy.copy(event)

    def clear(self, rule: str, detail: str, now: float) -> AlertEvent | None:
        """The condition is over: -> the resolution, or None when it was not raised."""
        event = self._open.pop(rule, None)
        if event is None:
            return None
        event.seq += 1
        event.state = AlertState.RESOLVED
        event.at = now
        event.message = f"{self.device}: {detail} (alarm lasted {now - event.started_at:.0f} s)"
        return event
