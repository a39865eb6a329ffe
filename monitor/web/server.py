"""``vitalmon web``: the station's process. One TaskGroup owns two named tasks, the live
ward (MQTT and the store) and the HTTP server (uvicorn on a socket bound before either
starts, so a busy port is an error before anything connects); SIGTERM/SIGINT only set
the stop event, and both tasks end on it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator

import uvicorn

from monitor.config import Config
from monitor.notify import Notifier
from monitor.web.app import Station, build_app
from monitor.web.live import Live
from monitor.web.users import Users, UsersFileError

log = logging.getLogger("vitalmon.web")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the station's stop event rules."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


def url(cfg: Config, sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):  # noqa: S104 (a comparison: what to print)
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if cfg.web.https else 'http'}://{host}:{port}/"


async def serve(
    cfg: Config,
    users: Users,
    sock: socket.socket,
    stop: asyncio.Event,
    ready: Callable[[str], None] | None = None,
    alive: Callable[[], object] | None = None,
) -> None:
    """Serve until ``stop`` is set; ``alive`` is called about once a second while the
    live ward runs (the systemd watchdog)."""
    live = Live(cfg, cfg.journal.path)
    station = Station(cfg, users, live, cfg.journal.path)
    tls = cfg.web.tls
    server = _Server(
        uvicorn.Config(
            build_app(station),
            lifespan="off",
            access_log=False,
            log_config=None,
            ssl_certfile=tls.cert_file if tls else None,
            ssl_keyfile=tls.key_file if tls else None,
            timeout_graceful_shutdown=2,
            ws="none",
        )
    )

    async def http() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():  # noqa: ASYNC110 (uvicorn has no event)
            await asyncio.sleep(0.02)
        if server.started and ready is not None:
            ready(url(cfg, sock))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([serving, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        server.should_exit = True
        await serving
        stop.set()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(live.run(stop, alive), name="vitalmon.web.live")
        tg.create_task(http(), name="vitalmon.web.http")


def run(cfg: Config) -> int:
    """The command: 0 after a clean stop, 1 if it cannot start."""
    try:
        users = Users(cfg.web.users_file)
    except UsersFileError as exc:
        log.error("cannot start: %s", exc)
        return 1
    if not len(users):
        log.warning(
            "no users in %s: nobody can log in (vitalmon user add NAME --role nurse -c FILE)",
            cfg.web.users_file,
        )
    try:
        sock = bind(cfg.web.listen)
    except OSError as exc:
        log.error("cannot listen on %s: %s", cfg.web.listen, exc.strerror or exc)
        return 1

    notifier = Notifier()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def ready(at: str) -> None:
            log.info("web station on %s", at)
            notifier.ready(f"serving {at}")

        await serve(cfg, users, sock, stop, ready, notifier.watchdog)
        notifier.stopping()

    try:
        asyncio.run(main())
    finally:
        sock.close()
    log.info("web station stopped")
    return 0
