"""What the parts of :class:`~monitor.mqtt.Client` share: the loggers, the constants,
:class:`Message`, a publish waiting for its PUBACK (:class:`_Out`), :class:`PublishError`,
and the client's state (:class:`_ClientBase`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as paho

from monitor.config import MqttConfig
from monitor.mqtt.fastpath import _Paho

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


class PublishError(Exception):
    """A publish could not be handed to the broker."""


def fail(fut: asyncio.Future[None], why: str) -> None:
    """Fail a publish's future with :class:`PublishError` ``why``. Whoever awaits it gets
    the error; a publish nobody awaits any more (its publisher cancelled at shutdown, a
    retained state superseded) is counted and logged by the client, not reported again
    by asyncio as "Future exception was never retrieved"."""
    fut.set_exception(PublishError(why))
    fut.exception()  # (marks it retrieved; awaiting it still raises)


class _ClientBase:
    """The state of a :class:`~monitor.mqtt.Client` (set in its ``__init__``, documented
    there), as its parts see it, and the hop from paho's thread into the event loop."""

    cfg: MqttConfig
    persistent: bool
    client_id: str
    status_topic: str
    connected: asyncio.Event
    disconnected: asyncio.Event
    reconnects: int
    _subs: list[tuple[str, int, Deliver]]
    _routes: dict[str, Deliver]
    _loop: asyncio.AbstractEventLoop | None
    _pending: dict[int, _Out]
    _superseded: deque[_Out]
    _retained: deque[_Out]
    _events: deque[_Out]
    _retained_latest: dict[str, _Out]
    max_queued: int
    dropped: Counter[str]
    _dropped_reported: Counter[str]
    _overflowing: bool
    stale_acks: int
    generation: int
    _gen_lock: threading.Lock
    on_condition: Callable[[str, str, bool, str], None] | None
    session_lost_hold_s: float
    _had_session: bool
    _session_alarm: bool
    _session_timer: asyncio.TimerHandle | None
    _suback_mids: set[int]
    _attempt: int
    _failures: int
    _refused: bool
    _up: bool
    _stopping: threading.Event
    #: set first thing in stop(): no ``online`` is published from then on
    _closing: threading.Event
    _inbox: deque[tuple[Deliver, Message]]
    _inbox_lock: threading.Lock
    _drain_scheduled: bool
    _v5: bool
    _paho: _Paho

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closed since the check
                loop.call_soon_threadsafe(fn, *args)
