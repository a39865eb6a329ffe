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
name, ``port`` the device path; ``kind``/``priority``/``state`` are the alert event's;
``reason`` is ``late``, ``repeated``, ``implausible``, ``disputed``, ``history`` (README,
"Event time", "Plausibility"), ``capacity`` or ``rate_limited`` (beyond ``engine.max_*``
or ``engine.new_*``, README "Capacity"); ``code`` is an HL7 OBX-3 as ``label (code)``,
e.g. ``Perf (0002-d006)`` (at most 500 distinct per source, more under ``(other)``; never
a value or a patient's data).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger("vitalmon.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds, 1 ms .. 60 s (and +Inf).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
MAX_REQUEST_BYTES = 8192
MAX_CONNECTIONS = 64
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0
ERROR_LOG_INTERVAL_S = 60.0

LATENCY = "vitalmon_ingest_to_alert_seconds"
COLLECT_ERRORS = "vitalmon_metrics_collect_errors_total"
SAMPLES_SKIPPED = "vitalmon_metrics_samples_skipped_total"
#: Names that the other collectors of the registry own: collect() may not use them.
_RESERVED_PREFIXES = ("process_", "python_", LATENCY, "vitalmon_metrics_")

_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_METHOD = re.compile(r"[A-Z]+")

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


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9464`` for IPv6) to ``(host, port)``; ValueError if bad."""
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen is host:port, e.g. 127.0.0.1:9464, not {listen!r}")
    return host, int(port)


class _RateLimited:
    """Log an error at most once per ``interval`` seconds, counting the ones left out."""

    def __init__(self, interval: float = ERROR_LOG_INTERVAL_S) -> None:
        self.interval = interval
        self._last: float | None = None
        self._suppressed = 0

    def error(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        self._last, self._suppressed = now, 0
        log.error(msg + more, *args, exc_info=True)


class _Once:
    """Log each distinct problem once (a bounded number of them)."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def warning(self, key: str, msg: str, *args: object) -> None:
        if key in self._seen:
            return
        if len(self._seen) >= self.limit:
            if len(self._seen) == self.limit:
                self._seen.add("")  # only once
                log.warning("metrics: more invalid samples; no longer logged")
            return
        self._seen.add(key)
        log.warning(msg, *args)


class _Family:
    def __init__(
        self, metric: CounterMetricFamily | GaugeMetricFamily, kind: Kind, labels: tuple[str, ...]
    ) -> None:
        self.metric = metric
        self.kind = kind
        self.labels = labels
        self.series: set[tuple[str, ...]] = set()


class _DaemonCollector:
    """Turns ``collect()``'s samples into metric families at scrape time; never raises."""

    def __init__(self, collect: Callable[[], Iterable[Sample]]) -> None:
        self._collect = collect
        self.errors = 0
        self.skipped = 0
        self._error_log = _RateLimited()
        self._skip_log = _Once()

    def collect(self) -> Iterator[Metric]:
        families: dict[str, _Family] = {}
        try:
            for s in self._collect():
                self._add(families, s)
        except Exception:  # noqa: BLE001 - a failing collect() must not break /metrics
            self.errors += 1
            families = {}
            self._error_log.error("metrics: collecting the daemon's metrics failed")
        for fam in families.values():
            yield fam.metric
        yield CounterMetricFamily(COLLECT_ERRORS, SPECS[COLLECT_ERRORS].help, self.errors)
        yield CounterMetricFamily(SAMPLES_SKIPPED, SPECS[SAMPLES_SKIPPED].help, self.skipped)

    def _skip(self, s: object, key: str, why: str) -> None:
        self.skipped += 1
        name = getattr(s, "name", "?")
        self._skip_log.warning(
            f"{name!s:.200}\0{key}", "metrics: sample %.200r skipped: %s", name, why
        )

    def _add(self, families: dict[str, _Family], s: Sample) -> None:
        if not isinstance(s, Sample):
            self._skip(s, "type", f"not a Sample: {type(s).__name__}")
            return
        name = s.name
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            self._skip(s, "name", "invalid metric name")
            return
        if name.startswith(_RESERVED_PREFIXES):
            self._skip(s, "reserved", "name owned by another collector")
            return
        if s.kind not in ("counter", "gauge"):
            self._skip(s, "kind", f"kind {s.kind!r} is neither counter nor gauge")
            return
        if s.kind == "counter" and (not name.endswith("_total") or name == "_total"):
            self._skip(s, "total", "a counter's name ends in _total")
            return
        try:
            labels = dict(s.labels)
        except (TypeError, ValueError):
            self._skip(s, "labels", "labels are not a mapping")
            return
        for k, v in labels.items():
            if not isinstance(k, str) or not _LABEL.fullmatch(k) or k.startswith("__"):
                self._skip(s, f"label {k!r}", f"invalid label name {k!r}")
                return
            if not isinstance(v, str):
                self._skip(s, f"value of {k!r}", f"label {k!r} has a {type(v).__name__} value")
                return
        try:
            value = float(s.value)
        except (TypeError, ValueError):
            self._skip(s, "value", f"value {s.value!r} is not a number")
            return
        if not math.isfinite(value):
            self._skip(s, "finite", f"value {value} is not finite")
            return
        if s.kind == "counter" and value < 0:
            self._skip(s, "negative", "a counter is never negative")
            return
        keys = tuple(sorted(labels))
        fam = families.get(name)
        if fam is None:
            help_ = s.help if isinstance(s.help, str) else ""
            metric: CounterMetricFamily | GaugeMetricFamily
            if s.kind == "counter":
                metric = CounterMetricFamily(name, help_, labels=keys)
            else:
                metric = GaugeMetricFamily(name, help_, labels=keys)
            fam = families[name] = _Family(metric, s.kind, keys)
        if s.kind != fam.kind:
            self._skip(s, "kind mismatch", f"a {s.kind} in a {fam.kind} family")
            return
        if keys != fam.labels:
            self._skip(s, "label names", f"labels {keys} differ from the family's {fam.labels}")
            return
        series = tuple(labels[k] for k in keys)
        if series in fam.series:
            self._skip(s, f"dup {series}", f"duplicate series {labels}")
            return
        fam.series.add(series)
        fam.metric.add_metric(list(series), value)


class Metrics:
    """The registry, its collectors, the latency histogram and the HTTP endpoint."""

    def __init__(
        self,
        collect: Callable[[], Iterable[Sample]],
        health: Callable[[], tuple[bool, str]],
        *,
        read_timeout: float = READ_TIMEOUT_S,
    ) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.latency = Histogram(
            LATENCY, SPECS[LATENCY].help, buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self._daemon = _DaemonCollector(collect)
        self.registry.register(self._daemon)
        self._health = health
        self.read_timeout = read_timeout
        #: The bound port once listening (``listen`` may ask for port 0).
        self.port: int | None = None
        #: Set while ``serve()`` is listening.
        self.listening = asyncio.Event()
        self._closed = asyncio.Event()
        self._serving = False
        self._conns: set[asyncio.Task[object]] = set()
        self._error_log = _RateLimited()
        self._latency_log = _Once(limit=4)

    # ------------------------------------------------------------------ metrics

    def observe_latency(self, seconds: float) -> None:
        """One ingest-to-alert time; a negative or non-finite one is left out (logged once)."""
        if not math.isfinite(seconds) or seconds < 0:
            self._latency_log.warning("bad", "metrics: latency %r left out", seconds)
            return
        self.latency.observe(seconds)

    def render(self) -> bytes:
        """The exposition text (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry)

    def health(self) -> tuple[bool, str]:
        try:
            ok, reason = self._health()
        except Exception as exc:  # noqa: BLE001 - a failing check is an unhealthy daemon
            self._error_log.error("metrics: health check failed")
            return False, f"health check failed: {type(exc).__name__}"
        return bool(ok), str(reason)

    # --------------------------------------------------------------------- HTTP

    async def serve(self, listen: str) -> None:
        """Serve ``/metrics`` and ``/healthz`` until cancelled or ``close()``."""
        if self._serving:
            raise RuntimeError("Metrics.serve() is already running")
        if self._closed.is_set():
            return
        host, port = parse_listen(listen)
        self._serving = True
        try:
            server = await asyncio.start_server(self._handle, host, port, limit=MAX_REQUEST_BYTES)
            try:
                self.port = int(server.sockets[0].getsockname()[1])
                self.listening.set()
                log.info("metrics on http://%s:%d/metrics", listen.rpartition(":")[0], self.port)
                await self._closed.wait()
            finally:
                self.listening.clear()
                server.close()
                for task in list(self._conns):
                    task.cancel()
                if self._conns:
                    await asyncio.gather(*self._conns, return_exceptions=True)
                await server.wait_closed()
        finally:
            self._serving = False

    def close(self) -> None:
        """Stop ``serve()`` (it returns once the listener and connections are closed)."""
        self._closed.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._conns) >= MAX_CONNECTIONS or self._closed.is_set():
            writer.close()
            return
        self._conns.add(task)
        try:
            response = await self._read_and_answer(reader)
            if response is not None:
                writer.write(response)
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # the client went away or does not read: nothing to answer
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _read_and_answer(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            async with asyncio.timeout(self.read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return _response(408, b"request timeout\n")
        except asyncio.LimitOverrunError:
            return _response(431, b"request head too large\n")
        except asyncio.IncompleteReadError as exc:
            return _response(400, b"bad request\n") if exc.partial.strip() else None
        return self._answer(head)

    def _answer(self, head: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        bad = _response(400, b"bad request\n")
        if len(parts) != 3:
            return bad
        method, target, version = parts
        if not version.startswith("HTTP/1.") or not _METHOD.fullmatch(method):
            return bad
        if any(line and ":" not in line for line in lines[1:]):
            return bad
        if not target.startswith("/") and not target.startswith(("http://", "https://")):
            return bad
        path = urlsplit(target).path
        if method not in ("GET", "HEAD"):
            return _response(405, b"method not allowed\n", extra=[("Allow", "GET, HEAD")])
        head_only = method == "HEAD"
        if path == "/metrics":
            try:
                body = self.render()
            except Exception:  # noqa: BLE001 - answer 500, log, keep serving
                self._error_log.error("metrics: rendering /metrics failed")
                return _response(500, b"internal error\n", head_only=head_only)
            return _response(200, body, CONTENT_TYPE, head_only=head_only)
        if path == "/healthz":
            ok, reason = self.health()
            if ok:
                return _response(200, b"ok\n", head_only=head_only)
            text = (reason or "unhealthy").replace("\r", " ").replace("\n", " ")
            return _response(503, text.encode() + b"\n", head_only=head_only)
        return _response(404, b"not found\n", head_only=head_only)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _response(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head_only: bool = False,
    extra: Iterable[tuple[str, str]] = (),
) -> bytes:
    headers = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{k}: {v}" for k, v in extra),
    ]
    return "\r\n".join(headers).encode("latin-1") + b"\r\n\r\n" + (b"" if head_only else body)
