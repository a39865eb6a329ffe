"""The types that cross pipeline stages: sources -> engine -> sinks.

Nothing here does I/O. A source turns bytes into :class:`Reading` objects (and
:class:`Rejection` objects for what it refuses); the engine turns readings into
:class:`AlertEvent` objects; sinks store or publish both.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
            "value": self.value,
            "limit": self.limit,
            "message": self.message,
            "started_at": iso(self.started_at),
            "at": iso(self.at),
            "seq": self.seq,
        }
        out.update(self.extra)
        return out


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
    """A value as a clinician writes it: 82, 36.9, 120.5 (no trailing zeros)."""
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return f"{value:.1f}".rstrip("0").rstrip(".")
