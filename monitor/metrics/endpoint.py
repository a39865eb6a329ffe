"""The registry with its collectors and the latency histogram (:class:`Metrics`), and
the minimal HTTP/1.x endpoint serving ``/metrics`` and ``/healthz``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from monitor.metrics.collector import _DaemonCollector, _Once, _RateLimited
from monitor.metrics.specs import LATENCY, SPECS, Sample

log = logging.getLogger("vitalmon.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds, 1 ms .. 60 s (and +Inf).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
MAX_REQUEST_BYTES = 8192
MAX_CONNECTIONS = 64
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0

_METHOD = re.compile(r"[A-Z]+")


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6) to ``(host, port)``; ValueError if bad."""
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen is host:port, e.g. 127.0.0.1:9464, not {listen!r}")
    return host, int(port)


class Metrics:
    """The registry, its collectors, the latency histogram and the HTTP endpoint."""

    def __init__(
        self,
        collect: Callable[[], Iterable[Sample]],
        health: Callable[[], tuple[bool, str]],
        *,
        read_timeout: float = READ_TIMEOUT_S,
    ) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.latency = Histogram(
            LATENCY, SPECS[LATENCY].help, buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self._daemon = _DaemonCollector(collect)
        self.registry.register(self._daemon)
        self._health = health
        self.read_timeout = read_timeout
        #: The bound port once listening (``listen`` may ask for port 0).
        self.port: int | None = None
        #: Set while ``serve()`` is listening.
        self.listening = asyncio.Event()
        self._closed = asyncio.Event()
        self._serving = False
        self._conns: set[asyncio.Task[object]] = set()
        self._error_log = _RateLimited()
        self._latency_log = _Once(limit=4)

    # ------------------------------------------------------------------ metrics

    def observe_latency(self, seconds: float) -> None:
        """One ingest-to-alert time; a negative or non-finite one is left out (logged once)."""
        if not math.isfinite(seconds) or seconds < 0:
            self._latency_log.warning("bad", "metrics: latency %r left out", seconds)
            return
        self.latency.observe(seconds)

    def render(self) -> bytes:
        """The exposition text (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry)

    def health(self) -> tuple[bool, str]:
        try:
            ok, reason = self._health()
        except Exception as exc:  # noqa: BLE001 - a failing check is an unhealthy daemon
            self._error_log.error("metrics: health check failed")
            return False, f"health check failed: {type(exc).__name__}"
        return bool(ok), str(reason)

    # --------------------------------------------------------------------- HTTP

    async def serve(self, listen: str) -> None:
        """Serve ``/metrics`` and ``/healthz`` until cancelled or ``close()``."""
        if self._serving:
            raise RuntimeError("Metrics.serve() is already running")
        if self._closed.is_set():
            return
        host, port = parse_listen(listen)
        self._serving = True
        try:
            server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST_BYTES)
            try:
                self.port = int(server.sockets[0].getsockname()[1])
                self.listening.set()
                log.info("metrics on http://%s:%d/metrics", listen.rpartition(":")[0], self.port)
                await self._closed.wait()
            finally:
                self.listening.clear()
                server.close()
                for task in list(self._conns):
                    task.cancel()
                if self._conns:
                    await asyncio.gather(*self._conns, return_exceptions=True)
                await server.wait_closed()
        finally:
            self._serving = False

    def close(self) -> None:
        """Stop ``serve()`` (it returns once the listener and connections are closed)."""
        self._closed.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._conns) >= MAX_CONNECTIONS or self._closed.is_set():
            writer.close()
            return
        self._conns.add(task)
        try:
            response = await self._read_and_answer(reader)
            if response is not None:
                writer.write(response)
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the client went away or does not read: nothing to answer
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _read_and_answer(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            async with asyncio.timeout(self.read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return _response(408, b"request timeout\n")
        except asyncio.LimitOverrunError:
            return _response(431, b"request head too large\n")
        except asyncio.IncompleteReadError as exc:
            return _response(400, b"bad request\n") if exc.partial.strip() else None
        return self._answer(head)

    def _answer(self, head: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        bad = _response(400, b"bad request\n")
        if len(parts) != 3:
            return bad
        method, target, version = parts
        if not version.startswith("HTTP/1.") or not _METHOD.fullmatch(method):
            return bad
        if any(line and ":" not in line for line in lines[1:]):
            return bad
        if not target.startswith("/") and not target.startswith(("http://", "https://")):
            return bad
        path = urlsplit(target).path
        if method not in ("GET", "HEAD"):
            return _response(405, b"method not allowed\n", extra=[("Allow", "GET, HEAD")])
        head_only = method == "HEAD"
        if path == "/metrics":
            try:
                body = self.render()
            except Exception:  # noqa: BLE001 - answer 500, log, keep serving
                self._error_log.error("metrics: rendering /metrics failed")
                return _response(500, b"internal error\n", head_only=head_only)
            return _response(200, body, CONTENT_TYPE, head_only=head_only)
        if path == "/healthz":
            ok, reason = self.health()
            if ok:
                return _response(200, b"ok\n", head_only=head_only)
            text = (reason or "unhealthy").replace("\r", " ").replace("\n", " ")
            return _response(503, text.encode() + b"\n", head_only=head_only)
        return _response(404, b"not found\n", head_only=head_only)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _response(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head_only: bool = False,
    extra: Iterable[tuple[str, str]] = (),
) -> bytes:
    headers = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{k}: {v}" for k, v in extra),
    ]
    return "\r\n".join(headers).encode("latin-1") + b"\r\n\r\n" + (b"" if head_only else body)
