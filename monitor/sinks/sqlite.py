"""SQLite store: every accepted reading and every alert event, batched, WAL mode.

One connection lives in one dedicated thread; the event loop never waits on the disk
except through the sink's bounded queue. A reading's key is (ward, bed, device, vital,
ts): a redelivered duplicate is absorbed, not stored twice.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from monitor.config import SqliteStoreConfig
from monitor.model import AlertEvent, AlertState, Priority, Reading
from monitor.queues import put_end

log = logging.getLogger("vitalmon.sink.sqlite")

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    ward    TEXT NOT NULL,
    bed     TEXT NOT NULL,
    device  TEXT NOT NULL,
    vital   TEXT NOT NULL,
    ts      REAL NOT NULL,   -- event time, epoch seconds UTC
    value   REAL NOT NULL,
    patient TEXT,
    PRIMARY KEY (ward, bed, device, vital, ts)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS readings_bed_ts ON readings (bed, ts);
CREATE TABLE IF NOT EXISTS alert_events (
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
    PRIMARY KEY (id, seq)
);
CREATE INDEX IF NOT EXISTS alert_events_bed_at ON alert_events (bed, at);
PRAGMA user_version = 1;
"""

_Item = tuple[Sequence[Reading], Sequence[AlertEvent]]


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    else:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a committed transaction survives a crash of the process.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
    return conn


class SqliteSink:
    def __init__(self, cfg: SqliteStoreConfig, queue_size: int = 1000) -> None:
        self.cfg = cfg
        self.name = "sqlite"
        self.queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=queue_size)
        self.counts: Counter[str] = Counter()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vitalmon-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        path = Path(self.cfg.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._executor, connect, str(path))
        log.info("store open: %s", path)

    async def active_alerts(self) -> list[AlertEvent]:
        """The last event of every alert not resolved yet (to carry alerts over a restart)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._active_alerts)

    def _active_alerts(self) -> list[AlertEvent]:
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT e.id, e.seq, e.ward, e.bed, e.device, e.patient, e.vital, e.rule, e.kind,"
            " e.priority, e.state, e.value, e.limit_value, e.message, e.started_at, e.at"
            " FROM alert_events e JOIN (SELECT id, max(seq) AS seq FROM alert_events GROUP BY id)"
            " m ON e.id = m.id AND e.seq = m.seq WHERE e.state != 'resolved' ORDER BY e.at"
        ).fetchall()
        return [
            AlertEvent(
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
                value=r[11],
                limit=r[12],
                message=r[13],
                started_at=r[14],
                at=r[15],
            )
            for r in rows
        ]

    async def write(self, readings: Sequence[Reading], events: Sequence[AlertEvent]) -> None:
        if readings or events:
            await self.queue.put((readings, events))

    def close(self) -> None:
        put_end(self.queue, "sqlite")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            closing = False
            while not closing:
                item = await self.queue.get()
                batch: list[_Item] = []
                while item is not None:
                    batch.append(item)
                    if len(batch) >= self.cfg.batch_size or self.queue.empty():
                        break
                    item = self.queue.get_nowait()
                closing = item is None
                if batch:
                    await loop.run_in_executor(self._executor, self._commit, batch)
        finally:
            await loop.run_in_executor(self._executor, self._close)
            self._executor.shutdown(wait=False)

    # ------------------------------------------------------------- store thread

    def _commit(self, batch: list[_Item]) -> None:
        conn = self._conn
        assert conn is not None
        rows = [
            (r.ward, r.bed, r.device, r.vital, r.ts, r.value, r.patient)
            for readings, _ in batch
            for r in readings
        ]
        alerts = [
            (
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
            )
            for _, events in batch
            for e in events
        ]
        before = conn.total_changes
        conn.execute("BEGIN")
        try:
            conn.executemany("INSERT OR IGNORE INTO readings VALUES (?,?,?,?,?,?,?)", rows)
            stored = conn.total_changes - before
            conn.executemany(
                "INSERT OR IGNORE INTO alert_events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                alerts,
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.counts["committed"] += stored
        self.counts["duplicates"] += len(rows) - stored
        self.counts["alert_events"] += len(alerts)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def query_readings(
    path: str,
    bed: str,
    *,
    ward: str | None = None,
    vital: str | None = None,
    since: float | None = None,
) -> Iterator[tuple[float, str, str, str, str, float]]:
    """Stored readings of one bed, oldest first: (ts, ward, bed, device, vital, value)."""
    sql = "SELECT ts, ward, bed, device, vital, value FROM readings WHERE bed = ?"
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
