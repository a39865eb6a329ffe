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
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import json
import logging
import math
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from monitor.config import SqliteStoreConfig
from monitor.model import Admission, AlertEvent, AlertState, Priority, Reading
from monitor.queues import put_end
from monitor.sinks import retention

log = logging.getLogger("vitalmon.sink.sqlite")

SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,  -- commit order; cursors of remote sinks
    ward    TEXT NOT NULL,
    bed     TEXT NOT NULL,
    device  TEXT NOT NULL,
    vital   TEXT NOT NULL,
    ts      REAL NOT NULL,   -- event time, epoch seconds UTC
    value   REAL NOT NULL,
    patient TEXT,
    flag    TEXT,    -- why the engine did not evaluate it (implausible, disputed, history)
    -- the idempotency key, time first: readings arrive in time order, so the index grows
    -- at its end instead of rewriting a page per series in every transaction
    UNIQUE (ts, ward, bed, device, vital)
);
CREATE INDEX IF NOT EXISTS readings_bed_ts ON readings (bed, ts);
CREATE TABLE IF NOT EXISTS alert_events (
    ev         INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    ward       TEXT NOT NULL,
    bed        TEXT NOT NULL,
    device     TEXT NOT NULL,
    patient    TEXT,
    vital      TEXT NOT NULL,
    rule       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    priority   TEXT NOT NULL,
    state      TEXT NOT NULL,
    value      REAL,
    limit_value REAL,
    message    TEXT NOT NULL,
    started_at REAL NOT NULL,
    at         REAL NOT NULL,
    extra      TEXT,            -- JSON: ack_by, escalated, action, ...
    UNIQUE (id, seq)
);
CREATE INDEX IF NOT EXISTS alert_events_bed_at ON alert_events (bed, at);
CREATE TABLE IF NOT EXISTS cursors (
    sink     TEXT PRIMARY KEY,
    readings INTEGER NOT NULL,   -- last readings.seq delivered
    alerts   INTEGER NOT NULL    -- last alert_events.ev delivered
);
CREATE TABLE IF NOT EXISTS readings_1m (
    ward    TEXT NOT NULL,
    bed     TEXT NOT NULL,
    device  TEXT NOT NULL,
    vital   TEXT NOT NULL,
    minute  INTEGER NOT NULL,   -- floor(ts / 60)
    n       INTEGER NOT NULL,
    min     REAL NOT NULL,
    mean    REAL NOT NULL,
    max     REAL NOT NULL,
    PRIMARY KEY (ward, bed, device, vital, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (          -- who did what to which alert, and when
    at       REAL NOT NULL,                 -- wall clock, epoch seconds UTC
    action   TEXT NOT NULL,                 -- acknowledge | escalate | pause
    by       TEXT NOT NULL,                 -- operator name, or "vitalmon"
    alert_id TEXT,
    ward     TEXT NOT NULL,
    bed      TEXT NOT NULL,
    detail   TEXT NOT NULL,
    identity TEXT       -- broker-verified user (vitalmon/cmd/<action>/<user>); null: only claimed
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE TABLE IF NOT EXISTS beds (           -- admitted patients (vitalmon/cmd/admit)
    ward     TEXT NOT NULL,
    bed      TEXT NOT NULL,
    patient  TEXT NOT NULL,
    profile  TEXT,                          -- null: the bed's profile from the config
    at       REAL NOT NULL,                 -- wall clock of the admission
    by       TEXT NOT NULL,
    PRIMARY KEY (ward, bed)
);
"""

_READING_COLS = "ward, bed, device, vital, ts, value, patient"
#: What a reading row holds when it is written (:func:`reading_row`).
_INSERT_COLS = _READING_COLS + ", flag"
_ALERT_COLS_V1 = (
    "id, seq, ward, bed, device, patient, vital, rule, kind, priority, state, value,"
    " limit_value, message, started_at, at"
)
_ALERT_COLS = _ALERT_COLS_V1 + ", extra"
#: Lifecycle actions that go to the audit trail (renotifications do not).
AUDITED = ("acknowledge", "escalate")

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


class StoreInUse(RuntimeError):
    """Another process holds the store's lock."""


def storage_error(exc: BaseException) -> bool:
    """A failure of the disk or the file (retried), not of the data (quarantined)."""
    return isinstance(exc, OSError | sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(exc)


def lock_store(path: str) -> int | None:
    """Take ``<path>.lock`` exclusively (released when the process ends, however it ends);
    -> its descriptor. :class:`StoreInUse` naming the holder's pid when another has it."""
    if path == ":memory:" or path.startswith("file:"):
        return None
    lock = f"{path}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StoreInUse(
            f"store {path} is in use by another vitalmon (pid {holder}): two instances on "
            "one store would resolve each other's alerts and share a client id; stop the "
            "other one, or give this one its own store path and mqtt.client_id"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass(slots=True)
class _Item:
    readings: Sequence[Reading]
    events: Sequence[AlertEvent]
    done: Done | None
    #: Operator actions that are not alert events (pause): (at, action, by, alert_id,
    #: ward, bed, detail)
    audit: Sequence[tuple[object, ...]] = ()


def _exists(path: Path) -> bool:
    return path.exists()


def private_dir(directory: Path) -> None:
    """Create ``directory`` (and its parents) readable by vitalmon alone (0700), whatever
    the umask; a directory that exists is left as it is (it may be /var/lib or /tmp)."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    for d in missing:
        os.chmod(d, 0o700)


def private_file(path: str) -> None:
    """The store holds patient ids: the file and its WAL and shared-memory files are
    0600 whatever the umask (SQLite gives the last two the database file's mode)."""
    if path == ":memory:" or path.startswith("file:"):
        return
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    for p in (path, f"{path}-wal", f"{path}-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(p, 0o600)


def connect(
    path: str, *, readonly: bool = False, synchronous: str = "normal"
) -> sqlite3.Connection:
    if readonly:
        ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        cols = {row[1] for row in ro.execute("PRAGMA table_info(readings)")}
        if cols and "flag" not in cols:  # a store of schema 2 not yet opened by the daemon
            ro.execute("CREATE TEMP VIEW readings AS SELECT *, NULL AS flag FROM main.readings")
        return ro
    private_file(path)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    try:
        _prepare(conn, synchronous)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, synchronous: str) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 1:
        _migrate_v1(conn)
    elif version == 2:
        log.info("migrating store schema 2 -> 3 (readings.flag)")
        conn.execute("ALTER TABLE readings ADD COLUMN flag TEXT")
    conn.executescript(SCHEMA)
    if "identity" not in {row[1] for row in conn.execute("PRAGMA table_info(audit)")}:
        conn.execute("ALTER TABLE audit ADD COLUMN identity TEXT")  # (a store before it)
    if version != SCHEMA_VERSION:  # (a store up to date is not written to at all)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Version 1 (no journal sequence) -> 2: same rows, numbered in event-time order."""
    log.info("migrating store schema 1 -> 2")
    conn.executescript(
        "BEGIN;"
        "ALTER TABLE readings RENAME TO readings_v1;"
        "ALTER TABLE alert_events RENAME TO alert_events_v1;"
        "DROP INDEX IF EXISTS readings_bed_ts; DROP INDEX IF EXISTS alert_events_bed_at;"
        + SCHEMA
        + f"INSERT INTO readings ({_READING_COLS}) SELECT {_READING_COLS} FROM readings_v1"
        " ORDER BY ts;"
        f"INSERT INTO alert_events ({_ALERT_COLS_V1}) SELECT {_ALERT_COLS_V1}"
        " FROM alert_events_v1"
        " ORDER BY at;"
        "DROP TABLE readings_v1; DROP TABLE alert_events_v1; COMMIT;"
    )


class SqliteSink:
    def __init__(self, cfg: SqliteStoreConfig, queue_size: int = HOLD_MAX) -> None:
        self.cfg = cfg
        self.name = "sqlite"
        self.queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=queue_size)
        self.counts: Counter[str] = Counter()
        #: Set after every commit: forwarders wait on it for new journal entries.
        self.committed = asyncio.Event()
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
        log.info("store open: %s (journal at %d)", path, self.head)

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in the store's thread (between commits), connecting
        first if the store is not open yet."""
        loop = asyncio.get_running_loop()

        def job() -> T:
            if self._conn is None:
                self._conn = connect(self.cfg.path, synchronous=self.cfg.synchronous)
            return fn(self._conn)

        return await loop.run_in_executor(self._executor, job)

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

    async def _commit_loop(self) -> None:
        pending: list[_Item] = []
        try:
            await self._commit_pending(pending)
        finally:
            if pending:  # cancelled at the shutdown deadline while the disk refused
                log.warning(
                    "store: %d batch(es) not committed nor acknowledged at the stop "
                    "(MQTT redelivers them to the next run)",
                    len(pending),
                )

    async def _commit_pending(self, pending: list[_Item]) -> None:
        closing = False  # (pending: taken from the queue, not committed yet)
        retry_at = 0.0
        attempt = 0
        while True:
            # take what is queued: one transaction's worth, or while the disk refuses
            # commits, everything up to HOLD_MAX (the engine goes on meanwhile)
            limit = self.cfg.batch_size if self.failure is None else HOLD_MAX
            while not closing and len(pending) < limit:
                if pending and self.queue.empty():
                    if self.failure is None:
                        break
                    wait = retry_at - time.monotonic()
                    if wait <= 0:
                        break
                    try:  # new items until the retry is due
                        item = await asyncio.wait_for(self.queue.get(), wait)
                    except TimeoutError:
                        break
                else:
                    item = self.queue.get_nowait() if pending else await self.queue.get()
                if item is None:
                    closing = True
                else:
                    pending.append(item)
            self.held = len(pending)
            if not pending:
                return
            if self.failure is not None and time.monotonic() < retry_at:
                await asyncio.sleep(retry_at - time.monotonic())  # (held items at HOLD_MAX)
            # (a copy: ``pending`` loses these items below, their release must not)
            batch = pending[: self.cfg.batch_size if self.failure is None else len(pending)]
            try:
                committed = await self._commit_batch(batch)
            except Exception as exc:  # noqa: BLE001 - storage errors only (see _commit_batch)
                attempt += 1
                self._failing(exc, len(pending))
                retry_at = time.monotonic() + min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (attempt - 1))
                continue
            attempt = 0
            del pending[: len(batch)]
            self.held = len(pending)
            self._recovered()
            self.counts["commits"] += 1  # progress, for the watchdog
            self.committed.set()
            for it in committed:  # only now is it durable: release it at its origin
                if it.done is not None:
                    it.done()

    async def _commit_batch(self, batch: list[_Item]) -> list[_Item]:
        """Commit ``batch`` in one transaction; -> the items to release. A storage error
        is raised (the caller retries); any other failure is narrowed down to the items
        that cause it, which are quarantined (counted, logged, released)."""
        self._committing_since = time.monotonic()
        loop = asyncio.get_running_loop()  # (on time, not on the daemon's next heartbeat)
        timers = [loop.call_later(d + 0.01, self.check) for d in (SLOW_S, STALL_S)]
        try:
            self.head = await self.call(partial(self._commit, batch=batch))
        except Exception as exc:
            if storage_error(exc):
                raise
            if len(batch) == 1:
                self._quarantine(batch[0], exc)
                return batch
            for it in batch:  # one by one: the bad item alone is set aside
                await self._commit_batch([it])
        finally:
            for timer in timers:
                timer.cancel()
            self._committing_since = None
            self._unstalled()
        return batch

    @property
    def committing(self) -> bool:
        """A commit is in progress (busy, not stuck: ``check`` alarms one that hangs)."""
        return self._committing_since is not None

    def check(self, now: float | None = None) -> None:
        """Called every second: a commit that has not returned for ``STALL_S`` raises
        ``store.stalled`` (resolved when it returns, however it returns)."""
        since = self._committing_since
        t = time.monotonic() if now is None else now
        if since is not None and not self._slow and t - since >= SLOW_S:
            self._slow = True
            if self.on_slow is not None:
                self.on_slow(True)
        if since is None or self.stalled or t - since < STALL_S:
            return
        self.stalled = True
        log.error(
            "store: a commit has not returned for %.0f s (%s); alerts still "
            "evaluated and published, nothing acknowledged meanwhile",
            t - since,
            self.cfg.path,
        )
        if self.on_condition is not None:
            self.on_condition(
                "store.stalled",
                "disk",
                True,
                f"a commit to {self.cfg.path} has not returned for "
                f"{t - since:.0f} s (a disk that hangs, or a lock held by another "
                "process); nothing acknowledged meanwhile, alerts still evaluated "
                "and published",
            )

    def _unstalled(self) -> None:
        if self._slow:
            self._slow = False
            if self.on_slow is not None:
                self.on_slow(False)
        if not self.stalled:
            return
        self.stalled = False
        log.warning("store: the stalled commit returned")
        if self.on_condition is not None:
            self.on_condition("store.stalled", "disk", False, "the stalled commit returned")

    def _quarantine(self, item: _Item, exc: Exception) -> None:
        self.counts["quarantined"] += len(item.readings) + len(item.events)
        log.error(
            "store: %d reading(s) and %d alert event(s) the store cannot take were set "
            "aside (%s: %s)",
            len(item.readings),
            len(item.events),
            type(exc).__name__,
            exc,
        )

    def _failing(self, exc: BaseException, held: int) -> None:
        first = self.failure is None
        self.failure = exc
        self.counts["commit_errors"] += 1
        rule = "store.full" if disk_full(exc) else "store.failed"  # (component "disk")
        detail = (
            f"cannot commit to {self.cfg.path}: {exc}; {held} batch(es) held in memory, "
            "not acknowledged; alerts still evaluated and published"
        )
        if first:
            log.error("store: %s", detail)
        if self._alarm != rule and self.on_condition is not None:
            if self._alarm is not None:
                self.on_condition(self._alarm, "disk", False, "store: another error now")
            self._alarm = rule
            self.on_condition(rule, "disk", True, detail)

    def _recovered(self) -> None:
        if self.failure is None:
            return
        log.warning("store: commits succeed again (%s)", self.cfg.path)
        self.failure = None
        if self._alarm is not None and self.on_condition is not None:
            self.on_condition(
                self._alarm,
                "disk",
                False,
                "store commits again; what was held is committed and acknowledged",
            )
        self._alarm = None

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.maintenance_interval_s)
            try:
                await self.maintain()
            except Exception as exc:
                if not storage_error(exc):
                    raise
                log.warning(
                    "store maintenance failed (%s); tried again in %g s",
                    exc,
                    self.cfg.maintenance_interval_s,
                )

    async def maintain(self, now: float | None = None) -> retention.Report:
        """Aggregate, apply retention and the disk bound, a chunk per store-thread call."""
        t = time.time() if now is None else now
        report = retention.Report()
        while True:
            more = await self.call(lambda c: self._retention.step(c, t, report))
            if not more:
                break
        self.used_bytes = report.used_bytes
        self.counts["pruned"] += report.pruned_age + report.pruned_space
        self.counts["pruned_space"] += report.pruned_space
        for sink, n in report.dropped.items():
            self.counts[f"dropped[{sink}]"] += n
        if self.on_condition is not None:
            if report.pruned_space:
                self.on_condition(
                    "store.full",
                    "store",
                    True,
                    f"disk bound {self.cfg.max_mb:g} MiB reached: "
                    f"{report.pruned_space} oldest raw readings pruned",
                )
            elif report.below_low_water:
                self.on_condition("store.full", "store", False, "store back under its disk bound")
            for sink, n in report.dropped.items():
                self.on_condition(
                    "sink.dropped", sink, True, f"{n} readings pruned before {sink} got them"
                )
        return report

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


def reading_row(r: Reading) -> tuple[object, ...]:
    """A reading as its ``readings`` row (``_INSERT_COLS`` order)."""
    return (r.ward, r.bed, r.device, r.vital, r.ts, r.value, r.patient, r.flag)


def alert_row(e: AlertEvent) -> tuple[object, ...]:
    """An alert event as its ``alert_events`` row."""
    return (
        e.id,
        e.seq,
        e.ward,
        e.bed,
        e.device,
        e.patient,
        e.vital,
        e.rule,
        e.kind,
        str(e.priority),
        str(e.state),
        e.value,
        e.limit,
        e.message,
        e.started_at,
        e.at,
        json.dumps(e.extra) if e.extra else None,
    )


def _alert_event(r: Sequence[Any]) -> AlertEvent:
    return AlertEvent(
        id=r[0],
        seq=r[1],
        ward=r[2],
        bed=r[3],
        device=r[4],
        patient=r[5],
        vital=r[6],
        rule=r[7],
        kind=r[8],
        priority=Priority(r[9]),
        state=AlertState(r[10]),
        value=math.nan if r[11] is None else r[11],  # NaN is stored as NULL
        limit=math.nan if r[12] is None else r[12],
        message=r[13],
        started_at=r[14],
        at=r[15],
        extra=json.loads(r[16]) if r[16] else {},
    )


def _active_alerts(conn: sqlite3.Connection) -> list[AlertEvent]:
    rows = conn.execute(
        f"SELECT {_ALERT_COLS} FROM alert_events WHERE ev IN"
        " (SELECT max(ev) FROM alert_events GROUP BY id) AND state != 'resolved' ORDER BY ev"
    ).fetchall()
    return [_alert_event(r) for r in rows]


# --------------------------------------------------------------------- the journal


def journal_head(conn: sqlite3.Connection) -> tuple[int, int]:
    """Highest (readings.seq, alert_events.ev) committed; sequence numbers are never reused
    (an ignored duplicate may consume one: numbers have gaps, never repeats)."""
    row = conn.execute(
        "SELECT coalesce((SELECT max(seq) FROM readings),"
        " (SELECT seq FROM sqlite_sequence WHERE name = 'readings'), 0),"
        " coalesce((SELECT max(ev) FROM alert_events),"
        " (SELECT seq FROM sqlite_sequence WHERE name = 'alert_events'), 0)"
    ).fetchone()
    return int(row[0]), int(row[1])


def get_cursor(conn: sqlite3.Connection, sink: str, start_from: str = "end") -> tuple[int, int]:
    row = conn.execute("SELECT readings, alerts FROM cursors WHERE sink = ?", (sink,)).fetchone()
    if row is not None:
        return int(row[0]), int(row[1])
    start = journal_head(conn) if start_from == "end" else (0, 0)
    set_cursor(conn, sink, *start)
    return start


def set_cursor(conn: sqlite3.Connection, sink: str, readings: int, alerts: int) -> None:
    conn.execute(
        "INSERT INTO cursors (sink, readings, alerts) VALUES (?, ?, ?) ON CONFLICT (sink)"
        " DO UPDATE SET readings = excluded.readings, alerts = excluded.alerts",
        (sink, readings, alerts),
    )


def read_readings(
    conn: sqlite3.Connection, after: int, limit: int
) -> list[tuple[int, str, str, str, str, float, float, str | None, str | None]]:
    """Journal entries after ``after``: (seq, ward, bed, device, vital, ts, value, patient,
    flag)."""
    return conn.execute(
        f"SELECT seq, {_INSERT_COLS} FROM readings WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, limit),
    ).fetchall()


def read_alerts(conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, AlertEvent]]:
    rows = conn.execute(
        f"SELECT ev, {_ALERT_COLS} FROM alert_events WHERE ev > ? ORDER BY ev LIMIT ?",
        (after, limit),
    ).fetchall()
    return [(int(r[0]), _alert_event(r[1:])) for r in rows]


def query_readings(
    path: str,
    bed: str,
    *,
    ward: str | None = None,
    vital: str | None = None,
    since: float | None = None,
) -> Iterator[tuple[float, str, str, str, str, float, str | None]]:
    """Stored readings of one bed, oldest first: (ts, ward, bed, device, vital, value,
    flag)."""
    sql = "SELECT ts, ward, bed, device, vital, value, flag FROM readings WHERE bed = ?"
    args: list[object] = [bed]
    if ward is not None:
        sql += " AND ward = ?"
        args.append(ward)
    if vital is not None:
        sql += " AND vital = ?"
        args.append(vital)
    if since is not None:
        sql += " AND ts >= ?"
        args.append(since)
    sql += " ORDER BY ts, ward, device, vital"
    conn = connect(path, readonly=True)
    try:
        yield from conn.execute(sql, args)
    finally:
        conn.close()
