"""What the decoders share: :class:`Origin`, :class:`Decoded`, :class:`Limits`, the
rejection causes (:data:`CAUSES`) and the bounds of an event time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from monitor.model import DeviceStatus, Reading, Rejection

#: Every rejection cause, with what it means (README, "Dead letters").
CAUSES: Final[dict[str, str]] = {
    "too_large": "payload larger than max_payload_bytes",
    "not_utf8": "payload is not UTF-8",
    "malformed_json": "payload is not valid JSON",
    "bad_shape": "JSON is not a reading object, an array of them, or a SenML pack",
    "bad_topic": "topic does not match the source's template (or a level is empty)",
    "bad_ts": "ts missing its UTC offset, not a number/ISO 8601 string, or out of range",
    "future_ts": "ts further ahead of the receive time than rules.max_future_s (clock skew)",
    "wrong_type": "a vital's value is not a number",
    "not_finite": "a vital's value is NaN or infinite",
    "implausible": "a vital's value is outside what a patient can have",
    "unknown_vital": "a field or SenML name that is not a known vital",
    "bad_unit": "a SenML unit that does not fit the vital",
    "bad_field": "patient/device is not a string, or mode is not continuous/intermittent",
    "empty": "a reading object with no vitals (and no status)",
    "bad_status": "a status that is not a string or list of strings, names an unknown flag,"
    " or combines ok with flags",
    "sensor_flag": "a value sent while the device itself reports it cannot measure"
    " (sensor off, no sensor, searching)",
    "overflow": "a QoS 0 message arriving while the engine is saturated (QoS 1 waits instead)",
}

#: Fields of a reading object that are not vitals.
_META: Final = frozenset({"ts", "patient", "device", "status", "mode"})

#: A status meaning "all clear" (as is an empty list).
_STATUS_OK: Final = "ok"

#: Earliest plausible event time (2000-01-01); catches milliseconds sent as seconds too.
_MIN_TS: Final = 946_684_800.0
#: Latest plausible event time (2100-01-01): epoch milliseconds are bad_ts whatever max_future_s.
_MAX_TS: Final = 4_102_444_800.0
#: SenML: times below 2**28 are relative to "now" (RFC 8428 section 4.5.3).


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a payload came from: topic levels resolved to ward/bed/device."""

    topic: str
    ward: str
    bed: str
    device: str


@dataclass(slots=True)
class Decoded:
    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    #: Device-reported states, in event-time order (see the module docstring).
    statuses: list[DeviceStatus] = field(default_factory=list)

    def reject(self, cause: str, detail: str, origin: Origin, payload: bytes = b"") -> None:
        self.rejections.append(Rejection(cause, detail, origin.topic, payload))


@dataclass(frozen=True, slots=True)
class Limits:
    """Decoder settings that come from the config."""

    max_payload_bytes: int = 64 * 1024
    max_future_s: float | None = 30.0  #: None: no limit (event time runs free)
    aliases: Mapping[str, str] = field(default_factory=dict)
