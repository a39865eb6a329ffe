"""Messages out: :meth:`~monitor.mqtt.Client.publish` futures completed by the broker's
PUBACK (of exactly the message paho matched it to), and the bound of the outgoing queue
with its drop policy (superseded retained first, then the oldest retained, then the
oldest events)."""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from monitor.mqtt.base import _ClientBase, _Out, fail, log


class _Publishing(_ClientBase):
    """Publish futures and the outgoing queue bound."""

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 1,
        retain: bool = False,
        expiry_s: float | None = None,
    ) -> asyncio.Future[None]:
        """Queue a message; the future completes when the broker has it. ``expiry_s``
        (MQTT 5 only; ignored on 3.1.1): the broker drops it if it cannot deliver it
        that soon (a command that would otherwise apply when nobody expects it)."""
        assert self._loop is not None, "start() first"
        fut: asyncio.Future[None] = self._loop.create_future()
        if self._stopping.is_set():
            fail(fut, "client stopped")
            return fut
        previous = self._retained_latest.get(topic) if retain and qos > 0 else None
        if qos > 0 and len(self._pending) >= self.max_queued:
            self._make_room(previous)
        props = None
        if expiry_s is not None and self._paho._protocol == paho.MQTTv5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = max(1, math.ceil(expiry_s))
        info = self._paho.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            fail(fut, paho.error_string(info.rc))
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
            fail(out.fut, f"dropped: outgoing queue full ({kind})")
        return True

    def _forget(self, out: _Out) -> None:
        del self._pending[out.mid]
        if self._retained_latest.get(out.topic) is out:
            del self._retained_latest[out.topic]

    @property
    def outstanding(self) -> int:
        return len(self._pending)

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
            fail(out.fut, f"refused by the broker: {refused}")
        else:
            out.fut.set_result(None)

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
