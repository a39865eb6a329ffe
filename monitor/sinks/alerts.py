"""Alert publisher: one MQTT message per alert state change on ``alerts.topic``, and a
retained per-bed list of the alerts not yet resolved on ``alerts.state_topic``.

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
from monitor.engine.score import ScoreUpdate
from monitor.model import AlertEvent, AlertState, Reading
from monitor.mqtt import Client
from monitor.queues import put_end

log = logging.getLogger("vitalmon.sink.alerts")

_RANK = {"high": 0, "medium": 1, "low": 2}


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
        self.queue: asyncio.Queue[AlertEvent | ScoreUpdate | None] = asyncio.Queue(
            maxsize=queue_size
        )
        self.counts: Counter[str] = Counter()
        #: (ward, bed) -> {alert id: latest event}: the alerts not yet resolved, per bed.
        self._open: dict[tuple[str, str], dict[str, dict[str, object]]] = {}

    def topic(self, e: AlertEvent, template: str | None = None) -> str:
        return (template or self.cfg.topic).format(
            ward=e.ward, bed=e.bed, device=e.device, vital=e.vital, priority=str(e.priority)
        )

    def seed(self, open_alerts: list[AlertEvent]) -> None:
        """Alerts open at the last stop: the bed state topics start from them."""
        for e in open_alerts:
            self._open.setdefault((e.ward, e.bed), {})[e.id] = e.to_json()

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

    async def write_scores(self, updates: list[ScoreUpdate]) -> None:
        for u in updates:
            await self.queue.put(u)

    def close(self) -> None:
        put_end(self.queue, "alerts")

    async def run(self) -> None:
        confirmations: set[asyncio.Future[None]] = set()
        for ward, bed in list(self._open):
            self._publish_state(ward, bed, confirmations)
        while (event := await self.queue.get()) is not None:
            if isinstance(event, ScoreUpdate):
                topic = self.score_topic.format(ward=event.ward, bed=event.bed)
                self._send(topic, json.dumps(event.payload, separators=(",", ":")),
                           confirmations, retain=True)  # fmt: skip
                continue
            payload = json.dumps(event.to_json(), separators=(",", ":"))
            self._send(self.topic(event), payload, confirmations)
            if event.extra.get("action") == "escalate" and self.cfg.escalate_topic:
                self._send(self.topic(event, self.cfg.escalate_topic), payload, confirmations)
            self.counts["published"] += 1
            beds = self._open.setdefault((event.ward, event.bed), {})
            if event.state == AlertState.RESOLVED:
                beds.pop(event.id, None)
            else:
                beds[event.id] = event.to_json()
            self._publish_state(event.ward, event.bed, confirmations)
            log.info("alert %s %s %s %s/%s: %s", event.id, event.state, event.priority,
                     event.ward, event.bed, event.message)  # fmt: skip
        if confirmations:
            await asyncio.wait(confirmations, timeout=3.0)

    def _publish_state(self, ward: str, bed: str, pending: set[asyncio.Future[None]]) -> None:
        """Retained: the bed's alerts not yet resolved, highest priority first."""
        alerts = sorted(
            self._open.get((ward, bed), {}).values(),
            key=lambda a: (_RANK[str(a["priority"])], str(a["started_at"])),
        )
        topic = self.cfg.state_topic.format(ward=ward, bed=bed, device="", vital="", priority="")
        self._send(topic, json.dumps(alerts, separators=(",", ":")), pending, retain=True)

    def _send(self, topic: str, payload: str, pending: set[asyncio.Future[None]],
              retain: bool = False) -> None:  # fmt: skip
        fut = self.client.publish(topic, payload, qos=self.cfg.qos, retain=retain)
        pending.add(fut)
        fut.add_done_callback(pending.discard)
        fut.add_done_callback(self._confirmed)

    def _confirmed(self, fut: asyncio.Future[None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.counts["unconfirmed"] += 1
        else:
            self.counts["confirmed"] += 1
