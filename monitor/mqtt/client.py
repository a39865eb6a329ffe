"""The MQTT client: :class:`Client`, one connection with a persistent session shared by
sources and sinks (see :mod:`monitor.mqtt`)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, deque
from collections.abc import Callable

from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from monitor.config import MqttConfig
from monitor.mqtt.base import (
    MAX_INFLIGHT,
    RECEIVE_MAXIMUM,
    SESSION_LOST_HOLD_S,
    STATUS_TOPIC,
    Deliver,
    Message,
    _Out,
    fail,
    log,
    paho_log,
)
from monitor.mqtt.connection import _Connection
from monitor.mqtt.fastpath import _Paho, check_paho
from monitor.mqtt.inbound import _Inbound
from monitor.mqtt.tls import broker_password, tls_context


class Client(_Connection, _Inbound):
    """One MQTT connection with a persistent session, shared by sources and sinks.

    Contract:
    * ``subscribe()`` is called before ``start()``; subscriptions are (re)made on every
      connect, and messages matching them go to their ``deliver`` in the event loop.
    * ``start()`` returns at once; the client connects (and keeps reconnecting) in the
      background. ``connected`` is set while connected with every subscription acknowledged.
    * ``ack(msg)`` may be called once per QoS>0 message, from the event loop, in any order;
      it does nothing for a message that came on an earlier connection.
    * ``publish()`` keeps at most ``cfg.max_queued`` QoS 1 publishes waiting (see the
      module's documentation for what is dropped when it is full).
    * ``on_condition(rule, component, active, detail)``, when set, is called in the event
      loop when ``mqtt.session_lost`` is raised or resolved.
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
        #: Set when the connection is lost (cleared by whoever waits on it).
        self.disconnected = asyncio.Event()
        self.reconnects = 0
        self._subs: list[tuple[str, int, Deliver]] = []
        #: topic -> its subscriber's deliver (the subscriptions are fixed before start)
        self._routes: dict[str, Deliver] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: QoS > 0 publishes not yet acknowledged, by packet id, oldest first
        self._pending: dict[int, _Out] = {}
        #: ... and, for the overflow policy, by kind in publish order (pruned lazily: one
        #: no longer in ``_pending`` is skipped)
        self._superseded: deque[_Out] = deque()
        self._retained: deque[_Out] = deque()
        self._events: deque[_Out] = deque()
        #: topic -> the newest retained publish waiting for it
        self._retained_latest: dict[str, _Out] = {}
        self.max_queued: int = cfg.max_queued
        #: publishes dropped from the full outgoing queue, by kind (``superseded``
        #: retained, ``retained``, ``event``; ``qos0``: QoS 0 sent while disconnected)
        self.dropped: Counter[str] = Counter()
        self._dropped_reported: Counter[str] = Counter()
        self._overflowing = False  #: a drop was logged since the last connect
        #: PUBACKs not sent because the message came on an earlier connection
        self.stale_acks = 0
        #: connection attempts so far (paho's thread writes it, under the lock)
        self.generation = 0
        self._gen_lock = threading.Lock()
        #: (rule, component, active, detail): the daemon's technical alarms
        self.on_condition: Callable[[str, str, bool, str], None] | None = None
        self.session_lost_hold_s = SESSION_LOST_HOLD_S
        #: a session was accepted on an earlier connection of this process (paho thread)
        self._had_session = False
        self._session_alarm = False
        self._session_timer: asyncio.TimerHandle | None = None
        self._suback_mids: set[int] = set()
        self._attempt = 0
        #: failed attempts since the last successful connection
        self._failures = 0
        #: set by a refused CONNACK: the disconnect paho reports next is the same attempt
        self._refused = False
        #: the broker accepted the current connection (a CONNACK with success)
        self._up = False
        self._stopping = threading.Event()
        self._closing = threading.Event()
        self._inbox: deque[tuple[Deliver, Message]] = deque()
        self._inbox_lock = threading.Lock()
        self._drain_scheduled = False
        v5 = cfg.protocol == "5"
        self._v5 = v5
        self._paho = _Paho(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else not persistent,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
        )
        p = self._paho
        check_paho(client=p)  # the fast path's internals are where it expects them
        p.enable_logger(paho_log)
        # outgoing QoS 1 alerts wait in memory across reconnects, bounded by ``max_queued``
        # here (paho's own bound would refuse the newest publish, an alert included)
        p.max_queued_messages_set(0)
        p.max_inflight_messages_set(MAX_INFLIGHT)
        if persistent:
            p.will_set(self.status_topic, b"offline", qos=1, retain=True)
        p.on_connect = self._on_connect
        p.on_connect_fail = self._on_connect_fail
        p.on_disconnect = self._on_disconnect
        p.on_message = self._on_message
        p.on_publish_received = self._on_publish_received
        p.on_new_connection = self._new_connection
        p.on_publish = self._on_publish
        p.on_subscribe = self._on_subscribe  # type: ignore[assignment]
        self._next_backoff()

    # ------------------------------------------------------------------ public API

    def subscribe(self, topic_filter: str, qos: int, deliver: Deliver) -> None:
        self._subs.append((topic_filter, qos, deliver))

    def start(self) -> None:
        """Connect in the background. OSError (naming the file) when the TLS files or the
        password file cannot be used: nothing is started then."""
        self._configure_security()
        self._loop = asyncio.get_running_loop()
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.cfg.session_expiry_s if self.persistent else 0
            # Unacknowledged QoS 1 messages the broker may have in flight to us: with
            # manual acks this bounds what waits in memory on our side.
            props.ReceiveMaximum = RECEIVE_MAXIMUM
        tls = self.cfg.tls
        log.info(
            "connecting to %s:%d as %r (MQTT %s, %s session, %s, %s)",
            self.cfg.host,
            self.cfg.port,
            self.client_id,
            self.cfg.protocol,
            "persistent" if self.persistent else "clean",
            "no TLS"
            if tls is None
            else f"TLS >= {tls.min_version}"
            + ("" if tls.verify_hostname else ", host name not verified"),
            f"user {self.cfg.username!r}" if self.cfg.username is not None else "anonymous",
        )
        self._paho.connect_async(
            self.cfg.host,
            self.cfg.port,
            keepalive=self.cfg.keepalive_s,
            clean_start=not self.persistent,
            properties=props,
        )
        self._paho.loop_start()

    def _configure_security(self) -> None:
        """TLS context and credentials, from files read now (at start, not at import of
        the config: the daemon reports an OSError here as ``fatal:`` and exits 1)."""
        cfg = self.cfg
        if cfg.tls is not None:
            self._paho.tls_set_context(tls_context(cfg.tls))
            # paho derives its own check from the context; keep the two the same
            self._paho.tls_insecure_set(not cfg.tls.verify_hostname)
        secret = broker_password(cfg)
        if cfg.username is not None:
            self._paho.username_pw_set(cfg.username, secret)
        elif secret is not None:
            log.warning("mqtt.password is set without mqtt.username: connecting anonymously")

    async def stop(self, timeout: float = 2.0) -> None:
        """Publish ``offline``, wait for outstanding publishes (bounded), disconnect."""
        if self._loop is None:
            return
        if self._session_timer is not None:
            self._session_timer.cancel()
        self._closing.set()  # (before the connection is looked at: see _on_connect)
        try:
            # ``online`` goes out at the CONNACK, ``connected`` only after the SUBACKs: a
            # stop in between must still say ``offline`` (a clean disconnect sends no Will)
            if self.connected.is_set() or self._paho.is_connected():
                waiting = [out.fut for out in self._pending.values()]
                if self.persistent:
                    waiting.append(self.publish(self.status_topic, b"offline", qos=1, retain=True))
                done, not_done = (
                    await asyncio.wait(waiting, timeout=timeout) if waiting else (set(), set())
                )
                for f in done:
                    f.exception()  # retrieved: a failed publish is reported below as not done
                if not_done:
                    log.warning(
                        "%d publishes not confirmed by the broker at shutdown", len(not_done)
                    )
        finally:  # (cancelled while waiting: still disconnected, never left reconnecting)
            self._stopping.set()
            await asyncio.to_thread(self._disconnect)
        for out in self._pending.values():
            if not out.fut.done():
                fail(out.fut, "client stopped")
        self._pending.clear()
        self.connected.clear()

    def _disconnect(self) -> None:
        self._paho.disconnect()
        self._paho.loop_stop()
