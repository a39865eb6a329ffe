"""One MLLP connection's ACKs (released in arrival order as their batches commit), and
the log throttling per peer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

#: Refused connections (and connections closed without a message) are logged at most
#: once per peer in this long.
PEER_LOG_EVERY_S = 60.0
#: Peers whose log is throttled, remembered at most (beyond, the quiet ones are forgotten).
PEER_LOG_MAX = 4096


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
        self.warned_truncated = False
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


class _PeerLog:
    """Log throttling per (event, peer): :meth:`due` says whether to log now, and how
    many were not logged since the last time."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def due(self, key: tuple[str, str]) -> int | None:
        """None: not now (counted); else log, with this many left unlogged before."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < PEER_LOG_EVERY_S:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if len(self._last) >= PEER_LOG_MAX:  # forget the quiet ones (all, if too few are)
            self._last = {k: v for k, v in self._last.items() if now - v[0] < PEER_LOG_EVERY_S}
            if len(self._last) > PEER_LOG_MAX // 2:
                self._last.clear()
        self._last[key] = (now, 0)
        return last[1] if last is not None else 0
