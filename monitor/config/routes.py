"""Alert delivery: ``alerts.routes[]``, each a match on the alert events and a receiver,
one schema per receiver ``type`` (``mqtt``, ``hl7-mllp``, ``webhook``, ``smtp``).

Each receiver schema names the module implementing it (``implementation``), which
registers its factory under the same ``type`` (:mod:`monitor.sinks.delivery`); validating
a config imports none of them. Secrets are files (``secret_file``, ``password_file``),
checked here (readable, their first line not empty; a webhook key at least
:data:`MIN_KEY_BYTES`) and read again when the daemon builds the receiver; a URL may not
carry credentials. See docs/delivery.md.
"""

from __future__ import annotations

import re
import urllib.parse
from collections import Counter
from typing import Annotated, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from monitor.config.base import (
    ReadableFile,
    _Model,
    parse_topic_template,
    readable,
    secret_in,
)
from monitor.model import AlertState, Priority

#: A route's name: its metrics label, its log name, its rows in the journal's outbox.
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ADDRESS = re.compile(r"^[^@\s<>,;:\"()\[\]\\]+@[^@\s<>,;:\"()\[\]\\]+\.[^@\s<>,;:\"()\[\]\\]+$")
_HOST = r"^[A-Za-z0-9]([A-Za-z0-9.:_-]*[A-Za-z0-9])?$"
#: A webhook's HMAC key, at least (UTF-8 bytes of the secret file's first line).
MIN_KEY_BYTES = 16
Kind = Literal["physiological", "trend", "score", "device", "technical"]


class RouteMatch(_Model):
    """Which alert events a route takes: every field given must match (a field left out
    matches everything; a list matches any of its values)."""

    wards: list[str] | None = Field(None, min_length=1)
    priorities: list[Priority] | None = Field(None, min_length=1)
    kinds: list[Kind] | None = Field(None, min_length=1)
    states: list[AlertState] | None = Field(None, min_length=1)
    #: true: only the events of escalated alerts (``"escalated": true``: the escalation
    #: and what follows it); false: only the others; null: both.
    escalated: bool | None = None


class _Receiver(_Model):
    #: One delivery attempt, at most (connect, send, the receiver's answer).
    timeout_s: float = Field(5.0, gt=0, le=300)


class MqttReceiverConfig(_Receiver):
    """The alert JSON at QoS 1 through the daemon's own MQTT connection (a pager gateway,
    a charge nurse's topic); accepted when the broker has it (PUBACK)."""

    implementation: ClassVar[str] = "monitor.sinks.delivery.mqtt"

    type: Literal["mqtt"]
    #: Template; placeholders among {ward}, {bed}, {priority}, {vital}, {device}.
    topic: str

    @field_validator("topic")
    @classmethod
    def _template(cls, v: str) -> str:
        levels = parse_topic_template(v, required=())
        allowed = {"{ward}", "{bed}", "{device}", "{vital}", "{priority}"}
        bad = [lvl for lvl in levels if lvl and lvl.startswith("{") and lvl not in allowed]
        if bad:
            raise ValueError(f"unknown placeholders {bad}; allowed: {sorted(allowed)}")
        return v


class Hl7MllpReceiverConfig(_Receiver):
    """IHE PCD-04 Report Alert (HL7 v2.6 ORU^R40) over MLLP to an alarm manager; accepted
    on its ACK ``AA`` or ``CA``."""

    implementation: ClassVar[str] = "monitor.sinks.delivery.hl7mllp"

    type: Literal["hl7-mllp"]
    host: str = Field(pattern=_HOST)
    port: int = Field(ge=1, le=65535)
    timeout_s: float = Field(10.0, gt=0, le=300)
    #: MSH-3 .. MSH-6 (plain text; escaped when sent).
    sending_application: str = "vitalmon"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    #: MSH-11: P (production), T (training), D (debugging).
    processing_id: Literal["P", "T", "D"] = "P"


class WebhookReceiverConfig(_Receiver):
    """An HTTP(S) POST of the alert JSON, signed (``X-Vitalmon-Signature: sha256=<HMAC of
    the timestamp, the idempotency key and the body>``); accepted on a 2xx answer."""

    implementation: ClassVar[str] = "monitor.sinks.delivery.webhook"

    type: Literal["webhook"]
    url: str
    #: The HMAC-SHA256 key (the file's first line, at least 16 bytes), shared with the
    #: receiver.
    secret_file: Annotated[
        str,
        readable("secret file"),
        secret_in("the HMAC key", MIN_KEY_BYTES, " (e.g. openssl rand -hex 32)"),
    ]
    #: CA bundle for an https url with a private CA (null: the system's CAs).
    ca_file: ReadableFile = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        try:
            parts = urllib.parse.urlsplit(v)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"not a valid url: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be http://host/... or https://host/...")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "credentials do not go in the url (it is logged): the receiver checks the "
                "signature made with secret_file"
            )
        if parts.fragment:
            raise ValueError("a url sent to a server has no #fragment")
        if port == 0:
            raise ValueError("url port must be 1-65535")
        return v

    @model_validator(mode="after")
    def _ca(self) -> WebhookReceiverConfig:
        if self.ca_file is not None and not self.url.startswith("https://"):
            raise ValueError("ca_file is for an https url")
        return self

    @property
    def shown_url(self) -> str:
        """The url as logs show it: no query string (it may hold a token)."""
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class SmtpReceiverConfig(_Receiver):
    """E-mail through an SMTP relay, for low-urgency routes: STARTTLS by default."""

    implementation: ClassVar[str] = "monitor.sinks.delivery.smtp"

    type: Literal["smtp"]
    host: str = Field(pattern=_HOST)
    port: int = Field(587, ge=1, le=65535)
    timeout_s: float = Field(10.0, gt=0, le=300)
    #: Upgrade the connection with STARTTLS before anything is sent (refused if the
    #: server does not offer it). false only for a relay on the same host.
    starttls: bool = True
    #: CA bundle that signs the server's certificate (null: the system's CAs).
    ca_file: ReadableFile = None
    #: Login (both or neither; only over STARTTLS).
    username: str | None = None
    password_file: Annotated[str | None, readable("password file"), secret_in("the password")] = (
        None
    )
    from_: str = Field(alias="from")
    to: list[str] = Field(min_length=1)

    @field_validator("from_")
    @classmethod
    def _from(cls, v: str) -> str:
        if not _ADDRESS.match(v):
            raise ValueError(f"not an e-mail address: {v!r}")
        return v

    @field_validator("to")
    @classmethod
    def _to(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if not _ADDRESS.match(a)]
        if bad:
            raise ValueError(f"not e-mail addresses: {bad}")
        return v

    @model_validator(mode="after")
    def _login(self) -> SmtpReceiverConfig:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        if self.password_file is not None and not self.starttls:
            raise ValueError("a login needs starttls: true (a password never goes in clear)")
        if self.ca_file is not None and not self.starttls:
            raise ValueError("ca_file is for starttls")
        return self


#: ``alerts.routes[].receiver``, by ``type``: each schema names the module that builds
#: its receiver (:mod:`monitor.sinks.delivery`); a new kind adds its schema here.
ReceiverConfig = Annotated[
    MqttReceiverConfig | Hl7MllpReceiverConfig | WebhookReceiverConfig | SmtpReceiverConfig,
    Field(discriminator="type"),
]


class RouteConfig(_Model):
    """One route: the alert events it takes and the receiver they go to, each through
    its own durable outbox in the journal (docs/delivery.md)."""

    #: Unique among the routes: the metrics label, the log name, the outbox rows' owner.
    name: str
    match: RouteMatch = Field(default_factory=RouteMatch)
    receiver: ReceiverConfig
    #: A failed delivery is retried after a jittered backoff from min to max (seconds).
    retry_min_s: float = Field(0.5, gt=0, le=60)
    retry_max_s: float = Field(30.0, gt=0, le=3600)
    #: Failing (or a send hanging) this long raises the technical alarm ``sink.down``.
    down_alarm_s: float = Field(30.0, ge=1, le=86400)
    #: An event the receiver refuses for good (HTTP 4xx about the request, HL7 AR/CR,
    #: SMTP 5xx for the message) this many times in a row is given up (``rejected``,
    #: the technical alarm ``route.rejected``) and the route goes on with the next.
    reject_after: int = Field(3, ge=1, le=100)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _ROUTE_NAME.match(v):
            raise ValueError(
                "a route name is letters, digits, '_', '.' and '-' (at most 64, starting "
                f"with a letter or digit), e.g. pager-3west; not {v!r}"
            )
        return v

    @field_validator("retry_max_s")
    @classmethod
    def _backoff(cls, v: float, info: ValidationInfo) -> float:
        # (a field check, not the model's: reported even while the receiver is invalid)
        low = info.data.get("retry_min_s")
        if low is not None and v < low:
            raise ValueError(f"must be >= retry_min_s ({low:g})")
        return v


def check_route_names(routes: list[RouteConfig]) -> list[RouteConfig]:
    """Route names are unique (each is a metrics label and owns outbox rows). Said by
    name, not by index: the check runs on the valid routes (an invalid one is taken out
    first, and the indexes after it move)."""
    count = Counter(r.name for r in routes)
    dup = [f"{name!r} is used {n} times" for name, n in count.items() if n > 1]
    if dup:
        raise ValueError("route names must be unique: " + "; ".join(dup))
    return routes
