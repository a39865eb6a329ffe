"""The capture session: devices' MQTT messages -> the stream, at least once.

One persistent MQTT session (``capture_client_id``, QoS 1 subscription to the topic
template) on the cluster's MQTT listener. Because the session exists, the NATS server
stores each QoS 1 publish of a device (replicated) before it PUBACKs it, and keeps it
until the session acknowledges it. The capture puts each message into the stream with a
JetStream publish, which is acknowledged once stored on a majority of the stream's
replicas, and only then acknowledges it to MQTT. A message whose JetStream publish fails
is published again (the stream may then hold it twice: the engine and the store absorb a
repeated reading); one not acknowledged when the capture stops or dies is delivered again
by the server to the session's next holder.

When the listener it is connected to is gone for ``FAILOVER_S``, the capture connects to
the next one in ``capture_mqtt`` (the session lives in the cluster, not on one node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from monitor.config import JetStreamSourceConfig, MqttConfig
from monitor.mqtt import Client, Message
from monitor.sources.jetstream.subjects import captured_subject
from monitor.sources.mqtt import TopicTemplate
from monitor.tasks import cancel_and_wait, raise_if_cancelled

log = logging.getLogger("vitalmon.source.jetstream.capture")

#: Messages put into the stream at once (their JetStream publishes in flight together).
CHUNK = 256
#: A listener unreachable this long: the next one.
FAILOVER_S = 5.0
#: A JetStream publish not acknowledged this long is tried again.
PUBLISH_TIMEOUT_S = 5.0


class Capture:
    def __init__(
        self, cfg: JetStreamSourceConfig, js: Any, valid: Callable[[], bool] = lambda: True
    ) -> None:
        self.cfg = cfg
        self._js = js
        #: whether this instance still holds the capture lease (the fence): a message
        #: taken while it does not is neither forwarded nor acknowledged, so the session's
        #: holder gets it
        self._valid = valid
        self.template = TopicTemplate(cfg.topic)
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._client: Client | None = None
        self._host = 0
        self.counts: Counter[str] = Counter()

    def _connect(self) -> Client:
        host, _, port = self.cfg.capture_mqtt[self._host % len(self.cfg.capture_mqtt)].rpartition(
            ":"
        )
        mqtt = MqttConfig(
            host=host,
            port=int(port),
            client_id=self.cfg.capture_client_id,
            protocol="3.1.1",  # (the NATS server speaks MQTT 3.1.1)
            reconnect_min_s=0.2,
            reconnect_max_s=1.0,
        )
        client = Client(mqtt)
        client.subscribe(self.template.filter, 1, self._inbox.put_nowait)
        client.start()
        return client

    async def run(self) -> None:
        """Until cancelled: keep the session connected and forward what it receives."""
        forward = asyncio.create_task(self._forward(), name="vitalmon.capture.forward")
        try:
            while self._valid():  # (the lease gone: never take the session back)
                self._client = self._connect()
                while self._valid():
                    try:
                        await asyncio.wait_for(self._client.connected.wait(), FAILOVER_S)
                    except TimeoutError:
                        break  # the next listener
                    self._client.disconnected.clear()
                    if self._client.connected.is_set():
                        await self._client.disconnected.wait()
                if not self._valid():
                    break
                old, self._client = self._client, None
                await old.stop(0.5)
                self._host += 1
                self.counts["failovers"] += 1
                log.warning(
                    "capture: MQTT listener unreachable for %g s; trying %s",
                    FAILOVER_S,
                    self.cfg.capture_mqtt[self._host % len(self.cfg.capture_mqtt)],
                )
        finally:
            with contextlib.suppress(asyncio.CancelledError):  # (our own: the stop goes on)
                await cancel_and_wait(forward)
            if self._client is not None:
                await self._client.stop(1.0)

    async def _forward(self) -> None:
        inbox = self._inbox
        while True:
            raise_if_cancelled()  # (a publish may have swallowed it)
            chunk = [await inbox.get()]
            while len(chunk) < CHUNK and not inbox.empty():
                chunk.append(inbox.get_nowait())
            if not self._valid():  # not ours any more: left to the session's holder
                self.counts["fenced"] += len(chunk)
                if self._client is not None:  # (it would take the session back)
                    self._client.disconnected.set()  # (run() sees the lease gone)
                    await self._client.stop(0.5)
                continue
            pending = chunk
            while pending:
                results = await asyncio.gather(
                    *(self._publish(m) for m in pending), return_exceptions=True
                )
                failed = [m for m, r in zip(pending, results, strict=True) if r is not None]
                for m, r in zip(pending, results, strict=True):
                    if r is None and self._client is not None:
                        self._client.ack(m)  # (a message of an older connection: no-op)
                if failed:
                    self.counts["publish_retries"] += len(failed)
                    log.warning(
                        "capture: %d message(s) not stored by the stream (%s); again",
                        len(failed),
                        next(r for r in results if r is not None),
                    )
                    raise_if_cancelled()
                    await asyncio.sleep(0.5)
                pending = failed

    async def _publish(self, msg: Message) -> None:
        try:
            subject = captured_subject(self.cfg.subject_prefix, msg.topic)
        except ValueError:
            self.counts["bad_topic"] += 1
            return  # (the source refuses it: never in a partition)
        await self._js.publish(subject, msg.payload, timeout=PUBLISH_TIMEOUT_S)
        self.counts["captured"] += 1
        return
