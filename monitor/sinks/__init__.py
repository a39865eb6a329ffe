"""Sinks: where readings and alert events go (SQLite store, MQTT alert publisher, ...).

Contract of a sink (see :class:`Sink`):

* ``open()`` is awaited by the daemon before any source starts. It may open files or
  check connections, and raises if the sink cannot work at all.
* ``write(readings, events, done)`` is awaited by the engine, one call at a time, in
  event order. It returns once the items are accepted into the sink's bounded queue and
  waits while that queue is full: that wait is the pipeline's back-pressure. ``done``
  is given only to the durable sink (the journal): it calls it once the items are
  committed, and that releases them at their origin (the MQTT PUBACK).
* ``run()`` is the sink's task, started after ``open()``: it writes what was accepted.
* ``close()`` is called after the engine's last ``write``; ``run()`` then returns once
  everything accepted has been written.

Remote sinks (InfluxDB) are not written by the engine: they forward from the journal,
each from its own durable cursor (:mod:`monitor.sinks.forward`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from monitor.model import AlertEvent, Reading


class Sink(Protocol):
    name: str

    async def open(self) -> None: ...

    async def write(
        self,
        readings: Sequence[Reading],
        events: Sequence[AlertEvent],
        done: Callable[[], None] | None = None,
    ) -> None: ...

    async def run(self) -> None: ...

    def close(self) -> None: ...


__all__ = ["Sink"]
