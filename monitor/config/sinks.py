"""Sinks' schemas: ``store`` items, one per ``type`` (the SQLite journal, remote sinks).

The SQLite store is the journal, built first; each remote sink's schema names the
module implementing it, which registers its factory under the same ``type``
(:func:`monitor.sinks.register_remote_sink`), as sources do.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from monitor.config.base import _Model, readable, secret_in


class SqliteStoreConfig(_Model):
    """The embedded store; also the durable journal that remote sinks forward from."""

    type: Literal["sqlite"] = "sqlite"
    path: str = "/var/lib/vitalmon/vitals.db"
    batch_size: int = Field(1000, ge=1, le=100_000)
    #: ``normal``: a commit survives a crash of the daemon (kill -9); ``full``: it also
    #: survives a power loss, at the cost of an fsync per transaction.
    synchronous: Literal["normal", "full"] = "normal"
    #: Raw readings are kept this long, then only their one-minute aggregates.
    raw_days: float = Field(7, gt=0)
    #: One-minute aggregates (min/mean/max/count per vital) are kept this long.
    aggregate_days: float = Field(365, gt=0)
    #: Disk bound for the database (MiB, null = none). When reached, the oldest raw readings
    #: are pruned first (after aggregation), counted, logged and alarmed (store.full).
    max_mb: float | None = Field(10240, gt=0)
    #: How often retention, aggregation and the disk bound are applied.
    maintenance_interval_s: float = Field(60, gt=0, le=3600)


class InfluxStoreConfig(_Model):
    """A remote InfluxDB 2.x/3.x (or any server accepting ``/api/v2/write``).

    Readings reach it from the local journal (the SQLite store) through a durable cursor:
    when it is down or slow nothing is lost and ingest does not wait.
    """

    implementation: ClassVar[str] = "monitor.sinks.influx"

    type: Literal["influxdb"] = "influxdb"
    name: str | None = None  #: names the sink's cursor (default: the url)
    url: str
    org: str = ""
    bucket: str
    #: File holding the API token (first line). Use ``${ENV}`` rather than a literal token.
    token_file: Annotated[str | None, readable(), secret_in("the API token")] = None
    token: str | None = None
    batch_size: int = Field(5000, ge=1, le=100_000)
    flush_interval_s: float = Field(1.0, gt=0, le=60)
    #: One write in all (connection, request, the whole answer): a write given up is a
    #: failure, retried; a server answering a byte at a time cannot hang the sink.
    timeout_s: float = Field(10.0, gt=0, le=300)
    #: Compress request bodies: for a WAN link. influxdb-client compresses at level 9,
    #: which costs more than it saves on a LAN (benchmarks/store.py).
    gzip: bool = False
    #: Where a newly configured sink starts: ``end`` (new readings only) or ``beginning``
    #: (backfill everything still in the journal).
    start_from: Literal["end", "beginning"] = "end"
    #: Add a pseudonymous ``patient`` tag: HMAC-SHA256 of the patient id with this key file.
    patient_key_file: Annotated[str | None, readable(), secret_in("the pseudonym key")] = None
    retry_min_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(60.0, gt=0)
    #: Seconds of failures (or of a send that does not return) before the technical
    #: alarm ``sink.down``; checked every second whatever the retry backoff.
    down_alarm_s: float = Field(30.0, ge=1, le=86400)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return v.rstrip("/")

    @property
    def sink_name(self) -> str:
        return self.name or f"influxdb:{self.url}/{self.bucket}"


#: ``store`` (one sink or a list), by ``type``: the sqlite journal (at most one), and
#: remote sinks, each schema naming the module that builds it (:mod:`monitor.sinks`).
StoreConfig = Annotated[SqliteStoreConfig | InfluxStoreConfig, Field(discriminator="type")]
