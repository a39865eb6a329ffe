"""Sources' schemas: ``sources[]`` items, one per ``type``.

Each schema names the module implementing it (``implementation``), which registers its
factory under the same ``type`` (:func:`monitor.sources.register_source`): validating a
config imports none of them, so ``check-config`` stays fast and nothing connects.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from monitor.config.base import TimeZone, _Model, host_port, is_ward_bed, parse_topic_template
from monitor.model import VITALS

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


class _TopicSource(_Model):
    """What sources of MQTT messages share: the topic template and the payloads."""

    #: Topic template; each ``{name}`` level becomes ``+`` in the subscription.
    topic: str = "vitals/{ward}/{bed}/{device}"
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
        return check_aliases(v)


class MqttSourceConfig(_TopicSource):
    implementation: ClassVar[str] = "monitor.sources.mqtt"

    type: Literal["mqtt"] = "mqtt"
    qos: Literal[0, 1, 2] = 1


def check_aliases(v: dict[str, str]) -> dict[str, str]:
    """SenML name -> vital spellings: every vital known."""
    bad = sorted(k for k, vital in v.items() if vital not in VITALS)
    if bad:
        raise ValueError(f"aliases {bad} map to unknown vitals (known: {sorted(VITALS)})")
    return v


_PARITY = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}


class SerialSourceConfig(_Model):
    """One device on a serial port (RS-232, USB-serial, a pty)."""

    implementation: ClassVar[str] = "monitor.sources.serial"

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
    timezone: TimeZone = None
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

    implementation: ClassVar[str] = "monitor.sources.hl7mllp"

    type: Literal["hl7-mllp"]
    #: host:port to listen on (2575 is HL7's registered port; 0 = any free port).
    listen: str = "127.0.0.1:2575"
    #: Where readings go when a message says nothing usable: PV1-3 (point of care^room^
    #: bed) gives ward and bed; ``beds`` maps a PV1-3 or MSH-4 value to ``ward/bed``.
    ward: str = Field("default", min_length=1)
    beds: dict[str, str] = Field(default_factory=dict)
    #: Reading time: ``message`` (OBX-14, else OBR-7, else MSH-7) or ``receive``.
    clock: Literal["message", "receive"] = "message"
    timezone: TimeZone = None  #: zone of HL7 times without an offset; null = local
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
        return host_port(v, "0.0.0.0:2575")

    @field_validator("beds")
    @classmethod
    def _beds(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k, wb in v.items() if not is_ward_bed(wb)]
        if bad:
            raise ValueError(f"values are ward/bed, e.g. icu/7: not for {bad}")
        return v

    @property
    def name(self) -> str:
        return f"hl7-mllp:{self.listen}"


class JetStreamSourceConfig(_TopicSource):
    """Readings from a NATS cluster with JetStream (the ``cluster`` extra): devices publish
    MQTT to the cluster's MQTT listeners; a capture session puts each message into a
    replicated stream partitioned by ward and bed (NATS's own ``partition()`` subject
    transform); the daemon consumes the stream and acknowledges each message after its
    durable commit (README, "Scaling out: NATS JetStream")."""

    implementation: ClassVar[str] = "monitor.sources.jetstream"

    type: Literal["jetstream"]
    #: The cluster's NATS client URLs (any number of its nodes; the client fails over).
    servers: list[str] = Field(min_length=1)
    #: The cluster's MQTT listeners (host:port) the capture session connects to, in turn.
    capture_mqtt: list[str] = Field(min_length=1)
    #: The capture session's MQTT client id: one session for the cluster, whichever
    #: instance holds it (its unacknowledged messages wait in the cluster for the next).
    capture_client_id: str = Field("vitalmon-capture", min_length=1, max_length=128)
    #: The stream, its replicas (3: survives the loss of one node) and partitions.
    stream: str = Field("VITALMON_READINGS", pattern=r"^[A-Za-z0-9_-]+$")
    replicas: int = Field(3, ge=1, le=5)
    partitions: int = Field(8, ge=1, le=1024)
    #: Subjects are ``<prefix>.in.<topic>`` (captured) and ``<prefix>.p.<n>.<topic>``.
    subject_prefix: str = Field("vitalmon", pattern=r"^[A-Za-z0-9_-]+$")
    #: How long the stream keeps readings: at least the span the rules need (a new owner
    #: replays it), 24 h by default.
    retention_s: float = Field(86400.0, ge=600)
    #: Unacknowledged messages per partition consumer, at most (back-pressure).
    max_ack_pending: int = Field(10_000, ge=1, le=1_000_000)
    #: Redelivery of a message not acknowledged (committed) this long after delivery (a
    #: dead owner's messages in flight reach the new owner after this).
    ack_wait_s: float = Field(10.0, gt=0)
    #: Partition leases (monitor.sources.jetstream.ownership): an instance that stops
    #: renewing loses its partitions after this; the others take them over.
    lease_s: float = Field(10.0, ge=1, le=600)
    #: This instance's name among the cluster's (null: host name, process id and a
    #: random part: unique for each run).
    instance: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$")

    @field_validator("servers")
    @classmethod
    def _servers(cls, v: list[str]) -> list[str]:
        bad = [u for u in v if not u.startswith(("nats://", "tls://"))]
        if bad:
            raise ValueError(f"NATS URLs look like nats://host:4222, not {bad}")
        return v

    @field_validator("capture_mqtt")
    @classmethod
    def _capture(cls, v: list[str]) -> list[str]:
        return [host_port(hp, "127.0.0.1:1883") for hp in v]

    @property
    def name(self) -> str:
        return f"jetstream:{self.stream}"


#: ``sources[]``, by ``type``: each schema names the module that builds its source
#: (:mod:`monitor.sources`, the registry); a new kind of source adds its schema here.
SourceConfig = Annotated[
    MqttSourceConfig | SerialSourceConfig | Hl7MllpSourceConfig | JetStreamSourceConfig,
    Field(discriminator="type"),
]
