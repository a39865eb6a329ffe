"""Store-and-forward: a remote sink fed from the journal through its own durable cursor.

Contract of :class:`Forwarder`:

* ``open()`` makes no connection (a remote that is down at start is a state, not an
  error): it loads the sink's cursor from the journal, creating it at the journal's end
  (``start_from: end``) or beginning.
* ``run()`` reads the next batch after the cursor, hands it to the :class:`Remote` (in a
  thread of its own: a slow remote never blocks ingest; given up after ``send_timeout_s``
  in all, as a failure), and only when the remote accepted it moves the cursor,
  durably, in the journal. A failure is retried with jittered exponential backoff,
  forever: nothing is skipped, order is kept. Caught up,
  it waits for the journal's next commit, then up to ``flush_interval_s`` for a fuller
  batch.
* ``close()``: ``run()`` returns once it has forwarded what the journal had committed
  (bounded by the shutdown budget), or at once while the remote is failing: the backlog
  waits in the journal for the next run.

A remote that fails (or a send that hangs) for ``down_alarm_s`` raises the
technical alarm ``sink.down``: the daemon calls ``check()`` every second, so the alarm
does not wait for the next retry, however far the backoff has grown. ``lag_s`` is the
event-time age of the oldest reading not yet forwarded, as of now.

A send given up is left to end by itself in its daemon thread (nothing joins it: a stop
never waits for a remote that answers a byte at a time). No other send starts while it
has not ended (the :class:`Remote` sees one call at a time, and hung sends do not pile
up): the attempts meanwhile fail as such, and ``sink.down`` is raised as for any failure.

Delivery is at least once: a crash between the remote's acceptance and the cursor's
commit re-sends that batch. InfluxDB overwrites a point with the same series and time,
so the re-send changes nothing; VictoriaMetrics needs ``-dedup.minScrapeInterval=1ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol

from monitor.model import AlertEvent
from monitor.sinks.sqlite import (
    SqliteSink,
    get_cursor,
    read_alerts,
    read_readings,
    set_cursor,
    storage_error,
)
from monitor.tasks import in_thread

log = logging.getLogger("vitalmon.sink.forward")

#: (seq, ward, bed, device, vital, ts, value, patient, flag)
Row = tuple[int, str, str, str, str, float, float, str | None, str | None]

#: After failing this long, a remote sink raises the technical alarm ``sink.down``
#: (the default of a sink's ``down_alarm_s``).
DOWN_ALARM_AFTER_S = 30.0

#: How long the remote's ``close()`` may take at the stop before it is left behind.
CLOSE_TIMEOUT_S = 1.0


class Remote(Protocol):
    """What a forwarder sends to. Called from a thread of its own, one call at a time (a
    call given up included: the next one waits until it has ended)."""

    def send(self, readings: Sequence[Row], alerts: Sequence[AlertEvent]) -> None:
        """Deliver, or raise: returning means the remote has accepted everything."""

    def close(self) -> None: ...


class Forwarder:
    def __init__(
        self,
        name: str,
        journal: SqliteSink,
        remote: Remote,
        *,
        batch_size: int = 5000,
        start_from: str = "end",
        retry_min_s: float = 1.0,
        retry_max_s: float = 60.0,
        flush_interval_s: float = 0.0,
        down_alarm_s: float = DOWN_ALARM_AFTER_S,
        send_timeout_s: float = 60.0,
    ) -> None:
        self.name = name
        self.journal = journal
        self.remote = remote
        self.batch_size = batch_size
        self.start_from = start_from
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.flush_interval_s = flush_interval_s
        self.down_alarm_s = down_alarm_s
        self.send_timeout_s = send_timeout_s
        self.counts: Counter[str] = Counter()
        self.cursor = (0, 0)
        #: event time of the oldest reading not yet forwarded (None: caught up)
        self._oldest: float | None = None
        self.failing_since: float | None = None
        #: monotonic start of the send in progress (None: not sending)
        self._sending_since: float | None = None
        self._last_error = ""
        #: (condition, component, active, detail) -> technical alarm; set by the daemon.
        self.on_condition: Callable[[str, str, bool, str], None] | None = None
        self._closing = asyncio.Event()
        #: held by the thread talking to the remote (one at a time, a hung one included)
        self._slot = threading.Lock()
        self._alarmed = False
        self._attempt = 0
        self._loaded = False  #: the cursor has been read from the journal

    @property
    def lag_s(self) -> float:
        """Event-time age of the oldest reading not yet forwarded, now (0: caught up)."""
        return 0.0 if self._oldest is None else max(0.0, time.time() - self._oldest)

    def check(self, now: float | None = None) -> None:
        """Raise ``sink.down`` once the remote has failed, or a send has hung, for
        ``down_alarm_s`` (called on the daemon's heartbeat, whatever the backoff)."""
        t = time.monotonic() if now is None else now
        since = self.failing_since if self.failing_since is not None else self._sending_since
        if self._alarmed or since is None or t - since < self.down_alarm_s:
            return
        self._alarmed = True
        if self.on_condition is not None:
            why = self._last_error or f"a send has not returned for {t - since:.0f} s"
            self.on_condition(
                "sink.down",
                self.name,
                True,
                f"{self.name} failing for {t - since:.0f} s: {why}; "
                f"{self.lag} readings waiting in the journal",
            )

    @property
    def lag(self) -> int:
        """Readings committed to the journal and not yet forwarded."""
        return max(0, self.journal.head - self.cursor[0])

    async def open(self) -> None:
        try:
            await self._load_cursor()
        except Exception as exc:
            if not storage_error(exc):
                raise
            log.warning("%s: cannot read its cursor yet (%s); tried again", self.name, exc)

    async def _load_cursor(self) -> None:
        self.cursor = await self.journal.call(lambda c: get_cursor(c, self.name, self.start_from))
        self._loaded = True
        log.info("%s: forwarding from journal position %d", self.name, self.cursor[0])

    def close(self) -> None:
        self._closing.set()

    async def run(self) -> None:
        try:
            while True:
                self.journal.committed.clear()  # any commit from here on wakes the wait below
                try:
                    if not self._loaded:
                        await self._load_cursor()
                    readings, alerts = await self.journal.call(self._read)
                except Exception as exc:
                    if not storage_error(exc) or self._closing.is_set():
                        raise
                    log.warning("%s: cannot read the journal (%s); retrying", self.name, exc)
                    await self._sleep(self.retry_max_s / 10)
                    continue
                if readings or alerts:
                    await self._forward(readings, alerts)
                elif self._closing.is_set():
                    return
                else:
                    self._oldest = None
                    await self._wait_for_commit()
                    if self.lag < self.batch_size:  # gather a fuller batch (Telegraf's flush)
                        await self._sleep(self.flush_interval_s)
                if self._closing.is_set() and self.failing_since is not None:
                    log.warning(
                        "%s: still failing at shutdown; %d readings wait in the "
                        "journal for the next run",
                        self.name,
                        self.lag,
                    )
                    return
        finally:
            await self._close_remote()

    async def _call(self, fn: Callable[[], None], timeout_s: float) -> None:
        """``fn`` (a call of the remote) in a thread of its own, given up after
        ``timeout_s``; refused while a call given up earlier has not ended."""
        if not self._slot.acquire(blocking=False):
            raise TimeoutError("the send given up before has not ended yet")

        def call() -> None:
            try:
                fn()
            finally:
                self._slot.release()

        await in_thread(call, timeout_s, f"vitalmon-fwd-{self.name}")

    async def _close_remote(self) -> None:
        try:
            await self._call(self.remote.close, CLOSE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the stop goes on; the process ends it
            log.warning("%s: not closed (%s)", self.name, exc)

    def _read(self, conn: sqlite3.Connection) -> tuple[list[Row], list[tuple[int, AlertEvent]]]:
        """The next batch after the cursor (in the journal's thread)."""
        after_r, after_a = self.cursor
        return read_readings(conn, after_r, self.batch_size), read_alerts(
            conn, after_a, self.batch_size
        )

    async def _forward(self, readings: list[Row], alerts: list[tuple[int, AlertEvent]]) -> None:
        """Send one batch; move the cursor only once the remote has accepted it."""
        self._oldest = min(r[5] for r in readings) if readings else None
        self._sending_since = time.monotonic()
        events = [e for _, e in alerts]
        try:
            await self._call(lambda: self.remote.send(readings, events), self.send_timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure of the remote is retried
            self._sending_since = None
            self._failing(exc)
            if self._closing.is_set():
                return
            delay = random.uniform(
                self.retry_min_s, min(self.retry_max_s, self.retry_min_s * 2**self._attempt)
            )
            log.warning(
                "%s: send failed (%s); %d readings waiting, retrying in %.1f s",
                self.name,
                exc,
                self.lag,
                delay,
            )
            await self._sleep(delay)
            return
        self._sending_since = None
        self._recovered()
        new = (
            readings[-1][0] if readings else self.cursor[0],
            alerts[-1][0] if alerts else self.cursor[1],
        )
        self.cursor = new
        try:
            await self.journal.call(
                partial(set_cursor, sink=self.name, readings=new[0], alerts=new[1])
            )
        except Exception as exc:
            if not storage_error(exc):
                raise
            # the local disk refuses (alarmed by the store): the cursor is kept here and
            # saved with the next batch; a crash meanwhile re-sends, which is harmless
            self.counts["cursor_save_errors"] += 1
        self.counts["forwarded"] += len(readings)
        self.counts["forwarded_alerts"] += len(alerts)

    async def _wait_for_commit(self) -> None:
        waiters = [
            asyncio.create_task(self.journal.committed.wait()),
            asyncio.create_task(self._closing.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), delay)

    def _failing(self, exc: Exception) -> None:
        now = time.monotonic()
        self._attempt += 1
        if self.failing_since is None:
            self.failing_since = now
        self._last_error = str(exc) or type(exc).__name__
        self.counts["send_errors"] += 1
        self.check(now)

    def _recovered(self) -> None:
        self.failing_since = None
        self._attempt = 0
        if self._alarmed:
            self._alarmed = False
            if self.on_condition is not None:
                self.on_condition(
                    "sink.down", self.name, False, f"{self.name} accepts writes again"
                )
