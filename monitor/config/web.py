"""``web``: the web central station (``vitalmon web``, :mod:`monitor.web`)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from monitor.config.base import ReadableFile, _Model, host_port


class WebTLSConfig(_Model):
    #: PEM certificate chain and its private key: the station is served over HTTPS.
    cert_file: ReadableFile = None
    key_file: ReadableFile = None

    @model_validator(mode="after")
    def _pair(self) -> WebTLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls needs both cert_file and key_file")
        return self


class WebConfig(_Model):
    #: ``host:port`` the station listens on (HTTP, or HTTPS with ``tls``).
    listen: str = "127.0.0.1:8080"
    tls: WebTLSConfig | None = None
    #: The users (``vitalmon user add``): name, role, Argon2id password hash. Required by
    #: ``vitalmon web``; the file may be empty (nobody can log in yet).
    users_file: str = "/etc/vitalmon/users.yaml"
    #: A session ends this long after its login (a nursing shift and a half) ...
    session_max_s: float = Field(12 * 3600.0, gt=0)
    #: ... or after this long without a request from its page (the live page keeps it
    #: alive while it is open).
    session_idle_s: float = Field(30 * 60.0, gt=0)
    #: Cookies only over HTTPS (``Secure``). Null: when ``tls`` is set. Set true behind a
    #: TLS-terminating reverse proxy.
    secure_cookies: bool | None = None
    #: Failed logins per user name (and per client address) before it waits
    #: ``lockout_s``.
    max_failed_logins: int = Field(5, ge=1)
    lockout_s: float = Field(300.0, ge=0)
    #: Hours of history the bed page's plots show by default (at most ``max_hours``).
    plot_hours: float = Field(6.0, gt=0)
    max_hours: float = Field(72.0, gt=0)
    #: How often the live page is sent what changed (seconds).
    push_interval_s: float = Field(0.5, gt=0, le=10)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return host_port(v, "127.0.0.1:8080")

    @property
    def https(self) -> bool:
        return self.tls is not None

    @property
    def cookie_secure(self) -> bool:
        return self.https if self.secure_cookies is None else self.secure_cookies
