"""What the bed page draws, as JSON: the same facts as ``vitalmon report``
(:mod:`monitor.views.report_data`) -- readings by vital and device, the bed's limits
from its profile, alert events, NEWS2 recomputed from the stored inputs -- plus the
bed's alert history and admission."""

from __future__ import annotations

import itertools
import math
import sqlite3
from typing import Any

import numpy as np

from monitor.config import Config, ThresholdConfig
from monitor.model import LABELS, VITALS, iso
from monitor.views.report_data import load, plotted
from monitor.views.stats import bed_profiles

#: Points per line at most: longer lines are cut into buckets drawn as their min and max
#: (the shape of a desaturation survives; a 6 h line at 1 Hz is 21,600 points).
MAX_POINTS = 1200
HISTORY = 200


def _thin(ts: np.ndarray, values: np.ndarray, limit: int = MAX_POINTS) -> list[list[float]]:
    n = len(ts)
    if n <= limit:
        return [[float(t), float(v)] for t, v in zip(ts, values, strict=True)]
    buckets = limit // 2
    edges = np.linspace(0, n, buckets + 1).astype(int)
    out: list[list[float]] = []
    for a, b in itertools.pairwise(edges):
        if b <= a:
            continue
        seg = values[a:b]
        i, j = int(np.argmin(seg)), int(np.argmax(seg))
        for k in sorted({i, j}):
            out.append([float(ts[a + k]), float(seg[k])])
    return out


def _limits(tc: ThresholdConfig | None) -> dict[str, Any] | None:
    if tc is None or not tc.enabled:
        return None
    out: dict[str, Any] = {}
    for side in ("low", "high"):
        lv = getattr(tc, side)
        if lv is not None:
            out[side] = {"warn": lv.warn, "crit": lv.crit}
    return out or None


def _num(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def bed_data(
    conn: sqlite3.Connection, cfg: Config, ward: str, bed: str, since: float, until: float
) -> dict[str, Any]:
    data = load(conn, ward, bed, since, until, cfg.rules.news2.freshness_s)
    profiles, _ = cfg.resolve_profiles()
    name = bed_profiles(cfg, conn).get((ward, bed), "adult")
    profile = profiles.get(name)
    vitals = []
    for vital in plotted(data):
        vitals.append(
            {
                "vital": vital,
                "label": LABELS.get(vital, vital),
                "unit": VITALS.get(vital, ("",))[0],
                "lines": {dev: _thin(t, v) for dev, (t, v) in data.lines(vital).items()},
                "limits": _limits(profile.thresholds.get(vital) if profile else None),
            }
        )
    markers = [
        {
            "vital": a.vital,
            "at": a.at,
            "value": _num(a.value),
            "priority": a.priority,
            "state": a.state,
            "kind": a.kind,
            "rule": a.rule,
            "message": a.message,
        }
        for a in data.alerts
    ]
    history = [
        {
            "id": r[0],
            "seq": r[1],
            "at": iso(r[2]),
            "state": r[3],
            "priority": r[4],
            "kind": r[5],
            "rule": r[6],
            "vital": r[7],
            "message": r[8],
            "ack_by": r[9],
        }
        for r in conn.execute(
            "SELECT id, seq, at, state, priority, kind, rule, vital, message,"
            " json_extract(extra, '$.ack_by')"
            " FROM alert_events WHERE ward = ? AND bed = ? ORDER BY ev DESC LIMIT ?",
            (ward, bed, HISTORY),
        )
    ]
    adm = conn.execute(
        "SELECT patient, profile, at, by FROM beds WHERE ward = ? AND bed = ?", (ward, bed)
    ).fetchone()
    return {
        "ward": ward,
        "bed": bed,
        "profile": name,
        "profiles": sorted(profiles),
        "since": since,
        "until": until,
        "vitals": vitals,
        "news2": _thin(*data.news2),
        "markers": markers,
        "history": history,
        "admission": None
        if adm is None
        else {"patient": adm[0], "profile": adm[1], "at": iso(adm[2]), "by": adm[3]},
    }
