"""What the parts of :class:`~monitor.sinks.sqlite.SqliteSink` share: the constants of
its commit loop, a queued batch (:class:`_Item`) and the sink's state
(:class:`_SinkBase`, with :meth:`~_SinkBase.call` into the store's thread)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from monitor.config import SqliteStoreConfig
from monitor.model import AlertEvent, Reading
from monitor.sinks import retention
from monitor.sinks.sqlite.schema import connect

Done = Callable[[], None]
T = TypeVar("T")

#: Items (batches) waiting for a commit: the queue's bound, and again what is held while
#: the disk refuses commits; beyond, the engine waits (back-pressure). Large enough that a
#: slow or stalled commit does not hold up the engine (and so the alerts) for a while:
#: MQTT QoS 1 input is bounded before that by the window of unacknowledged messages.
HOLD_MAX = 20_000
#: A failing commit is retried after RETRY_MIN_S, backing off to RETRY_MAX_S.
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
#: A commit that has not returned after this long (a disk that hangs, a lock held by
#: another process) raises ``store.stalled``: the alarms go on as for a failing disk.
STALL_S = 3.0
#: ... and one that has not returned after this long already starts the degraded mode
#: (``on_slow``; no alarm yet): at 6,000 readings/s the broker's window of 1,000
#: unacknowledged messages is full within a second.
SLOW_S = 1.0


@dataclass(slots=True)
class _Item:
    readings: Sequence[Reading]
    events: Sequence[AlertEvent]
    done: Done | None
    #: Operator actions that are not alert events (pause): (at, action, by, alert_id,
    #: ward, bed, detail)
    audit: Sequence[tuple[object, ...]] = ()


class _SinkBase:
    """The state of a :class:`~monitor.sinks.sqlite.SqliteSink` (set in its ``__init__``,
    documented there)."""

    cfg: SqliteStoreConfig
    name: str
    queue: asyncio.Queue[_Item | None]
    counts: Counter[str]
    committed: asyncio.Event
    commit_events: list[asyncio.Event]
    head: int
    used_bytes: int
    on_condition: Callable[[str, str, bool, str], None] | None
    _executor: ThreadPoolExecutor
    _conn: sqlite3.Connection | None
    _retention: retention.Retention
    _lock: int | None
    failure: BaseException | None
    held: int
    _alarm: str | None
    _committing_since: float | None
    stalled: bool
    on_slow: Callable[[bool], None] | None
    _slow: bool

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in the store's thread (between commits), connecting
        first if the store is not open yet."""
        loop = asyncio.get_running_loop()

        def job() -> T:
            if self._conn is None:
                self._conn = connect(self.cfg.path, synchronous=self.cfg.synchronous)
            return fn(self._conn)

        return await loop.run_in_executor(self._executor, job)
