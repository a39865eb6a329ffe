"""InfluxDB sink (InfluxDB 2.x/3.x, or any server accepting ``/api/v2/write``).

Line protocol through ``influxdb-client``'s synchronous write API: the forwarder does
its own batching, ordering and retrying from the journal, so the client's background
batcher (which drops what it cannot write) is not used.

* measurement ``vitals``: tags ``ward``, ``bed``, ``device`` (and a pseudonymous
  ``patient`` when ``patient_key_file`` is set), one float field per vital; the readings
  of one device at one instant share a line. Readings the engine did not evaluate
  (README, "Plausibility", "Event time") go to ``flagged_vitals`` instead, with the same
  tags and ``flag`` (``implausible``, ``disputed``, ``history``): a dashboard on
  ``vitals`` never plots a probe's zeros.
* measurement ``alerts``: tags ``ward``, ``bed``, ``device``, ``vital``, ``rule``,
  ``priority``, ``state``, ``kind``; numeric fields ``value``, ``limit``, ``seq``. Text
  lives in tags only: InfluxDB-protocol stores such as VictoriaMetrics turn string
  fields into 0.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision

from monitor.config import InfluxStoreConfig, read_secret
from monitor.model import AlertEvent, json_number
from monitor.sinks import register_remote_sink
from monitor.sinks.forward import Forwarder, Row
from monitor.sinks.sqlite import SqliteSink

log = logging.getLogger("vitalmon.sink.influx")

_TAG_ESCAPE = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\ ", "\\": "\\\\"})


def tag(value: str) -> str:
    return value.translate(_TAG_ESCAPE) or "-"


def ns(ts: float) -> int:
    """Epoch seconds -> integer ns, rounded to the microsecond (``ts * 1e9`` in floating
    point would turn .900 s into .899999744 s, and a millisecond store then truncates)."""
    return round(ts * 1_000_000) * 1000


class Pseudonyms:
    """Patient id -> stable pseudonym (HMAC-SHA256 with a secret key), never the id itself."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __call__(self, patient: str) -> str:
        return hmac.new(self._key, patient.encode(), hashlib.sha256).hexdigest()[:16]


def reading_lines(rows: Sequence[Row], pseudonym: Pseudonyms | None = None) -> list[str]:
    """Journal rows -> ``vitals`` lines, one per (ward, bed, device, patient, ts); flagged
    readings -> ``flagged_vitals`` lines, one per flag too."""
    grouped: dict[tuple[str, str, str, str | None, float, str | None], list[str]] = {}
    for _seq, ward, bed, device, vital, ts, value, patient, flag in rows:
        key = (ward, bed, device, patient if pseudonym else None, ts, flag)
        grouped.setdefault(key, []).append(f"{vital}={float(value)!r}")
    lines = []
    for (ward, bed, device, patient, ts, flag), fields in grouped.items():
        tags = f"bed={tag(bed)},device={tag(device)}"
        if flag is not None:
            tags += f",flag={tag(flag)}"
        if patient is not None and pseudonym is not None:
            tags += f",patient={pseudonym(patient)}"
        name = "vitals" if flag is None else "flagged_vitals"
        lines.append(f"{name},{tags},ward={tag(ward)} {','.join(fields)} {ns(ts)}")
    return lines


def alert_lines(events: Sequence[AlertEvent]) -> list[str]:
    return [
        f"alerts,bed={tag(e.bed)},device={tag(e.device)},kind={tag(e.kind)},"
        f"priority={tag(str(e.priority))},rule={tag(e.rule)},state={tag(str(e.state))},"
        f"vital={tag(e.vital)},ward={tag(e.ward)} {_numbers(e)}seq={float(e.seq)!r} {ns(e.at)}"
        for e in events
    ]


def _numbers(e: AlertEvent) -> str:
    """``value=..,limit=..,`` where they are numbers (a device-reported alarm has none:
    NaN in the event, NULL in the store; line protocol has no NaN)."""
    out = ""
    for name, v in (("value", e.value), ("limit", e.limit)):
        n = json_number(v)
        if n is not None:
            out += f"{name}={float(n)!r},"
    return out


class InfluxRemote:
    """A :class:`~monitor.sinks.forward.Remote` writing line protocol to InfluxDB."""

    def __init__(self, cfg: InfluxStoreConfig) -> None:
        self.cfg = cfg
        token = cfg.token or (read_secret(cfg.token_file) if cfg.token_file else "")
        self.pseudonym = (
            Pseudonyms(read_secret(cfg.patient_key_file).encode()) if cfg.patient_key_file else None
        )
        # No connection is made here: the first write connects.
        self.client = InfluxDBClient(
            url=cfg.url,
            token=token,
            org=cfg.org,
            timeout=int(cfg.timeout_s * 1000),
            enable_gzip=cfg.gzip,
        )
        self.write_api = self.client.write_api(write_options=SYNCHRONOUS)

    def send(self, readings: Sequence[Row], alerts: Sequence[AlertEvent]) -> None:
        lines = reading_lines(readings, self.pseudonym) + alert_lines(alerts)
        if lines:
            self.write_api.write(
                bucket=self.cfg.bucket,
                org=self.cfg.org,
                record=lines,
                write_precision=WritePrecision.NS,  # type: ignore[arg-type]  # a str constant
            )

    def close(self) -> None:
        self.write_api.close()  # type: ignore[no-untyped-call]
        self.client.close()  # type: ignore[no-untyped-call]


@register_remote_sink(InfluxStoreConfig)
def _build(cfg: InfluxStoreConfig, journal: SqliteSink) -> Forwarder:
    """Forwards from the journal to the InfluxDB ``cfg`` names, from a durable cursor."""
    return Forwarder(
        cfg.sink_name,
        journal,
        InfluxRemote(cfg),
        batch_size=cfg.batch_size,
        start_from=cfg.start_from,
        retry_min_s=cfg.retry_min_s,
        retry_max_s=cfg.retry_max_s,
        flush_interval_s=cfg.flush_interval_s,
        down_alarm_s=cfg.down_alarm_s,
        send_timeout_s=cfg.timeout_s,
    )
