"""``vitalmon report``: trend plots of one bed from the store (matplotlib, PNG/PDF/SVG).

One panel per stored vital (in :data:`ORDER`, every device of the bed together), sharing
the time axis (UTC): the readings as a line, the bed's limits as bands (warn pale,
crit stronger, on the side they apply; from its profile as ``vitalmon stats`` resolves
it), and each alert event of that vital as a marker at its time and value in its
priority's colour (high red, medium amber, low cyan; a resolution as a hollow marker).
A last panel gives NEWS2 recomputed from the stored inputs (the daemon's own scoring,
on event time) with its bands 0-4, 5-6 and >= 7, and the NEWS2 alerts.

``render()`` returns the figure (tests read its axes); ``write()`` saves it; the format
is the file's suffix.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, safe over SSH and in services

import matplotlib.dates as mdates
import numpy as np
from matplotlib.figure import Figure

from monitor.config import Config
from monitor.engine.news2 import PARAMETERS, News2Tracker
from monitor.model import AVPU_CODES, LABELS, VITALS, iso
from monitor.views.stats import bed_profiles, span_hint

ORDER = ("hr", "spo2", "rr", "sbp", "dbp", "map", "temp", "etco2")
COLOURS = {"high": "#d62728", "medium": "#ffb000", "low": "#17becf"}
FORMATS = (".png", ".pdf", ".svg")


@dataclass
class BedData:
    ward: str
    bed: str
    #: vital -> (ts, values), sorted by time
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    #: (vital, at, value, priority, state) of each alert event
    alerts: list[tuple[str, float, float | None, str, str]] = field(default_factory=list)
    #: NEWS2 (ts, score) at each change of an input; only complete scores
    news2: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty(0))


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
        "SELECT ward, vital, ts, value FROM readings WHERE flag IS NULL AND bed = ?"
        " AND (? IS NULL OR ward = ?)"
        " AND ts >= ? AND ts <= ? ORDER BY ts",
        (bed, ward, ward, since, until),
    ).fetchall()
    wards = {r[0] for r in rows}
    if len(wards) > 1:
        raise ValueError(f"bed {bed} is in several wards ({', '.join(sorted(wards))}): --ward")
    data = BedData(ward or (next(iter(wards)) if wards else "?"), bed)
    by_vital: dict[str, list[tuple[float, float]]] = {}
    tracker = News2Tracker()
    n2_t: list[float] = []
    n2_v: list[float] = []
    for _w, vital, ts, value in rows:
        by_vital.setdefault(vital, []).append((ts, value))
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
        a = np.array(pts, dtype=np.float64)
        data.series[vital] = (a[:, 0], a[:, 1])
    data.news2 = (np.array(n2_t), np.array(n2_v))
    data.alerts = [
        (r[0], r[1], r[2], r[3], r[4])
        for r in conn.execute(
            "SELECT vital, at, value, priority, state FROM alert_events WHERE bed = ?"
            " AND ward = ? AND at >= ? AND at <= ?"
            # escalations and re-notifications happen on the wall clock, not to the data
            " AND (extra IS NULL OR json_extract(extra, '$.action') IS NULL) ORDER BY at",
            (bed, data.ward, since, until),
        )
    ]
    return data


def _time(ts: np.ndarray) -> np.ndarray:
    return np.array([datetime.fromtimestamp(t, UTC) for t in ts])


def plotted(data: BedData) -> list[str]:
    """The vitals that get a panel (o2 and avpu only feed NEWS2), in :data:`ORDER`."""
    vitals = [v for v in ORDER if v in data.series]
    return vitals + sorted(v for v in data.series if v not in ORDER and v not in ("o2", "avpu"))


def render(data: BedData, cfg: Config, conn: sqlite3.Connection | None = None) -> Figure:
    """The figure: a panel per vital with readings, then NEWS2."""
    panels = [*plotted(data), "news2"]
    fig = Figure(figsize=(11, 1.9 * len(panels) + 1), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    profiles, _ = cfg.resolve_profiles()
    assigned = bed_profiles(cfg, conn)
    name = assigned.get((data.ward, data.bed), "adult")
    profile = profiles.get(name)
    span = [np.inf, -np.inf]
    for vital, ax in zip(panels, axes, strict=True):
        if vital == "news2":
            ts, values = data.news2
            for lo, hi, colour in ((4.5, 6.5, COLOURS["medium"]), (6.5, 20, COLOURS["high"])):
                ax.axhspan(lo, hi, color=colour, alpha=0.12, lw=0)
            ax.set_ylabel("NEWS2")
            ax.set_ylim(-0.5, max(10.0, float(values.max()) + 1 if len(values) else 10.0))
            if len(ts):
                ax.step(_time(ts), values, where="post", color="black", lw=1.2, label="NEWS2")
            else:
                missing = [LABELS.get(p, p) for p in PARAMETERS if p not in data.series]
                ax.text(0.5, 0.5, "no complete NEWS2: " + (
                    f"no {', '.join(missing)} readings" if missing
                    else f"the inputs were never all within {cfg.rules.news2.freshness_s:g} s"
                ), transform=ax.transAxes, ha="center", va="center", color="0.35")  # fmt: skip
        else:
            ts, values = data.series[vital]
            unit = VITALS.get(vital, ("",))[0]
            ax.set_ylabel(f"{LABELS.get(vital, vital)} ({unit})" if unit else vital)
            few = len(ts) < 60  # spot measurements (NIBP, temperature): show each one
            ax.plot(_time(ts), values, color="#1f4e79", lw=1.0, label=vital,
                    marker="o" if few else None, ms=4)  # fmt: skip
            _limits(ax, profile.thresholds.get(vital) if profile else None)
            lo_v, hi_v = float(values.min()), float(values.max())
            pad = max(1.0, 0.1 * (hi_v - lo_v))
            ax.set_ylim(lo_v - pad, hi_v + pad)
        if len(ts):
            span = [min(span[0], float(ts[0])), max(span[1], float(ts[-1]))]
        _markers(ax, [a for a in data.alerts if a[0] == vital], ts, values)
        ax.grid(True, alpha=0.3)
    ax = axes[-1]
    locator = mdates.AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC))  # type: ignore[no-untyped-call]
    ax.set_xlabel("time (UTC)")
    when = ""
    if np.isfinite(span[0]):
        start = datetime.fromtimestamp(span[0], UTC).strftime("%Y-%m-%d %H:%M")
        end = datetime.fromtimestamp(span[1], UTC).strftime("%H:%M UTC")
        when = f", {start} - {end}"
    fig.suptitle(
        f"{data.ward}/{data.bed} (profile {name}){when}: {len(data.alerts)} alert events",
        fontsize=12,
    )
    return fig


def _limits(ax: object, tc: object) -> None:
    """Warn and crit bands beyond the limits, on the sides that have them."""
    from matplotlib.axes import Axes

    from monitor.config import ThresholdConfig

    if not isinstance(ax, Axes) or not isinstance(tc, ThresholdConfig) or not tc.enabled:
        return
    if tc.low is not None:
        warn, crit = tc.low.warn, tc.low.crit
        if warn is not None:
            ax.axhspan(crit if crit is not None else -1e6, warn, color="#ffb000", alpha=0.12, lw=0)
            ax.axhline(warn, color="#ffb000", lw=0.8, ls="--")
        if crit is not None:
            ax.axhspan(-1e6, crit, color="#d62728", alpha=0.12, lw=0)
            ax.axhline(crit, color="#d62728", lw=0.8, ls="--")
    if tc.high is not None:
        warn, crit = tc.high.warn, tc.high.crit
        if warn is not None:
            ax.axhspan(warn, crit if crit is not None else 1e6, color="#ffb000", alpha=0.12, lw=0)
            ax.axhline(warn, color="#ffb000", lw=0.8, ls="--")
        if crit is not None:
            ax.axhspan(crit, 1e6, color="#d62728", alpha=0.12, lw=0)
            ax.axhline(crit, color="#d62728", lw=0.8, ls="--")


def _markers(
    ax: object,
    alerts: list[tuple[str, float, float | None, str, str]],
    ts: np.ndarray,
    values: np.ndarray,
) -> None:
    """Alert events at their time and value (where the event has none: the reading's)."""
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        return
    for priority in ("low", "medium", "high"):
        for resolved in (False, True):
            pts = [a for a in alerts if a[3] == priority and (a[4] == "resolved") == resolved]
            if not pts:
                continue
            x: list[float] = []
            y: list[float] = []
            for _v, at, given, _p, _s in pts:
                value = given
                if value is None or not np.isfinite(value):
                    i = int(np.searchsorted(ts, at)) if len(ts) else -1
                    value = float(values[min(max(i, 0), len(values) - 1)]) if len(ts) else 0.0
                x.append(at)
                y.append(value)
            colour = COLOURS[priority]
            when = mdates.date2num(_time(np.array(x)))  # type: ignore[no-untyped-call]
            ax.scatter(
                when, y, s=60, marker="v" if not resolved else "o", zorder=5,
                facecolors="none" if resolved else colour, edgecolors=colour,
                label=f"{priority} {'resolved' if resolved else 'alert'}",
            )  # fmt: skip


def write(fig: Figure, path: Path) -> None:
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: give a .png, .pdf or .svg file")
    fig.savefig(path, dpi=110)


class ReportError(Exception):
    """Nothing to draw, or the file cannot be written: said to the user, exit 1."""


def check_output(path: str | Path) -> Path:
    """The output file, checked before any work: its suffix names a format."""
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise ReportError(f"{out}: give a .png, .pdf or .svg file")
    return out


def make(
    conn: sqlite3.Connection,
    cfg: Config,
    ward: str | None,
    bed: str,
    since: float,
    until: float,
    out: Path,
) -> str:
    """Load, draw and write the report of a bed over [since, until] -> a line saying what
    was drawn. Raises :class:`ReportError` for an empty span or an unwritable file."""
    try:
        data = load(conn, ward, bed, since, until, cfg.rules.news2.freshness_s)
    except ValueError as exc:
        raise ReportError(str(exc)) from None
    if not data.series:
        raise ReportError(f"no readings of bed {bed} since {iso(since)}" + span_hint(conn, bed))
    fig = render(data, cfg, conn)
    try:
        write(fig, out)
    except OSError as exc:
        raise ReportError(f"cannot write {out}: {exc.strerror or exc}") from None
    n = sum(len(ts) for ts, _ in data.series.values())
    return (
        f"{out}: {len(plotted(data))} vitals and NEWS2, {n} readings, "
        f"{len(data.alerts)} alert events"
    )
