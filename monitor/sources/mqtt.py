"""MQTT source: ``vitals/{ward}/{bed}/{device}`` messages -> readings.

Each message is decoded (:mod:`monitor.sources.codecs`), its readings emitted (waiting
while the engine is busy), and only then acknowledged to the broker. A message that
arrives after ``stop()`` is left unacknowledged: the persistent session redelivers it
to the next run.
"""

from __future__ import annotations

import asyncio
import logging
import time

from monitor.config import DEFAULT_ALIASES, MqttSourceConfig, RulesConfig, parse_topic_template
from monitor.model import Rejection
from monitor.mqtt import Client, Message
from monitor.sources import Batch, Emit, Reject
from monitor.sources.codecs import Limits, Origin, decode

log = logging.getLogger("vitalmon.source.mqtt")

INBOX_QOS0_LIMIT = 10_000


class TopicTemplate:
    """``vitals/{ward}/{bed}/{device}`` <-> subscription filter and topic matching."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.levels = parse_topic_template(template)
        self.filter = "/".join(
            "+" if lvl and lvl.startswith("{") else str(lvl) for lvl in self.levels
        )

    def match(self, topic: str) -> dict[str, str] | None:
        """Topic -> {placeholder: value}; None when it does not fit or a level is empty."""
        parts = topic.split("/")
        if len(parts) != len(self.levels):
            return None
        out: dict[str, str] = {}
        for lvl, part in zip(self.levels, parts, strict=True):
            if lvl is not None and lvl.startswith("{"):
                if not part:
                    return None
                out[lvl[1:-1]] = part
            elif lvl != part:
                return None
        return out


class MqttSource:
    def __init__(self, cfg: MqttSourceConfig, rules: RulesConfig, client: Client) -> None:
        self.cfg = cfg
        self.name = f"mqtt:{cfg.topic}"
        self.template = TopicTemplate(cfg.topic)
        aliases = {**DEFAULT_ALIASES, **{k.lower(): v for k, v in cfg.aliases.items()}}
        self.limits = Limits(cfg.max_payload_bytes, rules.max_future_s, aliases)
        self._client = client
        # QoS 1/2 messages wait here unacknowledged, so the broker's in-flight window bounds
        # the inbox; QoS 0 messages (at most once by definition) are refused beyond the bound.
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._reject: Reject | None = None
        self._stopped = False
        client.subscribe(self.template.filter, cfg.qos, self._deliver)

    def _deliver(self, msg: Message) -> None:
        if msg.qos == 0 and self._inbox.qsize() >= INBOX_QOS0_LIMIT:
            if self._reject is not None:
                self._reject(
                    Rejection(
                        "overflow",
                        "engine busy; QoS 0 message dropped",
                        msg.topic,
                        msg.payload[:256],
                    )
                )
            return
        self._inbox.put_nowait(msg)

    def stop(self) -> None:
        self._stopped = True
        self._inbox.put_nowait(None)

    def origin(self, topic: str) -> Origin | None:
        names = self.template.match(topic)
        if names is None:
            return None
        return Origin(
            topic,
            names.get("ward", self.cfg.ward),
            names["bed"],
            names.get("device", self.cfg.device),
        )

    async def run(self, emit: Emit, reject: Reject) -> None:
        self._reject = reject
        while True:
            msg = await self._inbox.get()
            if msg is None or self._stopped:
                return  # what is still in the inbox was never acked: the broker keeps it
            now = time.time()
            origin = self.origin(msg.topic)
            if origin is None:
                reject(
                    Rejection(
                        "bad_topic",
                        "topic does not fit " + self.cfg.topic,
                        msg.topic,
                        msg.payload[:1024],
                    )
                )
                self._client.ack(msg)
                continue
            if msg.retain and not msg.payload:
                self._client.ack(msg)  # clearing a retained message is not a reading
                continue
            decoded = decode(msg.payload, origin, now, self.limits)
            for rej in decoded.rejections:
                reject(rej)
            if decoded.readings:
                await emit(Batch(decoded.readings, received_at=now))
            self._client.ack(msg)
