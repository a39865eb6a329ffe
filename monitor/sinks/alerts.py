"""Alert publisher: one MQTT message per alert state change on ``alerts.topic``.

QoS 1, not retained. Each publish is confirmed by the broker (PUBACK) in the
background; ``close()`` lets ``run()`` return once every accepted event is confirmed
(or the client gives up at shutdown). While the broker is away, events wait in the
MQTT client and go out on reconnect, in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence

from monitor.config import AlertsConfig
from monitor.model import AlertEvent, Reading
from monitor.mqtt import Client
from monitor.queues import put_end

log = logging.getLogger("vitalmon.sink.alerts")


class AlertPublisher:
    def __init__(self, cfg: AlertsConfig, client: Client, queue_size: int = 10_000) -> None:
        self.cfg = cfg
        self.name = "alerts"
        self.client = client
        self.queue: asyncio.Queue[AlertEvent | None] = asyncio.Queue(maxsize=queue_size)
        self.counts: Counter[str] = Counter()

    def topic(self, e: AlertEvent) -> str:
        return self.cfg.topic.format(
            ward=e.ward, bed=e.bed, device=e.device, vital=e.vital, priority=str(e.priority)
        )

    async def open(self) -> None:
        return None

    async def write(
        self,
        readings: Sequence[Reading],
        events: Sequence[AlertEvent],
        done: Callable[[], None] | None = None,
    ) -> None:
        for e in events:
            await self.queue.put(e)

    def close(self) -> None:
        put_end(self.queue, "alerts")

    async def run(self) -> None:
        confirmations: set[asyncio.Future[None]] = set()
        while (event := await self.queue.get()) is not None:
            payload = json.dumps(event.to_json(), separators=(",", ":"))
            fut = self.client.publish(self.topic(event), payload, qos=self.cfg.qos)
            self.counts["published"] += 1
            confirmations.add(fut)
            fut.add_done_callback(confirmations.discard)
            fut.add_done_callback(self._confirmed)
            log.info(
                "alert %s %s %s %s/%s: %s",
                event.id,
                event.state,
                event.priority,
                event.ward,
                event.bed,
                event.message,
            )
        if confirmations:
            await asyncio.wait(confirmations, timeout=3.0)

    def _confirmed(self, fut: asyncio.Future[None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.counts["unconfirmed"] += 1
        else:
            self.counts["confirmed"] += 1
