"""``vitalmon stats``: descriptive statistics of the stored readings, per bed and vital.

For each (ward, bed, vital) with readings in the period (the raw readings of the SQLite
store; every device of the bed together, in event-time order):

* ``n``, ``mean``, ``sd`` (sample standard deviation, n - 1; none with one reading),
  ``min``, ``p5``, ``p25``, ``median``, ``p75``, ``p95``, ``max`` (numpy's linear
  interpolation between closest ranks);
* ``out_pct``: the share of the measured time the value was beyond the bed's warn
  limits (its profile's ``low.warn`` / ``high.warn``; the admitted profile, else
  ``beds.<ward>/<bed>.profile``, else ``adult``). Each reading counts for the time until
  the next one, at most ``rules.max_gap_s`` (a longer gap is unmeasured time); the last
  for the median interval, capped the same. With readings at a steady rate this is the
  share of readings out of range. None for a vital without limits;
* ``alerts_high``, ``alerts_medium``, ``alerts_low``: alerts of that bed and vital with an
  event in the period, each counted once at the highest priority it reached. Alerts
  about something that is not a stored vital (``news2``, a device's technical alarms)
  get rows of their own with ``n`` 0.

Pure numpy over rows read once; no wall clock except for ``--since``'s default.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import numpy.typing as npt

from monitor.config import Config, Profile
from monitor.model import iso

Array = npt.NDArray[np.float64]
PERCENTILES = (5, 25, 50, 75, 95)
PRIORITIES = ("high", "medium", "low")
_RANK = {"low": 1, "medium": 2, "high": 3}


@dataclass(frozen=True, slots=True)
class VitalStats:
    ward: str
    bed: str
    vital: str
    n: int
    mean: float | None
    sd: float | None
    min: float | None
    p5: float | None
    p25: float | None
    median: float | None
    p75: float | None
    p95: float | None
    max: float | None
    #: warn limits used for ``out_pct`` (None: no limit on that side)
    low: float | None
    high: float | None
    out_pct: float | None
    alerts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PRIORITIES, 0))

    def flat(self) -> dict[str, object]:
        d = asdict(self)
        counts = d.pop("alerts")
        d.update({f"alerts_{p}": counts[p] for p in PRIORITIES})
        return d


def describe(values: Array) -> dict[str, float | None]:
    """n, mean, sd, min, percentiles, max of one series' values."""
    n = len(values)
    if n == 0:
        return dict.fromkeys(("mean", "sd", "min", "p5", "p25", "median", "p75", "p95", "max"))
    pct = np.percentile(values, PERCENTILES)
    return {
        "mean": float(np.mean(values)),
        "sd": float(np.std(values, ddof=1)) if n > 1 else None,
        "min": float(np.min(values)),
        "p5": float(pct[0]),
        "p25": float(pct[1]),
        "median": float(pct[2]),
        "p75": float(pct[3]),
        "p95": float(pct[4]),
        "max": float(np.max(values)),
    }


def held_time(ts: Array, max_gap_s: float) -> Array:
    """How long each reading stands for: until the next, at most ``max_gap_s``; the last
    for the median interval (capped the same). ``ts`` sorted."""
    if len(ts) == 0:
        return np.empty(0)
    gaps = np.minimum(np.diff(ts), max_gap_s)
    last = float(np.median(gaps)) if len(gaps) else max_gap_s
    return np.append(gaps, last)


def out_of_range_pct(
    ts: Array, values: Array, low: float | None, high: float | None, max_gap_s: float
) -> float | None:
    """Percent of the measured time beyond ``low``/``high`` (time-weighted readings)."""
    if (low is None and high is None) or len(values) == 0:
        return None
    weight = held_time(ts, max_gap_s)
    out = np.zeros(len(values), dtype=bool)
    if low is not None:
        out |= values < low
    if high is not None:
        out |= values > high
    total = float(weight.sum())
    if total <= 0:  # readings all at one instant: count them
        return 100.0 * float(out.mean())
    return min(100.0, 100.0 * float(weight[out].sum()) / total)  # (sums' rounding)


def warn_limits(profile: Profile | None, vital: str) -> tuple[float | None, float | None]:
    tc = profile.thresholds.get(vital) if profile is not None else None
    if tc is None or not tc.enabled:
        return None, None
    low = tc.low.warn if tc.low is not None else None
    high = tc.high.warn if tc.high is not None else None
    if tc.low is not None and low is None:
        low = tc.low.crit
    if tc.high is not None and high is None:
        high = tc.high.crit
    return low, high


_READINGS_SQL = """SELECT ward, bed, vital, ts, value FROM readings
WHERE flag IS NULL AND ts >= ? AND ts <= ? AND (? IS NULL OR bed = ?) AND (? IS NULL OR ward = ?)
AND (? IS NULL OR vital = ?) ORDER BY ward, bed, vital, ts"""
_ALERTS_SQL = """SELECT ward, bed, vital, id, priority FROM alert_events
WHERE at >= ? AND at <= ? AND (? IS NULL OR bed = ?) AND (? IS NULL OR ward = ?)
AND (? IS NULL OR vital = ?)"""


def compute(
    conn: sqlite3.Connection,
    cfg: Config,
    since: float,
    until: float | None = None,
    *,
    bed: str | None = None,
    ward: str | None = None,
    vital: str | None = None,
) -> list[VitalStats]:
    """Statistics per (ward, bed, vital) from the store, sorted by ward, bed, vital."""
    args = (since, math.inf if until is None else until, bed, bed, ward, ward, vital, vital)
    rows = conn.execute(_READINGS_SQL, args).fetchall()
    alerts = conn.execute(_ALERTS_SQL, args).fetchall()
    profiles, _errors = cfg.resolve_profiles()
    assigned = bed_profiles(cfg, conn)
    max_gap = cfg.rules.max_gap_s

    series: dict[tuple[str, str, str], tuple[Array, Array]] = {}
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i][:3] != rows[start][:3]:
            chunk = np.array([(r[3], r[4]) for r in rows[start:i]], dtype=np.float64)
            series[rows[start][:3]] = (chunk[:, 0], chunk[:, 1])
            start = i
    counts = _alert_counts(alerts)
    out: list[VitalStats] = []
    for key in sorted(set(series) | set(counts)):
        w, b, v = key
        ts, values = series.get(key, (np.empty(0), np.empty(0)))
        profile = profiles.get(assigned.get((w, b), "adult"))
        low, high = warn_limits(profile, v)
        stats = VitalStats(
            ward=w,
            bed=b,
            vital=v,
            n=len(values),
            **describe(values),
            low=low,
            high=high,
            out_pct=out_of_range_pct(ts, values, low, high, max_gap),
            alerts=counts.get(key, dict.fromkeys(PRIORITIES, 0)),
        )
        out.append(stats)
    return out


def bed_profiles(cfg: Config, conn: sqlite3.Connection | None) -> dict[tuple[str, str], str]:
    """(ward, bed) -> profile name: the admission's (the store's ``beds``), else
    ``beds.<ward>/<bed>.profile``; a bed in neither is ``adult``."""
    admitted: dict[tuple[str, str], str] = {}
    if conn is not None:
        try:
            rows = conn.execute("SELECT ward, bed, profile FROM beds WHERE profile IS NOT NULL")
            admitted = {(w, b): p for w, b, p in rows}
        except sqlite3.OperationalError:  # a store from before admissions
            pass
    return {**cfg.bed_profiles(), **admitted}


def span_hint(conn: sqlite3.Connection, bed: str | None = None) -> str:
    """``" (the store has bed B's readings from A to B)"``: where to point ``--since``."""
    lo, hi = conn.execute(
        "SELECT min(ts), max(ts) FROM readings WHERE ? IS NULL OR bed = ?", (bed, bed)
    ).fetchone()
    who = f"bed {bed}'s readings" if bed is not None else "readings"
    if lo is None:
        return f" (the store has no {who})"
    return f" (the store has {who} from {iso(lo)} to {iso(hi)})"


def _alert_counts(
    rows: Iterable[tuple[str, str, str, str, str]],
) -> dict[tuple[str, str, str], dict[str, int]]:
    top: dict[tuple[str, str, str, str], str] = {}
    for w, b, v, ident, prio in rows:
        k = (w, b, v, ident)
        if _RANK.get(prio, 0) > _RANK.get(top.get(k, ""), 0):
            top[k] = prio
    out: dict[tuple[str, str, str], dict[str, int]] = {}
    for (w, b, v, _), prio in top.items():
        out.setdefault((w, b, v), dict.fromkeys(PRIORITIES, 0))[prio] += 1
    return out


# ------------------------------------------------------------------------- output

COLUMNS = (
    "ward",
    "bed",
    "vital",
    "n",
    "mean",
    "sd",
    "min",
    "p5",
    "p25",
    "median",
    "p75",
    "p95",
    "max",
    "low",
    "high",
    "out_pct",
    "alerts_high",
    "alerts_medium",
    "alerts_low",
)


def _cell(v: object, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}f}"
    return str(v)


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:g}"


def table(stats: list[VitalStats]) -> str:
    """A terminal table: one row per bed and vital; ``out%`` and ``alerts h/m/l``."""
    head = [
        "ward",
        "bed",
        "vital",
        "n",
        "mean",
        "sd",
        "min",
        "p5",
        "median",
        "p95",
        "max",
        "range",
        "out%",
        "alerts h/m/l",
    ]
    body = []
    for s in stats:
        rng = "-" if s.low is None and s.high is None else f"{_num(s.low)}..{_num(s.high)}"
        body.append(
            [
                s.ward,
                s.bed,
                s.vital,
                str(s.n),
                _cell(s.mean),
                _cell(s.sd),
                _cell(s.min),
                _cell(s.p5),
                _cell(s.median),
                _cell(s.p95),
                _cell(s.max),
                rng,
                _cell(s.out_pct),
                "/".join(str(s.alerts[p]) for p in PRIORITIES),
            ]
        )
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = []
    for r in [head, ["-" * w for w in widths], *body]:
        pairs = enumerate(zip(r, widths, strict=True))
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def to_csv(stats: list[VitalStats]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for s in stats:
        flat = s.flat()
        w.writerow(["" if flat[c] is None else flat[c] for c in COLUMNS])
    return buf.getvalue()


def to_json(stats: list[VitalStats], meta: Mapping[str, object]) -> str:
    return json.dumps({**meta, "stats": [s.flat() for s in stats]}, indent=1) + "\n"
