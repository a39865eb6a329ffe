"""The daemon: startup, main loop, shutdown. One TaskGroup owns every task.

Startup runs sinks first, then the engine, then the MQTT connection (and the alert
routes, :mod:`monitor.sinks.delivery`) and the sources, so nothing is taken in before
there is somewhere to put it. Shutdown runs the other way: sources stop taking input,
the engine drains its queue, sinks write what they accepted, the routes deliver what the
journal committed (within the budget; the rest waits in the journal), pending alerts are
confirmed by the broker, then the client says ``offline`` and disconnects. Signal
handlers only set an event; a second SIGINT/SIGTERM forces the exit.

A task that fails (a bug, or a source whose device is gone for good) does not tear the
process down mid-flight: it is logged with its cause, the daemon goes through the same
orderly shutdown (drain, ``offline``) within its deadline, logs a ``fatal:`` line naming
the root cause, and exits 1 so that systemd restarts it.

SIGHUP reloads the configuration file (:mod:`monitor.reload`). Sources and remote sinks
are built from the registries by their config ``type`` (:mod:`monitor.sources`,
:mod:`monitor.sinks`); the degraded mode while the store refuses commits is
:mod:`monitor.degraded`, what the daemon reports about itself :mod:`monitor.status`,
and the supervision of its tasks :mod:`monitor.supervise`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from monitor import logs
from monitor.config import Config
from monitor.degraded import DegradedMode
from monitor.engine import Engine
from monitor.engine.capacity import Capacity
from monitor.engine.lifecycle import Lifecycle
from monitor.engine.system import SYSTEM_WARD, SystemAlarms
from monitor.engine.technical import Staleness
from monitor.metrics import Metrics
from monitor.model import AlertEvent
from monitor.mqtt import Client, broker_password
from monitor.notify import Notifier
from monitor.privacy import Pseudonymizer
from monitor.reload import reload
from monitor.sinks import Sink, build_remote_sink
from monitor.sinks.alerts import AlertPublisher
from monitor.sinks.delivery import Delivery
from monitor.sinks.sqlite import SqliteSink
from monitor.sources import (
    Batch,
    Clustered,
    Source,
    SourceContext,
    Startup,
    bed_owner,
    build_source,
)
from monitor.sources.commands import CommandSource, KeptPauses
from monitor.sources.deadletter import DeadLetters
from monitor.status import Status
from monitor.supervise import Background, join, root_cause, supervised

log = logging.getLogger("vitalmon.daemon")

HEARTBEAT_S = 1.0
#: systemd STATUS= (and the pipeline check without a watchdog) this often.
STATUS_EVERY_S = 10.0
SUMMARY_EVERY_S = 300.0


class Daemon:
    def __init__(
        self, cfg: Config, config_path: str | None = None, log_level: str | None = None
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self._log_override = log_level
        with contextlib.suppress(OSError):  # unusable: the client's start says so, fatally
            secret = broker_password(cfg.mqtt)
            if secret:
                logs.redact(secret)  # defence in depth: it is never logged anyway
        self.client = Client(cfg.mqtt)
        self.deadletters = DeadLetters(
            lambda topic, payload: self.client.publish(topic, payload, qos=0)
        )
        #: The SQLite store: durable journal, committed before any MQTT acknowledgement.
        self.pseudonymizer = (
            Pseudonymizer.from_file(cfg.privacy.key_file)
            if cfg.privacy.pseudonymize_patient and cfg.privacy.key_file
            else None
        )
        self.journal = SqliteSink(cfg.journal)
        self.alert_sink = AlertPublisher(cfg.alerts, self.client, score_topic=cfg.rules.news2.topic)
        self.sinks: list[Sink] = [self.journal, self.alert_sink]
        self.forwarders = [build_remote_sink(r, self.journal) for r in cfg.remote_sinks]
        #: alerts.routes: outboxes in the journal, a deliverer per route; pauses held as
        #: the publisher holds them
        self.delivery = Delivery(
            cfg.alerts.routes,
            self.journal,
            self.client,
            pauses=self.alert_sink,
            breakthrough=lambda: self.alert_sink.cfg.pause_breakthrough,
        )
        self.lifecycle = Lifecycle(cfg.alerts)
        self.engine = Engine(
            cfg.rules,
            self.sinks,
            cfg.engine.queue_size,
            durable=self.journal,
            lifecycle=self.lifecycle,
            profiles=cfg.resolve_profiles()[0],
            beds=cfg.bed_profiles(),
        )
        self.engine.score_sink = self.alert_sink
        self.staleness = Staleness(
            cfg.rules.stale_after_s,
            cfg.expected_beds,
            time.time(),
            cfg.rules.stale_factor,
            cfg.rules.stale_unknown_s,
            cfg.rules.stale_expire_s,
        )
        self.engine.staleness = self.staleness
        shared = SourceContext(cfg.rules, self.client, self.staleness.watch_elsewhere)
        self.sources: list[Source] = [build_source(sc, shared) for sc in cfg.sources]
        pauses: Any = self.alert_sink
        elsewhere = None
        for src in self.sources:  # a partition's state kept in the cluster, for the next owner
            if isinstance(src, Clustered):
                self.engine.keeper = src.state
                self.engine.on_carried = self.alert_sink.carried
                self.engine.on_handed_over = self.alert_sink.forget
                src.pauses = self.alert_sink  # (pauses taken on from the last owner)
                pauses = KeptPauses(self.alert_sink, src.state)
                elsewhere = src.state.forward_ack
                src.relay.qos = cfg.alerts.qos  # (alert events: de-duplicated, relayed)
                src.relay.direct = frozenset({SYSTEM_WARD})  # (the daemon's own: direct)
                self.alert_sink.outbox = src.relay
        self.commands = CommandSource(
            self.client,
            elsewhere=elsewhere,
            pauses=pauses,
            audit=self.journal.write_audit,
            pause_max_s=cfg.alerts.pause_max_s,
            beds=self.engine,
            store=self.journal,
            pseudonymize=self.pseudonymizer,
        )
        self.sources.append(self.commands)
        self.engine.owner = bed_owner(self.sources)  # (partitioned sources: whose bed)
        self.system_alarms = SystemAlarms(cfg.mqtt.client_id)
        #: engine.max_* / new_*: what publishers can make the engine keep (engine.capacity)
        self.engine.capacity = Capacity(cfg.engine, self.system_alarms)
        self._background = Background()
        self._engine_stopped = False
        #: Alarms go on from QoS 0 copies while the store refuses commits.
        self.degraded = DegradedMode(
            cfg.mqtt, self.sources, self._background, lambda: self._engine_stopped
        )
        self.journal.on_condition = self._condition
        self.journal.on_slow = self.degraded.slow_commit
        self.client.on_condition = self._condition  # mqtt.session_lost
        for fwd in self.forwarders:
            fwd.on_condition = self._condition
        self.delivery.on_condition = self._condition
        #: systemd: READY=1 / WATCHDOG=1 / RELOADING=1 / STOPPING=1 (a no-op elsewhere).
        self.notifier = Notifier()
        self.watchdog_s = self.notifier.watchdog_interval()
        #: /metrics, /healthz, STATUS=, the pipeline check and the summary line.
        self.status = Status(self)
        self.metrics_server: Metrics | None = None
        if cfg.metrics.listen:
            self.metrics_server = Metrics(self.status.samples, self.status.health)
            self.engine.on_latency = self.metrics_server.observe_latency
        self.should_exit = asyncio.Event()
        self.reload_requested = asyncio.Event()
        #: Set after each SIGHUP has been handled (tests and systemd wait on it).
        self.reloaded = asyncio.Event()
        self.started = asyncio.Event()
        self._forced = asyncio.Event()
        self._signals = 0
        #: Why the daemon is ending on its own (a task failed): the ``fatal:`` lines.
        self.fatal: list[str] = []

    def _condition(self, rule: str, component: str, active: bool, detail: str) -> None:
        """A store or sink condition changed: raise or resolve its technical alarm."""
        event = self.system_alarms.set(rule, component, active, detail)
        if event is None:
            return
        (log.warning if active else log.info)(
            "technical alarm %s %s: %s", rule, event.state, detail
        )
        self.degraded.condition(rule, component, active)
        if self._engine_stopped:
            return  # shutting down: logged; an active one carries over from the store
        self._background.spawn(self.engine.put(Batch([], alarms=[event])), "vitalmon.system-alarm")

    # ------------------------------------------------------------------- signals

    def handle_signal(self, sig: int) -> None:
        """Only sets flags: the main loop does the work."""
        self._signals += 1
        if self._signals > 1:
            log.warning("second %s: forcing exit", signal.Signals(sig).name)
            self._forced.set()
        else:
            log.info("%s: shutting down", signal.Signals(sig).name)
        self.should_exit.set()

    async def _take_in(self, batch: Batch) -> None:
        """What sources emit: pseudonymised first when ``privacy.pseudonymize_patient``,
        so no raw patient id reaches the store, the alerts or the logs."""
        pseudo = self.pseudonymizer
        if pseudo is not None:
            batch.readings = [
                r if r.patient is None else replace(r, patient=pseudo(r.patient))
                for r in batch.readings
            ]
            batch.statuses = [
                s if s.patient is None else replace(s, patient=pseudo(s.patient))
                for s in batch.statuses
            ]
            batch.device_alarms = [
                a if a.patient is None else replace(a, patient=pseudo(a.patient))
                for a in batch.device_alarms
            ]
        await self.engine.put(batch)

    def handle_reload(self) -> None:
        """SIGHUP: only sets a flag; the main loop reloads."""
        self.reload_requested.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self.handle_reload)

    # --------------------------------------------------------------------- serve

    async def serve(self) -> None:
        self._install_signal_handlers()
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = await self.startup(tg)
                try:
                    await self.main_loop()
                finally:  # (main_loop itself failing still drains and says offline)
                    await self.shutdown(tasks)
        finally:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def startup(self, tg: asyncio.TaskGroup) -> dict[str, list[asyncio.Task[None]]]:
        for src in self.sources:  # a port that must be there (startup_error_behavior: error)
            if isinstance(src, Startup):
                src.check()
        for sink in self.sinks:  # sinks first: raise here if one cannot work
            await sink.open()
        for fwd in self.forwarders:
            await fwd.open()
        await self.delivery.open()
        # admitted beds (and their profiles), then alerts open at the last stop: they go
        # on (and resolve) in this run
        admissions = await self.journal.admissions()
        self.engine.restore_admissions(admissions)
        for a in admissions:
            self.staleness.expect(a.ward, a.bed, time.time())
        if admissions:
            log.info("%d admitted bed(s) carried over", len(admissions))
        still_open = await self.journal.active_alerts()
        closed = self.engine.restore(still_open)  # (and its lifecycle takes the others)
        self.alert_sink.seed(self.lifecycle.active())
        tasks: dict[str, list[asyncio.Task[None]]] = {
            "sinks": [],
            "sources": [],
            "forwarders": [],
            "delivery": [],
        }

        def start(group: str, coro: Coroutine[Any, Any, None], name: str) -> None:
            tasks.setdefault(group, []).append(
                tg.create_task(supervised(coro, name, self.fail), name=name)
            )

        for sink in self.sinks:
            start("sinks", sink.run(), f"vitalmon.sink[{sink.name}]")
        for fwd in self.forwarders:
            start("forwarders", fwd.run(), f"vitalmon.forward[{fwd.name}]")
        start("engine", self.engine.run(), "vitalmon.engine")
        tasks["metrics"] = []
        if self.metrics_server is not None and self.cfg.metrics.listen:
            start("metrics", self.metrics_server.serve(self.cfg.metrics.listen), "vitalmon.metrics")
        self.client.start()
        for name, coro in self.delivery.tasks():  # (after the client: routes of type mqtt)
            start("delivery", coro, name)
        # the alerts closed by the restart go out through the running sinks (their queues
        # are bounded: a put before their consumer runs would wait for ever): the journal
        # now, in one item; the publisher in the background, so that start-up (and a
        # SIGTERM) never waits on tens of thousands of publications
        await self.journal.write([], closed)
        for sink in self.sinks:
            if sink is not self.journal and closed:
                self._background.spawn(
                    sink.write([], closed), f"vitalmon.closed-at-restart[{sink.name}]"
                )
        for src in self.sources:
            start(
                "sources", src.run(self._take_in, self.deadletters), f"vitalmon.source[{src.name}]"
            )
        self.started.set()
        return tasks

    def fail(self, where: str, exc: BaseException) -> None:
        """A task failed: log it with its traceback, and end the daemon through the
        orderly shutdown; ``run`` logs the ``fatal:`` line and exits 1."""
        cause = root_cause(exc)
        self.fatal.append(f"{where}: {cause}")
        log.error("%s failed: %s; shutting down", where, cause, exc_info=exc)
        self.should_exit.set()

    async def main_loop(self) -> None:
        ready_logged = False
        deaf = True  # not (yet) connected: silence of devices tells nothing
        self.notifier.status(f"connecting to {self.cfg.mqtt.host}:{self.cfg.mqtt.port}")
        last_summary = last_status = last_check = time.monotonic()
        # the pipeline is judged (and systemd's watchdog pinged) twice per WatchdogSec
        # (minus a heartbeat, so a ping is never later than WatchdogSec/2)
        check_every = (
            max(HEARTBEAT_S, self.watchdog_s / 2 - HEARTBEAT_S)
            if self.watchdog_s
            else STATUS_EVERY_S
        )
        while not self.should_exit.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.should_exit.wait(), HEARTBEAT_S)
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.notifier.reloading("reloading the configuration")
                await reload(self)
                self.notifier.ready(self.status.status_line())
                self.reloaded.set()
            if time.monotonic() - last_check >= check_every:
                last_check = time.monotonic()
                moving, stuck = self.status.moving()
                if moving:
                    if self.watchdog_s:
                        self.notifier.watchdog()
                else:
                    log.warning("pipeline stuck: %s (watchdog not pinged)", stuck)
            if time.monotonic() - last_status >= STATUS_EVERY_S:  # (before READY too)
                last_status = time.monotonic()
                self.notifier.status(self.status.status_line())
            self.alert_sink.tick(time.time())  # pauses that have ended
            for fwd in self.forwarders:  # sink.down on time, not on the next retry
                fwd.check()
            self.delivery.check()
            self.journal.check()  # store.stalled: a commit that does not return
            due: list[AlertEvent] = []
            if self.client.connected.is_set():
                if deaf:
                    self.staleness.grace(time.time())  # silence while we were cut off
                    deaf = False
                due += self.staleness.check(time.time())
                # devices of beds nobody expects, stale for rules.stale_expire_s: forgotten
                due += self.engine.sweep(time.time())
            else:
                deaf = True
            # one batch per heartbeat: the clock tick (the lifecycle's escalations and
            # re-notifications, NEWS2 holds and input expiry: see Engine.run) with the
            # technical alarms due
            beat = Batch([], alarms=due, tick=time.time())
            if due or self.lifecycle.due():
                await self.engine.put(beat)
            else:  # a tick alone never waits: with the queue full, the next one covers it
                with contextlib.suppress(asyncio.QueueFull):
                    self.engine.queue.put_nowait(beat)
            if self.client.connected.is_set() and not ready_logged:
                log.info("ready: connected, subscribed, store open")
                self.notifier.ready(self.status.status_line())
                ready_logged = True
            if time.monotonic() - last_summary >= SUMMARY_EVERY_S:
                last_summary = time.monotonic()
                log.info("%s", self.summary())

    def summary(self) -> str:
        """The counters, one line (logged every few minutes and at the stop)."""
        return self.status.summary()

    async def shutdown(self, tasks: dict[str, list[asyncio.Task[None]]]) -> None:
        deadline = time.monotonic() + self.cfg.engine.shutdown_timeout_s
        self.notifier.stopping("draining")
        try:
            for src in self.sources:
                src.stop()
            await join(tasks["sources"], deadline, self._forced, "sources")
            await self._background.wait()  # technical alarms raised until now
            self._engine_stopped = True
            self.engine.stop()
            await join(tasks["engine"], deadline, self._forced, "engine")
            for sink in self.sinks:
                sink.close()
            await join(tasks["sinks"], deadline, self._forced, "sinks")
            for fwd in self.forwarders:
                fwd.close()
            self.delivery.close()  # (what the journal committed goes out, within the budget)
            await join(tasks["forwarders"], deadline - 0.5, self._forced, "forwarders")
            await join(tasks["delivery"], deadline - 0.5, self._forced, "alert routes")
            if self.metrics_server is not None:
                self.metrics_server.close()
            await join(tasks.get("metrics", []), deadline, self._forced, "metrics")
        finally:
            remaining = max(0.2, deadline - time.monotonic())
            await self.degraded.close(timeout=min(remaining, 1.0))
            await self.client.stop(timeout=min(remaining, 2.0))
            await self.journal.release()
            log.info("stopped: %s", self.summary())


def run(cfg: Config, config_path: str | None = None, log_level: str | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT (SIGHUP reloads ``config_path``); returns the
    process exit code: 0 after a stop by signal, 1 when something failed (each cause on
    a ``fatal:`` line)."""
    failed: list[str] = []
    try:
        daemon = Daemon(cfg, config_path, log_level)
    except Exception as exc:  # noqa: BLE001 - (paho not the release tested, ...): named
        log.error("fatal: %s", root_cause(exc))
        return 1
    try:
        asyncio.run(daemon.serve())
    except (Exception, BaseExceptionGroup) as exc:  # named below, exit 1
        if isinstance(exc, BaseExceptionGroup):
            failed += [root_cause(e) for e in exc.exceptions]
        else:
            failed.append(root_cause(exc))
        log.debug("what ended the daemon", exc_info=exc)
    for why in [*daemon.fatal, *failed]:
        log.error("fatal: %s", why)
    return 1 if daemon.fatal or failed else 0
