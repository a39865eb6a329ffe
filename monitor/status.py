"""What the daemon says about itself: ``/metrics``, ``/healthz``, systemd ``STATUS=``,
the pipeline check behind the watchdog, and the summary line of the log.

Every counter is listed once (:meth:`Status.figures`): each figure names its
Prometheus sample, its key in the summary line, or both.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from monitor.engine.engine import NOT_EVALUATED
from monitor.metrics import Sample, sample
from monitor.sources import HasUnmapped, LinkCounted, Measured

if TYPE_CHECKING:
    from monitor.daemon import Daemon


class Figure(NamedTuple):
    """One number the daemon reports."""

    #: Key in the summary line (None: only in ``/metrics``).
    key: str | None
    #: Prometheus sample name (None: only in the summary line).
    metric: str | None
    value: float
    labels: dict[str, str] = {}  # noqa: RUF012 - a NamedTuple default, never mutated
    #: Digits kept in the summary line (None: all).
    digits: int | None = None


class Status:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self._progress: dict[str, tuple[float, int]] = {}  #: stage -> (progress, waiting)
        #: The pipeline's state at the last check (``/healthz`` says it).
        self.moving_state = (True, "")
        self._rate_mark = (time.monotonic(), 0)

    def stages(self) -> list[tuple[str, asyncio.Queue[Any], float]]:
        d = self.d
        return [
            ("engine", d.engine.queue, d.engine.counts["batches"]),
            ("store", d.journal.queue, d.journal.counts["commits"]),
            ("alerts", d.alert_sink.queue, d.alert_sink.counts["handled"]),
        ]

    def moving(self) -> tuple[bool, str]:
        """Is the pipeline moving? A stage is stuck when work waited at the last check,
        still waits, and none got through in between. (A blocked event loop cannot even
        ask.)"""
        journal = self.d.journal
        stuck = []
        for name, queue, progress in self.stages():
            if name == "store" and (journal.failure is not None or journal.committing):
                continue  # retrying a refusing disk, alarmed (store.full/failed): not stuck
            waiting = queue.qsize()
            # stuck: work was waiting at the last check already, is still waiting, and
            # nothing got through since (a burst that just arrived is not a stall)
            before = self._progress.get(name)
            if waiting and before is not None and before[1] and before[0] == progress:
                stuck.append(f"{name} ({waiting} waiting, no progress)")
            self._progress[name] = (progress, waiting)
        self.moving_state = (not stuck, ", ".join(stuck))
        return self.moving_state

    def health(self) -> tuple[bool, str]:
        """``/healthz``: connected to the broker and the pipeline moving."""
        d = self.d
        if not d.client.connected.is_set():
            return False, "not connected to the broker"
        if d.journal.failure is not None or d.journal.stalled:
            why = "a commit does not return" if d.journal.stalled else d.journal.failure
            return False, f"store failing: {why} (alerts go on; see the store alarm)"
        if not self.moving_state[0]:
            return False, f"pipeline stuck: {self.moving_state[1]}"
        return True, "ok"

    def status_line(self) -> str:
        """systemd STATUS=: beds, readings/s, active alerts."""
        d = self.d
        now = time.monotonic()
        received = d.journal.counts["received"]
        last_t, last_n = self._rate_mark
        rate = (received - last_n) / (now - last_t) if now > last_t else 0.0
        self._rate_mark = (now, received)
        beds = len({(k.ward, k.bed) for k in d.engine.series})
        connected = "" if d.client.connected.is_set() else "; broker not connected"
        return (
            f"{beds} beds, {rate:.0f} readings/s, {len(d.lifecycle.active())} active "
            f"alerts{connected}"
        )

    def figures(self) -> Iterator[Figure]:
        """Every counter and gauge, once (in the summary line's order)."""
        d = self.d
        j, e = d.journal.counts, d.engine.counts
        yield Figure("readings_received", "vitalmon_readings_received_total", j["received"])
        yield Figure("readings_committed", "vitalmon_readings_committed_total", j["committed"])
        yield Figure("duplicates_absorbed", "vitalmon_readings_duplicates_total", j["duplicates"])
        rejected = d.deadletters.counts
        yield Figure("readings_rejected", None, sum(rejected.values()))
        for cause, n in sorted(rejected.items()):
            yield Figure(None, "vitalmon_readings_rejected_total", n, {"cause": cause})
        yield Figure("readings_pruned", "vitalmon_readings_pruned_total", j["pruned"])
        for why in NOT_EVALUATED:
            metric = "vitalmon_readings_not_evaluated_total"
            yield Figure(f"readings_{why}", metric, e[why], {"reason": why})
        yield Figure("store_bytes", "vitalmon_store_bytes", d.journal.used_bytes)
        yield Figure("alerts_active", "vitalmon_alerts_active", len(d.lifecycle.active()))
        yield Figure("series", "vitalmon_series", len(d.engine.series))
        beds = d.engine.capacity.bed_count if d.engine.capacity else 0
        yield Figure("beds", "vitalmon_beds", beds)
        for src in d.sources:  # device links: frames, losses, refusals by cause
            if isinstance(src, LinkCounted):
                for key, n in sorted(src.counts.items()):
                    yield Figure(f"{src.name}.{key}", None, n)
        for fwd in d.forwarders:
            sink = {"sink": fwd.name}
            forwarded = fwd.counts["forwarded"]
            yield Figure(
                f"forwarded[{fwd.name}]", "vitalmon_readings_forwarded_total", forwarded, sink
            )
            yield Figure(f"lag_readings[{fwd.name}]", "vitalmon_store_lag_readings", fwd.lag, sink)
            yield Figure(
                f"lag_seconds[{fwd.name}]", "vitalmon_store_lag_seconds", fwd.lag_s, sink, 1
            )
            dropped = j[f"dropped[{fwd.name}]"]
            yield Figure(f"dropped[{fwd.name}]", "vitalmon_readings_dropped_total", dropped, sink)
        for name, dlv in d.delivery.deliverers.items():  # alerts.routes
            route, c = {"route": name}, dlv.counts
            yield Figure(None, "vitalmon_route_routed_total", c["routed"], route)
            yield Figure(
                f"delivered[{name}]", "vitalmon_route_delivered_total", c["delivered"], route
            )
            yield Figure(
                f"route_failures[{name}]", "vitalmon_route_failures_total", c["failed"], route
            )
            yield Figure(None, "vitalmon_route_held_total", c["held"], route)
            gone = c["superseded"] + c["skipped"]
            yield Figure(None, "vitalmon_route_superseded_total", gone, route)
            yield Figure(
                f"route_rejected[{name}]", "vitalmon_route_rejected_total", c["rejected"], route
            )
            yield Figure(None, "vitalmon_route_lost_total", c["lost"], route)
            yield Figure(f"route_backlog[{name}]", "vitalmon_route_backlog", dlv.backlog, route)
            yield Figure(None, "vitalmon_route_oldest_seconds", dlv.oldest_s, route, 1)
        yield from self._metrics_only()

    def _metrics_only(self) -> Iterator[Figure]:
        d = self.d
        e = d.engine.counts
        yield Figure(None, "vitalmon_devices_expired_total", e["devices_expired"])
        yield Figure(None, "vitalmon_readings_clamped_total", e["clamped"])
        yield Figure(None, "vitalmon_clock_rebases_total", e["clock_rebased"])
        yield Figure(None, "vitalmon_engine_errors_total", e["engine_errors"])
        yield Figure(None, "vitalmon_mqtt_connected", 1 if d.client.connected.is_set() else 0)
        yield Figure(None, "vitalmon_mqtt_reconnects_total", d.client.reconnects)
        yield Figure(None, "vitalmon_mqtt_queued", d.client.outstanding)
        for kind, n in sorted(d.client.dropped.items()):
            yield Figure(None, "vitalmon_mqtt_dropped_total", n, {"kind": kind})
        for (k, p, st), n in sorted(d.alert_sink.events.items()):
            labels = {"kind": k, "priority": p, "state": st}
            yield Figure(None, "vitalmon_alert_events_total", n, labels)
        for name, q, _ in self.stages():
            yield Figure(None, "vitalmon_queue_depth", q.qsize(), {"queue": name})
        unmapped: Counter[str] = Counter()  # (summed over the HL7 sources)
        for src in d.sources:
            if isinstance(src, HasUnmapped):
                unmapped.update(src.unmapped.counts)
        for code, n in sorted(unmapped.items()):
            yield Figure(None, "vitalmon_hl7_unmapped_observations_total", n, {"code": code})

    def samples(self) -> list[Sample]:
        """What ``/metrics`` shows (called at each scrape, in the event loop)."""
        out = [sample(f.metric, f.value, **f.labels) for f in self.figures() if f.metric]
        for src in self.d.sources:
            if isinstance(src, Measured):
                out += src.samples()
        return out

    def metrics(self) -> dict[str, float]:
        """The counters of the summary line."""
        return {
            f.key: f.value if f.digits is None else round(f.value, f.digits)
            for f in self.figures()
            if f.key
        }

    def summary(self) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in self.metrics().items())
