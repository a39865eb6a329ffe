"""monitor.notify: the sd_notify protocol against real AF_UNIX datagram sockets."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.notify import Notifier


def _bind(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = _bind(path)
    yield sock, path
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    name = f"vitalmon-test-{uuid.uuid4().hex}"
    sock = _bind("\0" + name)
    yield sock, "@" + name
    sock.close()


def _drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``sock`` (they were sent before this is called)."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2)
    return out


@pytest.mark.parametrize("which", ["path_socket", "abstract_socket"])
def test_each_method_sends_exactly_its_datagram(which: str, request: pytest.FixtureRequest):
    sock, notify_socket = request.getfixturevalue(which)
    n = Notifier({"NOTIFY_SOCKET": notify_socket})
    assert n.enabled
    assert n.ready("connected, subscribed, store open")
    assert sock.recv(4096) == b"READY=1\nSTATUS=connected, subscribed, store open"
    assert n.ready()
    assert sock.recv(4096) == b"READY=1"
    assert n.status("reloading\nrules")  # one line: a newline would forge a field
    assert sock.recv(4096) == b"STATUS=reloading rules"
    assert n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert n.extend_timeout(2.5)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=2500000"

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    m = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", sock.recv(4096))
    assert m is not None
    assert before <= int(m.group(1)) <= after

    assert _drain(sock) == []  # nothing more than one datagram per call
    n.close()


def test_environment_is_unset_by_default(path_socket):
    _, notify_socket = path_socket
    env = {
        "NOTIFY_SOCKET": notify_socket,
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "1",
        "PATH": "/usr/bin",
    }
    n = Notifier(env)
    assert env == {"PATH": "/usr/bin"}  # children do not inherit the protocol
    assert n.enabled

    kept = {"NOTIFY_SOCKET": notify_socket, "WATCHDOG_USEC": "30000000"}
    Notifier(kept, unset_environment=False)
    assert kept == {"NOTIFY_SOCKET": notify_socket, "WATCHDOG_USEC": "30000000"}


def test_defaults_to_os_environ(monkeypatch, path_socket):
    sock, notify_socket = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket)
    n = Notifier()
    assert "NOTIFY_SOCKET" not in os.environ
    assert n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),  # no WATCHDOG_PID: it is ours
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "1500", "WATCHDOG_PID": str(os.getpid())}, 0.0015),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None):
    n = Notifier(env)
    assert n.watchdog_interval() == expected
    assert env == {}  # read once, then unset: still answered from what was read
    assert n.watchdog_interval() == expected


def test_without_notify_socket_everything_is_a_noop(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for n in (Notifier({}), Notifier({"NOTIFY_SOCKET": ""}), Notifier()):
        assert not n.enabled
        assert n.ready("x") is False
        assert n.status("x") is False
        assert n.watchdog() is False
        assert n.reloading() is False
        assert n.stopping() is False
        assert n.extend_timeout(1) is False
        assert n._sock is None  # not even a socket was made
        n.close()


def test_unsupported_address_is_a_logged_noop(caplog):
    with caplog.at_level(logging.WARNING, logger="vitalmon.notify"):
        n = Notifier({"NOTIFY_SOCKET": "relative/path"})
    assert not n.enabled
    assert n.ready() is False
    assert "not a path or @name" in caplog.text


def test_a_socket_that_disappears_never_raises_and_logs_once(tmp_path: Path, caplog):
    path = str(tmp_path / "notify")
    sock = _bind(path)
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.ready()
    assert sock.recv(4096) == b"READY=1"
    sock.close()
    with caplog.at_level(logging.DEBUG, logger="vitalmon.notify"):
        assert n.watchdog() is False  # the path is still there, nobody listens
        os.unlink(path)
        assert n.watchdog() is False  # and now not even the path
        assert n.stopping() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert path in warnings[0].getMessage()


def test_never_raises_for_a_vanished_abstract_socket():
    n = Notifier({"NOTIFY_SOCKET": f"@vitalmon-test-gone-{uuid.uuid4().hex}"})
    assert n.watchdog() is False
    assert n.reloading() is False


def test_a_full_socket_does_not_block(tmp_path: Path):
    """Nobody reads: the datagram queue fills, sends fail at once instead of waiting."""
    path = str(tmp_path / "notify")
    sock = _bind(path)
    try:
        n = Notifier({"NOTIFY_SOCKET": path})
        start = time.monotonic()
        results = [n.status("x" * 1000) for _ in range(2000)]
        assert time.monotonic() - start < 5
        assert results[0] is True
        assert False in results  # the queue filled and the send did not block
    finally:
        sock.close()
