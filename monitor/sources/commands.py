"""Operator commands over MQTT: ``vitalmon/cmd/ack`` ``{"id", "by"}``,
``vitalmon/cmd/pause`` ``{"ward", "bed", "seconds", "by"}``, ``vitalmon/cmd/admit``
``{"ward", "bed", "patient", "profile"?, "by"?}`` and ``vitalmon/cmd/discharge``
``{"ward", "bed", "patient"?, "by"?}``.

Admissions are committed to the store before they take effect (a restart keeps them),
then go through the engine's queue, in order with the readings. A discharge naming a
patient other than the one admitted is refused (``wrong_patient``): nobody resets the
wrong bed by a typo.

**Who sent it.** MQTT does not tell a subscriber who published a message, so the ``by``
of a command is only what the sender claims. Each command is also taken on
``vitalmon/cmd/<action>/<username>`` (e.g. ``vitalmon/cmd/ack/kim``): with the broker's
ACL line ``pattern write vitalmon/cmd/+/%u``, only the client logged in as ``kim`` can
publish there, so the user name is broker-verified. ``by`` is optional there (default:
the user name). The audit row records both, ``by`` (claimed) and ``identity`` (the
verified user name, null on the plain topics), and so does the ``acknowledged`` event
(``ack_by``, ``ack_identity``). The plain topics stay as they are (a fixed contract).

An acknowledgement goes to the engine, which owns the alert lifecycle and applies it in
queue order; the resulting event (``acknowledged``) goes down the pipeline like any
other, so it is stored (audit trail) and published in order. A command that cannot
apply is refused to the dead-letter topic with its reason (``bad_command``,
``unknown_alert``, ``already_acknowledged``), never silently ignored. In a cluster
(a JetStream source) every instance takes every command; an acknowledgement of an alert
another instance owns is left in the cluster for that one (``elsewhere``), which
applies it even if it is only taking the alert's partition on; not refused here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol

from monitor.config import Config
from monitor.model import Admission, AlertEvent, BedCommand, Rejection
from monitor.mqtt import Client, Message
from monitor.pipeline import Ack, UnknownAlert, storage_error
from monitor.sources import Batch, ClusterKeeper, Emit, Reject
from monitor.sources.command_payloads import (
    ACK_TOPIC,
    ADMIT_TOPIC,
    DISCHARGE_TOPIC,
    PAUSE_TOPIC,
    check_vacant,
    parse_ack,
    parse_admit,
    parse_discharge,
    parse_pause,
    split_topic,
    verified_topic,
)
from monitor.sources.deadletter import TOPIC as DEADLETTER_TOPIC
from monitor.sources.mqtt import TopicTemplate

log = logging.getLogger("vitalmon.source.commands")

__all__ = [
    "ACK_TOPIC",
    "ADMIT_TOPIC",
    "DISCHARGE_TOPIC",
    "PAUSE_TOPIC",
    "CommandSource",
    "send_ack",
]


class Beds(Protocol):
    """The engine's view of admissions (checked before a command is accepted)."""

    admissions: dict[tuple[str, str], Admission]

    def check_admit(self, a: Admission) -> None: ...


class Admissions(Protocol):
    async def save_admission(self, a: Admission | None, ward: str, bed: str) -> None: ...


class Pauses(Protocol):
    def pause(self, ward: str, bed: str, seconds: float, now: float) -> float: ...


class KeptPauses:
    """Pauses applied by ``pauses`` (the alert publisher) and kept in the cluster by
    ``keeper`` for a partition's next owner (a JetStream source's state)."""

    def __init__(self, pauses: Pauses, keeper: ClusterKeeper) -> None:
        self.pauses, self.keeper = pauses, keeper

    def pause(self, ward: str, bed: str, seconds: float, now: float) -> float:
        until = self.pauses.pause(ward, bed, seconds, now)
        self.keeper.keep_pause(ward, bed, until)
        return until


class CommandSource:
    def __init__(
        self,
        client: Client,
        *,
        pauses: Pauses | None = None,
        audit: Callable[[list[tuple[object, ...]]], Awaitable[None]] | None = None,
        pause_max_s: float = 120.0,
        beds: Beds | None = None,
        store: Admissions | None = None,
        pseudonymize: Callable[[str], str | None] | None = None,
        elsewhere: Callable[[str, str, str | None], Awaitable[bool]] | None = None,
    ) -> None:
        self.name = "commands"
        self.pauses = pauses
        #: An acknowledgement of an alert not open here, handed to the cluster: True if
        #: another instance has it open (it applies it, now or when it takes the alert's
        #: partition on): then not refused here.
        self.elsewhere = elsewhere
        self.beds = beds
        self.store = store
        self._admitted: dict[tuple[str, str], Admission] | None = None
        #: privacy.pseudonymize_patient: patient ids are replaced on arrival, before they
        #: are stored, compared or logged.
        self._pseudo = pseudonymize
        self.audit = audit
        self.pause_max_s = pause_max_s
        self._client = client
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        topics = [ACK_TOPIC]
        if pauses is not None:
            topics.append(PAUSE_TOPIC)
        if beds is not None:
            topics += [ADMIT_TOPIC, DISCHARGE_TOPIC]
        for topic in topics:  # claimed (plain) and broker-verified (/<username>) forms
            client.subscribe(topic, 1, self._inbox.put_nowait)
            client.subscribe(verified_topic(topic, "+"), 1, self._inbox.put_nowait)

    def stop(self) -> None:
        self._inbox.put_nowait(None)

    async def run(self, emit: Emit, reject: Reject) -> None:
        while (msg := await self._inbox.get()) is not None:
            try:
                await self._handle(msg, emit, reject)
            except Exception as exc:  # noqa: BLE001 - one command never stops the daemon
                # (a defect, or input no check foresaw): refused, acknowledged, the next
                # one handled; otherwise the broker would redeliver it after every restart
                reject(
                    Rejection(
                        "bad_command",
                        f"could not be handled ({type(exc).__name__})",
                        msg.topic,
                        msg.payload[:1024],
                    )
                )
                self._client.ack(msg)

    async def _handle(self, msg: Message, emit: Emit, reject: Reject) -> None:
        """One command message: applied or refused, then acknowledged."""
        try:
            topic, identity = split_topic(msg.topic)
        except ValueError as exc:
            reject(Rejection("bad_command", str(exc), msg.topic, msg.payload[:1024]))
        else:
            if topic == PAUSE_TOPIC:
                await self._pause(msg, reject, identity)
            elif topic in (ADMIT_TOPIC, DISCHARGE_TOPIC):
                await self._bed(msg, emit, reject, topic, identity)
            else:
                await self._ack(msg, emit, reject, identity)
        self._client.ack(msg)

    async def _ack(self, msg: Message, emit: Emit, reject: Reject, identity: str | None) -> None:
        try:
            ident, by = parse_ack(msg.payload, identity)
        except ValueError as exc:
            reject(Rejection("bad_command", str(exc), msg.topic, msg.payload[:1024]))
            return
        # the engine owns the lifecycle: it applies the acknowledgement in queue order
        outcome: asyncio.Future[AlertEvent | None] = asyncio.get_running_loop().create_future()
        await emit(Batch([], acks=[Ack(ident, by, identity, outcome)]))
        try:
            event = await outcome
        except UnknownAlert as exc:
            if self.elsewhere is not None and await self.elsewhere(ident, by, identity):
                return  # another instance owns it: its answer
            reject(
                Rejection("unknown_alert", f"no open alert {exc}", msg.topic, msg.payload[:1024])
            )
            return
        if event is None:
            reject(
                Rejection(
                    "already_acknowledged",
                    f"alert {ident} was acknowledged before",
                    msg.topic,
                    msg.payload[:1024],
                )
            )
        else:
            log.info("alert %s acknowledged by %s%s", ident, by, _verified(identity))

    async def _pause(self, msg: Message, reject: Reject, identity: str | None) -> None:
        assert self.pauses is not None
        try:
            ward, bed, seconds, by = parse_pause(msg.payload, self.pause_max_s, identity)
        except ValueError as exc:
            reject(Rejection("bad_command", str(exc), msg.topic, msg.payload[:1024]))
            return
        now = time.time()
        until = self.pauses.pause(ward, bed, seconds, now)
        log.info(
            "alerts of %s/%s paused for %.0f s by %s%s",
            ward,
            bed,
            until - now,
            by,
            _verified(identity),
        )
        if self.audit is not None:
            await self.audit([(now, "pause", by, None, ward, bed, f"{seconds:g} s", identity)])

    async def _bed(
        self, msg: Message, emit: Emit, reject: Reject, topic: str, identity: str | None
    ) -> None:
        assert self.beds is not None
        now = time.time()
        try:
            # the view of admissions includes those accepted here and still queued for
            # the engine: two commands in a row are judged in order
            if self._admitted is None:
                self._admitted = dict(self.beds.admissions)
            if topic == ADMIT_TOPIC:
                a = parse_admit(msg.payload, now, identity)
                if self._pseudo is not None:
                    a = replace(a, patient=self._pseudo(a.patient) or a.patient)
                self.beds.check_admit(a)  # the profile
                check_vacant(self._admitted, a)
                action, saved, detail = "admit", a, f"profile {a.profile or 'of the bed'}"
            else:
                ward, bed, patient, by = parse_discharge(msg.payload, identity)
                if self._pseudo is not None and patient is not None:
                    patient = self._pseudo(patient)
                current = self._admitted.get((ward, bed))
                if patient is not None and (current is None or current.patient != patient):
                    reject(
                        Rejection(
                            "wrong_patient",
                            f"{ward}/{bed} is not occupied by the patient named",
                            msg.topic,
                            msg.payload[:1024],
                        )
                    )
                    return
                a = Admission(ward, bed, current.patient if current else "", None, now, by)
                action, saved, detail = "discharge", None, ""
        except ValueError as exc:
            reject(Rejection("bad_command", str(exc), msg.topic, msg.payload[:1024]))
            return
        if self.store is not None:  # durable first: a refused save changes nothing
            try:
                await self.store.save_admission(saved, a.ward, a.bed)
            except Exception as exc:
                if not storage_error(exc):
                    raise
                why = (
                    f"{action} of {a.ward}/{a.bed} not applied: the store cannot commit "
                    f"({exc}); send it again once the store alarm has resolved"
                )
                reject(Rejection("store_failing", why, msg.topic, msg.payload[:1024]))
                return
        if saved is None:
            self._admitted.pop((a.ward, a.bed), None)
        else:
            self._admitted[(a.ward, a.bed)] = saved
        log.info(
            "bed %s/%s: %s by %s%s %s", a.ward, a.bed, action, a.by, _verified(identity), detail
        )
        if self.audit is not None:
            await self.audit([(now, action, a.by, None, a.ward, a.bed, detail, identity)])
        await emit(Batch([], bed_commands=[BedCommand(action, a)]))


def _verified(identity: str | None) -> str:
    return "" if identity is None else f" (verified: user {identity!r})"


async def send_ack(
    cfg: Config, alert_id: str, by: str, timeout: float = 5.0, verified: bool = False
) -> dict[str, Any]:
    """``vitalmon ack``: publish the command, wait for the daemon's answer.

    ``verified``: on ``vitalmon/cmd/ack/<mqtt.username>``, so that the daemon records the
    broker-verified user name (the broker's ACL must allow it: ``pattern write
    vitalmon/cmd/+/%u``). Returns the ``acknowledged`` alert event; raises LookupError
    with the daemon's reason (dead letter) or TimeoutError when no answer comes.
    """
    topic = ACK_TOPIC
    if verified:
        if not cfg.mqtt.username:
            raise LookupError("a verified acknowledgement needs mqtt.username")
        topic = verified_topic(ACK_TOPIC, cfg.mqtt.username)
    client = Client(cfg.mqtt, persistent=False, client_id=f"{cfg.mqtt.client_id}-ack-{os.getpid()}")
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[dict[str, Any]] = loop.create_future()

    def on_alert(msg: Message) -> None:
        client.ack(msg)
        with contextlib.suppress(ValueError, RecursionError):
            doc = json.loads(msg.payload)
            mine = doc.get("id") == alert_id and doc.get("state") == "acknowledged"
            if mine and not answer.done():
                answer.set_result(doc)

    def on_dead_letter(msg: Message) -> None:
        client.ack(msg)
        with contextlib.suppress(ValueError, RecursionError):
            doc = json.loads(msg.payload)
            mine = doc.get("topic") == topic and alert_id in str(doc.get("payload", ""))
            if mine and not answer.done():
                answer.set_exception(LookupError(f"{doc['reason']}: {doc['detail']}"))

    alerts_filter = TopicTemplate(cfg.alerts.topic, required=()).filter
    client.subscribe(alerts_filter, 1, on_alert)
    client.subscribe(DEADLETTER_TOPIC, 0, on_dead_letter)
    client.start()
    try:
        await asyncio.wait_for(client.connected.wait(), timeout)
        await asyncio.wait_for(
            client.publish(topic, json.dumps({"id": alert_id, "by": by}), qos=1), timeout
        )
        return await asyncio.wait_for(answer, timeout)
    finally:
        await client.stop()
