"""Configuration: YAML -> ``${VAR}`` substitution -> complete validation -> frozen models.

No I/O beyond reading the file itself (and checking that referenced files exist):
nothing connects here. Every problem is collected and reported at once, each with its
key path (``mqtt.port``, ``sources[0].topic``), so a clinical engineer fixes a config in
one pass instead of one error per restart.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from monitor.model import VITALS, Priority

DEFAULT_CONFIG_PATH = "/etc/vitalmon/vitalmon.yaml"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists every problem as ``path: message``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- MQTT


class TLSConfig(_Model):
    """TLS to the broker. The broker's certificate is always verified (against
    ``ca_file``, or the system's CAs when it is null)."""

    ca_file: str | None = None
    #: Client certificate and key (mutual TLS); both or neither.
    cert_file: str | None = None
    key_file: str | None = None
    #: Check that the certificate names ``mqtt.host``. Only for a lab broker whose
    #: certificate names another host: never switch it off in production.
    verify_hostname: bool = True
    #: Lowest TLS version accepted.
    min_version: Literal["1.2", "1.3"] = "1.2"

    @field_validator("min_version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, float) else v  # YAML reads 1.2 as a number

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _readable(cls, v: str | None) -> str | None:
        if v is not None and not os.access(v, os.R_OK):
            raise ValueError(f"cannot read {v!r}")
        return v

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (client certificate)")
        return self


class MqttConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    #: Client id; also the persistent-session id, so it must be stable and unique per instance.
    client_id: str = Field("vitalmon", min_length=1, max_length=128)
    username: str | None = None
    #: File holding the password (first line). Never put the password itself in the YAML.
    password_file: str | None = None
    #: The password from the environment, as ``password: ${MQTT_PASSWORD}`` (never a
    #: literal: check-config refuses one). ``password_file`` is preferred.
    password: str | None = Field(None, repr=False)
    protocol: Literal["3.1.1", "5"] = "5"
    keepalive_s: int = Field(30, ge=5, le=3600)
    #: MQTT 5 session expiry: how long the broker keeps our session (and queues readings)
    #: while the daemon is away.
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0)
    reconnect_min_s: float = Field(0.5, gt=0)
    #: Backoff cap: back within about this long of the broker (a broker restart loses
    #: the readings devices publish before vitalmon's session is back on it).
    reconnect_max_s: float = Field(2.0, gt=0)
    #: QoS 1 publishes (alerts, bed state, scores) kept waiting for the broker; when full,
    #: superseded retained messages are dropped first, alert events last (monitor.mqtt).
    max_queued: int = Field(10_000, ge=10, le=60_000)
    tls: TLSConfig | None = None

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, v: Any) -> Any:
        # YAML reads `protocol: 5` (and `${MQTT_PROTOCOL:-5}`) as the integer 5
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("password_file")
    @classmethod
    def _readable(cls, v: str | None) -> str | None:
        if v is not None and not os.access(v, os.R_OK):
            raise ValueError(f"cannot read password file {v!r}")
        return v

    @model_validator(mode="after")
    def _backoff(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self


# -------------------------------------------------------------------------- sources

_SEGMENT = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")


def _host_port(v: str, example: str) -> str:
    """A ``host:port`` to listen on (port 0: any free one); ValueError otherwise."""
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen is host:port, e.g. {example}")
    return v


def parse_topic_template(template: str, required: tuple[str, ...] = ("bed",)) -> list[str | None]:
    """``"vitals/{ward}/{bed}/{device}"`` -> ``[literal | None(named)]`` names list.

    Returns one entry per level: the literal text, or the placeholder name wrapped as
    ``"{name}"``. Raises ValueError with a clear message for bad templates.
    """
    if not template or template.startswith("$"):
        raise ValueError("topic template must be non-empty and not start with '$'")
    levels: list[str | None] = []
    names: list[str] = []
    problems: list[str] = []  # all of them, not just the first
    for level in template.split("/"):
        m = _SEGMENT.match(level)
        if m:
            name = m.group(1)
            if name in names:
                problems.append(f"placeholder {{{name}}} appears twice")
            names.append(name)
            levels.append("{" + name + "}")
        elif any(c in level for c in "{}+#"):
            problems.append(
                f"level {level!r}: a level is either literal text or one whole {{name}}; "
                "MQTT wildcards are derived from the placeholders"
            )
        else:
            levels.append(level)
    problems += [f"placeholder {{{name}}} is required" for name in required if name not in names]
    if problems:
        raise ValueError("; ".join(problems))
    return levels


#: SenML names (and other spellings) that resolve to a vital. Matched case-insensitively.
DEFAULT_ALIASES: dict[str, str] = {
    "hr": "hr",
    "heartrate": "hr",
    "heart_rate": "hr",
    "pulse": "hr",
    "pr": "hr",
    "bpm": "hr",
    "spo2": "spo2",
    "sao2": "spo2",
    "sp02": "spo2",
    "rr": "rr",
    "resp": "rr",
    "respiration": "rr",
    "respiratory_rate": "rr",
    "rresp": "rr",
    "sbp": "sbp",
    "nbpsys": "sbp",
    "nbps": "sbp",
    "abpsys": "sbp",
    "systolic": "sbp",
    "dbp": "dbp",
    "nbpdias": "dbp",
    "nbpd": "dbp",
    "abpdias": "dbp",
    "diastolic": "dbp",
    "map": "map",
    "nbpmean": "map",
    "nbpm": "map",
    "abpmean": "map",
    "mean": "map",
    "temp": "temp",
    "temperature": "temp",
    "t": "temp",
    "etco2": "etco2",
    "co2": "etco2",
}


class MqttSourceConfig(_Model):
    type: Literal["mqtt"] = "mqtt"
    #: Topic template; each ``{name}`` level becomes ``+`` in the subscription.
    topic: str = "vitals/{ward}/{bed}/{device}"
    qos: Literal[0, 1, 2] = 1
    #: Used when the template has no ``{ward}`` / ``{device}`` level.
    ward: str = "default"
    device: str = "unknown"
    max_payload_bytes: int = Field(64 * 1024, ge=256, le=16 * 1024 * 1024)
    #: Extra name -> vital spellings for SenML records, merged over the defaults.
    aliases: dict[str, str] = Field(default_factory=dict)

    @field_validator("topic")
    @classmethod
    def _template(cls, v: str) -> str:
        parse_topic_template(v)
        return v

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k, vital in v.items() if vital not in VITALS)
        if bad:
            raise ValueError(f"aliases {bad} map to unknown vitals (known: {sorted(VITALS)})")
        return v


_PARITY = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}


class SerialSourceConfig(_Model):
    """One device on a serial port (RS-232, USB-serial, a pty)."""

    type: Literal["serial"]
    #: Device path; prefer ``/dev/serial/by-id/...``, which survives re-plugging.
    port: str = Field(min_length=1)
    baudrate: int = Field(9600, ge=50, le=4_000_000)
    bytesize: Literal[5, 6, 7, 8] = 8
    #: N, E, O, M, S (or none, even, odd, mark, space)
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: float = 1  #: 1, 1.5 or 2
    format: Literal["masimo", "nellcor", "jsonl", "csv", "hl7"]
    ward: str = Field("default", min_length=1)
    bed: str = Field(min_length=1)
    #: Device name in readings and alarms (default: the format, e.g. ``masimo``).
    device: str | None = None
    #: Reading time: ``receive`` (when the line was read; default, since bedside device
    #: clocks are set by hand and carry no zone) or ``device`` (the device's own clock).
    clock: Literal["receive", "device"] = "receive"
    #: The device clock's time zone (IANA name), with ``clock: device``; null = local.
    timezone: str | None = None
    #: With ``clock: device``: a device time further than this from now is refused.
    max_skew_s: float = Field(300.0, gt=0)
    #: A port missing at start-up: ``retry`` (default; with backoff, the daemon runs on and
    #: raises device.disconnected) or ``error`` (the daemon refuses to start).
    startup_error_behavior: Literal["retry", "error"] = "retry"
    #: Reopening a lost port: jittered backoff from min to max. Opening a missing local
    #: path is cheap, so the default keeps a replugged device's gap under ~2.5 s.
    retry_min_s: float = Field(0.5, gt=0, le=60)
    retry_max_s: float = Field(2.0, gt=0, le=3600)
    #: Longer lines are dropped (counted ``too_long``): a bounded buffer.
    max_line_bytes: int = Field(4096, ge=64, le=1 << 20)
    #: No data this long while the port is open: ``device.silent`` (null: rules.stale_after_s).
    silent_after_s: float | None = Field(None, gt=0, le=86400)

    @field_validator("parity", mode="before")
    @classmethod
    def _parity(cls, v: Any) -> Any:
        return _PARITY.get(v.lower(), v.upper()) if isinstance(v, str) else v

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, v: float) -> float:
        if v not in (1, 1.5, 2):
            raise ValueError("stopbits is 1, 1.5 or 2")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None:
            import zoneinfo

            try:
                zoneinfo.ZoneInfo(v)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r} (an IANA name: Europe/Paris)") from None
        return v

    @model_validator(mode="after")
    def _backoff(self) -> SerialSourceConfig:
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s must be >= retry_min_s")
        return self

    @property
    def device_name(self) -> str:
        return self.device or self.format

    @property
    def name(self) -> str:
        return f"serial:{self.port}"


class Hl7MllpSourceConfig(_Model):
    """An MLLP listener: a central station or integration engine pushes ORU^R01 here."""

    type: Literal["hl7-mllp"]
    #: host:port to listen on (2575 is HL7's registered port; 0 = any free port).
    listen: str = "127.0.0.1:2575"
    #: Where readings go when a message says nothing usable: PV1-3 (point of care^room^
    #: bed) gives ward and bed; ``beds`` maps a PV1-3 or MSH-4 value to ``ward/bed``.
    ward: str = Field("default", min_length=1)
    beds: dict[str, str] = Field(default_factory=dict)
    #: Reading time: ``message`` (OBX-14, else OBR-7, else MSH-7) or ``receive``.
    clock: Literal["message", "receive"] = "message"
    timezone: str | None = None  #: zone of HL7 times without an offset; null = local
    #: A message time more than this ahead of now is refused; past times are stored as
    #: history (an interface engine resending its queue after an outage).
    max_skew_s: float = Field(30.0, gt=0)
    max_message_bytes: int = Field(1 << 20, ge=1024, le=64 << 20)
    max_connections: int = Field(64, ge=1, le=10_000)
    #: Open connections from one peer address, at most: one peer (a sender leaking
    #: connections, a scanner) cannot take all of ``max_connections`` from the others.
    max_connections_per_peer: int = Field(8, ge=1, le=10_000)
    #: A connection that has not sent a complete message this long after it was accepted
    #: is closed (a port scan, a half-open client, bytes trickled without an end).
    first_message_timeout_s: float = Field(30.0, gt=0)
    #: A connection that has sent a message and then nothing for this long is closed.
    idle_timeout_s: float = Field(600.0, gt=0)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return _host_port(v, "0.0.0.0:2575")

    @field_validator("beds")
    @classmethod
    def _beds(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k, wb in v.items() if wb.count("/") != 1 or "" in wb.split("/")]
        if bad:
            raise ValueError(f"values are ward/bed, e.g. icu/7: not for {bad}")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        return SerialSourceConfig._zone(v)

    @property
    def name(self) -> str:
        return f"hl7-mllp:{self.listen}"


SourceConfig = Annotated[
    MqttSourceConfig | SerialSourceConfig | Hl7MllpSourceConfig, Field(discriminator="type")
]


# --------------------------------------------------------------------------- store


class SqliteStoreConfig(_Model):
    """The embedded store; also the durable journal that remote sinks forward from."""

    type: Literal["sqlite"] = "sqlite"
    path: str = "/var/lib/vitalmon/vitals.db"
    batch_size: int = Field(1000, ge=1, le=100_000)
    #: ``normal``: a commit survives a crash of the daemon (kill -9); ``full``: it also
    #: survives a power loss, at the cost of an fsync per transaction.
    synchronous: Literal["normal", "full"] = "normal"
    #: Raw readings are kept this long, then only their one-minute aggregates.
    raw_days: float = Field(7, gt=0)
    #: One-minute aggregates (min/mean/max/count per vital) are kept this long.
    aggregate_days: float = Field(365, gt=0)
    #: Disk bound for the database (MiB, null = none). When reached, the oldest raw readings
    #: are pruned first (after aggregation), counted, logged and alarmed (store.full).
    max_mb: float | None = Field(10240, gt=0)
    #: How often retention, aggregation and the disk bound are applied.
    maintenance_interval_s: float = Field(60, gt=0, le=3600)


class InfluxStoreConfig(_Model):
    """A remote InfluxDB 2.x/3.x (or any server accepting ``/api/v2/write``).

    Readings reach it from the local journal (the SQLite store) through a durable cursor:
    when it is down or slow nothing is lost and ingest does not wait.
    """

    type: Literal["influxdb"] = "influxdb"
    name: str | None = None  #: names the sink's cursor (default: the url)
    url: str
    org: str = ""
    bucket: str
    #: File holding the API token (first line). Use ``${ENV}`` rather than a literal token.
    token_file: str | None = None
    token: str | None = None
    batch_size: int = Field(5000, ge=1, le=100_000)
    flush_interval_s: float = Field(1.0, gt=0, le=60)
    timeout_s: float = Field(10.0, gt=0, le=300)
    #: Compress request bodies: for a WAN link. influxdb-client compresses at level 9,
    #: which costs more than it saves on a LAN (benchmarks/store.py).
    gzip: bool = False
    #: Where a newly configured sink starts: ``end`` (new readings only) or ``beginning``
    #: (backfill everything still in the journal).
    start_from: Literal["end", "beginning"] = "end"
    #: Add a pseudonymous ``patient`` tag: HMAC-SHA256 of the patient id with this key file.
    patient_key_file: str | None = None
    retry_min_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(60.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("token_file", "patient_key_file")
    @classmethod
    def _readable(cls, v: str | None) -> str | None:
        if v is not None and not os.access(v, os.R_OK):
            raise ValueError(f"cannot read {v!r}")
        return v

    @property
    def sink_name(self) -> str:
        return self.name or f"influxdb:{self.url}/{self.bucket}"


StoreConfig = Annotated[SqliteStoreConfig | InfluxStoreConfig, Field(discriminator="type")]


# -------------------------------------------------------------------------- alerts


class AlertsConfig(_Model):
    #: Template; placeholders among {ward}, {bed}, {device}, {vital}, {priority}.
    topic: str = "alerts/{ward}/{bed}"
    qos: Literal[0, 1, 2] = 1
    #: Retained list of each bed's alerts not yet resolved (a late dashboard sees the truth).
    state_topic: str = "state/{ward}/{bed}/alerts"
    #: An active alert nobody acknowledged for this long (wall clock) is escalated: priority
    #: raised one level, re-published with ``"escalated": true``. 0 switches it off.
    escalate_after_s: float = Field(120.0, ge=0)
    #: Escalations are also published here (e.g. a charge nurse's pager); null = not.
    escalate_topic: str | None = None
    #: Re-published every this many seconds while active and unacknowledged; 0 = never.
    renotify_s: float = Field(300.0, ge=0)
    #: Longest pause a ``vitalmon/cmd/pause`` may ask for (longer requests are capped).
    pause_max_s: float = Field(120.0, ge=0)
    #: Priorities published even while their bed is paused.
    pause_breakthrough: list[Priority] = Field(default_factory=lambda: [Priority.HIGH])

    @field_validator("topic", "state_topic", "escalate_topic")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is None:
            return v
        levels = parse_topic_template(v, required=())
        allowed = {"{ward}", "{bed}", "{device}", "{vital}", "{priority}"}
        bad = [lvl for lvl in levels if lvl and lvl.startswith("{") and lvl not in allowed]
        if bad:
            raise ValueError(f"unknown placeholders {bad}; allowed: {sorted(allowed)}")
        return v


# --------------------------------------------------------------------------- rules


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


# ------------------------------------------------------------------ trend rules


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


def _merge(defaults: dict[str, dict[str, Any]], given: Any) -> Any:
    """Defaults, overridden per vital and per direction by what ``given`` names.

    ``hr: {up: {rate: 20}}`` keeps the default window; ``hr: {up: null}`` drops HR's
    rising rule; ``hr: null`` switches HR's rules off.
    """
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        return given  # let pydantic report the type error
    merged: dict[str, Any] = {
        vital: {d: dict(v) if isinstance(v, Mapping) else v for d, v in dirs.items()}
        for vital, dirs in defaults.items()
    }
    for vital, over in given.items():
        if over is None:
            merged[vital] = {"enabled": False}
        elif isinstance(over, Mapping):
            base = merged.get(vital, {})
            out = dict(base)
            for k, v in over.items():
                old = base.get(k)
                if isinstance(v, Mapping) and isinstance(old, Mapping):
                    out[k] = {**old, **v}
                else:
                    out[k] = v
            merged[vital] = out
        else:
            merged[vital] = over
    return merged


def _vital_key(v: str) -> str:
    if v not in VITALS:
        raise ValueError(f"unknown vital {v!r} (known: {', '.join(sorted(VITALS))})")
    return v


#: A key naming a vital: an unknown one is an error at its own key path
#: (``rules.thresholds.spo3``), next to the errors of the other keys' values.
VitalKey = Annotated[str, AfterValidator(_vital_key)]


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

    @field_validator("slope", mode="before")
    @classmethod
    def _slope_defaults(cls, v: Any) -> Any:
        return _merge(DEFAULT_SLOPES, v)

    @field_validator("baseline", mode="before")
    @classmethod
    def _baseline_defaults(cls, v: Any) -> Any:
        return _merge(DEFAULT_BASELINES, v)

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
    #: Event-time window kept per bed and vital.
    window_s: float = Field(600.0, ge=10, le=24 * 3600)
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
        if v is None:
            v = {}
        if not isinstance(v, Mapping):
            return v  # let pydantic report the type error
        merged: dict[str, Any] = {k: dict(d) for k, d in DEFAULT_THRESHOLDS.items()}
        for vital, over in v.items():
            if over is None:
                merged[vital] = {"enabled": False}
            elif isinstance(over, Mapping):
                merged[vital] = {**merged.get(vital, {}), **over}
            else:
                merged[vital] = over
        return merged

    @model_validator(mode="after")
    def _window_covers_delays(self) -> RulesConfig:
        longest = max((t.delay_s for t in self.thresholds.values() if t.enabled), default=0.0)
        if longest + self.max_gap_s > self.window_s:
            raise ValueError(
                f"window_s ({self.window_s:g}) must cover the longest delay_s ({longest:g}) "
                f"plus max_gap_s ({self.max_gap_s:g})"
            )
        return self


# ------------------------------------------------------------------------ the whole


class EngineConfig(_Model):
    #: Bounded queue between sources and engine (readings); sources wait when it is full.
    queue_size: int = Field(10_000, ge=10, le=10_000_000)
    #: SIGTERM: sources stop, then queues drain and sinks flush for at most this long;
    #: what is left is logged and the process exits (keep it below systemd's
    #: TimeoutStopSec).
    shutdown_timeout_s: float = Field(4.5, gt=0, le=600)
    #: What publishers can make the engine keep (README, "Capacity"): beds, series (bed,
    #: device, vital), devices per bed. Input beyond is stored, not evaluated, and raises
    #: ``engine.capacity``. Beds under ``beds`` and admitted beds (at most max_beds) pass
    #: max_beds and the rates, and have a reserve of max_series more series.
    max_beds: int = Field(2000, ge=1, le=1_000_000)
    max_series: int = Field(50_000, ge=1, le=10_000_000)
    max_devices_per_bed: int = Field(32, ge=1, le=10_000)
    #: New beds / series of beds nobody expects taken in a minute (token buckets) ...
    new_beds_per_minute: float = Field(60.0, gt=0)
    new_series_per_minute: float = Field(1500.0, gt=0)
    #: ... and at once (null: max_beds / max_series, so a restart is never slowed).
    new_beds_burst: int | None = Field(None, ge=1)
    new_series_burst: int | None = Field(None, ge=1)


LogLevel = Literal["debug", "info", "warning", "error"]


class LogConfig(_Model):
    level: LogLevel = "info"
    #: ``auto``: JSON lines under journald (``JOURNAL_STREAM`` names our stderr), human
    #: text otherwise; or ``human``, ``json``.
    format: Literal["auto", "human", "json"] = "auto"
    #: Per component, e.g. ``{mqtt: debug, source.serial: warning}`` (names below
    #: ``vitalmon.``).
    levels: dict[str, LogLevel] = Field(default_factory=dict)
    #: The same message from the same place is logged at most once per this many
    #: seconds; the repeats are counted in the next one.
    repeat_window_s: float = Field(10.0, ge=0, le=3600)


class MetricsConfig(_Model):
    #: ``host:port`` of the Prometheus endpoint (``/metrics``) and ``/healthz``; null = off.
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        return None if v is None else _host_port(v, "127.0.0.1:9464")


class PrivacyConfig(_Model):
    #: Replace the ``patient`` field of stored readings and of published and stored
    #: alerts by a keyed pseudonym (HMAC-SHA256 with ``key_file``, 16 hex digits).
    pseudonymize_patient: bool = False
    #: Secret key file (first line) for pseudonyms; required with pseudonymize_patient.
    key_file: str | None = None

    @field_validator("key_file")
    @classmethod
    def _readable(cls, v: str | None) -> str | None:
        if v is not None and not os.access(v, os.R_OK):
            raise ValueError(f"cannot read {v!r}")
        return v

    @model_validator(mode="after")
    def _key(self) -> PrivacyConfig:
        if self.pseudonymize_patient and self.key_file is None:
            raise ValueError("pseudonymize_patient needs key_file")
        return self


# ------------------------------------------------------------------------ profiles

#: Built-in profiles: overrides of ``rules.thresholds`` (which is the ``adult`` profile).
#: A ``profiles.<name>`` in the config is merged over these, per vital and key.
BUILTIN_PROFILES: dict[str, dict[str, Any]] = {
    # adult: the limits of rules.thresholds as they are
    "adult": {},
    # COPD with confirmed hypercapnic respiratory failure (BTS 2017 oxygen guideline):
    # target SpO2 88-92 %, so alarm only below 88 (crit below 84, NEWS2 scale 2 scores
    # <= 83 as 3), and NEWS2 SpO2 scale 2 (over-oxygenation on O2 is scored, not alarmed).
    "copd": {
        "thresholds": {"spo2": {"low": {"warn": 88, "crit": 84}}},
        "news2_scale": 2,
    },
    # Post-operative patients on opioids (PCA, epidural): opioid-induced respiratory
    # depression shows as slowing breathing and rising EtCO2 before SpO2 falls, the
    # more so on oxygen (APSF 2011 / Joint Commission 2012: continuous oximetry and
    # capnography). Tighter RR low limits, SpO2 warning at 92 %, and EtCO2 limits:
    # hypoventilation (> 50 / > 60 mmHg) and apnoea or disconnection (< 5 mmHg for 20 s).
    "opioid": {
        "thresholds": {
            "rr": {"low": {"warn": 10, "crit": 8}},
            "spo2": {"low": {"warn": 92, "crit": 88}},
            "etco2": {
                "low": {"crit": 5},
                "high": {"warn": 50, "crit": 60},
                "delay_s": 20,
                "clear_band": 2,
            },
        },
    },
}


class ProfileConfig(_Model):
    """A named set of limits for a kind of patient, mounted at ``profiles.<name>``::

        profiles:
          copd:
            thresholds:
              spo2: {low: {warn: 87, crit: 84}}   # replaces copd's spo2.low
          cardiac:                              # a new profile
            thresholds:
              hr: {low: {warn: 45, crit: 35}}

    ``thresholds`` override ``rules.thresholds`` per vital and key, exactly as
    ``rules.thresholds`` overrides the defaults (``null`` switches a vital off).
    """

    thresholds: dict[VitalKey, dict[str, Any] | None] = Field(default_factory=dict)
    #: NEWS2 SpO2 scale of beds with this profile (null: ``rules.news2.scale``).
    news2_scale: Literal[1, 2] | None = None


@dataclass(frozen=True)
class Profile:
    """A profile resolved against ``rules``: the limits its beds are evaluated with."""

    name: str
    thresholds: dict[str, ThresholdConfig]
    news2_scale: Literal[1, 2]


def _bed_key(v: str) -> str:
    if v.count("/") != 1 or "" in v.split("/"):
        raise ValueError("a bed key is ward/bed, e.g. icu/7")
    return v


#: ``ward/bed``: a bad one is an error at its own key path, the other beds still checked.
BedKey = Annotated[str, AfterValidator(_bed_key)]


class BedConfig(_Model):
    #: Limits profile of the bed: ``adult``, ``copd``, ``opioid`` or one under ``profiles``.
    profile: str = "adult"


def _default_store() -> list[StoreConfig]:
    return [SqliteStoreConfig()]


def _default_sources() -> list[SourceConfig]:
    return [MqttSourceConfig()]


class Config(_Model):
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    sources: list[SourceConfig] = Field(default_factory=_default_sources)
    #: One sink or a list of sinks.
    store: list[StoreConfig] = Field(default_factory=_default_store)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    #: Limits per kind of patient, merged over the built-in ``adult``/``copd``/``opioid``.
    profiles: dict[str, ProfileConfig] = Field(default_factory=dict)
    #: Beds expected to send data, keyed ``ward/bed`` (``icu/7``), with their profile: a
    #: bed listed here that never sends anything raises ``device.stale`` after
    #: ``rules.stale_after_s``.
    beds: dict[BedKey, BedConfig] = Field(default_factory=dict)
    #: Spool for store-and-forward when ``store`` has no sqlite sink.
    spool_path: str = "/var/lib/vitalmon/spool.db"

    @field_validator("store", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return _default_type([v] if isinstance(v, Mapping) else v, "sqlite")

    @field_validator("sources", mode="before")
    @classmethod
    def _source_type(cls, v: Any) -> Any:
        return _default_type(v, "mqtt")

    @field_validator("sources")
    @classmethod
    def _some_source(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        if not v:
            raise ValueError("at least one source is needed")
        return v

    @model_validator(mode="after")
    def _profiles_resolve(self) -> Config:
        errors = self.resolve_profiles()[1]
        for key, bed in self.beds.items():
            if bed.profile not in self.profile_names:
                errors.append(
                    f"beds.{key}.profile: unknown profile {bed.profile!r} "
                    f"(known: {', '.join(sorted(self.profile_names))})"
                )
        if errors:
            raise ValueError("\n".join(errors))
        return self

    @property
    def profile_names(self) -> set[str]:
        return set(BUILTIN_PROFILES) | set(self.profiles)

    def resolve_profiles(self) -> tuple[dict[str, Profile], list[str]]:
        """Every profile's effective limits (``rules.thresholds`` <- built-in <- config);
        -> (profiles, errors with their key paths)."""
        out: dict[str, Profile] = {}
        errors: list[str] = []
        base = {v: tc.model_dump(exclude_unset=False) for v, tc in self.rules.thresholds.items()}
        for name in sorted(self.profile_names):
            builtin = BUILTIN_PROFILES.get(name, {})
            given = self.profiles.get(name)
            merged: dict[str, Any] = {v: dict(d) for v, d in base.items()}
            layers = [builtin.get("thresholds", {})]
            if given is not None:
                layers.append(given.thresholds)
            for layer in layers:
                for vital, over in layer.items():
                    if over is None:
                        merged[vital] = {"enabled": False}
                    else:
                        merged[vital] = {**merged.get(vital, {}), **over}
            thresholds: dict[str, ThresholdConfig] = {}
            for vital, data in merged.items():
                try:
                    thresholds[vital] = ThresholdConfig.model_validate(data)
                except ValidationError as exc:
                    for err in exc.errors():
                        where = _join(f"profiles.{name}.thresholds.{vital}", _loc(err["loc"]))
                        where = where.removesuffix(".<root>")
                        errors.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
            longest = max((t.delay_s for t in thresholds.values() if t.enabled), default=0.0)
            if longest + self.rules.max_gap_s > self.rules.window_s:
                errors.append(
                    f"profiles.{name}.thresholds: rules.window_s ({self.rules.window_s:g}) must "
                    f"cover the longest delay_s ({longest:g}) plus rules.max_gap_s "
                    f"({self.rules.max_gap_s:g})"
                )
            scale = given.news2_scale if given and given.news2_scale else None
            scale = scale or builtin.get("news2_scale") or self.rules.news2.scale
            out[name] = Profile(name, thresholds, scale)
        return out, errors

    def bed_profiles(self) -> dict[tuple[str, str], str]:
        """``beds`` as (ward, bed) -> profile name."""
        return {(k.split("/")[0], k.split("/")[1]): b.profile for k, b in self.beds.items()}

    def beds_keys(self) -> set[tuple[str, str]]:
        return set(self.expected_beds)

    @property
    def expected_beds(self) -> list[tuple[str, str]]:
        return [(k.split("/")[0], k.split("/")[1]) for k in self.beds]

    @field_validator("store")
    @classmethod
    def _one_journal(cls, v: list[StoreConfig]) -> list[StoreConfig]:
        problems = []
        if sum(1 for s in v if s.type == "sqlite") > 1:
            problems.append(
                "at most one sqlite store (it is the journal remote sinks forward from)"
            )
        names = [s.sink_name for s in v if isinstance(s, InfluxStoreConfig)]
        if len(names) != len(set(names)):
            problems.append("two influxdb sinks with the same url and bucket need distinct names")
        if problems:
            raise ValueError("; ".join(problems))
        return v

    @property
    def journal(self) -> SqliteStoreConfig:
        """The local SQLite store; with only remote sinks, a spool beside the default path."""
        for sink in self.store:
            if isinstance(sink, SqliteStoreConfig):
                return sink
        return SqliteStoreConfig(path=self.spool_path, raw_days=1, aggregate_days=1)

    @property
    def remote_sinks(self) -> list[InfluxStoreConfig]:
        return [s for s in self.store if isinstance(s, InfluxStoreConfig)]

    @property
    def sqlite_path(self) -> str | None:
        for sink in self.store:
            if isinstance(sink, SqliteStoreConfig):
                return sink.path
        return None


def _default_type(v: Any, default: str) -> Any:
    """``type`` has a default, but a discriminated union needs the tag: fill it in."""
    if isinstance(v, list):
        return [{"type": default, **i} if isinstance(i, Mapping) else i for i in v]
    return v


# -------------------------------------------------------------------------- loading


def substitute(node: Any, env: Mapping[str, str], path: str, errors: list[str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a parsed YAML tree."""
    if isinstance(node, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        out = _VAR.sub(repl, node)
        if out != node and _VAR.fullmatch(node):
            # A whole-value substitution may produce a number, bool or null.
            try:
                return yaml.safe_load(out) if out else None
            except yaml.YAMLError:
                return out
        return out
    if isinstance(node, Mapping):
        return {k: substitute(v, env, _join(path, str(k)), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, env, f"{path}[{i}]", errors) for i, v in enumerate(node)]
    return node


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


#: Discriminator tags pydantic inserts into an error's location after a list index.
_TAGS = frozenset({"mqtt", "sqlite", "serial", "hl7-mllp", "influxdb"})

KeyPath = tuple[int | str, ...]


def _key_path(loc: KeyPath) -> KeyPath:
    """An error's location as the user's keys (without the discriminator tags)."""
    out: list[int | str] = []
    for part in loc:
        if isinstance(part, str) and part in _TAGS and out and isinstance(out[-1], int):
            continue  # discriminator tag inserted by pydantic, not a user key
        if part == "[key]":
            continue  # the key itself is wrong: its path is the error's
        out.append(part)
    return tuple(out)


def _loc(loc: KeyPath) -> str:
    out = ""
    for part in _key_path(loc):
        out = out + f"[{part}]" if isinstance(part, int) else _join(out, part)
    return out or "<root>"


def _target(data: dict[str, Any], path: KeyPath) -> tuple[KeyPath, KeyPath, bool] | None:
    """Where the value an error is about sits in ``data`` (or the deepest part of its
    path the document has), and the error path at or under which later errors are
    consequences of taking it out, and whether it is a list item (the list's later items
    move up: their errors would be misplaced); None when the error is about the whole
    document."""
    node: Any = data
    where: list[int | str] = []
    in_list = False
    end = 0
    for i, part in enumerate(path):
        if isinstance(node, Mapping) and isinstance(part, int):
            continue  # `store: {...}` is the list `[{...}]` to pydantic
        if isinstance(node, list):
            if not (isinstance(part, int) and 0 <= part < len(node)):
                break
        elif not (isinstance(node, Mapping) and part in node):
            break
        in_list = isinstance(node, list)
        node, end = node[part], i + 1
        where.append(part)
    if not where:
        return None
    return tuple(where), path[: end - 1] if in_list else path[:end], in_list


def _take_out(data: dict[str, Any], where: KeyPath) -> bool:
    """Remove the value at ``where`` from ``data`` (in place), so that its default
    applies; -> whether that emptied a list, which then goes as well (its default)."""
    parents: list[Any] = [data]
    for part in where[:-1]:
        parents.append(parents[-1][part])
    if where[0] == "profiles" and len(where) == 2:
        parents[-1][where[-1]] = {}  # keep the name: `beds` may refer to it
        return False
    del parents[-1][where[-1]]
    if isinstance(parents[-1], list) and not parents[-1] and len(where) >= 2:
        del parents[-2][where[-2]]
        return True
    return False


def _order(where: KeyPath) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, p) if isinstance(p, int) else (1, str(p)) for p in where)


def _messages(err: Any) -> list[str]:
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not err["loc"] and msg.startswith(("profiles.", "beds.")):
        return msg.splitlines()  # cross-section checks name their own paths
    return [f"{_loc(err['loc'])}: {msg}"]


#: Validation passes at most (each one removes at least one invalid value).
_MAX_PASSES = 25


def _validate(data: dict[str, Any]) -> tuple[Config | None, list[str]]:
    """-> (the config, []) or (None, every error).

    A model's own checks across its fields (``reconnect_max_s >= reconnect_min_s``, a
    window covering the delays, beds naming known profiles) run only once all of its
    fields are valid, so a single bad value (an unknown vital, a port out of range)
    would hide every such check around it. So each invalid value is taken out (its
    default applies) and the document validated again, until nothing more is found.
    Errors under a value taken out are its consequences, and are not reported.
    """
    errors: list[str] = []
    removed: list[tuple[KeyPath, bool]] = []  # (path, errors only strictly under it)

    def consequence(path: KeyPath) -> bool:
        return any(path[: len(p)] == p and not (strict and path == p) for p, strict in removed)

    for _ in range(_MAX_PASSES):
        try:
            cfg = Config.model_validate(data)
        except ValidationError as exc:
            found = exc.errors()
        else:
            return (None, errors) if errors else (cfg, [])
        paths = [_key_path(err["loc"]) for err in found]
        for path, err in zip(paths, found, strict=True):
            if consequence(path):
                continue
            errors += [m for m in _messages(err) if m not in errors]
        targets = {t[0]: t[1:] for t in (_target(data, path) for path in paths) if t}
        outer = [w for w in targets if not any(w[: len(o)] == o != w for o in targets)]
        for where in sorted(outer, key=_order, reverse=True):  # list indices stay right
            emptied = _take_out(data, where)
            prefix, item = targets[where]
            # a list item: errors of the list itself still count, unless it is gone
            removed.append((prefix, item and not emptied))
        if not outer:
            break
    return None, errors


def parse(data: Any, env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed YAML document; raise ConfigError listing every problem."""
    errors: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(["<root>: the config must be a mapping of sections"])
    mqtt = data.get("mqtt")
    raw_password = mqtt.get("password") if isinstance(mqtt, Mapping) else None
    if raw_password is not None and not (
        isinstance(raw_password, str) and _VAR.fullmatch(raw_password.strip())
    ):
        errors.append(
            "mqtt.password: never write the password in the file; use "
            "password_file, or password: ${MQTT_PASSWORD} from the environment"
        )
    data = substitute(data, os.environ if env is None else env, "", errors)
    cfg, invalid = _validate(data)
    errors += invalid
    if errors or cfg is None:
        raise ConfigError(errors)
    return cfg


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read config: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{p}: not valid YAML: {exc}"]) from None
    return parse(data, env)


def read_secret(path: str) -> str:
    """First line of a secret file, without the newline."""
    return Path(path).read_text(encoding="utf-8").splitlines()[0] if path else ""
