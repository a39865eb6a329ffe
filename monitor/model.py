"""The types that cross pipeline stages: sources -> engine -> sinks.

Nothing here does I/O. A source turns bytes into :class:`Reading` objects (and
:class:`Rejection` objects for what it refuses); the engine turns readings into
:class:`AlertEvent` objects; sinks store or publish both.
"""

from __future__ import annotations

import enum
import hashlib
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

#: The vitals vitalmon knows, with their unit and the range a real patient can have.
#: A value outside the range is rejected as implausible (never alarmed as physiology).
VITALS: Final[dict[str, tuple[str, float, float]]] = {
    "hr": ("/min", 0.0, 350.0),
    "spo2": ("%", 0.0, 100.0),
    "rr": ("/min", 0.0, 150.0),
    "sbp": ("mmHg", 0.0, 350.0),
    "dbp": ("mmHg", 0.0, 300.0),
    "map": ("mmHg", 0.0, 300.0),
    "temp": ("°C", 20.0, 45.0),
    "etco2": ("mmHg", 0.0, 150.0),
    # NEWS2 inputs, stored as numbers: o2 1 = on oxygen, 0 = air; avpu 0..4 = A C V P U
    "o2": ("", 0.0, 1.0),
    "avpu": ("", 0.0, 4.0),
}

#: ACVPU letters in the order of their stored code (avpu 0 = A ... 4 = U).
AVPU_CODES: Final = "ACVPU"

#: How vitals are written in alert messages.
LABELS: Final[dict[str, str]] = {
    "hr": "HR",
    "spo2": "SpO2",
    "rr": "RR",
    "sbp": "SBP",
    "dbp": "DBP",
    "map": "MAP",
    "temp": "Temp",
    "etco2": "EtCO2",
    "o2": "O2",
    "avpu": "ACVPU",
    "news2": "NEWS2",
}

#: Decimals at which clinicians read each vital (temp to 0.1 °C, the rest whole numbers):
#: alert messages show values at this resolution (:func:`fmt_reading`, :func:`fmt_compare`).
RESOLUTION: Final[dict[str, int]] = {
    "hr": 0,
    "spo2": 0,
    "rr": 0,
    "sbp": 0,
    "dbp": 0,
    "map": 0,
    "temp": 1,
    "etco2": 0,
    "o2": 0,
    "avpu": 0,
    "news2": 0,
}


class Priority(enum.StrEnum):
    """IEC 60601-1-8 alarm priorities."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class AlertState(enum.StrEnum):
    ACTIVE = "active"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one vital of one bed at one instant of event time."""

    ts: float  #: event time, epoch seconds (UTC)
    ward: str
    bed: str
    device: str
    vital: str
    value: float
    patient: str | None = None
    #: How the value was measured, where the source knows: :data:`CONTINUOUS` (a monitor
    #: streaming every few seconds) or :data:`INTERMITTENT` (a cuff cycle, a spot check, a
    #: wearable, a charted observation). None: unknown, the engine infers it from the
    #: series' own cadence (README, "Measurement modes").
    mode: str | None = None
    #: Why the engine did not evaluate this value (stored with it): ``implausible``
    #: (outside the vital's physiological range), ``disputed`` (contradicted by another
    #: device of the bed), ``history`` (arrived too long after it was measured). None: a
    #: valid reading.
    flag: str | None = None


#: Measurement modes (:attr:`Reading.mode`).
CONTINUOUS: Final = "continuous"
INTERMITTENT: Final = "intermittent"
MODES: Final = (CONTINUOUS, INTERMITTENT)


#: Conditions a device reports about its own sensor and signal (``"status"`` of a reading
#: object, serial devices' exception bits) -> technical alarms (``kind: "technical"``).
#: Flag -> (alarm rule, priority, message, whether values cannot be measured meanwhile).
DEVICE_FLAGS: Final[dict[str, tuple[str, str, str, bool]]] = {
    "sensor_off": ("sensor.off", "medium", "sensor off the patient", True),
    "no_sensor": ("sensor.none", "medium", "no sensor connected", True),
    "sensor_fault": ("sensor.fault", "medium", "sensor or cable fault", True),
    "searching": ("sensor.searching", "low", "searching for a pulse", True),
    "low_perfusion": ("signal.low_perfusion", "low", "low perfusion", False),
    "low_signal": ("signal.low_quality", "low", "low signal quality", False),
    "motion": ("signal.motion", "low", "motion artefact", False),
    "interference": ("signal.interference", "low", "interference", False),
    "alarms_off": ("device.alarms_off", "low", "device alarms switched off at the bedside", False),
}


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """What a device says about itself at one instant: the full set of its flags.

    ``flags`` (keys of :data:`DEVICE_FLAGS`) replaces the device's previous set: a flag
    absent from a later status is over. An empty set means "all clear".
    """

    ts: float
    ward: str
    bed: str
    device: str
    flags: frozenset[str]
    patient: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceAlarm:
    """One alarm or INOP a device reports about the patient or itself, as it says it."""

    key: str  #: identity across reports: the alarm's label without its changing values
    priority: Priority
    #: ``device`` (a physiological alarm the device raised) or ``technical`` (an INOP)
    kind: str
    text: str  #: the device's own text, e.g. ``***xTachy 160>140``
    source: str = ""  #: the device's class/code for it, e.g. ``RedAlarm``
    #: False: the device says this alarm is over (an IHE PCD-04 alarm state
    #: ``inactive``); only in a report that is not ``complete``.
    active: bool = True


@dataclass(frozen=True, slots=True)
class DeviceAlarmReport:
    """Every alarm a device reports at one instant: the full set (an alarm absent from a
    later report of the same device is over; an empty set means none is active).

    ``complete`` False: only the alarms named change (IHE PCD-04 ORU^R40 speaks of one
    alarm at a time): each is active or, with ``active`` False, over; others stand."""

    ts: float
    ward: str
    bed: str
    device: str
    alarms: tuple[DeviceAlarm, ...]
    patient: str | None = None
    complete: bool = True


@dataclass(frozen=True, slots=True)
class Admission:
    """A bed's occupant: from ``vitalmon/cmd/admit``, kept until ``vitalmon/cmd/discharge``."""

    ward: str
    bed: str
    patient: str
    #: Limits profile; None: the bed's profile from the config (``beds``), else ``adult``.
    profile: str | None
    at: float  #: wall clock of the admission
    by: str


@dataclass(frozen=True, slots=True)
class BedCommand:
    """Admit or discharge, on its way through the engine's queue (in order with readings)."""

    action: str  #: "admit" | "discharge"
    admission: Admission


@dataclass(frozen=True, slots=True)
class Rejection:
    """Input that was refused, with the reason (a short fixed cause) and details."""

    cause: str  #: e.g. "malformed_json", "implausible", "unknown_vital"
    detail: str
    topic: str = ""
    payload: bytes = b""


@dataclass(slots=True)
class AlertEvent:
    """One state change of one alert: published on MQTT and stored.

    ``id`` stays the same for the whole life of an alert (raise, escalate, resolve);
    ``seq`` counts that alert's events from 1.
    """

    id: str
    ward: str
    bed: str
    device: str
    patient: str | None
    vital: str
    rule: str
    kind: str
    priority: Priority
    state: AlertState
    value: float
    limit: float
    message: str
    started_at: float
    at: float
    seq: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The public alert schema (README, "Alert event")."""
        out: dict[str, Any] = {
            "id": self.id,
            "ward": self.ward,
            "bed": self.bed,
            "device": self.device,
            "patient": self.patient,
            "vital": self.vital,
            "rule": self.rule,
            "kind": self.kind,
            "priority": str(self.priority),
            "state": str(self.state),
            "value": json_number(self.value),
            "limit": json_number(self.limit),
            "message": self.message,
            "started_at": iso(self.started_at),
            "at": iso(self.at),
            "seq": self.seq,
        }
        out.update(self.extra)
        return out


def json_number(value: float | None) -> float | None:
    """A number for the public JSON: NaN, infinities (and None) become ``null`` (an alert
    the device raised has no value and no limit)."""
    return value if value is not None and math.isfinite(value) else None


def new_alert(
    *,
    ward: str,
    bed: str,
    device: str,
    patient: str | None,
    vital: str,
    rule: str,
    kind: str,
    priority: Priority,
    value: float,
    limit: float,
    message: str,
    started: float,
    at: float | None = None,
    id_rule: str | None = None,
    extra: dict[str, Any] | None = None,
) -> AlertEvent:
    """A new alert's first event (active, seq 1), begun at ``started`` and raised at ``at``
    (default: then); its id from (ward, bed, device, ``id_rule`` or rule, started)."""
    return AlertEvent(
        id=alert_id(ward, bed, device, id_rule or rule, started),
        ward=ward,
        bed=bed,
        device=device,
        patient=patient,
        vital=vital,
        rule=rule,
        kind=kind,
        priority=priority,
        state=AlertState.ACTIVE,
        value=value,
        limit=limit,
        message=message,
        started_at=started,
        at=started if at is None else at,
        seq=1,
        extra={} if extra is None else extra,
    )


def alert_id(ward: str, bed: str, device: str, rule: str, started_at: float) -> str:
    """An alert's id: deterministic, so the same recording gives the same ids at any
    replay speed, and unique per (ward, bed, device, rule, onset)."""
    raw = f"{ward}/{bed}/{device}/{rule}/{started_at:.3f}"
    return hashlib.sha1(raw.encode(), usedforsecurity=False).hexdigest()[:16]


def iso(ts: float) -> str:
    """Epoch seconds -> ISO 8601 UTC with millisecond precision and a ``Z``."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fmt_value(value: float) -> str:
    """A number without trailing zeros: 82, 36.9, 120.5 (durations, time units). Not for
    vitals in alert texts: those use :func:`fmt_reading` and :func:`fmt_compare`, which
    never round a value onto the limit it is compared with."""
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return f"{value:.1f}".rstrip("0").rstrip(".")


#: Decimals a text may carry beyond its vital's resolution before :func:`fmt_compare`
#: falls back to the value's ``repr``.
_EXTRA_DECIMALS: Final = 3

_COMPARE: Final[dict[str, Callable[[Decimal, Decimal], bool]]] = {
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}


def fmt_fixed(value: float, decimals: int) -> str:
    """``value`` with exactly ``decimals`` decimals (never ``-0``)."""
    text = f"{value:.{max(decimals, 0)}f}"
    if text.startswith("-") and not text.strip("-0."):
        return text[1:]  # -0.04 at 1 decimal is 0.0, not -0.0
    return text


def resolution(vital: str) -> int:
    """Decimals of ``vital`` in messages (:data:`RESOLUTION`; 1 for names it lacks)."""
    return RESOLUTION.get(vital, 1)


def fmt_reading(vital: str, value: float) -> str:
    """A value at its vital's clinical resolution: temp 38.0 -> "38.0", hr 72.4 -> "72"."""
    return fmt_fixed(value, resolution(vital))


def fmt_limit(vital: str, limit: float) -> str:
    """A limit (or other configured level) at its vital's resolution, with more decimals
    when the limit itself has them (spo2 92.5 -> "92.5", never a rounded "92"): the
    fewest, up to 3 more, that give it back within float noise; else its ``repr``."""
    if not math.isfinite(limit):
        return repr(limit)
    res = resolution(vital)
    tol = 1e-9 * max(1.0, abs(limit))
    for d in range(res, res + _EXTRA_DECIMALS + 1):
        text = fmt_fixed(limit, d)
        if abs(float(text) - limit) <= tol:
            return text
    return repr(limit)


def fmt_compare(vital: str, value: float, op: str, limit: float) -> tuple[str, str]:
    """-> (value text, limit text) for the statement "value op limit" (op ``<``, ``>``,
    ``<=`` or ``>=``), true when read as decimal numbers.

    The limit as :func:`fmt_limit` writes it; the value at its vital's resolution, with
    as many more decimals as the statement needs to hold (up to 3, then the value's
    ``repr``): temp 38.04 > 38.0 -> ("38.04", "38.0"), spo2 89.6 < 90 -> ("89.6", "90"),
    spo2 84.99 < 85 -> ("84.99", "85"). When the value is not beyond the limit at all,
    the plain texts (:func:`fmt_reading`, :func:`fmt_limit`).
    """
    compare = _COMPARE[op]
    lim_text = fmt_limit(vital, limit)
    plain = fmt_reading(vital, value)
    if not (math.isfinite(value) and math.isfinite(limit)):
        return plain, lim_text
    lim = Decimal(lim_text)
    res = resolution(vital)
    for d in range(res, res + _EXTRA_DECIMALS + 1):
        text = fmt_fixed(value, d)
        if compare(Decimal(text), lim):
            return text, lim_text
    text = repr(value)
    if compare(Decimal(text), lim):
        return text, lim_text
    return plain, lim_text


def states_truth(value_text: str, op: str, limit_text: str) -> bool:
    """Whether "value_text op limit_text", read as decimal numbers, is true."""
    try:
        return _COMPARE[op](Decimal(value_text), Decimal(limit_text))
    except ArithmeticError:  # "nan" compared
        return False
