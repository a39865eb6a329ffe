"""Zero loss, end to end, with real servers: mosquitto, the daemon as a subprocess, SQLite
and VictoriaMetrics (speaking InfluxDB's /api/v2/write).

Each fault test publishes a stream of QoS 1 readings, injects a fault while it flows,
and then counts every reading published against every reading found in SQLite and in
the TSDB.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from conftest import Broker, DaemonProc, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from tsdb import VictoriaMetrics


def influx_sink(vm: VictoriaMetrics, **extra: Any) -> str:
    opts = {"batch_size": 500, "retry_min_s": 0.2, "retry_max_s": 1.0, **extra}
    lines = "".join(f"    {k}: {v}\n" for k, v in opts.items())
    return (
        f"  - type: influxdb\n    url: {vm.url}\n    org: o\n    bucket: vitals\n"
        f"    token: test\n    start_from: beginning\n{lines}"
    )


class Stream:
    """Publishes ``n`` readings (one vital each) over ``beds`` beds, at ``rate`` per second,
    from a thread, QoS 1, reconnecting through broker restarts; ``published`` counts PUBACKs."""

    def __init__(self, broker: Broker, n: int, beds: int = 50, rate: float = 500.0) -> None:
        self.n, self.beds, self.rate = n, beds, rate
        self.t0 = time.time() - n / rate - 60
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"stream-{id(self)}", clean_session=False
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        self.published = 0
        self._lock = threading.Lock()
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def reading(self, i: int) -> tuple[str, dict[str, Any]]:
        bed = i % self.beds
        return f"vitals/icu/{bed}/mon", {"ts": round(self.t0 + i / self.rate, 3), "hr": 60 + i % 40}

    def _on_publish(self, *_: Any) -> None:
        with self._lock:
            self.published += 1

    def _run(self) -> None:
        start = time.monotonic()
        for i in range(self.n):
            topic, payload = self.reading(i)
            self.client.publish(topic, json.dumps(payload), qos=1)
            ahead = start + (i + 1) / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # pacing the producer, not synchronising the test

    def progress(self) -> int:
        with self._lock:
            return self.published

    def wait_done(self, timeout: float = 60) -> None:
        self.thread.join(timeout)
        wait_for(lambda: self.progress() >= self.n, timeout, f"all {self.n} PUBACKs")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def expected(self) -> set[tuple[str, int]]:
        """(bed, timestamp ms) of every reading published."""
        out = set()
        for i in range(self.n):
            topic, p = self.reading(i)
            out.add((topic.split("/")[2], round(p["ts"] * 1000)))
        return out


def sqlite_rows(db: Path) -> list[tuple[str, float]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT bed, ts FROM readings WHERE vital = 'hr'").fetchall()
    finally:
        conn.close()


def assert_all_stored(db: Path, stream: Stream, vm: VictoriaMetrics | None) -> None:
    want = stream.expected()
    wait_for(lambda: len(sqlite_rows(db)) >= stream.n, 30, f"{stream.n} readings in SQLite")
    rows = sqlite_rows(db)
    assert len(rows) == stream.n  # exactly: no duplicates
    assert {(bed, round(ts * 1000)) for bed, ts in rows} == want
    if vm is not None:
        points = vm.wait_for_count(stream.n, '{__name__="vitals_hr"}', timeout=30)
        assert {(p.labels["bed"], p.ts) for p in points} == want


def test_both_sinks_get_every_reading_and_alert(daemon, broker, victoria, publisher, tmp_path):
    d: DaemonProc = daemon(store_extra=influx_sink(victoria))
    stream = Stream(broker, 1000, beds=10, rate=2000)
    stream.wait_done()
    assert_all_stored(tmp_path / "vitals.db", stream, victoria)
    now = time.time()
    for i in range(20):  # an spo2 alarm: its events reach the TSDB's `alerts` measurement
        publisher.publish("vitals/icu/99/ox", {"ts": now - 30 + i, "spo2": 80})
    points = victoria.wait_for_count(1, '{__name__="alerts_value"}', timeout=15)
    assert points[0].labels["rule"] == "spo2.low"
    assert points[0].labels["state"] == "active"
    assert points[0].labels["priority"] == "high"
    assert points[0].value == 80
    code, _ = d.terminate()
    assert code == 0
    stopped = d.log().rsplit("stopped: ", 1)[1]
    sink = f"influxdb:{victoria.url}/vitals"
    assert "readings_committed 1020," in stopped
    assert f"forwarded[{sink}] 1020," in stopped
    assert f"lag_readings[{sink}] 0," in stopped


def test_tsdb_down_mid_stream_backfills_everything(daemon, broker, victoria, subscribe, tmp_path):
    """1. stream 2000 readings over ~18 s; 2. VictoriaMetrics stopped for 12 s while they
    flow: ingest goes on, `sink.down` is raised after `down_alarm_s` (8 s) of failures;
    3. restarted: the backlog is backfilled, all present in SQLite and the TSDB, and
    `sink.down` resolves."""
    alerts = subscribe("alerts/_system/#")
    d = daemon(store_extra=influx_sink(victoria, down_alarm_s=8))
    db = tmp_path / "vitals.db"
    stream = Stream(broker, 2000, rate=110)
    wait_for(lambda: stream.progress() > 200, 10, "the stream to flow")
    victoria.stop()
    down_at = time.monotonic()
    stopped = len(sqlite_rows(db))
    wait_for(lambda: "send failed" in d.log(), 10, "the forwarder to notice")
    wait_for(lambda: len(sqlite_rows(db)) > stopped + 500, 20, "ingest going on while TSDB down")
    wait_for(lambda: time.monotonic() - down_at >= 12, 20, "12 s of TSDB outage")
    victoria.restart()
    stream.wait_done()
    assert_all_stored(db, stream, victoria)
    wait_for(lambda: len(alerts.json()) >= 2, 10, "sink.down raised and resolved")
    states = [(a["rule"], a["state"], a["kind"]) for a in alerts.json()]
    assert states == [("sink.down", "active", "technical"), ("sink.down", "resolved", "technical")]
    assert d.terminate()[0] == 0


def test_broker_restart_mid_stream_loses_nothing(daemon, broker, victoria, tmp_path):
    d = daemon(store_extra=influx_sink(victoria))
    stream = Stream(broker, 2000, rate=400)
    wait_for(lambda: stream.progress() > 400, 10, "the stream to flow")
    broker.restart()
    stream.wait_done(90)
    assert_all_stored(tmp_path / "vitals.db", stream, victoria)
    assert d.terminate()[0] == 0


def test_sigkill_mid_stream_loses_nothing_and_stores_no_duplicate(
    daemon, broker, victoria, tmp_path
):
    """1. stream; 2. kill -9 the daemon while readings flow; 3. restart it: every reading
    is in SQLite exactly once (redelivered duplicates absorbed) and in the TSDB."""
    d = daemon(store_extra=influx_sink(victoria))
    db = tmp_path / "vitals.db"
    stream = Stream(broker, 4000, rate=800)
    wait_for(lambda: len(sqlite_rows(db)) > 800, 15, "readings stored")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(10)
    d.start()
    stream.wait_done(90)
    assert_all_stored(db, stream, victoria)
    assert d.terminate()[0] == 0


def test_disk_bound_prunes_oldest_and_raises_technical_alarm(daemon, broker, subscribe, tmp_path):
    """A 1 MiB store fills up: the oldest raw readings go, counted, and the technical alarm
    `store.full` is published (high priority), never silently."""
    alerts = subscribe("alerts/#")
    d = daemon(extra="", store_extra="")
    d.terminate()
    cfg = d.config.read_text().replace(
        f"path: {tmp_path / 'vitals.db'}",
        f"path: {tmp_path / 'vitals.db'}\n    max_mb: 1\n    maintenance_interval_s: 0.5",
    )
    d.config.write_text(cfg)
    d.start()
    stream = Stream(broker, 12000, beds=20, rate=4000)
    stream.wait_done(60)
    alarm = wait_for(
        lambda: [a for a in alerts.json() if a["rule"] == "store.full"], 20, "store.full alarm"
    )[0]
    assert (alarm["kind"], alarm["priority"], alarm["state"]) == ("technical", "high", "active")
    assert alarm["ward"] == "_system"
    assert "pruned" in alarm["message"]
    assert "over its disk bound" in d.log()
    conn = sqlite3.connect(tmp_path / "vitals.db")
    kept = conn.execute("SELECT count(*), min(seq), max(seq) FROM readings").fetchone()
    aggregated = conn.execute("SELECT sum(n) FROM readings_1m").fetchone()[0]
    conn.close()
    assert kept[0] < 12000  # pruned ...
    assert kept[2] >= 12000  # ... from the oldest: the newest are there
    assert aggregated == 12000  # every reading still counted in the minute aggregates
    assert d.terminate()[0] == 0
