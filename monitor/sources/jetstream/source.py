"""The JetStream source: the stream's partitions -> batches, acknowledged after commit.

At start it creates the stream if it is missing (subjects ``<prefix>.in.>``, the
partitioning transform, ``replicas``, ``retention_s``) or checks that the one there has
the same partitioning (another partition count would move beds between partitions: it
refuses to start). It then reads every partition ``n`` with the durable pull consumer
``<stream>-p<n>`` (filter ``<prefix>.p.<n>.>``, explicit acks): a message is decoded as
the MQTT source decodes a message on its topic, and acknowledged to JetStream only after
the journal has committed the batch it is in. ``max_ack_pending`` bounds what is
delivered and not yet committed (back-pressure), ``ack_wait_s`` is when a message not
committed is delivered again.

A reading without its own ``ts`` is stamped with the time the stream stored the message
(its JetStream timestamp), which a redelivery or a replay keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Any

from monitor.config import DEFAULT_ALIASES, JetStreamSourceConfig, RulesConfig
from monitor.model import Rejection
from monitor.sources import Batch, Emit, Reject, SourceContext, register_source
from monitor.sources.codecs import Limits, Origin, decode
from monitor.sources.jetstream.subjects import (
    partition_filter,
    partition_transform,
    stored_topic,
)
from monitor.sources.mqtt import TopicTemplate

log = logging.getLogger("vitalmon.source.jetstream")

#: Messages fetched at once from a partition (at most; fewer when fewer are waiting).
FETCH = 500
#: A fetch waits this long for its first message.
FETCH_WAIT_S = 1.0


class JetStreamError(RuntimeError):
    """The stream cannot be used as configured (another partitioning, no cluster)."""


class JetStreamSource:
    def __init__(self, cfg: JetStreamSourceConfig, rules: RulesConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.template = TopicTemplate(cfg.topic)
        aliases = {**DEFAULT_ALIASES, **{k.lower(): v for k, v in cfg.aliases.items()}}
        self.limits = Limits(cfg.max_payload_bytes, rules.max_future_s, aliases)
        self.counts: Counter[str] = Counter()
        self._stopped = asyncio.Event()
        self._acks: asyncio.Queue[list[Any]] = asyncio.Queue()

    def stop(self) -> None:
        self._stopped.set()

    # ------------------------------------------------------------------ the stream

    def stream_config(self) -> Any:
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig, SubjectTransform

        src, dest = partition_transform(
            self.cfg.topic, self.cfg.subject_prefix, self.cfg.partitions
        )
        return StreamConfig(
            name=self.cfg.stream,
            subjects=[f"{self.cfg.subject_prefix}.in.>"],
            subject_transform=SubjectTransform(src=src, dest=dest),
            num_replicas=self.cfg.replicas,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=self.cfg.retention_s,
        )

    async def ensure_stream(self, js: Any) -> None:
        """Create the stream, or check the one there partitions as configured."""
        from nats.js.errors import NotFoundError

        want = self.stream_config()
        try:
            info = await js.stream_info(self.cfg.stream)
        except NotFoundError:
            await js.add_stream(want)
            log.info(
                "stream %s created: %d partitions, %d replicas",
                self.cfg.stream,
                self.cfg.partitions,
                self.cfg.replicas,
            )
            return
        have = info.config.subject_transform
        if have is None or (have.src, have.dest) != (
            want.subject_transform.src,
            want.subject_transform.dest,
        ):
            raise JetStreamError(
                f"stream {self.cfg.stream} partitions as {have}, not as configured "
                f"({want.subject_transform}): a change of topic or partitions needs a new "
                "stream (beds would move between partitions)"
            )

    # ------------------------------------------------------------------ running

    async def run(self, emit: Emit, reject: Reject) -> None:
        import nats

        nc = await nats.connect(
            self.cfg.servers,
            name=f"vitalmon:{self.cfg.stream}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        try:
            js = nc.jetstream()
            await self.ensure_stream(js)
            from monitor.sources.jetstream.capture import Capture

            capture = Capture(self.cfg, js)
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(capture.run(), name="vitalmon.capture")]
                tasks.append(tg.create_task(self._acker(), name="vitalmon.jetstream.acks"))
                readers = [
                    tg.create_task(self._read(js, n, emit, reject), name=f"vitalmon.p{n}")
                    for n in range(self.cfg.partitions)
                ]
                await self._stopped.wait()
                for t in readers:  # readers first: what they emitted is still acked
                    t.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
                for t in tasks:
                    t.cancel()
            self.counts.update(capture.counts)
        finally:
            with contextlib.suppress(Exception):
                await nc.drain()

    async def _acker(self) -> None:
        """Acknowledge committed messages (the journal's ``done`` queues them here)."""
        while True:
            msgs = await self._acks.get()
            for m in msgs:
                try:
                    await m.ack()
                except Exception:  # noqa: BLE001 - not acked: delivered again, absorbed
                    self.counts["ack_failed"] += 1

    async def _read(self, js: Any, n: int, emit: Emit, reject: Reject) -> None:
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        durable = f"{self.cfg.stream}-p{n}"
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=partition_filter(self.cfg.subject_prefix, n),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.cfg.ack_wait_s,
            max_ack_pending=self.cfg.max_ack_pending,
        )
        sub = await js.pull_subscribe(
            config.filter_subject, durable=durable, stream=self.cfg.stream, config=config
        )
        while True:
            try:
                msgs = await sub.fetch(FETCH, timeout=FETCH_WAIT_S)
            except NatsTimeout:
                continue
            except Exception as exc:  # noqa: BLE001 - a node gone, a leader moving: again
                self.counts["fetch_errors"] += 1
                log.debug("partition %d: fetch failed (%s); again", n, exc)
                await asyncio.sleep(0.5)
                continue
            batch = self._batch(msgs, reject)
            if batch is not None:
                await emit(batch)

    def _batch(self, msgs: list[Any], reject: Reject) -> Batch | None:
        """Decode ``msgs`` into one batch whose ``done`` acknowledges them all."""
        now = time.time()
        batch = Batch([], None, now)
        for m in msgs:
            self.counts["messages"] += 1
            try:
                _n, topic = stored_topic(self.cfg.subject_prefix, m.subject)
            except ValueError:
                topic = m.subject
            names = self.template.match(topic)
            if names is None:
                reject(Rejection("bad_topic", "topic does not fit " + self.cfg.topic, topic, b""))
                continue
            origin = Origin(
                topic,
                names.get("ward", self.cfg.ward),
                names["bed"],
                names.get("device", self.cfg.device),
            )
            stored = m.metadata.timestamp.timestamp() if m.metadata.timestamp else now
            decoded = decode(m.data, origin, stored, self.limits)
            for rej in decoded.rejections:
                reject(rej)
            batch.readings += decoded.readings
            batch.statuses += decoded.statuses
        acks = self._acks
        batch.done = lambda: acks.put_nowait(msgs)
        return batch


@register_source(JetStreamSourceConfig)
def _build(cfg: JetStreamSourceConfig, ctx: SourceContext) -> JetStreamSource:
    return JetStreamSource(cfg, ctx.rules)
