"""Alert delivery (``alerts.routes``): alert events to the systems that reach people, each
route through its own durable outbox in the journal (docs/delivery.md).

The journal holds every alert event before anyone is told of it. The **router**
(:mod:`~monitor.sinks.delivery.router`) reads the events committed after its position,
and in one transaction makes a row per (route that matches, event) in the journal's
``outbox`` table and moves its position: routing is exactly once, whatever crashes. One
**deliverer** per route (:mod:`~monitor.sinks.delivery.deliverer`) sends its rows one at
a time, in order, to its receiver, and marks a row delivered only once the receiver has
accepted it; a failure is retried with backoff, for as long as it takes, and holds up
no other route and never the engine. Rows and their states:
:mod:`~monitor.sinks.delivery.outbox`.

Contract of a :class:`Receiver` (one per route, built by its ``type``'s factory, which
the receiver's module registers with :func:`register_receiver`):

* ``send(event, key)`` delivers one alert event and returns once the receiver has
  accepted it, or raises: :class:`Rejected` when the receiver refused this event for
  good (the deliverer gives it up after ``reject_after`` such refusals), anything else
  for a failure the deliverer retries (the same event, later). ``key``
  is ``<alert id>:<seq>``, the same on every attempt and after a restart: the receiver
  passes it on (webhook header ``X-Vitalmon-Event``, HL7 MSH-10, the mail's Message-ID)
  so that the system behind it can drop a duplicate. It gives up after ``timeout_s`` in
  all (name resolution, connect, send and the whole answer); a blocking client runs
  each attempt in a daemon thread of its own and is cut off at the deadline
  (:mod:`.attempt`), so that no hung attempt holds up the next one or a stop.
  The deliverer calls it one call at a time.
* ``close()`` releases connections and threads; called once, after the last ``send``.
* It never logs or raises its secrets (a webhook's key, a mail password, a url's query).

:class:`Delivery` wires the router and the deliverers for the daemon: ``open()`` before
the sources start, ``tasks()`` to run, ``check()`` on every heartbeat (``sink.down``),
``close()`` after the engine and the journal have drained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from monitor.config import RouteConfig
from monitor.model import AlertEvent
from monitor.mqtt import Client
from monitor.registry import Registry
from monitor.sinks.delivery import outbox
from monitor.sinks.delivery.deliverer import Deliverer, Rejected, key
from monitor.sinks.delivery.router import Router, matches, routes_of
from monitor.sinks.sqlite import SqliteSink, storage_error

log = logging.getLogger("vitalmon.sink.delivery")


class Receiver(Protocol):
    """Where a route's events go (contract: this module's docstring)."""

    timeout_s: float

    async def send(self, event: AlertEvent, key: str) -> None: ...

    async def close(self) -> None: ...


class Pauses(Protocol):
    """The alert publisher's live pauses, read-only
    (:meth:`monitor.sinks.alerts.AlertPublisher.paused_until`, ``.paused_since``)."""

    def paused_until(self, ward: str, bed: str) -> float | None: ...

    def paused_since(self, ward: str, bed: str) -> float | None: ...


@dataclass(frozen=True, slots=True)
class ReceiverContext:
    """What the daemon shares with a receiver's factory."""

    route: str  #: the route's name (for logs)
    client: Client  #: the daemon's MQTT client (``type: mqtt``)


#: ``alerts.routes[].receiver.type`` -> factory of the receiver.
RECEIVERS: Registry[ReceiverContext, Receiver] = Registry("alert receiver")
register_receiver = RECEIVERS.register
build_receiver = RECEIVERS.build


class Delivery:
    """The router and one deliverer per route (none: nothing runs)."""

    def __init__(
        self,
        routes: list[RouteConfig],
        journal: SqliteSink,
        client: Client,
        *,
        pauses: Pauses | None = None,
        breakthrough: Callable[[], Collection[str]] = lambda: (),
    ) -> None:
        self.journal = journal
        self.routes = routes
        self.router = Router(journal, routes, self._routed)
        self.deliverers = {
            r.name: Deliverer(
                r,
                journal,
                build_receiver(r.receiver, ReceiverContext(r.name, client)),
                router_done=self.router.done,
                pauses=pauses,
                breakthrough=breakthrough,
            )
            for r in routes
        }

    def _routed(self, made: dict[str, int]) -> None:
        for name, n in made.items():
            d = self.deliverers.get(name)
            if d is not None:
                d.routed(n)

    @property
    def on_condition(self) -> Callable[[str, str, bool, str], None] | None:
        return next((d.on_condition for d in self.deliverers.values()), None)

    @on_condition.setter
    def on_condition(self, fn: Callable[[str, str, bool, str], None] | None) -> None:
        for d in self.deliverers.values():
            d.on_condition = fn

    async def open(self) -> None:
        if not self.routes:
            try:  # routes configured later start from then, not from now
                await self.journal.call(outbox.forget)
            except Exception as exc:
                if not storage_error(exc):
                    raise
            return
        await self.router.open()
        for d in self.deliverers.values():
            await d.open()

    def tasks(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """(task name, coroutine) to run: the router and each route's deliverer."""
        if not self.routes:
            return []
        return [
            ("vitalmon.routes", self.router.run()),
            *((f"vitalmon.route[{n}]", d.run()) for n, d in self.deliverers.items()),
        ]

    def check(self) -> None:
        for d in self.deliverers.values():
            d.check()

    def close(self) -> None:
        self.router.close()
        for d in self.deliverers.values():
            d.close()


__all__ = [
    "RECEIVERS",
    "Deliverer",
    "Delivery",
    "Pauses",
    "Receiver",
    "ReceiverContext",
    "Rejected",
    "Router",
    "build_receiver",
    "key",
    "matches",
    "outbox",
    "register_receiver",
    "routes_of",
]
