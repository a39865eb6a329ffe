"""The live ward behind the web station: MQTT topics and the store in, page updates out.

Contract:

* :class:`Live` subscribes (QoS 0, like ``vitalmon watch``) to the daemon's topics --
  readings, alert events, retained bed state, retained NEWS2 -- and feeds them to the
  pure :class:`~monitor.views.ward.Ward`; it reads the store's audit table and admitted
  beds (read-only) once a second, which also tells it each bed's pause.
* Pages subscribe with :meth:`Live.subscribe`: they get a snapshot first, then every
  ``web.push_interval_s`` one message with the beds that changed and the new audit
  rows, serialised once for all pages. A page that does not keep up (its bounded queue
  is full) is dropped; its browser reconnects and gets a fresh snapshot.
* :meth:`Live.command` publishes an operator command (``vitalmon/cmd/...``, on
  ``.../<mqtt.username>`` when the station has a broker user, so the daemon records the
  verified identity) with ``by`` the logged-in user, and waits for the daemon's answer:
  the ``acknowledged`` event, or the audit row of a pause/admission/discharge, or the
  dead letter refusing it (:class:`Refused`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from monitor.config import Config
from monitor.mqtt import Client, Message
from monitor.sinks.sqlite.schema import connect
from monitor.sources.command_payloads import (
    ACK_TOPIC,
    ADMIT_TOPIC,
    DISCHARGE_TOPIC,
    PAUSE_TOPIC,
    verified_topic,
)
from monitor.sources.deadletter import TOPIC as DEADLETTER_TOPIC
from monitor.views.ward import SHOWN, BedView, Ward

log = logging.getLogger("vitalmon.web.live")

TOPICS = {
    "ack": ACK_TOPIC,
    "pause": PAUSE_TOPIC,
    "admit": ADMIT_TOPIC,
    "discharge": DISCHARGE_TOPIC,
}
AUDIT_KEPT = 200
#: A page's queue: this many pushes waiting and it is dropped (it reconnects).
PAGE_QUEUE = 32
#: After the first change since the last push, wait this long for the rest of its burst.
DEBOUNCE_S = 0.03


class Refused(Exception):
    """The daemon refused a command (its dead-letter reason and detail)."""


@dataclass(slots=True)
class _StoreRead:
    rows: list[tuple[Any, ...]]
    admissions: list[tuple[Any, ...]] | None
    pauses: list[tuple[Any, ...]]
    opened_at: float | None


@dataclass(slots=True)
class _Pending:
    kind: str
    topic: str
    body: dict[str, Any]
    sent: float
    answer: asyncio.Future[dict[str, Any]]


class Live:
    def __init__(self, cfg: Config, store_path: str | None) -> None:
        self.cfg = cfg
        self.store_path = store_path
        self.ward = Ward(cfg)
        self.client = Client(
            cfg.mqtt, persistent=False, client_id=f"{cfg.mqtt.client_id}-web-{os.getpid()}"
        )
        for topic in self.ward.topics:
            self.client.subscribe(topic, 0, self._deliver)
        self.client.subscribe(DEADLETTER_TOPIC, 0, self._dead_letter)
        self._alert_topic = self.ward._alerts
        #: (ward, bed) -> wall clock of its latest reading here
        self.seen: dict[tuple[str, str], float] = {}
        #: (ward, bed) -> wall clock its pause ends
        self.paused: dict[tuple[str, str], float] = {}
        #: (ward, bed) -> {"patient", "profile", "at", "by"}
        self.admitted: dict[tuple[str, str], dict[str, Any]] = {}
        self.audit: deque[dict[str, Any]] = deque(maxlen=AUDIT_KEPT)
        #: the last audit row read (-1: none yet, the first read takes the latest ones)
        self._audit_after = -1
        #: when the daemon last opened the store (its start), and when each pause began
        self.daemon_started: float | None = None
        self._paused_at: dict[tuple[str, str], float] = {}
        #: the store's one thread (its connection lives there)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vitalmon-web-store")
        self._dirty: set[tuple[str, str]] = set()
        self._new_audit: list[dict[str, Any]] = []
        self._pages: set[asyncio.Queue[str | None]] = set()
        self._pending: list[_Pending] = []
        self._store: sqlite3.Connection | None = None
        self.store_error: str | None = None
        self.pushes = 0
        #: set when something changed: the next push comes DEBOUNCE_S later (so a burst
        #: of messages goes out together), then at most every ``web.push_interval_s``
        self._wake = asyncio.Event()
        #: an alarm changed: pushed after DEBOUNCE_S, whatever the interval
        self._urgent = False

    # ------------------------------------------------------------------ MQTT in

    def _deliver(self, msg: Message) -> None:
        now = time.time()
        alarm = bool(self._alert_topic.match(msg.topic) or self.ward._state.match(msg.topic))
        if alarm and self._pending:
            self._answer_event(msg.payload)
        changed = self.ward.feed(msg.topic, msg.payload, now)
        if changed is None:
            return
        if any(p.match(msg.topic) for p, _ in self.ward._readings):
            self.seen[changed] = now
        self._dirty.add(changed)
        self._urgent = self._urgent or alarm
        self._wake.set()

    def _answer_event(self, payload: bytes) -> None:
        with contextlib.suppress(ValueError, RecursionError):
            doc = json.loads(payload)
            if not isinstance(doc, dict) or doc.get("state") != "acknowledged":
                return
            for p in self._pending:
                if p.kind == "ack" and doc.get("id") == p.body["id"] and not p.answer.done():
                    p.answer.set_result(doc)

    def _dead_letter(self, msg: Message) -> None:
        """A refusal answers a pending command only if it echoes that command: the same
        topic and the same fields (id or ward and bed, and by), compared exactly."""
        if not self._pending:
            return
        with contextlib.suppress(ValueError, RecursionError):
            doc = json.loads(msg.payload)
            if not isinstance(doc, dict):
                return
            try:
                echoed = json.loads(str(doc.get("payload", "")))
            except (ValueError, RecursionError):
                return
            if not isinstance(echoed, dict):
                return
            for p in self._pending:
                if doc.get("topic") != p.topic or p.answer.done():
                    continue
                keys = [k for k in ("id", "ward", "bed", "by") if k in p.body]
                if all(echoed.get(k) == p.body[k] for k in keys):
                    p.answer.set_exception(
                        Refused(f"{doc.get('reason', 'refused')}: {doc.get('detail', '')}")
                    )

    # ---------------------------------------------------------------- the store

    def _read_store(self, after: int, now: float) -> _StoreRead:
        """In the store's own thread (a locked or slow store never stalls the pages):
        the audit rows after ``after`` (at start: the last AUDIT_KEPT), the admissions
        when they may have changed, the pauses still running at start, and when the
        daemon last opened the store."""
        if self._store is None:
            assert self.store_path
            self._store = connect(self.store_path, readonly=True)
        conn = self._store
        first = after < 0
        if first:
            row = conn.execute("SELECT max(rowid) FROM audit").fetchone()
            after = max(0, int(row[0] or 0) - AUDIT_KEPT)
        rows = conn.execute(
            "SELECT rowid, at, action, by, alert_id, ward, bed, detail, identity"
            " FROM audit WHERE rowid > ? ORDER BY rowid",
            (after,),
        ).fetchall()
        admissions = None
        if first or any(r[2] in ("admit", "discharge") for r in rows):
            admissions = conn.execute(
                "SELECT ward, bed, patient, profile, at, by FROM beds"
            ).fetchall()
        pauses = []
        if first:
            since = now - max(self.cfg.alerts.pause_max_s, 1.0)
            pauses = conn.execute(
                "SELECT ward, bed, at, detail FROM audit WHERE action = 'pause' AND at >= ?",
                (since,),
            ).fetchall()
        opened = conn.execute("SELECT value FROM meta WHERE key = 'opened_at'").fetchone()
        return _StoreRead(rows, admissions, pauses, opened[0] if opened else None)

    async def poll_store(self, now: float | None = None) -> None:
        """New audit rows (and from them pauses, admissions), from the store."""
        if not self.store_path:
            return
        t = time.time() if now is None else now
        loop = asyncio.get_running_loop()
        try:
            got = await loop.run_in_executor(self._executor, self._read_store, self._audit_after, t)
        except (sqlite3.Error, OSError) as exc:
            self.store_error = str(exc)
            return
        self.store_error = None
        if got.opened_at is not None and got.opened_at != self.daemon_started:
            self.daemon_started = got.opened_at
            # the daemon (re)started: its pauses lived in its memory and are gone
            for key, since in list(self._paused_at.items()):
                if since < got.opened_at:
                    self.paused.pop(key, None)
                    del self._paused_at[key]
                    self._dirty.add(key)
        if got.admissions is not None:
            self._admissions(got.admissions)
        for ward, bed, at, detail in got.pauses:
            self._pause_row(ward, bed, at, detail)
        first = self._audit_after < 0
        self._audit_after = max(self._audit_after, 0)
        for rowid, at, action, by, alert_id, ward, bed, detail, identity in got.rows:
            self._audit_after = rowid
            row = {
                "at": at,
                "action": action,
                "by": by,
                "alert_id": alert_id,
                "ward": ward,
                "bed": bed,
                "detail": detail,
                "identity": identity,
            }
            self.audit.append(row)
            self._new_audit.append(row)
            if action == "pause" and not first:
                self._pause_row(ward, bed, at, detail)
            self._answer_audit(row)

    def _pause_row(self, ward: str, bed: str, at: float, detail: str) -> None:
        if self.daemon_started is not None and at < self.daemon_started:
            return  # (asked of a daemon that has restarted since: not in force)
        try:
            seconds = float(str(detail).split()[0])
        except (ValueError, IndexError):
            return
        until = at + seconds
        if until > self.paused.get((ward, bed), 0.0):
            self.paused[(ward, bed)] = until
            self._paused_at[(ward, bed)] = at
            self._dirty.add((ward, bed))

    def _admissions(self, rows: list[tuple[Any, ...]]) -> None:
        admitted = {
            (w, b): {"patient": p, "profile": prof, "at": at, "by": by}
            for w, b, p, prof, at, by in rows
        }
        for key in set(admitted) ^ set(self.admitted):
            self._dirty.add(key)
        for key, a in admitted.items():
            if self.admitted.get(key) != a:
                self._dirty.add(key)
        self.admitted = admitted

    def _answer_audit(self, row: dict[str, Any]) -> None:
        for p in self._pending:
            if p.answer.done() or p.kind == "ack" or row["action"] != p.kind:
                continue
            if (row["ward"], row["bed"], row["by"]) == (
                p.body["ward"],
                p.body["bed"],
                p.body["by"],
            ):
                p.answer.set_result(row)

    # ------------------------------------------------------------------ pages

    def bed(self, b: BedView, now: float) -> dict[str, Any]:
        key = (b.ward, b.bed)
        until = self.paused.get(key)
        adm = self.admitted.get(key)
        patient = adm["patient"] if adm else None
        if patient is None:
            patient = next((a.get("patient") for a in b.alerts.values() if a.get("patient")), None)
        return {
            "ward": b.ward,
            "bed": b.bed,
            "patient": patient,
            "profile": adm.get("profile") if adm else None,
            "vitals": {
                v: [b.latest(v), b.trend(v).strip()] for v in SHOWN if b.latest(v) is not None
            },
            "news2": b.news2,
            "alerts": sorted(b.alerts.values(), key=lambda a: str(a.get("started_at"))),
            "seen": self.seen.get(key),
            "last_ts": b.last_ts or None,
            "paused_until": until if until is not None and until > now else None,
        }

    def snapshot(self, now: float | None = None) -> str:
        t = time.time() if now is None else now
        return _json(
            {
                "now": t,
                "stale_after_s": self.cfg.rules.stale_after_s,
                "beds": [self.bed(b, t) for b in self.ward.beds.values()],
                "audit": list(self.audit)[-50:],
                "connected": self.client.connected.is_set(),
            }
        )

    def subscribe(self) -> asyncio.Queue[str | None]:
        q: asyncio.Queue[str | None] = asyncio.Queue(PAGE_QUEUE)
        q.put_nowait(self.snapshot())
        self._pages.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[str | None]) -> None:
        self._pages.discard(q)

    def push(self, now: float | None = None) -> None:
        """Send the pages what changed since the last push (one serialisation)."""
        t = time.time() if now is None else now
        for key, until in list(self.paused.items()):
            if until <= t:
                del self.paused[key]
                self._paused_at.pop(key, None)
                self._dirty.add(key)
        if not self._dirty and not self._new_audit:
            return
        beds = [self.ward.bed(*k) for k in self._dirty]
        msg = _json(
            {
                "now": t,
                "beds": [self.bed(b, t) for b in beds],
                "audit": self._new_audit,
                "connected": self.client.connected.is_set(),
            }
        )
        self._dirty = set()
        self._new_audit = []
        self.pushes += 1
        for q in list(self._pages):
            try:
                q.put_nowait(msg)
            except asyncio.QueueFull:
                self._pages.discard(q)
                with contextlib.suppress(asyncio.QueueFull):
                    q.get_nowait()
                    q.put_nowait(None)  # (the page's stream ends; its browser reconnects)

    # --------------------------------------------------------------- commands

    async def command(
        self, kind: str, body: dict[str, Any], by: str, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Publish a command as ``by`` and wait for the daemon's answer (see module doc).
        Raises :class:`Refused`, TimeoutError, or ConnectionError when the station is
        not connected to the broker. The command expires at the broker before
        ``timeout`` (MQTT 5): one the user was told had no answer never applies later,
        when the daemon comes back."""
        if not self.client.connected.is_set():
            raise ConnectionError("the station is not connected to the broker")
        base = TOPICS[kind]
        user = self.cfg.mqtt.username
        topic = verified_topic(base, user) if user else base
        body = {**body, "by": by}
        loop = asyncio.get_running_loop()
        p = _Pending(kind, topic, body, time.time(), loop.create_future())
        self._pending.append(p)
        try:
            # the broker counts expiry in whole seconds (a message may outlive its interval
            # by up to a second): it is gone before the user is told "no answer"
            expiry = max(1.0, timeout - 2.0)
            await asyncio.wait_for(
                self.client.publish(topic, _json(body), qos=1, expiry_s=expiry), timeout
            )
            return await asyncio.wait_for(asyncio.shield(p.answer), timeout)
        finally:
            self._pending.remove(p)
            if not p.answer.done():
                p.answer.cancel()

    # ------------------------------------------------------------------- tasks

    async def run(self, stop: asyncio.Event, on_tick: Callable[[], object] | None = None) -> None:
        """Connects, then polls the store (every second) and pushes to the pages what
        changed until ``stop``: a change of alarms DEBOUNCE_S after it came; readings
        DEBOUNCE_S after the first of a burst, with pushes at least
        ``web.push_interval_s`` apart (a ward's steady stream goes in one message per
        interval; an alarm never waits for it)."""
        self.client.start()
        interval = self.cfg.web.push_interval_s
        next_poll = 0.0
        last_push = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_poll:
                    await self.poll_store(time.time())
                    next_poll = now + min(1.0, interval * 2)
                if self._dirty or self._new_audit:
                    due = last_push + interval - now
                    await asyncio.sleep(DEBOUNCE_S if self._urgent else max(DEBOUNCE_S, due))
                    self._wake.clear()
                    self._urgent = False
                    self.push(time.time())
                    last_push = time.monotonic()
                elif self.paused:
                    self.push(time.time())  # (pauses that ended)
                if on_tick is not None:
                    on_tick()
                self._wake.clear()
                if self._dirty or self._new_audit:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        _first(stop, self._wake), max(0.05, next_poll - time.monotonic())
                    )
        finally:
            for q in list(self._pages):
                with contextlib.suppress(asyncio.QueueFull):
                    q.put_nowait(None)
            self._pages.clear()
            await self.client.stop(timeout=1.0)
            store, self._store = self._store, None
            if store is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, store.close)
            self._executor.shutdown(wait=False)


async def _first(*events: asyncio.Event) -> None:
    """Until one of ``events`` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def _json(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str)
