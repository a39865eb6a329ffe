"""Shared fixtures: a real mosquitto on a free loopback port, a daemon config, MQTT clients.

Nothing here mocks I/O: the broker is Debian's mosquitto, the store a real SQLite file.
Waiting is always on an event or a poll with a deadline, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import settings
from paho.mqtt.enums import CallbackAPIVersion

from monitor import broker as mosquitto
from monitor.broker import free_port, mosquitto_password

#: No example database: a run never depends on what an earlier run saved (.hypothesis/).
settings.register_profile("vitalmon", database=None)
settings.load_profile("vitalmon")

MOSQUITTO = mosquitto.find_mosquitto() or "/usr/sbin/mosquitto"
#: The example broker configuration shipped in config/ (tests run it: SecureBroker).
SHIPPED_MOSQUITTO = Path(__file__).resolve().parent.parent / "config" / "mosquitto"

#: The real VictoriaMetrics fixture (`victoria`) lives in tests/tsdb.py.
pytest_plugins = ["tsdb"]


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


async def until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """:func:`wait_for` inside the event loop (what is under test runs in it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Broker:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def config_text(self) -> str:
        # sessions kept as config/mosquitto/vitalmon.conf keeps them: on disk within ~2 s
        # (autosave_interval 1; mosquitto's default of 1800 s loses them to a kill -9)
        return (
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "set_tcp_nodelay true\n"
            "max_queued_messages 100000\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            "autosave_on_changes false\n"
            "user root\n"
        )

    def start(self) -> None:
        log = self.workdir / "mosquitto.log"
        self.proc = mosquitto.spawn(self.conf, self.config_text(), log, MOSQUITTO)
        mosquitto.wait_accepting(self.proc, self.port, 10, log)

    def stop(self) -> None:
        mosquitto.stop(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """``kill -9``: no save of its database on the way out."""
        mosquitto.kill(self.proc)
        self.proc = None


@dataclass
class SecureBroker(Broker):
    """mosquitto running ``config/mosquitto/vitalmon.conf`` as shipped (logins, the ACL
    ``config/mosquitto/acl``, persistence), with only what is site-specific rewritten:
    the listener (``port`` on loopback), the files (in ``workdir``), ``user root``.
    ``users``: login -> password."""

    users: dict[str, str] = field(default_factory=dict)

    def config_text(self) -> str:
        acl = self.workdir / "acl"
        acl.write_text((SHIPPED_MOSQUITTO / "acl").read_text())
        passwd = self.workdir / "passwd"
        passwd.write_text("".join(mosquitto_password(u, p) for u, p in self.users.items()))
        site = {
            "listener": f"{self.port} 127.0.0.1",
            "password_file": str(passwd),
            "acl_file": str(acl),
            "persistence_location": f"{self.workdir}/",
        }
        lines = []
        for line in (SHIPPED_MOSQUITTO / "vitalmon.conf").read_text().splitlines():
            key = line.split(" ", 1)[0]
            lines.append(f"{key} {site[key]}" if key in site else line)
        return "\n".join([*lines, "user root", ""])


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh mosquitto per test (persistent sessions must not leak between tests)."""
    if not os.path.exists(MOSQUITTO):
        pytest.fail("mosquitto is not installed: run scripts/test (it installs it)")
    b = Broker(free_port(), tmp_path / "broker")
    b.workdir.mkdir()
    b.start()
    yield b
    b.stop()


@dataclass
class Subscriber:
    """A plain paho client recording what it receives, for assertions."""

    port: int
    topic: str
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{id(self)}")

        def on_connect(c: paho.Client, *_: Any) -> None:
            c.subscribe(self.topic, qos=1)

        def on_subscribe(*_: Any) -> None:
            ready.set()

        def on_message(_c: paho.Client, _u: Any, m: paho.MQTTMessage) -> None:
            with self._lock:
                self.messages.append((m.topic, bytes(m.payload)))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert ready.wait(10), "subscriber did not subscribe"

    def json(self, topic_prefix: str = "") -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p in self.messages if t.startswith(topic_prefix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscribe(broker: Broker) -> Iterator[Callable[[str], Subscriber]]:
    subs: list[Subscriber] = []

    def make(topic: str) -> Subscriber:
        s = Subscriber(broker.port, topic)
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.close()


class Publisher:
    def __init__(self, port: int, username: str | None = None, password: str | None = None) -> None:
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{id(self)}")
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(
        self, topic: str, payload: bytes | str | dict[str, Any] | list[Any], qos: int = 1
    ) -> None:
        if isinstance(payload, dict | list):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(broker: Broker) -> Iterator[Publisher]:
    p = Publisher(broker.port)
    yield p
    p.close()


def write_config(
    path: Path,
    port: int,
    db: Path,
    extra: str = "",
    client_id: str = "vitalmon",
    store_extra: str = "",
) -> Path:
    """A daemon config; ``store_extra`` is appended to the store list (more sinks)."""
    path.write_text(
        f"""
mqtt:
  host: 127.0.0.1
  port: {port}
  client_id: {client_id}
  reconnect_min_s: 0.2
  reconnect_max_s: 1.0
sources:
  - type: mqtt
    topic: "vitals/{{ward}}/{{bed}}/{{device}}"
    qos: 1
store:
  - type: sqlite
    path: {db}
{store_extra}
alerts:
  topic: "alerts/{{ward}}/{{bed}}"
  qos: 1
rules:
  thresholds:
    spo2: {{low: {{warn: 90, crit: 85}}, delay_s: 15}}
{extra}
"""
    )
    return path


@dataclass
class DaemonProc:
    """``vitalmon run`` as a real subprocess."""

    config: Path
    broker_port: int
    logfile: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        offset = len(self.log())  # a restart appends to the same log: look past the old run
        log = self.logfile.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "monitor",
                "run",
                "-c",
                str(self.config),
                "--log-level",
                "debug",
            ],
            stdout=log,
            stderr=log,
        )
        wait_for(lambda: "ready:" in self.log()[offset:] or self._dead(), 15, "daemon ready")
        assert self.proc.poll() is None, self.log()

    def _dead(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 10) -> tuple[int, float]:
        """Send ``sig``; -> (exit code, seconds until exit)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def daemon(broker: Broker, tmp_path: Path) -> Iterator[Callable[..., DaemonProc]]:
    procs: list[DaemonProc] = []

    def make(
        extra: str = "", db: Path | None = None, start: bool = True, store_extra: str = ""
    ) -> DaemonProc:
        cfg = write_config(
            tmp_path / "vitalmon.yaml",
            broker.port,
            db or tmp_path / "vitals.db",
            extra,
            store_extra=store_extra,
        )
        d = DaemonProc(cfg, broker.port, tmp_path / f"daemon{len(procs)}.log")
        procs.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in procs:
        d.kill()
