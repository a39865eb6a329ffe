"""The listener (:class:`Hl7MllpSource`): connections accepted within their bounds, read
and framed, every message parsed and emitted, its ACK queued behind its commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zoneinfo
from collections import Counter
from dataclasses import replace
from functools import partial

from monitor.config import Hl7MllpSourceConfig
from monitor.model import Rejection
from monitor.sources import Batch, Emit, Reject, SourceContext, register_source
from monitor.sources.devices import (
    Clock,
    DeviceContext,
    RestartingMllpFramer,
    frame,
    truncated_frame,
)
from monitor.sources.devices.hl7 import Hl7Parser, ack
from monitor.sources.hl7mllp.connection import (
    PEER_LOG_EVERY_S,
    _close,
    _committed,
    _Conn,
    _PeerLog,
)
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
        #: refused (refused_peer: by max_connections_per_peer), idle_closed,
        #: no_message_closed, bytes, garbage (bytes outside frames), too_long, truncated,
        #: readings, statuses, alarm_reports, rejected[<cause>], listen_failed
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
        self._per_peer: Counter[str] = Counter()  #: open connections by peer address
        self._peer_log = _PeerLog()

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
        refusal = self._refusal(host)
        if refusal is not None:
            await self._refuse(writer, host, *refusal)
            return
        conn = _Conn(writer, host, where, self.counts, asyncio.current_task())
        self._conns.add(conn)
        self._per_peer[host] += 1
        self.counts["connections"] += 1
        log.info("%s: connection from %s", self.name, where)
        try:
            healthy = await self._read(conn, reader, emit, reject)
            if healthy and conn.pending:
                await conn.flushed.wait()  # the ACKs of what was emitted, after their commit
        finally:
            conn.closed = True
            self._conns.discard(conn)
            self._per_peer[host] -= 1
            if self._per_peer[host] <= 0:
                del self._per_peer[host]
            await _close(writer)
            log.info("%s: %s closed (%d message(s))", self.name, where, conn.messages)

    def _refusal(self, host: str) -> tuple[bool, str] | None:
        """Whether a new connection from ``host`` is refused: (by the peer's own bound,
        why); None: it is served."""
        if self._stopping.is_set():
            return False, "stopping"
        if len(self._conns) >= self.cfg.max_connections:
            return False, f"{len(self._conns)} open, max_connections {self.cfg.max_connections}"
        if self._per_peer[host] >= self.cfg.max_connections_per_peer:
            return True, (
                f"{self._per_peer[host]} open from it,"
                f" max_connections_per_peer {self.cfg.max_connections_per_peer}"
            )
        return None

    async def _refuse(
        self, writer: asyncio.StreamWriter, host: str, by_peer: bool, why: str
    ) -> None:
        """Close at once; counted every time, logged once a minute per peer."""
        self.counts["refused"] += 1
        if by_peer:
            self.counts["refused_peer"] += 1
        more = self._peer_log.due(("refused", host))
        if more is not None:
            log.warning(
                "%s: connection from %s refused (%s)%s",
                self.name,
                host,
                why,
                f"; {more} more from it refused in the last {PEER_LOG_EVERY_S:g} s" if more else "",
            )
        await _close(writer)

    async def _read(
        self, conn: _Conn, reader: asyncio.StreamReader, emit: Emit, reject: Reject
    ) -> bool:
        """Read and take in messages until EOF, idleness, stop() (-> True: the ACKs can
        still be written) or a broken connection (-> False)."""
        framer = RestartingMllpFramer(self.cfg.max_message_bytes)
        parser = Hl7Parser(self.cfg.beds, bind="pv1", clock=self.cfg.clock)
        stopping = asyncio.ensure_future(self._stopping.wait())
        loop = asyncio.get_running_loop()
        #: until its first complete message, a connection is on this deadline
        first_by = loop.time() + self.cfg.first_message_timeout_s
        try:
            while True:
                read = asyncio.ensure_future(reader.read(READ_CHUNK))
                timeout = (
                    self.cfg.idle_timeout_s if conn.messages else max(0.0, first_by - loop.time())
                )
                done, _ = await asyncio.wait(
                    {read, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if read not in done:
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await read
                    if stopping in done:
                        return True
                    if conn.pending:
                        continue  # waiting for commits is not idleness
                    if not conn.messages:
                        self.counts["no_message_closed"] += 1
                        more = self._peer_log.due(("no_message", conn.host))
                        log.log(
                            logging.INFO if more is not None else logging.DEBUG,
                            "%s: %s sent no complete message in %g s; closing%s",
                            self.name,
                            conn.where,
                            self.cfg.first_message_timeout_s,
                            f" ({more} more from {conn.host} in the last {PEER_LOG_EVERY_S:g} s)"
                            if more
                            else "",
                        )
                        return True
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
                frames = self._feed(conn, framer, data, reject)
                for f in frames:
                    if self._stopping.is_set():
                        return True  # not taken in, not ACKed: the sender resends it
                    await self._message(conn, f, parser, emit, reject)
                if frames:
                    with contextlib.suppress(ConnectionError, OSError):
                        await conn.writer.drain()
        finally:
            stopping.cancel()

    def _feed(
        self, conn: _Conn, framer: RestartingMllpFramer, data: bytes, reject: Reject
    ) -> list[bytes]:
        garbage, too_long = framer.garbage, framer.too_long
        frames = framer.feed(data)
        self.counts["garbage"] += framer.garbage - garbage
        for cut in framer.take_truncated():
            self._truncated(conn, cut, reject)
        # the framer drops what outgrows its buffer while waiting for the end; a long frame
        # that arrives whole in one read is dropped here
        kept = [f for f in frames if len(f) <= framer.max_bytes]
        n = framer.too_long - too_long + len(frames) - len(kept)
        self.counts["too_long"] += n
        for _ in range(n):
            reject(Rejection("too_large", f"MLLP frame over {framer.max_bytes} bytes", TOPIC))
        return kept

    def _truncated(self, conn: _Conn, cut: bytes, reject: Reject) -> None:
        """A frame cut short by the next start byte: discarded, never ACKed (resent)."""
        self.counts["truncated"] += 1
        rejection = truncated_frame(cut, TOPIC, ", not acknowledged")
        reject(rejection)
        level = logging.WARNING if not conn.warned_truncated else logging.DEBUG
        conn.warned_truncated = True
        log.log(level, "%s: %s sent an %s", self.name, conn.where, rejection.detail)

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


@register_source(Hl7MllpSourceConfig)
def _build(cfg: Hl7MllpSourceConfig, ctx: SourceContext) -> Hl7MllpSource:
    return Hl7MllpSource(cfg)


def _summary(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"
