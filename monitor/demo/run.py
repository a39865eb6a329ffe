"""One demo run (:class:`Demo`): the broker, the alert printer, the daemon and the
simulator started in order, and always stopped in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from monitor import config as config_mod
from monitor.daemon import Daemon
from monitor.demo.brokers import DemoBroker, DemoError
from monitor.demo.printer import CONNECT_TIMEOUT_S, AlertPrinter
from monitor.web.server import bind
from monitor.web.server import serve as web_serve
from monitor.web.users import Users, add_user
from simulators.mqtt import Options, Simulator
from simulators.patient import ward

WARD = "icu"
#: Fixed, so every demo shows the same patients (and the first alert at the same time).
SEED = 7

DAEMON_STOP_TIMEOUT_S = 10.0
#: The web station's port when it is free (else any free one; the header says which).
WEB_PORT = 8080


def daemon_config(
    broker: DemoBroker,
    db: Path,
    speed: float,
    duration: float | None,
    web: dict[str, Any] | None = None,
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
        **({"web": web} if web else {}),
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
        self,
        duration: float | None,
        beds: int,
        speed: float,
        keep: bool,
        out: TextIO,
        choose_broker: Callable[[Path], DemoBroker],
    ) -> None:
        #: workdir -> the broker to run (:func:`monitor.demo.choose_broker`)
        self.choose_broker = choose_broker
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
        #: the web station: its socket (bound before the header names its URL), its
        #: login, and its task
        self.web_sock: socket.socket | None = None
        self.web_login = ("demo", secrets.token_urlsafe(9))
        self.web_stop = asyncio.Event()
        self.web_task: asyncio.Task[None] | None = None
        #: ``alerts.routes`` to add, and a webhook route (url, secret file or None)
        self.routes: list[Any] = []
        self.webhook: tuple[str, str | None] | None = None
        self.all_routes: list[Any] = []  #: (made at start)
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
        self.broker = broker = self.choose_broker(self.workdir)
        stack.push_async_callback(broker.stop)
        await broker.start()
        self.web_sock = _web_socket()
        stack.callback(self.web_sock.close)
        users = self.workdir / "users.yaml"
        add_user(str(users), self.web_login[0], "charge", self.web_login[1])
        web = {"listen": f"127.0.0.1:{self.web_sock.getsockname()[1]}", "users_file": str(users)}
        data = daemon_config(broker, self.db, self.speed, self.duration, web)
        self.all_routes = self._routes()
        if self.all_routes:
            data["alerts"]["routes"] = self.all_routes
        (self.workdir / "vitalmon.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        try:
            cfg = config_mod.parse(data, env={})
        except config_mod.ConfigError as exc:
            raise DemoError("invalid routes:\n  " + "\n  ".join(exc.errors)) from None
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
        self.web_task = asyncio.create_task(
            web_serve(cfg, Users(str(users)), self.web_sock, self.web_stop),
            name="vitalmon.demo.web",
        )
        stack.push_async_callback(self.stop_web)
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
            f"  web station: {self.web_url()} (log in as {self.web_login[0]}, "
            f"password {self.web_login[1]})\n"
            + "".join(f"  {line}\n" for line in self._route_lines())
            + f"  alerts (alerts/#) print below as they happen; {until}Ctrl-C to stop"
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

    def _routes(self) -> list[Any]:
        routes = list(self.routes)
        if self.webhook is not None:
            url, secret = self.webhook
            if secret is None:
                key = self.workdir / "webhook.key"
                key.write_text(secrets.token_hex(32) + "\n")
                key.chmod(0o600)
                secret = str(key)
            routes.append(
                {"name": "demo-webhook", "receiver": {"type": "webhook", "url": url,
                                                      "secret_file": secret}}
            )  # fmt: skip
        return routes

    def _route_lines(self) -> list[str]:
        out = []
        for r in self.all_routes:
            rec = r.get("receiver", {}) if isinstance(r, dict) else {}
            where = rec.get("url") or rec.get("host") or rec.get("topic") or ""
            out.append(f"alert route {r.get('name')}: {rec.get('type')} {where}".rstrip())
            if rec.get("type") == "webhook":
                out[-1] += f" (HMAC key in {rec.get('secret_file')})"
        return out

    def web_url(self) -> str:
        assert self.web_sock is not None
        return f"http://127.0.0.1:{self.web_sock.getsockname()[1]}/"

    async def stop_web(self) -> None:
        self.web_stop.set()
        if self.web_task is not None:
            (result,) = await asyncio.gather(self.web_task, return_exceptions=True)
            if isinstance(result, BaseException):
                print(f"vitalmon demo: the web station failed: {result!r}", file=sys.stderr)
                self.code = 1

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


def _web_socket() -> socket.socket:
    """The web station's socket: port 8080 if free, else any free port."""
    try:
        return bind(f"127.0.0.1:{WEB_PORT}")
    except OSError:
        return bind("127.0.0.1:0")


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
