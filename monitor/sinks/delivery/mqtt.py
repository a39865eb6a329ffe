"""Receiver ``mqtt``: the alert JSON on a topic of its own (``topic``: ``{ward}``,
``{bed}``, ``{priority}``, ``{vital}``, ``{device}``), at QoS 1, not retained, through
the daemon's MQTT connection: a pager gateway, a charge nurse's escalation topic.

Accepted when the broker has it (PUBACK). While the broker is away the client keeps the
message and sends it on reconnect: an attempt that times out meanwhile fails (the route
is down, ``sink.down`` after ``down_alarm_s``), and the next attempt waits for that same
publication instead of publishing it twice. A publication the client drops (its queue
full) or fails is published again.
"""

from __future__ import annotations

import asyncio
import json

from monitor.config import MqttReceiverConfig
from monitor.model import AlertEvent
from monitor.mqtt import Client
from monitor.sinks.delivery import ReceiverContext, register_receiver


class MqttReceiver:
    def __init__(self, cfg: MqttReceiverConfig, client: Client) -> None:
        self.cfg = cfg
        self.client = client
        self.timeout_s = cfg.timeout_s
        #: The publication in flight: (key, its future), kept across attempts.
        self._inflight: tuple[str, asyncio.Future[None]] | None = None

    def topic(self, e: AlertEvent) -> str:
        return self.cfg.topic.format(
            ward=e.ward, bed=e.bed, device=e.device, vital=e.vital, priority=str(e.priority)
        )

    async def send(self, event: AlertEvent, key: str) -> None:
        fut = None
        if self._inflight is not None and self._inflight[0] == key:
            fut = self._inflight[1]
            if fut.done() and (fut.cancelled() or fut.exception() is not None):
                fut = None  # dropped or failed: published again
        if fut is None:
            payload = json.dumps(event.to_json(), separators=(",", ":"))
            fut = self.client.publish(self.topic(event), payload, qos=1)
            self._inflight = (key, fut)
        await asyncio.wait_for(asyncio.shield(fut), self.cfg.timeout_s)
        self._inflight = None

    async def close(self) -> None:
        self._inflight = None


@register_receiver(MqttReceiverConfig)
def _build(cfg: MqttReceiverConfig, ctx: ReceiverContext) -> MqttReceiver:
    return MqttReceiver(cfg, ctx.client)
