"""Receiver ``smtp``: an e-mail per alert event, for low-urgency routes (a ward manager's
mailbox, a biomed team's technical alarms).

The subject says it at a glance, ``[vitalmon HIGH] 3west/6 SpO2 low 84 (active)``; the
plain-text body gives the facts, and the alert JSON goes with it as ``alert.json``. The
``Message-ID`` is made from the idempotency key (``<id>.<seq>.vitalmon@<from's
domain>``, and ``X-Vitalmon-Event: <id>:<seq>``): a mail system, or a person's filter,
can drop the duplicate of a re-sent event.

The connection: STARTTLS before anything else (``starttls: true``, the default; a server
that does not offer it is a failure, never a fallback to plain text), the server's
certificate verified (``ca_file``, else the system's CAs), then the login if configured.
Accepted when the server accepted the message for at least one recipient (recipients it
refused are logged). A 5xx answer to the message itself (after DATA: its size, its
content) raises :class:`~monitor.sinks.delivery.Rejected`, and the deliverer gives the
event up after ``reject_after`` attempts; anything else raises and the deliverer
retries: a 4xx, and the refusals that are the same for every event (the login, the
sender, every recipient: the route is wrong, not the event). Each event is one
connection; ``timeout_s`` bounds the whole attempt (:mod:`.attempt`: the name
resolution, the connection, STARTTLS, the login and the message; a server that drips
its answers is cut off at the deadline), in a daemon thread that no stop waits for.
"""

from __future__ import annotations

import json
import logging
import math
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate

from monitor.config import SmtpReceiverConfig, read_secret
from monitor.model import LABELS, AlertEvent, fmt_limit, fmt_reading, iso
from monitor.sinks.delivery import ReceiverContext, Rejected, register_receiver
from monitor.sinks.delivery.attempt import Attempt, run_attempt

log = logging.getLogger("vitalmon.sink.delivery")


class MessageRefused(Rejected):
    """The server refused the message itself with a 5xx (after DATA)."""


def _line(text: str) -> str:
    """One header line: no line breaks (a header cannot be injected)."""
    return " ".join(text.split())


def subject(e: AlertEvent) -> str:
    """``[vitalmon HIGH] 3west/6 SpO2 low 84 (active)``."""
    what = e.message
    label = LABELS.get(e.vital)
    if label and e.rule.startswith(f"{e.vital}."):
        what = f"{label} {e.rule[len(e.vital) + 1 :].replace('_', ' ').replace('.', ' ')}"
        if math.isfinite(e.value):
            what += f" {fmt_reading(e.vital, e.value)}"
    state = str(e.state)
    if e.extra.get("escalated"):
        state += ", escalated"
    return _line(f"[vitalmon {str(e.priority).upper()}] {e.ward}/{e.bed} {what} ({state})")[:200]


def body(e: AlertEvent) -> str:
    """The facts, one a line."""
    rows = [
        ("Alert", f"{e.rule} ({e.kind}), priority {e.priority}, {e.state}"),
        ("Bed", f"{e.ward}/{e.bed}, device {e.device}"),
    ]
    if e.patient:
        rows.append(("Patient", e.patient))
    if math.isfinite(e.value):
        value = fmt_reading(e.vital, e.value)
        if math.isfinite(e.limit):
            value += f" (limit {fmt_limit(e.vital, e.limit)})"
        rows.append(("Value", value))
    rows += [("Started", iso(e.started_at)), ("This change", iso(e.at))]
    if e.extra.get("ack_by"):
        rows.append(("Acknowledged by", str(e.extra["ack_by"])))
    if e.extra.get("escalated"):
        rows.append(("Escalated", "yes"))
    rows.append(("Alert id", f"{e.id}, event {e.seq}"))
    width = max(len(k) for k, _ in rows) + 2
    lines = [e.message, "", *(f"{k:<{width}}{v}" for k, v in rows)]
    return "\n".join(lines) + "\n\nThe alert event as JSON is attached (alert.json).\n"


def message(e: AlertEvent, key: str, sender: str, to: list[str]) -> EmailMessage:
    domain = sender.rsplit("@", 1)[1]
    msg = EmailMessage()
    msg["Subject"] = subject(e)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = f"<{key.replace(':', '.')}.vitalmon@{domain}>"
    msg["X-Vitalmon-Event"] = key
    msg.set_content(body(e))
    payload = json.dumps(e.to_json(), indent=2, ensure_ascii=False).encode()
    msg.add_attachment(payload, maintype="application", subtype="json", filename="alert.json")
    return msg


class _SMTP(smtplib.SMTP):
    """smtplib's client, connected within an attempt's deadline."""

    def __init__(self, attempt: Attempt, host: str, port: int, helo: str, timeout: float) -> None:
        self.attempt = attempt
        super().__init__(host, port, local_hostname=helo, timeout=timeout)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return self.attempt.connect(host, port, timeout)


class SmtpReceiver:
    def __init__(self, cfg: SmtpReceiverConfig, route: str) -> None:
        self.cfg = cfg
        self.route = route
        self.timeout_s = cfg.timeout_s
        self._password = read_secret(cfg.password_file) if cfg.password_file else ""
        self._ssl = ssl.create_default_context(cafile=cfg.ca_file) if cfg.starttls else None
        self._thread = f"vitalmon-route-{route}"
        self._helo = socket.gethostname() or "vitalmon"

    async def send(self, event: AlertEvent, key: str) -> None:
        msg = message(event, key, self.cfg.from_, self.cfg.to)
        await run_attempt(lambda a: self._send(a, msg), self.timeout_s, self._thread)

    def _send(self, a: Attempt, msg: EmailMessage) -> None:
        # (local_hostname given: smtplib's default asks DNS, which may hang)
        with _SMTP(a, self.cfg.host, self.cfg.port, self._helo, self.cfg.timeout_s) as smtp:
            smtp.ehlo()
            if self._ssl is not None:
                # (SMTPNotSupportedError if not offered; the handshake within the deadline)
                smtp.starttls(context=a.context(self._ssl))
                smtp.ehlo()
            if self.cfg.username is not None:
                smtp.login(self.cfg.username, self._password)
            try:
                refused = smtp.send_message(msg)
            except smtplib.SMTPDataError as exc:
                if not 500 <= exc.smtp_code < 600:
                    raise
                said = exc.smtp_error
                if isinstance(said, bytes):
                    said = said.decode("utf-8", "replace")
                raise MessageRefused(f"SMTP {exc.smtp_code} {_line(said)[:120]}") from None
        if refused:
            log.warning(
                "route %s: the server refused recipient(s) %s",
                self.route,
                ", ".join(sorted(refused)),
            )

    async def close(self) -> None:
        pass  # (an attempt in flight is aborted by its own deadline or cancellation)


@register_receiver(SmtpReceiverConfig)
def _build(cfg: SmtpReceiverConfig, ctx: ReceiverContext) -> SmtpReceiver:
    return SmtpReceiver(cfg, ctx.route)
