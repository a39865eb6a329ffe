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

The parts: :mod:`monitor.demo.brokers` (mosquitto, launched by :mod:`monitor.broker`,
or the embedded amqtt broker), :mod:`monitor.demo.printer` (the alert printer) and
:mod:`monitor.demo.run` (one run, started and stopped in order).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from monitor.broker import MOSQUITTO_DIRS, find_mosquitto
from monitor.demo.brokers import (
    DEMO_ACL,
    DEMO_USERS,
    SHIPPED_MOSQUITTO,
    START_TIMEOUT_S,
    DemoBroker,
    DemoError,
    EmbeddedBroker,
    MosquittoBroker,
)
from monitor.demo.printer import CONNECT_TIMEOUT_S, AlertPrinter, format_alert
from monitor.demo.run import DAEMON_STOP_TIMEOUT_S, SEED, WARD, Demo, daemon_config

ENV_BROKER = "VITALMON_DEMO_BROKER"
ENV_SPEED = "VITALMON_DEMO_SPEED"
ENV_KEEP = "VITALMON_DEMO_KEEP"


# ----------------------------------------------------------------- which broker


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


def demo(
    duration: float | None,
    beds: int,
    *,
    speed: float | None = None,
    keep: bool | None = None,
    out: TextIO | None = None,
    routes: list[Any] | None = None,
    webhook: str | None = None,
    webhook_secret_file: str | None = None,
) -> int:
    """Run the demo until Ctrl-C or ``duration`` seconds; -> exit code. ``routes``:
    ``alerts.routes`` entries added to the daemon's config; ``webhook``: one more route,
    every event to that URL (signed with ``webhook_secret_file``, or a key made up in the
    temporary folder)."""
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
        d = Demo(duration, beds, speed, keep, out or sys.stdout, choose_broker)
        d.routes = list(routes or [])
        d.webhook = (webhook, webhook_secret_file) if webhook else None
        return await d.run()

    return asyncio.run(main())


__all__ = [
    "CONNECT_TIMEOUT_S",
    "DAEMON_STOP_TIMEOUT_S",
    "DEMO_ACL",
    "DEMO_USERS",
    "ENV_BROKER",
    "ENV_KEEP",
    "ENV_SPEED",
    "MOSQUITTO_DIRS",
    "SEED",
    "SHIPPED_MOSQUITTO",
    "START_TIMEOUT_S",
    "WARD",
    "AlertPrinter",
    "Demo",
    "DemoBroker",
    "DemoError",
    "EmbeddedBroker",
    "MosquittoBroker",
    "choose_broker",
    "daemon_config",
    "demo",
    "find_mosquitto",
    "format_alert",
]
