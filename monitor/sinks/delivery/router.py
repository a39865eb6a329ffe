"""The router: alert events from the journal into the routes' outboxes, exactly once.

Contract of :class:`Router`:

* ``open()`` reads its position in the journal (the journal's end on its very first
  start: routes take the events from then on).
* ``run()`` reads the alert events committed after its position, matches each against
  every route (:func:`matches`), and in one transaction inserts a ``pending`` outbox row
  per (route, event) and moves its position past them (:func:`outbox.route`): a crash
  before the commit routes them again, one after it never does. Then it wakes the
  routes' deliverers. Caught up, it waits for the journal's next commit (its own
  :meth:`~monitor.sinks.sqlite.SqliteSink.commit_event`), so that an event reaches its
  receivers milliseconds after its commit, not on a poll. A journal that refuses (a full
  disk) is retried with backoff; it holds up no one but the routes.
* ``close()``: ``run()`` routes what the journal has committed, sets ``done`` and
  returns (the deliverers finish with that).

Every hour, rows done more than :data:`KEEP_S` ago are pruned from the outbox, except
each route's latest delivered row of an alert whose end the route has not had yet: that
the route announced the alert is what a pause's end needs to know (the end of an alert
never announced is skipped, :func:`outbox.release`), however long the alert lasts (up to
:data:`ANNOUNCED_KEEP_S`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from functools import partial

from monitor.config import RouteConfig, RouteMatch
from monitor.model import AlertEvent, AlertState
from monitor.sinks.delivery import outbox
from monitor.sinks.sqlite import SqliteSink, storage_error

log = logging.getLogger("vitalmon.sink.delivery")

#: Alert events routed per transaction, at most.
BATCH = 500
#: Delivered (superseded, skipped) rows are kept this long, then pruned.
KEEP_S = 7 * 86400.0
#: The latest delivered row of an alert still open is kept this long at most (an alert
#: whose end never comes to the route: its engine forgot it, a match that changed).
ANNOUNCED_KEEP_S = 365 * 86400.0
PRUNE_EVERY_S = 3600.0
#: The journal refusing the router's transaction: retried after this, up to 10x.
RETRY_S = 0.5


def matches(m: RouteMatch, e: AlertEvent) -> bool:
    """Whether the route's match takes the event (every field given must match)."""
    escalated = bool(e.extra.get("escalated", False))
    return (
        (m.wards is None or e.ward in m.wards)
        and (m.priorities is None or e.priority in m.priorities)
        and (m.kinds is None or e.kind in m.kinds)
        and (m.states is None or e.state in m.states)
        and (m.escalated is None or escalated == m.escalated)
    )


def routes_of(routes: Iterable[RouteConfig]) -> Callable[[AlertEvent], list[str]]:
    """An event -> the names of the routes that take it."""
    table = [(r.name, r.match) for r in routes]
    return lambda e: [name for name, m in table if matches(m, e)]


class Router:
    def __init__(
        self,
        journal: SqliteSink,
        routes: list[RouteConfig],
        routed: Callable[[dict[str, int]], None],
    ) -> None:
        self.journal = journal
        self.names = [r.name for r in routes]
        #: Routes whose match takes no resolution: no announcement kept for them.
        self._no_end = [
            r.name
            for r in routes
            if r.match.states is not None and AlertState.RESOLVED not in r.match.states
        ]
        self._routes_of = routes_of(routes)
        #: Called with the rows made per route after each commit (wakes the deliverers).
        self._routed = routed
        self.position = 0
        self.counts: dict[str, int] = {"events": 0, "rows": 0, "errors": 0}
        self.done = asyncio.Event()
        self._closing = asyncio.Event()
        self._commit = journal.commit_event()
        self._loaded = False
        self._pruned_at = 0.0

    async def open(self) -> None:
        try:
            await self._load()
        except Exception as exc:
            if not storage_error(exc):
                raise
            log.warning("routes: cannot read the outbox position yet (%s); tried again", exc)
        try:
            strays = await self.journal.call(partial(outbox.strays, names=self.names))
        except Exception as exc:
            if not storage_error(exc):
                raise
            strays = {}
        for name, n in sorted(strays.items()):
            log.warning(
                "routes: %d alert event(s) wait in the outbox for route %r, no longer "
                "configured (they go out if it comes back)",
                n,
                name,
            )

    async def _load(self) -> None:
        self.position = await self.journal.call(outbox.start)
        self._loaded = True
        log.info("routes: routing alert events after journal position %d", self.position)

    def close(self) -> None:
        self._closing.set()

    async def run(self) -> None:
        attempt = 0
        try:
            while True:
                self._commit.clear()  # a commit from here on wakes the wait below
                try:
                    if not self._loaded:
                        await self._load()
                    n, self.position, made = await self.journal.call(
                        partial(
                            outbox.route, routes_of=self._routes_of, limit=BATCH, now=time.time()
                        )
                    )
                except Exception as exc:
                    if not storage_error(exc):
                        raise
                    self.counts["errors"] += 1
                    if self._closing.is_set():
                        log.warning("routes: the journal refuses (%s) at the stop", exc)
                        return
                    attempt += 1
                    log.warning("routes: cannot route (%s); retrying", exc)
                    await self._sleep(RETRY_S * min(attempt, 10))
                    continue
                attempt = 0
                if n:
                    self.counts["events"] += n
                    self.counts["rows"] += sum(made.values())
                    if made:
                        self._routed(made)
                if n >= BATCH:
                    continue
                await self._prune()
                if self._closing.is_set():
                    return
                await self._wait()
        finally:
            self.done.set()

    async def _prune(self) -> None:
        now = time.time()
        if now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        try:
            gone = await self.journal.call(
                partial(
                    outbox.prune,
                    before=now - KEEP_S,
                    announced_before=now - ANNOUNCED_KEEP_S,
                    forget=self._no_end,
                )
            )
        except Exception as exc:
            if not storage_error(exc):
                raise
            return
        if gone:
            log.info(
                "routes: %d delivered row(s) older than %.0f days pruned", gone, KEEP_S / 86400
            )

    async def _wait(self) -> None:
        waiters = [
            asyncio.create_task(self._commit.wait()),
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
