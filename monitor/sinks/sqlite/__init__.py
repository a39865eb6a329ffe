"""SQLite store: every accepted reading and every alert event; the durable journal.

One connection lives in one dedicated thread; the event loop never waits on the disk
except through the sink's bounded queue. What it guarantees:

* **Durable before acknowledged.** A batch's ``done`` callback (the MQTT PUBACK) runs only
  after the transaction holding it has committed (WAL; ``synchronous`` normal survives a
  crash of the daemon, full also a power loss).
* **Idempotent.** A reading's key is (ward, bed, device, vital, ts): a redelivered
  duplicate is absorbed and counted, never stored twice.
* **A journal.** ``seq`` numbers readings (and ``ev`` alert events) in commit order,
  never reused; remote sinks forward from their own cursor on it (``cursors`` table).
* **Retention and a disk bound** (:mod:`monitor.sinks.retention`), applied in the
  background between commits.
* **A failing disk degrades, never stops.** A commit the disk refuses (full, I/O error,
  read-only) is retried every few seconds; meanwhile what the engine hands in is held in
  memory (up to ``HOLD_MAX`` items, then the engine waits: back-pressure), nothing of it
  is acknowledged, and the technical alarm ``store.full`` (no space) or ``store.failed``
  (any other storage error) names the cause. The engine goes on evaluating and
  publishing alerts. The first commit that succeeds writes everything held, in order,
  acknowledges it and resolves the alarm. A batch that fails for any other reason (a row
  the store cannot take) is committed item by item and the item that fails alone is
  quarantined: counted, logged, acknowledged (it would fail on every redelivery).
* **One instance per store.** ``open()`` takes an exclusive lock (``<path>.lock``,
  holding the owner's pid); a second daemon on the same store is refused with a clear
  message instead of resolving the first one's alerts.

The package: :mod:`~monitor.sinks.sqlite.schema` (the schema, :func:`connect`, the lock),
:mod:`~monitor.sinks.sqlite.journal` (rows, the journal, cursors, queries) and the parts
of :class:`SqliteSink`: :mod:`~monitor.sinks.sqlite.base` (its state and constants),
:mod:`~monitor.sinks.sqlite.commit` (the commit loop) and
:mod:`~monitor.sinks.sqlite.health` (failing, stalled or full stores, maintenance).
:class:`SqliteSink` and the write path (:func:`write_rows`, :func:`insert_readings`) are
here, and look :func:`_json1` up here (where tests replace it).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from monitor.config import SqliteStoreConfig
from monitor.model import Admission, AlertEvent, Reading
from monitor.pipeline import storage_error
from monitor.queues import put_end
from monitor.sinks import retention
from monitor.sinks.sqlite.base import (
    HOLD_MAX,
    RETRY_MAX_S,
    RETRY_MIN_S,
    SLOW_S,
    STALL_S,
    Done,
    T,
    _Item,
)
from monitor.sinks.sqlite.commit import _Committing
from monitor.sinks.sqlite.journal import (
    _active_alerts,
    _alert_event,
    alert_row,
    get_cursor,
    journal_head,
    query_readings,
    read_alerts,
    read_readings,
    reading_row,
    set_cursor,
)
from monitor.sinks.sqlite.schema import (
    _ALERT_COLS,
    _ALERT_COLS_V1,
    _INSERT_COLS,
    _READING_COLS,
    AUDITED,
    SCHEMA,
    SCHEMA_VERSION,
    StoreInUse,
    _exists,
    _migrate_v1,
    _prepare,
    connect,
    disk_full,
    lock_store,
    private_dir,
    private_file,
)

log = logging.getLogger("vitalmon.sink.sqlite")


class SqliteSink(_Committing):
    def __init__(self, cfg: SqliteStoreConfig, queue_size: int = HOLD_MAX) -> None:
        self.cfg = cfg
        self.name = "sqlite"
        self.queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=queue_size)
        self.counts: Counter[str] = Counter()
        #: Set after every commit: forwarders wait on it for new journal entries.
        self.committed = asyncio.Event()
        #: Events of readers of their own (:meth:`commit_event`), set with ``committed``.
        self.commit_events: list[asyncio.Event] = []
        self.head = 0  #: highest readings.seq committed
        self.used_bytes = 0  #: database size in use, as of the last maintenance
        #: Called with (condition, component, active, detail) when a store condition
        #: changes (``store.full``, ``sink.dropped``): the daemon raises a technical alarm.
        self.on_condition: Callable[[str, str, bool, str], None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vitalmon-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._retention = retention.Retention(cfg)
        self._lock: int | None = None
        #: The storage error commits fail with now (None: the store takes writes).
        self.failure: BaseException | None = None
        #: Items accepted and not yet committed (nothing of them acknowledged).
        self.held = 0
        self._alarm: str | None = None
        #: monotonic start of the commit in progress (None: none); ``stalled``: alarmed
        self._committing_since: float | None = None
        self.stalled = False
        #: Called with True when a commit has been running for SLOW_S, False when it ends.
        self.on_slow: Callable[[bool], None] | None = None
        self._slow = False

    async def open(self) -> None:
        """Open (and migrate) the store. A disk that refuses (full, I/O error) does not
        stop the daemon: the store starts failing, alarmed, and is opened by the first
        commit that succeeds; what start-up reads comes from the file as it is."""
        path = Path(self.cfg.path)
        private_dir(path.parent)
        if self._lock is None:
            self._lock = lock_store(str(path))
        existed = _exists(path)
        try:
            await self.call(lambda c: None)  # (connects)
        except Exception as exc:
            if not storage_error(exc) or not existed:  # (a new store must be creatable)
                raise
            self._failing(exc, 0)
            return
        self.head = await self.call(lambda c: journal_head(c)[0])
        self.used_bytes = await self.call(retention.used_bytes)
        # when this store was opened (a daemon's start): what lived only in the last run's
        # memory (bed pauses) ended before it -- the web station reads this
        opened = time.time()
        await self.call(
            lambda c: c.execute("INSERT OR REPLACE INTO meta VALUES ('opened_at', ?)", (opened,))
        )
        log.info("store open: %s (journal at %d)", path, self.head)

    def commit_event(self) -> asyncio.Event:
        """An event of the caller's own, set after every commit: a reader clears it
        before it reads, and no other reader's clear can hide a commit from it."""
        event = asyncio.Event()
        self.commit_events.append(event)
        return event

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Like :meth:`call` for a query; while the store cannot be opened for writing
        (a full disk), from the file as it stands, read-only."""
        if self._conn is not None or self.failure is None:
            return await self.call(fn)
        loop = asyncio.get_running_loop()

        def job() -> T:
            ro = sqlite3.connect(f"file:{self.cfg.path}?mode=ro&immutable=1", uri=True)
            try:
                return fn(ro)
            finally:
                ro.close()

        return await loop.run_in_executor(self._executor, job)

    async def active_alerts(self) -> list[AlertEvent]:
        """The last event of every alert not resolved yet (to carry alerts over a restart)."""
        return await self.read(_active_alerts)

    async def write(
        self,
        readings: Sequence[Reading],
        events: Sequence[AlertEvent],
        done: Done | None = None,
    ) -> None:
        if readings or events or done is not None:  # (audit rows: write_audit)
            await self.queue.put(_Item(readings, events, done))

    async def admissions(self) -> list[Admission]:
        """The beds admitted at the last stop."""
        rows = await self.read(
            lambda c: c.execute("SELECT ward, bed, patient, profile, at, by FROM beds").fetchall()
        )
        return [Admission(*r) for r in rows]

    async def save_admission(self, a: Admission | None, ward: str, bed: str) -> None:
        """Record a bed's admission (``a``), or its discharge (``a`` None): committed now."""

        def job(c: sqlite3.Connection) -> None:
            c.execute("BEGIN")
            try:
                c.execute("DELETE FROM beds WHERE ward = ? AND bed = ?", (ward, bed))
                if a is not None:
                    c.execute(
                        "INSERT INTO beds (ward, bed, patient, profile, at, by)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (a.ward, a.bed, a.patient, a.profile, a.at, a.by),
                    )
            except BaseException:
                rollback(c)
                raise
            c.execute("COMMIT")

        await self.call(job)

    async def write_audit(self, rows: Sequence[tuple[object, ...]]) -> None:
        """Record operator actions in the audit trail (with the next commit)."""
        await self.queue.put(_Item((), (), None, rows))

    def close(self) -> None:
        put_end(self.queue, "sqlite")

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            maintenance = tg.create_task(self._maintain(), name="vitalmon.sink[sqlite].maintain")
            try:
                await self._commit_loop()
            finally:
                maintenance.cancel()

    async def release(self) -> None:
        """Close the database; after ``run()`` and every forwarder reading from it."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, conn.close)
        self._executor.shutdown(wait=False)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    # ------------------------------------------------------------- store thread

    def _commit(self, conn: sqlite3.Connection, *, batch: list[_Item]) -> int:
        rows = [reading_row(r) for it in batch for r in it.readings]
        events = [e for it in batch for e in it.events]
        alerts = [alert_row(e) for e in events]
        audit: list[tuple[object, ...]] = [
            (
                e.at,
                e.extra["action"],
                str(e.extra.get("ack_by", "vitalmon")),
                e.id,
                e.ward,
                e.bed,
                f"{e.rule} {e.state} {e.priority}: {e.message}",
                e.extra.get("ack_identity"),
            )
            for e in events
            if e.extra.get("action") in AUDITED
        ]
        audit += [row for it in batch for row in it.audit]
        stored = write_rows(conn, rows, alerts, audit)
        self.counts["received"] += len(rows)
        self.counts["committed"] += stored
        self.counts["duplicates"] += len(rows) - stored
        self.counts["alert_events"] += len(alerts)
        return journal_head(conn)[0]


def rollback(conn: sqlite3.Connection) -> None:
    """End a failed transaction. SQLite may have rolled it back itself (a full disk, an
    I/O error): a ROLLBACK then would raise and hide the error that matters."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def write_rows(
    conn: sqlite3.Connection,
    rows: Sequence[tuple[object, ...]],
    alerts: Sequence[tuple[object, ...]] = (),
    audit: Sequence[tuple[object, ...]] = (),
) -> int:
    """Reading rows (``_INSERT_COLS``), alert rows (:func:`alert_row`) and audit rows in
    one transaction; a reading or alert event already stored is ignored. -> readings
    stored."""
    before = conn.total_changes
    conn.execute("BEGIN")
    try:
        if rows:
            insert_readings(conn, rows)
        stored = conn.total_changes - before
        if alerts:
            conn.executemany(
                f"INSERT OR IGNORE INTO alert_events ({_ALERT_COLS})"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                alerts,
            )
        if audit:
            conn.executemany(  # (identity, the 8th, may be left out: null)
                "INSERT INTO audit (at, action, by, alert_id, ward, bed, detail, identity)"
                " VALUES (?,?,?,?,?,?,?,?)",
                [(*r, None) if len(r) == 7 else r for r in audit],
            )
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    return stored


#: The rows as one JSON array, unpacked by SQLite itself: one statement for the whole
#: batch. ``executemany`` binds and steps row by row, giving the GIL up and taking it back
#: around every row; with the event loop busy in the other thread each take can wait a
#: whole switch interval (5 ms), so a busy daemon stored a few thousand rows a second.
#: JSON carries every float exactly (``repr``), None as NULL.
_INSERT_JSON = (
    f"INSERT OR IGNORE INTO readings ({_INSERT_COLS}) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(8))
    + " FROM json_each(?)"
)


@functools.cache
def _json1() -> bool:
    """Whether this SQLite has ``json_each`` (JSON1: built in since 3.38, and in most
    builds before)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("SELECT json_extract(value, '$[0]') FROM json_each('[[1]]')")
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()
    return True


def insert_readings(conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    """``INSERT OR IGNORE`` reading rows (``_INSERT_COLS`` order), in one statement."""
    if _json1():
        text = json.dumps(rows, allow_nan=False)
        if "\\u0000" not in text:  # (SQLite's JSON strings end at a NUL character)
            conn.execute(_INSERT_JSON, (text,))
            return
    conn.executemany(
        f"INSERT OR IGNORE INTO readings ({_INSERT_COLS}) VALUES (?,?,?,?,?,?,?,?)", rows
    )


__all__ = [
    "AUDITED",
    "HOLD_MAX",
    "RETRY_MAX_S",
    "RETRY_MIN_S",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SLOW_S",
    "STALL_S",
    "_ALERT_COLS",
    "_ALERT_COLS_V1",
    "_INSERT_COLS",
    "_INSERT_JSON",
    "_READING_COLS",
    "Done",
    "SqliteSink",
    "StoreInUse",
    "T",
    "_Item",
    "_active_alerts",
    "_alert_event",
    "_exists",
    "_json1",
    "_migrate_v1",
    "_prepare",
    "alert_row",
    "connect",
    "disk_full",
    "get_cursor",
    "insert_readings",
    "journal_head",
    "lock_store",
    "private_dir",
    "private_file",
    "query_readings",
    "read_alerts",
    "read_readings",
    "reading_row",
    "rollback",
    "set_cursor",
    "storage_error",
    "write_rows",
]
