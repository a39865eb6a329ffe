"""HL7 v2 over MLLP: a central station or an integration engine pushes ORU^R01 (and
IHE PCD-04 ORU^R40 alarms) here.

Contract (see :mod:`monitor.sources`): ``run(emit, reject)`` listens on ``listen``
(``asyncio.start_server``; ``port`` is the port actually bound, so ``...:0`` works where
the config allows it) and serves each connection with its own
:class:`~monitor.sources.devices.MllpFramer` (the serial source's, for ``format: hl7``)
and :class:`~monitor.sources.devices.hl7.Hl7Parser` (``bind="pv1"``, the configured clock).
Every message is one :class:`~monitor.sources.Batch`, emitted in order with
back-pressure (while the engine is busy the connection is not read: TCP holds the
sender).

**ACK after commit.** A message with readings, device statuses or device alarm reports
(every valid ORU^R01 has one: the device's alarms and INOPs, possibly none) is
acknowledged ``AA`` only once its batch is committed to the journal: the journal calls
the batch's ``done`` (in the event loop today; ``done`` hops to the loop with
``call_soon_threadsafe`` all the same, so a journal committing in another thread would
be safe too). A message with nothing to store is acknowledged at once: ``AA`` when it
was a valid ORU^R01 (refused values go to the dead letters, the ACK text counts them),
``AE`` with the reason when it was not a usable ORU^R01 (another message type, not
HL7). ACKs leave a connection in the order its messages came, whatever the order of
commits. A message not committed
(the daemon dies, or is stopped past its budget) is never acknowledged: the sender
resends it, and the store absorbs what it already has.

**Bounded.** At most ``max_connections`` connections, and at most
``max_connections_per_peer`` from one peer address (so one peer holding connections open
cannot lock the other senders out): one more is closed at once and counted ``refused``
(``refused_peer`` when the peer's own bound refused it), logged once a minute per peer
with how many were refused since. A connection that has not sent a complete message
``first_message_timeout_s`` after it was accepted is closed (``no_message_closed``:
a port scan, a client that connects and says nothing, bytes trickled without an end);
one that has sent a message and then no data for ``idle_timeout_s``, with no ACK
outstanding, is closed (``idle_closed``). A frame over ``max_message_bytes`` is dropped
(``too_long``, dead letter ``too_large``; it gets no ACK); bytes outside frames are
skipped (``garbage``). A peer that disconnects mid-message loses only that message (never
ACKed, so resent); what it sent before is emitted and committed as usual.

**A frame cut short.** A start byte (``0x0B``) always starts a new frame: a frame that
never got its end (``0x1C 0x0D``; a sender that gave up on a message mid-way and sent the
next) is discarded, counted ``truncated`` and dead-lettered ``truncated_frame`` (its size
and control id, never its content), logged once per connection; the message after it is
taken in and ACKed with its own control id. The discarded one is never ACKed: its sender
resends it.

**Where a message without location goes.** ``beds`` (PV1-3 or MSH-4 -> ``ward/bed``),
else PV1-3; a message with neither goes to ward ``ward`` (config), bed = the sender's IP
address (stable per monitor, never a mix of monitors behind one name), and a warning is
logged once per connection.

**Unmapped observations.** OBX segments that map to no vital are counted by code
(:class:`~monitor.sources.unmapped.Unmapped`: ``unmapped.counts``, exported as
``vitalmon_hl7_unmapped_observations_total{code}``; a log line at most once a minute).

``stop()``: no new connection; each connection finishes the message it is emitting, then
waits for the ACKs of what it emitted (the engine and the journal are still running at
that point of the shutdown) and closes; ``run`` returns. Frames read but not yet taken
in are not acknowledged (resent). Logs carry peers, control ids and counts, never
patient identifiers.

The package: :mod:`~monitor.sources.hl7mllp.source` (the listener, registered for
``type: hl7-mllp``) and :mod:`~monitor.sources.hl7mllp.connection` (a connection's ACKs,
the log throttling per peer).
"""

from __future__ import annotations

from monitor.sources.devices import RestartingMllpFramer
from monitor.sources.hl7mllp.connection import (
    PEER_LOG_EVERY_S,
    PEER_LOG_MAX,
    _close,
    _committed,
    _Conn,
    _PeerLog,
    _Pending,
)
from monitor.sources.hl7mllp.source import (
    DEFAULT_DEVICE,
    LISTEN_RETRY_MAX_S,
    LISTEN_RETRY_MIN_S,
    READ_CHUNK,
    TOPIC,
    Hl7MllpSource,
    _build,
    _summary,
    log,
)

__all__ = [
    "DEFAULT_DEVICE",
    "LISTEN_RETRY_MAX_S",
    "LISTEN_RETRY_MIN_S",
    "PEER_LOG_EVERY_S",
    "PEER_LOG_MAX",
    "READ_CHUNK",
    "TOPIC",
    "Hl7MllpSource",
    "RestartingMllpFramer",
    "_Conn",
    "_PeerLog",
    "_Pending",
    "_build",
    "_close",
    "_committed",
    "_summary",
    "log",
]
