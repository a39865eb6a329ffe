"""The MQTT boundary: the only package that imports paho-mqtt.

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

The package: :mod:`~monitor.mqtt.client` (:class:`Client`), its parts
:mod:`~monitor.mqtt.connection` (connecting, reconnecting, the session),
:mod:`~monitor.mqtt.inbound` (delivery and acknowledgement) and
:mod:`~monitor.mqtt.publish` (publish futures, the outgoing queue bound),
:mod:`~monitor.mqtt.fastpath` (paho's network path, :func:`check_paho`),
:mod:`~monitor.mqtt.tls` (TLS context, broker password) and :mod:`~monitor.mqtt.base`
(messages, constants, loggers).
"""

from __future__ import annotations

from monitor.mqtt.base import (
    MAX_INFLIGHT,
    RECEIVE_MAXIMUM,
    ROUTES_CACHED,
    SESSION_LOST,
    SESSION_LOST_HOLD_S,
    STATUS_TOPIC,
    Deliver,
    Message,
    PublishError,
    log,
    paho_log,
)
from monitor.mqtt.client import Client
from monitor.mqtt.fastpath import (
    LOOP_READ_CHUNKS,
    RECV_CHUNK,
    TESTED_PAHO,
    _BufferedSocket,
    _Paho,
    check_paho,
)
from monitor.mqtt.tls import broker_password, tls_context

__all__ = [
    "LOOP_READ_CHUNKS",
    "MAX_INFLIGHT",
    "RECEIVE_MAXIMUM",
    "RECV_CHUNK",
    "ROUTES_CACHED",
    "SESSION_LOST",
    "SESSION_LOST_HOLD_S",
    "STATUS_TOPIC",
    "TESTED_PAHO",
    "Client",
    "Deliver",
    "Message",
    "PublishError",
    "_BufferedSocket",
    "_Paho",
    "broker_password",
    "check_paho",
    "log",
    "paho_log",
    "tls_context",
]
