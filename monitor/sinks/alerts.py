"""Alert publisher: one MQTT message per alert state change on ``alerts.topic``, and a
retained per-bed list of the alerts not yet resolved on ``alerts.state_topic``.

A **paused** bed (``vitalmon/cmd/pause``) keeps being evaluated, stored and shown on its
state topic, but its alert events are held (except ``alerts.pause_breakthrough``
priorities, ``high`` by default) and released when the pause ends: the latest event of
each alert still open, and the recovery of any alert whose raise had been published.
The alert routes hold their events the same way, reading the pauses through
:meth:`AlertPublisher.paused_until`.

QoS 1, not retained. Each publish is confirmed by the broker (PUBACK) in the
background; ``close()`` lets ``run()`` return once every accepted event is confirmed
(or the client gives up at shutdown). While the broker is away, events wait in the
MQTT client and go out on reconnect, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from monitor.config import AlertsConfig
from monitor.model import AlertEvent, AlertState, Reading
from monitor.mqtt import Client
from monitor.pipeline import ScoreUpdate
from monitor.queues import put_end
from monitor.tasks import cancel_and_wait

log = logging.getLogger("vitalmon.sink.alerts")

_RANK = {"high": 0, "medium": 1, "low": 2}
#: Give the other tasks their turn after this many publications in a row.
YIELD_EVERY = 100


@dataclass(frozen=True, slots=True)
class _Release:
    """Queue marker: release the pauses that ended by ``now``."""

    now: float


class Outbox(Protocol):
    """Where alert events go instead of MQTT in a cluster (contract of
    :class:`monitor.sources.jetstream.relay.AlertRelay`): ``publish`` stores the event
    under ``msg_id`` (one copy per id) for its bed's owner to relay to MQTT, or returns
    None for an event it does not take (published on MQTT directly). ``store`` runs
    while the publisher runs; ``open`` and ``close`` bracket it."""

    async def open(self) -> None: ...

    async def store(self) -> None: ...

    async def close(self) -> None: ...

    def publish(
        self, topic: str, payload: str, msg_id: str, ward: str, bed: str
    ) -> asyncio.Future[None] | None: ...


class AlertPublisher:
    def __init__(
        self,
        cfg: AlertsConfig,
        client: Client,
        queue_size: int = 10_000,
        score_topic: str = "scores/{ward}/{bed}",
    ) -> None:
        self.score_topic = score_topic
        self.cfg = cfg
        self.name = "alerts"
        self.client = client
        self.queue: asyncio.Queue[AlertEvent | ScoreUpdate | _Release | None] = asyncio.Queue(
            maxsize=queue_size
        )
        self.counts: Counter[str] = Counter()
        #: Alert events by (kind, priority, state), for the metrics.
        self.events: Counter[tuple[str, str, str]] = Counter()
        #: (ward, bed) -> {alert id: latest event}: the alerts not yet resolved, per bed.
        self._open: dict[tuple[str, str], dict[str, dict[str, object]]] = {}
        #: Paused beds -> wall clock of the pause's end; events held meanwhile, per bed.
        self._paused: dict[tuple[str, str], float] = {}
        #: Paused beds -> wall clock the pause began (the alert routes hold only what
        #: came after it: what came before was published).
        self._paused_since: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], dict[str, AlertEvent]] = {}
        #: Alerts whose raise was published (their recovery must be, too).
        self._announced: set[str] = set()
        #: In a cluster: alert events go through the de-duplicating stream (set by the
        #: daemon); None: on MQTT directly.
        self.outbox: Outbox | None = None

    def topic(self, e: AlertEvent, template: str | None = None) -> str:
        return (template or self.cfg.topic).format(
            ward=e.ward, bed=e.bed, device=e.device, vital=e.vital, priority=str(e.priority)
        )

    def seed(self, open_alerts: list[AlertEvent]) -> None:
        """Alerts open at the last stop: the bed state topics start from them."""
        for e in open_alerts:
            self._open.setdefault((e.ward, e.bed), {})[e.id] = e.to_json()

    def carried(self, open_alerts: list[AlertEvent]) -> None:
        """Open alerts a partition's new owner took on from the last one (who published
        them): the bed state topics go on from them, and their recoveries are published
        even after a pause."""
        for e in open_alerts:
            self._open.setdefault((e.ward, e.bed), {})[e.id] = e.to_json()
            self._announced.add(e.id)

    def forget(self, beds: set[tuple[str, str]]) -> None:
        """Beds handed over to another instance (their partition moved): their open
        alerts, pauses and held events are that instance's now; nothing is published."""
        for key in beds:
            for alert in self._open.pop(key, {}):
                self._announced.discard(alert)
            self._paused.pop(key, None)
            self._paused_since.pop(key, None)
            self._held.pop(key, None)

    async def open(self) -> None:
        if self.outbox is not None:
            await self.outbox.open()

    async def write(
        self,
        readings: Sequence[Reading],
        events: Sequence[AlertEvent],
        done: Callable[[], None] | None = None,
    ) -> None:
        for e in events:
            await self.queue.put(e)

    async def write_scores(self, updates: list[ScoreUpdate]) -> None:
        for u in updates:
            await self.queue.put(u)

    def close(self) -> None:
        put_end(self.queue, "alerts")

    async def run(self) -> None:
        outbox = self.outbox
        storer = None
        if outbox is not None:
            storer = asyncio.create_task(outbox.store(), name="vitalmon.alerts.outbox")
        try:
            await self._run()
        finally:
            if storer is not None and outbox is not None:
                with contextlib.suppress(asyncio.CancelledError):  # (the close goes on)
                    await cancel_and_wait(storer)  # (a NATS outbox: nats-py swallows some)
                await outbox.close()

    async def _run(self) -> None:
        pending: set[asyncio.Future[None]] = set()
        for n, (ward, bed) in enumerate(list(self._open)):
            self._publish_state(ward, bed, pending)
            if n % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        while (item := await self.queue.get()) is not None:
            self.counts["handled"] += 1  # progress, for the watchdog
            if self.counts["handled"] % YIELD_EVERY == 0:
                # a queue that is never empty never suspends: thousands of events (the
                # alerts closed at a restart) must not keep the engine from its turn
                await asyncio.sleep(0)
            if isinstance(item, ScoreUpdate):
                topic = self.score_topic.format(ward=item.ward, bed=item.bed)
                body = (
                    "" if item.payload is None else json.dumps(item.payload, separators=(",", ":"))
                )
                self._send(topic, body, pending, retain=True)  # empty: clears the retained
            elif isinstance(item, _Release):
                self._release(item.now, pending)
            else:
                self._handle(item, pending)
        if pending:
            await asyncio.wait(pending, timeout=3.0)

    def _handle(self, event: AlertEvent, pending: set[asyncio.Future[None]]) -> None:
        self.events[(event.kind, str(event.priority), str(event.state))] += 1
        key = (event.ward, event.bed)
        beds = self._open.setdefault(key, {})
        if event.state == AlertState.RESOLVED:
            beds.pop(event.id, None)
        else:
            beds[event.id] = event.to_json()
        self._publish_state(event.ward, event.bed, pending)  # the truth, paused or not
        if not beds:
            del self._open[key]  # (a bed with no open alert keeps nothing here)
        if key in self._paused and event.priority not in self.cfg.pause_breakthrough:
            self._held.setdefault(key, {})[event.id] = event  # stored; published at release
            return
        self._publish(event, pending)

    def _publish(self, event: AlertEvent, pending: set[asyncio.Future[None]]) -> None:
        payload = json.dumps(event.to_json(), separators=(",", ":"))
        self._send(self.topic(event), payload, pending, event=(event, 0))
        if event.extra.get("action") == "escalate" and self.cfg.escalate_topic:
            self._send(
                self.topic(event, self.cfg.escalate_topic), payload, pending, event=(event, 1)
            )
        self.counts["published"] += 1
        if event.state == AlertState.RESOLVED:
            self._announced.discard(event.id)
        else:
            self._announced.add(event.id)
        log.info(
            "alert %s %s %s %s/%s: %s",
            event.id,
            event.state,
            event.priority,
            event.ward,
            event.bed,
            event.message,
        )

    # -------------------------------------------------------------------- pause

    def pause(self, ward: str, bed: str, seconds: float, now: float) -> float:
        """Hold the bed's alert publication for ``seconds`` (wall clock); -> until."""
        before = self._paused.get((ward, bed))
        if before is None or before <= now:  # (not an extension: a pause of its own)
            self._paused_since[(ward, bed)] = now
        until = max(before or 0.0, now + seconds)
        self._paused[(ward, bed)] = until
        return until

    def paused_since(self, ward: str, bed: str, now: float | None = None) -> float | None:
        """When the bed's pause began (wall clock), or None: not paused (now). The alert
        routes hold an event only if it came after that: one from before was published
        on MQTT, so its route delivers it (and later its end)."""
        if self.paused_until(ward, bed, now) is None:
            return None
        return self._paused_since.get((ward, bed))

    def paused_until(self, ward: str, bed: str, now: float | None = None) -> float | None:
        """When the bed's pause ends (wall clock), or None: not paused (now). Read-only,
        for the alert routes (:mod:`monitor.sinks.delivery`), which hold events as the
        publication does."""
        until = self._paused.get((ward, bed))
        if until is None or until <= (time.time() if now is None else now):
            return None
        return until

    def tick(self, now: float) -> None:
        """Called about once a second: releases pauses that have ended, in queue order."""
        if any(until <= now for until in self._paused.values()):
            with contextlib.suppress(asyncio.QueueFull):  # if full, the next tick tries again
                self.queue.put_nowait(_Release(now))

    def _release(self, now: float, pending: set[asyncio.Future[None]]) -> None:
        for key in [k for k, until in self._paused.items() if until <= now]:
            del self._paused[key]
            self._paused_since.pop(key, None)
            for event in self._held.pop(key, {}).values():
                # still open: published now; resolved during the pause: the recovery is
                # published only if its raise had been (nobody was told, nothing to undo)
                if event.state != AlertState.RESOLVED or event.id in self._announced:
                    self._publish(event, pending)

    def _publish_state(self, ward: str, bed: str, pending: set[asyncio.Future[None]]) -> None:
        """Retained: the bed's alerts not yet resolved, highest priority first."""
        alerts = sorted(
            self._open.get((ward, bed), {}).values(),
            key=lambda a: (_RANK[str(a["priority"])], str(a["started_at"])),
        )
        topic = self.cfg.state_topic.format(ward=ward, bed=bed, device="", vital="", priority="")
        self._send(topic, json.dumps(alerts, separators=(",", ":")), pending, retain=True)

    def _send(
        self,
        topic: str,
        payload: str,
        pending: set[asyncio.Future[None]],
        retain: bool = False,
        event: tuple[AlertEvent, int] | None = None,
    ) -> None:
        """Publish (``event``: an alert event and which of its topics, 0 or 1: through
        the outbox if there is one, under the id ``<alert id>:<seq>:<which>``)."""
        fut = None
        if event is not None and self.outbox is not None:
            e, which = event
            fut = self.outbox.publish(topic, payload, f"{e.id}:{e.seq}:{which}", e.ward, e.bed)
        if fut is None:
            fut = self.client.publish(topic, payload, qos=self.cfg.qos, retain=retain)
        pending.add(fut)
        fut.add_done_callback(pending.discard)
        fut.add_done_callback(self._confirmed)

    def _confirmed(self, fut: asyncio.Future[None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.counts["unconfirmed"] += 1
        else:
            self.counts["confirmed"] += 1
