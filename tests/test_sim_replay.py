"""``python -m simulators replay``: a recorded CSV over MQTT into the real daemon.

The daemon evaluates rules on event time, so replaying the same recording with the same
pinned start gives the same alerts, ids included, at ``--speed max`` and at 600x, and
they are the alerts ``vitalmon replay`` computes offline from the same readings.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, DaemonProc, Subscriber, wait_for

from monitor.config import RulesConfig
from monitor.engine import Engine
from monitor.model import Reading
from monitor.replay import DEFAULT_START, load_csv
from simulators.replay import Message, event_start, plan

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
S25047 = DATA / "s25047-2704-05-04-10-44n.csv"
#: minutes 30-61 of s25047: the two deep desaturations, tachycardia, tachypnoea
FROM_S, TO_S = 1800.0, 3660.0
#: the daemon's default rules: nothing is fitted to the recording's sampling (the minute
#: numerics are continuous by their own cadence, the cuff intermittent); only the
#: silence alarm is kept out of the comparison
RULES = "  stale_after_s: 3600\n"


Run = tuple[subprocess.CompletedProcess[str], float]


def sim(port: int, *args: str, timeout: float = 60) -> Run:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "simulators", "replay", *args, "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )
    return proc, time.monotonic() - t0


def stored(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # not created yet
    finally:
        conn.close()


def offline(start: float, ward: str, bed: str) -> tuple[list[dict[str, Any]], int]:
    """What the engine raises on the slice with the default rules (as vitalmon replay),
    with the same event times -> (alert events as JSON, readings)."""
    rec = load_csv(S25047, bed, ward, start)
    readings = [r for r in rec.readings if FROM_S <= r.ts - start < TO_S]
    events = Engine(RulesConfig(), sinks=[]).process(readings)
    # (technical alarms are left out on both sides: the daemon's silence alarms have no
    # offline counterpart)
    return [e.to_json() for e in events if e.kind != "technical"], len(readings)


def physiological(sub: Subscriber, skip: int = 0) -> list[dict[str, Any]]:
    return [e for e in sub.json("alerts/")[skip:] if e["kind"] != "technical"]


def all_stored(db: Path, n: int) -> bool:
    return stored(db) == n


def all_alerts(sub: Subscriber, skip: int, n: int) -> bool:
    return len(physiological(sub, skip)) >= n


def key(e: dict[str, Any]) -> tuple[str, str, int]:
    return e["at"], e["id"], e["seq"]


def test_daemon_alerts_are_the_same_at_max_and_600x(
    tmp_path: Path,
    broker: Broker,
    daemon: Callable[..., DaemonProc],
    subscribe: Callable[[str], Subscriber],
) -> None:
    start = float(int(time.time()) - 4000)  # pinned: the slice ends ~6 min ago
    expected, n_readings = offline(start, "icu", "7")
    assert n_readings > 100
    rules = {e["rule"] for e in expected}
    assert {"spo2.low", "hr.high", "rr.high"} <= rules  # the slice is the interesting part
    alerts = subscribe("alerts/#")
    args = [
        str(S25047),
        "--bed",
        "7",
        "--ward",
        "icu",
        "--start-ts",
        f"{start:.0f}",
        "--from-s",
        f"{FROM_S:g}",
        "--to-s",
        f"{TO_S:g}",
    ]
    runs: dict[str, list[dict[str, Any]]] = {}
    walls: dict[str, float] = {}
    for speed in ("max", "600"):
        db = tmp_path / f"speed-{speed}.db"
        d = daemon(RULES, db=db)
        skip = len(alerts.json("alerts/"))
        proc, walls[speed] = sim(broker.port, *args, "--speed", speed)
        assert proc.returncode == 0, proc.stderr
        wait_for(partial(all_stored, db, n_readings), 20, f"{n_readings} readings stored")
        with contextlib.suppress(AssertionError):  # compared below, the difference shown
            wait_for(partial(all_alerts, alerts, skip, len(expected)), 10, "the alerts")
        assert d.terminate()[0] == 0
        runs[speed] = physiological(alerts, skip)

    assert sorted(runs["max"], key=key) == sorted(expected, key=key)
    assert sorted(runs["600"], key=key) == sorted(runs["max"], key=key)
    span = TO_S - 60 - FROM_S  # first to last sample of the slice
    assert walls["600"] >= span / 600  # really paced: 3.1 s of publishing
    assert walls["max"] < walls["600"]


def test_daemon_equals_replay_on_an_hourly_chart(
    tmp_path: Path,
    broker: Broker,
    daemon: Callable[..., DaemonProc],
    subscribe: Callable[[str], Subscriber],
) -> None:
    """s25047 charted once every 5 min (a wearable's cadence: every series intermittent
    by its own interval, the cuff by the simulator's word): the daemon's alerts over MQTT
    equal what ``vitalmon replay``'s engine raises offline on the same readings."""
    chart = tmp_path / "chart.csv"
    head, *rows = S25047.read_text().splitlines()
    kept = [ln for ln in rows if int(float(ln.split(",")[0])) % 300 == 0]
    chart.write_text("\n".join([head, *kept]) + "\n")
    start = float(int(time.time()) - 6000)
    rec = load_csv(chart, "8", "icu", start)
    assert rec.interval_s == 300
    events = Engine(RulesConfig(), sinks=[]).process(list(rec.readings))
    expected = [e.to_json() for e in events if e.kind != "technical"]
    assert {"spo2.low", "map.low"} <= {e["rule"] for e in expected}
    alerts = subscribe("alerts/#")
    db = tmp_path / "chart.db"
    d = daemon(RULES, db=db)
    proc, _ = sim(
        broker.port,
        str(chart),
        "--bed",
        "8",
        "--ward",
        "icu",
        "--start-ts",
        f"{start:.0f}",
        "--speed",
        "max",
    )
    assert proc.returncode == 0, proc.stderr
    wait_for(partial(all_stored, db, len(rec.readings)), 20, "every reading stored")
    with contextlib.suppress(AssertionError):  # compared below, the difference shown
        wait_for(partial(all_alerts, alerts, 0, len(expected)), 10, "the alerts")
    assert d.terminate()[0] == 0
    assert sorted(physiological(alerts), key=key) == sorted(expected, key=key)


def test_start_now_stamps_the_last_reading_when_it_is_sent(
    tmp_path: Path, broker: Broker, subscribe: Callable[[str], Subscriber]
) -> None:
    csv = tmp_path / "short.csv"
    rows = ["time_s,HR,SpO2,NBPSys,NBPDias,NBPMean"]
    rows += [f"{t},{80 + t % 7},{97 - t % 3},,," for t in range(0, 120, 2)]
    rows[-1] = "118,81,96,120,80,93"
    csv.write_text("\n".join(rows) + "\n")
    vitals = subscribe("vitals/#")
    for speed, wall in (("max", 0.0), ("60", 118 / 60)):
        before = time.time()
        proc, _ = sim(broker.port, str(csv), "--bed", "3", "--ward", "w", "--speed", speed)
        after = time.time()
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: len(vitals.messages) >= 121, 10, "121 messages")
        with vitals._lock:
            got = list(vitals.messages)
            vitals.messages.clear()
        assert len(got) == 121  # 60 instants x (ecg, pleth) + one nibp
        objs = [(t, json.loads(p)) for t, p in got]
        assert {t for t, _ in objs} == {"vitals/w/3/ecg", "vitals/w/3/pleth", "vitals/w/3/nibp"}
        last = objs[-1][1]["ts"]
        # the cuff's readings say they are intermittent, the monitor's numerics continuous
        assert objs[-1] == (
            "vitals/w/3/nibp",
            {"ts": last, "mode": "intermittent", "sbp": 120, "dbp": 80, "map": 93},
        )
        assert {o["mode"] for t, o in objs if not t.endswith("/nibp")} == {"continuous"}
        assert max(o["ts"] for _, o in objs) == last
        # the last reading is stamped with the time it is sent: now (max), now + 118 s / 60
        assert before + wall - 0.5 <= last <= after
        # the recording's own spacing: 2 s between ecg readings, whatever the speed
        ecg = [o["ts"] for t, o in objs if t.endswith("/ecg")]
        assert len(ecg) == 60
        assert all(abs(b - a - 2) < 1e-6 for a, b in itertools.pairwise(ecg))


def test_plan_groups_an_instant_by_device() -> None:
    r = [
        Reading(0.0, "w", "1", "ecg", "hr", 80),
        Reading(0.0, "w", "1", "nibp", "sbp", 120),
        Reading(0.0, "w", "1", "nibp", "dbp", 80),
        Reading(0.0, "w", "1", "ecg", "hr", 81),  # a second column on the same vital
        Reading(60.0, "w", "1", "ecg", "hr", 82),
    ]
    assert plan(r) == [
        Message(0.0, "ecg", {"hr": 80}),
        Message(0.0, "nibp", {"sbp": 120, "dbp": 80}),
        Message(0.0, "ecg", {"hr": 81}),
        Message(60.0, "ecg", {"hr": 82}),
    ]
    assert Message(60.0, "ecg", {"hr": 82}).payload(1000.0) == '{"ts":1060.0,"hr":82}'


def test_event_start() -> None:
    now = 1_800_000_000.0
    # max: the last reading (time_s 4200) is stamped now
    assert event_start("now", None, 0, 4200, None, now) + 4200 == now
    # 10x: 420 s of publishing; the last reading is stamped when it is sent
    assert event_start("now", None, 0, 4200, 10, now) + 4200 == now + 420
    # slower than real time: the first reading is stamped now (never ahead of the clock)
    assert event_start("now", None, 600, 4200, 0.5, now) + 600 == now
    assert event_start("recorded", None, 0, 4200, None, now) == DEFAULT_START
    assert event_start("2026-01-01T00:00:00Z", None, 0, 60, None, now) == 1767225600.0
    assert event_start("now", 1234.0, 0, 60, 10, now) == 1234.0


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--speed", "0"], "--speed"),
        (["--from-s", "600", "--to-s", "60"], "must be below"),
        (["--from-s", "99999"], "no readings"),
        (["--map", "NOPE=hr"], "no such column"),
        (["--start", "yesterday"], "not an ISO 8601 time"),
    ],
)
def test_user_errors_exit_1_before_connecting(args: list[str], error: str) -> None:
    # port 1 refuses connections: these must fail before any connection attempt
    proc, wall = sim(1, str(S25047), "--bed", "1", *args, timeout=20)
    assert proc.returncode == 1
    assert error in proc.stderr
    assert "simulators replay:" in proc.stderr
    assert wall < 10
