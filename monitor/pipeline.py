"""The contracts between pipeline stages: sources -> engine -> sinks.

:mod:`monitor.model` holds the data a stage makes (readings, alert events, rejections);
this module holds how the stages hand it on, so that no stage imports another:

* :class:`Batch` (and :data:`Emit`, :data:`Reject`): what a source hands the engine;
* :class:`Sink`: what the engine writes to; :class:`ScoreUpdate`: the NEWS2 scores it
  hands the alert publisher;
* :class:`Ack` (and :class:`UnknownAlert`): an operator's acknowledgement on its way to
  the alert lifecycle, which the engine alone owns and changes; :func:`storage_error`:
  how a durable sink's failure to commit looks to a stage that saves through it;
* :class:`Carried`, :class:`Carry` and :class:`StateKeeper`: a partitioned deployment's
  alert lifecycle and admissions, kept in the cluster by a partition's owner and carried
  on by its next one (:mod:`monitor.sources.jetstream.state`).

The daemon wires the stages together; the implementations stay in their stages
(:class:`monitor.engine.lifecycle.Lifecycle`, :class:`monitor.sinks.sqlite.SqliteSink`).
The old import paths (``monitor.sources.Batch``, ``monitor.sinks.Sink``,
``monitor.engine.score.ScoreUpdate``, ...) still work: they re-export these.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from monitor.model import (
    Admission,
    AlertEvent,
    BedCommand,
    DeviceAlarmReport,
    DeviceStatus,
    Reading,
    Rejection,
)

# ------------------------------------------------------------------ source -> engine


@dataclass(slots=True)
class Batch:
    """Readings taken in together (one MQTT message, one serial line)."""

    readings: list[Reading]
    #: Called once the batch is durably committed; releases it at its origin (PUBACK).
    done: Callable[[], None] | None = None
    received_at: float = 0.0
    #: Alert events that come with the batch, final: they pass the lifecycle unchanged
    #: (the lifecycle's own events are made by the engine, which owns it).
    events: list[AlertEvent] = field(default_factory=list)
    #: Device-reported sensor/signal state taken in with the readings (event time order).
    statuses: list[DeviceStatus] = field(default_factory=list)
    #: Alert events raised outside the rules (a source's link: device.disconnected; the
    #: daemon's: device.silent, the store's and sinks' technical alarms, alarms closed by
    #: a reload or a sweep): the engine passes them through the alarm lifecycle.
    alarms: list[AlertEvent] = field(default_factory=list)
    #: Operator acknowledgements, applied to the lifecycle by the engine in queue order.
    acks: list[Ack] = field(default_factory=list)
    #: Admissions and discharges, applied before the batch's readings.
    bed_commands: list[BedCommand] = field(default_factory=list)
    #: Alarms and INOPs a device reports itself (the full set per device and instant):
    #: -> alerts of kind ``device`` / ``technical`` (:mod:`monitor.engine.device_alarms`).
    device_alarms: list[DeviceAlarmReport] = field(default_factory=list)
    #: The readings are one snapshot (an HL7 message: a monitor's view at one moment):
    #: its newest observation is the bed's present for all of them (README, "Event time").
    snapshot: bool = False
    #: A clock tick (epoch s): time-driven work due by then (the lifecycle's escalations
    #: and re-notifications, NEWS2 holds and expiry) is done before the batch's readings.
    #: None: no tick.
    tick: float | None = None
    #: Readings taken in for evaluation only, never stored: the degraded-mode copy of
    #: messages whose durable copy the broker keeps for the persistent session while the
    #: store refuses commits (:meth:`monitor.sources.mqtt.MqttSource.shadow`).
    transient: bool = False
    #: Whether this instance may still evaluate and store the batch (a partition's lease
    #: still held, :mod:`monitor.sources.jetstream.ownership`); checked by the engine when
    #: it takes the batch: a fenced batch is dropped whole, never acknowledged at its
    #: origin, and goes to the partition's new owner. None: always.
    fence: Callable[[], bool] | None = None
    #: Called instead of ``done`` when the engine drops a fenced batch (its origin may
    #: hand it on at once rather than wait for a redelivery).
    dropped: Callable[[], None] | None = None
    #: Readings replayed to rebuild state (a partition's new owner replays what the last
    #: owner already committed): evaluated, their alert events taken by the lifecycle,
    #: nothing handed to a sink (stored and published before) and nothing acknowledged.
    replay: bool = False
    #: Beds (ward, bed) whose partition went to another instance: the engine forgets all
    #: it keeps of them without a word (their new owner carries their alerts on), before
    #: the batch's readings.
    handed_over: list[tuple[str, str]] = field(default_factory=list)
    #: A partition's state as its last owner kept it in the cluster, for a new owner to
    #: take on (admissions before the partition's replay, open alerts after it).
    carry: Carry | None = None


#: How a source hands a batch on (the engine's ``put``: waits while its queue is full).
Emit = Callable[[Batch], Awaitable[None]]
#: How a source refuses input (to the dead-letter topic; never waits).
Reject = Callable[[Rejection], None]


# ------------------------------------------------------------------- engine -> sinks


class Sink(Protocol):
    """A sink as the engine writes to it (contract: :mod:`monitor.sinks`)."""

    name: str

    async def open(self) -> None: ...

    async def write(
        self,
        readings: Sequence[Reading],
        events: Sequence[AlertEvent],
        done: Callable[[], None] | None = None,
    ) -> None: ...

    async def run(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ScoreUpdate:
    """A bed's new NEWS2 score, for the retained score topic (None: clear it)."""

    ward: str
    bed: str
    payload: dict[str, Any] | None


# ----------------------------------------------------- commands -> engine, sinks


class UnknownAlert(LookupError):
    """No alert with that id is active (never raised, or already resolved)."""


@dataclass(slots=True)
class Ack:
    """An acknowledgement (``vitalmon/cmd/ack``) for the engine to apply to its alert
    lifecycle. ``outcome`` (if any) is resolved when applied: with the ``acknowledged``
    event (also published), None if the alert was acknowledged before, or the exception
    :class:`UnknownAlert` if no such alert is open."""

    alert_id: str
    #: who acknowledged, as claimed (``ack_by``)
    by: str
    #: who, as the broker verified it (``ack_identity``; None: unknown)
    identity: str | None = None
    outcome: asyncio.Future[AlertEvent | None] | None = None


# ------------------------------------------------ a partition's state, between owners


@dataclass(slots=True)
class Carried:
    """An open alert as its owner keeps it in the cluster: its latest event and the
    lifecycle's timers (wall clock), so that the partition's next owner goes on with the
    same id, seq, acknowledgement, escalation and re-notification."""

    event: AlertEvent
    #: the priority the rule gives it (before escalation)
    rule_priority: str
    #: wall clock of the (re)activation that escalation counts from
    active_since: float
    #: wall clock of the latest publication (re-notification counts from it)
    notified_at: float
    acked_by: str | None = None
    escalated: bool = False


@dataclass(slots=True)
class Carry:
    """What a partition's new owner takes on, in its engine's queue order: the beds'
    ``admissions`` (before the replay: the rules use the admitted profiles), then, after
    the replay, the ``alerts`` open when the last owner stopped (the truth about which
    alerts are open: one the replay raised and the last owner had not open is judged
    afresh). ``ours`` says whether a bed is in the partition."""

    partition: int
    ours: Callable[[str, str], bool]
    admissions: list[Admission] | None = None
    alerts: list[Carried] | None = None


class StateKeeper(Protocol):
    """Keeps the alert lifecycle and admissions of the beds this instance owns in a
    replicated store, before anyone is told of a change (contract for
    :attr:`monitor.engine.Engine.keeper`). ``alerts``: alert id -> (ward, bed, its state;
    None: no longer open); ``admissions``: (ward, bed) -> admission (None: discharged).
    Never raises: what cannot be written now is written with the next call."""

    async def keep(
        self,
        alerts: dict[str, tuple[str, str, Carried | None]],
        admissions: dict[tuple[str, str], Admission | None],
    ) -> None: ...


def storage_error(exc: BaseException) -> bool:
    """A failure of the disk or the file (retried), not of the data (quarantined)."""
    return isinstance(exc, OSError | sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


__all__ = [
    "Ack",
    "Batch",
    "Carried",
    "Carry",
    "Emit",
    "Reject",
    "ScoreUpdate",
    "Sink",
    "StateKeeper",
    "UnknownAlert",
    "storage_error",
]
