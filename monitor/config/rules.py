"""Rule settings: ``rules`` (thresholds, NEWS2, flapping, modes, plausibility; the
trend rules are in :mod:`monitor.config.trends`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from monitor.config.base import VitalKey, _Model, overlay
from monitor.config.trends import TrendConfig


class Levels(_Model):
    warn: float | None = None
    crit: float | None = None

    @model_validator(mode="after")
    def _some(self) -> Levels:
        if self.warn is None and self.crit is None:
            raise ValueError("give warn, crit or both")
        return self


class ThresholdConfig(_Model):
    enabled: bool = True
    low: Levels | None = None
    high: Levels | None = None
    #: The condition must hold on every reading over at least this much event time.
    delay_s: float = Field(0.0, ge=0, le=3600)
    #: Hysteresis: to clear, the value must come back past the limit by this much.
    clear_band: float = Field(0.0, ge=0)
    #: Artefact rejection for continuous series: at least this many consecutive readings
    #: must be beyond a limit (as well as ``delay_s``), so a single-reading spike between
    #: normal neighbours never alarms. An intermittent reading (a cuff cycle, a spot
    #: check, a charted value) is one validated measurement and is judged on its own
    #: whatever this says (README, "Measurement modes").
    #: (null: the default, 2)
    confirm: int | None = Field(2, ge=1, le=100)

    def min_readings(self, vital: str) -> int:  # (the same for every vital)
        return 2 if self.confirm is None else self.confirm

    @model_validator(mode="after")
    def _order(self) -> ThresholdConfig:
        lo, hi = self.low, self.high
        problems = []  # all of them, not just the first
        if lo and lo.warn is not None and lo.crit is not None and lo.crit > lo.warn:
            problems.append(f"low.crit ({lo.crit}) must be <= low.warn ({lo.warn})")
        if hi and hi.warn is not None and hi.crit is not None and hi.crit < hi.warn:
            problems.append(f"high.crit ({hi.crit}) must be >= high.warn ({hi.warn})")
        if lo and hi:
            top_low = max(x for x in (lo.warn, lo.crit) if x is not None)
            bottom_high = min(x for x in (hi.warn, hi.crit) if x is not None)
            if top_low >= bottom_high:
                problems.append("low limits must be below high limits")
        if problems:
            raise ValueError("; ".join(problems))
        return self


#: Default adult limits (README, "Default limits").
DEFAULT_THRESHOLDS: dict[str, dict[str, Any]] = {
    "spo2": {"low": {"warn": 90, "crit": 85}, "delay_s": 15, "clear_band": 2},
    "hr": {
        "low": {"warn": 50, "crit": 40},
        "high": {"warn": 120, "crit": 140},
        "delay_s": 10,
        "clear_band": 5,
    },
    "rr": {
        "low": {"warn": 8, "crit": 5},
        "high": {"warn": 24, "crit": 30},
        "delay_s": 15,
        "clear_band": 2,
    },
    "sbp": {
        "low": {"warn": 90, "crit": 80},
        "high": {"warn": 180, "crit": 200},
        "delay_s": 0,
        "clear_band": 5,
    },
    "map": {"low": {"warn": 65, "crit": 55}, "delay_s": 10, "clear_band": 3},
    "temp": {
        "low": {"warn": 35.5, "crit": 35.0},
        "high": {"warn": 38.0, "crit": 39.5},
        "delay_s": 0,
        "clear_band": 0.2,
    },
}


class News2Config(_Model):
    """NEWS2 (RCP 2017): recomputed per bed whenever one of its inputs changes."""

    enabled: bool = True
    #: A parameter's latest value counts for this long (event time) after it was
    #: measured: it expires at ``ts + freshness_s`` (on the clock, with no reading
    #: needed); older or absent parameters make the score ``partial``.
    freshness_s: float = Field(1800.0, gt=0)
    #: SpO2 scale: 2 only for confirmed hypercapnic respiratory failure (per patient;
    #: profiles will set it per bed).
    scale: Literal[1, 2] = 1
    #: Retained score per bed: {"news2", "partial", "missing", "components", "at"}.
    topic: str = "scores/{ward}/{bed}"
    #: Alert on a partial score too. Off by default: NEWS2 is defined on all seven
    #: parameters, and a bed streaming SpO2 alone would otherwise alarm on a single
    #: reading (the SpO2 threshold, with its delay and hysteresis, covers it). Off, a
    #: partial score (inputs expired) resolves an open score alert at once: an alert
    #: never outlives its evidence.
    alert_partial: bool = False
    #: Seconds (event time) a lower trigger must last before the score alert steps down
    #: or resolves; a higher trigger applies at once. A score wavering at a band edge
    #: (RR 20/21 adds 2 points) then stays one alert at its highest priority instead of
    #: a raise-lower-raise storm. 0: follow every score.
    hold_s: float = Field(60.0, ge=0, le=3600)
    #: Several devices measuring one parameter (ECG HR and pleth pulse): the preferred
    #: one is the source while its latest value is this recent, else the newest value.
    source_s: float = Field(300.0, gt=0, le=86400)


class FlappingConfig(_Model):
    """Flapping detection (as Kapacitor's ``.flapping(low, high)``, on counts of event time).

    Every event a rule emits for one bed/device (raise, priority change, resolve) is a
    state change. When ``high`` changes fall within ``window_s`` of event time, the rule is
    *flapping*: one ``<rule>.flapping`` alert is raised instead of the storm, and that
    rule's own raises are held. It stops flapping once at most ``low`` changes fall within
    the last ``window_s``: the flapping alert resolves and the rule's current state is
    published (its alert if still active). A recovery of a raise that was published is
    never held.
    """

    enabled: bool = True
    window_s: float = Field(600.0, gt=0, le=24 * 3600)
    high: int = Field(6, ge=2)
    low: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _order(self) -> FlappingConfig:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


Mode = Literal["auto", "continuous", "intermittent"]


class ModesConfig(_Model):
    """Continuous (a monitor streaming every few seconds: condition delay and artefact
    confirmation) or intermittent (a cuff, a spot check, a wearable, a chart: each reading
    is one validated measurement, judged on its own)."""

    #: ``"device/vital"`` glob pattern -> mode; the first pattern that matches wins, over
    #: what the source says (``auto``: the cadence decides, whatever the source says).
    #: E.g. ``{"cuff-*/*": intermittent, "*/temp": intermittent}``.
    patterns: dict[str, Mode] = Field(default_factory=dict)
    #: A series with no pattern and no mode from its source (``auto``) is continuous while
    #: the median of its last five intervals is at most this, else intermittent; its
    #: first reading (no interval yet) is judged on its own.
    continuous_max_interval_s: float = Field(120.0, gt=0, le=3600)
    #: Continuous series: a gap longer than max(rules.max_gap_s, this many of the series'
    #: own median interval) breaks a condition's delay run.
    gap_factor: float = Field(1.5, ge=1, le=10)


class Range(_Model):
    low: float
    high: float

    @model_validator(mode="after")
    def _order(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        return self


#: Physiological plausibility (README, "Plausibility", with the sources of each range).
DEFAULT_PLAUSIBLE: dict[str, dict[str, float]] = {
    "hr": {"low": 20, "high": 250},
    "spo2": {"low": 20, "high": 100},
    "rr": {"low": 1, "high": 100},
    "sbp": {"low": 30, "high": 300},
    "dbp": {"low": 10, "high": 250},
    "map": {"low": 20, "high": 260},
    "temp": {"low": 25, "high": 44},
}


class PlausibilityConfig(_Model):
    """Values a patient cannot have, and devices that contradict each other."""

    #: Per vital: a value outside ``[low, high]`` is stored flagged ``implausible``,
    #: counted, never evaluated; give only what you change, ``null`` to switch one off.
    ranges: dict[VitalKey, Range | None] = Field(default_factory=dict, validate_default=True)
    #: Implausible values of a series for at least this long (and two readings): technical
    #: alarm ``<vital>.implausible`` (a probe off sending zeros).
    persist_s: float = Field(10.0, ge=0, le=86400)
    #: Two devices of a bed measuring one vital: a value beyond a limit while another
    #: device's value of it within ``cross_s`` is within all limits and differs by more
    #: than ``disagree`` is ``disputed`` (stored, not evaluated). E.g. HR 277 from the
    #: pleth while the ECG says 92.
    cross_s: float = Field(60.0, ge=0, le=3600)
    disagree: dict[VitalKey, float] = Field(
        default_factory=lambda: {
            "hr": 40.0,
            "spo2": 10.0,
            "rr": 15.0,
            "sbp": 40.0,
            "dbp": 30.0,
            "map": 30.0,
            "temp": 1.5,
            "etco2": 15.0,
        }
    )

    @field_validator("ranges", mode="before")
    @classmethod
    def _merge(cls, v: Any) -> Any:
        if v is None:
            v = {}
        if not isinstance(v, Mapping):
            return v
        return {**DEFAULT_PLAUSIBLE, **v}


class RulesConfig(_Model):
    #: Per vital; a vital given here replaces only the keys it names (``delay_s`` alone
    #: keeps the default limits). ``enabled: false`` switches a vital's thresholds off.
    thresholds: dict[VitalKey, ThresholdConfig] = Field(default_factory=dict, validate_default=True)
    #: Event time of raw readings kept per bed and vital (at least the recent part of its
    #: baseline rules); trend rules read older minutes from per-minute aggregates
    #: (monitor.engine.history).
    window_s: float = Field(300.0, ge=10, le=24 * 3600)
    #: Out-of-order tolerance: a reading older than the newest of its series by more
    #: than this is stored but not evaluated (counted as ``late``).
    max_lag_s: float = Field(60.0, ge=0, le=3600)
    #: A gap longer than this between readings breaks a condition's ``delay_s`` run.
    max_gap_s: float = Field(30.0, gt=0, le=3600)
    #: Clock-skew tolerance: readings stamped further than this ahead of their arrival
    #: are refused (``future_ts``); within it, the engine evaluates them at their arrival
    #: time, so one reading can never push a series' present ahead of the wall clock.
    #: null: event time may run ahead of the clock without limit, readings evaluated at
    #: their own time (accelerated simulations only, as ``vitalmon demo --speed``).
    max_future_s: float | None = Field(30.0, ge=0)
    #: A reading older than the newest event time its bed has shown by more than this
    #: is history: stored (flagged ``history``), never evaluated, so a monitor repeating
    #: yesterday's NIBP in every message raises no alert dated yesterday.
    max_age_s: float = Field(900.0, gt=0)
    #: Technical alarm ``device.stale``: no reading from a device (or from a bed listed
    #: under ``beds``, ever) for this long, on the wall clock of arrival ...
    stale_after_s: float = Field(30.0, ge=1, le=86400)
    #: ... or for this many of the device's own intervals (the median of its last five,
    #: event time) when that is longer: a cuff cycling every 15 min is stale after 45 min.
    stale_factor: float = Field(3.0, ge=1, le=100)
    #: A device whose interval is not known yet (one reading so far) is stale after this
    #: long, unless its readings are declared continuous (then ``stale_after_s``).
    stale_unknown_s: float = Field(3600.0, ge=1, le=7 * 86400)
    #: A device of a bed nobody expects (not under ``beds``, not admitted) whose
    #: ``device.stale`` has lasted this long is forgotten: its alarm resolves, its windows
    #: and state are freed, and the bed with its last device (README, "Capacity"). null:
    #: never. Expected beds never expire.
    stale_expire_s: float | None = Field(86400.0, ge=1)
    #: Measurement modes: how each series is judged (README, "Measurement modes").
    modes: ModesConfig = Field(default_factory=ModesConfig)
    #: Physiological plausibility per vital (README, "Plausibility").
    plausibility: PlausibilityConfig = Field(default_factory=PlausibilityConfig)
    #: Trend rules (slope and baseline deviation); see TrendConfig.
    trends: TrendConfig = Field(default_factory=TrendConfig)
    news2: News2Config = Field(default_factory=News2Config)
    flapping: FlappingConfig = Field(default_factory=FlappingConfig)

    @field_validator("thresholds", mode="before")
    @classmethod
    def _merge_defaults(cls, v: Any) -> Any:
        return overlay(DEFAULT_THRESHOLDS, v)

    @model_validator(mode="after")
    def _window_covers_delays(self) -> RulesConfig:
        longest = max((t.delay_s for t in self.thresholds.values() if t.enabled), default=0.0)
        if longest + self.max_gap_s > self.window_s:
            raise ValueError(
                f"window_s ({self.window_s:g}) must cover the longest delay_s ({longest:g}) "
                f"plus max_gap_s ({self.max_gap_s:g})"
            )
        return self
