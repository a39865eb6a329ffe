"""Simulators that feed vitalmon: simulated patients and the transports that publish them.

* :mod:`simulators.patient` -- seeded, deterministic patients (pure, no I/O);
* :mod:`simulators.mqtt` -- a bedside-monitor publisher (``python -m simulators mqtt``);
* :mod:`simulators.serial` -- serial devices on ptys (``python -m simulators serial``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any


class _NoSocketNoise(logging.Filter):
    """Drops paho's ERROR "Client is not connected" (its network loop ran once more with no
    socket). paho logs it after our own disconnect at a clean stop, when its thread
    loops again before ``loop_stop`` tells it to end (a race), and on each failed
    reconnect attempt, which "connection lost (...); reconnecting" already reports."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        return not (isinstance(msg, str) and msg.startswith("Client is not connected"))


#: The logger of the publishers' paho clients (``ConnectionLog._new_client``).
PAHO_LOG = logging.getLogger("simulators.mqtt.paho")
PAHO_LOG.addFilter(_NoSocketNoise())


def stop_on_signals(log: logging.Logger) -> threading.Event:
    """An event set by SIGINT or SIGTERM (the handlers only set it)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


class ConnectionLog:
    """paho connect/disconnect callbacks shared by the MQTT publishers (paho thread):
    ``connected`` follows the link, failures are logged. Needs ``opts.host``/``opts.port``,
    ``connected`` (threading.Event), ``_stopping`` and ``_on_publish``."""

    opts: Any
    connected: threading.Event
    _stopping: bool
    log: logging.Logger
    #: each publisher's own (paho's thread)
    _on_publish: Any

    def _new_client(self, client_id: str, inflight: int) -> Any:
        """The paho client of a publisher: MQTT 5 or 3.1.1 (``opts.protocol``), a clean
        session, no queue of its own, at most ``inflight`` unacknowledged, reconnecting
        after 1-5 s; ``_on_connect``, ``_on_disconnect`` and the publisher's
        ``_on_publish`` as callbacks."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        o = self.opts
        v5 = o.protocol == "5"
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=o.client_id or client_id,
            clean_session=None if v5 else True,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        c.enable_logger(PAHO_LOG)
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(inflight)
        c.reconnect_delay_set(1, 5)
        if o.username is not None:
            c.username_pw_set(o.username, o.password)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        return c

    def _on_connect(
        self, _c: object, _u: object, _flags: object, reason: Any, _props: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            self.log.error("broker refused the connection: %s", reason)
            return
        self.log.info("connected to %s:%d", self.opts.host, self.opts.port)
        self.connected.set()

    def _wait_connected(self, client: Any, stop: threading.Event) -> int | None:
        """Connect ``client`` (paho, its loop in its own thread) and wait up to
        ``opts.connect_timeout_s``; -> None once connected, else the exit code (0: stopped
        meanwhile, 1: no connection)."""
        o = self.opts
        client.connect_async(o.host, o.port, keepalive=30)
        client.loop_start()
        deadline = time.monotonic() + o.connect_timeout_s
        while not self.connected.is_set():
            if stop.is_set():
                return 0
            if time.monotonic() > deadline:
                self.log.error(
                    "cannot connect to %s:%d within %g s", o.host, o.port, o.connect_timeout_s
                )
                return 1
            stop.wait(0.05)
        return None

    def _on_disconnect(
        self, _c: object, _u: object, _flags: object, reason: object, _props: object
    ) -> None:
        self.connected.clear()
        if not self._stopping:
            self.log.warning("connection lost (%s); reconnecting", reason)
