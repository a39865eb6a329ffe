"""HL7 v2 over MLLP: a central station or an integration engine pushes ORU^R01 (and
IHE PCD-04 ORU^R40 alarms) here.

Contract (see :mod:`monitor.sources`): ``run(emit, reject)`` listens on ``listen``
(``asyncio.start_server``; ``port`` is the port actually bound, so ``...:0`` works where
the config allows it) and serves each connection with its own
:class:`~monitor.sources.devices.MllpFramer` and
:class:`~monitor.sources.devices.hl7.Hl7Parser` (``bind="pv1"``, the configured clock).
Every message is one :class:`~monitor.sources.Batch`, emitted in order with
back-pressure (while the engine is busy the connection is not read: TCP holds the
sender).

**ACK after commit.** A message with readings, device statuses or device alarm reports
(every valid ORU^R01 has one: the device's alarms and INOPs, possibly none) is
acknowledged ``AA`` only once its batch is committed to the journal: the journal calls
the batch's ``done`` (in the event loop today; ``done`` hops to the loop with
``call_soon_threadsafe`` all the same, so a journal committing in another thread would
be safe too). A message with nothing to store is acknowledged at once: ``AA`` when it
was a valid ORU^R01 (refused values go to the dead letters, the ACK text counts them),
``AE`` with the reason when it was not a usable ORU^R01 (another message type, not
HL7). ACKs leave a connection in the order its messages came, whatever the order of
commits. A message not committed
(the daemon dies, or is stopped past its budget) is never acknowledged: the sender
resends it, and the store absorbs what it already has.

**Bounded.** At most ``max_connections`` connections (one more is closed at once and
counted ``refused``); a frame over ``max_message_bytes`` is dropped (``too_long``, dead
letter ``too_large``; it gets no ACK); bytes outside frames are skipped (``garbage``); a
connection with no data for ``idle_timeout_s`` and no ACK outstanding is closed. A peer
that disconnects mid-message loses only that message (never ACKed, so resent); what it
sent before is emitted and committed as usual.

**Where a message without location goes.** ``beds`` (PV1-3 or MSH-4 -> ``ward/bed``),
else PV1-3; a message with neither goes to ward ``ward`` (config), bed = the sender's IP
address (stable per monitor, never a mix of monitors behind one name), and a warning is
logged once per connection.

**Unmapped observations.** OBX segments that map to no vital are counted by code
(:class:`~monitor.sources.unmapped.Unmapped`: ``unmapped.counts``, exported as
``vitalmon_hl7_unmapped_observations_total{code}``; a log line at most once a minute).

``stop()``: no new connection; each connection finishes the message it is emitting, then
waits for the ACKs of what it emitted (the engine and the journal are still running at
that point of the shutdown) and closes; ``run`` returns. Frames read but not yet taken
in are not acknowledged (resent). Logs carry peers, control ids and counts, never
patient identifiers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zoneinfo
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from monitor.config import Hl7MllpSourceConfig
from monitor.model import Rejection
from monitor.sources import Batch, Emit, Reject
from monitor.sources.devices import Clock, DeviceContext, MllpFramer, frame
from monitor.sources.devices.hl7 import Hl7Parser, ack
from monitor.sources.unmapped import Unmapped

log = logging.getLogger("vitalmon.source.hl7mllp")

#: ``topic`` of this source's dead letters.
TOPIC = "hl7-mllp"
#: Device name when a message names none (no OBX-18, no MSH-3).
DEFAULT_DEVICE = "hl7"
READ_CHUNK = 65536
LISTEN_RETRY_MIN_S = 1.0
LISTEN_RETRY_MAX_S = 30.0


class Hl7MllpSource:
    def __init__(self, cfg: Hl7MllpSourceConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name
        #: messages, acked_aa, acked_ae, ack_lost (peer gone before its ACK), connections,
        #: refused, idle_closed, bytes, garbage (bytes outside frames), too_long, readings,
        #: statuses, alarm_reports, rejected[<cause>], listen_failed
        self.counts: Counter[str] = Counter()
        #: OBX segments that map to no vital, by code (the metric; logged)
        self.unmapped = Unmapped(self.name, log)
        self.port: int | None = None  #: the port bound, once listening
        self.listening = asyncio.Event()  #: set while accepting connections
        host, _, port = cfg.listen.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._tz = zoneinfo.ZoneInfo(cfg.timezone) if cfg.timezone else None
        #: "device" lets the parser take the message's times (clock: message)
        self._clock: Clock = "device" if cfg.clock == "message" else "receive"
        self._stopping = asyncio.Event()
        self._conns: set[_Conn] = set()

    def stop(self) -> None:
        self._stopping.set()

    # --------------------------------------------------------------------- run

    async def run(self, emit: Emit, reject: Reject) -> None:
        server = await self._listen(emit, reject)
        if server is None:
            return
        try:
            await self._stopping.wait()
            server.close()  # no new connection; the open ones finish their ACKs
            self.listening.clear()
            tasks = [c.task for c in self._conns if c.task is not None]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self.unmapped.maybe_log(force=True)
            log.info("%s: stopped (%s)", self.name, _summary(self.counts))
        finally:
            server.close()
            self.listening.clear()
            for conn in list(self._conns):  # cancelled: do not outlive run()
                if conn.task is not None:
                    conn.task.cancel()

    async def _listen(self, emit: Emit, reject: Reject) -> asyncio.Server | None:
        delay = LISTEN_RETRY_MIN_S
        while not self._stopping.is_set():
            try:
                server = await asyncio.start_server(
                    partial(self._serve, emit, reject), self._host, self._port
                )
            except OSError as exc:
                self.counts["listen_failed"] += 1
                log.error("%s: cannot listen (%s); retrying in %.0f s", self.name, exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, LISTEN_RETRY_MAX_S)
                continue
            self.port = int(server.sockets[0].getsockname()[1])
            self.listening.set()
            log.info("%s: listening on %s:%d", self.name, self._host, self.port)
            return server
        return None

    # -------------------------------------------------------------- connection

    async def _serve(
        self,
        emit: Emit,
        reject: Reject,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        where = f"{host}:{peer[1]}" if isinstance(peer, tuple) and len(peer) > 1 else host
        if self._stopping.is_set() or len(self._conns) >= self.cfg.max_connections:
            self.counts["refused"] += 1
            refused = self.counts["refused"]
            log.log(
                logging.WARNING if refused == 1 or refused % 100 == 0 else logging.DEBUG,
                "%s: connection from %s refused (%d open, max_connections %d)",
                self.name,
                where,
                len(self._conns),
                self.cfg.max_connections,
            )
            await _close(writer)
            return
        conn = _Conn(writer, host, where, self.counts, asyncio.current_task())
        self._conns.add(conn)
        self.counts["connections"] += 1
        log.info("%s: connection from %s", self.name, where)
        try:
            healthy = await self._read(conn, reader, emit, reject)
            if healthy and conn.pending:
                await conn.flushed.wait()  # the ACKs of what was emitted, after their commit
        finally:
            conn.closed = True
            self._conns.discard(conn)
            await _close(writer)
            log.info("%s: %s closed (%d message(s))", self.name, where, conn.messages)

    async def _read(
        self, conn: _Conn, reader: asyncio.StreamReader, emit: Emit, reject: Reject
    ) -> bool:
        """Read and take in messages until EOF, idleness, stop() (-> True: the ACKs can
        still be written) or a broken connection (-> False)."""
        framer = MllpFramer(self.cfg.max_message_bytes)
        parser = Hl7Parser(self.cfg.beds, bind="pv1", clock=self.cfg.clock)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                read = asyncio.ensure_future(reader.read(READ_CHUNK))
                done, _ = await asyncio.wait(
                    {read, stopping},
                    timeout=self.cfg.idle_timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if read not in done:
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await read
                    if stopping in done:
                        return True
                    if conn.pending:
                        continue  # waiting for commits is not idleness
                    self.counts["idle_closed"] += 1
                    log.info(
                        "%s: %s idle for %g s; closing",
                        self.name,
                        conn.where,
                        self.cfg.idle_timeout_s,
                    )
                    return True
                try:
                    data = read.result()
                except (ConnectionError, OSError) as exc:
                    log.info("%s: %s lost (%s)", self.name, conn.where, exc)
                    return False
                if not data:
                    return True  # a message cut short was never ACKed: the sender resends it
                self.counts["bytes"] += len(data)
                frames = self._feed(framer, data, reject)
                for f in frames:
                    if self._stopping.is_set():
                        return True  # not taken in, not ACKed: the sender resends it
                    await self._message(conn, f, parser, emit, reject)
                if frames:
                    with contextlib.suppress(ConnectionError, OSError):
                        await conn.writer.drain()
        finally:
            stopping.cancel()

    def _feed(self, framer: MllpFramer, data: bytes, reject: Reject) -> list[bytes]:
        garbage, too_long = framer.garbage, framer.too_long
        frames = framer.feed(data)
        self.counts["garbage"] += framer.garbage - garbage
        # the framer drops what outgrows its buffer while waiting for the end; a long frame
        # that arrives whole in one read is dropped here
        kept = [f for f in frames if len(f) <= framer.max_bytes]
        n = framer.too_long - too_long + len(frames) - len(kept)
        self.counts["too_long"] += n
        for _ in range(n):
            reject(Rejection("too_large", f"MLLP frame over {framer.max_bytes} bytes", TOPIC))
        return kept

    async def _message(
        self, conn: _Conn, payload: bytes, parser: Hl7Parser, emit: Emit, reject: Reject
    ) -> None:
        now = time.time()
        self.counts["messages"] += 1
        conn.messages += 1
        ctx = DeviceContext(
            self.cfg.ward,
            conn.host,
            DEFAULT_DEVICE,
            now,
            self._clock,
            self._tz,
            self.cfg.max_skew_s,
        )
        parsed, answer = parser.parse_message(payload, ctx)
        self.unmapped.add(parsed.unmapped)
        for rej in parsed.rejections:
            self.counts[f"rejected[{rej.cause}]"] += 1
            reject(replace(rej, topic=TOPIC))
        if answer.code != "AA":
            level = logging.WARNING if not conn.warned_ae else logging.DEBUG
            conn.warned_ae = True
            log.log(
                level,
                "%s: %s message %s answered %s: %s",
                self.name,
                conn.where,
                answer.control_id or "-",
                answer.code,
                answer.text,
            )
        if not conn.warned_unbound and (
            any(r.bed == conn.host for r in parsed.readings)
            or any(r.bed == conn.host for r in parsed.device_alarms)
        ):
            conn.warned_unbound = True
            log.warning(
                "%s: %s sends messages without a bed (no PV1-3 bed, no beds entry for"
                " its PV1-3 or MSH-4): filed under bed %s",
                self.name,
                conn.where,
                conn.host,
            )
        entry = conn.add(frame(ack(answer)), answer.code)
        if parsed.readings or parsed.statuses or parsed.device_alarms:
            self.counts["readings"] += len(parsed.readings)
            self.counts["statuses"] += len(parsed.statuses)
            self.counts["alarm_reports"] += len(parsed.device_alarms)
            loop = asyncio.get_running_loop()
            batch = Batch(
                parsed.readings,
                _committed(loop, conn, entry),
                now,
                statuses=parsed.statuses,
                device_alarms=parsed.device_alarms,
                snapshot=True,
            )
            await emit(batch)
        else:
            conn.ready(entry)  # nothing to commit: ACK now (behind earlier ones)


@dataclass(slots=True)
class _Pending:
    data: bytes  #: the framed ACK
    code: str
    ready: bool = False


class _Conn:
    """One connection: its ACKs, released in arrival order as their batches commit."""

    def __init__(
        self,
        writer: asyncio.StreamWriter,
        host: str,
        where: str,
        counts: Counter[str],
        task: asyncio.Task[None] | None,
    ) -> None:
        self.writer = writer
        self.host = host
        self.where = where
        self.task = task
        self.messages = 0
        self.closed = False
        self.warned_ae = False
        self.warned_unbound = False
        self.pending: deque[_Pending] = deque()
        self.flushed = asyncio.Event()  #: set while no ACK is outstanding
        self.flushed.set()
        self._counts = counts

    def add(self, data: bytes, code: str) -> _Pending:
        entry = _Pending(data, code)
        self.pending.append(entry)
        self.flushed.clear()
        return entry

    def ready(self, entry: _Pending) -> None:
        """``entry`` may be acknowledged: write every ready ACK at the head, in order."""
        entry.ready = True
        while self.pending and self.pending[0].ready:
            head = self.pending.popleft()
            if self.closed or self.writer.is_closing():
                self._counts["ack_lost"] += 1  # the sender resends; the store absorbs it
                continue
            try:
                self.writer.write(head.data)
            except (ConnectionError, OSError, RuntimeError):
                self._counts["ack_lost"] += 1
                continue
            self._counts[f"acked_{head.code.lower()}"] += 1
        if not self.pending:
            self.flushed.set()


def _committed(loop: asyncio.AbstractEventLoop, conn: _Conn, entry: _Pending) -> Callable[[], None]:
    """The batch's ``done``: from any thread, releases its ACK in the event loop."""

    def done() -> None:
        with contextlib.suppress(RuntimeError):  # loop closed: never ACKed, so resent
            loop.call_soon_threadsafe(conn.ready, entry)

    return done


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def _summary(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"
