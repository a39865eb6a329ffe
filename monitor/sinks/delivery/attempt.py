"""One delivery attempt of a blocking client (webhook, SMTP) within ``timeout_s`` in all:
name resolution, connection, TLS, the request and the whole answer.

A socket timeout bounds each operation, not the attempt: a server that answers one byte
a second keeps every read alive, and the name resolution has no timeout at all. So each
attempt runs in a daemon thread of its own (:func:`run_attempt`), with an :class:`Attempt`
shared with the event loop:

* the thread connects through :meth:`Attempt.connect` (resolves the name, checks the
  deadline, connects with what is left of it) and registers every socket it reads from
  (:meth:`Attempt.adopt`, again after a TLS upgrade);
* at the deadline the event loop gives the attempt up and shuts its socket down
  (:meth:`Attempt.abort`): the thread's read ends at once, the attempt cannot succeed
  afterwards (no late success that the next attempt duplicates), and nothing waits for
  the thread: a resolution that hangs ends by itself in a thread nobody joins (a stop
  of the daemon never waits for it, as it would for an executor's worker), and the
  thread connects nowhere once the deadline has passed.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from monitor.tasks import in_thread

T = TypeVar("T")


class Attempt:
    """The deadline of one attempt and the socket it is reading from."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.aborted = False

    def left(self) -> float:
        """Seconds left; TimeoutError once none are (or the attempt was given up)."""
        left = self.deadline - time.monotonic()
        if self.aborted or left <= 0:
            raise TimeoutError(f"no answer within {self.timeout_s:g} s")
        return left

    def adopt(self, sock: socket.socket) -> None:
        """``sock`` is the attempt's socket now (shut down at the deadline)."""
        with self._lock:
            self._sock = sock
            if not self.aborted:
                return
        sock.close()
        raise TimeoutError(f"no answer within {self.timeout_s:g} s")

    def abort(self) -> None:
        """Give the attempt up: its socket is shut down, its thread's read ends."""
        with self._lock:
            self.aborted = True
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def tls(self, ctx: ssl.SSLContext, sock: socket.socket, host: str) -> ssl.SSLSocket:
        """``sock`` upgraded to TLS (the server verified by ``ctx``), the handshake too
        within the deadline (adopted before it: a slow handshake is aborted as well)."""
        wrapped = ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
        self.adopt(wrapped)
        wrapped.do_handshake()
        return wrapped

    def context(self, ctx: ssl.SSLContext) -> ssl.SSLContext:
        """``ctx`` for a client that upgrades its socket itself (smtplib's STARTTLS):
        its ``wrap_socket`` goes through :meth:`tls`."""
        return _Context(ctx, self)  # type: ignore[return-value]

    def connect(self, host: str, port: int, timeout: float | None) -> socket.socket:
        """A TCP connection to ``host:port`` within the deadline (each later operation:
        ``timeout``, and the deadline through :meth:`abort`)."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        error: OSError | None = None
        for family, kind, proto, _, address in infos:
            left = self.left()  # (after a slow resolution: no connection at all)
            sock = socket.socket(family, kind, proto)
            try:
                self.adopt(sock)
                sock.settimeout(min(left, timeout or left))
                sock.connect(address)
                sock.settimeout(timeout)
            except TimeoutError:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                error = exc
                continue
            return sock
        raise error or OSError(f"{host}: no address")


class _Context:
    """An SSLContext stand-in: ``wrap_socket`` within an attempt's deadline."""

    def __init__(self, ctx: ssl.SSLContext, attempt: Attempt) -> None:
        self.ctx = ctx
        self.attempt = attempt

    def wrap_socket(self, sock: socket.socket, server_hostname: str | None = None) -> ssl.SSLSocket:
        return self.attempt.tls(self.ctx, sock, server_hostname or "")


async def run_attempt(fn: Callable[[Attempt], T], timeout_s: float, name: str) -> T:
    """``fn(attempt)`` in a daemon thread of its own; TimeoutError after ``timeout_s``
    (the attempt aborted). Cancelled: aborted as well."""
    attempt = Attempt(timeout_s)
    return await in_thread(lambda: fn(attempt), timeout_s, name, on_abandon=attempt.abort)
