"""The commit loop: batches taken from the queue, committed in one transaction each and
released (acknowledged) only then; held in memory and retried while the disk refuses."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from functools import partial

from monitor.pipeline import storage_error
from monitor.sinks.sqlite.base import HOLD_MAX, RETRY_MAX_S, RETRY_MIN_S, SLOW_S, STALL_S, _Item
from monitor.sinks.sqlite.health import _Health

log = logging.getLogger("vitalmon.sink.sqlite")


class _Committing(_Health):
    """Committing what is queued, in order."""

    async def _commit_loop(self) -> None:
        pending: list[_Item] = []
        try:
            await self._commit_pending(pending)
        finally:
            if pending:  # cancelled at the shutdown deadline while the disk refused
                log.warning(
                    "store: %d batch(es) not committed nor acknowledged at the stop "
                    "(MQTT redelivers them to the next run)",
                    len(pending),
                )

    async def _commit_pending(self, pending: list[_Item]) -> None:
        closing = False  # (pending: taken from the queue, not committed yet)
        retry_at = 0.0
        attempt = 0
        while True:
            # take what is queued: one transaction's worth, or while the disk refuses
            # commits, everything up to HOLD_MAX (the engine goes on meanwhile)
            limit = self.cfg.batch_size if self.failure is None else HOLD_MAX
            while not closing and len(pending) < limit:
                if pending and self.queue.empty():
                    if self.failure is None:
                        break
                    wait = retry_at - time.monotonic()
                    if wait <= 0:
                        break
                    try:  # new items until the retry is due
                        item = await asyncio.wait_for(self.queue.get(), wait)
                    except TimeoutError:
                        break
                else:
                    item = self.queue.get_nowait() if pending else await self.queue.get()
                if item is None:
                    closing = True
                else:
                    pending.append(item)
            self.held = len(pending)
            if not pending:
                return
            if self.failure is not None and time.monotonic() < retry_at:
                await asyncio.sleep(retry_at - time.monotonic())  # (held items at HOLD_MAX)
            # (a copy: ``pending`` loses these items below, their release must not)
            batch = pending[: self.cfg.batch_size if self.failure is None else len(pending)]
            try:
                committed = await self._commit_batch(batch)
            except Exception as exc:  # noqa: BLE001 - storage errors only (see _commit_batch)
                attempt += 1
                self._failing(exc, len(pending))
                retry_at = time.monotonic() + min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (attempt - 1))
                continue
            attempt = 0
            del pending[: len(batch)]
            self.held = len(pending)
            self._recovered()
            self.counts["commits"] += 1  # progress, for the watchdog
            self.committed.set()
            for event in self.commit_events:
                event.set()
            for it in committed:  # only now is it durable: release it at its origin
                if it.done is not None:
                    it.done()

    async def _commit_batch(self, batch: list[_Item]) -> list[_Item]:
        """Commit ``batch`` in one transaction; -> the items to release. A storage error
        is raised (the caller retries); any other failure is narrowed down to the items
        that cause it, which are quarantined (counted, logged, released)."""
        self._committing_since = time.monotonic()
        loop = asyncio.get_running_loop()  # (on time, not on the daemon's next heartbeat)
        timers = [loop.call_later(d + 0.01, self.check) for d in (SLOW_S, STALL_S)]
        try:
            self.head = await self.call(partial(self._commit, batch=batch))
        except Exception as exc:
            if storage_error(exc):
                raise
            if len(batch) == 1:
                self._quarantine(batch[0], exc)
                return batch
            for it in batch:  # one by one: the bad item alone is set aside
                await self._commit_batch([it])
        finally:
            for timer in timers:
                timer.cancel()
            self._committing_since = None
            self._unstalled()
        return batch

    def _commit(self, conn: sqlite3.Connection, *, batch: list[_Item]) -> int:
        """Write ``batch`` in one transaction (in the store's thread); -> the journal head.
        :class:`~monitor.sinks.sqlite.SqliteSink` implements it."""
        raise NotImplementedError
