"""`vitalmon replay` on real MIMIC-II numerics (tests/data/, see tests/data/SOURCES.md).

No mocks: the real CSVs, the real Engine, the real CLI in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from monitor.cli import main as cli_main
from monitor.config import DEFAULT_THRESHOLDS, RulesConfig
from monitor.engine import Engine
from monitor.model import INTERMITTENT, AlertState, Priority, Reading
from monitor.replay import (
    DEFAULT_START,
    SUMMARY_ROWS,
    Column,
    load_csv,
    naive_rules,
    parse_map,
    replay,
)

DATA = Path(__file__).parent / "data"
S25047 = DATA / "s25047-2704-05-04-10-44n.csv"  # 72 min, alarm-rich
S00001 = DATA / "s00001-2896-10-10-00-31n.csv"  # 32.3 h, mostly stable
FILES = [S25047, S00001]


def cli(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", "replay", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ------------------------------------------------------------------ the recordings


def test_desaturations_of_s25047_are_alerted() -> None:
    rec = load_csv(S25047, bed="1")
    report = replay(rec)
    spo2 = [e for e in report.vitalmon if e.rule == "spo2.low"]
    raised = [e for e in spo2 if e.state == AlertState.ACTIVE and e.seq == 1]
    assert raised, "no spo2.low alert for the desaturations"
    assert any(e.priority == Priority.HIGH for e in spo2 if e.state == AlertState.ACTIVE)
    # The first desaturation (SpO2 71 % at minute 40, 43 % at 41) is alerted at minute 41:
    # two consecutive samples below 85 % is vitalmon's 15 s delay at one sample a minute.
    first = raised[0]
    assert first.at - DEFAULT_START == 41 * 60
    assert first.priority == Priority.HIGH
    assert first.value == pytest.approx(42.9)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name[:6])
def test_vitalmon_burden_is_below_naive(path: Path) -> None:
    report = replay(load_csv(path, bed="1"))
    s = report.summary()
    v, n = s["vitalmon"], s["naive"]
    assert n["raised"] > 0
    assert v["raised"] < n["raised"]
    assert v["burden_per_h"] < n["burden_per_h"]
    # every threshold rule vitalmon raised, the naive monitor raised at least as often
    # (trend rules are vitalmon's own: a plain threshold monitor has none)
    for rule, count in v["by_rule"].items():
        if not any(k in rule for k in (".trend_", ".baseline_", ".implausible", ".disputed")):
            assert count <= n["by_rule"].get(rule, 0), rule
    assert v["burden_per_h"] == round(v["raised"] / (report.rec.duration_s / 3600), 2)


def test_naive_alarms_single_sample_artefacts_vitalmon_does_not() -> None:
    """s00001's artefacts (HR 11.5, MAP 25.3, one sample each) are high alarms only naively."""
    report = replay(load_csv(S00001, bed="1"))
    naive_high = {(e.rule, e.device, e.value) for e in report.naive if e.priority == Priority.HIGH}
    assert ("hr.low", "ecg", 11.5) in naive_high
    assert ("map.low", "abp", 25.3) in naive_high
    assert not [e for e in report.vitalmon if e.priority == Priority.HIGH]


def test_recording_is_read_with_mimic_conventions() -> None:
    rec = load_csv(S25047, bed="7", ward="icu")
    assert rec.rows == 72
    assert rec.interval_s == 60
    assert rec.duration_s == 72 * 60
    assert rec.columns["PULSE"] == Column("hr", "pleth")
    assert rec.columns["HR"] == Column("hr", "ecg")
    assert rec.columns["NBPMean"] == Column("map", "nibp", INTERMITTENT)
    assert not rec.rejected  # PULSE 277 is within hr's plausible 0-350: not rejected
    # ECG HR is 0 ("not available") from minute 45 on: no hr@ecg reading after it
    ecg = [r for r in rec.readings if r.device == "ecg"]
    assert max(r.ts for r in ecg) - DEFAULT_START < 45 * 60
    assert all(r.value != 0 for r in rec.readings)
    assert all(r.ward == "icu" and r.bed == "7" for r in rec.readings)
    # NBP: blank except in the minute of a cuff reading
    nibp_sbp = [r for r in rec.readings if r.device == "nibp" and r.vital == "sbp"]
    assert len(nibp_sbp) == 18
    assert [r.ts for r in rec.readings] == sorted(r.ts for r in rec.readings)


def test_minute_numerics_are_continuous_by_their_own_cadence() -> None:
    """Nothing is fitted to the sampling (the replay equals the daemon): at one sample a
    minute, a delayed condition is raised at the second consecutive sample beyond the
    limit, and a single sample beyond it raises nothing."""
    rec = load_csv(S25047, "1")
    assert rec.interval_s == 60
    t0 = 946_684_800.0
    two = [
        Reading(t0 + 60 * i, "icu", "1", "pleth", "spo2", v)
        for i, v in enumerate([97, 97, 97, 80, 80, 97])
    ]
    events = Engine(RulesConfig(), sinks=[]).process(two)
    assert [(e.rule, e.state, e.at - t0) for e in events] == [
        ("spo2.low", "active", 240.0),
        ("spo2.low", "resolved", 300.0),
    ]
    one = [
        Reading(t0 + 60 * i, "icu", "1", "pleth", "spo2", v)
        for i, v in enumerate([97, 97, 97, 80, 97, 97])
    ]
    assert Engine(RulesConfig(), sinks=[]).process(one) == []


def test_naive_rules_keep_limits_and_drop_delay_and_hysteresis() -> None:
    rules = naive_rules(RulesConfig())
    for vital, default in DEFAULT_THRESHOLDS.items():
        tc = rules.thresholds[vital]
        assert tc.delay_s == 0
        assert tc.clear_band == 0
        for side in ("low", "high"):
            lv = getattr(tc, side)
            if side in default:
                assert lv is not None
                assert (lv.warn, lv.crit) == (default[side]["warn"], default[side]["crit"])
            else:
                assert lv is None


def test_same_alerts_at_max_speed_and_at_600x(tmp_path: Path) -> None:
    # minutes 36-50 of s25047: the first desaturation, pleth tachycardia, tachypnoea
    lines = S25047.read_text(encoding="utf-8").splitlines()
    piece = tmp_path / "slice.csv"
    piece.write_text("\n".join([lines[0], *lines[1 + 36 : 1 + 51]]) + "\n", encoding="utf-8")
    rec = load_csv(piece, bed="1")
    span = rec.readings[-1].ts - rec.readings[0].ts
    assert span == 14 * 60

    fast = replay(rec, speed=None)
    t0 = time.monotonic()
    paced = replay(load_csv(piece, bed="1"), speed=600)
    wall = time.monotonic() - t0

    assert fast.vitalmon
    assert [e.to_json() for e in paced.vitalmon] == [e.to_json() for e in fast.vitalmon]
    assert [e.to_json() for e in paced.naive] == [e.to_json() for e in fast.naive]
    assert wall >= 0.9 * span / 600  # it really was played at 600x (1.4 s)
    assert fast.elapsed_s < wall


# ------------------------------------------------------------------------- the CLI


def _table_numbers(stdout: str) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[int, int]]]:
    """Summary rows and by-rule rows of the printed table -> {label: (vitalmon, naive)}."""
    summary: dict[str, tuple[str, str]] = {}
    by_rule: dict[str, tuple[int, int]] = {}
    section = ""
    for line in stdout.splitlines():
        if line.startswith("summary "):
            section = "summary"
        elif line.startswith("alerts raised by rule@device"):
            section = "rules"
        elif not line.strip():
            section = ""
        elif section:
            label, vm, naive = line.rsplit(None, 2)
            if section == "summary":
                summary[label.strip()] = (vm, naive)
            else:
                by_rule[label.strip()] = (int(vm), int(naive))
    return summary, by_rule


def _num(text: str) -> float | None:
    return None if text == "-" else float(text)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name[:6])
def test_cli_table_and_json_agree(path: Path) -> None:
    table = cli(path, "--bed", "1")
    assert table.returncode == 0, table.stderr
    out = table.stdout
    assert "vitalmon alerts" in out
    assert "alarm burden (raised per patient-h)" in out
    assert "naive" in out

    js = cli(path, "--bed", "1", "--format", "json")
    assert js.returncode == 0, js.stderr
    doc: dict[str, Any] = json.loads(js.stdout)

    summary, by_rule = _table_numbers(out)
    for key, label in SUMMARY_ROWS:
        vm, naive = summary[label.strip()]
        assert _num(vm) == doc["vitalmon"]["summary"][key], key
        assert _num(naive) == doc["naive"]["summary"][key], key
    for rule, (vm_n, naive_n) in by_rule.items():
        assert vm_n == doc["vitalmon"]["summary"]["by_rule"].get(rule, 0)
        assert naive_n == doc["naive"]["summary"]["by_rule"].get(rule, 0)
    assert set(by_rule) == set(doc["vitalmon"]["summary"]["by_rule"]) | set(
        doc["naive"]["summary"]["by_rule"]
    )
    # one table row per vitalmon alert event, with the same messages
    rows = out.split("vitalmon alerts\n", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    alerts = doc["vitalmon"]["alerts"]
    assert len(rows) == len(alerts)
    for row, a in zip(rows, alerts, strict=True):
        assert row.split()[1] == a["rule"]
        assert row.endswith(a["message"])
    assert doc["readings"]["accepted"] > 0
    assert doc["rules_note"] is None  # nothing is fitted to the sampling


def test_cli_s25047_prints_the_desaturation() -> None:
    res = cli(S25047, "--bed", "1", "--ward", "icu", "--start", "2026-11-28T10:00:00Z")
    assert res.returncode == 0, res.stderr
    assert "from 2026-11-28T10:00:00.000Z" in res.stdout
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("+00:41:00  spo2.low"))
    assert "high" in line
    assert "SpO2 43 % < 85 %" in line  # SpO2 42.9 at its clinical resolution (whole %)


def test_cli_missing_file_is_a_user_error(tmp_path: Path) -> None:
    res = cli(tmp_path / "nope.csv", "--bed", "1")
    assert res.returncode == 1
    assert res.stdout == ""
    assert "nope.csv: no such file" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--speed", "fast"], "--speed 'fast'"),
        (["--speed", "0"], "--speed '0'"),
        (["--start", "2026-11-28T10:00:00"], "needs its UTC offset"),
        (["--map", "RESP=foo"], "unknown vital 'foo'"),
        (["--map", "NOPE=hr"], "no such column"),
    ],
)
def test_cli_bad_options_are_user_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["replay", str(S25047), "--bed", "1", *args])
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("vitalmon replay: ")
    assert message in err


def test_cli_uses_the_rules_of_a_config(tmp_path: Path) -> None:
    cfg = tmp_path / "vitalmon.yaml"
    cfg.write_text(
        "rules:\n  thresholds:\n    spo2: null\n"
        "  trends:\n    slope: {spo2: null}\n    baseline: {spo2: null}\n",
        encoding="utf-8",
    )
    res = cli(S25047, "--bed", "1", "-c", cfg, "--format", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    for monitor in ("vitalmon", "naive"):
        assert not [a for a in doc[monitor]["alerts"] if a["vital"] == "spo2"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  max_gap_s: -1\n", encoding="utf-8")
    res = cli(S25047, "--bed", "1", "-c", bad)
    assert res.returncode == 1
    assert "rules.max_gap_s" in res.stderr


# --------------------------------------------------------------- mapping and checks


def test_map_overrides_and_ignores_columns() -> None:
    assert parse_map(["PULSE=none", "resp=rr@chest", "ABPMean=map"]) == {
        "pulse": None,
        "resp": Column("rr", "chest"),
        "abpmean": Column("map", "abp"),
    }
    rec = load_csv(S25047, bed="1", overrides=parse_map(["PULSE=none"]))
    assert "PULSE" in rec.ignored
    assert not [r for r in rec.readings if r.device == "pleth" and r.vital == "hr"]
    report = replay(rec)
    assert not [e for e in report.vitalmon if e.vital == "hr" and e.device == "pleth"]


def test_implausible_values_are_rejected_and_counted_not_alarmed(tmp_path: Path) -> None:
    """Same check as MQTT input (codecs.check_value); 0 and blank are "not available"."""
    f = tmp_path / "bad.csv"
    f.write_text(
        "time_s,HR,SpO2,RESP,NBPSys,Extra\n"
        "0,80,97,14,,1\n"
        "60,400,150,abc,0,1\n"
        "120,401,151,nan,,1\n"
        "180,80,97,14,120,1\n",
        encoding="utf-8",
    )
    rec = load_csv(f, bed="1")
    assert rec.rejected == {
        ("HR", "implausible"): 2,
        ("SpO2", "implausible"): 2,
        ("RESP", "wrong_type"): 1,
        ("RESP", "not_finite"): 1,
    }
    assert rec.missing == {"NBPSys": 3}
    assert rec.ignored == ["Extra"]
    assert len(rec.readings) == 3 * 2 + 1
    report = replay(rec)
    assert report.vitalmon == []
    assert report.naive == []
    res = cli(f, "--bed", "1")
    assert res.returncode == 0, res.stderr
    assert "rejected HR: implausible x2" in res.stdout


# ----------------------------------------------------- --store and --report: plots


def test_store_and_report_from_a_replay(tmp_path: Path) -> None:
    """The readings and vitalmon's alert events go into a store of the daemon's schema;
    ``--report`` draws the recording from it; ``report``/``stats --store`` read it; a
    second replay into the same store adds nothing."""
    import sqlite3

    db, png = tmp_path / "replay.db", tmp_path / "replay.png"
    res = cli(
        S25047, "--bed", "7", "--ward", "icu", "--store", db, "--report", png, "--format", "json"
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)  # the JSON stays clean: what was kept goes to stderr
    rec = load_csv(S25047, bed="7", ward="icu")
    events = replay(rec).vitalmon
    assert f"store {db}: {len(rec.readings)} readings and {len(events)} alert events" in (
        res.stderr
    )
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000
    evaluated = sum(r.flag is None for r in rec.readings)  # flagged ones are not drawn
    assert evaluated < len(rec.readings)
    assert f"report {png}: 6 vitals and NEWS2, {evaluated} readings" in res.stderr

    conn = sqlite3.connect(db)
    stored = conn.execute(
        "SELECT device, vital, ts, value FROM readings WHERE ward = 'icu' AND bed = '7'"
        " ORDER BY ts, device, vital"
    ).fetchall()
    expect = sorted((r.device, r.vital, r.ts, r.value) for r in rec.readings)
    assert sorted(stored) == expect
    alerts = conn.execute("SELECT id, seq, rule, state FROM alert_events ORDER BY ev").fetchall()
    assert alerts == [(e.id, e.seq, e.rule, str(e.state)) for e in events]
    assert len(doc["vitalmon"]["alerts"]) == len(events)
    conn.close()

    res = cli(S25047, "--bed", "7", "--ward", "icu", "--store", db)
    assert res.returncode == 0, res.stderr
    assert f"store {db}: 0 readings and {len(events)} alert events" in res.stdout
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == len(rec.readings)
    assert conn.execute("SELECT count(*) FROM alert_events").fetchone()[0] == len(events)
    conn.close()

    # the store as the other views read it: no config file needed with --store
    since = "2000-01-01T00:00:00Z"
    out = tmp_path / "again.svg"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor",
            "report",
            "-c",
            str(tmp_path / "absent.yaml"),
            "--store",
            str(db),
            "--bed",
            "7",
            "--since",
            since,
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 1 and "cannot read config" in p.stderr  # a named config must exist
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor",
            "report",
            "--store",
            str(db),
            "--bed",
            "7",
            "--since",
            since,
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert "SpO2 (%)" in out.read_text()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor",
            "stats",
            "--store",
            str(db),
            "--since",
            since,
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    spo2 = [r for r in json.loads(p.stdout)["stats"] if r["vital"] == "spo2"]
    values = [r.value for r in rec.readings if r.vital == "spo2"]
    assert [(r["ward"], r["bed"], r["n"], r["max"]) for r in spo2] == [
        ("icu", "7", len(values), max(values))
    ]
    # the default --since (24 h) misses a recording of 2000: say where the data are
    p = subprocess.run(
        [sys.executable, "-m", "monitor", "stats", "--store", str(db)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "the store has readings from 2000-01-01T00:00:00" in p.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--report", "plot.jpg"], "give a .png, .pdf or .svg file"),
        (["--store", "no/such/dir/r.db"], "no directory no/such/dir"),
        (["--store", "."], "is a directory"),
    ],
)
def test_store_and_report_options_are_checked_before_the_replay(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli_main(["replay", str(S25047), "--bed", "1", *args])
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    assert out == "" and message in err
    assert list(tmp_path.iterdir()) == []
