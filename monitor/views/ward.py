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
TREND_STEP = {"hr": 5.0, "spo2": 2.0, "rr": 3.0, "sbp": 10.0, "dbp": 8.0, "map": 8.0,
              "temp": 0.3, "etco2": 4.0}  # fmt: skip
SHOWN = ("hr", "spo2", "rr", "sbp", "dbp", "map", "temp", "etco2")


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
    #: open alerts by id: the latest event of each
    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_ts: float = 0.0

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
                    h = b.history.setdefault(r.vital, deque())
                    if h and r.ts < h[-1][0]:
                        continue  # older than what is shown
                    h.append((r.ts, r.value))
                    while h and h[0][0] < r.ts - TREND_S:
                        h.popleft()
                    b.last_ts = max(b.last_ts, r.ts)
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
    except (ValueError, UnicodeDecodeError):
        return None
