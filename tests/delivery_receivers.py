"""Real receivers for the alert-delivery tests, each on a free loopback port in a thread of
its own (so a test's event loop, or a daemon in a subprocess, talks to them alike):

* :class:`MllpListener`: an asyncio MLLP server that parses every ORU^R40 with the
  ``hl7`` library, checks its IHE PCD-04 structure and answers an ACK made by that
  library (``AA``; or the codes queued in ``answers``; or nothing at all: ``hang``);
* :class:`WebhookServer`: stdlib ``http.server`` that checks the HMAC signature (over
  ``<timestamp>.<key>.`` and the body, the timestamp within 300 s, as docs/delivery.md
  tells receivers to) and answers 401 to a bad one, 503 while ``failing`` (or to the
  first ``fail_first`` attempts), and the status in ``refuse`` to its keys;
* :class:`SmtpServer`: aiosmtpd with STARTTLS required and a login, its certificate
  self-signed by ``openssl req -x509`` at test time (:func:`self_signed`); 554 to the
  messages whose keys are in ``refuse``.

* :class:`DripServer`: accepts and answers one byte a second, a line that never ends
  (a server that keeps every socket read alive), recording when each connection began
  and when the client closed it.

Each records what it *accepted* in ``accepted`` (with the monotonic time of receipt),
and every attempt in ``attempts``: duplicates and order are asserted on those.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hashlib
import hmac
import http.server
import json
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hl7
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from monitor.broker import free_port

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
PCD04_PROFILE = "IHE_PCD_ACM_001"
PHASES = {"start", "update", "continue", "escalate", "end"}


@dataclass
class Received:
    key: str  #: the idempotency key as the receiver saw it (<id>:<seq>)
    at: float  #: time.monotonic() of receipt
    info: dict[str, Any] = field(default_factory=dict)


class _Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: list[Received] = []
        self.attempts: list[Received] = []
        self.problems: list[str] = []

    def keys(self) -> list[str]:
        with self.lock:
            return [r.key for r in self.accepted]

    def first(self, key: str) -> Received | None:
        with self.lock:
            return next((r for r in self.accepted if r.key == key), None)

    def attempt_count(self) -> int:
        with self.lock:
            return len(self.attempts)


# ------------------------------------------------------------------------- MLLP


def check_pcd04(text: str) -> dict[str, Any]:
    """An ORU^R40 -> its facts; AssertionError naming what is not IHE PCD-04."""
    msg = hl7.parse(text)
    msh = msg.segment("MSH")
    assert str(msh[9]) == "ORU^R40^ORU_R40", f"MSH-9 {msh[9]}"
    assert str(msh[12]) == "2.6", f"MSH-12 {msh[12]}"
    assert str(msh[21]).startswith(PCD04_PROFILE), f"MSH-21 {msh[21]}"
    control = str(msh[10])
    msg.segment("PID")  # (KeyError if missing)
    pv1 = msg.segment("PV1")
    obr = msg.segment("OBR")
    assert str(obr[4]) == "196616^MDC_EVT_ALARM^MDC", f"OBR-4 {obr[4]}"
    alert = str(obr[3][0][0])
    obx = msg.segments("OBX")
    for n, s in enumerate(obx, 1):
        assert str(s[1]) == str(n), f"OBX-1 {s[1]}"
        assert str(s[11]) == "F", f"OBX-11 of {s[3]}: {s[11]!r}"
    kind = obx[0]
    mnemonic = str(kind[3][0][1])
    assert mnemonic.startswith("MDC_EVT_"), f"OBX-3 of the alert type: {kind[3]}"
    flags = str(kind[8]).split("~")
    priority = next(f for f in flags if f in ("PH", "PM", "PL"))
    alert_type = next(f for f in flags if f in ("SP", "ST", "SA"))
    attrs = {str(s[3][0][1]): str(s[5]) for s in obx[1:]}
    phase = attrs["MDC_ATTR_EVENT_PHASE"]
    state = attrs["MDC_ATTR_ALARM_STATE"]
    inactivation = attrs["MDC_ATTR_ALARM_INACTIVATION_STATE"]
    assert phase in PHASES, phase
    assert state in ("active", "inactive"), state
    assert inactivation in ("enabled", "alert-acknowledged"), inactivation
    assert "MDC_ATTR_ALERT_SOURCE" in attrs
    place = pv1[3][0]
    return {
        "control": control,
        "alert": alert,
        "event": mnemonic,
        "text": msg.unescape(str(kind[5])),
        "priority": priority,
        "type": alert_type,
        "phase": phase,
        "state": state,
        "inactivation": inactivation,
        "ward": str(place[0]),
        "bed": str(place[2]),
        "attrs": attrs,
    }


class MllpListener(_Recorder):
    """``answers``: ACK codes for the next messages (then ``AA``); ``hang``: read, never
    answer."""

    def __init__(self, *, hang: bool = False) -> None:
        super().__init__()
        self.hang = hang
        self.answers: list[str] = []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="mllp-listener")
        self._server: asyncio.Server | None = None
        self._thread.start()
        assert self._ready.wait(10), "MLLP listener did not start"

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._conn, "127.0.0.1", self.port)
            self._ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.readuntil(b"\x1c\x0d")
                text = data[data.index(b"\x0b") + 1 : -2].decode("utf-8")
                try:
                    info = check_pcd04(text)
                except Exception as exc:  # a structure problem: recorded, answered AR
                    with self.lock:
                        self.problems.append(f"{exc!r}: {text!r}")
                    info = {"control": "?"}
                    code = "AR"
                else:
                    with self.lock:
                        code = self.answers.pop(0) if self.answers else "AA"
                key = info["control"].replace(".", ":", 1)
                got = Received(key, time.monotonic(), info)
                with self.lock:
                    self.attempts.append(got)
                if self.hang:
                    continue
                ack = hl7.parse(text).create_ack(ack_code=code)
                writer.write(b"\x0b" + str(ack).encode() + b"\r\x1c\x0d")
                await writer.drain()
                if code == "AA":
                    with self.lock:
                        self.accepted.append(got)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


# ---------------------------------------------------------------------- webhook


class WebhookServer(_Recorder):
    def __init__(self, secret: str, *, fail_first: int = 0, port: int = 0) -> None:
        super().__init__()
        self.secret = secret.encode()
        self.fail_first = fail_first
        self.failing = False
        #: idempotency key -> the status this server answers it (a refusal for good)
        self.refuse: dict[str, int] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.handle(self, body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def handle(self, req: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        key = req.headers.get("X-Vitalmon-Event", "")
        ts = req.headers.get("X-Vitalmon-Timestamp", "")
        signed_text = f"{ts}.{key}.".encode() + body
        want = "sha256=" + hmac.new(self.secret, signed_text, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest(req.headers.get("X-Vitalmon-Signature", ""), want)
        fresh = ts.isdigit() and abs(time.time() - int(ts)) <= 300
        signed = signed and fresh
        got = Received(
            key,
            time.monotonic(),
            {"path": req.path, "body": body, "headers": dict(req.headers.items())},
        )
        with self.lock:
            self.attempts.append(got)
            if not signed:
                self.problems.append(f"bad signature for {key}")
            refuse = not signed or self.failing or len(self.attempts) <= self.fail_first
            status = 401 if not signed else self.refuse.get(key, 503)
            refuse = refuse or key in self.refuse
            if req.headers.get("Content-Type") != "application/json":
                self.problems.append(f"content type {req.headers.get('Content-Type')}")
        if refuse:
            req.send_response(status)
            req.end_headers()
            req.wfile.write(b"not now\n" if status == 503 else b"refused: patient P-1\n")
            return
        event = json.loads(body)
        got.info["event"] = event
        if f"{event['id']}:{event['seq']}" != key:
            with self.lock:
                self.problems.append(f"key {key} for event {event['id']}:{event['seq']}")
        with self.lock:
            self.accepted.append(got)
        req.send_response(204)
        req.end_headers()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ------------------------------------------------------------------------- drip


class DripServer:
    """Accepts, reads what comes, and sends one byte every ``every`` seconds (``first``
    then ``x``s: never a whole line) for at most ``limit_s``; ``spans`` holds each
    connection's (accepted, closed by the client) monotonic times (closed None while
    open, or when the limit ended it)."""

    def __init__(self, first: bytes, every: float = 1.0, limit_s: float = 40.0) -> None:
        self.first, self.every, self.limit_s = first, every, limit_s
        self.lock = threading.Lock()
        self.spans: list[list[float | None]] = []
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="drip").start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            span: list[float | None] = [time.monotonic(), None]
            with self.lock:
                self.spans.append(span)
            threading.Thread(target=self._drip, args=(conn, span), daemon=True).start()

    def _drip(self, conn: socket.socket, span: list[float | None]) -> None:
        data = self.first
        end = time.monotonic() + self.limit_s
        with conn:
            while time.monotonic() < end and not self._stop.is_set():
                try:
                    conn.sendall(data[:1])
                    data = data[1:] or b"x"
                    ready, _, _ = select.select([conn], [], [], self.every)
                    if ready and not conn.recv(65536):
                        break
                except OSError:
                    break
            else:
                return
        with self.lock:
            span[1] = time.monotonic()

    def closed(self) -> list[float]:
        """How long each connection the client closed lasted."""
        with self.lock:
            return [s[1] - s[0] for s in self.spans if s[1] is not None and s[0] is not None]

    def close(self) -> None:
        self._stop.set()
        self._server.close()


# ------------------------------------------------------------------------- SMTP


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made by ``openssl req
    -x509``: -> (certificate, key)."""
    crt, key = directory / "smtp.crt", directory / "smtp.key"
    subprocess.run(
        [
            OPENSSL,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(crt),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return crt, key


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        key = str(msg["X-Vitalmon-Event"])
        attached = [p for p in msg.iter_attachments() if p.get_filename() == "alert.json"]
        info = {
            "message_id": str(msg["Message-ID"]),
            "subject": str(msg["Subject"]),
            "to": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "user": session.authenticated and session.auth_data.login.decode(),
            "event": json.loads(attached[0].get_content()) if attached else None,
            "text": msg.get_body(("plain",)).get_content(),
        }
        got = Received(key, time.monotonic(), info)
        with self.server.lock:
            self.server.attempts.append(got)
            if key in self.server.refuse:
                return "554 5.6.0 message refused (patient P-1)"
            self.server.accepted.append(got)
        return "250 OK"


class SmtpServer(_Recorder):
    """aiosmtpd: STARTTLS required (``tls``), a login required (``users``)."""

    def __init__(self, cert: tuple[Path, Path] | None, users: dict[str, str] | None = None) -> None:
        super().__init__()
        self.port = free_port()
        #: idempotency keys whose message this server refuses for good (554)
        self.refuse: set[str] = set()
        kwargs: dict[str, Any] = {}
        if cert is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
            kwargs.update(tls_context=ctx, require_starttls=True)
        if users:

            def check(_s: Any, _e: Any, _v: Any, _m: str, d: Any) -> AuthResult:
                ok = isinstance(d, LoginPassword) and users.get(d.login.decode()) == (
                    d.password.decode()
                )
                return AuthResult(success=ok, auth_data=d)

            kwargs.update(authenticator=check, auth_required=True)
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.controller.stop()
