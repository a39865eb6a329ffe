"""A ``mosquitto`` subprocess on a loopback port: the one launcher that the tests
(``tests/conftest.py``), the benchmarks (``benchmarks/common.py``) and the demo share.

What differs between them is only the configuration text (persistence, logins, queue
sizes), which each writes itself; starting, waiting until the listener accepts and
stopping are here::

    port = free_port()
    proc = spawn(workdir / "mosquitto.conf", f"listener {port} 127.0.0.1\\n...", log)
    wait_accepting(proc, port, 10, log)
    ...
    stop(proc)

Nothing here is used by the daemon itself.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Places to look for mosquitto beyond PATH (Debian installs it in /usr/sbin, often not
#: on a user's PATH).
MOSQUITTO_DIRS = ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin")


class BrokerError(RuntimeError):
    """mosquitto did not start (not installed, exited, or not listening in time)."""


def find_mosquitto() -> str | None:
    """The mosquitto executable on PATH or in :data:`MOSQUITTO_DIRS`, or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for d in MOSQUITTO_DIRS:
        exe = os.path.join(d, "mosquitto")
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (another process may take it before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_password(user: str, password: str, salt: bytes | None = None) -> str:
    """A password file line as ``mosquitto_passwd`` writes it (PBKDF2-SHA512, 101 rounds)."""
    salt = salt or os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    b64 = base64.b64encode
    return f"{user}:$7$101${b64(salt).decode()}${b64(digest).decode()}\n"


def spawn(
    conf: Path,
    text: str,
    log: Path,
    exe: str | None = None,
    *,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Write ``text`` to ``conf`` and start ``mosquitto -c conf``, its output appended to
    ``log``. ``new_session``: in a session of its own (a Ctrl-C in the terminal does not
    reach it; the caller stops it). Does not wait: see :func:`wait_accepting`."""
    exe = exe or find_mosquitto()
    if exe is None or not os.path.exists(exe):
        raise BrokerError("mosquitto is not installed (e.g. apt-get install mosquitto)")
    conf.write_text(text)
    with log.open("ab") as out:
        return subprocess.Popen(
            [exe, "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=new_session,
        )


def accepting(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``host:port`` accepts a TCP connection now."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def log_tail(log: Path | None, limit: int = 2000) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-limit:]


def wait_accepting(
    proc: subprocess.Popen[bytes],
    ports: int | Iterable[int],
    timeout: float = 10.0,
    log: Path | None = None,
) -> None:
    """Poll until every one of ``ports`` on 127.0.0.1 accepts a connection. BrokerError
    (with the end of ``log``) when ``proc`` exits first or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for port in [ports] if isinstance(ports, int) else list(ports):
        while not accepting(port):
            if proc.poll() is not None:
                raise BrokerError(f"mosquitto exited ({proc.returncode}): {log_tail(log)}")
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"mosquitto did not accept connections on port {port} within "
                    f"{timeout:g} s: {log_tail(log)}"
                )
            time.sleep(0.02)


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds -> exit code (None: no process).
    For any subprocess (the benchmarks stop their daemons and helpers with it too)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def kill(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """``kill -9``: mosquitto saves nothing on the way out."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout)
