"""Rows of the journal: readings and alert events as rows and back, the journal's head,
the remote sinks' cursors on it, and reading it (forwarders, ``vitalmon query``)."""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

from monitor.model import AlertEvent, AlertState, Priority, Reading
from monitor.sinks.sqlite.schema import _ALERT_COLS, _INSERT_COLS, connect


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
