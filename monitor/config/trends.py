"""Trend rules: ``rules.trends`` (slope and baseline deviation, per vital and direction)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from monitor.config.base import VitalKey, _Model, overlay
from monitor.model import Priority


class SlopeLimit(_Model):
    """One direction of one vital's slope rule."""

    #: Raise when the slope reaches this many units per ``per_s`` (a magnitude: the
    #: direction is the key, ``up`` or ``down``).
    rate: float = Field(gt=0)
    #: The time unit of ``rate`` and of messages: 600 -> "% per 10 min".
    per_s: float = Field(600.0, gt=0, le=24 * 3600)
    #: Event time the slope is fitted over (the newest reading and the ``window_s`` before).
    window_s: float = Field(600.0, ge=10, le=24 * 3600)
    #: A slope counts only with at least this many readings in the window ...
    min_readings: int = Field(10, ge=3, le=100_000)
    #: ... spanning at least this fraction of ``window_s``.
    min_coverage: float = Field(0.6, gt=0, le=1)
    #: Hysteresis: an active alert clears when the slope falls below this fraction of
    #: ``rate`` (0: only when the trend has stopped or reversed).
    clear_fraction: float = Field(0.5, ge=0, lt=1)
    priority: Priority = Priority.MEDIUM


class SlopeConfig(_Model):
    """The slope rules of one vital: ``up`` (rising), ``down`` (falling) or both."""

    enabled: bool = True
    up: SlopeLimit | None = None
    down: SlopeLimit | None = None


class BaselineLimit(_Model):
    """One direction of one vital's baseline-deviation rule."""

    #: Raise when the recent median has moved this far from the baseline (a magnitude,
    #: in the vital's unit; the direction is the key).
    delta: float = Field(gt=0)
    #: The recent value is the median of the last ``recent_s`` of event time.
    recent_s: float = Field(300.0, gt=0, le=3600)
    #: The baseline is the median of the ``baseline_s`` before the recent part.
    baseline_s: float = Field(4 * 3600.0, ge=60, le=24 * 3600)
    #: No alert until the baseline's readings span at least this much event time ...
    min_baseline_s: float = Field(3600.0, gt=0, le=24 * 3600)
    #: ... and number at least this many,
    min_baseline_readings: int = Field(30, ge=1, le=1_000_000)
    #: and the recent part has at least this many readings.
    min_recent_readings: int = Field(5, ge=1, le=100_000)
    #: Hysteresis: an active alert clears when the deviation falls below this fraction
    #: of ``delta``.
    clear_fraction: float = Field(0.5, ge=0, lt=1)
    #: Bound on the readings the baseline median reads (an even stride through the
    #: baseline beyond this): bounds the cost at high sampling rates.
    max_baseline_samples: int = Field(16_384, ge=64, le=1_000_000)
    priority: Priority = Priority.MEDIUM

    @model_validator(mode="after")
    def _covered(self) -> BaselineLimit:
        if self.min_baseline_s > self.baseline_s:
            raise ValueError(
                f"min_baseline_s ({self.min_baseline_s:g}) must be <= baseline_s "
                f"({self.baseline_s:g})"
            )
        return self


class BaselineConfig(_Model):
    """The baseline rules of one vital: ``up``, ``down`` or both."""

    enabled: bool = True
    up: BaselineLimit | None = None
    down: BaselineLimit | None = None


#: Default slope rules (adult), as specified for vitalmon's trend rules. They fire on
#: trends the threshold rules see late or never: SpO2 97 -> 91 over 20 min never crosses
#: 90; HR 80 -> 105 within half an hour stays below 120.
DEFAULT_SLOPES: dict[str, dict[str, Any]] = {
    "spo2": {"down": {"rate": 3, "per_s": 600, "window_s": 600}},
    "hr": {"up": {"rate": 25, "per_s": 1800, "window_s": 1800}},
    "sbp": {"down": {"rate": 25, "per_s": 1800, "window_s": 1800}},
    "rr": {"up": {"rate": 8, "per_s": 1800, "window_s": 1800}},
}

#: Default baseline-deviation rules (adult). Each delta moves a typical adult across at
#: least one NEWS2 scoring band (HR 80 -> 110 enters 91-110 from 51-90; SpO2 97 -> 92 drops
#: from >= 96 to 92-93; SBP 135 -> 105 enters 101-110; RR 14 -> 22 enters 21-24) while
#: staying inside the default absolute thresholds (HR < 120, SpO2 > 90, SBP > 90, RR < 24),
#: so the bed's own deterioration is flagged before a threshold alarm; and each is well
#: beyond the minute-to-minute spread of a 5-minute median at rest. Engineering defaults,
#: not clinically validated: tune per ward.
DEFAULT_BASELINES: dict[str, dict[str, Any]] = {
    "hr": {"up": {"delta": 30}},
    "spo2": {"down": {"delta": 5}},
    "sbp": {"down": {"delta": 30}},
    "rr": {"up": {"delta": 8}},
}


class TrendConfig(_Model):
    """Trend rules, meant to be mounted as ``rules.trends``::

        rules:
          trends:
            slope:
              spo2: {down: {rate: 4}}         # keeps per_s/window_s 600
              temp: {up: {rate: 1, per_s: 3600, window_s: 3600}}
            baseline:
              hr: {up: {delta: 25}}
              rr: null                        # no baseline rule for RR

    Per vital and direction, what is given replaces only the keys it names.
    """

    enabled: bool = True
    slope: dict[VitalKey, SlopeConfig] = Field(default_factory=dict, validate_default=True)
    baseline: dict[VitalKey, BaselineConfig] = Field(default_factory=dict, validate_default=True)

    # ``hr: {up: {rate: 20}}`` keeps the default window; ``hr: {up: null}`` drops HR's
    # rising rule; ``hr: null`` switches HR's rules off.
    @field_validator("slope", mode="before")
    @classmethod
    def _slope_defaults(cls, v: Any) -> Any:
        return overlay(DEFAULT_SLOPES, v, deep=True)

    @field_validator("baseline", mode="before")
    @classmethod
    def _baseline_defaults(cls, v: Any) -> Any:
        return overlay(DEFAULT_BASELINES, v, deep=True)

    def needs_s(self, vital: str | None = None) -> float:
        """Event time of history the enabled rules read (of ``vital``, or of any): the
        per-series window must be at least this long. 0 when nothing is enabled."""
        if not self.enabled:
            return 0.0
        needs = [0.0]
        for v, sc in self.slope.items():
            if sc.enabled and vital in (None, v):
                needs += [lim.window_s for lim in (sc.up, sc.down) if lim is not None]
        for v, bc in self.baseline.items():
            if bc.enabled and vital in (None, v):
                needs += [
                    lim.recent_s + lim.baseline_s for lim in (bc.up, bc.down) if lim is not None
                ]
        return max(needs)
