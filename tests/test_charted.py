"""Charted and minute recordings through `vitalmon replay`: every critical episode is alerted.

The charted recordings are made here from the MIMIC-II numerics in tests/data (real ICU
patients, one sample a minute) by keeping one row every 60 min or every 5 min, as a
nurse's chart or a wearable would report. A critical episode is a run of consecutive
readings of one column beyond one of its default crit limits (plausible values only:
implausible ones are technical, README "Plausibility"); it is covered when an alert of
that rule and device is active at one of its readings. Episodes and coverage are
computed here from the CSV, independently of the engine.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pytest

from monitor.config import DEFAULT_PLAUSIBLE, DEFAULT_THRESHOLDS
from monitor.model import AlertEvent, AlertState
from monitor.replay import DEFAULT_MAP, DEFAULT_START, load_csv, replay

DATA = Path(__file__).parent / "data"
RECORDINGS = sorted(DATA.glob("s*-*n.csv"))


@dataclass(frozen=True)
class Episode:
    rule: str
    device: str
    times: tuple[float, ...]  #: event times of its readings


def sampled(src: Path, every_s: int, dst: Path) -> Path:
    """The recording with one row every ``every_s`` seconds (a chart, a wearable)."""
    with src.open(newline="") as f, dst.open("w", newline="") as out:
        rows = csv.reader(f)
        w = csv.writer(out)
        w.writerow(next(rows))
        for row in rows:
            if int(float(row[0])) % every_s == 0:
                w.writerow(row)
    return dst


def episodes(path: Path) -> list[Episode]:
    """Runs of consecutive (non-missing) readings of a column beyond a crit limit."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out: list[Episode] = []
    for col in rows[0]:
        target = DEFAULT_MAP.get(col.lower())
        if target is None or target.vital not in DEFAULT_THRESHOLDS:
            continue
        limits = DEFAULT_THRESHOLDS[target.vital]
        lo, hi = DEFAULT_PLAUSIBLE[target.vital]["low"], DEFAULT_PLAUSIBLE[target.vital]["high"]
        for side in ("low", "high"):
            crit = limits.get(side, {}).get("crit")
            if crit is None:
                continue
            run: list[float] = []
            for row in [*rows, None]:
                cell = "" if row is None else row[col]
                value = float(cell) if cell not in ("", "0.0", "0") else None
                if row is not None and value is None:
                    continue  # missing: the series has no reading here
                beyond = (
                    value is not None
                    and lo <= value <= hi
                    and (value < crit if side == "low" else value > crit)
                )
                if beyond:
                    assert row is not None
                    run.append(DEFAULT_START + float(row["time_s"]))
                    continue
                if run:
                    out.append(Episode(f"{target.vital}.{side}", target.device, tuple(run)))
                run = []
    return out


def covered(ep: Episode, events: list[AlertEvent], end: float) -> bool:
    """An alert of the episode's rule and device is active at one of its readings."""
    spans: dict[str, list[float]] = {}
    for e in events:
        if e.rule != ep.rule or e.device != ep.device:
            continue
        span = spans.setdefault(e.id, [e.started_at, end])
        if e.state == AlertState.RESOLVED:
            span[1] = e.at
    return any(a <= t < b or (t == a) for a, b in spans.values() for t in ep.times)


@pytest.mark.parametrize("every_s", [3600, 300])
@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name[:6])
def test_charted_recording_alerts_every_critical_episode(
    path: Path, every_s: int, tmp_path: Path
) -> None:
    chart = sampled(path, every_s, tmp_path / f"chart-{every_s}.csv")
    rec = load_csv(chart, "1")
    assert rec.interval_s == every_s
    found = [ep for ep in episodes(chart) if len(ep.times) >= 2]
    report = replay(rec)
    end = rec.readings[-1].ts + 1
    missed = [ep for ep in found if not covered(ep, report.vitalmon, end)]
    assert missed == []
    # every critical reading of an intermittent series is one validated measurement:
    # single-reading episodes are alerted too (except where a second device disputes it)
    singles = [ep for ep in episodes(chart) if len(ep.times) == 1]
    alerted = [ep for ep in singles if covered(ep, report.vitalmon, end)]
    assert len(alerted) >= len(singles) * 0.9, (len(alerted), len(singles))


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name[:6])
def test_minute_numerics_alert_every_sustained_critical_episode(path: Path) -> None:
    """The continuous recordings: each critical episode of two or more samples."""
    rec = load_csv(path, "1")
    found = [ep for ep in episodes(path) if len(ep.times) >= 2]
    if path.name.startswith("s25047"):  # the alarm-rich hour (s00001 is mostly stable)
        assert len(found) >= 3
    report = replay(rec)
    end = rec.readings[-1].ts + 1
    missed = [ep for ep in found if not covered(ep, report.vitalmon, end)]
    assert missed == []
