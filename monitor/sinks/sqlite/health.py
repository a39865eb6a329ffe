"""A store that fails, hangs or fills: ``store.stalled`` (a commit that does not
return), ``store.full``/``store.failed`` (commits the disk refuses) and their recovery,
quarantined items, and the background maintenance (retention, the disk bound)."""

from __future__ import annotations

import asyncio
import logging
import time

from monitor.pipeline import storage_error
from monitor.sinks import retention
from monitor.sinks.sqlite.base import SLOW_S, STALL_S, _Item, _SinkBase
from monitor.sinks.sqlite.schema import disk_full

log = logging.getLogger("vitalmon.sink.sqlite")


class _Health(_SinkBase):
    """Alarms of the store's conditions, and its maintenance."""

    @property
    def committing(self) -> bool:
        """A commit is in progress (busy, not stuck: ``check`` alarms one that hangs)."""
        return self._committing_since is not None

    def check(self, now: float | None = None) -> None:
        """Called every second: a commit that has not returned for ``STALL_S`` raises
        ``store.stalled`` (resolved when it returns, however it returns)."""
        since = self._committing_since
        t = time.monotonic() if now is None else now
        if since is not None and not self._slow and t - since >= SLOW_S:
            self._slow = True
            if self.on_slow is not None:
                self.on_slow(True)
        if since is None or self.stalled or t - since < STALL_S:
            return
        self.stalled = True
        log.error(
            "store: a commit has not returned for %.0f s (%s); alerts still "
            "evaluated and published, nothing acknowledged meanwhile",
            t - since,
            self.cfg.path,
        )
        if self.on_condition is not None:
            self.on_condition(
                "store.stalled",
                "disk",
                True,
                f"a commit to {self.cfg.path} has not returned for "
                f"{t - since:.0f} s (a disk that hangs, or a lock held by another "
                "process); nothing acknowledged meanwhile, alerts still evaluated "
                "and published",
            )

    def _unstalled(self) -> None:
        if self._slow:
            self._slow = False
            if self.on_slow is not None:
                self.on_slow(False)
        if not self.stalled:
            return
        self.stalled = False
        log.warning("store: the stalled commit returned")
        if self.on_condition is not None:
            self.on_condition("store.stalled", "disk", False, "the stalled commit returned")

    def _quarantine(self, item: _Item, exc: Exception) -> None:
        self.counts["quarantined"] += len(item.readings) + len(item.events)
        log.error(
            "store: %d reading(s) and %d alert event(s) the store cannot take were set "
            "aside (%s: %s)",
            len(item.readings),
            len(item.events),
            type(exc).__name__,
            exc,
        )

    def _failing(self, exc: BaseException, held: int) -> None:
        first = self.failure is None
        self.failure = exc
        self.counts["commit_errors"] += 1
        rule = "store.full" if disk_full(exc) else "store.failed"  # (component "disk")
        detail = (
            f"cannot commit to {self.cfg.path}: {exc}; {held} batch(es) held in memory, "
            "not acknowledged; alerts still evaluated and published"
        )
        if first:
            log.error("store: %s", detail)
        if self._alarm != rule and self.on_condition is not None:
            if self._alarm is not None:
                self.on_condition(self._alarm, "disk", False, "store: another error now")
            self._alarm = rule
            self.on_condition(rule, "disk", True, detail)

    def _recovered(self) -> None:
        if self.failure is None:
            return
        log.warning("store: commits succeed again (%s)", self.cfg.path)
        self.failure = None
        if self._alarm is not None and self.on_condition is not None:
            self.on_condition(
                self._alarm,
                "disk",
                False,
                "store commits again; what was held is committed and acknowledged",
            )
        self._alarm = None

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.maintenance_interval_s)
            try:
                await self.maintain()
            except Exception as exc:
                if not storage_error(exc):
                    raise
                log.warning(
                    "store maintenance failed (%s); tried again in %g s",
                    exc,
                    self.cfg.maintenance_interval_s,
                )

    async def maintain(self, now: float | None = None) -> retention.Report:
        """Aggregate, apply retention and the disk bound, a chunk per store-thread call."""
        t = time.time() if now is None else now
        report = retention.Report()
        while True:
            more = await self.call(lambda c: self._retention.step(c, t, report))
            if not more:
                break
        self.used_bytes = report.used_bytes
        self.counts["pruned"] += report.pruned_age + report.pruned_space
        self.counts["pruned_space"] += report.pruned_space
        for sink, n in report.dropped.items():
            self.counts[f"dropped[{sink}]"] += n
        for sink, n in report.dropped_alerts.items():
            self.counts[f"dropped_alerts[{sink}]"] += n
        if self.on_condition is not None:
            if report.pruned_space:
                self.on_condition(
                    "store.full",
                    "store",
                    True,
                    f"disk bound {self.cfg.max_mb:g} MiB reached: "
                    f"{report.pruned_space} oldest raw readings pruned",
                )
            elif report.below_low_water:
                self.on_condition("store.full", "store", False, "store back under its disk bound")
            for sink in sorted({*report.dropped, *report.dropped_alerts}):
                what = [
                    f"{n} {noun}"
                    for n, noun in (
                        (report.dropped[sink], "readings"),
                        (report.dropped_alerts[sink], "alert events"),
                    )
                    if n
                ]
                detail = f"{' and '.join(what)} pruned before {sink} got them"
                self.on_condition("sink.dropped", sink, True, detail)
        return report

    # ------------------------------------------------------------- store thread
