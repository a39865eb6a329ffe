"""Faults and hostile input (issue 15): each test failed on the code before its fix.

Real processes where there is I/O (mosquitto, the daemon); pure where the engine alone
is at stake. No sleeps as synchronisation: events, or polls with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from conftest import wait_for

from monitor.config import RulesConfig
from monitor.engine import Engine
from monitor.model import AlertEvent, Reading
from monitor.sources import Batch

T0 = 1764324000.0


# ------------------------------------------------- A1: one input never stops the ward


def test_a_deeply_nested_command_is_dead_lettered_and_the_daemon_goes_on(
    daemon: Any, subscribe: Any, publisher: Any
) -> None:
    """1. ``'[' * 100000 + ']' * 100000`` on vitalmon/cmd/ack (before: RecursionError, the
    TaskGroup failed, the process exited 1, and the broker redelivered the message at
    every restart); 2. it is dead-lettered as bad_command and acknowledged; 3. the daemon
    still alerts on the next reading."""
    d = daemon()
    dead = subscribe("vitalmon/deadletter")
    alerts = subscribe("alerts/#")
    publisher.publish("vitalmon/cmd/ack", b"[" * 100_000 + b"]" * 100_000)
    letter = wait_for(dead.json, 10, "the dead letter")[0]
    assert (letter["reason"], letter["topic"]) == ("bad_command", "vitalmon/cmd/ack")
    assert "nested too deeply" in letter["detail"]
    assert d.proc is not None and d.proc.poll() is None
    publisher.publish("vitalmon/cmd/ack", {"id": "nope", "by": "kim"})  # the next command
    wait_for(lambda: len(dead.json()) >= 2, 10, "the next command handled")
    publisher.publish("vitalmon/cmd/ack", b"[" * 100_000 + b"]" * 100_000)
    publisher.publish("vitalmon/cmd/pause", b"[" * 100_000 + b"]" * 100_000)
    publisher.publish("vitalmon/cmd/admit", b"[" * 100_000 + b"]" * 100_000)
    wait_for(lambda: len(dead.json()) >= 5, 10, "each refused")
    now = time.time()
    publisher.publish("vitals/icu/3/mon", {"ts": now, "temp": 40.1, "mode": "intermittent"})
    wait_for(lambda: [a for a in alerts.json() if a["rule"] == "temp.high"], 10, "an alert")
    assert d.proc.poll() is None
    # a restart finds nothing left to redeliver that could kill it
    code, _s = d.terminate()
    assert code == 0
    d.start()
    assert d.proc.poll() is None


class _Recorder:
    """A sink that keeps what it is given (below the I/O boundary: pure engine test)."""

    name = "recorder"

    def __init__(self) -> None:
        self.written: list[tuple[list[Reading], list[AlertEvent]]] = []
        self.done = 0

    async def open(self) -> None: ...

    async def run(self) -> None: ...

    def close(self) -> None: ...

    async def write(
        self, readings: Sequence[Reading], events: Sequence[AlertEvent], done: Any = None
    ) -> None:
        self.written.append((list(readings), list(events)))
        if done is not None:
            done()
            self.done += 1


def test_a_batch_the_engine_cannot_evaluate_is_stored_and_the_next_one_evaluated() -> None:
    """A batch whose evaluation raises (a defect, or input no check foresaw; here a
    reading whose value is not a number slipped past every source): before, the
    exception ended Engine.run, and with it the daemon's TaskGroup. Now its readings are
    still handed to the sinks and acknowledged, the failure is counted, and the next
    batch raises its alarm as usual."""
    sink = _Recorder()
    eng = Engine(RulesConfig(), [sink], durable=sink)  # type: ignore[list-item]
    bad = Reading(T0, "icu", "1", "mon", "avpu", float("nan"))  # NEWS2: int(nan) raises
    good = Reading(T0 + 1, "icu", "2", "mon", "temp", 40.1, mode="intermittent")

    async def main() -> None:
        task = asyncio.create_task(eng.run())
        await eng.put(Batch([bad], lambda: None, T0))
        await eng.put(Batch([good], lambda: None, T0 + 1))
        eng.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert eng.counts["engine_errors"] == 1
    assert [r.vital for r, _e in [(w[0][0], w[1]) for w in sink.written]] == ["avpu", "temp"]
    assert sink.done == 2  # both acknowledged
    assert [e.rule for e in sink.written[1][1]] == ["temp.high"]


# ------------------------------------------------------------ B15: log injection


def test_a_device_name_cannot_forge_a_log_line(daemon: Any, publisher: Any) -> None:
    """A reading object naming its device ``"mon\\n2026-01-01 forged\\x00\\x1b[2J"`` (short
    enough that the refusal's detail names all of it) with a status under which its value
    is refused: the refusal names the device in the log. Before, the newline went out raw
    and forged a line; now it is ``\\n``, and NUL and ESC are escaped too."""
    d = daemon()
    forged = "mon\n2026-01-01 forged\x00\x1b[2J"
    publisher.publish(
        "vitals/icu/4/x", {"ts": time.time(), "device": forged, "status": "sensor_off", "spo2": 97}
    )
    wait_for(lambda: "rejected input (sensor_flag)" in d.log(), 10, "the refusal logged")
    lines = d.log().splitlines()
    assert not [ln for ln in lines if ln.startswith("2026-01-01")]
    (refused,) = [ln for ln in lines if "rejected input (sensor_flag)" in ln]
    assert "mon\\n2026-01-01 forged\\x00\\x1b[2J" in refused


# ------------------------------------------------------ B16: the store is private


def test_the_store_is_private_whatever_the_umask(
    daemon: Any, publisher: Any, tmp_path: Any
) -> None:
    """Under umask 022 (outside systemd) the store was created 0644 in a 0755 directory,
    readable by every user of the machine, with patient ids in it. Now: the directories
    vitalmon creates are 0700, the database and its WAL and shared-memory files 0600."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        db = tmp_path / "lib" / "vitalmon" / "vitals.db"
        d = daemon(db=db)
        publisher.publish("vitals/icu/4/mon", {"ts": time.time(), "hr": 70, "patient": "p-1"})
        wait_for(lambda: os.path.exists(f"{db}-wal"), 10, "the WAL")
        for path in (db, f"{db}-wal", f"{db}-shm"):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
        for directory in (db.parent, db.parent.parent):
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
        assert d.proc is not None and d.proc.poll() is None
    finally:
        os.umask(old)


# ----------------------------------------- A5: a value a remote cannot take blocks nothing


def test_an_alert_without_a_value_does_not_stop_influxdb_forwarding(
    daemon: Any, publisher: Any, subscribe: Any, victoria: Any
) -> None:
    """1. a complete set scoring NEWS2 >= 7 raises the bed's score alert; 2. the bed is
    discharged: the resolution has no value (NaN in the event, NULL in the store).
    Before, the line encoder raised on it and the forwarder retried that row forever:
    nothing more reached InfluxDB. Now the alert goes without the field and 3. a reading
    published after it is forwarded too."""
    from test_zero_loss import influx_sink

    daemon(store_extra=influx_sink(victoria))
    alerts = subscribe("alerts/#")
    now = time.time()
    seven = {"rr": 30, "spo2": 90, "o2": True, "sbp": 95, "hr": 135, "avpu": "A", "temp": 39.5}
    publisher.publish("vitals/icu/50/mon", {"ts": now - 5, **seven})
    wait_for(lambda: [a for a in alerts.json() if a["rule"] == "news2"], 10, "the score alert")
    publisher.publish("vitalmon/cmd/discharge", {"ward": "icu", "bed": "50", "by": "kim"})
    closed = wait_for(
        lambda: [a for a in alerts.json() if a["rule"] == "news2" and a["state"] == "resolved"],
        10,
        "closed",
    )
    assert closed[0]["value"] is None  # (null in JSON, never NaN)
    publisher.publish("vitals/icu/51/mon", {"ts": now, "hr": 71})
    victoria.wait_for_count(1, '{__name__="vitals_hr",bed="51"}', timeout=15)
    resolved = victoria.wait_for_count(
        1, '{__name__="alerts_seq",rule="news2",state="resolved"}', timeout=15
    )
    assert resolved[0].labels["bed"] == "50"


# ---------------------------------------------------------------- C22: --version


def test_version_is_printed() -> None:
    """``vitalmon --version`` (CONTRACT): before, "the following arguments are required"."""
    import subprocess
    import sys

    from monitor import __version__

    out = subprocess.run(
        [sys.executable, "-m", "monitor", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"vitalmon {__version__}"
