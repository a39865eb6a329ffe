"""Helpers of the web station's tests: the station as a real subprocess (``vitalmon web``),
a real headless Chromium through Debian's chromium-driver, and an HTTP session that logs
in the way a browser does (login form, cookies, CSRF token)."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def add_users(path: Path, users: dict[str, tuple[str, str]]) -> None:
    """name -> (role, password), through the real command."""
    for name, (role, password) in users.items():
        subprocess.run(
            [sys.executable, "-m", "monitor", "user", "add", name, "--role", role,
             "--users-file", str(path), "--password-stdin"],
            input=password.encode() + b"\n",
            check=True,
            capture_output=True,
        )  # fmt: skip


@dataclass
class WebProc:
    config: Path
    logfile: Path
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    def start(self) -> None:
        offset = len(self.log())
        log = self.logfile.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "web", "-c", str(self.config)],
            stdout=log,
            stderr=log,
        )

        def up() -> bool:
            m = re.search(r"web station on (\S+)", self.log()[offset:])
            if m:
                self.url = m.group(1)
            return bool(m) or self.proc is None or self.proc.poll() is not None

        wait_for(up, 15, "web station listening")
        assert self.proc.poll() is None, self.log()

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Http:
    """A cookie-keeping HTTP client (urllib), logged in through the login form."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )
        self.csrf = ""

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(
            self.base.rstrip("/") + path, data=body, method=method, headers=headers or {}
        )
        try:
            with self.opener.open(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def login(self, name: str, password: str) -> int:
        _, _, page = self.request("GET", "/login")
        token = re.search(rb'name="csrf" value="([^"]+)"', page)
        assert token, page
        form = urllib.parse.urlencode(
            {"csrf": token.group(1).decode(), "username": name, "password": password}
        ).encode()
        status, _, _ = self.request(
            "POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"}
        )
        if status == 303:
            _, _, ward = self.request("GET", "/")
            m = re.search(rb'name="csrf-token" content="([^"]+)"', ward)
            assert m, ward
            self.csrf = m.group(1).decode()
        return status

    def post(self, action: str, doc: dict[str, Any], csrf: str | None = "") -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        token = self.csrf if csrf == "" else csrf
        if token is not None:
            headers["X-CSRF-Token"] = token
        status, _, body = self.request("POST", f"/api/{action}", json.dumps(doc).encode(), headers)
        return status, json.loads(body or b"null")


class EventStream:
    """``GET /api/events`` read as a browser's EventSource does, in a thread: every data
    message (JSON) and every named event, as they come."""

    def __init__(self, session: Http) -> None:
        import http.client
        import threading

        url = urllib.parse.urlsplit(session.base)
        self.conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
        cookie = "; ".join(f"{c.name}={c.value}" for c in session.jar)
        self.conn.request("GET", "/api/events", headers={"Cookie": cookie})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.messages: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("data: ") and line[6:] != "{}":
                    self.messages.append(json.loads(line[6:]))
                elif line.startswith("event: "):
                    self.events.append(line[7:])
        except (OSError, ValueError, AttributeError):  # (closed under the reader)
            pass
        self.closed = True

    def bed(self, ward: str, bed: str) -> dict[str, Any] | None:
        """The bed as the latest message that had it says."""
        for m in reversed(self.messages):
            for b in m.get("beds", []):
                if (b["ward"], b["bed"]) == (ward, bed):
                    return dict(b)
        return None

    def close(self) -> None:
        self.conn.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def chrome(width: int = 1280, height: int = 800) -> Any:
    """A headless Chromium (Debian's) driven by its chromium-driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # (root in CI containers)
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-gpu",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    env = {**os.environ, "SE_AVOID_STATS": "true"}
    return webdriver.Chrome(service=Service(CHROMEDRIVER, env=env), options=opts)
