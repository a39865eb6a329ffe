"""Sources: where readings come from (MQTT today; serial and HL7 later).

Contract of a source (see :class:`Source`):

* ``run(emit, reject)`` is started as a task by the daemon after every sink and the
  engine are running. It turns device input into :class:`~monitor.model.Reading` lists
  and awaits ``emit(batch)`` for each: ``emit`` applies back-pressure (it waits while the
  engine's queue is full), so a source never buffers without bound. Refused input goes
  to ``reject(rejection)``, which never waits.
* ``stop()`` is called before the engine and sinks are stopped. Afterwards the source
  emits nothing more; ``run`` returns once what it already took in has been emitted.
  Input it did not take in stays with its origin (MQTT: unacknowledged, redelivered).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from monitor.model import (
    AlertEvent,
    BedCommand,
    DeviceAlarmReport,
    DeviceStatus,
    Reading,
    Rejection,
)


@dataclass(slots=True)
class Batch:
    """Readings taken in together (one MQTT message, one serial line)."""

    readings: list[Reading]
    #: Called once the batch is durably committed; releases it at its origin (PUBACK).
    done: Callable[[], None] | None = None
    received_at: float = 0.0
    #: Alert events that come with the batch, final (lifecycle applied): technical alarms,
    #: acknowledgements, escalations.
    events: list[AlertEvent] = field(default_factory=list)
    #: Device-reported sensor/signal state taken in with the readings (event time order).
    statuses: list[DeviceStatus] = field(default_factory=list)
    #: Technical alarms a source raises about its own link (device.disconnected,
    #: device.silent): the engine passes them through the alarm lifecycle.
    alarms: list[AlertEvent] = field(default_factory=list)
    #: Admissions and discharges, applied before the batch's readings.
    bed_commands: list[BedCommand] = field(default_factory=list)
    #: Alarms and INOPs a device reports itself (the full set per device and instant):
    #: -> alerts of kind ``device`` / ``technical`` (:mod:`monitor.engine.device_alarms`).
    device_alarms: list[DeviceAlarmReport] = field(default_factory=list)
    #: The readings are one snapshot (an HL7 message: a monitor's view at one moment):
    #: its newest observation is the bed's present for all of them (README, "Event time").
    snapshot: bool = False
    #: A clock tick (epoch s): time-driven rule work due by then (NEWS2 holds and
    #: expiry) is done before the batch's readings. None: no tick.
    tick: float | None = None
    #: Readings taken in for evaluation only, never stored: the degraded-mode copy of
    #: messages whose durable copy the broker keeps for the persistent session while the
    #: store refuses commits (:meth:`monitor.sources.mqtt.MqttSource.shadow`).
    transient: bool = False


Emit = Callable[[Batch], Awaitable[None]]
Reject = Callable[[Rejection], None]


class Source(Protocol):
    name: str

    async def run(self, emit: Emit, reject: Reject) -> None: ...

    def stop(self) -> None: ...


__all__ = ["Batch", "Emit", "Reject", "Source"]
