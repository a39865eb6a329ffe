"""``vitalmon replay``: a recorded numerics CSV through the real engine, with a report.

A recording (one bed) is read into :class:`~monitor.model.Reading` objects, fed in
event-time order through :class:`~monitor.engine.Engine` with the configured rules, and
also through a **naive monitor**: the same limits with every ``delay_s`` and
``clear_band`` set to 0 and ``confirm`` 1 (an alarm on every single reading beyond a
limit, artefacts included, cleared by the first reading back within it), no trend rules
and no flapping detection. The report lists vitalmon's alert events and compares the
two: alerts raised by priority, alarm burden (alerts raised per patient-hour) and time
in alarm.

Input: a CSV with a ``time_s`` column (seconds from the start of the recording) and one
column per numeric. :data:`DEFAULT_MAP` maps the MIMIC-II numerics names:

======================= ============= =========================================
column                  vital@device  note
======================= ============= =========================================
``HR``                  hr@ecg        ECG heart rate
``PULSE``               hr@pleth      pulse rate of the oximeter: a series of
                                      its own, so both are kept and alarmed
``SpO2``                spo2@pleth
``RESP``                rr@resp       impedance respiration
``ABPSys/Dias/Mean``    sbp/dbp/map   invasive arterial pressure, device ``abp``
``NBPSys/Dias/Mean``    sbp/dbp/map   cuff pressure, device ``nibp``, intermittent
======================= ============= =========================================

Column names match case-insensitively. ``--map COL=vital[@device]`` adds or overrides
a column (``COL=none`` ignores it). A blank cell or ``0`` means "not available"
(MIMIC-II convention) and is counted as missing. Every other value goes through
:func:`monitor.sources.codecs.check_value`, exactly as MQTT input does: what it refuses
(``implausible``, ``not_finite``, ``wrong_type``) is counted by column and cause and is
never alarmed.

Event time is ``start + time_s`` (``start`` defaults to :data:`DEFAULT_START`), so the
alerts and their ids are the same at any playback speed.

Sampling: nothing is adjusted for the recording. The engine judges each series by its
measurement mode (:mod:`monitor.engine.modes`): numerics recorded once a minute are
continuous series (a delay run may span gaps of 1.5 intervals, so at one sample a
minute any ``delay_s`` from 1 to 60 s means "two consecutive samples beyond the limit"),
a cuff column is intermittent (each reading judged on its own). A file sampled at most
every ``rules.modes.continuous_max_interval_s`` (120 s) is a monitor's numerics: its
other columns are continuous from their first sample (the replay simulator says so in
its messages too); a sparser file (a chart) leaves them to the engine. So a replay gives
exactly what the daemon gives on the same readings with the same configuration.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TextIO

from monitor.config import ModesConfig, RulesConfig
from monitor.engine import Engine
from monitor.model import (
    CONTINUOUS,
    INTERMITTENT,
    VITALS,
    AlertEvent,
    AlertState,
    Priority,
    Reading,
    iso,
)
from monitor.sources.codecs import check_value

#: Event time of ``time_s`` 0 unless ``--start`` is given: 2000-01-01T00:00:00Z.
DEFAULT_START: Final = 946_684_800.0
TIME_COLUMN: Final = "time_s"


@dataclass(frozen=True, slots=True)
class Column:
    vital: str
    device: str
    #: the measurement mode the source knows (a cuff column is intermittent), else None
    mode: str | None = None

    def __str__(self) -> str:
        return f"{self.vital}@{self.device}"


#: MIMIC-II numerics column -> vital and device (keys lower-case).
DEFAULT_MAP: Final[dict[str, Column]] = {
    "hr": Column("hr", "ecg"),
    "pulse": Column("hr", "pleth"),
    "spo2": Column("spo2", "pleth"),
    "resp": Column("rr", "resp"),
    "abpsys": Column("sbp", "abp"),
    "abpdias": Column("dbp", "abp"),
    "abpmean": Column("map", "abp"),
    "nbpsys": Column("sbp", "nibp", INTERMITTENT),
    "nbpdias": Column("dbp", "nibp", INTERMITTENT),
    "nbpmean": Column("map", "nibp", INTERMITTENT),
}

_IGNORE: Final = frozenset({"none", "-", ""})


class ReplayError(Exception):
    """A user error (bad file, bad option): reported without a traceback, exit 1."""


# ------------------------------------------------------------------------ options


def parse_speed(text: str) -> float | None:
    """``max`` -> None (as fast as possible); ``N`` -> N times real time."""
    if text.strip().lower() == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        speed = math.nan
    if not math.isfinite(speed) or speed <= 0:
        raise ReplayError(f"--speed {text!r}: give max or a positive number (600 = 600x)")
    return speed


def parse_start(text: str | None) -> float:
    """ISO 8601 with its UTC offset -> epoch seconds; None -> :data:`DEFAULT_START`."""
    if text is None:
        return DEFAULT_START
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(f"--start {text!r}: not an ISO 8601 time") from None
    if dt.tzinfo is None:
        raise ReplayError(f"--start {text!r}: an ISO time needs its UTC offset (e.g. Z)")
    return dt.timestamp()


def parse_map(items: Iterable[str]) -> dict[str, Column | None]:
    """``["PULSE=none", "ART=sbp@art"]`` -> overrides of :data:`DEFAULT_MAP` (None: ignore)."""
    out: dict[str, Column | None] = {}
    for item in items:
        col, sep, target = item.partition("=")
        col, target = col.strip(), target.strip()
        if not sep or not col:
            raise ReplayError(f"--map {item!r}: give COL=vital, COL=vital@device or COL=none")
        key = col.lower()
        if target.lower() in _IGNORE:
            out[key] = None
            continue
        vital, _, device = target.partition("@")
        vital, device = vital.strip().lower(), device.strip()
        if vital not in VITALS:
            raise ReplayError(f"--map {item!r}: unknown vital {vital!r} (known: {sorted(VITALS)})")
        if not device:
            default = DEFAULT_MAP.get(key)
            device = default.device if default and default.vital == vital else key
        out[key] = Column(vital, device)
    return out


# ---------------------------------------------------------------------- recording


@dataclass(slots=True)
class Recording:
    """One bed's numerics, as readings in event-time order."""

    path: str
    ward: str
    bed: str
    start: float
    readings: list[Reading]
    rows: int
    first_s: float
    last_s: float
    interval_s: float
    #: CSV column name -> what it feeds (only the columns present and used).
    columns: dict[str, Column]
    ignored: list[str]
    missing: Counter[str] = field(default_factory=Counter)
    #: (column, cause) -> count
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: first few rejections, for the report
    examples: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """First to last sample plus one interval: each sample stands for its interval."""
        return self.last_s - self.first_s + self.interval_s if self.rows else 0.0

    @property
    def end(self) -> float:
        """Event time at which the recording stops."""
        return self.start + self.first_s + self.duration_s


def load_csv(
    path: str | Path,
    bed: str,
    ward: str = "default",
    start: float = DEFAULT_START,
    overrides: dict[str, Column | None] | None = None,
    continuous_max_interval_s: float | None = None,
) -> Recording:
    """Read a numerics CSV; raise :class:`ReplayError` for anything a user must fix.

    A file sampled at most every ``continuous_max_interval_s`` (None: the default of
    ``rules.modes``) is a monitor's numerics: its readings other than a cuff's are marked
    continuous, as the replay simulator then says in its messages."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ReplayError(f"{p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReplayError(f"{p}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header:
        raise ReplayError(f"{p}: empty file")
    names = [h.strip() for h in header]
    lower = [n.lower() for n in names]
    if TIME_COLUMN not in lower:
        raise ReplayError(f"{p}: no {TIME_COLUMN} column (header: {','.join(names)})")
    mapping: dict[str, Column | None] = {**DEFAULT_MAP, **(overrides or {})}
    for key in overrides or {}:
        if key not in lower:
            raise ReplayError(f"--map {key}: no such column in {p} (columns: {','.join(names)})")
    t_idx = lower.index(TIME_COLUMN)
    used: list[tuple[int, str, Column]] = []
    ignored: list[str] = []
    for i, (name, key) in enumerate(zip(names, lower, strict=True)):
        if i == t_idx:
            continue
        col = mapping.get(key)
        if col is None:
            ignored.append(name)
        else:
            used.append((i, name, col))
    if not used:
        raise ReplayError(f"{p}: no column maps to a vital (use --map COL=vital)")

    rec = Recording(
        path=str(p),
        ward=ward,
        bed=bed,
        start=start,
        readings=[],
        rows=0,
        first_s=0.0,
        last_s=0.0,
        interval_s=0.0,
        columns={name: col for _, name, col in used},
        ignored=ignored,
    )
    times: list[float] = []
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        try:
            t = float(row[t_idx])
        except (ValueError, IndexError):
            raise ReplayError(f"{p}:{line_no}: {TIME_COLUMN} is not a number") from None
        if not math.isfinite(t):
            raise ReplayError(f"{p}:{line_no}: {TIME_COLUMN} is not finite")
        times.append(t)
        for i, name, col in used:
            cell = row[i].strip() if i < len(row) else ""
            raw: float | str
            try:
                raw = float(cell) if cell else 0.0
            except ValueError:
                raw = cell
            if raw == 0.0:
                rec.missing[name] += 1  # blank or 0: "not available"
                continue
            value, cause, detail = check_value(col.vital, raw)
            if value is None:
                rec.rejected[name, cause] += 1
                if len(rec.examples) < 5:
                    rec.examples.append(f"line {line_no}: {name} {detail}")
                continue
            rec.readings.append(
                Reading(start + t, ward, bed, col.device, col.vital, value, mode=col.mode)
            )
    if not times:
        raise ReplayError(f"{p}: no data rows")
    rec.rows = len(times)
    rec.first_s, rec.last_s = min(times), max(times)
    steps = [b - a for a, b in zip(sorted(times), sorted(times)[1:], strict=False) if b > a]
    rec.interval_s = statistics.median(steps) if steps else 0.0
    if continuous_max_interval_s is None:
        continuous_max_interval_s = ModesConfig().continuous_max_interval_s
    if 0 < rec.interval_s <= continuous_max_interval_s:
        # a monitor's numerics (the file's own sampling says so): its columns other than
        # the cuff's are continuous series from their first sample on
        rec.readings = [r if r.mode else replace(r, mode=CONTINUOUS) for r in rec.readings]
    rec.readings.sort(key=lambda r: r.ts)  # stable: columns keep their order within a row
    return rec


# -------------------------------------------------------------------------- rules


def naive_rules(rules: RulesConfig) -> RulesConfig:
    """The same limits with no condition delay, no hysteresis, no artefact rejection, no
    trend rules and no flapping detection: what a plain threshold monitor does."""
    data = rules.model_dump()
    for tc in data["thresholds"].values():
        tc["delay_s"] = 0.0
        tc["clear_band"] = 0.0
        tc["confirm"] = 1  # no artefact rejection
    data["trends"]["enabled"] = False
    data["flapping"]["enabled"] = False
    # every value that passes the input check counts, as on a plain monitor
    data["plausibility"]["ranges"] = {v: None for v in data["plausibility"]["ranges"]}
    data["plausibility"]["disagree"] = {}
    return RulesConfig.model_validate(data)


# --------------------------------------------------------------------- the replay


def play(
    readings: Sequence[Reading],
    engines: Sequence[Engine],
    speed: float | None = None,
    on_events: Callable[[int, list[AlertEvent]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> list[list[AlertEvent]]:
    """Feed readings (in ts order) to every engine; -> each engine's alert events.

    ``speed`` None runs as fast as possible; ``N`` sleeps so that the readings of each
    instant are processed N times faster than they were recorded. Rules use event time
    only, so the events do not depend on the speed. ``on_events(engine index, events)``
    is called as soon as an instant produces events.
    """
    out: list[list[AlertEvent]] = [[] for _ in engines]
    if not readings:
        return out
    t0, w0 = readings[0].ts, clock()
    i, n = 0, len(readings)
    while i < n:
        j = i
        ts = readings[i].ts
        while j < n and readings[j].ts == ts:
            j += 1
        if speed is not None:
            wait = w0 + (ts - t0) / speed - clock()
            if wait > 0:
                sleep(wait)
        for k, engine in enumerate(engines):
            group = list(readings[i:j])
            # the clock's work due before this instant first (NEWS2 holds and expiry of
            # beds with no reading now), as the daemon's tick; process() does a bed's own
            # (what is due at the instant itself is judged with its readings)
            events = engine.tick(math.nextafter(ts, -math.inf)) + engine.process(group)
            engine.take_score_updates()  # (a replay publishes no scores: none pile up)
            if k == 0 and isinstance(readings, list):
                readings[i:j] = group  # flagged as vitalmon judged them (stored so)
            if events:
                out[k].extend(events)
                if on_events is not None:
                    on_events(k, events)
        i = j
    return out


def summarize(events: Sequence[AlertEvent], rec: Recording) -> dict[str, Any]:
    """The numbers of one monitor's run (the table and the JSON show exactly these)."""
    hours = rec.duration_s / 3600.0
    top: dict[str, Priority] = {}
    raised_at: dict[str, float] = {}
    resolved_at: dict[str, float] = {}
    by_rule: Counter[str] = Counter()
    last: dict[str, Priority] = {}
    escalations = 0
    rank = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2}
    for e in events:
        if e.state == AlertState.ACTIVE and e.id not in top:
            top[e.id] = last[e.id] = e.priority
            raised_at[e.id] = e.at
            by_rule[f"{e.rule}@{e.device}"] += 1
        elif e.state == AlertState.ACTIVE:
            if rank[e.priority] > rank[last[e.id]]:
                escalations += 1
            if rank[e.priority] > rank[top[e.id]]:
                top[e.id] = e.priority
            last[e.id] = e.priority
        elif e.state == AlertState.RESOLVED:
            resolved_at[e.id] = e.at
    end = rec.end
    intervals = sorted((raised_at[a], resolved_at.get(a, end)) for a in raised_at)
    in_alarm = 0.0
    cur_start: float | None = None
    cur_end = 0.0
    for s, e_ in intervals:
        if cur_start is None or s > cur_end:
            if cur_start is not None:
                in_alarm += cur_end - cur_start
            cur_start, cur_end = s, e_
        else:
            cur_end = max(cur_end, e_)
    if cur_start is not None:
        in_alarm += cur_end - cur_start
    raised = len(top)
    return {
        "raised": raised,
        "reached_high": sum(p == Priority.HIGH for p in top.values()),
        "medium_only": sum(p == Priority.MEDIUM for p in top.values()),
        "escalations": escalations,
        "events": len(events),
        "burden_per_h": round(raised / hours, 2) if hours > 0 else None,
        "time_in_alarm_s": round(in_alarm, 1),
        "time_in_alarm_pct": round(100.0 * in_alarm / rec.duration_s, 1)
        if rec.duration_s > 0
        else None,
        "active_at_end": sum(1 for a in raised_at if a not in resolved_at),
        "by_rule": dict(sorted(by_rule.items())),
    }


@dataclass(slots=True)
class Report:
    rec: Recording
    rules_note: str | None
    vitalmon: list[AlertEvent]
    naive: list[AlertEvent]
    speed: float | None
    elapsed_s: float
    #: the rules vitalmon ran with (fitted to the sampling interval)
    rules: RulesConfig = field(default_factory=RulesConfig)

    def summary(self) -> dict[str, dict[str, Any]]:
        return {
            "vitalmon": summarize(self.vitalmon, self.rec),
            "naive": summarize(self.naive, self.rec),
        }

    def to_json(self) -> dict[str, Any]:
        rec = self.rec
        summary = self.summary()

        def alerts(events: list[AlertEvent]) -> list[dict[str, Any]]:
            return [{"offset_s": e.at - rec.start, **e.to_json()} for e in events]

        return {
            "file": rec.path,
            "ward": rec.ward,
            "bed": rec.bed,
            "start": iso(rec.start),
            "rows": rec.rows,
            "interval_s": rec.interval_s,
            "duration_s": rec.duration_s,
            "hours": round(rec.duration_s / 3600.0, 2),
            "columns": {name: str(col) for name, col in rec.columns.items()},
            "ignored_columns": rec.ignored,
            "readings": {
                "accepted": len(rec.readings),
                "missing": sum(rec.missing.values()),
                "rejected": sum(rec.rejected.values()),
                "rejected_by_cause": {
                    f"{col}:{cause}": n for (col, cause), n in sorted(rec.rejected.items())
                },
            },
            "rules_note": self.rules_note,
            "speed": "max" if self.speed is None else self.speed,
            "vitalmon": {"summary": summary["vitalmon"], "alerts": alerts(self.vitalmon)},
            "naive": {"summary": summary["naive"], "alerts": alerts(self.naive)},
        }


def replay(
    rec: Recording,
    rules: RulesConfig | None = None,
    speed: float | None = None,
    on_event: Callable[[AlertEvent], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Report:
    """Run a recording through vitalmon's engine and the naive monitor side by side.

    ``on_event`` sees each of vitalmon's events as it happens (live printing).
    """
    fitted, note = rules if rules is not None else RulesConfig(), None
    engines = [Engine(fitted, sinks=[]), Engine(naive_rules(fitted), sinks=[])]

    def forward(k: int, events: list[AlertEvent]) -> None:
        if k == 0 and on_event is not None:
            for e in events:
                on_event(e)

    w0 = time.monotonic()
    vitalmon, naive = play(rec.readings, engines, speed, forward, sleep=sleep)
    return Report(rec, note, vitalmon, naive, speed, time.monotonic() - w0, fitted)


# ------------------------------------------------------------------------ output


def offset(seconds: float) -> str:
    """Seconds from the start -> ``+HH:MM:SS``."""
    s = round(seconds)
    return f"+{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _hms(seconds: float) -> str:
    return offset(seconds)[1:]


ALERT_HEADER: Final = (
    f"{'offset':<10} {'rule':<10} {'device':<7} {'priority':<8} {'state':<8} {'seq':>3}  message"
)


def alert_line(e: AlertEvent, start: float) -> str:
    return (
        f"{offset(e.at - start):<10} {e.rule:<10} {e.device:<7} {e.priority!s:<8} "
        f"{e.state!s:<8} {e.seq:>3}  {e.message}"
    )


def header_lines(rec: Recording, rules_note: str | None, speed: float | None) -> list[str]:
    cols = ", ".join(f"{name}->{col}" for name, col in rec.columns.items())
    lines = [
        f"replay {Path(rec.path).name}: ward {rec.ward}, bed {rec.bed}, {rec.rows} rows "
        f"every {rec.interval_s:g} s, {rec.duration_s / 3600:.2f} h from {iso(rec.start)}, "
        f"speed {'max' if speed is None else f'{speed:g}x'}",
        f"columns: {cols}" + (f"; ignored: {', '.join(rec.ignored)}" if rec.ignored else ""),
        f"readings: {len(rec.readings)} accepted, {sum(rec.missing.values())} missing "
        f"(blank or 0), {sum(rec.rejected.values())} rejected",
    ]
    lines += [f"  rejected {col}: {cause} x{n}" for (col, cause), n in sorted(rec.rejected.items())]
    if rules_note:
        lines.append(f"note: {rules_note}")
    return lines


SUMMARY_ROWS: Final = (
    ("raised", "alerts raised"),
    ("reached_high", "  reached high"),
    ("medium_only", "  medium only"),
    ("escalations", "escalations (to high)"),
    ("events", "alert events (raise/change/resolve)"),
    ("burden_per_h", "alarm burden (raised per patient-h)"),
    ("time_in_alarm_s", "time in alarm (s)"),
    ("time_in_alarm_pct", "time in alarm (% of recording)"),
    ("active_at_end", "still active at the end"),
)


def _cell(value: Any) -> str:
    """As the JSON has it: 13.33, 79.2, 3420 (an integral float without its .0)."""
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def summary_lines(report: Report) -> list[str]:
    s = report.summary()
    v, n = s["vitalmon"], s["naive"]
    w = 38
    lines = [f"{'summary':<{w}} {'vitalmon':>10} {'naive':>10}"]
    for key, label in SUMMARY_ROWS:
        lines.append(f"{label:<{w}} {_cell(v[key]):>10} {_cell(n[key]):>10}")
        if key == "time_in_alarm_s":
            hms = "  time in alarm (h:m:s)"
            lines.append(f"{hms:<{w}} {_hms(v[key]):>10} {_hms(n[key]):>10}")
    rules = sorted(set(v["by_rule"]) | set(n["by_rule"]))
    if rules:
        lines.append("")
        lines.append(f"{'alerts raised by rule@device':<{w}} {'vitalmon':>10} {'naive':>10}")
        for r in rules:
            lines.append(f"{r:<{w}} {v['by_rule'].get(r, 0):>10} {n['by_rule'].get(r, 0):>10}")
    lines.append("")
    lines.append(
        "naive: the same limits with delay_s 0, clear_band 0 and confirm 1 (no artefact "
        "rejection), no trend rules, no flapping detection."
    )
    return lines


def print_table_header(
    rec: Recording, rules_note: str | None, speed: float | None, out: TextIO
) -> None:
    for line in header_lines(rec, rules_note, speed):
        print(line, file=out)
    print("", file=out)
    print("vitalmon alerts", file=out)
    print(ALERT_HEADER, file=out, flush=True)


def print_table_footer(report: Report, out: TextIO) -> None:
    if not report.vitalmon:
        print("(none)", file=out)
    print("", file=out)
    for line in summary_lines(report):
        print(line, file=out)


def render_table(report: Report) -> str:
    """The whole table as one string (what ``--format table`` prints)."""
    lines = [*header_lines(report.rec, report.rules_note, report.speed), "", "vitalmon alerts"]
    lines.append(ALERT_HEADER)
    lines += [alert_line(e, report.rec.start) for e in report.vitalmon]
    if not report.vitalmon:
        lines.append("(none)")
    lines += ["", *summary_lines(report)]
    return "\n".join(lines) + "\n"


def check_store(path: str) -> None:
    """Refuse a ``--store`` that cannot be created, before the replay runs."""
    p = Path(path)
    if p.is_dir():
        raise ReplayError(f"--store {path}: is a directory; give a file such as replay.db")
    if not p.parent.is_dir():
        raise ReplayError(f"--store {path}: no directory {p.parent}")


def save(rec: Recording, events: Sequence[AlertEvent], path: str) -> int:
    """Write the recording's readings and vitalmon's alert events into the SQLite store at
    ``path`` (the daemon's schema; created if missing). Readings and events already there
    are kept, and the same ones are not stored twice (alert ids follow from event time),
    so replaying again is harmless. -> readings newly stored."""
    import sqlite3

    from monitor.sinks.sqlite import alert_row, connect, reading_row, write_rows

    try:
        conn = connect(path)
        try:
            return write_rows(
                conn, [reading_row(r) for r in rec.readings], [alert_row(e) for e in events]
            )
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ReplayError(f"--store {path}: {exc}") from None


def plot(rec: Recording, rules: RulesConfig, store: str, out: Path) -> str:
    """The ``vitalmon report`` figure of the whole recording from the store a replay
    wrote, with the limits the replay used -> what was drawn."""
    from monitor.config import Config
    from monitor.sinks.sqlite import connect
    from monitor.views.report import ReportError, make

    conn = connect(store, readonly=True)
    try:
        return make(conn, Config(rules=rules), rec.ward, rec.bed, rec.start, rec.end, out)
    except ReportError as exc:
        raise ReplayError(f"--report: {exc}") from None
    finally:
        conn.close()


def keep(
    rec: Recording, report: Report, store: str | None, report_to: Path | None, out: TextIO
) -> None:
    """``--store`` and ``--report``: the replay's readings and alerts into a store, the
    report drawn from it (a temporary one when only ``--report`` is given)."""
    if store is not None:
        n = save(rec, report.vitalmon, store)
        print(
            f"store {store}: {n} readings and {len(report.vitalmon)} alert events of "
            f"ward {rec.ward}, bed {rec.bed} (vitalmon report|stats --store {store} "
            f"--since {iso(rec.start)})",
            file=out,
        )
    if report_to is None:
        return
    if store is not None:
        print(f"report {plot(rec, report.rules, store, report_to)}", file=out)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vitalmon-replay-") as tmp:
        db = str(Path(tmp) / "replay.db")
        save(rec, report.vitalmon, db)
        print(f"report {plot(rec, report.rules, db, report_to)}", file=out)


def main(
    path: str,
    bed: str,
    ward: str | None = None,
    speed: str = "max",
    rules: RulesConfig | None = None,
    start: str | None = None,
    maps: Sequence[str] = (),
    fmt: str = "table",
    out: TextIO | None = None,
    store: str | None = None,
    report_to: str | None = None,
) -> int:
    """``vitalmon replay``: -> exit status (1 for a user error, reported on stderr).

    ``store``: also write the readings and vitalmon's alert events into this SQLite store;
    ``report_to``: also draw ``vitalmon report``'s figure of the recording to this file.
    """
    out = sys.stdout if out is None else out
    try:
        pace = parse_speed(speed)
        t0 = parse_start(start)
        figure = None
        if report_to is not None:
            from monitor.views.report import ReportError, check_output

            try:
                figure = check_output(report_to)
            except ReportError as exc:
                raise ReplayError(f"--report {exc}") from None
        if store is not None:
            check_store(store)
        rec = load_csv(
            path,
            bed,
            ward or "default",
            t0,
            parse_map(maps),
            (rules or RulesConfig()).modes.continuous_max_interval_s,
        )
    except ReplayError as exc:
        print(f"vitalmon replay: {exc}", file=sys.stderr)
        return 1
    if fmt == "json":
        report = replay(rec, rules, pace)
        json.dump(report.to_json(), out, indent=1)
        out.write("\n")
        return _keep(rec, report, store, figure, sys.stderr)
    print_table_header(rec, None, pace, out)

    def live(e: AlertEvent) -> None:
        print(alert_line(e, rec.start), file=out, flush=True)

    report = replay(rec, rules, pace, on_event=live)
    print_table_footer(report, out)
    return _keep(rec, report, store, figure, out)


def _keep(
    rec: Recording, report: Report, store: str | None, figure: Path | None, out: TextIO
) -> int:
    if store is None and figure is None:
        return 0
    print("", file=out)
    try:
        keep(rec, report, store, figure, out)
    except ReplayError as exc:
        print(f"vitalmon replay: {exc}", file=sys.stderr)
        return 1
    return 0
