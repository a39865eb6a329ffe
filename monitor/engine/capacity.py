"""Capacity: how much any publisher can make the engine keep (issue 15 B12). Pure: the
wall clock of arrival is passed in.

Every bed, device and series the engine keeps costs memory, and every device it keeps
can raise ``device.stale``; anyone who can publish on the vitals topics can name new
ones. Contract of :class:`Capacity` (configured by ``engine.max_*`` and
``engine.new_*``):

* **Bounds**: at most ``max_beds`` beds and ``max_series`` series (bed, device, vital),
  and at most ``max_devices_per_bed`` devices in any bed. Beds listed under ``beds:``
  and admitted beds (``vitalmon/cmd/admit``, at most ``max_beds`` of them) are
  *expected*: never rate-limited, taken past ``max_beds``, and given a reserve of
  ``max_series`` more series (they count towards the bounds all the same), so input of
  beds nobody expects can never lock them out; ``max_devices_per_bed`` holds for every
  bed. The engine keeps at most ``2 * max_series`` series (and what alerts carried over
  a restart need).
* **Rates**: new beds and new series of beds nobody expects are taken at most
  ``new_beds_per_minute`` / ``new_series_per_minute`` (token buckets holding
  ``new_beds_burst`` / ``new_series_burst`` tokens, full at the start: a restart, when
  every bed comes back within a second, is never slowed).
* A reading (a status, a device alarm report) of a bed, device or series refused is
  **still stored** (the journal gets every reading), flagged with the reason (``capacity``
  or ``rate_limited``), **not evaluated** by any rule, and not watched for silence:
  counted in ``vitalmon_readings_not_evaluated_total{reason}``. Refused input is tried
  again with its next reading: a bed refused for a rate is taken once a token is back, a
  bed refused for a bound once a bed is forgotten (discharged, or expired:
  ``rules.stale_expire_s``).
* The first refusal raises **one** technical alarm, ``engine.capacity`` (ward
  ``_system``, priority high: a patient may be among the beds not evaluated); it
  resolves once a whole :data:`QUIET_S` has passed without a refusal. The refusals are
  logged at once and then at most once every :data:`LOG_EVERY_S`, as counts (readings
  per reason, distinct beds, beds and series kept): never bed names or patient ids.

Cost: nothing for a reading of a series the engine already keeps (it never gets here);
a few dict lookups for a new series or a refused reading.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter

from monitor.config import EngineConfig
from monitor.engine.system import SystemAlarms
from monitor.model import AlertEvent, Priority

log = logging.getLogger("vitalmon.engine")

RULE = "engine.capacity"
COMPONENT = "engine"
#: Reasons a reading is not evaluated (metric label ``reason``).
CAPACITY = "capacity"
RATE_LIMITED = "rate_limited"
REASONS = (CAPACITY, RATE_LIMITED)
#: The capacity alarm resolves after this long without a refusal (wall clock).
QUIET_S = 60.0
#: Refusals are logged at most this often (wall clock).
LOG_EVERY_S = 60.0
#: Distinct refused beds counted per log line at most (the count says "at least").
MAX_COUNTED_BEDS = 10_000

Bed = tuple[str, str]


class TokenBucket:
    """``rate`` tokens a minute, at most ``burst`` held; full at the start."""

    __slots__ = ("burst", "per_s", "tokens", "when")

    def __init__(self, per_minute: float, burst: int) -> None:
        self.per_s = per_minute / 60.0
        self.burst = float(burst)
        self.tokens = float(burst)
        self.when = -math.inf

    def take(self, now: float) -> bool:
        """One token at ``now`` (wall clock); False when none is left."""
        if now > self.when:
            if self.when > -math.inf:
                self.tokens = min(self.burst, self.tokens + (now - self.when) * self.per_s)
            self.when = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def give_back(self) -> None:
        self.tokens = min(self.burst, self.tokens + 1.0)


class Capacity:
    def __init__(self, cfg: EngineConfig, alarms: SystemAlarms | None = None) -> None:
        self.cfg = cfg
        #: Where the ``engine.capacity`` alarm comes from (the daemon's, shared with the
        #: store's conditions).
        self.alarms = alarms if alarms is not None else SystemAlarms("vitalmon")
        #: (ward, bed) -> its devices (an ordered set): every bed and device the engine
        #: keeps state for. Bounded: max_beds (expected beds past it), max_devices_per_bed.
        self.beds: dict[Bed, dict[str, None]] = {}
        self.new_beds = TokenBucket(cfg.new_beds_per_minute, cfg.new_beds_burst or cfg.max_beds)
        self.new_series = TokenBucket(
            cfg.new_series_per_minute, cfg.new_series_burst or cfg.max_series
        )
        #: refusals since the last log line, as :attr:`refused`
        self._since: Counter[str] = Counter()
        #: distinct beds refused since the last log line (at most MAX_COUNTED_BEDS)
        self._beds_since: set[Bed] = set()
        self._logged_at = -math.inf
        self._refused_at = -math.inf  #: wall clock of the latest refusal
        self.alarm_active = False
        #: refusals ever, by reason (readings; statuses and alarm reports apart)
        self.refused: Counter[str] = Counter()

    @property
    def bed_count(self) -> int:
        return len(self.beds)

    def admit(
        self,
        ward: str,
        bed: str,
        device: str,
        new_series: bool,
        expected: bool,
        series: int,
        now: float,
    ) -> str | None:
        """May the engine keep ``device`` of the bed (and a new series of it, when
        ``new_series``; ``series`` is how many it keeps)? None: yes, and the bed and the
        device are now kept; else the reason it is refused (nothing is kept, no token
        is spent)."""
        devices = self.beds.get((ward, bed))
        new_bed = devices is None
        new_device = devices is None or device not in devices
        if devices is not None and new_device and len(devices) >= self.cfg.max_devices_per_bed:
            return CAPACITY
        if new_series and series >= self.cfg.max_series * (2 if expected else 1):
            return CAPACITY  # (a reserve as large again for the beds expected)
        if not expected:
            if new_bed and len(self.beds) >= self.cfg.max_beds:
                return CAPACITY
            if new_bed and not self.new_beds.take(now):
                return RATE_LIMITED
            if new_series and not self.new_series.take(now):
                if new_bed:
                    self.new_beds.give_back()
                return RATE_LIMITED
        if devices is None:
            devices = self.beds[(ward, bed)] = {}
        if new_device:
            devices[device] = None
        return None

    def keep(self, ward: str, bed: str, device: str) -> None:
        """The engine keeps ``device`` of the bed whatever the bounds (an alert carried
        over a restart): counted."""
        self.beds.setdefault((ward, bed), {})[device] = None

    def forget_device(self, ward: str, bed: str, device: str) -> None:
        devices = self.beds.get((ward, bed))
        if devices is not None:
            devices.pop(device, None)
            if not devices:
                del self.beds[(ward, bed)]

    def forget_bed(self, ward: str, bed: str) -> None:
        self.beds.pop((ward, bed), None)

    def refuse(
        self, reason: str, ward: str, bed: str, now: float, series: int, reading: bool = True
    ) -> AlertEvent | None:
        """Count a refusal (a reading, else a status or an alarm report) at ``now``;
        -> the ``engine.capacity`` alarm when this one raises it."""
        what = reason if reading else f"{reason} (statuses, alarm reports)"
        self.refused[what] += 1
        self._since[what] += 1
        if len(self._beds_since) < MAX_COUNTED_BEDS:
            self._beds_since.add((ward, bed))
        self._refused_at = now
        if now - self._logged_at >= LOG_EVERY_S:
            self._log(now, series)
        if self.alarm_active:
            return None
        self.alarm_active = True
        event = self.alarms.set(RULE, COMPONENT, True, self._detail(reason, series))
        if event is not None:  # (the alarm's own record: its resolution is high too)
            event.priority = Priority.HIGH  # a patient may be among the beds not evaluated
        return None if event is None else copy.copy(event)

    def sweep(self, now: float, series: int) -> list[AlertEvent]:
        """Wall-clock housekeeping (once a second): the log line due; -> the resolution
        of the alarm after a quiet :data:`QUIET_S`."""
        if self._since and now - self._logged_at >= LOG_EVERY_S:
            self._log(now, series)
        if not self.alarm_active or now - self._refused_at < QUIET_S:
            return []
        self.alarm_active = False
        log.info(
            "engine capacity: nothing refused for %.0f s; alarm %s resolved (%d bed(s), "
            "%d series kept)",
            QUIET_S,
            RULE,
            len(self.beds),
            series,
        )
        event = self.alarms.set(
            RULE,
            COMPONENT,
            False,
            f"every bed evaluated again: nothing refused for {QUIET_S:.0f} "
            f"s ({len(self.beds)} bed(s), {series} series kept)",
        )
        return [] if event is None else [event]

    def _detail(self, reason: str, series: int) -> str:
        what = (
            "engine limits reached"
            if reason == CAPACITY
            else "too many new beds or series a minute"
        )
        return (
            f"{what}: readings of new beds, devices or series beyond them are stored, not "
            f"evaluated ({len(self.beds)}/{self.cfg.max_beds} beds, {series}/"
            f"{self.cfg.max_series} series kept; engine.max_beds, engine.max_series, "
            "engine.max_devices_per_bed, engine.new_*; beds listed under beds: or admitted "
            "are always evaluated)"
        )

    def _log(self, now: float, series: int) -> None:
        if not self._since:
            return
        counts = ", ".join(f"{why}: {n}" for why, n in sorted(self._since.items()))
        beds = len(self._beds_since)
        more = "at least " if beds >= MAX_COUNTED_BEDS else ""
        log.warning(
            "engine capacity: input of %s%d bed(s) stored, not evaluated, since the last line "
            "(%s); %d/%d beds and %d/%d series kept (vitalmon_readings_not_evaluated_total)",
            more,
            beds,
            counts,
            len(self.beds),
            self.cfg.max_beds,
            series,
            self.cfg.max_series,
        )
        self._logged_at = now
        self._since.clear()
        self._beds_since.clear()
