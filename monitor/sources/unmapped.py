"""Observations an HL7 source could not map to a vital: counted, exported, logged.

A device format that meets an observation it has no vital for (an HL7 OBX whose code is
not in the tables of :mod:`monitor.sources.devices.hl7`) counts it in
:attr:`~monitor.sources.devices.Parsed.unmapped` under a short text of its code, never
a value and never patient data. :class:`Unmapped` aggregates those counts for one
source, bounded (:data:`MAX_CODES` distinct codes; more are counted under
:data:`OTHER`), for the metric ``vitalmon_hl7_unmapped_observations_total{code}``, and
logs one line at most every :data:`LOG_EVERY_S` seconds of wall clock naming the most
frequent codes counted since the previous line (nothing when there were none).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping

MAX_CODES = 500
OTHER = "(other)"
LOG_EVERY_S = 60.0
#: Codes named in a log line.
TOP = 10


class Unmapped:
    def __init__(
        self,
        name: str,
        log: logging.Logger,
        max_codes: int = MAX_CODES,
        log_every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.log = log
        self.max_codes = max_codes
        self.log_every_s = log_every_s
        self._clock = clock
        #: code -> observations counted since the source started (the metric)
        self.counts: Counter[str] = Counter()
        self._since: Counter[str] = Counter()  #: counted since the last log line
        self._logged_at = -math.inf
        self._lines = 0

    def add(self, unmapped: Mapping[str, int]) -> None:
        """Counts of one frame; logs when a line is due."""
        if not unmapped:
            return
        for code, n in unmapped.items():
            known = code in self.counts or len(self.counts) < self.max_codes
            kept = code if known else OTHER
            self.counts[kept] += n
            self._since[kept] += n
        self.maybe_log()

    def maybe_log(self, force: bool = False) -> None:
        """Log the codes counted since the last line, if any, and if the last line is
        ``log_every_s`` old (or ``force``: at stop)."""
        now = self._clock()
        if not self._since or (not force and now - self._logged_at < self.log_every_s):
            return
        top = ", ".join(f"{code} x{n}" for code, n in self._since.most_common(TOP))
        more = len(self._since) - TOP
        self.log.log(
            logging.WARNING if self._lines == 0 else logging.INFO,
            "%s: %d HL7 observation(s) of %d code(s) not mapped to a vital (counted in "
            "vitalmon_hl7_unmapped_observations_total): %s%s",
            self.name,
            sum(self._since.values()),
            len(self._since),
            top,
            f" and {more} more" if more > 0 else "",
        )
        self._lines += 1
        self._logged_at = now
        self._since.clear()
