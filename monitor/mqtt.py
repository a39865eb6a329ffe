"""The MQTT boundary: the only module that imports paho-mqtt.

paho's network loop runs in its own thread (``loop_start``): connecting, reconnecting
and keepalive never block the event loop. Everything crosses into asyncio through
``call_soon_threadsafe``:

* inbound messages are handed to the subscriber's ``deliver`` callback, in the event
  loop, in arrival order; they are **not** acknowledged until :meth:`Client.ack` is
  called (paho ``manual_ack``), so a message the daemon has not taken in is redelivered
  by the broker from the persistent session;
* :meth:`Client.publish` returns a future resolved when the broker has the message
  (PUBACK for QoS 1), or failed if the client is stopped first.

Reconnects use jittered exponential backoff, each attempt logged. The retained status
topic ``vitalmon/status/{client_id}`` reads ``online`` while connected, ``offline``
after a clean stop or (Last Will) a lost connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from monitor.config import MqttConfig, read_secret

log = logging.getLogger("vitalmon.mqtt")

STATUS_TOPIC = "vitalmon/status/{client_id}"
RECEIVE_MAXIMUM = 1000


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int


Deliver = Callable[[Message], None]


class PublishError(Exception):
    """A publish could not be handed to the broker."""


class Client:
    """One MQTT connection with a persistent session, shared by sources and sinks.

    Contract:
    * ``subscribe()`` is called before ``start()``; subscriptions are (re)made on every
      connect, and messages matching them go to their ``deliver`` in the event loop.
    * ``start()`` returns at once; the client connects (and keeps reconnecting) in the
      background. ``connected`` is set while connected with every subscription acknowledged.
    * ``ack(msg)`` may be called once per QoS>0 message, from the event loop, in any order.
    * ``stop()`` publishes ``offline``, waits (bounded) for outstanding publishes and
      disconnects. After it, publish() fails.
    """

    def __init__(
        self, cfg: MqttConfig, *, persistent: bool = True, client_id: str | None = None
    ) -> None:
        """``persistent=False`` (with its own ``client_id``) is for short-lived tools such
        as ``vitalmon ack``: a clean session, no status topic, nothing left on the broker."""
        self.cfg = cfg
        self.persistent = persistent
        self.client_id = client_id or cfg.client_id
        self.status_topic = STATUS_TOPIC.format(client_id=self.client_id)
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._subs: list[tuple[str, int, Deliver]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._suback_mids: set[int] = set()
        self._attempt = 0
        self._stopping = threading.Event()
        self._inbox: deque[tuple[Deliver, Message]] = deque()
        self._inbox_lock = threading.Lock()
        self._drain_scheduled = False
        v5 = cfg.protocol == "5"
        self._v5 = v5
        self._paho = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else not persistent,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
        )
        p = self._paho
        p.enable_logger(logging.getLogger("vitalmon.mqtt.paho"))
        p.max_queued_messages_set(0)  # outgoing QoS 1 alerts wait in memory across reconnects
        p.max_inflight_messages_set(100)
        if cfg.username is not None:
            password = read_secret(cfg.password_file) if cfg.password_file else None
            p.username_pw_set(cfg.username, password)
        if cfg.tls is not None:
            p.tls_set(
                ca_certs=cfg.tls.ca_file,
                certfile=cfg.tls.cert_file,
                keyfile=cfg.tls.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if persistent:
            p.will_set(self.status_topic, b"offline", qos=1, retain=True)
        p.on_connect = self._on_connect
        p.on_connect_fail = self._on_connect_fail
        p.on_disconnect = self._on_disconnect
        p.on_message = self._on_message
        p.on_publish = self._on_publish
        p.on_subscribe = self._on_subscribe  # type: ignore[assignment]
        self._next_backoff()

    # ------------------------------------------------------------------ public API

    def subscribe(self, topic_filter: str, qos: int, deliver: Deliver) -> None:
        self._subs.append((topic_filter, qos, deliver))

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.cfg.session_expiry_s if self.persistent else 0
            # Unacknowledged QoS 1 messages the broker may have in flight to us: with
            # manual acks this bounds what waits in memory on our side.
            props.ReceiveMaximum = RECEIVE_MAXIMUM
        log.info(
            "connecting to %s:%d as %r (MQTT %s, %s session)",
            self.cfg.host,
            self.cfg.port,
            self.client_id,
            self.cfg.protocol,
            "persistent" if self.persistent else "clean",
        )
        self._paho.connect_async(
            self.cfg.host,
            self.cfg.port,
            keepalive=self.cfg.keepalive_s,
            clean_start=not self.persistent,
            properties=props,
        )
        self._paho.loop_start()

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Queue a message; the future completes when the broker has it."""
        assert self._loop is not None, "start() first"
        fut: asyncio.Future[None] = self._loop.create_future()
        if self._stopping.is_set():
            fut.set_exception(PublishError("client stopped"))
            return fut
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            fut.set_exception(PublishError(paho.error_string(info.rc)))
        elif qos == 0:
            fut.set_result(None)  # at most once: nothing to wait for
        elif info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS and info.is_published():
            fut.set_result(None)  # (with NO_CONN paho keeps it and sends it on reconnect)
        else:
            self._pending[info.mid] = fut
        return fut

    def ack(self, msg: Message) -> None:
        if msg.qos > 0:
            self._paho.ack(msg.mid, msg.qos)

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    async def stop(self, timeout: float = 2.0) -> None:
        """Publish ``offline``, wait for outstanding publishes (bounded), disconnect."""
        if self._loop is None:
            return
        if self.connected.is_set():
            waiting = list(self._pending.values())
            if self.persistent:
                waiting.append(self.publish(self.status_topic, b"offline", qos=1, retain=True))
            done, not_done = (
                await asyncio.wait(waiting, timeout=timeout) if waiting else (set(), set())
            )
            for f in done:
                f.exception()  # retrieved: a failed publish is reported below as not done
            if not_done:
                log.warning("%d publishes not confirmed by the broker at shutdown", len(not_done))
        self._stopping.set()
        await asyncio.to_thread(self._disconnect)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(PublishError("client stopped"))
        self._pending.clear()
        self.connected.clear()

    def _disconnect(self) -> None:
        self._paho.disconnect()
        self._paho.loop_stop()

    # --------------------------------------------------- paho callbacks (paho thread)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed since the check
                loop.call_soon_threadsafe(fn, *args)

    def _next_backoff(self) -> float:
        cap = min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2**self._attempt)
        delay = random.uniform(self.cfg.reconnect_min_s, max(cap, self.cfg.reconnect_min_s))
        self._attempt = min(self._attempt + 1, 30)
        # paho waits min(previous * 2, max) between attempts: pin both to our jittered delay.
        self._paho.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]
        return delay

    def _on_connect(
        self, client: paho.Client, _u: object, flags: object, reason: object, _props: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            delay = self._next_backoff()
            log.error("broker refused the connection: %s; retrying in %.2f s", reason, delay)
            return
        self._attempt = 0
        self._next_backoff()
        present = bool(getattr(flags, "session_present", False))
        log.info("connected to %s:%d (session present: %s)", self.cfg.host, self.cfg.port, present)
        if self.persistent:
            client.publish(self.status_topic, b"online", qos=1, retain=True)
        self._suback_mids.clear()
        if not self._subs:
            self._call(self.connected.set)
        for topic_filter, qos, _deliver in self._subs:
            rc, mid = client.subscribe(topic_filter, qos=qos)
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                self._suback_mids.add(mid)

    def _on_subscribe(
        self, _c: object, _u: object, mid: int, reasons: list[object], _props: object
    ) -> None:
        for reason in reasons:
            if getattr(reason, "is_failure", False):
                log.error("subscription refused by the broker: %s", reason)
        self._suback_mids.discard(mid)
        if not self._suback_mids:
            self._call(self.connected.set)

    def _on_connect_fail(self, _c: object, _u: object) -> None:
        delay = self._next_backoff()
        self.reconnects += 1
        log.warning(
            "cannot connect to %s:%d; retrying in %.2f s", self.cfg.host, self.cfg.port, delay
        )

    def _on_disconnect(
        self, _c: object, _u: object, _flags: object, reason: object, _props: object
    ) -> None:
        self._call(self.connected.clear)
        if self._stopping.is_set():
            log.info("disconnected")
            return
        self.reconnects += 1
        delay = self._next_backoff()
        log.warning("connection lost (%s); reconnecting in %.2f s", reason, delay)

    def _on_message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        msg = Message(m.topic, bytes(m.payload), m.qos, bool(m.retain), m.mid)
        target: Deliver = self.ack  # not ours (a stale subscription kept by the session)
        for topic_filter, _qos, deliver in self._subs:
            if paho.topic_matches_sub(topic_filter, msg.topic):
                target = deliver
                break
        # One loop wake-up per burst, not per message.
        with self._inbox_lock:
            self._inbox.append((target, msg))
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        self._call(self._drain_inbox)

    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            items = list(self._inbox)
            self._inbox.clear()
            self._drain_scheduled = False
        for deliver, msg in items:
            deliver(msg)

    def _on_publish(
        self, _c: object, _u: object, mid: int, _reason: object, _props: object
    ) -> None:
        self._call(self._published, mid)

    def _published(self, mid: int) -> None:
        fut = self._pending.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
