"""End to end: `vitalmon run` as a subprocess against a real mosquitto and a real SQLite file."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, DaemonProc, Publisher, wait_for


def stored(db: Path, vital: str | None = None) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        sql = "SELECT count(*) FROM readings" + (" WHERE vital = ?" if vital else "")
        return int(conn.execute(sql, (vital,) if vital else ()).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def series(values: list[float], end: float, vital: str = "spo2") -> list[dict[str, Any]]:
    """Readings one second apart ending at ``end``."""
    n = len(values)
    return [{"ts": end - (n - 1 - i), vital: v} for i, v in enumerate(values)]


def publish_all(pub: Publisher, topic: str, readings: list[dict[str, Any]]) -> None:
    for r in readings:
        pub.publish(topic, r)


def query(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", "query", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_acceptance_raise_resolve_garbage_sigterm_query(daemon, subscribe, publisher, tmp_path):
    """The issue's acceptance run.

    1. 70 spo2 readings one second apart ending now: 97 x10, 82 x30, 97 x30.
    2. Publish the first 40: exactly one alert, high, active, within 2 s.
    3. Garbage payloads: nothing changes (no alert event, daemon alive).
    4. Publish the last 30: the same id, resolved.
    5. SIGTERM: exit 0 within 5 s; `vitalmon query` lists all 70 readings.
    """
    d: DaemonProc = daemon()
    alerts = subscribe("alerts/#")
    readings = series([97] * 10 + [82] * 30 + [97] * 30, end=time.time())
    t0 = time.monotonic()
    publish_all(publisher, "vitals/icu/7/mon1", readings[:40])
    first = wait_for(lambda: alerts.json(), 2.0, "the alert")
    assert time.monotonic() - t0 < 3.0
    assert len(first) == 1
    a = first[0]
    assert (a["vital"], a["priority"], a["state"], a["rule"], a["kind"]) == (
        "spo2",
        "high",
        "active",
        "spo2.low",
        "physiological",
    )
    assert (a["ward"], a["bed"], a["device"], a["seq"]) == ("icu", "7", "mon1", 1)
    assert a["value"] == 82 and a["limit"] == 85
    assert a["message"] == "SpO2 82 % < 85 % for 15 s"
    assert a["started_at"].endswith("Z") and a["at"].endswith("Z")

    for garbage in (
        b"{not json",
        b"\xff\xfe",
        b"[1,2,3]",
        b'{"spo2": "low"}',
        b'{"spo2": 1e999}',
        b'{"spo2": 150}',
        b'{"bogus": 1}',
        b"x" * (65 * 1024),
        b"",
    ):
        publisher.publish("vitals/icu/7/mon1", garbage)
    publish_all(publisher, "vitals/icu/7/mon1", readings[40:])
    wait_for(lambda: len(alerts.json()) >= 2, 5, "the recovery")
    events = alerts.json()
    assert len(events) == 2
    assert events[1]["id"] == a["id"]
    assert events[1]["state"] == "resolved" and events[1]["seq"] == 2

    wait_for(lambda: stored(tmp_path / "vitals.db") >= 70, 5, "70 stored")
    code, took = d.terminate()
    assert code == 0, d.log()
    assert took < 5.0
    out = query(d.config, "--bed", "7", "--vital", "spo2", "--format", "csv")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "ts,ward,bed,device,vital,value"
    assert len(lines) == 71
    assert [float(line.rsplit(",", 1)[1]) for line in lines[1:]] == [r["spo2"] for r in readings]


def test_escalation_keeps_id_and_raises_priority(daemon, subscribe, publisher):
    daemon()
    alerts = subscribe("alerts/#")
    end = time.time()
    # 88 (warn) for 20 s, then 80 (crit) for 20 s, then 95 (clear)
    publish_all(publisher, "vitals/icu/3/ox", series([88] * 20 + [80] * 20 + [95], end))
    wait_for(lambda: len(alerts.json()) >= 3, 5, "raise, escalate, resolve")
    ev = alerts.json()
    assert [(e["state"], e["priority"]) for e in ev] == [
        ("active", "medium"),
        ("active", "high"),
        ("resolved", "high"),
    ]
    assert len({e["id"] for e in ev}) == 1
    assert [e["seq"] for e in ev] == [1, 2, 3]
    assert ev[0]["started_at"] == ev[1]["started_at"]


def test_batch_and_senml_payloads(daemon, publisher, tmp_path):
    d = daemon()
    now = time.time()
    publisher.publish(
        "vitals/icu/4/mon",
        [{"ts": now - 1, "hr": 70, "rr": 14}, {"ts": now, "hr": 71, "temp": 36.9}],
    )
    publisher.publish(
        "vitals/icu/4/ox",
        [
            {"bn": "urn:dev:mac:0024befffe804ff1:", "bt": now - 2},
            {"n": "SpO2", "u": "%", "v": 96},
            {"n": "pulse", "u": "beat/min", "v": 71, "t": 1},
        ],
    )
    db = tmp_path / "vitals.db"
    wait_for(lambda: stored(db) >= 6, 5, "6 readings")
    out = query(d.config, "--bed", "4", "--format", "json")
    rows = json.loads(out.stdout)
    got = sorted((r["device"], r["vital"], r["value"]) for r in rows)
    assert got == sorted(
        [
            ("mon", "hr", 70),
            ("mon", "rr", 14),
            ("mon", "hr", 71),
            ("mon", "temp", 36.9),
            ("ox", "spo2", 96),
            ("ox", "hr", 71),
        ]
    )


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{oops", "malformed_json"),
        (b"\xc3\x28", "not_utf8"),
        (b'"just a string"', "bad_shape"),
        (b'{"hr": "seventy", "rr": 14}', "wrong_type"),
        (b'{"hr": NaN, "rr": 14}', "not_finite"),
        (b'{"hr": Infinity, "rr": 14}', "not_finite"),
        (b'{"hr": 400, "rr": 14}', "implausible"),
        (b'{"spo2": 101, "rr": 14}', "implausible"),
        (b'{"glucose": 5.5, "rr": 14}', "unknown_vital"),
        (b'{"ts": "2026-11-28T10:00:00", "rr": 14}', "bad_ts"),
        (b"[" + b'{"rr": 14},' * 6000 + b'{"rr": 14}]', "too_large"),
    ],
)
def test_bad_input_is_dead_lettered_and_good_neighbours_kept(
    daemon, subscribe, publisher, tmp_path, payload, reason
):
    d = daemon()
    dead = subscribe("vitalmon/deadletter")
    publisher.publish("vitals/icu/9/mon", payload)
    publisher.publish("vitals/icu/9/mon", {"hr": 66})  # a good reading right after
    letters = wait_for(lambda: dead.json(), 5, "a dead letter")
    assert letters[0]["reason"] == reason
    assert letters[0]["topic"] == "vitals/icu/9/mon"
    db = tmp_path / "vitals.db"
    keeps_neighbour = b'"rr": 14' in payload and reason != "too_large" and reason != "bad_ts"
    wait_for(lambda: stored(db, "hr") >= 1, 5, "the good reading after it")
    if keeps_neighbour:
        wait_for(lambda: stored(db, "rr") == 1, 5, "the good field next to the bad one")
    assert d.proc is not None and d.proc.poll() is None


def test_unknown_topic_level_is_dead_lettered(daemon, subscribe, publisher):
    daemon()
    dead = subscribe("vitalmon/deadletter")
    publisher.publish("vitals/icu//mon", {"hr": 70})  # empty bed level
    letters = wait_for(lambda: dead.json(), 5, "a dead letter")
    assert letters[0]["reason"] == "bad_topic"


def test_status_topic_online_offline_and_last_will(daemon, broker, subscribe):
    d = daemon()
    status = subscribe("vitalmon/status/#")
    wait_for(lambda: b"online" in [p for _, p in status.messages], 5, "online")
    code, _ = d.terminate()
    assert code == 0
    wait_for(lambda: status.messages[-1][1] == b"offline", 5, "offline on clean stop")
    d.start()
    wait_for(lambda: status.messages[-1][1] == b"online", 5, "online again")
    d.kill()  # kill -9: the broker publishes the Last Will
    wait_for(lambda: status.messages[-1][1] == b"offline", 10, "Last Will offline")


def test_persistent_session_delivers_readings_published_while_away(daemon, publisher, tmp_path):
    """1. daemon up (session created); 2. SIGTERM; 3. publish 100 readings;
    4. restart: all 100 arrive from the broker's session queue."""
    d = daemon()
    code, _ = d.terminate()
    assert code == 0
    now = time.time()
    publish_all(
        publisher, "vitals/icu/5/mon", [{"ts": now - 100 + i, "hr": 70} for i in range(100)]
    )
    d.start()
    wait_for(lambda: stored(tmp_path / "vitals.db") == 100, 10, "100 readings after restart")


def test_broker_restart_loses_nothing(daemon, broker, publisher, tmp_path):
    """1. 50 readings; 2. broker restarts (daemon reconnects, jittered backoff);
    3. 50 more from a new publisher: all 100 stored."""
    d = daemon()
    db = tmp_path / "vitals.db"
    now = time.time()
    publish_all(publisher, "vitals/icu/6/mon", [{"ts": now - 200 + i, "rr": 15} for i in range(50)])
    wait_for(lambda: stored(db) == 50, 5, "first 50")
    broker.restart()
    wait_for(lambda: "connection lost" in d.log(), 5, "daemon saw the broker go")
    pub2 = Publisher(broker.port)
    try:
        publish_all(pub2, "vitals/icu/6/mon", [{"ts": now - 100 + i, "rr": 15} for i in range(50)])
    finally:
        pub2.close()
    wait_for(lambda: stored(db) == 100, 15, "all 100 after the broker restart")
    assert "reconnecting in" in d.log()


def test_sigterm_mid_stream_drains_and_session_redelivers(daemon, broker, publisher, tmp_path):
    """1. 3000 readings published as fast as possible; 2. SIGTERM while they flow:
    exit 0 within 5 s; 3. restart: whatever was not taken in is redelivered, so all
    3000 end up stored, none twice."""
    d = daemon()
    db = tmp_path / "vitals.db"
    now = time.time()
    for i in range(3000):
        publisher.client.publish(
            "vitals/icu/8/mon", json.dumps({"ts": now - 3000 + i, "hr": 80}), qos=1
        )
    wait_for(lambda: stored(db) > 0, 10, "the stream to start arriving")
    code, took = d.terminate(signal.SIGTERM)
    assert code == 0, d.log()
    assert took < 5.0
    d.start()
    wait_for(lambda: stored(db) == 3000, 30, "all 3000 after restart")
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(DISTINCT ts) FROM readings").fetchone()[0] == 3000
    conn.close()


def test_bad_config_fails_before_connecting(tmp_path, broker):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("mqtt:\n  port: 70000\nsources:\n  - type: mqtt\n    topic: vitals/{ward}\n")
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "run", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 2  # invalid configuration: systemd does not restart it
    assert "mqtt.port" in out.stderr and "sources[0].topic" in out.stderr


def test_unreachable_broker_does_not_stop_the_daemon(tmp_path, broker):
    """The broker is down at start: the daemon keeps retrying, then connects."""
    from conftest import free_port, write_config

    port = free_port()
    cfg = write_config(tmp_path / "c.yaml", port, tmp_path / "v.db")
    d = DaemonProc(cfg, port, tmp_path / "d.log")
    d.proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "-c", str(cfg)],
        stdout=d.logfile.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: d.log().count("cannot connect") >= 2, 10, "two retries")
        late = Broker(port, tmp_path / "late")
        late.workdir.mkdir()
        late.start()
        try:
            wait_for(lambda: "ready:" in d.log(), 10, "connected once the broker is up")
            code, _ = d.terminate()
            assert code == 0
        finally:
            late.stop()
    finally:
        d.kill()


def test_sigint_stops_cleanly_with_everything_stored(daemon, publisher, tmp_path):
    d = daemon()
    now = time.time()
    publish_all(publisher, "vitals/w2/12/mon", [{"ts": now - 10 + i, "hr": 72} for i in range(10)])
    wait_for(lambda: stored(tmp_path / "vitals.db") == 10, 5, "10 stored")
    code, took = d.terminate(signal.SIGINT)
    assert code == 0, d.log()
    assert took < 5.0
    assert "stopped:" in d.log()


def test_alert_active_at_stop_resolves_after_restart_with_same_id(daemon, subscribe, publisher):
    """1. raise an spo2 alert; 2. SIGTERM; 3. restart; 4. a normal reading: the recovery
    is published for the same alert id, seq 2 (recovery is always emitted)."""
    d = daemon()
    alerts = subscribe("alerts/#")
    now = time.time()
    publish_all(publisher, "vitals/icu/2/ox", series([80] * 20, now - 5))
    raised = wait_for(alerts.json, 5, "the alert")[0]
    code, _ = d.terminate()
    assert code == 0
    d.start()
    assert "carried over 1 active alert" in d.log()
    publisher.publish("vitals/icu/2/ox", {"ts": now, "spo2": 97})
    wait_for(lambda: len(alerts.json()) == 2, 5, "the recovery after restart")
    resolved = alerts.json()[1]
    assert resolved["id"] == raised["id"]
    assert (resolved["state"], resolved["seq"]) == ("resolved", 2)
