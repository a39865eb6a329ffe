"""``vitalmon stats``: the numbers against numpy on known data, in a real SQLite store,
through the command line as a user runs it."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import RulesConfig
from monitor.model import AlertEvent, AlertState, Priority
from monitor.sinks import sqlite as store
from monitor.sinks.sqlite import alert_row
from monitor.views.stats import held_time, out_of_range_pct

_HR = RulesConfig().thresholds["hr"]
assert _HR.low is not None and _HR.high is not None
HR_WARN = (_HR.low.warn, _HR.high.warn)
NOW = time.time()
T0 = float(int(NOW) - 3600)  # an hour ago: inside the default --since 24h


def alert(ident: str, bed: str, vital: str, priority: str, at: float, seq: int) -> AlertEvent:
    return AlertEvent(
        id=ident,
        ward="icu",
        bed=bed,
        device="mon",
        patient=None,
        vital=vital,
        rule=f"{vital}.low",
        kind="threshold",
        priority=Priority(priority),
        state=AlertState.ACTIVE,
        value=80.0,
        limit=90.0,
        message="m",
        started_at=at,
        at=at,
        seq=seq,
    )


@pytest.fixture
def ward(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A store with bed 7 (hr every 5 s, spo2 every 5 s dipping under 90) and bed 8 (hr
    with a 300 s hole, admitted as copd), alerts, and a config pointing at it."""
    db = tmp_path / "vitals.db"
    rng = np.random.default_rng(7)
    n = 600
    ts = T0 + 5.0 * np.arange(n)
    hr7 = np.round(rng.normal(95, 12, n), 1)
    spo2_7 = np.round(np.clip(rng.normal(94, 3, n), 70, 100), 0)
    hr8 = np.round(rng.normal(89, 2, 200), 0)
    ts8 = np.concatenate([T0 + 5.0 * np.arange(100), T0 + 800 + 5.0 * np.arange(100)])

    def series(bed: str, device: str, vital: str, t: np.ndarray, v: np.ndarray) -> list[tuple]:
        return [
            ("icu", bed, device, vital, float(a), float(b), None) for a, b in zip(t, v, strict=True)
        ]

    rows = series("7", "mon", "hr", ts, hr7) + series("7", "ox", "spo2", ts, spo2_7)
    rows += series("8", "mon", "spo2", ts8, hr8)
    rows += [("icu", "7", "mon", "hr", T0 - 2 * 86400, 250.0, None)]  # before --since
    conn = store.connect(str(db))
    events = [
        alert("a1", "7", "spo2", "medium", T0 + 100, 1),
        alert("a1", "7", "spo2", "high", T0 + 200, 2),  # escalated: counts once, high
        alert("a2", "7", "spo2", "medium", T0 + 900, 1),
        alert("a3", "7", "news2", "low", T0 + 300, 1),
        alert("a0", "7", "spo2", "high", T0 - 2 * 86400, 1),  # before --since
    ]
    store.write_rows(conn, rows, [alert_row(e) for e in events])
    conn.execute(
        "INSERT INTO beds (ward, bed, patient, profile, at, by) VALUES"
        " ('icu', '8', 'p-8', 'copd', ?, 'nurse')",
        (T0,),
    )
    conn.close()
    cfg = tmp_path / "vitalmon.yaml"
    cfg.write_text(f"store:\n  - type: sqlite\n    path: {db}\n")
    return cfg, {"ts": ts, "hr7": hr7, "spo2_7": spo2_7, "hr8": hr8, "ts8": ts8}


def stats_cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", "stats", "-c", str(cfg), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_stats_json_matches_numpy_on_the_stored_readings(ward):
    cfg, data = ward
    p = stats_cli(cfg, "--format", "json")
    assert p.returncode == 0, p.stderr
    out = {(s["bed"], s["vital"]): s for s in json.loads(p.stdout)["stats"]}
    assert sorted(out) == [("7", "hr"), ("7", "news2"), ("7", "spo2"), ("8", "spo2")]

    hr = out[("7", "hr")]
    v = data["hr7"]
    assert hr["n"] == len(v)  # the reading from two days ago is not in the last 24 h
    assert hr["mean"] == pytest.approx(np.mean(v))
    assert hr["sd"] == pytest.approx(np.std(v, ddof=1))
    assert [hr[k] for k in ("min", "max")] == [v.min(), v.max()]
    for key, q in (("p5", 5), ("p25", 25), ("median", 50), ("p75", 75), ("p95", 95)):
        assert hr[key] == pytest.approx(np.percentile(v, q))
    assert (hr["low"], hr["high"]) == HR_WARN  # the adult profile's
    # steady 5 s readings: % of time = % of readings beyond the warn limits
    assert hr["out_pct"] == pytest.approx(100 * np.mean((v < HR_WARN[0]) | (v > HR_WARN[1])))
    assert hr["out_pct"] > 0

    spo2 = out[("7", "spo2")]
    assert spo2["out_pct"] == pytest.approx(100 * np.mean(data["spo2_7"] < 90))
    assert spo2["out_pct"] > 0
    assert (spo2["alerts_high"], spo2["alerts_medium"], spo2["alerts_low"]) == (1, 1, 0)
    news2 = out[("7", "news2")]
    assert (news2["n"], news2["alerts_low"], news2["mean"]) == (0, 1, None)

    # bed 8 is admitted with the copd profile: SpO2 low warn 88, not 90; the 300 s hole
    # is unmeasured time, not time at the last value
    s8 = out[("8", "spo2")]
    assert s8["low"] == 88.0
    v8, t8 = data["hr8"], data["ts8"]
    held = np.minimum(np.diff(t8), 30.0)  # rules.max_gap_s
    held = np.append(held, np.median(held))
    assert s8["out_pct"] == pytest.approx(100 * held[v8 < 88].sum() / held.sum())
    assert 0 < s8["out_pct"] < 100


def test_stats_table_and_csv_for_one_bed(ward):
    cfg, data = ward
    p = stats_cli(cfg, "--bed", "7", "--vital", "hr")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("since ")
    assert lines[1].split()[:4] == ["ward", "bed", "vital", "n"]
    (row,) = [ln.split() for ln in lines[3:]]
    assert row[:4] == ["icu", "7", "hr", str(len(data["hr7"]))]
    assert row[4] == f"{np.mean(data['hr7']):.1f}"
    assert row[11] == f"{HR_WARN[0]:g}..{HR_WARN[1]:g}"

    p = stats_cli(cfg, "--ward", "icu", "--format", "csv", "--since", "2h")
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert [(r["bed"], r["vital"]) for r in rows] == [
        ("7", "hr"),
        ("7", "news2"),
        ("7", "spo2"),
        ("8", "spo2"),
    ]
    assert float(rows[0]["median"]) == pytest.approx(np.median(data["hr7"]))
    assert rows[1]["mean"] == ""  # no readings of news2: empty, not 0


def test_stats_without_a_store_says_so(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store:\n  - type: sqlite\n    path: {tmp_path / 'none.db'}\n")
    p = stats_cli(cfg)
    assert p.returncode == 1
    assert "no store at" in p.stderr


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(0, 300, allow_nan=False), min_size=1, max_size=50),
    step=st.floats(0.5, 20),
    low=st.one_of(st.none(), st.floats(0, 150)),
    high=st.one_of(st.none(), st.floats(150, 300)),
)
def test_out_of_range_is_the_share_of_readings_at_a_steady_rate(values, step, low, high):
    """Readings at a steady rate (within max_gap_s): out_pct is the share of readings out
    of range, always within 0..100; no limits: None."""
    v = np.array(values)
    ts = 1000.0 + step * np.arange(len(v))
    pct = out_of_range_pct(ts, v, low, high, max_gap_s=30.0)
    if low is None and high is None:
        assert pct is None
        return
    out = np.zeros(len(v), dtype=bool)
    if low is not None:
        out |= v < low
    if high is not None:
        out |= v > high
    assert pct is not None and 0.0 <= pct <= 100.0
    assert pct == pytest.approx(100 * out.mean())


@given(gaps=st.lists(st.floats(0, 500), min_size=1, max_size=40), cap=st.floats(1, 120))
def test_held_time_is_capped_by_max_gap(gaps, cap):
    ts = 1000.0 + np.cumsum([0.0, *gaps])
    held = held_time(ts, cap)
    assert len(held) == len(ts)
    assert np.all(held <= cap) and np.all(held >= 0)
    assert np.allclose(held[:-1], np.minimum(np.diff(ts), cap))
