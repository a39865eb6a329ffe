"""The broker connection: ``mqtt`` and ``mqtt.tls``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from monitor.config.base import ReadableFile, _Model, readable, secret_in


class TLSConfig(_Model):
    """TLS to the broker. The broker's certificate is always verified (against
    ``ca_file``, or the system's CAs when it is null)."""

    ca_file: ReadableFile = None
    #: Client certificate and key (mutual TLS); both or neither.
    cert_file: ReadableFile = None
    key_file: ReadableFile = None
    #: Check that the certificate names ``mqtt.host``. Only for a lab broker whose
    #: certificate names another host: never switch it off in production.
    verify_hostname: bool = True
    #: Lowest TLS version accepted.
    min_version: Literal["1.2", "1.3"] = "1.2"

    @field_validator("min_version", mode="before")
    @classmethod
    def _version_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, float) else v  # YAML reads 1.2 as a number

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
    password_file: Annotated[str | None, readable("password file"), secret_in("the password")] = (
        None
    )
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

    @model_validator(mode="after")
    def _backoff(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self
