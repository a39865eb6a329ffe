"""The systemd notification protocol (``sd_notify(3)``), without a dependency.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``, an ``AF_UNIX`` datagram socket
(a path, or an abstract name written with a leading ``@``); the service sends it
newline-separated ``KEY=VALUE`` lines: ``READY=1`` once it serves, ``WATCHDOG=1`` to
prove it is alive, ``RELOADING=1`` and ``STOPPING=1`` around a reload and a stop,
``STATUS=`` free text for ``systemctl status``. With ``WatchdogSec=`` it also passes
``WATCHDOG_USEC`` (and ``WATCHDOG_PID``): the daemon must send ``WATCHDOG=1`` more often
than that (half the interval is the usual choice) or be killed and restarted.

Without ``NOTIFY_SOCKET`` (a terminal, the tests, another supervisor) every method is a
no-op. Sends are non-blocking and never raise: an error is logged once (then at debug
level), since a lost notification must never stop the monitoring itself.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping

log = logging.getLogger("vitalmon.notify")

#: Environment variables systemd sets for the protocol (unset after reading by default).
ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Notifications to the service manager named by ``NOTIFY_SOCKET``.

    ``env`` defaults to ``os.environ``. With ``unset_environment`` (the default, as
    ``sd_notify(1, ...)``) the protocol's variables are removed from it after reading,
    so that child processes do not inherit them and notify in our name.
    """

    def __init__(
        self,
        env: MutableMapping[str, str] | None = None,
        *,
        unset_environment: bool = True,
    ) -> None:
        environ: MutableMapping[str, str] = os.environ if env is None else env
        raw = environ.get("NOTIFY_SOCKET") or None
        self._watchdog_usec = environ.get("WATCHDOG_USEC")
        self._watchdog_pid = environ.get("WATCHDOG_PID")
        if unset_environment:
            for name in ENV_VARS:
                environ.pop(name, None)
        self.address: str | None = None
        if raw is not None:
            if raw.startswith("@"):
                self.address = "\0" + raw[1:]  # abstract namespace
            elif raw.startswith("/"):
                self.address = raw
            else:
                log.warning("NOTIFY_SOCKET=%r is not a path or @name: not notifying", raw)
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        """True when there is a service manager to notify."""
        return self.address is not None

    # ------------------------------------------------------------------ messages

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: startup is complete (and a reload is over)."""
        return self.send("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        """``STATUS=text``, shown by ``systemctl status``."""
        return self.send(*_status(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: alive; send it more often than :meth:`watchdog_interval`."""
        return self.send("WATCHDOG=1")

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (required by ``Type=notify-reload``,
        systemd 253+; ignored by older ones). Send :meth:`ready` when the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send("STOPPING=1", *_status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: the current start, reload or stop needs ``seconds``
        more from now (beyond ``TimeoutStartSec=`` / ``TimeoutStopSec=``)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1e6))}")

    def watchdog_interval(self) -> float | None:
        """``WATCHDOG_USEC`` in seconds, or None when no watchdog applies to this process
        (unset, not a positive integer, or ``WATCHDOG_PID`` names another process)."""
        try:
            usec = int(self._watchdog_usec or "")
        except ValueError:
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid is not None:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        return usec / 1e6

    # ------------------------------------------------------------------ transport

    def send(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` fields; True if it was sent."""
        if self.address is None or not fields:
            return False
        data = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(data, self.address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("cannot notify the service manager (%s): %s", _show(self.address), exc)
            else:
                log.debug("notify %s failed: %s", fields[0], exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str | None) -> tuple[str, ...]:
    """A ``STATUS=`` field on one line (a newline would start a field of its own)."""
    if text is None:
        return ()
    return ("STATUS=" + " ".join(text.splitlines()),)


def _show(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address
