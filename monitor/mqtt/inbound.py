"""Messages in: routed to their subscriber's ``deliver`` in the event loop, one wake-up
per burst, and acknowledged (manual acks) only on the connection they came on."""

from __future__ import annotations

from collections.abc import Iterable

import paho.mqtt.client as paho

from monitor.mqtt.base import ROUTES_CACHED, Message, _ClientBase


class _Inbound(_ClientBase):
    """Delivery and acknowledgement of received messages."""

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
