"""Connecting and reconnecting (paho's callbacks, in its thread): one log line per failed
attempt, jittered backoff, subscriptions on every connect, and the persistent session's
technical alarm (``mqtt.session_lost``)."""

from __future__ import annotations

import logging
import random
import ssl
import sys
import threading

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from monitor.mqtt.base import _EVERY_TIME, SESSION_LOST, log, paho_log
from monitor.mqtt.publish import _Publishing
from monitor.mqtt.tls import _SSL_NOISE, _ssl_text

#: CONNACK reasons (lower case) that mean the credentials are not accepted
_CREDENTIAL_REASONS = ("bad user name or password", "not authorized")

# ------------------------------------------------------------- paho's own log lines

#: paho ERROR lines about a socket that our own per-attempt line reports. Their text
#: goes into that line instead: paho logs it in its network thread just before calling
#: ``on_disconnect`` there, so a thread-local carries it across.
_SOCKET_NOISE = ("failed to receive on socket", "timeout on socket", "Client is not connected")


class _SocketErrors(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if isinstance(msg, str) and msg.startswith(_SOCKET_NOISE):
            if not msg.startswith("Client is not connected"):  # no socket: nothing to say
                self._local.text = record.getMessage()
            return False
        return True

    def take(self) -> str | None:
        text: str | None = getattr(self._local, "text", None)
        self._local.text = None
        return text


_socket_errors = _SocketErrors()
paho_log.addFilter(_socket_errors)


class _Connection(_Publishing):
    """The connection's life: paho's connect, subscribe and disconnect callbacks (paho
    thread) and the session alarm (event loop)."""

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
            # paho reports the same attempt to on_disconnect next: one line, here
            self._refused = True
            self.reconnects += 1
            self._failures += 1
            delay = self._next_backoff()
            why = str(reason).lower()
            if self.cfg.username is None:
                who = "anonymous: no mqtt.username"
            else:
                who = f"user {self.cfg.username!r}"
                if why in _CREDENTIAL_REASONS:  # mosquitto says "not authorized" for both
                    who += ": check the user name and password"
            log.warning(
                "broker %s:%d refused the connection: %s (%s; retrying in %.1f s)",
                self.cfg.host,
                self.cfg.port,
                why,
                who,
                delay,
                extra=_EVERY_TIME,
            )
            return
        _socket_errors.take()  # nothing stale for a later disconnect
        self._refused = False
        self._up = True
        self._attempt = 0
        self._next_backoff()
        present = bool(getattr(flags, "session_present", False))
        after = f" after {self._failures} failed attempt(s)" if self._failures else ""
        self._failures = 0
        # a session the broker should have kept: it accepted one on an earlier connection
        # of this process, and it outlives a disconnect (MQTT 5: an expiry above 0)
        keeps = self.persistent and not (self._v5 and self.cfg.session_expiry_s == 0)
        lost = keeps and self._had_session and not present
        self._had_session = self._had_session or keeps
        where = (self.cfg.host, self.cfg.port, present, after)
        if lost:
            log.warning(
                "connected to %s:%d (session present: %s)%s: the broker lost "
                "vitalmon's persistent session; what it had queued for vitalmon is "
                "gone. Check the broker's persistence (persistence true, "
                "autosave_interval 1) and its session expiry",
                *where,
            )
        elif keeps and not present:
            log.info(
                "connected to %s:%d (session present: %s)%s: a new session (the first "
                "connection of this process)",
                *where,
            )
        else:
            log.info("connected to %s:%d (session present: %s)%s", *where)
        if keeps:
            self._call(self._session_checked, lost, present)
        self._call(self._report_drops)
        if self.persistent and not self._closing.is_set():
            # (a stop already under way checks the connection after it set _closing:
            # either it sees this connection and says offline, or online is not said)
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
        # paho calls this inside its ``except OSError`` around the attempt (TCP connect
        # and TLS handshake) without passing the exception: it is the one being handled.
        exc = sys.exc_info()[1]
        in_tls = self.cfg.tls is not None and isinstance(
            exc, ssl.SSLError | ssl.CertificateError | ConnectionResetError | ConnectionAbortedError
        )  # (a reset comes after TCP connected: during the handshake)
        self._failed(in_tls, _ssl_text(exc) if exc is not None else "no connection")

    def _failed(self, in_tls: bool, why: str) -> None:
        """An attempt that did not reach CONNACK: one line, and the next backoff."""
        delay = self._next_backoff()
        self.reconnects += 1
        self._failures += 1
        where = f"{self.cfg.host}:{self.cfg.port}"
        if in_tls:
            log.warning(
                "TLS handshake with %s failed: %s (retrying in %.1f s)",
                where,
                why,
                delay,
                extra=_EVERY_TIME,
            )
        else:
            log.warning(
                "cannot connect to %s: %s (retrying in %.1f s)",
                where,
                why,
                delay,
                extra=_EVERY_TIME,
            )

    def _on_disconnect(
        self, _c: object, _u: object, flags: object, reason: object, _props: object
    ) -> None:
        self._call(self.connected.clear)
        self._call(self.disconnected.set)
        detail = _socket_errors.take()
        was_up, self._up = self._up, False
        if self._stopping.is_set():
            log.info("disconnected")
            return
        if self._refused:  # the refusal was logged (and the backoff drawn) in on_connect
            self._refused = False
            return
        why = None
        if detail is not None:
            why = _SSL_NOISE.sub("", detail.removeprefix("failed to receive on socket: ")).strip()
        if not was_up:  # before CONNACK: e.g. a TLS 1.3 client certificate refused
            in_tls = self.cfg.tls is not None and "[SSL" in (detail or "")
            self._failed(in_tls, why or "closed before the broker answered")
            return
        if why is None:
            if getattr(flags, "is_disconnect_packet_from_server", False):
                why = f"the broker sent DISCONNECT: {str(reason).lower()}"
            elif str(reason) == "Unspecified error":
                why = "closed by the broker or the network"
            else:
                why = str(reason).lower()
        self.reconnects += 1
        self._failures += 1
        delay = self._next_backoff()
        log.warning(
            "connection lost to %s:%d: %s (reconnecting in %.1f s)",
            self.cfg.host,
            self.cfg.port,
            why,
            delay,
            extra=_EVERY_TIME,
        )

    # ------------------------------------------------------ event loop: conditions

    def _session_checked(self, lost: bool, present: bool) -> None:
        if lost:
            if self._session_timer is not None:
                self._session_timer.cancel()
            assert self._loop is not None
            self._session_timer = self._loop.call_later(
                self.session_lost_hold_s,
                self._session_resolved,
                f"connected for {self.session_lost_hold_s:g} s since the session was lost",
            )
            self._session_alarm = True
            self._condition(
                True,
                f"the broker {self.cfg.host}:{self.cfg.port} lost vitalmon's "
                "persistent session: readings it had queued for vitalmon are lost; "
                "check its persistence",
            )
        elif present:
            self._session_resolved("the broker kept the session over a reconnect")

    def _session_resolved(self, detail: str) -> None:
        if self._session_timer is not None:
            self._session_timer.cancel()
            self._session_timer = None
        if self._session_alarm:
            self._session_alarm = False
            self._condition(False, detail)

    def _condition(self, active: bool, detail: str) -> None:
        if self.on_condition is not None:
            self.on_condition(SESSION_LOST, "mqtt", active, detail)
