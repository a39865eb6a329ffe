"""The MQTT boundary: the only module that imports paho-mqtt.

paho's network loop runs in its own thread (``loop_start``): connecting, reconnecting
and keepalive never block the event loop. Everything crosses into asyncio through
``call_soon_threadsafe``:

* inbound messages are handed to the subscriber's ``deliver`` callback, in the event
  loop, in arrival order; they are **not** acknowledged until :meth:`Client.ack` is
  called (paho ``manual_ack``), so a message the daemon has not taken in is redelivered
  by the broker from the persistent session;
* :meth:`Client.publish` returns a future resolved when the broker has the message
  (PUBACK for QoS 1), or failed if the client is stopped first, the broker refuses it
  (an MQTT 5 PUBACK with a failure reason, e.g. not authorized by its ACL) or it is
  dropped from the outgoing queue (below).

**Connections are numbered** (``generation``, one more at every connection attempt). A
message received carries the generation it came on, and :meth:`Client.ack` sends its
PUBACK only on that same connection: a packet id belongs to one connection of one
session, and after a reconnect (all the more a session the broker lost) the same id
names another message, which a late PUBACK would acknowledge before it is committed.
A message whose connection is gone is not acknowledged: the broker redelivers it if it
kept the session (the store absorbs the duplicate), and it is committed anyway. Our own
publishes: paho re-sends every publish not yet acknowledged on each new connection
(same packet id, DUP), so nothing waits for a PUBACK on a connection that is gone; a
PUBACK completes the future of exactly the message paho matched it to (the same
``MQTTMessageInfo``), never another one that reused its id.

**The persistent session** is expected back at every reconnect of this process once the
broker has accepted one (``clean_start``/``clean_session`` false; with MQTT 5 a
``session_expiry_s`` above 0). When the broker answers "session present: false" then,
it lost the session (a crash before it saved it, or the session expired): what it had
queued for vitalmon, and the subscriptions, are gone. That is logged as a WARNING and
raised as the technical alarm ``mqtt.session_lost`` (priority medium, through
``on_condition``). It resolves at the next connect that finds the session, or after
``session_lost_hold_s`` (15 min) connected. The first connection of a process has no
earlier session to expect: finding none then (the first start, or a broker that lost it
while vitalmon was stopped) is logged at INFO.

**The outgoing queue is bounded** (``mqtt.max_queued`` QoS 1 publishes not yet
acknowledged by the broker; the daemon keeps publishing while the broker is away). When
it is full, one waiting publish is dropped to make room, never one in flight, in this
order: a retained message superseded by a newer one on the same topic (the broker would
overwrite it anyway: bed state, NEWS2 score); else the oldest retained message; else the
oldest event (alert events are the last to go). Each drop fails that publish's future
and is counted in :attr:`Client.dropped` by kind; the first one of an outage is logged,
and a summary when the broker is back.

Reconnects use jittered exponential backoff. Every failed attempt is logged as exactly
one WARNING line that names the cause: the broker refusing the connection (its CONNACK
reason, e.g. bad user name or password), a failed TLS handshake (certificate verify
failed, hostname mismatch), a socket error, or a lost connection. paho's own error
lines about the same socket are folded into ours rather than printed a second time.
The retained status topic ``vitalmon/status/{client_id}`` reads ``online`` while
connected, ``offline`` after a clean stop or (Last Will) a lost connection.

TLS: an ``ssl.SSLContext`` built from ``mqtt.tls``: the broker's certificate is always
verified (``ca_file`` or the system's CAs), its name checked unless ``verify_hostname``
is off, TLS 1.2 or 1.3 at least (``min_version``), and a client certificate when given.
Files that cannot be used, like an unreadable password file, fail :meth:`Client.start`
with an ``OSError`` naming the file and its key (the daemon exits with ``fatal: ...``).
The password (``password_file``, or ``password`` from the environment) is handed to
paho only: it is in no log line, no exception and no repr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import socket
import ssl
import struct
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from monitor.config import MqttConfig, TLSConfig, read_secret

log = logging.getLogger("vitalmon.mqtt")
#: Connection retries are logged one line each, never folded as repeats (monitor.logs).
_EVERY_TIME = {"every_time": True}
#: paho's own logger (``enable_logger``); the CLI keeps it at WARNING.
paho_log = logging.getLogger("vitalmon.mqtt.paho")

STATUS_TOPIC = "vitalmon/status/{client_id}"
RECEIVE_MAXIMUM = 1000
#: Topics whose subscriber is remembered (one per device: a ward has a few hundred).
ROUTES_CACHED = 10_000
#: The technical alarm raised when the broker lost the persistent session.
SESSION_LOST = "mqtt.session_lost"
#: Connected this long after a lost session, its alarm resolves (if no reconnect found the
#: session before): the loss is in the past, the alarm is there to be seen and acted on.
SESSION_LOST_HOLD_S = 900.0
#: Publishes paho may have on the wire unacknowledged (the rest wait, ``queued``).
MAX_INFLIGHT = 100


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    #: The connection it came on (:attr:`Client.generation`): acknowledged only on it.
    gen: int = 0


@dataclass(slots=True)
class _Out:
    """A QoS > 0 publish waiting for the broker's PUBACK."""

    mid: int
    fut: asyncio.Future[None]
    #: paho's handle of this very message: a PUBACK completes ``fut`` only when paho
    #: matched it to this message (not merely to its packet id)
    info: paho.MQTTMessageInfo
    topic: str
    retain: bool
    #: a newer retained publish to the same topic waits too
    superseded: bool = field(default=False)


Deliver = Callable[[Message], None]

#: Bytes read from the broker per system call (see _BufferedSocket), and at most so many
#: reads per turn of paho's loop.
RECV_CHUNK = 65_536
LOOP_READ_CHUNKS = 4
_PUBACK = 0x40


class _BufferedSocket:
    """The broker connection as paho sees it, read in large chunks.

    paho reads a packet as its first byte, then its length a byte at a time, then the
    rest: three or more ``recv()`` calls per message, each a system call that also hands
    the GIL to the event loop and has to wait to get it back. This reads up to
    ``RECV_CHUNK`` bytes at once and serves paho's small reads from memory. ``pending()``,
    which paho's loop already asks TLS sockets for bytes decrypted but not yet read,
    counts them too, so the loop reads on without waiting in ``select()``. Everything else
    (``send``, ``fileno``, ``close``, ...) is the socket's own.
    """

    __slots__ = ("_buf", "_eof", "_failed", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        #: what :meth:`fill` met, kept for paho's next ``recv()`` to meet in turn
        self._failed: OSError | None = None
        self._eof = False

    def fill(self) -> int:
        """Read what the socket has (one call) into the empty buffer; -> bytes read.
        An error or the end of the stream is kept for the next :meth:`recv`, through
        which paho reports it as its own (``news``)."""
        try:
            data: bytes = self._sock.recv(RECV_CHUNK)
        except BlockingIOError:
            return 0  # nothing yet
        except OSError as exc:  # (TLS alerts, resets, SSLWantRead/Write: paho's)
            self._failed = exc
            return 0
        if not data:
            self._eof = True
        self._buf, self._pos = data, 0
        return len(data)

    @property
    def news(self) -> bool:
        """An error or the end of the stream waits to be reported by :meth:`recv`."""
        return self._failed is not None or self._eof

    def recv(self, n: int) -> bytes:
        if self._failed is not None:
            exc, self._failed = self._failed, None
            raise exc
        if self._eof:
            return b""
        if self._pos >= len(self._buf):
            data: bytes = self._sock.recv(max(n, RECV_CHUNK))  # BlockingIOError: paho's
            if len(data) <= n:
                return data  # b"" at end of stream
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = min(start + n, len(self._buf))
        return self._buf[start : self._pos]

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return self.buffered() + int(inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


#: The paho-mqtt releases :class:`_Paho`'s fast path was tested with. It reads and writes
#: paho internals that change between minor releases (2.1 keeps its keepalive clock in
#: ``_last_msg_in``, 2.2 in ``_last_bytes_received``: the fast path on 2.1 would never
#: refresh it, and the broker would be pinged as if nothing arrived). pyproject.toml pins
#: the same versions.
TESTED_PAHO = ("2.2.0",)
#: The paho internals the fast path uses (checked at start-up, with the version).
_PAHO_INTERNALS = (
    "_create_socket",
    "_packet_queue",
    "_in_packet",
    "_protocol",
    "_msgtime_mutex",
    "_last_bytes_received",
    "_sock",
)


def check_paho(version: str | None = None, client: object | None = None) -> None:
    """Refuse to run on a paho-mqtt the fast path was not tested with: RuntimeError naming
    the installed and the tested versions (the daemon exits 1 with it, before anything
    connects)."""
    import paho.mqtt as paho_pkg

    found = version if version is not None else str(getattr(paho_pkg, "__version__", "?"))
    if found not in TESTED_PAHO:
        raise RuntimeError(
            f"paho-mqtt {found} is installed, but vitalmon's MQTT path reads paho internals "
            f"and was tested only with {', '.join(TESTED_PAHO)}: install that "
            f"(pip install 'paho-mqtt=={TESTED_PAHO[-1]}')"
        )
    if client is not None:
        missing = [a for a in _PAHO_INTERNALS if not hasattr(client, a)]
        if missing:
            raise RuntimeError(
                f"paho-mqtt {found} lacks {', '.join(missing)}: not the release "
                "vitalmon was tested with"
            )


class _Paho(paho.Client):
    """paho's client with three changes to its network path, all below its public API:

    * reads go through :class:`_BufferedSocket` and one ``loop_read`` takes every packet
      already read, not one per ``select()``;
    * ``TCP_NODELAY``: an alert or a PUBACK is a small packet that must not wait for
      Nagle's algorithm (40 ms on Linux) behind an unacknowledged one;
    * :meth:`puback_many`: the PUBACKs of a run of messages as one packet write and one
      wake-up of the network thread, instead of one each.

    (``_create_socket`` and ``_packet_queue`` are paho 2.x internals; the tests that
    acknowledge, reconnect and use TLS go through all three.)
    """

    def _create_socket(self) -> Any:
        sock: Any = super()._create_socket()
        with contextlib.suppress(OSError, AttributeError):  # (unix sockets have no Nagle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _BufferedSocket(sock)

    #: Set by the owner: takes (topic, payload, qos, retain, mid) of each PUBLISH that
    #: :meth:`_publishes` decodes itself (QoS 0 and 1, no MQTT 5 properties).
    on_publish_received: Callable[[str, bytes, int, bool, int], None] | None = None
    #: Set by the owner: called in paho's thread at the start of every connection attempt
    #: (the first one too), before the old connection's unsent packets are discarded and
    #: the new socket is made.
    on_new_connection: Callable[[], None] | None = None

    def reconnect(self) -> MQTTErrorCode:
        hook = self.on_new_connection
        if hook is not None:
            hook()
        return super().reconnect()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if not isinstance(self._sock, _BufferedSocket) or self.on_publish_received is None:
            return super().loop_read(max_packets)
        sock: _BufferedSocket = self._sock
        for _ in range(LOOP_READ_CHUNKS):  # (then writes: PUBACKs wait meanwhile)
            got = self._publishes(sock)
            if sock.buffered() or sock.news or self._in_packet["command"]:
                # another kind of packet, a part of one, an error or the end: paho's
                rc = super().loop_read(max_packets)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or sock is not self._sock:
                    return rc
            elif not got:
                break  # nothing more to read now
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _publishes(self, sock: _BufferedSocket) -> int:
        """Decode the complete PUBLISH packets at the head of the read buffer and hand
        them to ``on_publish_received``; -> how many. Stops at anything else (another
        packet type, QoS 2, MQTT 5 properties other than none, an incomplete packet, a
        topic that is not UTF-8), which
        paho's own reader then takes from the same buffer. paho's path builds an
        ``MQTTMessage`` and formats a debug line per message; this is the hot path of
        a busy ward."""
        deliver = self.on_publish_received
        if deliver is None or self._in_packet["command"]:  # (paho is inside a packet)
            return 0
        v5 = self._protocol == paho.MQTTv5
        if not sock.buffered() and not sock.fill():
            return 0
        buf, pos = sock._buf, sock._pos
        end = len(buf)
        n = 0
        while pos < end:
            cmd = buf[pos]
            qos = (cmd >> 1) & 3
            if cmd & 0xF0 != 0x30 or qos == 2:
                break
            i, length, shift = pos + 1, 0, 0
            while i < end and shift < 28:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            else:
                break  # the length is not all here (or is malformed: paho says so)
            stop = i + length
            if stop > end or length < 2:
                break
            tlen = (buf[i] << 8) | buf[i + 1]
            j = i + 2 + tlen
            mid = 0
            if qos:
                if j + 2 > stop:
                    break
                mid = (buf[j] << 8) | buf[j + 1]
                j += 2
            elif j > stop:
                break
            if v5:  # properties: only none (topic aliases, user properties: paho's)
                if j >= stop or buf[j] != 0:
                    break
                j += 1
            try:
                topic = buf[i + 2 : i + 2 + tlen].decode("utf-8")
            except UnicodeDecodeError:
                break
            pos = sock._pos = stop
            n += 1
            deliver(topic, buf[j:stop], qos, bool(cmd & 1), mid)
        if n:
            now = paho.time_func()
            with self._msgtime_mutex:
                self._last_bytes_received = now
        return n

    def puback_many(self, mids: Iterable[int]) -> None:
        """Acknowledge QoS 1 messages (``manual_ack``): PUBACKs in this order, one write."""
        packet = b"".join(struct.pack("!BBH", _PUBACK, 2, mid) for mid in mids)
        if packet:
            self._packet_queue(_PUBACK, packet, 0, 0)


class PublishError(Exception):
    """A publish could not be handed to the broker."""


# ------------------------------------------------------------------ TLS, credentials

#: CONNACK reasons (lower case) that mean the credentials are not accepted
_CREDENTIAL_REASONS = ("bad user name or password", "not authorized")
_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: OpenSSL's ``[LIB: CODE]`` / ``[Errno N]`` tags and ``(_ssl.c:NNN)`` source positions
_SSL_NOISE = re.compile(r"\[[A-Za-z0-9_: ]+\]\s*|\s*\(_ssl\.c:\d+\)")


def _ssl_text(exc: BaseException) -> str:
    """An ``ssl``/``OSError`` as words: ``certificate verify failed: Hostname mismatch,
    ...``, ``Connection refused``, without OpenSSL's tags."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message.rstrip('.')}"
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, ssl.SSLError):
        return exc.strerror  # "No such file or directory", "Connection refused"
    return _SSL_NOISE.sub("", str(exc)).strip() or type(exc).__name__


def _readable_certs(path: str) -> bool:
    """Whether ``path`` holds at least one PEM certificate."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except (OSError, ValueError):
        return False
    return True


def tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """The client context for ``mqtt.tls``; OSError naming the file that cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # always: verify_hostname only skips the name check
    ctx.check_hostname = tls.verify_hostname
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    try:
        if tls.ca_file is not None:
            ctx.load_verify_locations(cafile=tls.ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    except (OSError, ValueError) as exc:
        where = f"mqtt.tls.ca_file {tls.ca_file}" if tls.ca_file else "the system CA store"
        raise OSError(f"{where}: cannot load CA certificates: {_ssl_text(exc)}") from None
    if tls.cert_file is not None:
        key_file = tls.key_file or tls.cert_file

        def no_passphrase() -> str:
            # OpenSSL would otherwise prompt on the terminal, and a daemon has none
            raise OSError(
                f"mqtt.tls.key_file {key_file}: the key is encrypted; vitalmon "
                "needs an unencrypted key (readable only by its user)"
            )

        try:
            ctx.load_cert_chain(tls.cert_file, key_file, password=no_passphrase)
        except (OSError, ValueError) as exc:
            if str(exc).startswith("mqtt.tls."):
                raise OSError(str(exc)) from None
            if not _readable_certs(tls.cert_file):
                raise OSError(
                    f"mqtt.tls.cert_file {tls.cert_file}: no PEM certificate in it "
                    f"({_ssl_text(exc)})"
                ) from None
            raise OSError(
                f"mqtt.tls.key_file {key_file}: not the PEM private key of "
                f"cert_file {tls.cert_file} ({_ssl_text(exc)})"
            ) from None
    return ctx


def broker_password(cfg: MqttConfig) -> str | None:
    """The broker password: ``password_file``'s first line, else ``password`` (from the
    environment). OSError naming the file, never its content, when it cannot be read."""
    if cfg.password_file:
        where = f"mqtt.password_file {cfg.password_file}"
        try:
            secret = read_secret(cfg.password_file)
        except IndexError:
            raise OSError(f"{where}: the file is empty") from None
        except UnicodeDecodeError:
            raise OSError(f"{where}: not UTF-8 text") from None
        except OSError as exc:
            raise OSError(
                f"{where}: cannot read it: {exc.strerror or type(exc).__name__}"
            ) from None
        if not secret:
            raise OSError(f"{where}: the first line is empty")
        return secret
    return cfg.password


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


class Client:
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

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Queue a message; the future completes when the broker has it."""
        assert self._loop is not None, "start() first"
        fut: asyncio.Future[None] = self._loop.create_future()
        if self._stopping.is_set():
            fut.set_exception(PublishError("client stopped"))
            return fut
        previous = self._retained_latest.get(topic) if retain and qos > 0 else None
        if qos > 0 and len(self._pending) >= self.max_queued:
            self._make_room(previous)
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            fut.set_exception(PublishError(paho.error_string(info.rc)))
        elif qos == 0:
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                self.dropped["qos0"] += 1  # at most once: not kept while disconnected
            fut.set_result(None)  # at most once: nothing to wait for
        else:
            # (with NO_CONN paho keeps it and sends it on reconnect). Registered even when
            # already acknowledged: _published, scheduled by paho's thread, runs after this
            # and completes it with the broker's reason code.
            out = self._pending[info.mid] = _Out(info.mid, fut, info, topic, retain)
            if retain:
                self._retained_latest[topic] = out
                self._retained.append(out)
                if previous is not None and self._live(previous):
                    previous.superseded = True
                    self._superseded.append(previous)
            else:
                self._events.append(out)
        return fut

    # ------------------------------------------------------- outgoing queue bound

    def _live(self, out: _Out) -> bool:
        return self._pending.get(out.mid) is out

    def _make_room(self, previous: _Out | None) -> None:
        """The queue is full: drop one waiting publish (the module's policy)."""
        if previous is not None and self._live(previous) and self._drop(previous, "superseded"):
            return  # the retained message the one coming replaces
        if self._drop_first(self._superseded, "superseded"):
            return
        if self._drop_first(self._retained, "retained"):
            return
        self._drop_first(self._events, "event")

    def _drop_first(self, order: deque[_Out], kind: str) -> bool:
        """Drop the oldest droppable publish in ``order``. Only publishes on the wire
        (at most paho's in-flight window) can be ahead of it."""
        while order and not self._live(order[0]):
            order.popleft()  # acknowledged or dropped since
        for i, out in enumerate(order):
            if not self._live(out) or (kind == "retained" and out.superseded):
                continue  # (a superseded one is dropped, and counted, as such)
            if self._drop(out, kind):
                del order[i]
                return True
        return False

    def _drop(self, out: _Out, kind: str) -> bool:
        """Take a publish out of paho's store unless it is on the wire; fail its future."""
        p = self._paho
        with p._out_message_mutex:
            m = p._out_messages.get(out.mid)
            if m is None or m.info is not out.info:
                return False  # acknowledged just now: _published is on its way
            if m.state not in (paho.mqtt_ms_publish, paho.mqtt_ms_queued):
                return False  # sent on this connection: its PUBACK is coming
            del p._out_messages[out.mid]
            m.info.rc = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
            m.info._set_as_published()  # (anyone waiting on it wakes up)
        self._forget(out)
        if not self._overflowing:
            self._overflowing = True
            log.warning(
                "outgoing queue full (mqtt.max_queued %d publishes waiting for the broker): "
                "dropping superseded retained messages first, then the oldest retained, "
                "then the oldest events (counted; a summary when the broker is back)",
                self.max_queued,
            )
        self.dropped[kind] += 1
        if not out.fut.done():
            out.fut.set_exception(PublishError(f"dropped: outgoing queue full ({kind})"))
        return True

    def _forget(self, out: _Out) -> None:
        del self._pending[out.mid]
        if self._retained_latest.get(out.topic) is out:
            del self._retained_latest[out.topic]

    def ack(self, msg: Message) -> None:
        """Acknowledge a QoS > 0 message, on the connection it came on only."""
        if msg.qos > 0:
            with self._gen_lock:
                if msg.gen != self.generation:
                    self.stale_acks += 1
                    return
                self._paho.ack(msg.mid, msg.qos)

    def ack_many(self, msgs: Iterable[Message]) -> None:
        """``ack`` for each, in order; the QoS 1 ones go out as one write."""
        run: list[int] = []
        with self._gen_lock:  # (no reconnect in between: all on this connection or none)
            gen = self.generation
            for msg in msgs:
                if msg.qos == 0:
                    continue
                if msg.gen != gen:
                    self.stale_acks += 1
                elif msg.qos == 1:
                    run.append(msg.mid)
                else:
                    self._paho.puback_many(run)
                    run = []
                    self._paho.ack(msg.mid, msg.qos)
            self._paho.puback_many(run)

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    async def stop(self, timeout: float = 2.0) -> None:
        """Publish ``offline``, wait for outstanding publishes (bounded), disconnect."""
        if self._loop is None:
            return
        if self._session_timer is not None:
            self._session_timer.cancel()
        if self.connected.is_set():
            waiting = [out.fut for out in self._pending.values()]
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
        for out in self._pending.values():
            if not out.fut.done():
                out.fut.set_exception(PublishError("client stopped"))
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

    def _new_connection(self) -> None:
        """paho's thread, before each connection attempt: what was received until now can
        no longer be acknowledged (see :meth:`ack`)."""
        with self._gen_lock:
            self.generation += 1

    def _on_message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        self._route(
            Message(m.topic, bytes(m.payload), m.qos, bool(m.retain), m.mid, self.generation)
        )

    def _on_publish_received(
        self, topic: str, payload: bytes, qos: int, retain: bool, mid: int
    ) -> None:
        self._route(Message(topic, payload, qos, retain, mid, self.generation))

    def _route(self, msg: Message) -> None:
        target = self._routes.get(msg.topic)
        if target is None:
            target = self.ack  # not ours (a stale subscription kept by the session)
            for topic_filter, _qos, deliver in self._subs:
                if paho.topic_matches_sub(topic_filter, msg.topic):
                    target = deliver
                    break
            if len(self._routes) >= ROUTES_CACHED:
                self._routes.clear()
            self._routes[msg.topic] = target
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
        self, client: paho.Client, _u: object, mid: int, reason: object, _props: object
    ) -> None:
        # paho calls this before it forgets the message: which one this PUBACK completes
        m = client._out_messages.get(mid)
        refused = str(reason).lower() if getattr(reason, "is_failure", False) else None
        self._call(self._published, mid, None if m is None else m.info, refused)

    def _published(self, mid: int, info: paho.MQTTMessageInfo | None, refused: str | None) -> None:
        out = self._pending.get(mid)
        if out is None or out.info is not info:
            return  # not one of ours (QoS 0, the status topic), or no longer waiting
        self._forget(out)
        for order in (self._events, self._retained, self._superseded):
            while order and not self._live(order[0]):
                order.popleft()  # (PUBACKs come in publish order: this keeps them short)
        if out.fut.done():
            return
        if refused is not None:
            log.warning("the broker refused a publish to %s: %s", out.topic, refused)
            out.fut.set_exception(PublishError(f"refused by the broker: {refused}"))
        else:
            out.fut.set_result(None)

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

    def _report_drops(self) -> None:
        """Connected: what the full queue dropped since the last report, in one line."""
        self._overflowing = False
        new = self.dropped - self._dropped_reported
        if new:
            self._dropped_reported = Counter(self.dropped)
            log.warning(
                "%d publish(es) dropped while the broker was away or slow (QoS 1: "
                "mqtt.max_queued %d full; QoS 0: never kept while disconnected): %s",
                sum(new.values()),
                self.max_queued,
                ", ".join(f"{n} {k}" for k, n in sorted(new.items())),
            )
