"""A series (one vital of one device at a bed) as the engine keeps it: its window, its
history at the rules' resolution, its rules' alert states and its cadence."""

from __future__ import annotations

import math
from collections.abc import Sequence

from monitor.engine.history import History
from monitor.engine.modes import Cadence, Modes
from monitor.engine.threshold import Active, ThresholdRule
from monitor.engine.trend import BaselineRule, SlopeRule, TrendRule
from monitor.engine.window import Window
from monitor.model import (
    INTERMITTENT,
)

#: A rule of a series.
Rule = ThresholdRule | TrendRule


#: What a vital's series keeps: (raw window span, slope history span, baseline history
#: span), event-time seconds; a history span of 0: none (:mod:`monitor.engine.history`).
Spans = tuple[float, float, float]


def _spans(rules: Sequence[Rule], raw: float, slope_s: float, base_s: float) -> Spans:
    """The spans ``rules`` need, at least ``(raw, slope_s, base_s)``: the raw window covers
    the recent part of baseline rules (a median of raw readings); slopes and baselines
    longer than the raw window read per-minute history beyond it."""
    for r in rules:
        if isinstance(r, BaselineRule):
            raw = max(raw, r.recent_s)
            base_s = max(base_s, r.needs_s)
        elif isinstance(r, SlopeRule):
            slope_s = max(slope_s, r.window_s)
    return (
        raw,
        slope_s if slope_s > raw else 0.0,
        base_s if base_s > raw else 0.0,
    )


def _window(spans: Spans, min_keep: int = 0) -> Window:
    raw, slope_s, base_s = spans
    history = History(slope_s, base_s) if slope_s or base_s else None
    return Window(raw, min_keep=min_keep, history=history)


class _Series:
    __slots__ = (
        "active",
        "auto_spot",
        "behind",
        "cadence",
        "configured",
        "due",
        "entry",
        "every",
        "flagged",
        "gap",
        "last",
        "next_eval",
        "quiet",
        "rules",
        "spans",
        "window",
    )

    def __init__(self, spans: Spans, rules: list[Rule], configured: str | None) -> None:
        self.spans = spans
        self.window = _window(spans)
        self.active: list[Active | None] = [None] * len(rules)
        self.next_eval: list[float] = [float("-inf")] * len(rules)  #: throttled (trend) rules
        self.cadence = Cadence()  #: the series' own interval (event time)
        self.configured = configured  #: its mode from rules.modes.patterns (None: none)
        self.flagged = False  #: an implausible or disputed run, or its alarm, is open
        #: the newest value measured (evaluated or disputed): what another device of the
        #: bed measuring the vital is compared with; (-inf, nan) before any
        self.last: tuple[float, float] = (float("-inf"), math.nan)
        #: readings behind the device's present, advancing, in a row: (count, first ts,
        #: first arrival, latest ts) -> the device's clock went back (Engine._rebase)
        self.behind: tuple[int, float, float, float] = (0, 0.0, 0.0, float("-inf"))
        #: from the cadence (kept up to date by retune): auto mode says intermittent, and
        #: the longest gap a continuous run may have
        self.auto_spot = True
        self.gap = 0.0
        self.set_rules(rules)

    def beyond(self, value: float) -> bool:
        """Whether ``value`` is beyond the least extreme limit of a threshold rule."""
        lo, hi = self.entry
        return (lo is not None and value < lo) or (hi is not None and value > hi)

    def retune(self, modes: Modes, max_gap_s: float) -> None:
        """The cadence changed (or the config): what the mode and the gap follow from it."""
        self.auto_spot = modes.resolve(None, None, self.cadence) == INTERMITTENT
        self.gap = modes.max_gap(max_gap_s, self.cadence)

    def set_rules(self, rules: list[Rule]) -> None:
        self.rules = rules  #: the rules of the bed's profile for this vital
        #: per rule: a threshold rule's (low side?, least extreme limit); None: a trend rule
        self.quiet = [
            (r.side == "low", r._entry) if isinstance(r, ThresholdRule) else None for r in rules
        ]
        #: per rule: the event time between its evaluations (trend rules; 0: every reading)
        self.every = [getattr(r, "every_s", 0.0) for r in rules]
        self.redue()
        #: least extreme low and high threshold limits (plausibility: "within limits")
        lows = [r._entry for r in rules if isinstance(r, ThresholdRule) and r.side == "low"]
        highs = [r._entry for r in rules if isinstance(r, ThresholdRule) and r.side == "high"]
        self.entry = (max(lows) if lows else None, min(highs) if highs else None)
        #: a continuous series sampled less often than its window keeps what a run needs
        self.window.min_keep = max([2, *(r.confirm for r in rules if isinstance(r, ThresholdRule))])

    def redue(self) -> None:
        """:attr:`due`: the earliest next evaluation of a trend rule (inf: none has one)."""
        #: the series' newest event time from which a trend rule is due
        self.due = min(
            (n for n, q in zip(self.next_eval, self.quiet, strict=True) if q is None),
            default=math.inf,
        )

    def respan(self, spans: Spans) -> None:
        """The rules changed: what the window keeps follows (its readings stay; a history
        starts when one is newly needed)."""
        if spans == self.spans:
            return
        self.spans = spans
        self.window.span_s = spans[0]
        hist = self.window.history
        if spans[1] == 0 and spans[2] == 0:
            self.window.history = None
        elif hist is None or (hist.slope_s, hist.base_s) != spans[1:]:
            self.window.history = History(spans[1], spans[2])

    def reset_window(self) -> None:
        """A new timeline (the device's clock went back): what the window held is from
        another time; the cadence's intervals stay (the device's rate did not change)."""
        old = self.window
        self.window = _window(self.spans, old.min_keep)
        self.next_eval = [float("-inf")] * len(self.rules)
        self.redue()
        self.cadence.last = float("-inf")
