"""The daemon: startup, main loop, shutdown. One TaskGroup owns every task.

Startup runs sinks first, then the engine, then the MQTT connection and the sources,
so nothing is taken in before there is somewhere to put it. Shutdown runs the other
way: sources stop taking input, the engine drains its queue, sinks write what they
accepted, pending alerts are confirmed by the broker, then the client says ``offline``
and disconnects. Signal handlers only set an event; a second SIGINT/SIGTERM forces
the exit.

A task that fails (a bug, or a source whose device is gone for good) does not tear the
process down mid-flight: it is logged with its cause, the daemon goes through the same
orderly shutdown (drain, ``offline``) within its deadline, logs a ``fatal:`` line naming
the root cause, and exits 1 so that systemd restarts it.

SIGHUP reloads the configuration file: it is validated completely first, and an invalid
one is refused with every error logged, the running one kept. A valid one applies its
rules, profiles, beds and alert settings at once, keeping windows, active alerts,
acknowledgements, admissions and pauses; sections that need a restart (mqtt, sources,
store, engine) are reported and left as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from monitor import logs
from monitor.config import (
    Config,
    ConfigError,
    Hl7MllpSourceConfig,
    SerialSourceConfig,
    load,
)
from monitor.engine import Engine
from monitor.engine.capacity import Capacity
from monitor.engine.engine import NOT_EVALUATED
from monitor.engine.lifecycle import Lifecycle
from monitor.engine.system import SYSTEM_WARD, SystemAlarms
from monitor.engine.technical import Staleness
from monitor.metrics import Metrics, Sample, sample
from monitor.mqtt import Client, broker_password
from monitor.notify import Notifier
from monitor.privacy import Pseudonymizer
from monitor.sinks import Sink
from monitor.sinks.alerts import AlertPublisher
from monitor.sinks.forward import Forwarder
from monitor.sinks.influx import InfluxRemote
from monitor.sinks.sqlite import SqliteSink
from monitor.sources import Batch, Source
from monitor.sources.commands import CommandSource
from monitor.sources.deadletter import DeadLetters
from monitor.sources.mqtt import MqttSource
from monitor.sources.serial import SerialSource
from monitor.sources.unmapped import Unmapped

log = logging.getLogger("vitalmon.daemon")

HEARTBEAT_S = 1.0
#: systemd STATUS= (and the pipeline check without a watchdog) this often.
STATUS_EVERY_S = 10.0
SUMMARY_EVERY_S = 300.0


#: Sections a reload cannot change in a running daemon (connections, files, queues).
RESTART_SECTIONS = ("mqtt", "sources", "store", "engine", "spool_path")


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
        self.forwarders = [
            Forwarder(
                r.sink_name,
                self.journal,
                InfluxRemote(r),
                batch_size=r.batch_size,
                start_from=r.start_from,
                retry_min_s=r.retry_min_s,
                retry_max_s=r.retry_max_s,
                flush_interval_s=r.flush_interval_s,
            )
            for r in cfg.remote_sinks
        ]
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
        self.sources: list[Source] = []
        for sc in cfg.sources:
            if isinstance(sc, SerialSourceConfig):
                serial_src = SerialSource(sc, cfg.rules.stale_after_s)
                self.staleness.watch_elsewhere(sc.ward, sc.bed, serial_src.device)  # its own link
                self.sources.append(serial_src)
            elif isinstance(sc, Hl7MllpSourceConfig):
                from monitor.sources.hl7mllp import Hl7MllpSource

                self.sources.append(Hl7MllpSource(sc))
            else:
                self.sources.append(MqttSource(sc, cfg.rules, self.client))
        self.commands = CommandSource(
            self.client,
            self.lifecycle,
            pauses=self.alert_sink,
            audit=self.journal.write_audit,
            pause_max_s=cfg.alerts.pause_max_s,
            beds=self.engine,
            store=self.journal,
            pseudonymize=self.pseudonymizer,
        )
        self.sources.append(self.commands)
        self.system_alarms = SystemAlarms(cfg.mqtt.client_id)
        #: engine.max_* / new_*: what publishers can make the engine keep (engine.capacity)
        self.engine.capacity = Capacity(cfg.engine, self.system_alarms)
        self.journal.on_condition = self._condition
        self.journal.on_slow = self._slow_commit
        self.client.on_condition = self._condition  # mqtt.session_lost
        for fwd in self.forwarders:
            fwd.on_condition = self._condition
        #: systemd: READY=1 / WATCHDOG=1 / RELOADING=1 / STOPPING=1 (a no-op elsewhere).
        self.notifier = Notifier()
        self.watchdog_s = self.notifier.watchdog_interval()
        self._progress: dict[str, tuple[float, int]] = {}  #: stage -> (progress, waiting)
        self._moving = (True, "")
        self._rate_mark = (time.monotonic(), 0)
        self.metrics_server: Metrics | None = None
        if cfg.metrics.listen:
            self.metrics_server = Metrics(self.samples, self.health)
            self.engine.on_latency = self.metrics_server.observe_latency
        self.should_exit = asyncio.Event()
        self.reload_requested = asyncio.Event()
        #: Set after each SIGHUP has been handled (tests and systemd wait on it).
        self.reloaded = asyncio.Event()
        self.started = asyncio.Event()
        self._forced = asyncio.Event()
        self._signals = 0
        self._background: set[asyncio.Task[None]] = set()
        self._engine_stopped = False
        #: Why the daemon is ending on its own (a task failed): the ``fatal:`` lines.
        self.fatal: list[str] = []
        #: The degraded-mode connection while the store refuses commits (``_degrade``),
        #: and the store alarms active that call for it.
        self._shadow: Client | None = None
        self._store_faults: set[str] = set()

    def _condition(self, rule: str, component: str, active: bool, detail: str) -> None:
        """A store or sink condition changed: raise or resolve its technical alarm."""
        event = self.system_alarms.set(rule, component, active, detail)
        if event is None:
            return
        event = self.lifecycle.observe(event)
        (log.warning if active else log.info)(
            "technical alarm %s %s: %s", rule, event.state, detail
        )
        if rule in ("store.full", "store.failed", "store.stalled") and component == "disk":
            (self._store_faults.add if active else self._store_faults.discard)(rule)
            self._degrade(bool(self._store_faults))
        if self._engine_stopped:
            return  # shutting down: logged; an active one carries over from the store
        task = asyncio.get_running_loop().create_task(
            self.engine.put(Batch([], events=[event])), name="vitalmon.system-alarm"
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _slow_commit(self, slow: bool) -> None:
        """A commit has been running for a second (no alarm yet: ``store.stalled`` comes
        at 3 s): the degraded mode starts already, before the broker's window is full."""
        (self._store_faults.add if slow else self._store_faults.discard)("commit.slow")
        self._degrade(bool(self._store_faults))

    def _degrade(self, on: bool) -> None:
        """The store refuses commits (``on``) or takes them again. Nothing is acknowledged
        meanwhile, so the broker's window of unacknowledged messages fills and it stops
        sending: a second, clean-session connection takes QoS 0 copies for the alarms
        (evaluated, never stored; see :meth:`MqttSource.shadow`)."""
        sources = [s for s in self.sources if isinstance(s, MqttSource)]
        if not sources or self._engine_stopped:
            return
        if on and self._shadow is None:
            shadow = Client(
                self.cfg.mqtt, persistent=False, client_id=f"{self.cfg.mqtt.client_id}-degraded"
            )
            for src in sources:
                src.shadow(shadow)
            shadow.start()
            self._shadow = shadow
            log.warning(
                "store refusing commits: alarms go on from QoS 0 copies on a second "
                "connection (%s); the broker keeps the durable ones",
                shadow.client_id,
            )
        elif not on and self._shadow is not None:
            shadow, self._shadow = self._shadow, None
            for src in sources:
                src.shadow(None)
            loop = asyncio.get_running_loop()
            task = loop.create_task(shadow.stop(timeout=2.0), name="vitalmon.degraded-stop")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            log.info("store commits again: the degraded-mode connection is closed")

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
            if isinstance(src, SerialSource):
                src.check()
        for sink in self.sinks:  # sinks first: raise here if one cannot work
            await sink.open()
        for fwd in self.forwarders:
            await fwd.open()
        # admitted beds (and their profiles), then alerts open at the last stop: they go
        # on (and resolve) in this run
        admissions = await self.journal.admissions()
        self.engine.restore_admissions(admissions)
        for a in admissions:
            self.staleness.expect(a.ward, a.bed, time.time())
        if admissions:
            log.info("%d admitted bed(s) carried over", len(admissions))
        still_open = await self.journal.active_alerts()
        closed = self.engine.restore(still_open)
        gone = {id(e) for e in closed}  # (identity: a linear start-up however many alerts)
        carried = [e for e in still_open if id(e) not in gone and e.ward != SYSTEM_WARD]
        self.lifecycle.restore(carried)
        self.alert_sink.seed(carried)
        tasks: dict[str, list[asyncio.Task[None]]] = {"sinks": [], "sources": [], "forwarders": []}

        def start(group: str, coro: Coroutine[Any, Any, None], name: str) -> None:
            tasks.setdefault(group, []).append(
                tg.create_task(self._supervised(coro, name), name=name)
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
        # the alerts closed by the restart go out through the running sinks (their queues
        # are bounded: a put before their consumer runs would wait for ever): the journal
        # now, in one item; the publisher in the background, so that start-up (and a
        # SIGTERM) never waits on tens of thousands of publications
        await self.journal.write([], closed)
        for sink in self.sinks:
            if sink is not self.journal and closed:
                task = asyncio.get_running_loop().create_task(
                    sink.write([], closed), name=f"vitalmon.closed-at-restart[{sink.name}]"
                )
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        for src in self.sources:
            start(
                "sources", src.run(self._take_in, self.deadletters), f"vitalmon.source[{src.name}]"
            )
        self.started.set()
        return tasks

    async def _supervised(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run one of the daemon's tasks; if it fails, the daemon shuts down in order."""
        try:
            await coro
        except Exception as exc:  # noqa: BLE001 - any failure ends the daemon, named
            self.fail(name, exc)

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
                await self.reload()
                self.notifier.ready(self.status_line())
                self.reloaded.set()
            if time.monotonic() - last_check >= check_every:
                last_check = time.monotonic()
                self._moving = self.moving()
                if self._moving[0]:
                    if self.watchdog_s:
                        self.notifier.watchdog()
                else:
                    log.warning("pipeline stuck: %s (watchdog not pinged)", self._moving[1])
            if time.monotonic() - last_status >= STATUS_EVERY_S:  # (before READY too)
                last_status = time.monotonic()
                self.notifier.status(self.status_line())
            self.alert_sink.tick(time.time())  # pauses that have ended
            for fwd in self.forwarders:  # sink.down on time, not on the next retry
                fwd.check()
            self.journal.check()  # store.stalled: a commit that does not return
            due = self.lifecycle.tick()  # escalations, re-notifications
            if self.client.connected.is_set():
                if deaf:
                    self.staleness.grace(time.time())  # silence while we were cut off
                    deaf = False
                for e in self.staleness.check(time.time()):
                    e.patient = self.engine.patients.get((e.ward, e.bed))
                    due.append(self.lifecycle.observe(e))
                # devices of beds nobody expects, stale for rules.stale_expire_s: forgotten
                for e in self.engine.sweep(time.time()):
                    due.append(self.lifecycle.observe(e))
            else:
                deaf = True
            # one batch per heartbeat: the clock tick (NEWS2 holds and input expiry run on
            # time, see Engine.tick) with the escalations and technical alarms due
            beat = Batch([], events=due, tick=time.time())
            if due:
                await self.engine.put(beat)
            else:  # a tick alone never waits: with the queue full, the next one covers it
                with contextlib.suppress(asyncio.QueueFull):
                    self.engine.queue.put_nowait(beat)
            if self.client.connected.is_set() and not ready_logged:
                log.info("ready: connected, subscribed, store open")
                self.notifier.ready(self.status_line())
                ready_logged = True
            if time.monotonic() - last_summary >= SUMMARY_EVERY_S:
                last_summary = time.monotonic()
                log.info("%s", self.summary())

    async def reload(self) -> bool:
        """Re-read the config file and apply what can change while running."""
        if self.config_path is None:
            log.warning("SIGHUP: no config file to reload (started without one)")
            return False
        try:
            new = load(self.config_path)
        except ConfigError as exc:
            log.error(
                "reload refused, the running configuration is kept; %d error(s) in %s:",
                len(exc.errors),
                self.config_path,
            )
            for err in exc.errors:
                log.error("  %s", err)
            return False
        old = self.cfg
        stuck = [s for s in RESTART_SECTIONS if getattr(new, s) != getattr(old, s)]
        if stuck:
            log.warning(
                "reload: %s changed; that takes a restart (kept as running)", ", ".join(stuck)
            )
        applied = new.model_copy(update={s: getattr(old, s) for s in RESTART_SECTIONS})
        profiles, _errors = applied.resolve_profiles()
        events = self.engine.reconfigure(applied.rules, profiles, applied.bed_profiles())
        for ward, bed in applied.expected_beds:
            if (ward, bed) not in old.beds_keys():
                self.staleness.expect(ward, bed, time.time())
        self.lifecycle.cfg = applied.alerts
        self.alert_sink.cfg = applied.alerts
        self.alert_sink.score_topic = applied.rules.news2.topic
        self.commands.pause_max_s = applied.alerts.pause_max_s
        logs.reconfigure(applied.log)
        self.cfg = applied
        if events:
            await self.engine.put(Batch([], events=[self.lifecycle.observe(e) for e in events]))
        log.info(
            "reloaded %s: rules, profiles, beds and alerts applied (%d alert(s) closed "
            "by the change)",
            self.config_path,
            len(events),
        )
        return True

    def _stages(self) -> list[tuple[str, asyncio.Queue[Any], float]]:
        return [
            ("engine", self.engine.queue, self.engine.counts["batches"]),
            ("store", self.journal.queue, self.journal.counts["commits"]),
            ("alerts", self.alert_sink.queue, self.alert_sink.counts["handled"]),
        ]

    def moving(self) -> tuple[bool, str]:
        """Is the pipeline moving? A stage is stuck when work waited at the last check,
        still waits, and none got through in between. (A blocked event loop cannot even
        ask.)"""
        stuck = []
        for name, queue, progress in self._stages():
            if name == "store" and (self.journal.failure is not None or self.journal.committing):
                continue  # retrying a refusing disk, alarmed (store.full/failed): not stuck
            waiting = queue.qsize()
            # stuck: work was waiting at the last check already, is still waiting, and
            # nothing got through since (a burst that just arrived is not a stall)
            before = self._progress.get(name)
            if waiting and before is not None and before[1] and before[0] == progress:
                stuck.append(f"{name} ({waiting} waiting, no progress)")
            self._progress[name] = (progress, waiting)
        return (not stuck, ", ".join(stuck))

    def health(self) -> tuple[bool, str]:
        """``/healthz``: connected to the broker and the pipeline moving."""
        if not self.client.connected.is_set():
            return False, "not connected to the broker"
        if self.journal.failure is not None or self.journal.stalled:
            why = "a commit does not return" if self.journal.stalled else self.journal.failure
            return False, f"store failing: {why} (alerts go on; see the store alarm)"
        if not self._moving[0]:
            return False, f"pipeline stuck: {self._moving[1]}"
        return True, "ok"

    def status_line(self) -> str:
        """systemd STATUS=: beds, readings/s, active alerts."""
        now = time.monotonic()
        received = self.journal.counts["received"]
        last_t, last_n = self._rate_mark
        rate = (received - last_n) / (now - last_t) if now > last_t else 0.0
        self._rate_mark = (now, received)
        beds = len({(k.ward, k.bed) for k in self.engine.series})
        connected = "" if self.client.connected.is_set() else "; broker not connected"
        return (
            f"{beds} beds, {rate:.0f} readings/s, {len(self.lifecycle.active())} active "
            f"alerts{connected}"
        )

    def samples(self) -> list[Sample]:
        """What ``/metrics`` shows (called at each scrape, in the event loop)."""
        j = self.journal.counts
        out = [
            sample("vitalmon_readings_received_total", j["received"]),
            sample("vitalmon_readings_committed_total", j["committed"]),
            sample("vitalmon_readings_duplicates_total", j["duplicates"]),
            sample("vitalmon_readings_pruned_total", j["pruned"]),
            sample("vitalmon_alerts_active", len(self.lifecycle.active())),
            sample("vitalmon_series", len(self.engine.series)),
            sample("vitalmon_beds", self.engine.capacity.bed_count if self.engine.capacity else 0),
            sample("vitalmon_devices_expired_total", self.engine.counts["devices_expired"]),
            sample("vitalmon_store_bytes", self.journal.used_bytes),
            sample("vitalmon_mqtt_connected", 1 if self.client.connected.is_set() else 0),
            sample("vitalmon_mqtt_reconnects_total", self.client.reconnects),
            sample("vitalmon_mqtt_queued", self.client.outstanding),
        ]
        out += [
            sample("vitalmon_mqtt_dropped_total", n, kind=kind)
            for kind, n in sorted(self.client.dropped.items())
        ]
        out += [
            sample("vitalmon_readings_rejected_total", n, cause=cause)
            for cause, n in sorted(self.deadletters.counts.items())
        ]
        e = self.engine.counts
        out += [
            sample("vitalmon_readings_not_evaluated_total", e[why], reason=why)
            for why in NOT_EVALUATED
        ]
        out.append(sample("vitalmon_readings_clamped_total", e["clamped"]))
        out.append(sample("vitalmon_clock_rebases_total", e["clock_rebased"]))
        out.append(sample("vitalmon_engine_errors_total", e["engine_errors"]))
        out += [
            sample("vitalmon_alert_events_total", n, kind=k, priority=p, state=st)
            for (k, p, st), n in sorted(self.alert_sink.events.items())
        ]
        out += [
            sample("vitalmon_queue_depth", q.qsize(), queue=name) for name, q, _ in self._stages()
        ]
        unmapped: Counter[str] = Counter()  # (summed over the HL7 sources)
        for src in self.sources:
            if isinstance(src, SerialSource):
                is_open = 1 if src.connected.is_set() else 0
                out.append(sample("vitalmon_serial_port_open", is_open, port=src.cfg.port))
            counted = getattr(src, "unmapped", None)
            if isinstance(counted, Unmapped):
                unmapped.update(counted.counts)
        out += [
            sample("vitalmon_hl7_unmapped_observations_total", n, code=code)
            for code, n in sorted(unmapped.items())
        ]
        for fwd in self.forwarders:
            out += [
                sample("vitalmon_readings_forwarded_total", fwd.counts["forwarded"], sink=fwd.name),
                sample("vitalmon_readings_dropped_total", j[f"dropped[{fwd.name}]"], sink=fwd.name),
                sample("vitalmon_store_lag_readings", fwd.lag, sink=fwd.name),
                sample("vitalmon_store_lag_seconds", fwd.lag_s, sink=fwd.name),
            ]
        return out

    def metrics(self) -> dict[str, float]:
        """Counters of the path (the ops issue exports them; the log prints them now)."""
        j = self.journal.counts
        out: dict[str, float] = {
            "readings_received": j["received"],
            "readings_committed": j["committed"],
            "duplicates_absorbed": j["duplicates"],
            "readings_rejected": sum(self.deadletters.counts.values()),
            "readings_pruned": j["pruned"],
            **{f"readings_{why}": self.engine.counts[why] for why in NOT_EVALUATED},
            "store_bytes": self.journal.used_bytes,
            "alerts_active": len(self.lifecycle.active()),
            "series": len(self.engine.series),
            "beds": self.engine.capacity.bed_count if self.engine.capacity else 0,
        }
        for src in self.sources:  # device links: frames, losses, refusals by cause
            counts = getattr(src, "counts", None)
            if isinstance(src, SerialSource) or src.name.startswith("hl7-mllp"):
                for key, n in sorted((counts or {}).items()):
                    out[f"{src.name}.{key}"] = n
        for fwd in self.forwarders:
            out[f"forwarded[{fwd.name}]"] = fwd.counts["forwarded"]
            out[f"lag_readings[{fwd.name}]"] = fwd.lag
            out[f"lag_seconds[{fwd.name}]"] = round(fwd.lag_s, 1)
            out[f"dropped[{fwd.name}]"] = j[f"dropped[{fwd.name}]"]
        return out

    def summary(self) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in self.metrics().items())

    async def shutdown(self, tasks: dict[str, list[asyncio.Task[None]]]) -> None:
        deadline = time.monotonic() + self.cfg.engine.shutdown_timeout_s
        self.notifier.stopping("draining")
        try:
            for src in self.sources:
                src.stop()
            await self._join(tasks["sources"], deadline, "sources")
            await asyncio.gather(*self._background)  # technical alarms raised until now
            self._engine_stopped = True
            self.engine.stop()
            await self._join(tasks["engine"], deadline, "engine")
            for sink in self.sinks:
                sink.close()
            await self._join(tasks["sinks"], deadline, "sinks")
            for fwd in self.forwarders:
                fwd.close()
            await self._join(tasks["forwarders"], deadline - 0.5, "forwarders")
            if self.metrics_server is not None:
                self.metrics_server.close()
            await self._join(tasks.get("metrics", []), deadline, "metrics")
        finally:
            remaining = max(0.2, deadline - time.monotonic())
            if self._shadow is not None:
                await self._shadow.stop(timeout=min(remaining, 1.0))
            await self.client.stop(timeout=min(remaining, 2.0))
            await self.journal.release()
            log.info("stopped: %s", self.summary())

    async def _join(self, tasks: list[asyncio.Task[None]], deadline: float, what: str) -> None:
        """Wait for ``tasks`` until the deadline or a forced exit, then cancel the rest."""
        forced = asyncio.create_task(self._forced.wait(), name="vitalmon.forced")
        pending = set(tasks)
        try:
            while pending and not forced.done():
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                done, _ = await asyncio.wait(
                    [*pending, forced], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                pending -= done
        finally:
            forced.cancel()
        if pending:
            why = "forced exit" if self._forced.is_set() else "shutdown budget exceeded"
            log.warning(
                "%s: cancelling %s (%s)", why, ", ".join(t.get_name() for t in pending), what
            )
            for t in pending:
                t.cancel()
            await asyncio.wait(pending)


def root_cause(exc: BaseException) -> str:
    """What went wrong, named: the innermost exception of groups and chains, with its type
    (``OperationalError: database or disk is full``), not "unhandled errors in a
    TaskGroup"."""
    while True:
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        elif exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            break
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


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
