"""Retention of the embedded store: aggregates, age limits and the disk bound.

Run in the store's thread, one short chunk per call (:meth:`Retention.step`), so
commits of new readings interleave with it and ingest never waits long.

Policy (README, "Storage"):

1. **Aggregate.** Every committed reading is folded into its one-minute aggregate
   (``readings_1m``: count, min, mean, max per ward/bed/device/vital/minute), following
   the journal sequence, so a late reading updates its minute too.
2. **Age.** Raw readings older than ``raw_days`` are deleted once aggregated; aggregates
   and alert events older than ``aggregate_days`` are deleted, except the alert events an
   alert route still owes its receiver (an ``outbox`` row pending or held, or not routed
   yet: after the router's position): those stay until the route is done with them, so
   no routed alarm is dropped unseen (monitor.sinks.delivery).
3. **Disk bound.** When the database's used size passes ``max_mb``, the oldest raw
   readings (by journal order, aggregated first) are deleted until it is under 90 % of
   the bound. Counted, logged, and raised as the technical alarm ``store.full``, which
   resolves once usage is under 80 %.

Readings and alert events deleted before a remote sink forwarded them are counted per
sink as dropped (and alarmed as ``sink.dropped[NAME]``): never silent.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from dataclasses import dataclass, field

from monitor.config import SqliteStoreConfig

log = logging.getLogger("vitalmon.sink.retention")

CHUNK = 5000
DAY = 86400.0
#: The alert router's position in ``meta`` (:data:`monitor.sinks.delivery.outbox.CURSOR`):
#: the alert events after it are not routed yet. Absent: no route is configured.
ROUTED = "outbox.routed_ev"
#: Outbox rows that still need their alert event (:data:`monitor.sinks.delivery.outbox.OPEN`).
OWED = "SELECT ev FROM outbox WHERE status IN ('pending', 'held')"


@dataclass(slots=True)
class Report:
    aggregated: int = 0
    pruned_age: int = 0
    pruned_space: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    #: Alert events pruned before a remote sink forwarded them, per sink.
    dropped_alerts: Counter[str] = field(default_factory=Counter)
    #: Alert events past ``aggregate_days`` kept because an alert route still owes them.
    kept_alerts: int = 0
    below_low_water: bool = False
    used_bytes: int = 0


def rollback(conn: sqlite3.Connection) -> None:
    """End a failed transaction unless SQLite already has (full disk, I/O error)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def used_bytes(conn: sqlite3.Connection) -> int:
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page)


def _meta(conn: sqlite3.Connection, key: str) -> float:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return float(row[0]) if row else 0.0


def _set_meta(conn: sqlite3.Connection, key: str, value: float) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
        " SET value = excluded.value",
        (key, value),
    )


class Retention:
    def __init__(self, cfg: SqliteStoreConfig) -> None:
        self.cfg = cfg
        self.max_bytes = None if cfg.max_mb is None else int(cfg.max_mb * 1024 * 1024)
        self._space_phase = False

    def step(self, conn: sqlite3.Connection, now: float, report: Report) -> bool:
        """Do one chunk of work; True while there is more to do."""
        if self._aggregate(conn, report):
            return True
        if self._prune_age(conn, now, report):
            return True
        return self._prune_space(conn, report)

    # ---------------------------------------------------------------- aggregates

    def _aggregate(self, conn: sqlite3.Connection, report: Report) -> bool:
        done_to = int(_meta(conn, "aggregated_seq"))
        upto = conn.execute(
            "SELECT max(seq) FROM (SELECT seq FROM readings WHERE seq > ? ORDER BY seq LIMIT ?)",
            (done_to, CHUNK),
        ).fetchone()[0]
        if upto is None:
            return False
        conn.execute("BEGIN")
        try:
            conn.execute(
                """
                INSERT OR REPLACE INTO readings_1m (ward, bed, device, vital, minute, n, min,
                                                     mean, max)
                SELECT r.ward, r.bed, r.device, r.vital, t.minute, count(*), min(r.value),
                       avg(r.value), max(r.value)
                FROM (SELECT DISTINCT ward, bed, device, vital, CAST(ts / 60 AS INTEGER) AS minute
                      FROM readings WHERE seq > ? AND seq <= ?) AS t
                JOIN readings AS r
                  ON r.ward = t.ward AND r.bed = t.bed AND r.device = t.device
                 AND r.vital = t.vital AND r.ts >= t.minute * 60 AND r.ts < (t.minute + 1) * 60
                WHERE r.flag IS NULL
                GROUP BY r.ward, r.bed, r.device, r.vital, t.minute
                """,
                (done_to, upto),
            )
            _set_meta(conn, "aggregated_seq", upto)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        report.aggregated += upto - done_to
        return True

    # -------------------------------------------------------------------- pruning

    def _delete_oldest(
        self, conn: sqlite3.Connection, cutoff_ts: float | None
    ) -> tuple[int, Counter[str]]:
        """Delete up to CHUNK of the oldest aggregated raw readings (older than cutoff_ts)."""
        aggregated = int(_meta(conn, "aggregated_seq"))
        where = "seq IN (SELECT seq FROM readings WHERE seq <= ? ORDER BY seq LIMIT ?)"
        args: list[object] = [aggregated, CHUNK]
        if cutoff_ts is not None:
            where += " AND ts < ?"
            args.append(cutoff_ts)
        dropped: Counter[str] = Counter()
        conn.execute("BEGIN")
        try:
            for sink, cursor in conn.execute("SELECT sink, readings FROM cursors").fetchall():
                n = conn.execute(
                    f"SELECT count(*) FROM readings WHERE {where} AND seq > ?", (*args, cursor)
                ).fetchone()[0]
                if n:
                    dropped[sink] += n
            before = conn.total_changes
            conn.execute(f"DELETE FROM readings WHERE {where}", args)
            deleted = conn.total_changes - before
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        for sink, n in dropped.items():
            log.warning("%d readings pruned before sink %s forwarded them", n, sink)
        return deleted, dropped

    def _prune_age(self, conn: sqlite3.Connection, now: float, report: Report) -> bool:
        deleted, dropped = self._delete_oldest(conn, now - self.cfg.raw_days * DAY)
        report.pruned_age += deleted
        report.dropped.update(dropped)
        if deleted:
            return True
        old = now - self.cfg.aggregate_days * DAY
        conn.execute("DELETE FROM readings_1m WHERE minute < ?", (int(old // 60),))
        self._prune_alerts(conn, old, report)
        return False

    def _prune_alerts(self, conn: sqlite3.Connection, old: float, report: Report) -> None:
        """Alert events older than ``old``, except those an alert route still owes (an
        open outbox row, or after the router's position); what a remote sink had not
        forwarded yet is counted as dropped for it."""
        routed = conn.execute("SELECT value FROM meta WHERE key = ?", (ROUTED,)).fetchone()
        where = f"at < ? AND ev NOT IN ({OWED})"
        args: list[object] = [old]
        if routed is not None:
            where += " AND ev <= ?"
            args.append(int(routed[0]))
        dropped: Counter[str] = Counter()
        conn.execute("BEGIN")
        try:
            for sink, cursor in conn.execute("SELECT sink, alerts FROM cursors").fetchall():
                n = conn.execute(
                    f"SELECT count(*) FROM alert_events WHERE {where} AND ev > ?", (*args, cursor)
                ).fetchone()[0]
                if n:
                    dropped[sink] += n
            before = conn.total_changes
            conn.execute(f"DELETE FROM alert_events WHERE {where}", args)
            deleted = conn.total_changes - before
            kept = conn.execute("SELECT count(*) FROM alert_events WHERE at < ?", (old,)).fetchone()
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        report.kept_alerts = int(kept[0])
        report.dropped_alerts.update(dropped)
        for sink, n in dropped.items():
            log.warning("%d alert events pruned before sink %s forwarded them", n, sink)
        if report.kept_alerts and deleted:
            log.info(
                "%d alert event(s) older than %g days kept: alert routes still owe them",
                report.kept_alerts,
                self.cfg.aggregate_days,
            )

    def _prune_space(self, conn: sqlite3.Connection, report: Report) -> bool:
        used = report.used_bytes = used_bytes(conn)
        if self.max_bytes is None:
            report.below_low_water = True
            return False
        limit = self.max_bytes if not self._space_phase else int(self.max_bytes * 0.9)
        if used <= limit:
            self._space_phase = False
            report.below_low_water = used < self.max_bytes * 0.8
            return False
        self._space_phase = True
        deleted, dropped = self._delete_oldest(conn, None)
        if not deleted:  # nothing raw left to give: the oldest day of aggregates goes
            first = conn.execute("SELECT min(minute) FROM readings_1m").fetchone()[0]
            if first is None:
                log.error("store over its disk bound with nothing left to prune")
                self._space_phase = False
                return False
            before = conn.total_changes
            conn.execute("DELETE FROM readings_1m WHERE minute < ?", (first + 1440,))
            deleted = conn.total_changes - before
        report.pruned_space += deleted
        report.dropped.update(dropped)
        log.warning(
            "store over its disk bound (%d MiB used): pruned %d oldest rows", used // 2**20, deleted
        )
        return True
