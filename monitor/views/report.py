"""``vitalmon report``: trend plots of one bed from the store (matplotlib, PNG/PDF/SVG).

One panel per stored vital (in :data:`ORDER`), sharing the time axis (UTC): the readings
as a line per device (a vital measured by several devices -- HR from the ECG and from
the oximeter -- gets a line each, named in the panel's legend), the bed's limits as
bands (warn pale, crit stronger, on the side they apply; from its profile as ``vitalmon
stats`` resolves it), and each alert event of that vital as a marker at its time in its
priority's colour (high red, medium amber, low cyan; a resolution as a hollow marker).
Only an alert whose ``value`` is in the panel's unit is drawn at that value: a threshold
(``physiological``) alert's reading, a ``score`` alert's NEWS2 points. Any other (a
trend alert's slope, a flapping alert's count of changes, a technical alarm) is drawn on
its device's line at its time, and a trend alert's rise or fall is written beside it
with its unit (``+25 /min per 30 min``, ``-6 % from baseline``).
A last panel gives NEWS2 recomputed from the stored inputs (the daemon's own scoring,
on event time) with its bands 0-4, 5-6 and >= 7, and the NEWS2 alerts.

``render()`` returns the figure (tests read its axes); ``write()`` saves it; the format
is the file's suffix. What is drawn is read by :mod:`monitor.views.report_data`.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, safe over SSH and in services

import matplotlib.dates as mdates
import numpy as np
from matplotlib.figure import Figure

from monitor.config import Config
from monitor.engine.news2 import PARAMETERS
from monitor.engine.trend_rule import _fmt_per as fmt_per
from monitor.model import LABELS, VITALS, fmt_reading, iso
from monitor.views.report_data import ORDER, Alert, BedData, _arrays, load, plotted
from monitor.views.stats import bed_profiles, span_hint

COLOURS = {"high": "#d62728", "medium": "#ffb000", "low": "#17becf"}
#: The devices' lines of a panel, in the order of their names (none an alert colour).
LINE_COLOURS = ("#1f4e79", "#7b3f99", "#2e7d32", "#8d5524", "#555555")
FORMATS = (".png", ".pdf", ".svg")
#: Alert kinds whose ``value`` is in the unit of their panel: a threshold alert's
#: reading, a NEWS2 alert's score (its flapping alert's excepted: a count). A trend
#: alert's is a slope (or a median), a technical alarm's a reading it doubts or a time.
VALUE_ON_AXIS = ("physiological", "score")


def _time(ts: np.ndarray) -> np.ndarray:
    return np.array([datetime.fromtimestamp(t, UTC) for t in ts])


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
                ax.text(
                    0.5,
                    0.5,
                    "no complete NEWS2: "
                    + (
                        f"no {', '.join(missing)} readings"
                        if missing
                        else f"the inputs were never all within {cfg.rules.news2.freshness_s:g} s"
                    ),
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    color="0.35",
                )
        else:
            ts, values = data.series[vital]
            unit = VITALS.get(vital, ("",))[0]
            label = LABELS.get(vital, vital)
            ax.set_ylabel(f"{label} ({unit})" if unit else vital)
            lines = data.lines(vital)
            drawn = []
            for i, (device, (d_ts, d_values)) in enumerate(lines.items()):
                few = len(d_ts) < 60  # spot measurements (NIBP, temperature): show each one
                colour = LINE_COLOURS[i % len(LINE_COLOURS)]
                (line,) = ax.plot(
                    _time(d_ts),
                    d_values,
                    color=colour,
                    lw=1.0,
                    label=f"{label} {device}" if len(lines) > 1 else label,
                    marker="o" if few else None,
                    ms=4,
                )
                drawn.append(line)
            if len(drawn) > 1:
                ax.legend(handles=drawn, loc="upper left", fontsize="small")
            _limits(ax, profile.thresholds.get(vital) if profile else None)
            lo_v, hi_v = float(values.min()), float(values.max())
            pad = max(1.0, 0.1 * (hi_v - lo_v))
            ax.set_ylim(lo_v - pad, hi_v + pad)
        if len(ts):
            span = [min(span[0], float(ts[0])), max(span[1], float(ts[-1]))]
        lines = {"": (ts, values)} if vital == "news2" else data.lines(vital)
        _markers(ax, [a for a in data.alerts if a.vital == vital], lines, cfg)
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


def on_axis(a: Alert) -> bool:
    """Whether the alert's ``value`` is in the unit of its vital's panel (a flapping
    alert's value is its count of changes, whatever its kind)."""
    return (
        a.kind in VALUE_ON_AXIS
        and not a.rule.endswith(".flapping")
        and a.value is not None
        and bool(np.isfinite(a.value))
    )


def _on_line(a: Alert, lines: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """The value of the alert's device's line (else the first line's) at the alert's time."""
    ts, values = lines.get(a.device) or next(iter(lines.values()), (np.empty(0), np.empty(0)))
    if not len(ts):
        return 0.0
    return float(np.interp(a.at, ts, values))


def trend_text(a: Alert, cfg: Config) -> str | None:
    """What a trend alert measured, with its unit: a slope rule's rate (``+25 /min per 30
    min``: its ``per_s`` from the config, else from its message), a baseline rule's move
    from the bed's baseline (``-6 % from baseline``); None for a resolution (its value
    is the slope that let it clear, or the reading when an operator closed it)."""
    if a.kind != "trend" or a.state == "resolved" or a.value is None:
        return None
    vital, _, name = a.rule.partition(".")  # hr.trend_up, spo2.baseline_down
    kind, _, direction = name.rpartition("_")
    if direction not in ("up", "down"):
        return None  # (hr.trend_up.flapping: a count of changes)
    unit = VITALS.get(vital, ("",))[0]
    sign = "+" if a.value > 0 else "-" if a.value < 0 else ""
    if kind == "trend":
        slope = cfg.rules.trends.slope.get(vital)
        limit = getattr(slope, direction, None) if slope is not None else None
        if limit is not None:
            per = fmt_per(limit.per_s)  # (the engine's words: as in the alert's message)
        else:  # a rule no longer configured: its message says ("... per 10 min")
            m = re.search(r" per ([\d.]+ (?:s|min|h))\b", a.message)
            per = m.group(1) if m else "?"
        return f"{sign}{fmt_reading(vital, abs(a.value))} {unit} per {per}"
    if kind == "baseline":
        base = cfg.rules.trends.baseline.get(vital)
        limit_b = getattr(base, direction, None) if base is not None else None
        if limit_b is None or a.limit is None:
            return "from baseline"
        baseline = a.limit - (limit_b.delta if direction == "up" else -limit_b.delta)
        move = a.value - baseline
        sign = "+" if move > 0 else "-" if move < 0 else ""
        return f"{sign}{fmt_reading(vital, abs(move))} {unit} from baseline"
    return None


def _markers(
    ax: object,
    alerts: list[Alert],
    lines: dict[str, tuple[np.ndarray, np.ndarray]],
    cfg: Config,
) -> None:
    """Alert events at their time: at their value when it is in the panel's unit
    (:func:`on_axis`), else on their device's line, a trend's measure written beside."""
    from matplotlib.axes import Axes

    if not isinstance(ax, Axes):
        return
    for priority in ("low", "medium", "high"):
        for resolved in (False, True):
            pts = [
                a for a in alerts if a.priority == priority and (a.state == "resolved") == resolved
            ]
            if not pts:
                continue
            x: list[float] = []
            y: list[float] = []
            for a in pts:
                x.append(a.at)
                y.append(a.value if on_axis(a) and a.value is not None else _on_line(a, lines))
            colour = COLOURS[priority]
            when = mdates.date2num(_time(np.array(x)))  # type: ignore[no-untyped-call]
            ax.scatter(
                when,
                y,
                s=60,
                marker="v" if not resolved else "o",
                zorder=5,
                facecolors="none" if resolved else colour,
                edgecolors=colour,
                label=f"{priority} {'resolved' if resolved else 'alert'}",
            )
            for a, at, value in zip(pts, when, y, strict=True):
                text = trend_text(a, cfg)
                if text is not None:
                    ax.annotate(
                        text,
                        (at, value),
                        xytext=(6, 6),
                        textcoords="offset points",
                        fontsize="small",
                        color="0.2",
                        zorder=6,
                    )


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


__all__ = [
    "COLOURS",
    "FORMATS",
    "LINE_COLOURS",
    "ORDER",
    "VALUE_ON_AXIS",
    "Alert",
    "BedData",
    "ReportError",
    "_arrays",
    "_limits",
    "_markers",
    "_on_line",
    "_time",
    "check_output",
    "load",
    "make",
    "on_axis",
    "plotted",
    "render",
    "trend_text",
    "write",
]
