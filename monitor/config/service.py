"""The daemon's own sections: ``alerts``, ``engine``, ``log``, ``metrics``, ``privacy``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from monitor.config.base import (
    _Model,
    host_port,
    parse_topic_template,
    readable,
    secret_in,
)
from monitor.config.routes import RouteConfig, check_route_names
from monitor.model import Priority


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
    #: Alert delivery to the systems that reach people (pagers, an alarm manager over HL7,
    #: webhooks, e-mail), each route with its own durable outbox: docs/delivery.md.
    routes: list[RouteConfig] = Field(default_factory=list)

    @field_validator("routes")
    @classmethod
    def _route_names(cls, v: list[RouteConfig]) -> list[RouteConfig]:
        return check_route_names(v)

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
        return None if v is None else host_port(v, "127.0.0.1:9464")


class PrivacyConfig(_Model):
    #: Replace the ``patient`` field of stored readings and of published and stored
    #: alerts by a keyed pseudonym (HMAC-SHA256 with ``key_file``, 16 hex digits).
    pseudonymize_patient: bool = False
    #: Secret key file (first line) for pseudonyms; required with pseudonymize_patient.
    key_file: Annotated[str | None, readable(), secret_in("the pseudonym key")] = None

    @model_validator(mode="after")
    def _key(self) -> PrivacyConfig:
        if self.pseudonymize_patient and self.key_file is None:
            raise ValueError("pseudonymize_patient needs key_file")
        return self
