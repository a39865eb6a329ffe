"""The outbox in the journal (table ``outbox``): which alert events each route owes its
receiver, and what became of them. Every function runs in the store's thread
(:meth:`~monitor.sinks.sqlite.SqliteSink.call`) and is one transaction.

A row is ``(route, ev)``: the alert event ``alert_events.ev`` routed to ``route``, in one
of these states:

* ``pending``: to be delivered, in ``ev`` order;
* ``held``: its bed was paused when its turn came (the pause holds it, as it holds the
  MQTT publication); released when the pause ends (:func:`release`);
* ``delivered``: the receiver accepted it;
* ``superseded``: held, and at the pause's end a later event of the same alert went
  instead (or had already gone: a breakthrough);
* ``skipped``: held, and at the pause's end it was the recovery of an alert this route
  never delivered (nobody was told of the alert, so nobody is told it is over);
* ``rejected``: the receiver refused it for good, ``reject_after`` times (an HTTP 4xx
  about the request, HL7 ``AR``): given up, so that the route's later events go;
* ``lost``: its alert event is no longer in the journal (deleted before it went, by a
  retention of an older vitalmon, or by hand): it cannot be sent. Retention keeps the
  events of open rows (:mod:`monitor.sinks.retention`), so this should not happen; when
  it does, the deliverer counts, logs and alarms it instead of waiting for it forever.

The router's position is the ``meta`` row :data:`CURSOR`: the last ``alert_events.ev``
routed. It is not a ``cursors`` row: those are remote sinks' positions in the readings
too, and retention counts the readings pruned before each of them had them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from monitor.model import AlertEvent
from monitor.sinks.sqlite import _ALERT_COLS, _alert_event, journal_head, read_alerts, rollback

#: ``meta`` key of the router's position (the last ``alert_events.ev`` routed).
CURSOR = "outbox.routed_ev"
OPEN = ("pending", "held")
DONE = ("delivered", "superseded", "skipped", "rejected", "lost")

_A_COLS = ", ".join(f"a.{c.strip()}" for c in _ALERT_COLS.split(","))


@dataclass(frozen=True, slots=True)
class Row:
    """An outbox row with its alert event."""

    ev: int
    status: str
    routed_at: float
    event: AlertEvent


def start(conn: sqlite3.Connection) -> int:
    """The router's position; on its first start, the journal's end (routes take the
    events from now on, not the journal's past)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (CURSOR,)).fetchone()
    if row is not None:
        return int(row[0])
    head = journal_head(conn)[1]
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (CURSOR, head))
    return head


def forget(conn: sqlite3.Connection) -> None:
    """No route is configured: the position goes, so that routes configured later
    start from their own start, not from the events of the time without routes."""
    conn.execute("DELETE FROM meta WHERE key = ?", (CURSOR,))


def route(
    conn: sqlite3.Connection,
    routes_of: Callable[[AlertEvent], Iterable[str]],
    limit: int,
    now: float,
) -> tuple[int, int, dict[str, int]]:
    """Route the next ``limit`` alert events after the position: a ``pending`` row per
    (route it matches, event), and the position moved past them, in one transaction
    (exactly once, whatever crashes). -> (events read, the new position, rows made per
    route)."""
    made: dict[str, int] = {}
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (CURSOR,)).fetchone()
        after = int(row[0]) if row is not None else journal_head(conn)[1]
        events = read_alerts(conn, after, limit)
        rows = []
        for ev, e in events:
            for name in routes_of(e):
                rows.append((name, ev, e.id, str(e.state), now))
                made[name] = made.get(name, 0) + 1
        conn.executemany(
            "INSERT OR IGNORE INTO outbox (route, ev, alert, state, status, routed_at)"
            " VALUES (?, ?, ?, ?, 'pending', ?)",
            rows,
        )
        if events:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key)"
                " DO UPDATE SET value = excluded.value",
                (CURSOR, events[-1][0]),
            )
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    return len(events), events[-1][0] if events else after, made


def pending(
    conn: sqlite3.Connection, name: str, limit: int, now: float
) -> tuple[list[Row], list[tuple[int, str]]]:
    """The route's next ``pending`` rows, in ``ev`` order, with their events; a row whose
    event is no longer in the journal is marked ``lost`` here. -> (rows, lost rows as
    (ev, alert id))."""
    rows = conn.execute(
        f"SELECT o.ev, o.status, o.routed_at, o.alert, a.ev IS NULL, {_A_COLS} FROM outbox o"
        " LEFT JOIN alert_events a ON a.ev = o.ev"
        " WHERE o.route = ? AND o.status = 'pending' ORDER BY o.ev LIMIT ?",
        (name, limit),
    ).fetchall()
    lost = [(int(r[0]), str(r[3])) for r in rows if r[4]]
    _lose(conn, name, [ev for ev, _ in lost], now)
    return [Row(int(r[0]), r[1], float(r[2]), _alert_event(r[5:])) for r in rows if not r[4]], lost


def held(
    conn: sqlite3.Connection, name: str, now: float
) -> tuple[list[tuple[str, str, str]], list[tuple[int, str]]]:
    """The alerts the route holds rows of: (alert id, ward, bed); held rows whose event is
    no longer in the journal are marked ``lost`` first. -> (alerts, lost rows as (ev,
    alert id))."""
    lost = [
        (int(ev), str(alert))
        for ev, alert in conn.execute(
            "SELECT o.ev, o.alert FROM outbox o WHERE o.route = ? AND o.status = 'held'"
            " AND NOT EXISTS (SELECT 1 FROM alert_events a WHERE a.ev = o.ev)",
            (name,),
        )
    ]
    _lose(conn, name, [ev for ev, _ in lost], now)
    alerts = conn.execute(
        "SELECT DISTINCT o.alert, a.ward, a.bed FROM outbox o JOIN alert_events a"
        " ON a.ev = o.ev WHERE o.route = ? AND o.status = 'held'",
        (name,),
    ).fetchall()
    return alerts, lost


def _lose(conn: sqlite3.Connection, name: str, evs: list[int], now: float) -> None:
    conn.executemany(
        "UPDATE outbox SET status = 'lost', done_at = ? WHERE route = ? AND ev = ?"
        " AND status IN ('pending', 'held')",
        [(now, name, ev) for ev in evs],
    )


def open_rows(conn: sqlite3.Connection, name: str) -> tuple[int, float | None]:
    """Rows of the route not done yet (pending or held), and the oldest one's routing
    time (None: none)."""
    row = conn.execute(
        "SELECT count(*), min(routed_at) FROM outbox WHERE route = ?"
        " AND status IN ('pending', 'held')",
        (name,),
    ).fetchone()
    return int(row[0]), row[1]


def finish(conn: sqlite3.Connection, name: str, evs: Iterable[int], now: float) -> None:
    """The receiver accepted these rows."""
    conn.executemany(
        "UPDATE outbox SET status = 'delivered', done_at = ? WHERE route = ? AND ev = ?",
        [(now, name, ev) for ev in evs],
    )


def reject(conn: sqlite3.Connection, name: str, ev: int, now: float) -> None:
    """The receiver refused the row for good: given up."""
    conn.execute(
        "UPDATE outbox SET status = 'rejected', done_at = ? WHERE route = ? AND ev = ?"
        " AND status = 'pending'",
        (now, name, ev),
    )


def hold(conn: sqlite3.Connection, name: str, ev: int) -> None:
    """The row's bed is paused: it waits for the pause's end."""
    conn.execute(
        "UPDATE outbox SET status = 'held' WHERE route = ? AND ev = ? AND status = 'pending'",
        (name, ev),
    )


def release(conn: sqlite3.Connection, name: str, alert: str, now: float) -> tuple[int, int]:
    """The pause that held ``alert``'s rows has ended: its latest held row goes (it is
    ``pending`` again, in its place by ``ev``) and the older ones are ``superseded``;
    all are superseded if a later row of the alert was already delivered (a breakthrough
    during the pause); all are ``skipped`` when the latest is a recovery and the route
    never delivered the alert. -> (superseded, skipped)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute(
            "SELECT o.ev, a.state FROM outbox o JOIN alert_events a ON a.ev = o.ev"
            " WHERE o.route = ? AND o.alert = ? AND o.status = 'held' ORDER BY o.ev",
            (name, alert),
        ).fetchall()
        if not rows:
            conn.execute("COMMIT")
            return 0, 0
        latest, state = int(rows[-1][0]), rows[-1][1]
        delivered = [
            int(r[0])
            for r in conn.execute(
                "SELECT ev FROM outbox WHERE route = ? AND alert = ? AND status = 'delivered'",
                (name, alert),
            )
        ]
        give_up = "superseded"
        if any(ev > latest for ev in delivered):
            gone = [int(r[0]) for r in rows]
        elif state == "resolved" and not delivered:
            gone, give_up = [int(r[0]) for r in rows], "skipped"
        else:
            gone = [int(r[0]) for r in rows[:-1]]
            conn.execute(
                "UPDATE outbox SET status = 'pending' WHERE route = ? AND ev = ?", (name, latest)
            )
        conn.executemany(
            "UPDATE outbox SET status = ?, done_at = ? WHERE route = ? AND ev = ?",
            [(give_up, now, name, ev) for ev in gone],
        )
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    n = len(gone)
    return (n, 0) if give_up == "superseded" else (0, n)


def prune(
    conn: sqlite3.Connection,
    before: float,
    announced_before: float,
    forget: Iterable[str] = (),
) -> int:
    """Forget rows done before ``before`` (wall clock), except the record that a route
    announced an alert still open: its latest ``delivered`` row stays while no
    resolution of the alert is done for that route (:func:`release` decides from it
    whether the end of an alert held by a pause goes), up to ``announced_before``. Routes
    in ``forget`` never get a resolution (their match leaves them out): nothing is kept
    for them. -> rows deleted."""
    done = ", ".join(f"'{s}'" for s in DONE)
    skip = list(forget)
    marks = ", ".join("?" for _ in skip)
    cur = conn.execute(
        f"DELETE FROM outbox WHERE status IN ({done}) AND done_at < ? AND NOT ("
        " status = 'delivered' AND done_at >= ?"
        f" AND route NOT IN ({marks})"
        " AND ev = (SELECT max(d.ev) FROM outbox d WHERE d.route = outbox.route"
        "  AND d.alert = outbox.alert AND d.status = 'delivered')"
        " AND NOT EXISTS (SELECT 1 FROM outbox r WHERE r.route = outbox.route"
        f"  AND r.alert = outbox.alert AND r.state = 'resolved' AND r.status IN ({done})))",
        (before, announced_before, *skip),
    )
    return cur.rowcount


def strays(conn: sqlite3.Connection, names: Iterable[str]) -> dict[str, int]:
    """Open rows of routes no longer configured (they wait for their route to return)."""
    known = set(names)
    rows = conn.execute(
        "SELECT route, count(*) FROM outbox WHERE status IN ('pending', 'held') GROUP BY route"
    ).fetchall()
    return {r: int(n) for r, n in rows if r not in known}
