"""Below the I/O boundary, for engine tests: a sink that records what the engine hands
it, and ``run_batches`` to put batches through ``Engine.run`` (the daemon's path)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from monitor.engine import Engine
from monitor.model import AlertEvent, Reading
from monitor.sources import Batch


class Recorder:
    """A sink that keeps what the engine hands it (the journal's view), releasing each
    batch at once."""

    name = "recorder"

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.events: list[AlertEvent] = []

    async def open(self) -> None:
        return None

    async def write(
        self,
        readings: Sequence[Reading],
        events: Sequence[AlertEvent],
        done: Callable[[], None] | None = None,
    ) -> None:
        self.readings += readings
        self.events += events
        if done is not None:
            done()

    async def run(self) -> None:
        return None

    def close(self) -> None:
        return None


def run_batches(engine: Engine, *batches: Batch) -> None:
    """``engine.run()`` over ``batches`` (each goes through it whole), then stopped."""

    async def main() -> None:
        task = asyncio.create_task(engine.run())
        for b in batches:
            await engine.put(b)
        engine.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
