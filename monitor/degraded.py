"""The degraded mode: alarms go on while the store refuses commits.

Nothing is acknowledged to the broker while the store refuses commits (a full disk, a
failing or stalled one), so the broker's window of unacknowledged messages fills and it
stops sending. A second, clean-session connection then takes QoS 0 copies for the
alarms: evaluated, never stored (:meth:`monitor.sources.mqtt.MqttSource.shadow`), while
the durable copies wait at the broker for the persistent session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from monitor.config import MqttConfig
from monitor.mqtt import Client
from monitor.sources import Shadowed, Source
from monitor.supervise import Background

log = logging.getLogger("vitalmon.daemon")

#: The store's alarms (component ``disk``) that call for the degraded mode.
STORE_FAULTS = ("store.full", "store.failed", "store.stalled")


class DegradedMode:
    def __init__(
        self,
        mqtt: MqttConfig,
        sources: Sequence[Source],
        background: Background,
        stopped: Callable[[], bool],
    ) -> None:
        self.mqtt = mqtt
        self.sources = sources
        self.background = background
        self.stopped = stopped  #: the engine has stopped: no more changes
        #: The degraded-mode connection while the store refuses commits.
        self.shadow: Client | None = None
        #: The store alarms active (and a slow commit) that call for it.
        self.faults: set[str] = set()

    def condition(self, rule: str, component: str, active: bool) -> None:
        """A technical alarm changed: a store fault starts or ends the degraded mode."""
        if rule in STORE_FAULTS and component == "disk":
            self._fault(rule, active)

    def slow_commit(self, slow: bool) -> None:
        """A commit has been running for a second (no alarm yet: ``store.stalled`` comes
        at 3 s): the degraded mode starts already, before the broker's window is full."""
        self._fault("commit.slow", slow)

    def _fault(self, name: str, active: bool) -> None:
        (self.faults.add if active else self.faults.discard)(name)
        self.set(bool(self.faults))

    def set(self, on: bool) -> None:
        """The store refuses commits (``on``) or takes them again."""
        sources = [s for s in self.sources if isinstance(s, Shadowed)]
        if not sources or self.stopped():
            return
        if on and self.shadow is None:
            shadow = Client(
                self.mqtt, persistent=False, client_id=f"{self.mqtt.client_id}-degraded"
            )
            for src in sources:
                src.shadow(shadow)
            shadow.start()
            self.shadow = shadow
            log.warning(
                "store refusing commits: alarms go on from QoS 0 copies on a second "
                "connection (%s); the broker keeps the durable ones",
                shadow.client_id,
            )
        elif not on and self.shadow is not None:
            shadow, self.shadow = self.shadow, None
            for src in sources:
                src.shadow(None)
            self.background.spawn(shadow.stop(timeout=2.0), "vitalmon.degraded-stop")
            log.info("store commits again: the degraded-mode connection is closed")

    async def close(self, timeout: float) -> None:
        """At the very end of shutdown: the degraded-mode connection, if open, goes."""
        if self.shadow is not None:
            await self.shadow.stop(timeout=timeout)
