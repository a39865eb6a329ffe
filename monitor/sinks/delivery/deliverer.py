"""A route's deliverer: its outbox rows, one at a time in ``ev`` order, to its receiver.

Contract of :class:`Deliverer`:

* ``open()`` counts the route's open rows (its backlog) in the journal.
* ``run()`` takes the route's ``pending`` rows in ``ev`` order and hands each event to
  the :class:`~monitor.sinks.delivery.Receiver` with its idempotency key
  ``<alert id>:<seq>``. Only once the receiver has accepted it is the row marked
  ``delivered`` (durably); a failure (or a send that outlasts the receiver's
  ``timeout_s``) is retried after a jittered exponential backoff (``retry_min_s`` ..
  ``retry_max_s``), the same row again: an alert's events reach its receiver in order,
  and one route's trouble holds up no other route (each has its own task) and never the
  engine (a deliverer only reads the journal, and marks rows between its commits).
* **Rejected.** A receiver that refuses *this event* for good raises :class:`Rejected`
  (an HTTP 4xx about the request, an HL7 ``AR``/``CR``, an SMTP 5xx for the message;
  each receiver says which). Such an event is tried ``reject_after`` times (with the
  backoff); then its row is marked ``rejected``, counted, logged as an error and raised
  as the technical alarm ``route.rejected`` (component ``route:<name>``, the alert, the
  bed and the receiver's reason, never a patient id; resolved by a later delivery, at
  the earliest ``down_alarm_s`` after it), and the route goes on with its next event:
  one refused event does not stop every later alarm of the route. Any other failure
  (refused or reset connection, timeout, HTTP 5xx/408/429, HL7 ``AE``) is retried, in
  order, for as long as it takes.
* **Pauses.** A row whose bed is paused (``vitalmon/cmd/pause``; the alert publisher's
  live pauses, :class:`~monitor.sinks.delivery.Pauses`), whose event came after the
  pause began and whose priority is not in ``alerts.pause_breakthrough`` is ``held``, as
  the MQTT publication is (an event from before the pause was published: it goes,
  paused or not, even when its receiver was down until then); when the pause
  ends, the latest held row of each alert goes and the older ones are superseded, and
  the recovery of an alert the route never delivered is skipped
  (:func:`~monitor.sinks.delivery.outbox.release`). Held rows are in the journal: a
  restart loses none (pauses do not survive a restart, so they then go at once).
* ``check()`` (the daemon's heartbeat): failing, or a send hanging, for ``down_alarm_s``
  raises the technical alarm ``sink.down`` for component ``route:<name>``, resolved by
  the next delivery.
* **Lost.** A row whose alert event is no longer in the journal (retention keeps the
  events of open rows, so only an older vitalmon's retention or a hand could do that)
  is marked ``lost``, counted, logged as an error and raised as the technical alarm
  ``route.lost`` (component ``route:<name>``; resolved by a later delivery, at the
  earliest ``down_alarm_s`` after it): it is never waited for forever, and the backlog
  and oldest gauges do not stay stuck on it.
* ``close()``: ``run()`` delivers what the router routed before its ``done`` (bounded by
  the daemon's shutdown budget) and returns; at once if the receiver is failing: the
  rows wait in the journal for the next run.

At least once: a crash between the receiver's acceptance and the row's commit sends the
event again at the next start, with the same key (a receiver can drop the duplicate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Collection
from functools import partial
from typing import TYPE_CHECKING

from monitor.config import RouteConfig
from monitor.model import AlertEvent
from monitor.sinks.delivery import outbox
from monitor.sinks.sqlite import SqliteSink, storage_error

if TYPE_CHECKING:
    from monitor.sinks.delivery import Pauses, Receiver

log = logging.getLogger("vitalmon.sink.delivery")

#: Rows read from the outbox at a time.
BATCH = 100
#: A send is given up after the receiver's own timeout plus this (a thread that does
#: not honour its timeout).
GRACE_S = 5.0
#: The journal refusing (a full disk, alarmed by the store): tried again after this.
JOURNAL_RETRY_S = 1.0


class Rejected(Exception):
    """The receiver refused this event for good: sent again as it is, it would be
    refused again (the deliverer gives it up after ``reject_after`` attempts)."""


def redact(text: str, e: AlertEvent) -> str:
    """``text`` (a receiver's answer, which may echo what it was sent) without the
    event's patient id."""
    return text.replace(e.patient, "***") if e.patient else text


def key(e: AlertEvent) -> str:
    """The event's idempotency key: the same on every attempt and after a restart."""
    return f"{e.id}:{e.seq}"


class Deliverer:
    def __init__(
        self,
        route: RouteConfig,
        journal: SqliteSink,
        receiver: Receiver,
        *,
        router_done: asyncio.Event,
        pauses: Pauses | None = None,
        breakthrough: Callable[[], Collection[str]] = lambda: (),
    ) -> None:
        self.route = route
        self.name = route.name
        self.component = f"route:{route.name}"
        self.journal = journal
        self.receiver = receiver
        self.pauses = pauses
        self.breakthrough = breakthrough
        self.router_done = router_done
        #: delivered, failed (attempts), held, superseded, skipped, routed
        self.counts: Counter[str] = Counter()
        #: Rows routed to this route and not done (pending or held).
        self.backlog = 0
        #: Wall clock the oldest open row was routed at (None: none open).
        self.oldest: float | None = None
        self.wake = asyncio.Event()
        self.failing_since: float | None = None
        self._sending_since: float | None = None
        self._last_error = ""
        self._alarmed = False
        self._attempt = 0
        #: (condition, component, active, detail) -> technical alarm; set by the daemon.
        self.on_condition: Callable[[str, str, bool, str], None] | None = None
        self._closing = asyncio.Event()
        #: Rows the receiver accepted whose mark the journal refused: not sent again.
        self._unmarked: set[int] = set()
        self._next_release: float | None = None
        #: There may be held rows (in the journal since the last run, or held since).
        self._maybe_held = True
        #: Technical alarms about events this route could not deliver (``route.lost``,
        #: ``route.rejected``) that are active: rule -> [monotonic time of the last
        #: such event, whether the route has delivered since].
        self._undelivered: dict[str, list[float | bool]] = {}
        #: (outbox ev, permanent refusals of it in a row): given up at ``reject_after``.
        self._refusals: tuple[int, int] = (0, 0)

    @property
    def oldest_s(self) -> float:
        """Seconds the oldest open row has waited (0: none)."""
        return 0.0 if self.oldest is None else max(0.0, time.time() - self.oldest)

    async def open(self) -> None:
        try:
            self.backlog, self.oldest = await self.journal.call(
                partial(outbox.open_rows, name=self.name)
            )
        except Exception as exc:
            if not storage_error(exc):
                raise
        if self.backlog:
            log.info("route %s: %d alert event(s) to deliver", self.name, self.backlog)

    def routed(self, n: int) -> None:
        """The router made ``n`` rows for this route."""
        self.backlog += n
        self.counts["routed"] += n
        if self.oldest is None:
            self.oldest = time.time()
        self.wake.set()

    def _settled(self, n: int) -> None:
        """``n`` open rows are done with (delivered, rejected, superseded, lost): none
        left, none is the oldest (the metric says 0 at once, not at the next round)."""
        self.backlog = max(0, self.backlog - n)
        if self.backlog == 0:
            self.oldest = None

    def close(self) -> None:
        self._closing.set()
        self.wake.set()

    def check(self, now: float | None = None) -> None:
        """Raise ``sink.down`` once the receiver has failed, or a send has hung, for
        ``down_alarm_s`` (called on the daemon's heartbeat, whatever the backoff)."""
        t = time.monotonic() if now is None else now
        self._resolve_undelivered(t)
        since = self.failing_since if self.failing_since is not None else self._sending_since
        if self._alarmed or since is None or t - since < self.route.down_alarm_s:
            return
        self._alarmed = True
        if self.on_condition is not None:
            why = self._last_error or f"a delivery has not returned for {t - since:.0f} s"
            self.on_condition(
                "sink.down",
                self.component,
                True,
                f"route {self.name} failing for {t - since:.0f} s: {why}; "
                f"{self.backlog} alert event(s) waiting in its outbox",
            )

    # ------------------------------------------------------------------------ run

    async def run(self) -> None:
        try:
            while True:
                self.wake.clear()  # anything routed from here on wakes the wait below
                try:
                    await self._release()
                    rows, lost = await self.journal.call(
                        partial(outbox.pending, name=self.name, limit=BATCH, now=time.time())
                    )
                    self._lost(lost)
                    self.backlog, self.oldest = await self.journal.call(
                        partial(outbox.open_rows, name=self.name)
                    )
                    ok = await self._deliver(rows) if rows else True
                except Exception as exc:
                    if not storage_error(exc):
                        raise
                    log.warning("route %s: the journal refuses (%s); retrying", self.name, exc)
                    if self._closing.is_set():
                        return  # (the rows wait in the journal for the next run)
                    await self._sleep(JOURNAL_RETRY_S)
                    continue
                if not rows:
                    if self._closing.is_set() and self.router_done.is_set():
                        return
                    await self._idle()
                    continue
                if not ok and self._closing.is_set():
                    log.warning(
                        "route %s: still failing at the stop; %d alert event(s) wait in "
                        "the journal for the next run",
                        self.name,
                        self.backlog,
                    )
                    return
        finally:
            await self.receiver.close()

    async def _deliver(self, rows: list[outbox.Row]) -> bool:
        """Deliver ``rows`` in order (holding those of paused beds); -> False after a
        failure (the backoff waited: the rows are read again)."""
        for row in rows:
            e = row.event
            if row.ev in self._unmarked:
                if not await self._mark(row.ev):
                    return False
                continue
            until = self._held_until(row)
            if until is not None:
                await self.journal.call(partial(outbox.hold, name=self.name, ev=row.ev))
                self.counts["held"] += 1
                self._maybe_held = True
                self._next_release = min(self._next_release or until, until)
                log.info(
                    "route %s: alert %s seq %d held while %s/%s is paused",
                    self.name,
                    e.id,
                    e.seq,
                    e.ward,
                    e.bed,
                )
                continue
            sent = await self._send(row)
            if sent == "rejected":
                await self._reject(row)
                continue
            if sent != "delivered":
                return False
            self.counts["delivered"] += 1
            if not await self._mark(row.ev):
                return False
        return True

    async def _send(self, row: outbox.Row) -> str:
        """One attempt: -> ``delivered``, ``failed`` (the backoff waited) or ``rejected``
        (refused for good ``reject_after`` times: to be given up)."""
        e = row.event
        self._sending_since = time.monotonic()
        try:
            await asyncio.wait_for(self.receiver.send(e, key(e)), self.receiver.timeout_s + GRACE_S)
        except Exception as exc:  # noqa: BLE001 - any failure of the receiver is retried
            self._sending_since = None
            self._failing(exc, e)
            if isinstance(exc, Rejected):
                ev, n = self._refusals
                n = n + 1 if ev == row.ev else 1
                self._refusals = (row.ev, n)
                if n >= self.route.reject_after:
                    return "rejected"
            if self._closing.is_set():
                return "failed"
            low, high = self.route.retry_min_s, self.route.retry_max_s
            delay = random.uniform(low, min(high, low * 2**self._attempt))
            log.warning(
                "route %s: delivery of alert %s seq %d failed (%s); %d waiting, retrying in %.1f s",
                self.name,
                e.id,
                e.seq,
                self._last_error,
                self.backlog,
                delay,
            )
            await self._sleep(delay)
            return "failed"
        self._sending_since = None
        self._recovered()
        log.debug("route %s: alert %s seq %d delivered", self.name, e.id, e.seq)
        return "delivered"

    async def _reject(self, row: outbox.Row) -> None:
        """Give up an event the receiver refused for good ``reject_after`` times."""
        e = row.event
        await self.journal.call(partial(outbox.reject, name=self.name, ev=row.ev, now=time.time()))
        self._refusals = (0, 0)
        self._attempt = 0  # (the next event is not an attempt of this one)
        self.counts["rejected"] += 1
        self._settled(1)
        why = (
            f"the receiver refused alert {e.id} event {e.seq} ({e.rule}, {e.ward}/{e.bed}) "
            f"{self.route.reject_after} time(s): {self._last_error}"
        )
        log.error("route %s: %s; given up, the route goes on", self.name, why)
        self._undeliverable("route.rejected", f"route {self.name}: {why}")

    async def _mark(self, ev: int) -> bool:
        """Record a delivery in the journal; while it refuses, remember it here (marked
        after a pause; a crash meanwhile sends it again). -> whether it is recorded."""
        self._unmarked.add(ev)
        try:
            await self.journal.call(
                partial(outbox.finish, name=self.name, evs=[ev], now=time.time())
            )
        except Exception as exc:
            if not storage_error(exc):
                raise
            log.warning("route %s: cannot record a delivery yet (%s)", self.name, exc)
            if not self._closing.is_set():
                await self._sleep(JOURNAL_RETRY_S)
            return False
        self._unmarked.discard(ev)
        self._settled(1)
        return True

    # --------------------------------------------------------------------- pauses

    def _held_until(self, row: outbox.Row) -> float | None:
        """The end of the pause that holds the row's event now (None: it goes). An event
        from before the pause began (its time, or its routing, earlier) is not held: the
        MQTT publication had it before the pause, so the receiver gets it too, even
        while the bed is paused (a receiver that was down), and later its end."""
        e = row.event
        if self.pauses is None or e.priority in self.breakthrough():
            return None
        until = self.pauses.paused_until(e.ward, e.bed)
        since = self.pauses.paused_since(e.ward, e.bed)
        if until is not None and since is not None and min(e.at, row.routed_at) < since:
            return None
        return until

    async def _release(self) -> None:
        """Release the held alerts whose beds are no longer paused."""
        if not self._maybe_held:
            return
        self._next_release = None
        alerts, lost = await self.journal.call(
            partial(outbox.held, name=self.name, now=time.time())
        )
        self._lost(lost)
        self._maybe_held = False
        for alert, ward, bed in alerts:
            until = None if self.pauses is None else self.pauses.paused_until(ward, bed)
            if until is not None:
                self._maybe_held = True
                self._next_release = min(self._next_release or until, until)
                continue
            superseded, skipped = await self.journal.call(
                partial(outbox.release, name=self.name, alert=alert, now=time.time())
            )
            self.counts["superseded"] += superseded
            self.counts["skipped"] += skipped
            self.counts["released"] += 1
            self._settled(superseded - skipped)
            log.info(
                "route %s: alert %s released at the end of %s/%s's pause (%d superseded, "
                "%d skipped)",
                self.name,
                alert,
                ward,
                bed,
                superseded,
                skipped,
            )

    # ---------------------------------------------------------------------- waits

    async def _idle(self) -> None:
        """Wait for rows routed here, the next pause to end, or (at the stop) the router
        to be done."""
        timeout = None
        if self._next_release is not None:
            timeout = max(0.05, self._next_release - time.time() + 0.05)
        waiters = [asyncio.create_task(self.wake.wait())]
        if self._closing.is_set():
            waiters.append(asyncio.create_task(self.router_done.wait()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)

    def _failing(self, exc: BaseException, e: AlertEvent) -> None:
        now = time.monotonic()
        self._attempt += 1
        if self.failing_since is None:
            self.failing_since = now
        text = redact(str(exc) or type(exc).__name__, e)
        self._last_error = text if isinstance(exc, OSError) else f"{type(exc).__name__}: {text}"
        self.counts["failed"] += 1
        self.check(now)

    def _lost(self, lost: list[tuple[int, str]]) -> None:
        """Rows marked ``lost`` (their events are no longer in the journal)."""
        if not lost:
            return
        self.counts["lost"] += len(lost)
        self._settled(len(lost))
        alerts = ", ".join(sorted({alert for _, alert in lost}))
        log.error(
            "route %s: %d alert event(s) of alert(s) %s are no longer in the journal and "
            "cannot be delivered: marked lost",
            self.name,
            len(lost),
            alerts,
        )
        self._undeliverable(
            "route.lost",
            f"route {self.name}: {len(lost)} alert event(s) no longer in the journal could "
            f"not be delivered (alert {alerts})",
        )

    def _undeliverable(self, rule: str, detail: str) -> None:
        """Raise ``rule`` (an event the route will never deliver) for the route."""
        self._undelivered[rule] = [time.monotonic(), False]
        if self.on_condition is not None:
            self.on_condition(rule, self.component, True, detail)

    def _resolve_undelivered(self, now: float) -> None:
        """Resolve ``route.lost``/``route.rejected`` once the route has delivered again,
        at the earliest ``down_alarm_s`` after the last event it gave up."""
        for rule, (at, delivered) in list(self._undelivered.items()):
            if delivered and now - float(at) >= self.route.down_alarm_s:
                del self._undelivered[rule]
                if self.on_condition is not None:
                    self.on_condition(
                        rule, self.component, False, f"route {self.name} delivers again"
                    )

    def _recovered(self) -> None:
        for state in self._undelivered.values():
            state[1] = True
        self._resolve_undelivered(time.monotonic())
        self.failing_since = None
        self._attempt = 0
        if self._alarmed:
            self._alarmed = False
            if self.on_condition is not None:
                self.on_condition(
                    "sink.down", self.component, False, f"route {self.name} delivers again"
                )
