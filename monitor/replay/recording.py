"""The recording: a CSV of numerics (``time_s`` and one column per numeric) read into
readings, with the options that shape it (``--map``, ``--start``, ``--speed``)."""

from __future__ import annotations

import csv
import math
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Final

from monitor.config import ModesConfig
from monitor.model import (
    CONTINUOUS,
    INTERMITTENT,
    VITALS,
    Reading,
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
