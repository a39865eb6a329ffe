"""The ward as a central station sees it, built from the daemon's MQTT topics alone.

:class:`Ward` takes (topic, payload) messages -- readings on the source topic
(``vitals/{ward}/{bed}/{device}``, decoded like the daemon does), alert events on
``alerts.topic``, each bed's retained list of open alerts on ``alerts.state_topic`` and
its retained NEWS2 on ``rules.news2.topic`` -- and keeps per bed the latest value of each
vital with a trend arrow, NEWS2, and the open alerts. A late start is complete at once:
the retained state and score topics carry the truth. Pure (no I/O): the terminal app
(:mod:`monitor.views.watch`) feeds it and draws :meth:`Ward.beds`.
"""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from monitor.config import DEFAULT_ALIASES, Config, MqttSourceConfig
from monitor.sources.codecs import Limits, Origin, decode

#: Priorities, most severe first; ``technical`` alarms are shown apart from them.
SEVERITY = {"high": 0, "medium": 1, "low": 2}
#: How far back a trend arrow looks (event time), and the change it needs per vital.
TREND_S = 60.0
TREND_STEP = {
    "hr": 5.0,
    "spo2": 2.0,
    "rr": 3.0,
    "sbp": 10.0,
    "dbp": 8.0,
    "map": 8.0,
    "temp": 0.3,
    "etco2": 4.0,
}
SHOWN = ("hr", "spo2", "rr", "sbp", "dbp", "map", "temp", "etco2")
#: The detail pane's recent values: RECENT_BUCKETS means of BUCKET_S each (10 min).
BUCKET_S = 30.0
RECENT_BUCKETS = 20
SPARK = "▁▂▃▄▅▆▇█"


def _pattern(template: str) -> re.Pattern[str]:
    """``alerts/{ward}/{bed}`` -> a regex with named groups (other placeholders: any)."""
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out += re.escape(template[pos : m.start()])
        name = m.group(1)
        out += f"(?P<{name}>[^/]+)" if name in ("ward", "bed", "device") else "[^/]+"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + "$")


def subscription(template: str) -> str:
    """``vitals/{ward}/{bed}/{device}`` -> ``vitals/+/+/+``."""
    return re.sub(r"\{\w+\}", "+", template)


@dataclass
class BedView:
    ward: str
    bed: str
    #: vital -> recent (ts, value), newest last, TREND_S of event time
    history: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    news2: dict[str, Any] | None = None
    #: vital -> [bucket number, sum, count, min, max] per BUCKET_S of event time, the
    #: last RECENT_BUCKETS buckets up to the bed's newest reading
    recent: dict[str, deque[list[float]]] = field(default_factory=dict)
    #: open alerts by id: the latest event of each
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_ts: float = 0.0

    def add(self, vital: str, ts: float, value: float) -> None:
        """A reading: into the trend history (if not older than what is shown) and into
        its recent bucket (any order, within the recent span)."""
        self.last_ts = max(self.last_ts, ts)
        h = self.history.setdefault(vital, deque())
        if not h or ts >= h[-1][0]:
            h.append((ts, value))
            while h and h[0][0] < ts - TREND_S:
                h.popleft()
        n = ts // BUCKET_S
        oldest = self.last_ts // BUCKET_S - RECENT_BUCKETS + 1
        if n < oldest:
            return
        r = self.recent.setdefault(vital, deque())
        for b in reversed(r):
            if b[0] == n:
                b[1] += value
                b[2] += 1
                b[3] = min(b[3], value)
                b[4] = max(b[4], value)
                break
            if b[0] < n:
                r.insert(r.index(b) + 1, [n, value, 1, value, value])
                break
        else:
            r.appendleft([n, value, 1, value, value])
        while r and r[0][0] < oldest:
            r.popleft()

    def recent_values(self, vital: str) -> list[float | None]:
        """The vital's mean per bucket over the last RECENT_BUCKETS buckets up to the bed's
        newest reading, oldest first; None where it has none."""
        end = self.last_ts // BUCKET_S
        means = {b[0]: b[1] / b[2] for b in self.recent.get(vital, ())}
        return [means.get(end - k) for k in range(RECENT_BUCKETS - 1, -1, -1)]

    def sparkline(self, vital: str) -> tuple[str, float | None, float | None]:
        """-> (RECENT_BUCKETS characters, lowest, highest reading): the bucket means
        scaled between the lowest and highest mean, blank where there is none; the
        extremes of the readings themselves over the same span."""
        values = self.recent_values(vital)
        known = [v for v in values if v is not None]
        if not known:
            return " " * len(values), None, None
        lo, hi = min(known), max(known)
        top = len(SPARK) - 1
        chars = [
            " " if v is None else SPARK[round((v - lo) / (hi - lo) * top) if hi > lo else 3]
            for v in values
        ]
        oldest = self.last_ts // BUCKET_S - RECENT_BUCKETS + 1
        shown = [b for b in self.recent.get(vital, ()) if b[0] >= oldest]
        return "".join(chars), min(b[3] for b in shown), max(b[4] for b in shown)

    def latest(self, vital: str) -> float | None:
        h = self.history.get(vital)
        return h[-1][1] if h else None

    def trend(self, vital: str) -> str:
        """``↑``, ``↓`` or ``→``: the change over the last TREND_S, against the vital's step."""
        h = self.history.get(vital)
        if not h or len(h) < 2:
            return " "
        change = h[-1][1] - h[0][1]
        step = TREND_STEP.get(vital, 1.0)
        return "↑" if change >= step else "↓" if change <= -step else "→"

    def clinical(self) -> list[dict[str, Any]]:
        """Open alerts about the patient, most severe first."""
        out = [a for a in self.alerts.values() if a.get("kind") != "technical"]
        return sorted(out, key=lambda a: (SEVERITY.get(str(a.get("priority")), 9), a["id"]))

    def technical(self) -> list[dict[str, Any]]:
        return sorted(
            (a for a in self.alerts.values() if a.get("kind") == "technical"),
            key=lambda a: a["id"],
        )

    def severity(self) -> int:
        """0 high, 1 medium, 2 low, 3 technical only, 4 nothing open."""
        c = self.clinical()
        if c:
            return SEVERITY.get(str(c[0].get("priority")), 2)
        return 3 if self.alerts else 4


def _natural(s: str) -> tuple[object, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s))


class Ward:
    def __init__(self, cfg: Config) -> None:
        sources = [s for s in cfg.sources if isinstance(s, MqttSourceConfig)]
        sources = sources or [MqttSourceConfig()]
        self.reading_templates = [s.topic for s in sources]
        self._readings = [(_pattern(s.topic), s) for s in sources]
        self._alerts = _pattern(cfg.alerts.topic)
        self._state = _pattern(cfg.alerts.state_topic)
        self._score = _pattern(cfg.rules.news2.topic)
        self.topics = [
            *(subscription(t) for t in self.reading_templates),
            subscription(cfg.alerts.topic),
            subscription(cfg.alerts.state_topic),
            subscription(cfg.rules.news2.topic),
        ]
        self._limits = Limits(64 * 1024, cfg.rules.max_future_s, dict(DEFAULT_ALIASES))
        self.beds: dict[tuple[str, str], BedView] = {}

    def bed(self, ward: str, bed: str) -> BedView:
        b = self.beds.get((ward, bed))
        if b is None:
            b = self.beds[(ward, bed)] = BedView(ward, bed)
        return b

    def feed(self, topic: str, payload: bytes, now: float) -> tuple[str, str] | None:
        """One message; -> the (ward, bed) it changed, or None (not ours, or bad)."""
        m = self._state.match(topic)
        if m:
            return self._state_msg(m.group("ward"), m.group("bed"), payload)
        m = self._score.match(topic)
        if m:
            b = self.bed(m.group("ward"), m.group("bed"))
            b.news2 = _json(payload) if payload else None
            return b.ward, b.bed
        m = self._alerts.match(topic)
        if m:
            e = _json(payload)
            if not isinstance(e, dict) or "id" not in e:
                return None
            b = self.bed(str(e.get("ward", m.group("ward"))), str(e.get("bed", m.group("bed"))))
            if e.get("state") == "resolved":
                b.alerts.pop(str(e["id"]), None)
            else:
                b.alerts[str(e["id"])] = e
            return b.ward, b.bed
        for pattern, src in self._readings:
            m = pattern.match(topic)
            if m:
                names = m.groupdict()
                ward = names.get("ward") or src.ward
                device = names.get("device") or src.device
                origin = Origin(topic, ward, names["bed"], device)
                decoded = decode(payload, origin, now, self._limits)
                if not decoded.readings:
                    return None
                b = self.bed(ward, names["bed"])
                for r in decoded.readings:
                    b.add(r.vital, r.ts, r.value)
                return b.ward, b.bed
        return None

    def _state_msg(self, ward: str, bed: str, payload: bytes) -> tuple[str, str] | None:
        alerts = _json(payload) if payload else []
        if not isinstance(alerts, list):
            return None
        b = self.bed(ward, bed)
        b.alerts = {str(a["id"]): a for a in alerts if isinstance(a, dict) and "id" in a}
        return ward, bed

    def sorted_beds(self) -> list[BedView]:
        """Most severe first (high, medium, low, technical only, quiet), then NEWS2 high
        to low, then ward and bed in natural order (bed 2 before bed 10)."""
        return sorted(
            self.beds.values(),
            key=lambda b: (b.severity(), -_news2(b), _natural(b.ward), _natural(b.bed)),
        )


def _news2(b: BedView) -> int:
    if b.news2 is None:
        return -1
    try:
        return int(b.news2.get("news2", -1))
    except (TypeError, ValueError):
        return -1


def _json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):  # (any broker client's payload)
        return None
