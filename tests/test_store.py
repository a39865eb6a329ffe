"""The SQLite journal on a real database file: durability order, idempotency, migration,
aggregates, retention, the disk bound and forwarding cursors."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from conftest import until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import SqliteStoreConfig
from monitor.model import Reading
from monitor.sinks.sqlite import (
    SCHEMA_VERSION,
    SqliteSink,
    connect,
    get_cursor,
    journal_head,
    query_readings,
    read_readings,
    reading_row,
    set_cursor,
    write_rows,
)

T = TypeVar("T")
T0 = 1764324000.0
DAY = 86400.0


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def readings(
    n: int,
    t0: float = T0,
    step: float = 1.0,
    bed: str = "7",
    vital: str = "hr",
    value: float = 70.0,
) -> list[Reading]:
    return [Reading(t0 + i * step, "icu", bed, "mon", vital, value + i % 7) for i in range(n)]


async def with_sink(path: Path, body: Callable[[SqliteSink], Awaitable[T]], **cfg: Any) -> T:
    sink = SqliteSink(SqliteStoreConfig(path=str(path), **cfg))
    await sink.open()
    task = asyncio.create_task(sink.run())
    try:
        return await body(sink)
    finally:
        sink.close()
        await task
        await sink.release()


def count(path: Path, sql: str = "SELECT count(*) FROM readings") -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def test_done_runs_only_after_commit_and_duplicates_are_absorbed(tmp_path):
    db = tmp_path / "v.db"
    seen: list[int] = []

    async def body(sink: SqliteSink) -> None:
        batch = readings(10)
        done = asyncio.Event()

        def on_done() -> None:
            seen.append(count(db))  # what another connection sees when the ack goes out
            done.set()

        await sink.write(batch, [], on_done)
        await asyncio.wait_for(done.wait(), 5)
        again = asyncio.Event()
        await sink.write(batch[:5], [], again.set)  # redelivered duplicates
        await asyncio.wait_for(again.wait(), 5)
        assert sink.counts["committed"] == 10
        assert sink.counts["duplicates"] == 5
        assert sink.head == 10

    run(lambda: with_sink(db, body))
    assert seen == [10]
    assert count(db) == 10


def test_journal_seq_is_commit_order_and_never_reused(tmp_path):
    db = tmp_path / "v.db"

    async def body(sink: SqliteSink) -> None:
        ev = asyncio.Event()
        await sink.write(readings(5), [], ev.set)
        await asyncio.wait_for(ev.wait(), 5)
        await sink.call(lambda c: c.execute("DELETE FROM readings"))
        ev.clear()
        await sink.write(readings(3, t0=T0 + 100), [], ev.set)
        await asyncio.wait_for(ev.wait(), 5)
        rows = await sink.call(lambda c: read_readings(c, 0, 100))
        assert [r[0] for r in rows] == [6, 7, 8]
        assert await sink.call(journal_head) == (8, 0)

    run(lambda: with_sink(db, body))


def test_cursor_starts_at_end_or_beginning_and_persists(tmp_path):
    db = tmp_path / "v.db"

    async def body(sink: SqliteSink) -> None:
        ev = asyncio.Event()
        await sink.write(readings(4), [], ev.set)
        await asyncio.wait_for(ev.wait(), 5)
        assert await sink.call(lambda c: get_cursor(c, "new", "end")) == (4, 0)
        assert await sink.call(lambda c: get_cursor(c, "backfill", "beginning")) == (0, 0)
        await sink.call(lambda c: set_cursor(c, "backfill", 3, 0))

    run(lambda: with_sink(db, body))

    async def reopen(sink: SqliteSink) -> None:
        assert await sink.call(lambda c: get_cursor(c, "backfill")) == (3, 0)

    run(lambda: with_sink(db, reopen))


def test_schema_v1_is_migrated_with_every_row(tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        """
        CREATE TABLE readings (ward TEXT NOT NULL, bed TEXT NOT NULL, device TEXT NOT NULL,
            vital TEXT NOT NULL, ts REAL NOT NULL, value REAL NOT NULL, patient TEXT,
            PRIMARY KEY (ward, bed, device, vital, ts)) WITHOUT ROWID;
        CREATE INDEX readings_bed_ts ON readings (bed, ts);
        CREATE TABLE alert_events (id TEXT NOT NULL, seq INTEGER NOT NULL, ward TEXT NOT NULL,
            bed TEXT NOT NULL, device TEXT NOT NULL, patient TEXT, vital TEXT NOT NULL,
            rule TEXT NOT NULL, kind TEXT NOT NULL, priority TEXT NOT NULL, state TEXT NOT NULL,
            value REAL, limit_value REAL, message TEXT NOT NULL, started_at REAL NOT NULL,
            at REAL NOT NULL, PRIMARY KEY (id, seq));
        CREATE INDEX alert_events_bed_at ON alert_events (bed, at);
        PRAGMA user_version = 1;
        """
    )
    conn.executemany(
        "INSERT INTO readings VALUES (?,?,?,?,?,?,?)",
        [("icu", "7", "m", "hr", T0 + i, 60 + i, None) for i in (2, 0, 1)],
    )
    conn.execute(
        "INSERT INTO alert_events VALUES ('a',1,'icu','7','m',NULL,'hr','hr.low','physiological',"
        "'high','active',30,40,'m',?,?)",
        (T0, T0),
    )
    conn.commit()
    conn.close()

    async def body(sink: SqliteSink) -> None:
        rows = await sink.call(lambda c: read_readings(c, 0, 10))
        assert [(r[0], r[5]) for r in rows] == [(1, T0), (2, T0 + 1), (3, T0 + 2)]
        (alert,) = await sink.active_alerts()
        assert (alert.id, alert.rule, alert.state) == ("a", "hr.low", "active")
        assert await sink.call(lambda c: c.execute("PRAGMA user_version").fetchone()[0]) == (
            SCHEMA_VERSION
        )

    run(lambda: with_sink(db, body))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.integers(0, 300_000).map(lambda ms: ms / 1000), st.floats(0, 250)),
        min_size=1,
        max_size=200,
        unique_by=lambda p: p[0],
    )
)
def test_minute_aggregates_match_numpy(tmp_path_factory, points):
    db = tmp_path_factory.mktemp("agg") / "v.db"
    rs = [Reading(T0 + t, "icu", "7", "m", "hr", v) for t, v in points]
    half = len(rs) // 2

    async def body(sink: SqliteSink) -> None:
        ev = asyncio.Event()
        await sink.write(rs[:half], [], ev.set)
        await asyncio.wait_for(ev.wait(), 5)
        await sink.maintain(now=T0)
        ev.clear()  # the rest arrives late, into minutes already aggregated
        await sink.write(rs[half:], [], ev.set)
        await asyncio.wait_for(ev.wait(), 5)
        await sink.maintain(now=T0)
        got = await sink.call(
            lambda c: c.execute(
                "SELECT minute, n, min, mean, max FROM readings_1m ORDER BY minute"
            ).fetchall()
        )
        ts = np.array([r.ts for r in rs])
        vals = np.array([r.value for r in rs])
        minutes = np.floor(ts / 60).astype(int)
        want = []
        for m in sorted(set(minutes.tolist())):
            v = vals[minutes == m]
            want.append((m, len(v), v.min(), v.mean(), v.max()))
        assert [(g[0], g[1]) for g in got] == [(w[0], w[1]) for w in want]
        for g, w in zip(got, want, strict=True):
            assert np.allclose(g[2:], w[2:])

    run(lambda: with_sink(db, body))


def test_raw_readings_pruned_by_age_after_aggregation_aggregates_kept(tmp_path):
    db = tmp_path / "v.db"

    async def body(sink: SqliteSink) -> None:
        ev = asyncio.Event()
        await sink.write(readings(120, t0=T0 - 10 * DAY) + readings(60, t0=T0 - 60), [], ev.set)
        await asyncio.wait_for(ev.wait(), 5)
        report = await sink.maintain(now=T0)
        assert report.aggregated == 180
        assert report.pruned_age == 120
        assert (
            await sink.call(lambda c: c.execute("SELECT count(*) FROM readings").fetchone()[0])
            == 60
        )
        n_agg = await sink.call(lambda c: c.execute("SELECT sum(n) FROM readings_1m").fetchone()[0])
        assert n_agg == 180  # the pruned minutes live on as aggregates
        report = await sink.maintain(now=T0 + 400 * DAY)  # past aggregate_days as well
        assert (
            await sink.call(lambda c: c.execute("SELECT count(*) FROM readings_1m").fetchone()[0])
            == 0
        )

    run(lambda: with_sink(db, body, raw_days=7, aggregate_days=365))


def test_disk_bound_prunes_oldest_counts_drops_and_raises_alarm(tmp_path):
    db = tmp_path / "v.db"
    conditions: list[tuple[str, str, bool, str]] = []

    async def body(sink: SqliteSink) -> None:
        sink.on_condition = lambda *condition: conditions.append(condition)
        await sink.call(lambda c: get_cursor(c, "tsdb", "beginning"))  # a remote sink, behind
        ev = asyncio.Event()
        for chunk in range(10):
            ev.clear()
            await sink.write(readings(2000, t0=T0 + chunk * 2000, bed=str(chunk)), [], ev.set)
            await asyncio.wait_for(ev.wait(), 5)
        before = await sink.call(lambda c: c.execute("SELECT min(seq) FROM readings").fetchone()[0])
        report = await sink.maintain(now=T0 + 20000)
        assert report.pruned_space > 0
        assert report.used_bytes <= 1024 * 1024 * 0.9
        after = await sink.call(lambda c: c.execute("SELECT min(seq) FROM readings").fetchone()[0])
        assert after > before  # the oldest went first
        assert report.dropped["tsdb"] == report.pruned_space
        newest = await sink.call(lambda c: c.execute("SELECT max(seq) FROM readings").fetchone()[0])
        assert newest == 20000  # the newest are kept
        assert sink.counts["pruned_space"] == report.pruned_space

    run(lambda: with_sink(db, body, max_mb=1, raw_days=3650))
    raised = [(rule, component, active) for rule, component, active, _ in conditions]
    assert ("store.full", "store", True) in raised
    assert ("sink.dropped", "tsdb", True) in raised


def test_alert_events_pruned_before_a_remote_sink_got_them_are_counted_and_alarmed(tmp_path):
    """Alert events past aggregate_days that a remote sink (its cursor) has not forwarded
    are counted as dropped for it and raise sink.dropped, as readings do: never silent.
    Those it forwarded go without a word."""
    from monitor.model import Priority, new_alert

    db = tmp_path / "v.db"
    conditions: list[tuple[str, str, bool, str]] = []

    def alert(bed: str) -> Any:
        return new_alert(
            ward="icu",
            bed=bed,
            device="mon",
            patient=None,
            vital="hr",
            rule="hr.high",
            kind="physiological",
            priority=Priority.MEDIUM,
            value=130.0,
            limit=120.0,
            message="HR 130 > 120",
            started=T0 - 3 * DAY,
        )

    async def body(sink: SqliteSink) -> None:
        sink.on_condition = lambda *condition: conditions.append(condition)
        await sink.call(lambda c: get_cursor(c, "tsdb", "beginning"))
        ev = asyncio.Event()
        await sink.write([], [alert("1"), alert("2"), alert("3")], ev.set)
        await asyncio.wait_for(ev.wait(), 5)
        # the sink forwarded the first one
        await sink.call(lambda c: c.execute("UPDATE cursors SET alerts = 1 WHERE sink = 'tsdb'"))
        report = await sink.maintain(now=T0)
        assert report.dropped_alerts == {"tsdb": 2}
        assert sink.counts["dropped_alerts[tsdb]"] == 2

    run(lambda: with_sink(db, body, raw_days=1, aggregate_days=1))
    assert count(db, "SELECT count(*) FROM alert_events") == 0
    dropped = [c for c in conditions if c[0] == "sink.dropped"]
    assert dropped == [("sink.dropped", "tsdb", True, "2 alert events pruned before tsdb got them")]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=4e9, allow_nan=False),
            st.floats(allow_nan=False, allow_infinity=False),
            st.one_of(st.none(), st.text(max_size=8)),
        ),
        min_size=1,
        max_size=40,
    ),
    json1=st.booleans(),
)
def test_insert_readings_stores_every_float_exactly(tmp_path, monkeypatch, values, json1):
    """The batch insert (one JSON array unpacked by SQLite, or executemany where SQLite
    has no JSON1) stores each ts and value bit for bit, NULL patients and flags as NULL,
    and ignores a duplicate key."""
    from monitor.sinks import sqlite as store

    monkeypatch.setattr(store, "_json1", lambda: json1)
    db = tmp_path / f"f{json1}.db"
    db.unlink(missing_ok=True)
    conn = store.connect(str(db))
    rows = [
        ("icu", "7", "mon", f"v{i}", ts, v, p, None if i % 2 else "implausible")
        for i, (ts, v, p) in enumerate(values)
    ]
    store.insert_readings(conn, rows)
    store.insert_readings(conn, rows[:1])  # a redelivery: absorbed
    got = conn.execute(
        "SELECT ward, bed, device, vital, ts, value, patient, flag FROM readings ORDER BY seq"
    ).fetchall()
    conn.close()
    assert got == rows


def _schema_v2(db: Path) -> None:
    """A store as vitalmon wrote it before readings had a flag (schema 2)."""
    conn = sqlite3.connect(db)
    conn.executescript(
        """
        CREATE TABLE readings (seq INTEGER PRIMARY KEY AUTOINCREMENT, ward TEXT NOT NULL,
            bed TEXT NOT NULL, device TEXT NOT NULL, vital TEXT NOT NULL, ts REAL NOT NULL,
            value REAL NOT NULL, patient TEXT, UNIQUE (ts, ward, bed, device, vital));
        PRAGMA user_version = 2;
        """
    )
    conn.executemany(
        "INSERT INTO readings (ward, bed, device, vital, ts, value) VALUES (?,?,?,?,?,?)",
        [("icu", "7", "m", "hr", T0 + i, 60 + i) for i in range(3)],
    )
    conn.commit()
    conn.close()


def test_schema_v2_reads_without_flags_and_migrates_keeping_every_row(tmp_path):
    """1. read-only (query/stats/report before the daemon opened it): no flag column, the
    readings read as unflagged; 2. the daemon's connect adds the column, rows kept;
    3. a flagged reading is stored with its flag."""
    db = tmp_path / "v2.db"
    _schema_v2(db)
    got = list(query_readings(str(db), "7"))
    assert [(r[5], r[6]) for r in got] == [(60, None), (61, None), (62, None)]
    conn = connect(str(db))
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        write_rows(
            conn, [reading_row(Reading(T0 + 9, "icu", "7", "m", "hr", 0.0, flag="implausible"))]
        )
    finally:
        conn.close()
    got = list(query_readings(str(db), "7"))
    assert [(r[5], r[6]) for r in got] == [(60, None), (61, None), (62, None), (0.0, "implausible")]


class HangingRemote:
    """A remote whose first send hangs until released (a server answering a byte at a
    time); records what it accepted and how many calls ran at once."""

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self.accepted: list[int] = []
        self._lock = threading.Lock()

    def send(self, rows: Any, alerts: Any) -> None:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            first = self.calls == 1
        try:
            if first:
                self.release.wait(30)
                raise OSError("connection reset")  # (its late outcome: dropped anyway)
            self.accepted += [r[0] for r in rows]
        finally:
            with self._lock:
                self.running -= 1

    def close(self) -> None:
        pass


def test_a_forwarder_gives_a_hung_send_up_and_starts_no_second_one_meanwhile(tmp_path):
    """``send_timeout_s`` bounds a send in all: the hung one fails (``sink.down`` once
    ``down_alarm_s`` has passed), no other send runs alongside it while it has not
    ended, and once it has, the next one forwards everything, in order. ``run()``
    returns at ``close()`` with the hung send still going (nothing waits for it)."""
    from monitor.sinks.forward import Forwarder

    async def body(sink: SqliteSink) -> None:
        remote = HangingRemote()
        fwd = Forwarder(
            "tsdb",
            sink,
            remote,
            start_from="beginning",
            retry_min_s=0.05,
            retry_max_s=0.1,
            down_alarm_s=0.3,
            send_timeout_s=0.2,
        )
        conditions: list[tuple[str, bool]] = []
        fwd.on_condition = lambda cond, _c, active, _d: conditions.append((cond, active))
        await fwd.open()
        done = asyncio.Event()
        await sink.write(readings(20), [], done.set)
        await asyncio.wait_for(done.wait(), 10)
        task = asyncio.create_task(fwd.run())

        def alarmed() -> bool:
            fwd.check()  # (the daemon's heartbeat)
            return fwd.counts["send_errors"] >= 4 and bool(conditions)

        await until(alarmed, what="failures and sink.down")
        assert fwd.counts["send_errors"] >= 4, fwd.counts
        assert remote.calls == 1  # the retries did not reach the remote
        assert conditions == [("sink.down", True)]
        remote.release.set()
        await until(lambda: fwd.counts["forwarded"] == 20, what="the backlog forwarded")
        assert remote.accepted == list(range(1, 21))
        assert remote.most_at_once == 1
        assert conditions == [("sink.down", True), ("sink.down", False)]

        remote.calls = 0  # hang again, then stop: run() returns without waiting for it
        remote.release.clear()
        await sink.write(readings(5, t0=T0 + 100), [], None)
        await until(lambda: remote.running, what="the second hang")
        fwd.close()
        await asyncio.wait_for(task, 2)
        assert fwd.cursor[0] == 20  # the batch not accepted waits in the journal
        remote.release.set()

    asyncio.run(with_sink(tmp_path / "v.db", body))
