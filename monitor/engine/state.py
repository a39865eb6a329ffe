"""What the engine holds, declared once for the parts of :class:`~monitor.engine.Engine`
that live in their own modules (:mod:`~monitor.engine.beds`, the bed registry;
:mod:`~monitor.engine.evaluate`, evaluation). The engine sets it all in ``__init__``."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from monitor.config import Profile, RulesConfig
from monitor.engine.capacity import Capacity
from monitor.engine.device_alarms import DeviceAlarms
from monitor.engine.flapping import Flapping
from monitor.engine.lifecycle import Lifecycle
from monitor.engine.modes import Modes
from monitor.engine.plausibility import Plausibility
from monitor.engine.score import News2Scores
from monitor.engine.sensor import SensorState
from monitor.engine.series import Rule, Spans, _Series
from monitor.engine.technical import Staleness
from monitor.engine.threshold import Active, SeriesKey
from monitor.model import Admission, AlertEvent
from monitor.pipeline import Batch, ScoreUpdate, Sink


class ScoreSink(Protocol):
    async def write_scores(self, updates: list[ScoreUpdate]) -> None: ...


class EngineState:
    sinks: list[Sink]
    #: The sink whose commit releases a batch at its origin (the journal).
    durable: Sink | None
    #: Acknowledge / escalate / re-notify; rule events pass through it on their way out.
    lifecycle: Lifecycle | None
    scores: News2Scores
    flapping: Flapping
    sensors: SensorState
    device_alarms: DeviceAlarms
    score_sink: ScoreSink | None
    staleness: Staleness | None
    capacity: Capacity | None
    on_latency: Callable[[float], None] | None
    _score_updates: list[ScoreUpdate]
    queue: asyncio.Queue[Batch | None]
    series: dict[SeriesKey, _Series]
    _dev_now: dict[tuple[str, str, str], float]
    _peers: dict[tuple[str, str, str], list[_Series]]
    counts: Counter[str]
    _last_failure_log: float
    bed_profile: dict[tuple[str, str], str]
    config_beds: dict[tuple[str, str], str]
    admissions: dict[tuple[str, str], Admission]
    patients: dict[tuple[str, str], str]
    # set by Beds._configure
    cfg: RulesConfig
    modes: Modes
    plausibility: Plausibility
    profiles: dict[str, Profile]
    rulesets: dict[str, dict[str, list[Rule]]]
    rules: dict[str, list[Rule]]
    spans: dict[str, Spans]

    if TYPE_CHECKING:  # what the parts call of each other

        def _score_due(
            self, updates: list[ScoreUpdate], events: list[AlertEvent]
        ) -> list[AlertEvent]: ...

        def _new_series(self, key: SeriesKey) -> _Series: ...

        def expected(self, ward: str, bed: str) -> bool: ...

        def _close(
            self, key: SeriesKey, rule: Rule, a: Active, series: _Series, at: float, message: str
        ) -> AlertEvent: ...
