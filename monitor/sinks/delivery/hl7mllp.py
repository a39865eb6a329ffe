"""Receiver ``hl7-mllp``: IHE PCD-04 Report Alert (ORU^R40, :mod:`.pcd04`) over MLLP to an
alarm manager, one message at a time on one kept connection.

``send`` (re)connects if needed, writes the framed message and waits for the ACK whose
MSA-2 is the message's control id (an ACK of another id, left from an attempt that
timed out, is skipped): ``AA`` or ``CA`` is accepted. ``AR`` or ``CR`` (the alarm
manager rejects this message) raise :class:`~monitor.sinks.delivery.Rejected`: the
deliverer gives the event up after ``reject_after`` attempts. ``AE`` or ``CE`` (an
error on its side), an answer that is no ACK, a closed connection or no answer within
``timeout_s`` raise :class:`Refused` (the deliverer retries).

``timeout_s`` bounds the whole exchange (the connection, the message and its ACK). The
host name is resolved in a daemon thread of its own (:mod:`.attempt`), not in the event
loop's executor: a resolution that hangs is given up at the deadline and holds up no
stop (the loop's executor is joined when the daemon ends). A connection that failed is closed and
opened afresh for the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from monitor.config import Hl7MllpReceiverConfig
from monitor.hl7v2 import MLLP_END, MLLP_START, frame
from monitor.model import AlertEvent
from monitor.sinks.delivery import ReceiverContext, Rejected, register_receiver
from monitor.sinks.delivery.attempt import Attempt, run_attempt
from monitor.sinks.delivery.pcd04 import Header, control_id, encode, read_ack

log = logging.getLogger("vitalmon.sink.delivery")

#: ACK codes that mean the alarm manager has the message.
ACCEPTED = frozenset({"AA", "CA"})
#: Answers skipped while waiting for ours, at most.
MAX_OTHER_ACKS = 16


#: ACK codes that reject the message for good.
REJECTED = frozenset({"AR", "CR"})


class Refused(Exception):
    """The alarm manager answered with another code than AA or CA (retried)."""


class RejectedAck(Refused, Rejected):
    """The alarm manager answered AR or CR: it will not take this message."""


class Hl7MllpReceiver:
    def __init__(self, cfg: Hl7MllpReceiverConfig, route: str) -> None:
        self.cfg = cfg
        self.route = route
        self.timeout_s = cfg.timeout_s
        self.header = Header(
            cfg.sending_application,
            cfg.sending_facility,
            cfg.receiving_application,
            cfg.receiving_facility,
            cfg.processing_id,
        )
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._thread = f"vitalmon-route-{route}"

    async def send(self, event: AlertEvent, key: str) -> None:
        control = control_id(key)
        message = frame(encode(event, key, self.header))
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                code, text = await self._exchange(message, control)
        except BaseException:
            await self._drop()
            raise
        if code not in ACCEPTED:
            error = RejectedAck if code in REJECTED else Refused
            raise error(f"ACK {code or '(none)'} for {control}: {text or 'no reason given'}")

    async def _exchange(self, message: bytes, control: str) -> tuple[str, str]:
        if self._conn is not None and self._conn[0].at_eof():
            await self._drop()  # the peer closed it since (one connection per message)
        if self._conn is None:
            host, port = await run_attempt(self._resolve, self.cfg.timeout_s, self._thread)
            self._conn = await asyncio.open_connection(host, port)
            log.info("route %s: connected to %s:%d", self.route, self.cfg.host, self.cfg.port)
        reader, writer = self._conn
        writer.write(message)
        await writer.drain()
        for _ in range(MAX_OTHER_ACKS):
            data = await reader.readuntil(MLLP_END)
            start = data.rfind(MLLP_START)
            code, acked, text = read_ack(data[start + 1 : -len(MLLP_END)])
            if acked == control:
                return code, text
            log.debug("route %s: skipped an ACK for %r waiting for %s", self.route, acked, control)
        raise Refused(f"no ACK for {control} among {MAX_OTHER_ACKS} answers")

    def _resolve(self, _: Attempt) -> tuple[str, int]:
        """The peer's address (a numeric host: asyncio resolves no more)."""
        info = socket.getaddrinfo(self.cfg.host, self.cfg.port, type=socket.SOCK_STREAM)
        address = info[0][4]
        return str(address[0]), int(address[1])

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn[1].close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn[1].wait_closed(), 1.0)

    async def close(self) -> None:
        await self._drop()


@register_receiver(Hl7MllpReceiverConfig)
def _build(cfg: Hl7MllpReceiverConfig, ctx: ReceiverContext) -> Hl7MllpReceiver:
    return Hl7MllpReceiver(cfg, ctx.route)
