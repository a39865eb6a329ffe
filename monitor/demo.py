"""``vitalmon demo``: a broker, simulated beds and the daemon, with alerts printed live.

Everything runs in this process except mosquitto:

* the broker is ``mosquitto`` (a subprocess on a free loopback port) when it is
  installed, otherwise an embedded amqtt broker in this event loop (MQTT 3.1.1 only,
  so the daemon and the simulator speak 3.1.1 to it). mosquitto runs the settings of
  ``config/mosquitto/vitalmon.conf``: sessions saved within ~2 s, logins (a random
  password per run) and the ACL ``config/mosquitto/acl``, so the daemon logs in as
  ``vitalmon``, the simulated monitors as a device (``vitals/#`` only) and the alert
  printer as a staff station;
* the daemon is :class:`monitor.daemon.Daemon` in this event loop, with SQLite in a
  temporary folder;
* the simulator publishes beds ``1``..``N`` from its own thread: the last bed
  desaturates again and again, the others stay normal;
* a plain MQTT client subscribed to ``alerts/#`` prints each alert event as one line.

Ctrl-C (or ``--duration``) stops the simulator, then the daemon (which drains and
confirms its alerts), then the broker, and removes the temporary folder.

Environment:

* ``VITALMON_DEMO_BROKER`` = ``auto`` (default: mosquitto if found on ``PATH`` or in
  ``/usr/sbin``, else embedded), ``mosquitto`` or ``embedded``;
* ``VITALMON_DEMO_SPEED`` = simulated seconds per wall second (default 1; tests use more);
* ``VITALMON_DEMO_KEEP`` = ``1`` keeps the temporary folder (so does ``-v``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

import yaml

from monitor import config as config_mod
from monitor.daemon import Daemon
from simulators.mqtt import Options, Simulator
from simulators.patient import ward

log = logging.getLogger("vitalmon.demo")

ENV_BROKER = "VITALMON_DEMO_BROKER"
ENV_SPEED = "VITALMON_DEMO_SPEED"
ENV_KEEP = "VITALMON_DEMO_KEEP"

WARD = "icu"
#: Fixed, so every demo shows the same patients (and the first alert at the same time).
SEED = 7
#: Extra places to look for mosquitto (Debian installs it in /usr/sbin, often not on PATH).
MOSQUITTO_DIRS = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin")

START_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 15.0
DAEMON_STOP_TIMEOUT_S = 10.0


class DemoError(Exception):
    """The demo cannot run; the message says why and what to do."""


# ------------------------------------------------------------------------- brokers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_accepting(
    port: int, timeout: float, alive: Callable[[], bool] | None = None
) -> None:
    """Poll until 127.0.0.1:port accepts a connection (or ``alive()`` says it died)."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and not alive():
            raise DemoError("the broker exited during startup")
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise DemoError(f"the broker did not accept connections on port {port}") from None
            await asyncio.sleep(0.05)
            continue
        w.close()
        with contextlib.suppress(OSError):
            await w.wait_closed()
        return


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
SHIPPED_MOSQUITTO = Path(__file__).resolve().parent.parent / "config" / "mosquitto"
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


def mosquitto_password(user: str, password: str) -> str:
    """A password file line as ``mosquitto_passwd`` writes it (PBKDF2-SHA512, 101 rounds)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    b64 = base64.b64encode
    return f"{user}:$7$101${b64(salt).decode()}${b64(digest).decode()}\n"


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
                "".join(mosquitto_password(u, p) for u, p in self.passwords.items()),
            ),
            private(self.workdir / "mosquitto.acl", acl),
        )

    def _spawn(self) -> None:
        self.port = free_port()
        passwd, acl = self._files()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
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
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.exe, "-c", str(conf)],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to the demo, which stops it in order
            )

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self) -> None:
        errors: list[str] = []
        for _attempt in range(3):  # a free port can be taken before mosquitto binds it
            self._spawn()
            try:
                await _wait_accepting(self.port, START_TIMEOUT_S, self._alive)
            except DemoError as exc:
                errors.append(str(exc))
                await self.stop()
                continue
            log.info("mosquitto %s listening on 127.0.0.1:%d", self.exe, self.port)
            return
        tail = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
        raise DemoError(f"mosquitto did not start ({'; '.join(errors)}):\n{tail}")

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 5)

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
            self.port = free_port()
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


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for d in MOSQUITTO_DIRS:
        exe = os.path.join(d, "mosquitto")
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    return None


def _amqtt_available() -> bool:
    try:
        import amqtt.broker  # noqa: F401
    except ImportError:
        return False
    return True


_INSTALL_HINT = (
    "install mosquitto (e.g. `apt install mosquitto`) or the embedded broker "
    "(`pip install 'vitalmon[demo]'`)"
)


def choose_broker(workdir: Path, mode: str | None = None) -> DemoBroker:
    mode = (mode or os.environ.get(ENV_BROKER) or "auto").strip().lower()
    if mode not in ("auto", "mosquitto", "embedded"):
        raise DemoError(f"{ENV_BROKER}={mode!r}: use auto, mosquitto or embedded")
    if mode in ("auto", "mosquitto"):
        exe = find_mosquitto()
        if exe is not None:
            return MosquittoBroker(exe, workdir)
        if mode == "mosquitto":
            raise DemoError(f"{ENV_BROKER}=mosquitto but mosquitto is not installed")
    if _amqtt_available():
        return EmbeddedBroker()
    if mode == "embedded":
        raise DemoError(
            f"{ENV_BROKER}=embedded but amqtt is not installed: pip install 'vitalmon[demo]'"
        )
    raise DemoError(f"the demo needs an MQTT broker: {_INSTALL_HINT}")


# -------------------------------------------------------------------- alert printer


def format_alert(payload: bytes) -> str:
    """One alert event as one line: time, priority, bed, rule, state, message, id."""
    try:
        e = json.loads(payload)
        at = datetime.fromisoformat(str(e["at"]).replace("Z", "+00:00")).astimezone()
        ident = str(e.get("id", ""))
        return (
            f"{at:%H:%M:%S}  {str(e['priority']).upper():<6}  "
            f"{e['ward']}/{e['bed']:<4} {e['rule']:<10} {str(e['state']).upper():<12} "
            f"{e['message']}   (id {ident})"  # whole: what `vitalmon ack` takes
        )
    except (ValueError, KeyError, TypeError, RecursionError):
        return f"(unreadable alert) {payload[:200]!r}"


class AlertPrinter:
    """A plain paho client on ``alerts/#`` printing each event as it arrives."""

    def __init__(self, broker: DemoBroker, out: TextIO, t0: float, lock: threading.Lock) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.out = out
        self.t0 = t0
        self.lock = lock
        self.count = 0
        self.first_after: float | None = None
        self.subscribed = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived = asyncio.Event()
        self.port = broker.port
        v5 = broker.protocol == "5"
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"vitalmon-demo-alerts-{os.getpid()}",
            clean_session=None if v5 else True,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        user, password = broker.login("staff")
        if user is not None:
            self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, c: Any, _u: object, _f: object, reason: Any, _p: object) -> None:
        if not getattr(reason, "is_failure", False):
            c.subscribe("alerts/#", qos=1)

    def _on_subscribe(self, *_: object) -> None:
        self.subscribed.set()

    def _on_message(self, _c: object, _u: object, m: Any) -> None:
        line = format_alert(bytes(m.payload))
        with self.lock:
            self.count += 1
            if self.first_after is None:
                self.first_after = time.monotonic() - self.t0
            print(line, file=self.out, flush=True)
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._arrived.set)

    async def wait_for(self, count: int, timeout: float) -> None:
        """Wait (bounded) until at least ``count`` events have been printed."""
        deadline = time.monotonic() + timeout
        while self.count < count and (left := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.client.connect_async("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        if not await asyncio.to_thread(self.subscribed.wait, CONNECT_TIMEOUT_S):
            raise DemoError("the alert printer could not subscribe to alerts/#")

    async def stop(self) -> None:
        def _stop() -> None:
            self.client.disconnect()
            self.client.loop_stop()

        await asyncio.to_thread(_stop)


# --------------------------------------------------------------------------- demo


def _env_speed() -> float:
    raw = os.environ.get(ENV_SPEED, "").strip()
    if not raw:
        return 1.0
    try:
        speed = float(raw)
    except ValueError:
        raise DemoError(f"{ENV_SPEED}={raw!r} is not a number") from None
    if not (speed > 0 and math.isfinite(speed)):
        raise DemoError(f"{ENV_SPEED}={raw!r} must be > 0")
    return speed


def _keep_default() -> bool:
    if os.environ.get(ENV_KEEP, "").strip().lower() in ("1", "true", "yes"):
        return True
    # `vitalmon demo -v` sets the root logger to INFO.
    return logging.getLogger().getEffectiveLevel() <= logging.INFO


def daemon_config(
    broker: DemoBroker, db: Path, speed: float, duration: float | None
) -> dict[str, Any]:
    """The daemon's configuration (as YAML data) for this demo."""
    mqtt: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": broker.port,
        "client_id": "vitalmon-demo",
        "protocol": broker.protocol,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 2.0,
    }
    if broker.username is not None:
        mqtt["username"] = broker.username
    if broker.password_file is not None:
        mqtt["password_file"] = broker.password_file
    rules: dict[str, Any] = {}
    if speed > 1 and duration is None:
        # Event time runs ahead of the clock without end: accept it.
        rules["max_future_s"] = None
    return {
        "mqtt": mqtt,
        "sources": [{"type": "mqtt", "topic": "vitals/{ward}/{bed}/{device}", "qos": 1}],
        "store": {"type": "sqlite", "path": str(db)},
        "alerts": {"topic": "alerts/{ward}/{bed}", "qos": 1},
        "rules": rules,
    }


async def _wait_any(
    events: Sequence[asyncio.Event],
    tasks: Sequence[asyncio.Future[Any]],
    timeout: float | None,
) -> None:
    """Return when an event is set, a task is done, or ``timeout`` passes."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait([*waiters, *tasks], timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


class Demo:
    """One demo run: :meth:`run` starts everything, waits, and always cleans up."""

    def __init__(
        self, duration: float | None, beds: int, speed: float, keep: bool, out: TextIO
    ) -> None:
        self.duration = duration
        self.beds = beds
        self.speed = speed
        self.keep = keep
        self.out = out
        self.lock = threading.Lock()
        self.patients = ward(SEED, ["normal"] * (beds - 1) + ["desaturation"])
        self.stop = asyncio.Event()  # set by Ctrl-C until the daemon installs its handlers
        self.t0 = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="vitalmon-demo-"))
        self.db = self.workdir / "vitals.db"
        self.broker: DemoBroker | None = None
        self.printer: AlertPrinter | None = None
        self.daemon: Daemon | None = None
        self.serve: asyncio.Task[None] | None = None
        self.sim_stop = threading.Event()
        self.sim_task: asyncio.Future[int] | None = None
        self.code = 0

    def say(self, text: str) -> None:
        with self.lock:
            print(text, file=self.out, flush=True)

    def left(self) -> float | None:
        """Seconds until ``--duration`` is over (None: no duration)."""
        return None if self.duration is None else self.t0 + self.duration - time.monotonic()

    def stopping(self) -> bool:
        return self.stop.is_set() or (self.daemon is not None and self.daemon.should_exit.is_set())

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        # Each part registers its own stop as it starts: they run in reverse order (the
        # simulator, the daemon, the printer, the broker, the temp dir), even after errors.
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.remove_workdir)
            stack.callback(self.report)
            try:
                await self.start(stack)
                await self.wait()
            except DemoError as exc:
                print(f"vitalmon demo: {exc}", file=sys.stderr)
                self.code = 1
            self.say("stopping ...")
        return self.code

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        self.broker = broker = choose_broker(self.workdir)
        stack.push_async_callback(broker.stop)
        await broker.start()
        data = daemon_config(broker, self.db, self.speed, self.duration)
        (self.workdir / "vitalmon.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        cfg = config_mod.parse(data, env={})
        self.say(self.header())
        self.printer = printer = AlertPrinter(broker, self.out, self.t0, self.lock)
        stack.push_async_callback(printer.stop)
        await printer.start()
        self.daemon = daemon = Daemon(cfg)
        self.serve = serve = asyncio.create_task(daemon.serve(), name="vitalmon.demo.daemon")
        stack.push_async_callback(self.stop_daemon)
        await _wait_any(
            [daemon.client.connected, self.stop, daemon.should_exit], [serve], CONNECT_TIMEOUT_S
        )
        if serve.done() or self.stopping():
            return
        if not daemon.client.connected.is_set():
            raise DemoError("the daemon could not connect to the broker")
        self.start_simulator(broker)
        stack.push_async_callback(self.stop_simulator)

    def start_simulator(self, broker: DemoBroker) -> None:
        left = self.left()
        device = broker.login("device")
        opts = Options(
            host="127.0.0.1",
            port=broker.port,
            ward=WARD,
            qos=1,
            protocol=broker.protocol,
            speed=self.speed,
            duration=None if left is None else max(left, 0.1),
            client_id=f"vitalmon-demo-sim-{os.getpid()}",
            username=device[0],
            password=device[1],
        )
        sim = Simulator(opts, self.patients)
        self.sim_task = asyncio.ensure_future(asyncio.to_thread(sim.run, self.sim_stop))

    def header(self) -> str:
        assert self.broker is not None
        b = self.broker
        beds = self.beds
        sick_bed, sick = self.patients[-1]
        normal = {1: "", 2: "bed 1 normal, "}.get(beds, f"beds 1-{beds - 1} normal, ")
        speed = f", at {self.speed:g}x speed" if self.speed != 1 else ""
        until = f"stops after {self.duration:g} s or " if self.duration is not None else ""
        return (
            f"vitalmon demo: broker {b.describe()} on 127.0.0.1:{b.port}, MQTT {b.protocol}\n"
            f"  {beds} simulated bed(s) in ward {WARD}: {normal}bed {sick_bed} desaturates "
            f"(SpO2 down to ~{sick.nadir:.0f} % for 60 s, every {sick.episode_s:.0f} s{speed})\n"
            f"  temp dir {self.workdir} (SQLite store {self.db.name})\n"
            f"  central station: vitalmon watch -c {self.workdir / 'vitalmon.yaml'}\n"
            f"  alerts (alerts/#) print below as they happen; {until}Ctrl-C to stop"
        )

    async def wait(self) -> None:
        """Until Ctrl-C, the duration, or the daemon ending on its own."""
        if self.serve is None or self.sim_task is None or self.daemon is None:
            return
        while not self.stopping() and not self.serve.done():
            left = self.left()
            if left is not None and left <= 0:
                return
            if self.sim_task.done():
                if self.sim_task.exception() is not None or self.sim_task.result() != 0:
                    raise DemoError("the simulator stopped publishing (see above)")
                tasks: list[asyncio.Future[Any]] = [self.serve]
            else:
                tasks = [self.serve, self.sim_task]
            await _wait_any([self.stop, self.daemon.should_exit], tasks, left)

    async def stop_simulator(self) -> None:
        self.sim_stop.set()
        if self.sim_task is not None:
            (result,) = await asyncio.gather(self.sim_task, return_exceptions=True)
            if isinstance(result, BaseException):
                print(f"vitalmon demo: the simulator failed: {result!r}", file=sys.stderr)
                self.code = 1

    async def stop_daemon(self) -> None:
        """Let the daemon drain and confirm its alerts; wait for the printer to get them."""
        if self.daemon is None or self.serve is None:
            return
        self.daemon.should_exit.set()
        self.code = max(self.code, await _join_daemon(self.serve))
        if self.printer is not None:
            # What the broker confirmed to the daemon is on its way to the printer.
            await self.printer.wait_for(self.daemon.alert_sink.counts["confirmed"], 1.0)

    def report(self) -> None:
        if self.daemon is None:
            return
        p = self.printer
        n = p.count if p else 0
        first = "" if p is None or p.first_after is None else f", first after {p.first_after:.1f} s"
        self.say(
            f"stopped after {time.monotonic() - self.t0:.0f} s: {n} alert event(s){first}; "
            f"daemon: {self.daemon.summary()}"
        )

    def remove_workdir(self) -> None:
        if self.keep:
            self.say(
                f"kept {self.workdir}: try  vitalmon query -c {self.workdir / 'vitalmon.yaml'} "
                f"--bed {self.beds} --vital spo2"
            )
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.say(f"removed {self.workdir}")


async def _join_daemon(serve: asyncio.Task[None]) -> int:
    """Wait for the daemon to finish its shutdown; -> 0, or 1 if it failed."""
    done, _ = await asyncio.wait([serve], timeout=DAEMON_STOP_TIMEOUT_S)
    if not done:
        serve.cancel()
        await asyncio.gather(serve, return_exceptions=True)
        print("vitalmon demo: the daemon did not stop in time", file=sys.stderr)
        return 1
    failed: list[BaseException] = []
    try:
        serve.result()
    except* (OSError, sqlite3.Error) as eg:
        failed.extend(eg.exceptions)
    for exc in failed:
        print(f"vitalmon demo: the daemon failed: {exc}", file=sys.stderr)
    return 1 if failed else 0


def demo(
    duration: float | None,
    beds: int,
    *,
    speed: float | None = None,
    keep: bool | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the demo until Ctrl-C or ``duration`` seconds; -> exit code."""
    if beds < 1:
        print("vitalmon demo: --beds must be at least 1", file=sys.stderr)
        return 2
    if duration is not None and not duration > 0:
        print("vitalmon demo: --duration must be > 0", file=sys.stderr)
        return 2
    try:
        speed = _env_speed() if speed is None else speed
    except DemoError as exc:
        print(f"vitalmon demo: {exc}", file=sys.stderr)
        return 2
    keep = _keep_default() if keep is None else keep

    async def main() -> int:
        return await Demo(duration, beds, speed, keep, out or sys.stdout).run()

    return asyncio.run(main())
