"""The demo's MQTT broker: mosquitto (a subprocess, launched by :mod:`monitor.broker`)
or, without it, amqtt's broker embedded in the demo's event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any, Protocol

from monitor import broker as mosquitto

log = logging.getLogger("vitalmon.demo")

START_TIMEOUT_S = 10.0
#: How long mosquitto has to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 5.0


class DemoError(Exception):
    """The demo cannot run; the message says why and what to do."""


class DemoBroker(Protocol):
    name: str
    port: int
    protocol: str  #: MQTT protocol clients must speak: "5" or "3.1.1"
    #: Username the daemon presents (None: anonymous is fine).
    username: str | None
    #: File holding the daemon's password (None: no password).
    password_file: str | None

    def login(self, role: str) -> tuple[str | None, str | None]:
        """(user name, password) of the ``staff`` station or a ``device``."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> str: ...


#: The example broker configuration (config/mosquitto/) the demo's mosquitto runs.
SHIPPED_MOSQUITTO = Path(__file__).resolve().parents[2] / "config" / "mosquitto"
#: Logins of the demo, as in config/mosquitto/acl: role -> user name.
DEMO_USERS = {"daemon": "vitalmon", "device": "monitor-icu-1", "staff": "nurse.kim"}
#: The ACL when config/mosquitto/acl is not there (an installed package): the same rules.
DEMO_ACL = """user vitalmon
topic read vitals/#
topic read vitalmon/cmd/#
topic write alerts/#
topic write state/#
topic write scores/#
topic write vitalmon/status/#
topic write vitalmon/deadletter
topic write vitalmon/cmd/ack
topic write vitalmon/cmd/pause
topic write vitalmon/cmd/admit
topic write vitalmon/cmd/discharge
topic read alerts/#
topic read state/#
topic read scores/#
topic read vitalmon/deadletter
user monitor-icu-1
topic deny vitalmon/cmd/#
topic write vitals/#
user nurse.kim
topic write vitalmon/cmd/ack
topic write vitalmon/cmd/pause
topic write vitalmon/cmd/admit
topic write vitalmon/cmd/discharge
topic read alerts/#
topic read state/#
topic read scores/#
topic read vitalmon/status/#
topic read vitalmon/deadletter
pattern write vitalmon/cmd/+/%u
"""


class MosquittoBroker:
    """mosquitto as a subprocess on a free loopback port, configured in ``workdir`` as
    ``config/mosquitto/vitalmon.conf`` is: persistence saved every second, logins with a
    password made up for this run, and the ACL."""

    name = "mosquitto"
    protocol = "5"
    username: str | None = DEMO_USERS["daemon"]

    def __init__(self, exe: str, workdir: Path) -> None:
        self.exe = exe
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.passwords = {user: secrets.token_urlsafe(16) for user in DEMO_USERS.values()}
        self.password_file: str | None = str(workdir / "vitalmon.password")

    def login(self, role: str) -> tuple[str | None, str | None]:
        user = DEMO_USERS[role]
        return user, self.passwords[user]

    @property
    def logfile(self) -> Path:
        return self.workdir / "mosquitto.log"

    def _files(self) -> tuple[Path, Path]:
        """The password file and the ACL of the broker, and the daemon's password file."""

        def private(path: Path, text: str) -> Path:
            path.write_text(text)
            path.chmod(0o600)
            return path

        assert self.password_file is not None
        private(Path(self.password_file), self.passwords[DEMO_USERS["daemon"]] + "\n")
        shipped = SHIPPED_MOSQUITTO / "acl"
        acl = shipped.read_text() if shipped.is_file() else DEMO_ACL
        return (
            private(
                self.workdir / "mosquitto.passwd",
                "".join(mosquitto.mosquitto_password(u, p) for u, p in self.passwords.items()),
            ),
            private(self.workdir / "mosquitto.acl", acl),
        )

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.port = mosquitto.free_port()
        passwd, acl = self._files()
        text = (
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {passwd}\n"
            f"acl_file {acl}\n"
            # sessions on disk within ~2 s, as config/mosquitto/vitalmon.conf keeps them
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            "set_tcp_nodelay true\n"
            "max_inflight_messages 1000\n"
            "max_queued_messages 100000\n" + ("user root\n" if os.geteuid() == 0 else "")
        )
        conf = self.workdir / "mosquitto.conf"
        # a session of its own: Ctrl-C goes to the demo, which stops it in order
        self.proc = mosquitto.spawn(conf, text, self.logfile, self.exe, new_session=True)
        return self.proc

    async def start(self) -> None:
        errors: list[str] = []
        for _attempt in range(3):  # a free port can be taken before mosquitto binds it
            try:
                proc = self._spawn()
            except mosquitto.BrokerError as exc:  # the executable is gone
                raise DemoError(str(exc)) from None
            try:
                await asyncio.to_thread(
                    mosquitto.wait_accepting, proc, self.port, START_TIMEOUT_S, self.logfile
                )
            except mosquitto.BrokerError:
                errors.append(
                    "the broker exited during startup"
                    if proc.poll() is not None
                    else f"the broker did not accept connections on port {self.port}"
                )
                await self.stop()
                continue
            log.info("mosquitto %s listening on 127.0.0.1:%d", self.exe, self.port)
            return
        raise DemoError(
            f"mosquitto did not start ({'; '.join(errors)}):\n{mosquitto.log_tail(self.logfile)}"
        )

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            await asyncio.to_thread(mosquitto.stop, proc, STOP_TIMEOUT_S)

    def describe(self) -> str:
        return f"mosquitto ({self.exe}, pid {self.proc.pid if self.proc else '-'})"


class EmbeddedBroker:
    """amqtt's broker in this event loop: MQTT 3.1.1 only.

    amqtt marks every session of an anonymous client as "anonymous" and then neither
    keeps it after a disconnect nor queues QoS 1 messages for it while it is away, so
    the daemon's persistent session would not be persistent. Requiring a username
    (any: amqtt's AnonymousAuthPlugin with ``allow_anonymous: false`` accepts every
    client that sends one, without a password) gives real persistent sessions.
    """

    name = "embedded amqtt"
    protocol = "3.1.1"
    username: str | None = "vitalmon-demo"
    password_file: str | None = None

    def __init__(self) -> None:
        self.port = 0
        self.broker: Any = None
        self.version = ""

    def login(self, role: str) -> tuple[str | None, str | None]:
        return f"{self.username}-{'alerts' if role == 'staff' else 'sim'}", None

    async def start(self) -> None:
        from importlib.metadata import version

        from amqtt.broker import Broker

        self.version = version("amqtt")
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)
        errors: list[str] = []
        for _attempt in range(3):
            self.port = mosquitto.free_port()
            broker = Broker(
                {
                    "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                    "plugins": {
                        "amqtt.plugins.authentication.AnonymousAuthPlugin": {
                            "allow_anonymous": False
                        },
                    },
                }
            )
            try:
                await broker.start()
            except Exception as exc:  # noqa: BLE001 - amqtt wraps bind errors in BrokerError
                errors.append(str(exc))
                continue
            self.broker = broker  # listening once start() returns
            log.info("embedded amqtt broker listening on 127.0.0.1:%d", self.port)
            return
        raise DemoError(f"the embedded broker did not start: {'; '.join(errors)}")

    async def stop(self) -> None:
        broker, self.broker = self.broker, None
        if broker is not None:
            await broker.shutdown()

    def describe(self) -> str:
        return f"embedded amqtt {self.version}"
