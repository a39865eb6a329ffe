"""The demo's alert printer: a plain paho client on ``alerts/#``, one line per event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from datetime import datetime
from typing import Any, TextIO

from monitor.demo.brokers import DemoBroker, DemoError

CONNECT_TIMEOUT_S = 15.0


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
