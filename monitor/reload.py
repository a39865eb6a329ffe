"""SIGHUP: the configuration file is read again and validated completely first; an
invalid one is refused with every error logged, the running one kept. A valid one
applies its rules, profiles, beds and alert settings at once, keeping windows, active
alerts, acknowledgements, admissions and pauses; sections that need a restart (mqtt,
sources, store, engine, alerts.routes) are reported and left as they were."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from monitor import logs
from monitor.config import ConfigError, load
from monitor.sources import Batch

if TYPE_CHECKING:
    from monitor.daemon import Daemon

log = logging.getLogger("vitalmon.daemon")

#: Sections a reload cannot change in a running daemon (connections, files, queues).
RESTART_SECTIONS = ("mqtt", "sources", "store", "engine", "spool_path")


async def reload(d: Daemon) -> bool:
    """SIGHUP: re-read ``d``'s config file and apply what can change while running."""
    if d.config_path is None:
        log.warning("SIGHUP: no config file to reload (started without one)")
        return False
    try:
        new = load(d.config_path)
    except ConfigError as exc:
        log.error(
            "reload refused, the running configuration is kept; %d error(s) in %s:",
            len(exc.errors),
            d.config_path,
        )
        for err in exc.errors:
            log.error("  %s", err)
        return False
    old = d.cfg
    stuck = [s for s in RESTART_SECTIONS if getattr(new, s) != getattr(old, s)]
    if stuck:
        log.warning("reload: %s changed; that takes a restart (kept as running)", ", ".join(stuck))
    applied = new.model_copy(update={s: getattr(old, s) for s in RESTART_SECTIONS})
    if applied.alerts.routes != old.alerts.routes:  # (receivers, outboxes: built at start)
        log.warning("reload: alerts.routes changed; that takes a restart (kept as running)")
        kept = applied.alerts.model_copy(update={"routes": old.alerts.routes})
        applied = applied.model_copy(update={"alerts": kept})
    profiles, _errors = applied.resolve_profiles()
    events = d.engine.reconfigure(
        applied.rules, profiles, applied.bed_profiles(), alerts=applied.alerts
    )
    for ward, bed in applied.expected_beds:
        if (ward, bed) not in old.beds_keys():
            d.staleness.expect(ward, bed, time.time())
    d.alert_sink.cfg = applied.alerts
    d.alert_sink.score_topic = applied.rules.news2.topic
    d.commands.pause_max_s = applied.alerts.pause_max_s
    logs.reconfigure(applied.log)
    d.cfg = applied
    if events:
        await d.engine.put(Batch([], alarms=events))
    log.info(
        "reloaded %s: rules, profiles, beds and alerts applied (%d alert(s) closed by the change)",
        d.config_path,
        len(events),
    )
    return True
