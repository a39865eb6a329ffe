"""What ``vitalmon report`` (:mod:`monitor.views.report`) draws, read from the store: a
bed's readings by vital and device, its alert events, and NEWS2 recomputed from the
stored inputs (the daemon's own scoring, on event time)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from monitor.engine.news2 import PARAMETERS
from monitor.engine.news2_tracker import News2Tracker
from monitor.model import AVPU_CODES

ORDER = ("hr", "spo2", "rr", "sbp", "dbp", "map", "temp", "etco2")


class Alert(NamedTuple):
    """An alert event as the report draws it."""

    vital: str
    at: float
    value: float | None
    priority: str
    state: str
    kind: str = "physiological"
    rule: str = ""
    device: str = ""
    limit: float | None = None
    message: str = ""


@dataclass
class BedData:
    ward: str
    bed: str
    #: vital -> (ts, values), sorted by time, all devices together
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: vital -> device -> (ts, values), sorted by time (empty: ``series`` as one device)
    devices: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    #: each alert event, by time
    alerts: list[Alert] = field(default_factory=list)
    #: NEWS2 (ts, score) at each change of an input; only complete scores
    news2: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty(0))

    def lines(self, vital: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """device -> (ts, values) of ``vital``, by device name."""
        by_device = self.devices.get(vital)
        if by_device:
            return dict(sorted(by_device.items()))
        return {"": self.series[vital]} if vital in self.series else {}


def load(
    conn: sqlite3.Connection,
    ward: str | None,
    bed: str,
    since: float,
    until: float,
    freshness_s: float = 1800.0,
) -> BedData:
    """The bed's readings and alert events in [since, until], NEWS2 recomputed (complete
    scores only, inputs within ``freshness_s``: ``rules.news2.freshness_s``)."""
    rows = conn.execute(
        "SELECT ward, device, vital, ts, value FROM readings WHERE flag IS NULL AND bed = ?"
        " AND (? IS NULL OR ward = ?)"
        " AND ts >= ? AND ts <= ? ORDER BY ts",
        (bed, ward, ward, since, until),
    ).fetchall()
    wards = {r[0] for r in rows}
    if len(wards) > 1:
        raise ValueError(f"bed {bed} is in several wards ({', '.join(sorted(wards))}): --ward")
    data = BedData(ward or (next(iter(wards)) if wards else "?"), bed)
    by_vital: dict[str, list[tuple[float, float]]] = {}
    by_device: dict[str, dict[str, list[tuple[float, float]]]] = {}
    tracker = News2Tracker()
    n2_t: list[float] = []
    n2_v: list[float] = []
    for _w, device, vital, ts, value in rows:
        by_vital.setdefault(vital, []).append((ts, value))
        by_device.setdefault(vital, {}).setdefault(device, []).append((ts, value))
        if vital in PARAMETERS:
            v: float | bool | str = value
            if vital == "avpu":
                v = AVPU_CODES[int(value)]
            elif vital == "o2":
                v = bool(value)
            if tracker.update(vital, v, ts):
                s = tracker.current(ts, freshness_s)
                if not s.partial:
                    n2_t.append(ts)
                    n2_v.append(float(s.total))
    for vital, pts in by_vital.items():
        data.series[vital] = _arrays(pts)
        data.devices[vital] = {d: _arrays(p) for d, p in by_device[vital].items()}
    data.news2 = (np.array(n2_t), np.array(n2_v))
    data.alerts = [
        Alert(*r)
        for r in conn.execute(
            "SELECT vital, at, value, priority, state, kind, rule, device, limit_value, message"
            " FROM alert_events WHERE bed = ?"
            " AND ward = ? AND at >= ? AND at <= ?"
            # escalations and re-notifications happen on the wall clock, not to the data
            " AND (extra IS NULL OR json_extract(extra, '$.action') IS NULL) ORDER BY at",
            (bed, data.ward, since, until),
        )
    ]
    return data


def _arrays(pts: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    a = np.array(pts, dtype=np.float64)
    return a[:, 0], a[:, 1]


def plotted(data: BedData) -> list[str]:
    """The vitals that get a panel (o2 and avpu only feed NEWS2), in :data:`ORDER`."""
    vitals = [v for v in ORDER if v in data.series]
    return vitals + sorted(v for v in data.series if v not in ORDER and v not in ("o2", "avpu"))
