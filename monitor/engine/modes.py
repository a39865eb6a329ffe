"""Measurement modes: is a series streamed by a monitor, or measured now and then? Pure.

Contract
========

Every series (ward, bed, device, vital) is judged in one of two modes:

* **continuous** (a monitor streaming every few seconds or minutes): a threshold level is
  raised only when every reading of the last ``delay_s`` is beyond it, with at least
  ``confirm`` readings (artefact rejection), and no gap in the run longer than
  ``max(rules.max_gap_s, gap_factor x the series' median interval)``;
* **intermittent** (a cuff cycle, a spot check, a wearable, a charted observation):
  each reading is one validated measurement, judged on its own (after the plausibility
  checks): a value beyond a limit raises it at once; hysteresis still applies.

Where the mode comes from, first that applies:

1. ``rules.modes.patterns``: ``"device/vital"`` glob patterns (the operator's word);
2. the source (:attr:`~monitor.model.Reading.mode`): HL7 cuff channels and ``APERIODIC``
   observations are intermittent, ``PERIODIC``/``CONTINUOUS`` ones continuous;
3. ``auto``: the series' own cadence, the median of its last five intervals (event
   time): continuous while it is at most ``continuous_max_interval_s``, else
   intermittent. A series with no interval yet (its first reading) is judged on its own.

:class:`Cadence` is the median-of-five interval estimate, shared with the staleness of
devices (:mod:`monitor.engine.technical`). Nothing here reads a clock.
"""

from __future__ import annotations

import fnmatch
import functools
import re

from monitor.config import ModesConfig
from monitor.model import CONTINUOUS, INTERMITTENT

#: Intervals the cadence estimate keeps.
KEEP = 5
#: A pattern's mode: the cadence decides.
AUTO = "auto"


class Cadence:
    """The median of the last :data:`KEEP` intervals between distinct event times."""

    __slots__ = ("_ivs", "last", "median")

    def __init__(self) -> None:
        self._ivs: list[float] = []
        self.last = float("-inf")  #: newest event time seen
        self.median: float | None = None  #: None until there is an interval

    def add(self, ts: float) -> bool:
        """A reading at ``ts``: only a newer one makes an interval (a repeat or an
        out-of-order reading says nothing about the cadence). -> whether the median
        changed."""
        last = self.last
        if ts <= last:
            return False
        self.last = ts
        if last == float("-inf"):
            return False
        ivs = self._ivs
        iv = ts - last
        if len(ivs) == KEEP and ivs[0] == iv:  # a steady device: nothing moves
            del ivs[0]
            ivs.append(iv)
            return False
        ivs.append(iv)
        if len(ivs) > KEEP:
            del ivs[0]
        ordered = sorted(ivs)
        n = len(ordered)
        mid = n // 2
        median = ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        if median == self.median:
            return False
        self.median = median
        return True


class Modes:
    """Resolves the mode of a series; the rules' view of :class:`ModesConfig`."""

    def __init__(self, cfg: ModesConfig) -> None:
        self.cfg = cfg
        self._patterns = [
            (re.compile(fnmatch.translate(p)), mode) for p, mode in cfg.patterns.items()
        ]

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - one Modes per config, kept for the run
    def configured(self, device: str, vital: str) -> str | None:
        """The mode ``rules.modes.patterns`` gives ``device/vital`` (``auto`` included: the
        cadence decides, whatever the source says), None when no pattern matches."""
        name = f"{device}/{vital}"
        for rx, mode in self._patterns:
            if rx.match(name):
                return mode
        return None

    @staticmethod
    def declared(configured: str | None, hint: str | None) -> str | None:
        """The mode a series is declared to have: the operator's pattern, else the
        source's word; None: the cadence decides (a pattern's ``auto`` overrules a source
        that mislabels itself)."""
        mode = hint if configured is None else configured
        return None if mode == AUTO else mode

    def resolve(self, configured: str | None, hint: str | None, cadence: Cadence) -> str:
        """The mode of a series now: pattern, else the source's hint, else its cadence."""
        mode = self.declared(configured, hint)
        if mode is not None:
            return mode
        median = cadence.median
        if median is None or median > self.cfg.continuous_max_interval_s:
            return INTERMITTENT
        return CONTINUOUS

    def max_gap(self, max_gap_s: float, cadence: Cadence) -> float:
        """The longest gap a continuous run of this series may have."""
        median = cadence.median
        if median is None:
            return max_gap_s
        return max(max_gap_s, self.cfg.gap_factor * median)
