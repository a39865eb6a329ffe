"""paho's network path made fast (:class:`_Paho`, :class:`_BufferedSocket`), and the
start-up check that the installed paho-mqtt is one it was tested with
(:func:`check_paho`)."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

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
