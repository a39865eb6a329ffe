"""Sources: where readings come from (MQTT, serial devices, HL7 over MLLP).

Contract of a source (see :class:`Source`):

* ``run(emit, reject)`` is started as a task by the daemon after every sink and the
  engine are running. It turns device input into :class:`~monitor.model.Reading` lists
  and awaits ``emit(batch)`` for each: ``emit`` applies back-pressure (it waits while the
  engine's queue is full), so a source never buffers without bound. Refused input goes
  to ``reject(rejection)``, which never waits.
* ``stop()`` is called before the engine and sinks are stopped. Afterwards the source
  emits nothing more; ``run`` returns once what it already took in has been emitted.
  Input it did not take in stays with its origin (MQTT: unacknowledged, redelivered).

Each kind of source registers its factory under its config ``type``
(:func:`register_source`); the daemon builds ``sources[]`` with :func:`build_source`.
What a source can do beyond the contract, the daemon asks by capability (``Startup``,
``Shadowed``, ``LinkCounted``, ``Measured``, ``HasUnmapped``, ``Partitioned``), never by its class.

:class:`Batch`, :data:`Emit` and :data:`Reject` cross to the engine: they live in the
stage-neutral :mod:`monitor.pipeline` and are re-exported here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from monitor.config import RulesConfig
from monitor.pipeline import Batch, Emit, Reject, StateKeeper
from monitor.registry import Registry

if TYPE_CHECKING:
    from monitor.metrics import Sample
    from monitor.mqtt import Client
    from monitor.sources.unmapped import Unmapped


class Source(Protocol):
    name: str

    async def run(self, emit: Emit, reject: Reject) -> None: ...

    def stop(self) -> None: ...


# ------------------------------------------------------------------- capabilities


@runtime_checkable
class Startup(Protocol):
    """Checks made before anything starts (a serial port that must be there): raises
    when the daemon must not start."""

    def check(self) -> None: ...


@runtime_checkable
class Shadowed(Protocol):
    """Takes QoS 0 copies from a second connection while the store refuses commits
    (the degraded mode, :mod:`monitor.degraded`); None ends it."""

    def shadow(self, client: Client | None) -> None: ...


@runtime_checkable
class LinkCounted(Protocol):
    """Counts its device link (frames, losses, refusals by cause): in the summary."""

    name: str
    counts: Counter[str]


@runtime_checkable
class Measured(Protocol):
    """Has samples of its own for ``/metrics`` (a serial port open or not)."""

    def samples(self) -> list[Sample]: ...


@runtime_checkable
class Partitioned(Protocol):
    """Reads beds from partitions it owns for a time (the JetStream source): whether the
    bed is this instance's now (True), another's (False: nothing may be said of it
    here), or not one of its beds (None)."""

    def owns(self, ward: str, bed: str) -> bool | None: ...


class ClusterKeeper(StateKeeper, Protocol):
    """A :class:`~monitor.pipeline.StateKeeper` in a cluster: it also keeps the pauses of
    owned beds, knows whether another instance has an alert open, and leaves an
    acknowledgement of such an alert for its owner."""

    def keep_pause(self, ward: str, bed: str, until: float) -> None: ...

    async def knows_alert(self, alert_id: str) -> bool: ...

    async def forward_ack(self, alert_id: str, by: str, identity: str | None) -> bool: ...


@runtime_checkable
class Clustered(Protocol):
    """Keeps the state of the beds it owns in the cluster for their next owner (the
    JetStream source): ``state`` is the engine's keeper; ``pauses`` is where the pauses
    taken on from a partition's last owner go (the alert publisher); ``relay`` is the
    alert publisher's outbox (:class:`monitor.sinks.alerts.Outbox`)."""

    state: ClusterKeeper
    pauses: Any
    relay: Any


@runtime_checkable
class HasUnmapped(Protocol):
    """Counts observations that map to no vital (HL7), summed over the sources."""

    unmapped: Unmapped


def bed_owner(sources: Sequence[object]) -> Callable[[str, str], bool | None] | None:
    """Whether a bed is this instance's to speak of, by its partitioned sources: False
    when one says another instance owns it now; None with no partitioned source."""
    parts = [s for s in sources if isinstance(s, Partitioned)]
    if not parts:
        return None

    def owner(ward: str, bed: str) -> bool | None:
        answers = [s.owns(ward, bed) for s in parts]
        return False if False in answers else (True if True in answers else None)

    return owner


# ----------------------------------------------------------------------- registry


@dataclass(frozen=True)
class SourceContext:
    """What the daemon shares with the sources it builds."""

    rules: RulesConfig
    #: The broker connection (MQTT sources subscribe on it).
    client: Client
    #: ``(ward, bed, device)`` whose link a source watches itself (device.disconnected,
    #: device.silent): ``device.stale`` leaves it alone.
    watch_elsewhere: Callable[[str, str, str], None]


#: ``sources[].type`` -> factory; each source module registers its own.
SOURCES: Registry[SourceContext, Source] = Registry("source")
register_source = SOURCES.register
build_source = SOURCES.build

__all__ = [
    "SOURCES",
    "Batch",
    "Emit",
    "HasUnmapped",
    "LinkCounted",
    "Measured",
    "Partitioned",
    "Reject",
    "Shadowed",
    "Source",
    "SourceContext",
    "Startup",
    "bed_owner",
    "build_source",
    "register_source",
]
