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
import itertools
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from monitor.config import DEFAULT_ALIASES, JetStreamSourceConfig, RulesConfig
from monitor.metrics import Sample, sample
from monitor.model import VITALS, Rejection
from monitor.pipeline import Ack, Carry
from monitor.sources import Batch, Emit, Reject, SourceContext, register_source
from monitor.sources.codecs import Limits, Origin, decode
from monitor.sources.jetstream.capture import Capture
from monitor.sources.jetstream.ownership import Ownership
from monitor.sources.jetstream.relay import AlertRelay
from monitor.sources.jetstream.state import ClusterState
from monitor.sources.jetstream.subjects import (
    bed_partition,
    partition_filter,
    partition_transform,
    stored_topic,
)
from monitor.sources.mqtt import TopicTemplate
from monitor.tasks import cancel_and_wait, raise_if_cancelled

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
        self.instance = (
            cfg.instance or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self.instance = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.instance)
        self._stopped = asyncio.Event()
        self._acks: asyncio.Queue[list[Any]] = asyncio.Queue()
        self._naks: asyncio.Queue[list[Any]] = asyncio.Queue()
        #: partition (capture: ``partitions``) -> its task, while owned
        self._tasks: dict[int, asyncio.Task[None]] = {}
        #: partition -> batches emitted and not yet committed
        self._in_flight: dict[int, int] = {}
        self._settled = asyncio.Event()
        self._js: Any = None
        self._emit: Emit | None = None
        self._reject: Reject | None = None
        self.ownership: Ownership | None = None
        self.capture: Capture | None = None
        #: partition -> when its lease was taken (until it is read live)
        self._taken_at: dict[int, float] = {}
        self.last_takeover_s = 0.0
        #: partition -> messages not yet delivered (the last fetch's num_pending)
        self._lag: dict[int, int] = {}
        #: partition -> the beds (ward, bed) read from it while owned
        self._beds: dict[int, set[tuple[str, str]]] = {}
        #: beds of partitions given up, until the engine has forgotten them
        self._leaving: set[tuple[str, str]] = set()
        #: Event time a new owner replays: what the rules read (the longest window,
        #: trend history, flapping window, NEWS2 freshness), within the stream's retention.
        needs = [rules.window_s, rules.flapping.window_s, rules.news2.freshness_s]
        needs += [rules.trends.needs_s(v) for v in VITALS]
        self.replay_s = min(max(needs), cfg.retention_s)
        #: The lifecycle and admissions of owned beds, kept in the cluster for the next
        #: owner (the daemon makes it the engine's keeper).
        self.state = ClusterState(self.partition_of, self._valid)
        #: Where pauses taken on from the last owner go (the daemon: the alert publisher).
        self.pauses: Any = None
        #: Alert events through the de-duplicating stream, relayed by partition owners
        #: (the daemon makes it the alert publisher's outbox).
        self.relay = AlertRelay(
            cfg.servers, cfg.stream, cfg.subject_prefix, cfg.replicas, self.partition_of
        )

    def partition_of(self, ward: str, bed: str) -> int:
        """The partition of a bed (the stream's transform, computed as the server does)."""
        return bed_partition(self.cfg.topic, ward, bed, self.cfg.partitions)

    def _valid(self, n: int) -> bool:
        return self.ownership is not None and self.ownership.valid(n)

    def stop(self) -> None:
        self._stopped.set()

    def owns(self, ward: str, bed: str) -> bool | None:
        """Whether the bed's partition is ours now (its lease valid by our clock; None
        before the leases are known). A bed being handed over is not ours from the
        moment its partition went until the engine has forgotten it."""
        if (ward, bed) in self._leaving:
            return False
        if self.ownership is None:
            return None
        return self.ownership.valid(self.partition_of(ward, bed))

    def samples(self) -> list[Sample]:
        """``/metrics``: owned partitions, their lag, takeovers and their duration."""
        stream = self.cfg.stream
        own = self.ownership
        owned = [n for n in own.owned() if n != self.capture_index] if own else []
        captured = self.counts["captured"] + (
            self.capture.counts["captured"] if self.capture else 0
        )
        out = [
            sample("vitalmon_jetstream_partitions_owned", len(owned), stream=stream),
            sample("vitalmon_jetstream_takeovers_total", self.counts["takeovers"], stream=stream),
            sample("vitalmon_jetstream_takeover_seconds", self.last_takeover_s, stream=stream),
            sample("vitalmon_jetstream_replayed_total", self.counts["replayed"], stream=stream),
            sample("vitalmon_jetstream_captured_total", captured, stream=stream),
            sample(
                "vitalmon_jetstream_state_write_failures_total",
                self.state.counts["write_failed"],
                stream=stream,
            ),
        ]
        relayed = self.relay.counts
        out += [
            sample(
                "vitalmon_jetstream_alert_events_total",
                relayed[key],
                stream=stream,
                outcome=outcome,
            )
            for outcome, key in (
                ("stored", "stored"),
                ("duplicate", "duplicates"),
                ("relayed", "relayed"),
            )
        ]
        out += [
            sample(
                "vitalmon_jetstream_partition_lag",
                self._lag.get(n, 0),
                stream=stream,
                partition=str(n),
            )
            for n in owned
        ]
        return out

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
        from nats.js.errors import BadRequestError, NotFoundError

        want = self.stream_config()
        try:
            info = await js.stream_info(self.cfg.stream)
        except NotFoundError:
            try:
                await js.add_stream(want)
            except BadRequestError:  # another instance created it meanwhile: check it
                info = await js.stream_info(self.cfg.stream)
            else:
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
        from nats.js.api import KeyValueConfig, StorageType

        nc = await nats.connect(
            self.cfg.servers,
            name=f"vitalmon:{self.cfg.stream}:{self.instance}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        try:
            js = nc.jetstream()
            owners = KeyValueConfig(
                bucket=f"{self.cfg.stream}_OWNERS",
                history=1,
                ttl=self.cfg.lease_s,
                replicas=self.cfg.replicas,
                storage=StorageType.FILE,
            )
            state = KeyValueConfig(
                bucket=f"{self.cfg.stream}_STATE",
                history=1,
                replicas=self.cfg.replicas,
                storage=StorageType.FILE,
            )
            for attempt in itertools.count(1):  # a cluster still electing: again
                try:
                    await self.ensure_stream(js)
                    kv = await js.create_key_value(owners)
                    self.state.attach(js, await js.create_key_value(state), state.bucket)
                    break
                except JetStreamError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise_if_cancelled()
                    if self._stopped.is_set():
                        return
                    (log.warning if attempt % 10 == 1 else log.debug)(
                        "JetStream not ready (%s); trying again", exc
                    )
                    await asyncio.sleep(0.5)
            self._js, self._emit, self._reject = js, emit, reject
            # partitions 0..P-1, and P: the capture session (one for the cluster)
            own = Ownership(
                kv,
                self.instance,
                self.cfg.partitions + 1,
                self.cfg.lease_s,
                self._acquired,
                self._releasing,
                self._lost,
                sticky=frozenset({self.cfg.partitions}),  # (the capture session)
            )
            self.ownership = own
            acker = asyncio.create_task(self._acker(), name="vitalmon.jetstream.acks")
            leases = asyncio.create_task(own.run(), name="vitalmon.jetstream.leases")
            keeper = asyncio.create_task(
                self.state.run(partial(own.valid, self.capture_index)),
                name="vitalmon.jetstream.state",
            )
            try:
                await self._stopped.wait()
            finally:
                # (cancelled until they end: nats-py swallows some cancellations, and
                # a lease loop still running would take back what release_all frees)
                with contextlib.suppress(asyncio.CancelledError):
                    await cancel_and_wait(keeper, leases)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(own.release_all(), self.cfg.lease_s)
                await cancel_and_wait(*self._tasks.values())
                await self._drain_acks()
                await cancel_and_wait(acker)
        finally:
            with contextlib.suppress(Exception):
                await nc.drain()

    @property
    def capture_index(self) -> int:
        return self.cfg.partitions

    async def _acquired(self, n: int) -> None:
        self._taken_at[n] = time.monotonic()
        if n == self.capture_index:
            if self.capture is not None:  # (held before: keep its count)
                self.counts["captured"] += self.capture.counts["captured"]
            assert self.ownership is not None
            capture = Capture(self.cfg, self._js, partial(self.ownership.valid, n))
            self.capture = capture
            self._tasks[n] = asyncio.create_task(
                self._kept(n, capture.run), name="vitalmon.capture"
            )
        else:
            self._tasks[n] = asyncio.create_task(
                self._kept(n, partial(self._read, n)), name=f"vitalmon.p{n}"
            )

    async def _kept(self, n: int, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` for partition ``n`` (or the capture) until the ownership cancels
        it (lost or released). If it fails (a NATS request timing out while a leader is
        elected) or returns (a capture whose lease looked lapsed while a renewal was
        slow), it runs again after a pause: a held partition is never left unread."""
        while True:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged; the lease is ours: again
                raise_if_cancelled()  # (a cancellation nats-py turned into an error)
                self.counts["task_restarts"] += 1
                log.warning("partition %d: reading failed (%s); starting again", n, exc)
            raise_if_cancelled()
            await asyncio.sleep(1.0)

    async def _lost(self, n: int) -> None:
        await self._stop_task(n)
        await self._hand_over(n, wait=False)

    async def _stop_task(self, n: int) -> None:
        task = self._tasks.pop(n, None)
        if task is not None:
            await cancel_and_wait(task)

    async def _hand_over(self, n: int, wait: bool) -> None:
        """Tell the engine to forget the beds of partition ``n`` (``wait``: until it has)."""
        beds = self._beds.pop(n, set())
        if not beds or self._emit is None:
            return
        self._leaving |= beds  # (not ours from now: owns() says so until forgotten)
        forgotten = asyncio.Event()

        def done() -> None:
            self._leaving -= beds
            forgotten.set()

        await self._emit(Batch([], done, time.time(), handed_over=sorted(beds)))
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(forgotten.wait(), self.cfg.ack_wait_s)

    async def _releasing(self, n: int) -> None:
        """Stop reading ``n`` and wait (at most ``ack_wait_s``) until what was read of it
        is committed and acknowledged: the next owner starts where this one ended."""
        await self._stop_task(n)
        deadline = time.monotonic() + self.cfg.ack_wait_s
        while self._in_flight.get(n, 0) > 0 and time.monotonic() < deadline:
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), deadline - time.monotonic())
        await self._hand_over(n, wait=True)

    def _dropped(self, n: int, msgs: list[Any]) -> None:
        """The engine dropped a fenced batch of ``n``: no longer in flight; its messages
        are NAKed, so that their next owner gets them now, not after ``ack_wait_s``."""
        self._in_flight[n] = self._in_flight.get(n, 0) - 1
        self._settled.set()
        self._naks.put_nowait(msgs)
        self._acks.put_nowait([])  # (wakes the acker)

    async def _drain_acks(self) -> None:
        while not self._acks.empty():
            msgs = self._acks.get_nowait()
            for m in msgs:
                with contextlib.suppress(Exception):
                    await m.ack()

    async def _acker(self) -> None:
        """Acknowledge committed messages (the journal's ``done`` queues them here), and
        NAK those of fenced batches the engine dropped."""
        while True:
            raise_if_cancelled()  # (an ack's publish may have swallowed it)
            naks = self._naks
            while not naks.empty():
                for m in naks.get_nowait():
                    with contextlib.suppress(Exception):
                        await m.nak()
            msgs = await self._acks.get()
            for m in msgs:
                try:
                    await m.ack()
                except Exception:  # noqa: BLE001 - not acked: delivered again, absorbed
                    self.counts["ack_failed"] += 1

    async def _read(self, n: int) -> None:
        """Partition ``n`` while it is ours: its alert events relayed, its state taken on,
        its readings replayed, then read live."""
        assert self.ownership is not None
        carried = asyncio.Event()
        helpers = [
            asyncio.create_task(
                self.relay.relay(self._js, n, partial(self.ownership.valid, n)),
                name=f"vitalmon.p{n}.relay",
            ),
            asyncio.create_task(self._forwarded_acks(n, carried), name=f"vitalmon.p{n}.acks"),
        ]
        try:
            await self._read_partition(n, carried)
        finally:
            await cancel_and_wait(*helpers)

    async def _forwarded_acks(self, n: int, carried: asyncio.Event) -> None:
        """Acknowledgements other instances left in the cluster's state for partition
        ``n`` (``ack.<n>.<id>``: sent while the partition had no owner, or while this one
        was taking it on), applied once its alerts are carried on, then deleted. One
        this instance applied itself already is "already acknowledged": nothing more."""
        await carried.wait()
        assert self._emit is not None
        assert self.ownership is not None
        fence = partial(self.ownership.valid, n)
        async for ident, by, identity, key in self.state.forwarded_acks(n):
            outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            await self._emit(Batch([], acks=[Ack(ident, by, identity, outcome)], fence=fence))
            with contextlib.suppress(Exception):  # (unknown, already acknowledged: done)
                await asyncio.wait_for(outcome, self.cfg.ack_wait_s)
            if fence():  # (applied here; else left for the partition's next owner)
                self.counts["acks_forwarded"] += 1
                await self.state.drop(key)

    async def _read_partition(self, n: int, carried: asyncio.Event) -> None:
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
        carry = await self._take_on(n)
        await self._replay(n, durable)
        # (after the replay, in queue order: the last owner's open alerts are the truth)
        assert self._emit is not None
        await self._emit(Batch([], carry=carry))
        carried.set()
        if n in self._taken_at:  # (live from here: the takeover is over)
            self.counts["takeovers"] += 1
            self.last_takeover_s = time.monotonic() - self._taken_at.pop(n)
        while True:  # (the consumer's stream leader may be moving: again until it answers)
            try:
                sub = await self._js.pull_subscribe(
                    config.filter_subject, durable=durable, stream=self.cfg.stream, config=config
                )
                break
            except Exception as exc:  # noqa: BLE001
                raise_if_cancelled()
                log.debug("partition %d: consumer not ready (%s); again", n, exc)
                await asyncio.sleep(0.5)
        assert self.ownership is not None
        assert self._emit is not None
        assert self._reject is not None
        emit, reject = self._emit, self._reject
        fence = partial(self.ownership.valid, n)
        try:
            while True:
                raise_if_cancelled()  # (a fetch or a NAK may have swallowed it)
                try:
                    msgs = await sub.fetch(FETCH, timeout=FETCH_WAIT_S)
                except NatsTimeout:
                    continue
                except Exception as exc:  # noqa: BLE001 - a node gone, a leader moving
                    self.counts["fetch_errors"] += 1
                    log.debug("partition %d: fetch failed (%s); again", n, exc)
                    await asyncio.sleep(0.5)
                    continue
                if not fence():  # the lease looks lapsed: the next owner's, if lost
                    self.counts["fenced"] += len(msgs)  # (then this task is cancelled);
                    for m in msgs:  # nothing fetched until a renewal says otherwise
                        with contextlib.suppress(Exception):
                            await m.nak()
                    await asyncio.sleep(self.cfg.lease_s / 4)
                    continue
                self._lag[n] = msgs[-1].metadata.num_pending if msgs else 0
                batch = self._batch(msgs, reject, n)
                batch.fence = fence
                batch.dropped = partial(self._dropped, n, msgs)
                await emit(batch)
                # (counted once queued: a reader cancelled while it waited counts nothing,
                # and nothing can be committed before this line)
                self._in_flight[n] = self._in_flight.get(n, 0) + 1
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _take_on(self, n: int) -> Carry:
        """Partition ``n``'s state as its last owner kept it: its admissions go to the
        engine now (before the replay: the rules use their profiles), its pauses to the
        alert publisher; -> the carry whose open alerts go after the replay. Raises if
        the state cannot be read (the reader starts again: never a partition without
        its acknowledgements)."""
        assert self._emit is not None
        found = await self.state.load(n)

        def ours(ward: str, bed: str) -> bool:
            return self.partition_of(ward, bed) == n

        beds = self._beds.setdefault(n, set())
        beds |= {(a.ward, a.bed) for a in found.admissions}
        beds |= {(c.event.ward, c.event.bed) for c in found.alerts}
        self._leaving -= beds
        if found.admissions:
            await self._emit(Batch([], carry=Carry(n, ours, admissions=found.admissions)))
        now = time.time()
        if self.pauses is not None:
            for (ward, bed), until in found.pauses.items():
                self.pauses.pause(ward, bed, until - now, now)
        if found.alerts or found.admissions or found.pauses:
            log.info(
                "partition %d: %d open alert(s), %d admission(s), %d pause(s) taken on",
                n,
                len(found.alerts),
                len(found.admissions),
                len(found.pauses),
            )
        return Carry(n, ours, alerts=found.alerts)

    async def _replay(self, n: int, durable: str) -> None:
        """A new owner's windows and alert state: the partition's readings of the last
        :attr:`replay_s`, up to the newest the stream holds now, evaluated again as
        ``replay`` batches (the rules run on event time: the same readings give the same
        windows, delays and open alerts). The readings its last owner had not committed
        come again from the consumer after the replay, to be stored: the engine knows
        them (``repeated``), so the windows were rebuilt in event order, not with the
        last seconds before a failover arriving after the first ones after it."""
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        assert self._emit is not None
        try:
            await self._js.consumer_info(self.cfg.stream, durable)
        except NotFoundError:
            return  # the partition's first owner: nothing read before
        try:
            newest = await self._js.get_last_msg(
                self.cfg.stream, partition_filter(self.cfg.subject_prefix, n)
            )
        except NotFoundError:
            return  # nothing in the partition
        upto = newest.seq
        since = datetime.fromtimestamp(time.time() - self.replay_s, UTC)
        config = ConsumerConfig(
            filter_subject=partition_filter(self.cfg.subject_prefix, n),
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=since,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
        )
        sub = await self._js.pull_subscribe(
            config.filter_subject, durable=None, stream=self.cfg.stream, config=config
        )
        started, count = time.monotonic(), 0
        reject = self._reject or (lambda _r: None)
        try:
            done = False
            while not done:
                try:
                    msgs = await sub.fetch(FETCH, timeout=2.0)
                except NatsTimeout:
                    break  # nothing more since `since`
                keep = [m for m in msgs if m.metadata.sequence.stream <= upto]
                done = len(keep) < len(msgs) or (
                    bool(msgs) and msgs[-1].metadata.sequence.stream >= upto
                )
                if keep:
                    batch = self._batch(keep, reject, n, ack=False)
                    batch.replay = True
                    count += len(keep)
                    await self._emit(batch)
        except Exception as exc:  # noqa: BLE001 - replay what could be; go on live
            raise_if_cancelled()
            log.warning("partition %d: replay stopped early (%s)", n, exc)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self.counts["replayed"] += count
        log.info(
            "partition %d: %d message(s) of the last %.0f s replayed in %.2f s",
            n,
            count,
            self.replay_s,
            time.monotonic() - started,
        )

    def _batch(self, msgs: list[Any], reject: Reject, n: int, ack: bool = True) -> Batch:
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
            where = (origin.ward, origin.bed)
            self._beds.setdefault(n, set()).add(where)
            self._leaving.discard(where)  # (ours again)
            stored = m.metadata.timestamp.timestamp() if m.metadata.timestamp else now
            decoded = decode(m.data, origin, stored, self.limits)
            for rej in decoded.rejections:
                reject(rej)
            batch.readings += decoded.readings
            batch.statuses += decoded.statuses

        def done() -> None:  # (committed: acknowledged, and no longer in flight)
            self._acks.put_nowait(msgs)
            self._in_flight[n] -= 1
            self._settled.set()

        if ack:
            batch.done = done
        return batch


@register_source(JetStreamSourceConfig)
def _build(cfg: JetStreamSourceConfig, ctx: SourceContext) -> JetStreamSource:
    source = JetStreamSource(cfg, ctx.rules)
    source.relay.client = ctx.client  # (alert events relayed on the daemon's connection)
    return source
