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
each from its own durable cursor (:mod:`monitor.sinks.forward`). Each kind registers
the factory of its forwarder under its config ``type`` (:func:`register_remote_sink`);
the daemon builds them with :func:`build_remote_sink`.

:class:`Sink` is what the engine writes to: it lives in the stage-neutral
:mod:`monitor.pipeline` and is re-exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from monitor.pipeline import Sink
from monitor.registry import Registry

if TYPE_CHECKING:
    from monitor.sinks.forward import Forwarder
    from monitor.sinks.sqlite import SqliteSink


#: ``store[].type`` of a remote sink -> factory of its forwarder from the journal (the
#: sqlite store, built first: it is the journal).
REMOTE_SINKS: Registry[SqliteSink, Forwarder] = Registry("remote sink")
register_remote_sink = REMOTE_SINKS.register
build_remote_sink = REMOTE_SINKS.build

__all__ = ["REMOTE_SINKS", "Sink", "build_remote_sink", "register_remote_sink"]
