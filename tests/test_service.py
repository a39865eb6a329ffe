"""The daemon as a system service: sd_notify on a real NOTIFY_SOCKET, the watchdog that
stops when the pipeline is stuck, /metrics and /healthz over HTTP (curl), exit codes."""

from __future__ import annotations

import itertools
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, wait_for


class NotifySocket:
    """A service manager's end: an AF_UNIX datagram socket recording what arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.received: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), data.decode()))

    def times(self, field: str) -> list[float]:
        return [t for t, msg in list(self.received) if field in msg.split("\n")]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    n = NotifySocket(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(n.path))
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")  # WatchdogSec=4: a ping every <= 2 s
    yield n
    n.close()


def http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_ready_watchdog_stuck_store_reload_and_stopping(
    daemon, notify, publisher, subscribe, tmp_path
):
    """1. READY=1 once connected and subscribed, then WATCHDOG=1 at least every
    WatchdogSec/2; 2. the store blocked (another process holds its write lock): the
    daemon goes on alarming in its degraded mode, so the pings go on (a restart would
    only interrupt the alarms), ``store.stalled`` is raised and /healthz says 503;
    released, nothing was lost and /healthz is 200 again; 3. SIGHUP: RELOADING=1 then
    READY=1; 4. SIGTERM: STOPPING=1, exit 0."""
    port = free_port()
    alerts = subscribe("alerts/_system/#")
    d = daemon(f"metrics:\n  listen: 127.0.0.1:{port}\n", start=False)
    d.start()
    ready = wait_for(lambda: notify.times("READY=1"), 5, "READY=1")
    assert "ready:" in d.log()
    wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 3, 10, "three pings")
    pings = notify.times("WATCHDOG=1")
    assert pings[0] >= ready[0] - 0.5
    assert max(b - a for a, b in itertools.pairwise(pings)) <= 2.5
    assert http(f"http://127.0.0.1:{port}/healthz")[0] == 200

    lock = sqlite3.connect(tmp_path / "vitals.db", isolation_level=None, timeout=1)
    lock.execute("BEGIN EXCLUSIVE")  # the journal cannot commit now
    try:
        now = time.time()
        for i in range(50):
            publisher.publish("vitals/icu/1/mon", {"ts": now + i / 100, "hr": 70})
        wait_for(
            lambda: [a for a in alerts.json() if a["rule"] == "store.stalled"], 10, "store.stalled"
        )
        stuck_at = time.monotonic()
        code, body = http(f"http://127.0.0.1:{port}/healthz")
        assert (code, body.startswith("store failing")) == (503, True), body
        wait_for(lambda: [t for t in notify.times("WATCHDOG=1") if t > stuck_at], 5, "pings go on")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    conn = sqlite3.connect(tmp_path / "vitals.db")
    wait_for(
        lambda: conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 50,
        10,
        "all 50 readings committed",
    )
    conn.close()
    wait_for(lambda: http(f"http://127.0.0.1:{port}/healthz")[0] == 200, 10, "healthy again")

    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: notify.times("RELOADING=1"), 5, "RELOADING=1")
    wait_for(lambda: len(notify.times("READY=1")) >= 2, 5, "READY=1 after the reload")
    code, _took = d.terminate()
    assert code == 0
    assert notify.times("STOPPING=1")
    statuses = [m for _t, m in notify.received if m.startswith("STATUS=") or "\nSTATUS=" in m]
    assert statuses  # a one-line summary came with READY


def test_metrics_endpoint_moves_with_readings_and_alerts(daemon, publisher):
    port = free_port()
    daemon(f"metrics:\n  listen: 127.0.0.1:{port}\n")
    url = f"http://127.0.0.1:{port}/metrics"

    def value(text: str, name: str) -> float:
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    before = subprocess.run(
        ["curl", "-sf", url], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    assert value(before, "vitalmon_mqtt_connected") == 1
    now = time.time()
    for i in range(20):
        publisher.publish("vitals/icu/3/ox", {"ts": now - 25 + i, "spo2": 80})
    publisher.publish("vitals/icu/3/ox", b"{not json")

    def moved() -> str | None:
        text = subprocess.run(
            ["curl", "-sf", url], capture_output=True, text=True, timeout=10, check=True
        ).stdout
        ok = (
            value(text, "vitalmon_readings_committed_total") >= 20
            and value(text, "vitalmon_alert_events_total") >= 1
            and value(text, "vitalmon_readings_rejected_total") >= 1
        )
        return text if ok else None

    text = wait_for(moved, 10, "counters moving")
    assert value(before, "vitalmon_readings_committed_total") == 0
    assert (
        'vitalmon_alert_events_total{kind="physiological",priority="high",state="active"}' in text
    )
    assert 'vitalmon_readings_rejected_total{cause="malformed_json"} 1.0' in text
    assert value(text, "vitalmon_ingest_to_alert_seconds_count") >= 1
    assert "process_resident_memory_bytes" in text
