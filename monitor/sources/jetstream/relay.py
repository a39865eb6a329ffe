"""Alert events, de-duplicated: through the stream ``<stream>_ALERTS`` to MQTT.

In a cluster the alert publisher does not publish a bed's alert *events* on MQTT itself.
It hands each to :meth:`AlertRelay.publish`, which stores it in the stream
``<stream>_ALERTS`` (subject ``<prefix>.alerts.<n>``, ``n`` the bed's partition; replicas
as the readings' stream) with the message id ``<alert id>:<seq>:<k>`` (``k``: 0 for the
alert topic, 1 for the escalation topic). JetStream keeps one message per id within
``DUPLICATE_WINDOW_S``: an event published twice (a stale owner's late publication
after a pause, an alert the new owner announces that its last owner had published) is
stored once.

The owner of partition ``n`` relays it (:meth:`AlertRelay.relay`, a durable consumer
``<stream>-alerts-p<n>``): each stored event is published on its MQTT topic (QoS
``alerts.qos``) and acknowledged to JetStream after the broker's PUBACK. A new owner
relays what the last one had stored and not relayed. So an MQTT subscriber sees each
event once, in order per bed; only an owner that dies between a PUBACK and its
acknowledgement makes the next one send that event again (same ``id`` and ``seq``: a
consumer that must never act twice keys on them, or reads the stream itself).

The bed state and score topics (retained: the latest value wins) and the daemon's own
alarms (ward ``_system``, no partition) are published on MQTT directly, as without a
cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from monitor.tasks import raise_if_cancelled

log = logging.getLogger("vitalmon.source.jetstream.relay")

#: Within this window JetStream stores an event id once.
DUPLICATE_WINDOW_S = 300.0
#: Alert events are kept this long in the stream (an audit a consumer may read again).
ALERTS_MAX_AGE_S = 7 * 24 * 3600.0
TOPIC_HEADER = "Vitalmon-Topic"


class AlertRelay:
    def __init__(
        self,
        servers: list[str],
        stream: str,
        prefix: str,
        replicas: int,
        partition_of: Callable[[str, str], int],
        qos: int = 1,
    ) -> None:
        self.servers = servers
        self.stream = f"{stream}_ALERTS"
        self.durable = f"{stream}-alerts"
        self.prefix = prefix
        self.replicas = replicas
        self.partition_of = partition_of
        self.qos = qos
        self.js: Any = None  #: the storing side's connection (its own: it outlives the source)
        self._nc: Any = None
        self.client: Any = None  #: the MQTT client the events are relayed on
        #: Wards whose events are not taken (the daemon's own alarms: published directly)
        self.direct: frozenset[str] = frozenset()
        self.counts: Counter[str] = Counter()
        #: events to store, in order (one at a time: one bed's events stay in order)
        self._queue: asyncio.Queue[tuple[str, str, str, int, asyncio.Future[None]]] = (
            asyncio.Queue()
        )

    def stream_config(self) -> Any:
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig

        return StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.alerts.>"],
            num_replicas=self.replicas,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=ALERTS_MAX_AGE_S,
            duplicate_window=DUPLICATE_WINDOW_S,
        )

    async def open(self) -> None:
        """Connect the storing side (the alert publisher's ``open``: before the sources,
        and it stays until the publisher has drained) and make the stream if missing."""
        import nats

        self._nc = await nats.connect(
            self.servers,
            name=f"vitalmon:{self.stream}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        self.js = self._nc.jetstream()
        await self.ensure_stream(self.js)

    async def ensure_stream(self, js: Any) -> None:
        from nats.js.errors import BadRequestError, NotFoundError

        for attempt in range(1, 1_000_000):  # a cluster still electing: again
            try:
                await js.stream_info(self.stream)
            except NotFoundError:
                with contextlib.suppress(BadRequestError):  # (another instance made it)
                    await js.add_stream(self.stream_config())
            except Exception as exc:  # noqa: BLE001
                (log.warning if attempt % 10 == 1 else log.debug)(
                    "JetStream not ready for %s (%s); trying again", self.stream, exc
                )
                await asyncio.sleep(0.5)
                continue
            return

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()

    # ------------------------------------------------------------------ storing

    def publish(
        self, topic: str, payload: str, msg_id: str, ward: str, bed: str
    ) -> asyncio.Future[None] | None:
        """Store an alert event for its partition's owner to relay; the future completes
        once the stream has it (replicated). None: a ward of :attr:`direct`."""
        if ward in self.direct:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((topic, payload, msg_id, self.partition_of(ward, bed), fut))
        return fut

    async def store(self) -> None:
        """Store queued events in order, each until the stream has it (a cluster
        electing: again, never dropped)."""
        while True:
            raise_if_cancelled()
            topic, payload, msg_id, n, fut = await self._queue.get()
            delay = 0.1
            while True:
                try:
                    ack = await self.js.publish(
                        f"{self.prefix}.alerts.{n}",
                        payload.encode(),
                        timeout=5.0,
                        headers={"Nats-Msg-Id": msg_id, TOPIC_HEADER: topic},
                    )
                except Exception as exc:  # noqa: BLE001 - not stored yet: again
                    raise_if_cancelled()
                    self.counts["store_retries"] += 1
                    log.debug("alert event not stored (%s); again", exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                self.counts["duplicates" if ack.duplicate else "stored"] += 1
                if not fut.done():
                    fut.set_result(None)
                break

    # ------------------------------------------------------------------ relaying

    async def relay(self, js: Any, n: int, valid: Callable[[], bool]) -> None:
        """Relay partition ``n``'s stored events to MQTT while ``valid()`` (its lease),
        each acknowledged after the broker's PUBACK (``js``: the source's connection;
        the partition's reader runs this while it holds the partition)."""
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        subject = f"{self.prefix}.alerts.{n}"
        config = ConsumerConfig(
            durable_name=f"{self.durable}-p{n}",
            filter_subject=subject,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=30.0,
            max_ack_pending=1_000,
        )
        while True:  # (the stream's leader may be moving: again until it answers)
            try:
                sub = await js.pull_subscribe(
                    subject, durable=config.durable_name, stream=self.stream, config=config
                )
                break
            except Exception as exc:  # noqa: BLE001
                raise_if_cancelled()
                log.debug("partition %d: alert consumer not ready (%s); again", n, exc)
                await asyncio.sleep(0.5)
        try:
            while True:
                raise_if_cancelled()  # (a fetch, a NAK or an ack may have swallowed it)
                try:
                    msgs = await sub.fetch(100, timeout=1.0)
                except NatsTimeout:
                    continue
                except Exception as exc:  # noqa: BLE001 - a node gone, a leader moving
                    log.debug("partition %d: alert fetch failed (%s); again", n, exc)
                    await asyncio.sleep(0.5)
                    continue
                for m in msgs:
                    if not valid():  # not ours any more: its next owner relays it
                        with contextlib.suppress(Exception):
                            await m.nak()
                        continue
                    topic = (m.headers or {}).get(TOPIC_HEADER)
                    if topic:
                        try:
                            await self.client.publish(topic, m.data, qos=self.qos)
                        except Exception as exc:  # noqa: BLE001 - the broker away: later
                            self.counts["relay_failed"] += 1
                            log.debug("alert event not relayed (%s); again", exc)
                            with contextlib.suppress(Exception):
                                await m.nak(delay=1.0)
                            continue
                        self.counts["relayed"] += 1
                    with contextlib.suppress(Exception):
                        await m.ack()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
