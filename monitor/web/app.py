"""The web station's ASGI app (Starlette): pages, the live stream, the JSON API.

Routes (every one but ``/login``, ``/healthz`` and ``/static`` needs a session; a page
without one goes to ``/login``, an API call gets 401):

=========================  =====================================================
``GET /``                  the ward: tiles, the alarm list, the audit
``GET /bed/{ward}/{bed}``  a bed: trend plots, alert history, admission
``GET /api/events``        Server-Sent Events: a snapshot, then what changed
``GET /api/bed/...``       the bed page's data (``?hours=``)
``GET /api/audit``         the latest audit rows
``POST /api/ack``          ``{"id"}``                                    nurse, charge
``POST /api/pause``        ``{"ward", "bed", "seconds"}``                nurse, charge
``POST /api/admit``        ``{"ward", "bed", "patient", "profile"?}``    charge
``POST /api/discharge``    ``{"ward", "bed"}``                          charge
``POST /login, /logout``   forms
=========================  =====================================================

Every POST needs the session's CSRF token (``X-CSRF-Token`` or form field ``csrf``):
403 without it. A role that may not act gets 403. Commands go to the daemon over MQTT
as the logged-in user (:meth:`monitor.web.live.Live.command`): 200 with the daemon's
answer, 409 with its refusal, 504 if it does not answer. Responses carry a strict
Content-Security-Policy (no inline script, nothing from elsewhere).
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from monitor import __version__
from monitor.config import Config
from monitor.sinks.sqlite.schema import connect
from monitor.web.data import bed_data
from monitor.web.live import TOPICS, Live, Refused
from monitor.web.sessions import COOKIE, LOGIN_COOKIE, Session, Sessions, Throttle, same
from monitor.web.users import User, Users

log = logging.getLogger("vitalmon.web")

PACKAGE = resources.files("monitor.web")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; media-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
MAX_BODY = 16 * 1024
#: How often an open live stream re-checks its session, and sends a keep-alive.
SESSION_CHECK_S = 5.0
KEEPALIVE_S = 15.0
NAME_MAX = 128


def _template(name: str) -> Template:
    return Template((PACKAGE / "templates" / name).read_text(encoding="utf-8"))


class Station:
    """The app's state: config, users, sessions, the live ward, the store."""

    def __init__(self, cfg: Config, users: Users, live: Live, store_path: str | None) -> None:
        self.cfg = cfg
        self.users = users
        self.live = live
        self.store_path = store_path
        self.sessions = Sessions(cfg.web.session_max_s, cfg.web.session_idle_s)
        self.throttle = Throttle(cfg.web.max_failed_logins, cfg.web.lockout_s)
        self.pages = {n: _template(n) for n in ("login.html", "ward.html", "bed.html")}
        self.verifying = asyncio.Semaphore(2)

    # -------------------------------------------------------------- sessions

    def session(self, request: Request, touch: bool = True) -> tuple[Session, User] | None:
        return self.session_of(request.cookies.get(COOKIE), touch)

    def session_of(self, token: str | None, touch: bool = True) -> tuple[Session, User] | None:
        """The session of a cookie's token and its user as the users file says now."""
        s = self.sessions.get(token, touch=touch)
        if s is None:
            return None
        user = self.users.get(s.user)
        if user is None:  # removed from the users file: the session ends
            self.sessions.end_user(s.user)
            return None
        return s, user

    def _cookie(self, resp: Response, name: str, value: str, max_age: int | None) -> None:
        resp.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/",
            httponly=True,
            samesite="strict",
            secure=self.cfg.web.cookie_secure,
        )

    def page(self, name: str, **fields: Any) -> HTMLResponse:
        escaped = {k: html.escape(str(v), quote=True) for k, v in fields.items()}
        return HTMLResponse(self.pages[name].safe_substitute(version=__version__, **escaped))

    # ----------------------------------------------------------------- pages

    async def login_form(self, request: Request, error: str = "", status: int = 200) -> Response:
        token = request.cookies.get(LOGIN_COOKIE) or _token()
        resp = self.page("login.html", csrf=token, error=error)
        resp.status_code = status
        self._cookie(resp, LOGIN_COOKIE, token, 3600)
        return resp

    async def login(self, request: Request) -> Response:
        try:
            form = await _form(request)
        except TooLarge:
            return PlainTextResponse("request too large", status_code=413)
        if not same(str(form.get("csrf", "")), request.cookies.get(LOGIN_COOKIE)):
            return await self.login_form(request, "The form expired: please log in again.", 403)
        name = str(form.get("username", "")).strip()[:NAME_MAX]
        password = str(form.get("password", ""))[:1024]
        addr = request.client.host if request.client else "?"
        keys = [f"user:{name}", f"addr:{addr}"]
        wait = self.throttle.attempt(keys)
        if wait > 0:
            log.warning("login refused (locked for %.0f s more) from %s", wait, addr)
            return await self.login_form(
                request, f"Too many failed logins: try again in {wait:.0f} s.", 429
            )
        async with self.verifying:  # (Argon2 costs 64 MiB and ~50 ms: a few at a time)
            user = await asyncio.to_thread(self.users.verify, name, password)
        if user is None:
            log.warning("failed login from %s", addr)  # (never the name tried or password)
            return await self.login_form(request, "Wrong user name or password.", 401)
        self.throttle.succeeded(keys)
        token, _ = self.sessions.create(user.name)
        log.info("user %s (%s) logged in from %s", user.name, user.role, addr)
        resp = RedirectResponse("/", status_code=303)
        self._cookie(resp, COOKIE, token, int(self.cfg.web.session_max_s))
        resp.delete_cookie(LOGIN_COOKIE, path="/")
        return resp

    async def logout(self, request: Request) -> Response:
        got = self.session(request, touch=False)
        try:
            form = await _form(request)
        except TooLarge:
            return PlainTextResponse("request too large", status_code=413)
        if got is not None and not same(str(form.get("csrf", "")), got[0].csrf):
            return PlainTextResponse("missing or wrong CSRF token", status_code=403)
        if got is not None:
            log.info("user %s logged out", got[1].name)
        self.sessions.end(request.cookies.get(COOKIE))
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    async def ward_page(self, request: Request) -> Response:
        got = self.session(request)
        if got is None:
            return RedirectResponse("/login", status_code=303)
        s, user = got
        return self.page("ward.html", csrf=s.csrf, user=user.name, role=user.role)

    async def bed_page(self, request: Request) -> Response:
        got = self.session(request)
        if got is None:
            return RedirectResponse("/login", status_code=303)
        s, user = got
        ward, bed = request.path_params["ward"], request.path_params["bed"]
        return self.page(
            "bed.html",
            csrf=s.csrf,
            user=user.name,
            role=user.role,
            ward=ward,
            bed=bed,
            hours=f"{self.cfg.web.plot_hours:g}",
        )

    # ------------------------------------------------------------------ API

    async def events(self, request: Request) -> Response:
        got = self.session(request)
        if got is None:
            return _error(401, "log in first")
        token = request.cookies.get(COOKIE)
        queue = self.live.subscribe()

        async def stream() -> AsyncIterator[str]:
            # The session is checked (and kept alive: an open page is a display) every
            # SESSION_CHECK_S by the clock, however busy the ward: a logout, a removed
            # user or the end of the session's span ends the stream.
            next_check = time.monotonic() + SESSION_CHECK_S
            try:
                yield "retry: 2000\n\n"
                while True:
                    try:
                        msg = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                    except TimeoutError:
                        msg = ""
                    if time.monotonic() >= next_check:
                        next_check = time.monotonic() + SESSION_CHECK_S
                        if self.session_of(token) is None:
                            yield "event: logout\ndata: {}\n\n"
                            return
                    if msg is None:
                        return
                    yield f"data: {msg}\n\n" if msg else ": keep-alive\n\n"
            finally:
                self.live.unsubscribe(queue)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def bed_api(self, request: Request) -> Response:
        if self.session(request) is None:
            return _error(401, "log in first")
        ward, bed = request.path_params["ward"], request.path_params["bed"]
        try:
            hours = float(request.query_params.get("hours", self.cfg.web.plot_hours))
        except ValueError:
            return _error(400, "hours is a number")
        hours = min(max(hours, 0.05), self.cfg.web.max_hours)
        if not self.store_path:
            return _error(503, "no sqlite store configured")
        until = time.time() + 60
        try:
            doc = await asyncio.to_thread(self._bed, ward, bed, until - hours * 3600 - 60, until)
        except (sqlite3.Error, OSError) as exc:
            return _error(503, f"store: {exc}")
        except ValueError as exc:
            return _error(400, str(exc))
        return _json(doc)

    def _bed(self, ward: str, bed: str, since: float, until: float) -> dict[str, Any]:
        assert self.store_path
        conn = connect(self.store_path, readonly=True)
        try:
            return bed_data(conn, self.cfg, ward, bed, since, until)
        finally:
            conn.close()

    async def audit_api(self, request: Request) -> Response:
        if self.session(request) is None:
            return _error(401, "log in first")
        return _json({"audit": list(self.live.audit)})

    async def act(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in TOPICS:
            return _error(404, f"no action {action!r}")
        got = self.session(request)
        if got is None:
            return _error(401, "log in first")
        s, user = got
        if not same(request.headers.get("x-csrf-token"), s.csrf):
            log.warning("%s by %s refused: no valid CSRF token", action, user.name)
            return _error(403, "missing or wrong CSRF token")
        if not user.may(action):
            log.warning("%s by %s refused: role %s", action, user.name, user.role)
            return _error(403, f"a {user.role} may not {action}")
        try:
            raw = await _body(request)
        except TooLarge:
            return _error(413, "request too large")
        try:
            body = _command_body(action, json.loads(raw or b"{}"), self.cfg.alerts.pause_max_s)
        except (ValueError, RecursionError) as exc:
            return _error(400, str(exc))
        try:
            answer = await self.live.command(action, body, user.name)
        except Refused as exc:
            return _error(409, str(exc))
        except TimeoutError:
            return _error(
                504,
                "the daemon did not answer (is it running?); the command expired at the "
                "broker: not applied if the daemon was down",
            )
        except ConnectionError as exc:
            return _error(503, f"{exc}: not sent")
        log.info("%s by %s: %s", action, user.name, _what(action, body))
        return _json({"ok": True, "answer": answer})

    async def healthz(self, request: Request) -> Response:
        ok = self.live.client.connected.is_set()
        return PlainTextResponse(
            "ok" if ok else "mqtt not connected", status_code=200 if ok else 503
        )


class TooLarge(Exception):
    pass


async def _body(request: Request) -> bytes:
    """The request's body, at most MAX_BODY bytes (TooLarge: more, told by its
    Content-Length or found while reading: never buffered whole)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise TooLarge
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise TooLarge
    return bytes(raw)


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form (the login and logout forms: no multipart, no extra library);
    TooLarge beyond MAX_BODY."""
    raw = await _body(request)
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return {}
    return dict(pairs)


def _what(action: str, body: dict[str, Any]) -> str:
    if action == "ack":
        return f"alert {body['id']}"
    return f"bed {body['ward']}/{body['bed']}"


def _str(doc: dict[str, Any], key: str, required: bool = True) -> str | None:
    v = doc.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v.strip() or len(v) > NAME_MAX:
        raise ValueError(f"{key}: a non-empty text of at most {NAME_MAX} characters")
    return v.strip()


def _command_body(action: str, doc: Any, pause_max_s: float) -> dict[str, Any]:
    """The request's JSON -> the command's body (without ``by``); ValueError."""
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object")
    if action == "ack":
        return {"id": _str(doc, "id")}
    body: dict[str, Any] = {"ward": _str(doc, "ward"), "bed": _str(doc, "bed")}
    if action == "pause":
        seconds = doc.get("seconds", pause_max_s)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValueError("seconds: a number")
        if not 0 < seconds <= pause_max_s:
            raise ValueError(f"seconds: more than 0, at most {pause_max_s:g}")
        body["seconds"] = seconds
    elif action == "admit":
        body["patient"] = _str(doc, "patient")
        profile = _str(doc, "profile", required=False)
        if profile:
            body["profile"] = profile
    return body


def _token() -> str:
    import secrets

    return secrets.token_urlsafe(32)


def _json(doc: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str),
        status_code=status,
        media_type="application/json",
    )


def _error(status: int, why: str) -> Response:
    return JSONResponse({"error": why}, status_code=status)


class _Headers:
    """Security headers on every response (a plain ASGI middleware: the live stream
    passes through untouched)."""

    def __init__(self, app: ASGIApp, https: bool) -> None:
        self.app = app
        self.https = https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                h = MutableHeaders(scope=message)
                for k, v in (
                    ("content-security-policy", CSP),
                    ("x-content-type-options", "nosniff"),
                    ("x-frame-options", "DENY"),
                    ("referrer-policy", "no-referrer"),
                ):
                    h.setdefault(k, v)
                if not static:
                    h.setdefault("cache-control", "no-store")
                if self.https:
                    h.setdefault("strict-transport-security", "max-age=31536000")
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_app(station: Station) -> Starlette:
    static = Path(str(PACKAGE / "static"))
    routes = [
        Route("/", station.ward_page),
        Route("/login", station.login_form, methods=["GET"]),
        Route("/login", station.login, methods=["POST"]),
        Route("/logout", station.logout, methods=["POST"]),
        Route("/bed/{ward}/{bed}", station.bed_page),
        Route("/api/events", station.events),
        Route("/api/bed/{ward}/{bed}", station.bed_api),
        Route("/api/audit", station.audit_api),
        Route("/api/{action:str}", station.act, methods=["POST"]),
        Route("/healthz", station.healthz),
        Mount("/static", StaticFiles(directory=static), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_Headers, https=station.cfg.web.https)])
    app.state.station = station
    return app
