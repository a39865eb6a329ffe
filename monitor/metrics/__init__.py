"""Prometheus metrics: ``/metrics`` and ``/healthz`` on ``metrics.listen`` (host:port).

Contract
========

``Metrics(collect, health)`` owns its own ``CollectorRegistry`` (never the global one)
holding:

* process metrics: ``process_*`` (CPU, memory, file descriptors, start time; Linux),
  ``python_info`` and ``python_gc_*``;
* ``vitalmon_ingest_to_alert_seconds``, a histogram fed by ``observe_latency(seconds)``
  (also reachable as ``Metrics.latency``);
* the daemon's own metrics: ``collect()`` is called at every scrape, in the thread that
  calls ``render()``. ``serve()`` calls it in the event loop, so it may read daemon state
  without locks, and must be quick and must not block.

``collect()`` returns (or yields) ``Sample`` objects. The rules:

* samples of the same ``name`` form one metric family, one series per label set; the
  family's kind and help come from its first sample;
* a counter's name ends in ``_total`` and that is the exposed name (``sample()`` below
  builds samples from the table, so the daemon need not repeat kinds and help texts);
* names match ``[a-zA-Z_][a-zA-Z0-9_]*``, label names the same without a leading ``__``,
  label values are strings; every sample of a family has the same label names;
* values are finite numbers (``bool`` counts as 0/1); counters are never negative.

A sample that breaks a rule (bad name, NaN, inconsistent labels, a duplicate series, a
name owned by another collector, another kind than its family's) is skipped and counted in
``vitalmon_metrics_samples_skipped_total``; each distinct problem is logged once. If
``collect()`` raises, the scrape still answers 200 without the daemon's samples and
``vitalmon_metrics_collect_errors_total`` goes up; the error is logged with its traceback
at most once a minute. Nothing that ``collect()`` returns can break ``/metrics``.

``health()`` returns ``(ok, reason)``: ``/healthz`` answers ``200 ok`` when ok, else
``503`` with the reason; a ``health()`` that raises is unhealthy.

``await serve("host:port")`` listens (``asyncio.start_server``; an IPv6 host may be in
brackets; port 0 picks a free one), then sets ``listening`` and ``port`` (the bound port),
and runs until cancelled or ``close()`` is called (``serve()`` then returns). A bind error
(``OSError``) propagates. The HTTP/1.x it speaks is minimal: one request per connection,
then the connection is closed. ``GET``/``HEAD`` of ``/metrics`` (``text/plain;
version=0.0.4``) and ``/healthz``; any other path is 404, another method 405, a malformed
request 400, a request head over 8 KiB 431, one not complete within ``read_timeout`` 408.
At most 64 connections are served at once; more are closed at once.

Metric names
============

The daemon produces the first ones with ``sample(name, value, **labels)``; ``SPECS`` holds
the same table. Labels are in braces.

``vitalmon_readings_received_total`` counter
    Readings handed to the store by the sources (before deduplication).
``vitalmon_readings_committed_total`` counter
    Readings accepted: committed to the SQLite journal.
``vitalmon_readings_rejected_total{cause}`` counter
    Readings refused before the store and dead-lettered, by cause.
``vitalmon_readings_duplicates_total`` counter
    Redelivered readings absorbed by the store (already committed).
``vitalmon_readings_pruned_total`` counter
    Stored readings pruned by the retention limits (age or space).
``vitalmon_readings_not_evaluated_total{reason}`` counter
    Readings stored, not evaluated, by reason (see the label values below).
``vitalmon_readings_clamped_total`` counter
    Readings stamped ahead of their arrival, evaluated at their arrival time.
``vitalmon_engine_errors_total`` counter
    Batches the engine could not evaluate (stored, acknowledged, logged once a minute).
``vitalmon_clock_rebases_total`` counter
    Series whose device clock went back, judged on its new time from then on.
``vitalmon_readings_forwarded_total{sink}`` counter
    Readings forwarded to a remote sink.
``vitalmon_readings_dropped_total{sink}`` counter
    Readings pruned from the store before a remote sink had them.
``vitalmon_alert_events_total{kind, priority, state}`` counter
    Alert events (state changes), by rule kind, priority and state.
``vitalmon_alerts_active`` gauge
    Alerts active now (raised and not yet resolved).
``vitalmon_series`` gauge
    Bed/vital series the engine keeps a window for.
``vitalmon_beds`` gauge
    Beds the engine keeps state for (at most engine.max_beds, expected beds aside).
``vitalmon_devices_expired_total`` counter
    Devices of beds nobody expects forgotten after rules.stale_expire_s of silence.
``vitalmon_queue_depth{queue}`` gauge
    Items waiting in an internal queue (the engine's, each sink's).
``vitalmon_store_lag_readings{sink}`` gauge
    Committed readings a remote sink has not received yet.
``vitalmon_store_lag_seconds{sink}`` gauge
    Age in seconds of the oldest reading a remote sink has not received yet.
``vitalmon_store_bytes`` gauge
    Bytes used by the SQLite store.
``vitalmon_mqtt_connected`` gauge
    1 while connected to the MQTT broker, else 0.
``vitalmon_mqtt_reconnects_total`` counter
    Reconnections to the MQTT broker since the daemon started.
``vitalmon_mqtt_queued`` gauge
    QoS 1 publishes waiting for the broker's acknowledgement (at most mqtt.max_queued).
``vitalmon_mqtt_dropped_total{kind}`` counter
    Outgoing publishes dropped while the broker was away or slow, by kind.
``vitalmon_jetstream_partitions_owned{stream}`` gauge
    Stream partitions this instance owns now (a valid lease).
``vitalmon_jetstream_partition_lag{stream, partition}`` gauge
    Messages of an owned partition not yet delivered to this instance.
``vitalmon_jetstream_takeovers_total{stream}`` counter
    Partitions this instance has taken over (leases taken).
``vitalmon_jetstream_takeover_seconds{stream}`` gauge
    The last takeover: from the lease taken to the partition read live (replay done).
``vitalmon_jetstream_replayed_total{stream}`` counter
    Messages replayed to rebuild taken-over partitions' state.
``vitalmon_jetstream_captured_total{stream}`` counter
    Device messages the capture session put into the stream (while this instance held it).
``vitalmon_jetstream_alert_events_total{stream, outcome}`` counter
    Alert events through the de-duplicating stream: stored, duplicate, relayed.
``vitalmon_jetstream_state_write_failures_total{stream}`` counter
    Writes of the cluster state (lifecycle, admissions, pauses) that failed (kept).
``vitalmon_route_routed_total{route}`` counter
    Alert events routed to an alert route (rows made in its outbox).
``vitalmon_route_delivered_total{route}`` counter
    Alert events an alert route's receiver accepted.
``vitalmon_route_failures_total{route}`` counter
    Delivery attempts of an alert route that failed (each retried with backoff).
``vitalmon_route_held_total{route}`` counter
    Alert events an alert route held while their bed was paused.
``vitalmon_route_superseded_total{route}`` counter
    Held alert events not delivered at the pause's end (superseded or skipped).
``vitalmon_route_rejected_total{route}`` counter
    Alert events an alert route gave up: its receiver refused them for good.
``vitalmon_route_lost_total{route}`` counter
    Alert events an alert route could not deliver: no longer in the journal.
``vitalmon_route_backlog{route}`` gauge
    Alert events routed to an alert route and not delivered yet (pending or held).
``vitalmon_route_oldest_seconds{route}`` gauge
    Seconds the oldest alert event not yet delivered by an alert route has waited.
``vitalmon_serial_port_open{port}`` gauge
    1 while the serial device port is open, else 0.
``vitalmon_hl7_unmapped_observations_total{code}`` counter
    HL7 observations (OBX) that map to no vital, by their code's label and code.
``vitalmon_ingest_to_alert_seconds`` histogram
    Seconds from a reading's arrival to the publication of the alert event it caused.
``vitalmon_metrics_collect_errors_total`` counter
    Scrapes whose collection of the daemon's metrics failed.
``vitalmon_metrics_samples_skipped_total`` counter
    Samples left out of a scrape because they were invalid.

The last three are produced here, not by ``collect()``; so are ``process_*`` and
``python_*``, and ``collect()`` may not use these names. The rules above are all that the
scrape checks; ``sample()`` is what ties a sample to the table. Label values: ``cause`` is
the dead-letter cause, ``queue`` is ``engine`` or a sink's name, ``sink`` a remote sink's
name, ``route`` an alert route's name (``alerts.routes[].name``), ``port`` the device
path; ``kind``/``priority``/``state`` are the alert event's;
``reason`` is ``late``, ``repeated``, ``implausible``, ``disputed``, ``history`` (README,
"Event time", "Plausibility"), ``capacity`` or ``rate_limited`` (beyond ``engine.max_*``
or ``engine.new_*``, README "Capacity"); ``code`` is an HL7 OBX-3 as ``label (code)``,
e.g. ``Perf (0002-d006)`` (at most 500 distinct per source, more under ``(other)``; never
a value or a patient's data).

The package: :mod:`~monitor.metrics.specs` (the table, :class:`Sample`, :func:`sample`),
:mod:`~monitor.metrics.collector` (the daemon's samples checked and grouped at scrape
time) and :mod:`~monitor.metrics.endpoint` (:class:`Metrics`, the HTTP endpoint).
"""

from __future__ import annotations

from monitor.metrics.collector import (
    _LABEL,
    _NAME,
    _RESERVED_PREFIXES,
    ERROR_LOG_INTERVAL_S,
    _DaemonCollector,
    _Family,
    _Once,
    _RateLimited,
)
from monitor.metrics.endpoint import (
    _METHOD,
    _REASONS,
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    MAX_CONNECTIONS,
    MAX_REQUEST_BYTES,
    READ_TIMEOUT_S,
    WRITE_TIMEOUT_S,
    Metrics,
    _response,
    parse_listen,
)
from monitor.metrics.specs import (
    COLLECT_ERRORS,
    LATENCY,
    SAMPLES_SKIPPED,
    SPECS,
    Kind,
    Sample,
    Spec,
    sample,
)

__all__ = [
    "COLLECT_ERRORS",
    "CONTENT_TYPE",
    "ERROR_LOG_INTERVAL_S",
    "LATENCY",
    "LATENCY_BUCKETS",
    "MAX_CONNECTIONS",
    "MAX_REQUEST_BYTES",
    "READ_TIMEOUT_S",
    "SAMPLES_SKIPPED",
    "SPECS",
    "WRITE_TIMEOUT_S",
    "_LABEL",
    "_METHOD",
    "_NAME",
    "_REASONS",
    "_RESERVED_PREFIXES",
    "Kind",
    "Metrics",
    "Sample",
    "Spec",
    "_DaemonCollector",
    "_Family",
    "_Once",
    "_RateLimited",
    "_response",
    "parse_listen",
    "sample",
]
