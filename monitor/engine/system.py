"""Technical alarms about vitalmon itself (store full, readings dropped, sink down).

IEC 60601-1-8 keeps technical alarms apart from physiological ones: these have
``kind: "technical"``, ward ``_system``, bed = the instance's client id, device = the
component. Each condition raises once and always resolves (state changes only).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

from monitor.model import AlertEvent, AlertState, Priority, new_alert

SYSTEM_WARD = "_system"

#: Losing data is a high-priority technical alarm; a sink merely down is medium.
PRIORITIES = {
    "store.full": Priority.HIGH,
    "store.failed": Priority.HIGH,
    "store.stalled": Priority.HIGH,
    "sink.dropped": Priority.HIGH,
    # an alert event a route could never deliver (monitor.sinks.delivery.deliverer)
    "route.lost": Priority.HIGH,
    # an alert event a route's receiver refused for good (given up)
    "route.rejected": Priority.HIGH,
    # the broker lost vitalmon's persistent session (what it had queued is gone;
    # nothing more is at risk once reconnected): monitor.mqtt
    "mqtt.session_lost": Priority.MEDIUM,
}


class SystemAlarms:
    def __init__(self, instance: str, clock: Callable[[], float] = time.time) -> None:
        self.instance = instance
        self._clock = clock
        self._active: dict[tuple[str, str], AlertEvent] = {}

    def set(self, rule: str, component: str, active: bool, detail: str) -> AlertEvent | None:
        """Record a condition; returns the alert event when its state changes."""
        key = (rule, component)
        now = self._clock()
        current = self._active.get(key)
        if active and current is None:
            event = new_alert(
                ward=SYSTEM_WARD,
                bed=self.instance,
                device=component,
                patient=None,
                vital="",
                rule=rule,
                kind="technical",
                priority=PRIORITIES.get(rule, Priority.MEDIUM),
                value=0.0,
                limit=0.0,
                message=detail,
                started=now,
            )
            self._active[key] = event
            return copy.copy(event)  # the open alarm is ours to resolve later
        if not active and current is not None:
            del self._active[key]
            current.seq += 1
            current.state = AlertState.RESOLVED
            current.message = detail
            current.at = now
            return current
        return None
