"""MQTT source: ``vitals/{ward}/{bed}/{device}`` messages -> readings.

Each message is decoded (:mod:`monitor.sources.codecs`) and its readings and device
statuses emitted as one batch (waiting while the engine is busy). It is acknowledged to
the broker only once that batch is committed to the journal, in arrival order: a
message carrying only a status too, since the technical alarms it raises or resolves go
into the same commit (the journal calls ``done`` for every batch that has one, with or
without readings). A message not committed when the daemon stops or dies stays
unacknowledged: the persistent session redelivers it to the next run, and the store
absorbs what was already committed. A message with nothing to commit (refused
entirely) is released at once, still acknowledged in arrival order behind the ones
before it.

While the store refuses commits (a full disk) nothing is acknowledged, so the broker
stops sending once its window of unacknowledged messages is full, and the ward's alarms
would stop with it. The daemon then opens a second, clean-session connection
(:meth:`MqttSource.shadow`) subscribed at QoS 0: its copies are evaluated for alerts and
never stored (``Batch.transient``), while the durable copies wait at the broker for the
persistent session and are stored once the store is back (the engine knows them as
repeats and does not evaluate them twice).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from functools import partial

from monitor.config import DEFAULT_ALIASES, MqttSourceConfig, RulesConfig, parse_topic_template
from monitor.model import DeviceStatus, Reading, Rejection
from monitor.mqtt import Client, Message
from monitor.sources import Batch, Emit, Reject, SourceContext, register_source
from monitor.sources.codecs import Limits, Origin, decode

log = logging.getLogger("vitalmon.source.mqtt")

INBOX_QOS0_LIMIT = 10_000
#: At most this many messages, or (once past) readings, per batch handed to the engine.
BATCH_MESSAGES = 500
BATCH_READINGS = 5_000


class TopicTemplate:
    """``vitals/{ward}/{bed}/{device}`` <-> subscription filter and topic matching."""

    def __init__(self, template: str, required: tuple[str, ...] = ("bed",)) -> None:
        self.template = template
        self.levels = parse_topic_template(template, required)
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
        self._unacked: deque[_Unacked] = deque()
        self._stopped = False
        client.subscribe(self.template.filter, cfg.qos, self._deliver)
        #: the degraded-mode copies (QoS 0, clean session); None: not degraded
        self._shadow_inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._shadowing = False
        self.shadow_dropped = 0

    def shadow(self, client: Client | None) -> None:
        """Evaluate (never store) what ``client``, a clean-session connection not yet
        started, receives at QoS 0 on this source's topics; None ends it."""
        if client is not None:
            client.subscribe(self.template.filter, 0, self._deliver_shadow)
        self._shadowing = client is not None
        if client is None:
            while not self._shadow_inbox.empty():
                self._shadow_inbox.get_nowait()

    def _deliver_shadow(self, msg: Message) -> None:
        if not self._shadowing or self._shadow_inbox.qsize() >= INBOX_QOS0_LIMIT:
            self.shadow_dropped += 1  # (a copy: the durable one waits at the broker)
            return
        self._shadow_inbox.put_nowait(msg)

    async def _run_shadow(self, emit: Emit) -> None:
        inbox = self._shadow_inbox
        while True:
            msg: Message | None = await inbox.get()
            batch = Batch([], None, time.time(), transient=True)
            while msg is not None:
                origin = self.origin(msg.topic)
                if origin is not None and msg.payload:
                    decoded = decode(msg.payload, origin, batch.received_at, self.limits)
                    batch.readings += decoded.readings
                    batch.statuses += decoded.statuses
                if len(batch.readings) >= BATCH_READINGS or inbox.empty():
                    break
                msg = inbox.get_nowait()
            if (batch.readings or batch.statuses) and self._shadowing:
                await emit(batch)

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
        async with asyncio.TaskGroup() as tg:
            shadow = tg.create_task(
                self._run_shadow(emit), name=f"vitalmon.source[{self.name}].degraded"
            )
            try:
                await self._run(emit, reject)
            finally:
                shadow.cancel()

    async def _run(self, emit: Emit, reject: Reject) -> None:
        """Messages -> batches. A batch is every message already waiting (up to
        ``BATCH_MESSAGES`` / ``BATCH_READINGS``), taken without waiting for more: under
        load the engine, the journal and the PUBACKs work per batch, not per message, and
        a lone message still goes on at once."""
        self._reject = reject
        inbox = self._inbox
        while True:
            msg = await inbox.get()
            batch: Batch | None = None
            entries: list[_Unacked] = []
            while msg is not None and not self._stopped:
                entry = _Unacked(msg)
                self._unacked.append(entry)
                decoded = self._decode(msg, entry, reject)
                if decoded is not None:
                    readings, statuses, now = decoded
                    if batch is not None and statuses:
                        # a batch's statuses go before all its readings: this message's
                        # must not overtake the readings of the messages before it
                        await emit(self._closed(batch, entries))
                        batch, entries = None, []
                    if batch is None:
                        batch = Batch(readings, None, now, statuses=statuses)
                    else:
                        batch.readings += readings
                    entries.append(entry)
                if (
                    len(entries) >= BATCH_MESSAGES
                    or (batch is not None and len(batch.readings) >= BATCH_READINGS)
                    or inbox.empty()
                ):
                    break
                msg = inbox.get_nowait()
            if batch is not None:
                await emit(self._closed(batch, entries))
            if msg is None or self._stopped:
                return  # what is still in the inbox was never acked: the broker keeps it
            # A queue that is never empty or full never suspends: give the other tasks
            # (engine, sinks, metrics, the watchdog) their turn after each batch.
            await asyncio.sleep(0)

    def _closed(self, batch: Batch, entries: list[_Unacked]) -> Batch:
        # acknowledged by the journal once committed (at-least-once end to end), a
        # status-only message too: its alarm events are in that commit
        if len(entries) == 1:
            batch.done = partial(self._release, entries[0])
        else:
            batch.done = partial(self._release_all, entries)
        return batch

    def _decode(
        self, msg: Message, entry: _Unacked, reject: Reject
    ) -> tuple[list[Reading], list[DeviceStatus], float] | None:
        """A message's readings and statuses; None (and released) when it has none."""
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
            self._release(entry)
            return None
        if msg.retain and not msg.payload:
            self._release(entry)  # clearing a retained message is not a reading
            return None
        decoded = decode(msg.payload, origin, now, self.limits)
        for rej in decoded.rejections:
            reject(rej)
        if decoded.readings or decoded.statuses:
            return decoded.readings, decoded.statuses, now
        self._release(entry)
        return None

    def _release_all(self, entries: list[_Unacked]) -> None:
        for entry in entries:
            entry.done = True
        self._release(entries[-1])

    def _release(self, entry: _Unacked) -> None:
        """Mark a message as done; acknowledge every done message at the head, in order
        (MQTT wants PUBACKs in the order the PUBLISHes came)."""
        entry.done = True
        unacked = self._unacked
        if not unacked or not unacked[0].done:
            return
        ready = []
        while unacked and unacked[0].done:
            ready.append(unacked.popleft().msg)
        self._client.ack_many(ready)


@register_source(MqttSourceConfig)
def _build(cfg: MqttSourceConfig, ctx: SourceContext) -> MqttSource:
    return MqttSource(cfg, ctx.rules, ctx.client)


@dataclass(slots=True)
class _Unacked:
    msg: Message
    done: bool = False
