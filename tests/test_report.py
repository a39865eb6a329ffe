"""``vitalmon report``: trend plots of a bed from a real SQLite store, checked for what a
reader sees (panels, units, limits, alert markers in their colours) and as files."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from monitor import config as config_mod
from monitor.model import AlertEvent, AlertState, Priority
from monitor.sinks import sqlite as store
from monitor.sinks.sqlite import alert_row
from monitor.views import report

T0 = float(int(time.time()) - 3600)


def event(
    ident: str,
    vital: str,
    prio: str,
    state: str,
    at: float,
    value: float,
    seq: int,
    extra: dict | None = None,
) -> AlertEvent:
    return AlertEvent(
        id=ident,
        ward="icu",
        bed="6",
        device="ox",
        patient=None,
        vital=vital,
        rule=f"{vital}.low",
        kind="physiological",
        priority=Priority(prio),
        state=AlertState(state),
        value=value,
        limit=90.0,
        message="m",
        started_at=at,
        at=at,
        seq=seq,
        extra=extra or {},
    )


@pytest.fixture
def bed6(tmp_path: Path) -> Path:
    """Bed 6: 50 min of HR and SpO2 every 5 s, a desaturation to 80 % at minutes 20-30,
    its alert (medium, then high, then resolved), an escalation on the wall clock, and a
    full set of NEWS2 inputs at the start."""
    db = tmp_path / "vitals.db"
    ts = T0 + 5.0 * np.arange(600)
    minute = (ts - T0) / 60
    spo2 = np.where((minute >= 20) & (minute < 30), 80.0, 97.0)
    hr = 80 + 10 * np.sin(minute / 5)
    rows = [
        ("icu", "6", "ox", "spo2", float(t), float(v), None) for t, v in zip(ts, spo2, strict=True)
    ]
    rows += [
        ("icu", "6", "mon", "hr", float(t), float(v), None) for t, v in zip(ts, hr, strict=True)
    ]
    obs = {"rr": 16.0, "sbp": 120.0, "temp": 37.0, "o2": 0.0, "avpu": 0.0}
    rows += [("icu", "6", "obs", k, T0, v, None) for k, v in obs.items()]
    conn = store.connect(str(db))
    events = [
        event("d1", "spo2", "medium", "active", T0 + 20 * 60 + 15, 80.0, 1),
        event("d1", "spo2", "high", "active", T0 + 21 * 60, 80.0, 2),
        event("d1", "spo2", "high", "resolved", T0 + 30 * 60 + 5, 97.0, 3),
        event("d1", "spo2", "high", "active", T0 + 40 * 60, 80.0, 4, {"action": "escalate"}),
    ]
    store.write_rows(conn, rows, [alert_row(e) for e in events])
    conn.close()
    cfg = tmp_path / "vitalmon.yaml"
    cfg.write_text(f"store:\n  - type: sqlite\n    path: {db}\n")
    return cfg


def markers(ax) -> list[tuple[str, str, int]]:
    """(edge colour, face colour or 'none', points) of each marker set on an axes."""
    out = []
    for c in ax.collections:
        if isinstance(c, PathCollection):
            faces = c.get_facecolors()
            face = "none" if len(faces) == 0 else to_hex(faces[0])
            out.append((to_hex(c.get_edgecolors()[0]), face, len(c.get_offsets())))
    return out


def test_panels_limits_and_alert_markers(bed6: Path):
    cfg = config_mod.load(str(bed6))
    conn = store.connect(str(cfg.sqlite_path), readonly=True)
    data = report.load(conn, None, "6", T0 - 60, time.time(), cfg.rules.news2.freshness_s)
    fig = report.render(data, cfg, conn)
    conn.close()
    labels = [ax.get_ylabel() for ax in fig.axes]
    # one panel per stored vital (o2 and avpu only feed NEWS2), then NEWS2
    assert labels == ["HR (/min)", "SpO2 (%)", "RR (/min)", "SBP (mmHg)", "Temp (°C)", "NEWS2"]
    hr_ax, spo2_ax, news2_ax = fig.axes[0], fig.axes[1], fig.axes[-1]
    # SpO2: the warn and crit limits as dashed lines, the readings down to 80 %
    hlines = sorted(
        round(ln.get_ydata()[0], 1) for ln in spo2_ax.get_lines() if ln.get_linestyle() == "--"
    )
    spo2_limits = cfg.rules.thresholds["spo2"].low
    assert spo2_limits is not None
    assert hlines == sorted([spo2_limits.crit, spo2_limits.warn])
    assert spo2_ax.get_ylim()[0] < 80 < 97 < spo2_ax.get_ylim()[1]
    # the alert: medium raise (amber), high (red), resolution hollow red; the wall-clock
    # escalation is not drawn on the data
    assert sorted(markers(spo2_ax)) == sorted(
        [
            (report.COLOURS["medium"], report.COLOURS["medium"], 1),
            (report.COLOURS["high"], report.COLOURS["high"], 1),
            (report.COLOURS["high"], "none", 1),
        ]
    )
    assert markers(hr_ax) == []
    # NEWS2 recomputed from the inputs: 0 with normal values, 3 for SpO2 80 %
    (step,) = news2_ax.get_lines()
    ys = set(np.asarray(step.get_ydata(), dtype=float))
    assert {0.0, 3.0} <= ys
    assert fig.get_suptitle().startswith("icu/6 (profile adult)")


def test_news2_panel_says_why_it_is_empty():
    ts = T0 + 60.0 * np.arange(30)
    data = report.BedData(
        "icu", "6", {"hr": (ts, np.full(30, 80.0)), "spo2": (ts, np.full(30, 97.0))}
    )
    fig = report.render(data, config_mod.Config())
    news2_ax = fig.axes[-1]
    assert news2_ax.get_ylabel() == "NEWS2" and news2_ax.get_lines() == []
    texts = [t.get_text() for t in news2_ax.texts]
    assert texts == ["no complete NEWS2: no RR, O2, SBP, ACVPU, Temp readings"]
    # every input stored but never fresh together (load() found no complete score)
    one = (ts[:1], np.ones(1))
    series = dict.fromkeys(("rr", "spo2", "o2", "sbp", "hr", "avpu", "temp"), one)
    fig = report.render(report.BedData("icu", "6", series), config_mod.Config())
    assert [t.get_text() for t in fig.axes[-1].texts] == [
        "no complete NEWS2: the inputs were never all within 1800 s"
    ]


@pytest.mark.parametrize(
    ("suffix", "magic"), [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")]
)
def test_cli_writes_the_file(bed6: Path, tmp_path: Path, suffix: str, magic: bytes):
    out = tmp_path / f"bed6{suffix}"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor",
            "report",
            "-c",
            str(bed6),
            "--bed",
            "6",
            "--since",
            "2h",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert out.read_bytes().startswith(magic)
    assert out.stat().st_size > 10_000
    assert "5 vitals" in p.stdout and "3 alert events" in p.stdout
    if suffix == ".svg":
        text = out.read_text()
        assert "SpO2 (%)" in text and "NEWS2" in text and "time (UTC)" in text


def test_cli_refuses_a_bad_suffix_and_a_bed_without_readings(bed6: Path, tmp_path: Path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "monitor", "report", "-c", str(bed6), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    p = run("--bed", "6", "-o", str(tmp_path / "x.jpg"))
    assert p.returncode == 1 and "give a .png, .pdf or .svg file" in p.stderr
    p = run("--bed", "99", "-o", str(tmp_path / "x.png"))
    assert p.returncode == 1 and "no readings of bed 99" in p.stderr
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------- devices and alert kinds (issue 15, C21)


def alert_event(
    ident: str,
    vital: str,
    rule: str,
    kind: str,
    prio: str,
    at: float,
    value: float | None,
    device: str,
    state: str = "active",
    limit: float | None = None,
    seq: int = 1,
) -> AlertEvent:
    return AlertEvent(
        id=ident,
        ward="icu",
        bed="7",
        device=device,
        patient=None,
        vital=vital,
        rule=rule,
        kind=kind,
        priority=Priority(prio),
        state=AlertState(state),
        value=value,
        limit=limit,
        message=f"{rule} message",
        started_at=at,
        at=at,
        seq=seq,
    )


@pytest.fixture
def bed7(tmp_path: Path) -> Path:
    """Bed 7: HR from two devices every 5 s for 50 min -- the monitor's ECG (``mon``,
    80 rising to 90) and the oximeter's pulse rate (``ox``, 100 to 110) -- SpO2 from
    ``ox``, and alerts whose ``value`` is not a reading of their vital: a slope and a
    median (``trend``), a count (``.flapping``), a reading the device doubts
    (``technical``), NEWS2 points (``score``), beside a threshold alert whose value is
    the reading."""
    db = tmp_path / "vitals.db"
    ts = T0 + 5.0 * np.arange(600)
    minute = (ts - T0) / 60
    rows = [
        ("icu", "7", "mon", "hr", float(t), float(80 + m / 5), None)
        for t, m in zip(ts, minute, strict=True)
    ]
    rows += [
        ("icu", "7", "ox", "hr", float(t) + 2.5, float(100 + m / 5), None)
        for t, m in zip(ts, minute, strict=True)
    ]
    rows += [
        ("icu", "7", "ox", "spo2", float(t), 97.0 if m < 20 else 88.0, None)
        for t, m in zip(ts, minute, strict=True)
    ]
    obs = {"rr": 16.0, "sbp": 120.0, "temp": 37.0, "o2": 0.0, "avpu": 0.0}
    rows += [("icu", "7", "obs", k, T0, v, None) for k, v in obs.items()]
    conn = store.connect(str(db))
    trend, phys = ("trend", "medium"), ("physiological", "medium")
    events = [
        # HR rising 25 /min per 30 min on the ECG: a slope, not a heart rate
        alert_event("t1", "hr", "hr.trend_up", *trend, T0 + 30 * 60, 25.0, "mon", limit=25.0),
        alert_event(
            "t1",
            "hr",
            "hr.trend_up",
            *trend,
            T0 + 45 * 60,
            9.0,
            "mon",
            state="resolved",
            limit=25.0,
            seq=2,
        ),
        # SpO2 below 90 %: the reading, on the axis
        alert_event("s1", "spo2", "spo2.low", *phys, T0 + 21 * 60, 88.0, "ox", limit=90.0),
        # the same rule flapping: its value is the count of changes
        alert_event("f1", "spo2", "spo2.low.flapping", *phys, T0 + 25 * 60, 6.0, "ox", limit=6.0),
        # the slope rule flapping: 6 changes
        alert_event(
            "t2", "hr", "hr.trend_up.flapping", *trend, T0 + 35 * 60, 6.0, "mon", limit=6.0
        ),
        # HR's 5-min median 112 against the oximeter's own baseline 80 (limit 80 + 30)
        alert_event("b1", "hr", "hr.baseline_up", *trend, T0 + 40 * 60, 112.0, "ox", limit=110.0),
        # a technical alarm on a reading the oximeter cannot have measured
        alert_event(
            "p1",
            "spo2",
            "spo2.implausible",
            "technical",
            "high",
            T0 + 10 * 60,
            300.0,
            "ox",
            limit=100.0,
        ),
        # NEWS2 5: points on the NEWS2 axis
        alert_event("n1", "news2", "news2", "score", "medium", T0 + 21 * 60, 5.0, "news2"),
    ]
    store.write_rows(conn, rows, [alert_row(e) for e in events])
    conn.close()
    cfg = tmp_path / "vitalmon.yaml"
    cfg.write_text(f"store:\n  - type: sqlite\n    path: {db}\n")
    return cfg


def data_lines(ax) -> list:
    """The readings' lines of a panel (the limits are dashed lines)."""
    return [ln for ln in ax.get_lines() if ln.get_linestyle() != "--"]


def marker_at(ax, at: float) -> list[float]:
    """The y of every alert marker drawn at event time ``at``."""
    x = mdates.date2num(datetime.fromtimestamp(at, UTC))
    return [
        float(y)
        for c in ax.collections
        if isinstance(c, PathCollection)
        for cx, y in c.get_offsets()
        if abs(cx - x) < 1e-9
    ]


def bed7_figure(cfg_path: Path) -> Figure:
    cfg = config_mod.load(str(cfg_path))
    conn = store.connect(str(cfg.sqlite_path), readonly=True)
    data = report.load(conn, None, "7", T0 - 60, time.time(), cfg.rules.news2.freshness_s)
    fig = report.render(data, cfg, conn)
    conn.close()
    assert (fig.axes[0].get_ylabel(), fig.axes[1].get_ylabel()) == ("HR (/min)", "SpO2 (%)")
    return fig


def test_a_line_per_device_named_in_the_legend(bed7: Path):
    fig = bed7_figure(bed7)
    hr_ax, spo2_ax = fig.axes[0], fig.axes[1]
    # HR: a line per device, each with that device's readings only (no sawtooth
    # between them), named in the legend
    lines = {ln.get_label(): np.asarray(ln.get_ydata(), dtype=float) for ln in data_lines(hr_ax)}
    assert sorted(lines) == ["HR mon", "HR ox"]
    assert np.allclose(lines["HR mon"], 80 + np.arange(600) / 60)
    assert np.allclose(lines["HR ox"], 100 + np.arange(600) / 60)
    legend = hr_ax.get_legend()
    assert legend is not None
    assert sorted(t.get_text() for t in legend.get_texts()) == ["HR mon", "HR ox"]
    # one device: one line, no legend needed
    assert [ln.get_label() for ln in data_lines(spo2_ax)] == ["SpO2"]


def test_alert_values_only_on_the_axis_of_their_unit(bed7: Path):
    """A trend alert's value is a slope, a flapping alert's a count: they are marked at
    their time on their device's line; a threshold alert's value is the reading and a
    score alert's NEWS2 points: at their value."""
    fig = bed7_figure(bed7)
    hr_ax, spo2_ax, news2_ax = fig.axes[0], fig.axes[1], fig.axes[-1]
    # the trend alert: at its time on the ECG's line (HR 86 at minute 30), its slope as
    # text with its unit, never a point at "HR 25" on the heart-rate axis
    assert marker_at(hr_ax, T0 + 30 * 60) == pytest.approx([86.0])
    assert marker_at(hr_ax, T0 + 45 * 60) == pytest.approx([89.0])  # its resolution
    assert marker_at(hr_ax, T0 + 35 * 60) == pytest.approx([87.0])  # flapping: 6 changes
    # the baseline alert: on the oximeter's line (HR 108 at minute 40), its move from
    # the baseline written beside
    assert marker_at(hr_ax, T0 + 40 * 60) == pytest.approx([108.0], abs=0.05)
    texts = sorted(t.get_text() for t in hr_ax.texts)
    assert texts == ["+25 /min per 30 min", "+32 /min from baseline"]
    lo, hi = hr_ax.get_ylim()
    assert lo > 25 and lo < 80 and hi > 110

    # SpO2: the threshold alert at its value; the flapping alert (a count: 6) on the line
    assert marker_at(spo2_ax, T0 + 21 * 60) == [88.0]
    assert marker_at(spo2_ax, T0 + 25 * 60) == [88.0]
    # the technical alarm: on the line (97 %), not at the 300 % it doubts
    assert marker_at(spo2_ax, T0 + 10 * 60) == [97.0]
    assert [t.get_text() for t in spo2_ax.texts] == []
    # NEWS2: the score alert at its points
    assert marker_at(news2_ax, T0 + 21 * 60) == [5.0]
