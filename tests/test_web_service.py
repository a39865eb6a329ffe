"""``vitalmon web`` as a service: systemd notifications, HTTPS with a real certificate,
clear refusals at start. The broker need not be up for any of this."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from webtools import add_users

from monitor.broker import free_port


def _config(tmp: Path, web: str) -> Path:
    users = tmp / "users.yaml"
    if not users.exists():
        add_users(users, {"kim": ("nurse", "kim-password-1")})
    cfg = tmp / "vitalmon.yaml"
    cfg.write_text(
        f"mqtt: {{host: 127.0.0.1, port: {free_port()}, reconnect_max_s: 1}}\n"
        f"store: {{type: sqlite, path: {tmp / 'vitals.db'}}}\n"
        f"web:\n  users_file: {users}\n{web}"
    )
    return cfg


def test_it_notifies_systemd_when_it_serves_and_when_it_stops(tmp_path: Path) -> None:
    port = free_port()
    cfg = _config(tmp_path, f"  listen: 127.0.0.1:{port}\n")
    sock_path = str(tmp_path / "notify.sock")
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(sock_path)
    sd.settimeout(15)
    env = {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "2000000", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "web", "-c", str(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        got = ""
        while "READY=1" not in got:  # (watchdog pings may come first: the live loop runs)
            got = sd.recv(4096).decode()
        assert f"127.0.0.1:{port}" in got
        # it serves when it says so: the login page answers at once
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5) as r:
            assert r.status == 200
        assert sd.recv(4096).decode() == "WATCHDOG=1"
        proc.send_signal(signal.SIGTERM)
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("STOPPING=1" in m for m in seen):
            seen.append(sd.recv(4096).decode())
        assert any("STOPPING=1" in m for m in seen), seen
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sd.close()


def test_it_serves_https_with_secure_cookies_and_hsts(tmp_path: Path) -> None:
    cert, key = tmp_path / "web.crt", tmp_path / "web.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = free_port()
    cfg = _config(
        tmp_path,
        f"  listen: 127.0.0.1:{port}\n  tls: {{cert_file: {cert}, key_file: {key}}}\n",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "web", "-c", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    ctx = ssl.create_default_context(cafile=str(cert))

    def get() -> tuple[int, Any] | None:
        try:
            with urllib.request.urlopen(
                f"https://127.0.0.1:{port}/login", timeout=5, context=ctx
            ) as r:
                return r.status, r.headers  # (case-insensitive)
        except OSError:
            return None

    try:
        status, headers = wait_for(get, 15, "https")
        assert status == 200
        assert headers["Strict-Transport-Security"].startswith("max-age=")
        cookie = headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        # plain HTTP on the TLS port gets nowhere
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5)
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_malformed_users_file_or_a_busy_port_stops_it_at_start(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        cfg = _config(tmp_path, f"  listen: 127.0.0.1:{port}\n")
        r = subprocess.run(
            [sys.executable, "-m", "monitor", "web", "-c", str(cfg)],
            capture_output=True,
            timeout=20,
            check=False,
        )
        assert r.returncode == 1 and b"cannot listen on" in r.stderr
    finally:
        busy.close()
    (tmp_path / "users.yaml").write_text("users: {kim: {role: admin, password: x}}\n")
    r = subprocess.run(
        [sys.executable, "-m", "monitor", "web", "-c", str(cfg)],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert r.returncode == 1 and b"users.kim.role" in r.stderr


def test_a_locked_store_does_not_stall_the_pages(tmp_path: Path) -> None:
    """Defect: the station read the store (audit, admissions) in its event loop, so a
    store locked by another process (SQLite's busy wait: up to 10 s) froze every page,
    login and the live stream. Now the reads run in the store's own thread."""
    import sqlite3

    from webtools import WebProc

    from monitor.sinks.sqlite.schema import connect

    port = free_port()
    cfg = _config(tmp_path, f"  listen: 127.0.0.1:{port}\n  push_interval_s: 0.1\n")
    connect(str(tmp_path / "vitals.db")).close()  # (the daemon's schema)
    lock = sqlite3.connect(str(tmp_path / "vitals.db"), isolation_level=None)
    lock.execute("PRAGMA locking_mode=EXCLUSIVE")
    lock.execute("BEGIN EXCLUSIVE")
    lock.execute("INSERT INTO meta VALUES ('held', 1)")
    web = WebProc(cfg, tmp_path / "web.log")
    try:
        web.start()
        worst = 0.0
        deadline = time.monotonic() + 4  # (the first store read waits its 10 s on the lock)
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            with urllib.request.urlopen(web.url + "login", timeout=15) as r:
                assert r.status == 200
            worst = max(worst, time.monotonic() - t0)
        assert worst < 1.0, worst
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        web.kill()
