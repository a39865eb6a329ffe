"""Receiver ``webhook``: an HTTP(S) POST of the alert JSON (the MQTT event's payload,
byte for byte the same fields), signed.

Headers: ``Content-Type: application/json``, ``X-Vitalmon-Event: <alert id>:<seq>`` (the
idempotency key), ``X-Vitalmon-Timestamp`` (epoch seconds of the attempt),
``X-Vitalmon-Route`` (the route's name) and ``X-Vitalmon-Signature: sha256=<hex>``, the
HMAC-SHA256, keyed with ``secret_file``'s first line, of ``<timestamp>.<key>.`` and the
exact body (:func:`signature`): the timestamp and the idempotency key are signed with
the body, so a captured request replayed later, or with another key to get past the
receiver's de-duplication, fails the check (a receiver also refuses a timestamp more
than :data:`TOLERANCE_S` from its clock; docs/delivery.md shows the check).

Each attempt is bounded by ``timeout_s`` in all (:mod:`.attempt`: name resolution,
connection, TLS, the request and the whole answer; a server that drips its answer is
cut off at the deadline), in a daemon thread of its own that no stop waits for.

A 2xx answer is acceptance. A 4xx about the request itself (400, 413, 422, ...: not
one of :data:`RETRIED`) raises :class:`~monitor.sinks.delivery.Rejected`: the receiver
will never take this event as it is, and the deliverer gives it up after
``reject_after`` attempts. Any other status (5xx; 408, 425, 429; and the 4xx that say
the route itself is wrong, the same for every event: 401, 403, 404, 405, 407, 410, 421,
426), a connection refused or reset, or no answer within ``timeout_s`` raise
:class:`Refused` (or TimeoutError), and the deliverer retries. https verifies the
server (``ca_file``, else the system's CAs). One connection per event; no proxy is
used. Logs show the url without its query string; the key is never shown.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import ssl
import time
import urllib.parse

from monitor.config import WebhookReceiverConfig, read_secret
from monitor.config.routes import MIN_KEY_BYTES
from monitor.model import AlertEvent
from monitor.sinks.delivery import ReceiverContext, Rejected, register_receiver
from monitor.sinks.delivery.attempt import Attempt, run_attempt

#: Of an answer's body, at most this much is read (and its first line shown).
MAX_ANSWER = 64 * 1024


class Refused(Exception):
    """The server answered with another status than 2xx (retried)."""


class RefusedForGood(Refused, Rejected):
    """The server refused this request for good (a 4xx about the request)."""


#: 4xx answers retried like a 5xx: a timeout or a rate limit (408, 425, 429), or the
#: route itself is wrong (authentication, url, method, proxy; 401, 403, 404, 405, 407,
#: 410, 421, 426), the same for every event: giving each event up in turn would lose
#: them all, where retrying holds them (``sink.down``) until the route is fixed.
RETRIED = frozenset({401, 403, 404, 405, 407, 408, 410, 421, 425, 426, 429})


def for_good(status: int) -> bool:
    """Whether an HTTP status refuses the request for good (see :data:`RETRIED`)."""
    return 400 <= status < 500 and status not in RETRIED


#: How far from its own clock a receiver should accept ``X-Vitalmon-Timestamp`` (a
#: recommendation, docs/delivery.md: an attempt's timestamp is made when it starts).
TOLERANCE_S = 300


def signature(secret: bytes, timestamp: str, key: str, body: bytes) -> str:
    """``X-Vitalmon-Signature``: ``sha256=`` and the hex HMAC-SHA256 of
    ``<timestamp>.<key>.`` followed by the exact ``body`` (``timestamp`` as sent in
    ``X-Vitalmon-Timestamp``, ``key`` in ``X-Vitalmon-Event``)."""
    signed = f"{timestamp}.{key}.".encode() + body
    return "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()


def body_of(e: AlertEvent) -> bytes:
    """The alert JSON as MQTT carries it."""
    return json.dumps(e.to_json(), separators=(",", ":")).encode()


class _Connection(http.client.HTTPConnection):
    """http.client's connection, made within an attempt's deadline (over TLS when given
    a context)."""

    def __init__(
        self,
        host: str,
        port: int | None,
        *,
        attempt: Attempt,
        timeout: float,
        tls: ssl.SSLContext | None,
    ) -> None:
        if tls is not None:
            self.default_port = http.client.HTTPS_PORT  # (the Host header, the port)
        super().__init__(host, port, timeout=timeout)
        self.attempt = attempt
        self.tls = tls

    def connect(self) -> None:
        sock = self.attempt.connect(self.host, self.port, self.timeout)
        self.sock = sock if self.tls is None else self.attempt.tls(self.tls, sock, self.host)


class WebhookReceiver:
    def __init__(self, cfg: WebhookReceiverConfig, route: str) -> None:
        self.cfg = cfg
        self.route = route
        self.timeout_s = cfg.timeout_s
        self._secret = read_secret(cfg.secret_file).encode()
        if len(self._secret) < MIN_KEY_BYTES or not self._secret.strip():
            # (checked at load time; the file may have changed since)
            raise ValueError(
                f"route {route}: the HMAC key in {cfg.secret_file!r} (its first line) is empty "
                f"or shorter than {MIN_KEY_BYTES} bytes"
            )
        parts = urllib.parse.urlsplit(cfg.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        self._ssl = ssl.create_default_context(cafile=cfg.ca_file) if self._https else None
        self._thread = f"vitalmon-route-{route}"

    async def send(self, event: AlertEvent, key: str) -> None:
        body = body_of(event)
        await run_attempt(lambda a: self._post(a, body, key), self.timeout_s, self._thread)

    def _post(self, a: Attempt, body: bytes, key: str) -> None:
        conn = _Connection(self._host, self._port, attempt=a, timeout=self.timeout_s, tls=self._ssl)
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "vitalmon",
            "X-Vitalmon-Event": key,
            "X-Vitalmon-Timestamp": ts,
            "X-Vitalmon-Route": self.route,
            "X-Vitalmon-Signature": signature(self._secret, ts, key, body),
        }
        try:
            conn.request("POST", self._target, body, headers)
            answer = conn.getresponse()
            text = answer.read(MAX_ANSWER)
        finally:
            conn.close()
        if not 200 <= answer.status < 300:
            said = text.decode("utf-8", "replace").strip().splitlines()[:1]
            raise (RefusedForGood if for_good(answer.status) else Refused)(
                f"HTTP {answer.status} {answer.reason} from {self.cfg.shown_url}"
                + (f": {said[0][:120]}" if said else "")
            )

    async def close(self) -> None:
        pass  # (an attempt in flight is aborted by its own deadline or cancellation)


@register_receiver(WebhookReceiverConfig)
def _build(cfg: WebhookReceiverConfig, ctx: ReceiverContext) -> WebhookReceiver:
    return WebhookReceiver(cfg, ctx.route)
