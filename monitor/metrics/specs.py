"""The metrics vitalmon exposes (:data:`SPECS`, the table of the package docstring) and
the samples ``collect()`` returns (:class:`Sample`, built with :func:`sample`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

LATENCY = "vitalmon_ingest_to_alert_seconds"
COLLECT_ERRORS = "vitalmon_metrics_collect_errors_total"
SAMPLES_SKIPPED = "vitalmon_metrics_samples_skipped_total"

Kind = Literal["counter", "gauge"]


@dataclass(frozen=True)
class Sample:
    """One series of one metric, as ``collect()`` returns it."""

    name: str
    kind: Kind
    help: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...] = ()


#: The metrics vitalmon exposes (the table in the module docstring).
SPECS: Mapping[str, Spec] = {
    "vitalmon_readings_received_total": Spec(
        "counter", "Readings handed to the store by the sources (before deduplication)."
    ),
    "vitalmon_readings_committed_total": Spec(
        "counter", "Readings accepted: committed to the SQLite journal."
    ),
    "vitalmon_readings_rejected_total": Spec(
        "counter", "Readings refused before the store and dead-lettered, by cause.", ("cause",)
    ),
    "vitalmon_readings_duplicates_total": Spec(
        "counter", "Redelivered readings absorbed by the store (already committed)."
    ),
    "vitalmon_readings_pruned_total": Spec(
        "counter", "Stored readings pruned by the retention limits (age or space)."
    ),
    "vitalmon_readings_not_evaluated_total": Spec(
        "counter",
        "Readings stored, not evaluated, by reason (see the label values below).",
        ("reason",),
    ),
    "vitalmon_engine_errors_total": Spec(
        "counter",
        "Batches the engine could not evaluate (stored, acknowledged, logged once a minute).",
    ),
    "vitalmon_clock_rebases_total": Spec(
        "counter", "Series whose device clock went back, judged on its new time from then on."
    ),
    "vitalmon_readings_clamped_total": Spec(
        "counter", "Readings stamped ahead of their arrival, evaluated at their arrival time."
    ),
    "vitalmon_readings_forwarded_total": Spec(
        "counter", "Readings forwarded to a remote sink.", ("sink",)
    ),
    "vitalmon_readings_dropped_total": Spec(
        "counter", "Readings pruned from the store before a remote sink had them.", ("sink",)
    ),
    "vitalmon_alert_events_total": Spec(
        "counter",
        "Alert events (state changes), by rule kind, priority and state.",
        ("kind", "priority", "state"),
    ),
    "vitalmon_alerts_active": Spec("gauge", "Alerts active now (raised and not yet resolved)."),
    "vitalmon_series": Spec("gauge", "Bed/vital series the engine keeps a window for."),
    "vitalmon_beds": Spec(
        "gauge", "Beds the engine keeps state for (at most engine.max_beds, expected beds aside)."
    ),
    "vitalmon_devices_expired_total": Spec(
        "counter", "Devices of beds nobody expects forgotten after rules.stale_expire_s of silence."
    ),
    "vitalmon_queue_depth": Spec(
        "gauge", "Items waiting in an internal queue (the engine's, each sink's).", ("queue",)
    ),
    "vitalmon_store_lag_readings": Spec(
        "gauge", "Committed readings a remote sink has not received yet.", ("sink",)
    ),
    "vitalmon_store_lag_seconds": Spec(
        "gauge",
        "Age in seconds of the oldest reading a remote sink has not received yet.",
        ("sink",),
    ),
    "vitalmon_store_bytes": Spec("gauge", "Bytes used by the SQLite store."),
    "vitalmon_mqtt_connected": Spec("gauge", "1 while connected to the MQTT broker, else 0."),
    "vitalmon_mqtt_reconnects_total": Spec(
        "counter", "Reconnections to the MQTT broker since the daemon started."
    ),
    "vitalmon_mqtt_queued": Spec(
        "gauge",
        "QoS 1 publishes waiting for the broker's acknowledgement (at most mqtt.max_queued).",
    ),
    "vitalmon_mqtt_dropped_total": Spec(
        "counter",
        "Outgoing publishes dropped while the broker was away or slow, by kind.",
        ("kind",),
    ),
    "vitalmon_jetstream_partitions_owned": Spec(
        "gauge", "Stream partitions this instance owns now (a valid lease).", ("stream",)
    ),
    "vitalmon_jetstream_partition_lag": Spec(
        "gauge",
        "Messages of an owned partition not yet delivered to this instance.",
        ("stream", "partition"),
    ),
    "vitalmon_jetstream_takeovers_total": Spec(
        "counter", "Partitions this instance has taken over (leases taken).", ("stream",)
    ),
    "vitalmon_jetstream_takeover_seconds": Spec(
        "gauge",
        "The last takeover: from the lease taken to the partition read live (replay done).",
        ("stream",),
    ),
    "vitalmon_jetstream_replayed_total": Spec(
        "counter", "Messages replayed to rebuild taken-over partitions' state.", ("stream",)
    ),
    "vitalmon_jetstream_captured_total": Spec(
        "counter",
        "Device messages the capture session put into the stream (while this instance held it).",
        ("stream",),
    ),
    "vitalmon_jetstream_alert_events_total": Spec(
        "counter",
        "Alert events through the de-duplicating stream: stored, duplicate, relayed.",
        ("stream", "outcome"),
    ),
    "vitalmon_jetstream_state_write_failures_total": Spec(
        "counter",
        "Writes of the cluster state (lifecycle, admissions, pauses) that failed (kept).",
        ("stream",),
    ),
    "vitalmon_route_routed_total": Spec(
        "counter", "Alert events routed to an alert route (rows made in its outbox).", ("route",)
    ),
    "vitalmon_route_delivered_total": Spec(
        "counter", "Alert events an alert route's receiver accepted.", ("route",)
    ),
    "vitalmon_route_failures_total": Spec(
        "counter",
        "Delivery attempts of an alert route that failed (each retried with backoff).",
        ("route",),
    ),
    "vitalmon_route_held_total": Spec(
        "counter", "Alert events an alert route held while their bed was paused.", ("route",)
    ),
    "vitalmon_route_superseded_total": Spec(
        "counter",
        "Held alert events not delivered at the pause's end (superseded or skipped).",
        ("route",),
    ),
    "vitalmon_route_rejected_total": Spec(
        "counter",
        "Alert events an alert route gave up: its receiver refused them for good.",
        ("route",),
    ),
    "vitalmon_route_lost_total": Spec(
        "counter",
        "Alert events an alert route could not deliver: no longer in the journal.",
        ("route",),
    ),
    "vitalmon_route_backlog": Spec(
        "gauge",
        "Alert events routed to an alert route and not delivered yet (pending or held).",
        ("route",),
    ),
    "vitalmon_route_oldest_seconds": Spec(
        "gauge",
        "Seconds the oldest alert event not yet delivered by an alert route has waited.",
        ("route",),
    ),
    "vitalmon_serial_port_open": Spec(
        "gauge", "1 while the serial device port is open, else 0.", ("port",)
    ),
    "vitalmon_hl7_unmapped_observations_total": Spec(
        "counter",
        "HL7 observations (OBX) that map to no vital, by their code's label and code.",
        ("code",),
    ),
    LATENCY: Spec(
        "histogram",
        "Seconds from a reading's arrival to the publication of the alert event it caused.",
    ),
    COLLECT_ERRORS: Spec("counter", "Scrapes whose collection of the daemon's metrics failed."),
    SAMPLES_SKIPPED: Spec("counter", "Samples left out of a scrape because they were invalid."),
}


def sample(name: str, value: float, **labels: str) -> Sample:
    """A ``Sample`` of a metric of ``SPECS``, its kind and help text from the table.

    Raises ``KeyError`` for a name not in the table, ``ValueError`` for a histogram or
    for label names other than the table's.
    """
    spec = SPECS[name]
    if spec.kind == "histogram":
        raise ValueError(f"{name} is a histogram: use Metrics.observe_latency")
    if set(labels) != set(spec.labels):
        raise ValueError(f"{name} takes labels {spec.labels}, not {tuple(labels)}")
    return Sample(name, spec.kind, spec.help, value, labels)
