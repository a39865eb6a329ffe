"""The store's file: its schema (and the migrations of older ones), opening it
(:func:`connect`, private modes), its lock (:func:`lock_store`) and a full disk
(:func:`disk_full`; :func:`monitor.pipeline.storage_error` tells the disk's errors)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import sqlite3
from pathlib import Path

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
CREATE TABLE IF NOT EXISTS outbox (         -- alert events routed to receivers (alerts.routes)
    route     TEXT NOT NULL,                -- the route's name
    ev        INTEGER NOT NULL,             -- alert_events.ev
    alert     TEXT NOT NULL,                -- alert_events.id (an alert's rows together)
    status    TEXT NOT NULL,                -- pending | held | delivered | superseded | skipped
                                            -- | rejected | lost (monitor.sinks.delivery.outbox)
    routed_at REAL NOT NULL,                -- wall clock of the routing
    done_at   REAL,                         -- wall clock of the delivery (or of giving it up)
    state     TEXT,                         -- alert_events.state (kept when the event is pruned)
    PRIMARY KEY (route, ev)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_status ON outbox (route, status, ev);
CREATE INDEX IF NOT EXISTS outbox_alert ON outbox (route, alert);
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


class StoreInUse(RuntimeError):
    """Another process holds the store's lock."""


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
    conn.executescript(SCHEMA)  # (and the tables added since, to an older store: outbox)
    if "identity" not in {row[1] for row in conn.execute("PRAGMA table_info(audit)")}:
        conn.execute("ALTER TABLE audit ADD COLUMN identity TEXT")  # (a store before it)
    if "state" not in {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}:
        conn.executescript(  # (an outbox before it: the states its events still have)
            "BEGIN; ALTER TABLE outbox ADD COLUMN state TEXT;"
            " UPDATE outbox SET state = (SELECT a.state FROM alert_events a"
            " WHERE a.ev = outbox.ev); COMMIT;"
        )
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
