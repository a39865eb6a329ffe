"""The daemon's samples turned into metric families at scrape time, every rule of the
contract checked (a sample that breaks one is skipped, counted and logged once), and the
rate-limited error log."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from monitor.metrics.specs import COLLECT_ERRORS, LATENCY, SAMPLES_SKIPPED, SPECS, Kind, Sample

log = logging.getLogger("vitalmon.metrics")

ERROR_LOG_INTERVAL_S = 60.0
#: Names that the other collectors of the registry own: collect() may not use them.
_RESERVED_PREFIXES = ("process_", "python_", LATENCY, "vitalmon_metrics_")

_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


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
