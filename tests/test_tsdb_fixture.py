"""The VictoriaMetrics test fixture itself (tests/tsdb.py), against the real server."""

from __future__ import annotations

import time

import pytest
from tsdb import VITALS, Point, VictoriaMetrics

T = 1764324000250000000  # 2025-11-28T10:00:00.250Z in ns
T_MS = T // 1_000_000
LINE = f"vitals,ward=icu,bed=7,device=mon1 hr=72,spo2=97 {T}"
LABELS = {"ward": "icu", "bed": "7", "device": "mon1"}


def test_one_series_per_field_with_tags_as_labels_and_ms_timestamps(
    victoria: VictoriaMetrics,
) -> None:
    victoria.write_lines(LINE)
    assert victoria.wait_for_count(2) == [
        Point("vitals_hr", LABELS, 72.0, T_MS),
        Point("vitals_spo2", LABELS, 97.0, T_MS),
    ]
    assert victoria.url == f"http://127.0.0.1:{victoria.port}"
    assert victoria.port != 8428


def test_a_resent_point_is_stored_once(victoria: VictoriaMetrics) -> None:
    victoria.write_lines(LINE)
    victoria.write_lines([LINE, LINE])  # again, twice in one request
    victoria.write_lines(f"vitals,ward=icu,bed=7,device=mon1 hr=73 {T + 1_000_000}")  # +1 ms
    victoria.write_lines(LINE)
    points = victoria.wait_for_count(2, '{__name__="vitals_hr"}')
    assert [(p.value, p.ts) for p in points] == [(72.0, T_MS), (73.0, T_MS + 1)]
    assert victoria.count() == 3  # and one vitals_spo2


def test_escaped_tags_round_trip(victoria: VictoriaMetrics) -> None:
    victoria.write_lines(r"vitals,ward=Cardiac\ ICU,bed=a\,b,device=x\=y hr=71 " + str(T))
    (p,) = victoria.wait_for_count(1)
    assert p.labels == {"ward": "Cardiac ICU", "bed": "a,b", "device": "x=y"}
    (q,) = victoria.export('{ward="Cardiac ICU", bed="a,b"}')
    assert q == p


def test_a_malformed_line_is_reported_not_silently_dropped(victoria: VictoriaMetrics) -> None:
    good = f"vitals,bed=1 hr=60 {T}"
    with pytest.raises(ValueError, match="Cardiac ICU"):
        victoria.write_lines([good, f"vitals,ward=Cardiac ICU hr=1 {T}"])  # unescaped space
    victoria.write_lines(f'vitals,bed=2 hr=1,message="x" {T}')  # a string field is kept, as 0
    points = victoria.wait_for_count(3)
    assert {(p.name, p.labels["bed"], p.value) for p in points} == {
        ("vitals_hr", "1", 60.0),
        ("vitals_hr", "2", 1.0),
        ("vitals_message", "2", 0.0),
    }


def test_wait_for_count_fails_at_once_when_exceeded(victoria: VictoriaMetrics) -> None:
    victoria.write_lines(LINE)
    t0 = time.monotonic()
    with pytest.raises(AssertionError, match=r"expected 1 samples .* got 2"):
        victoria.wait_for_count(1, timeout=5)
    assert time.monotonic() - t0 < 2
    with pytest.raises(AssertionError, match=r"timed out after 0\.2 s with 0"):
        victoria.wait_for_count(1, '{__name__="vitals_rr"}', timeout=0.2)


def test_a_point_stamped_now_is_exported_at_once(victoria: VictoriaMetrics) -> None:
    victoria.write_lines(f"vitals,bed=1 hr=60 {time.time_ns()}")
    victoria.flush()
    assert victoria.count() == 1


def test_restart_keeps_port_and_data(victoria: VictoriaMetrics) -> None:
    victoria.write_lines(LINE)
    before = victoria.wait_for_count(2)
    url = victoria.url
    victoria.restart()
    assert victoria.url == url
    assert victoria.export(VITALS) == before  # SIGTERM persisted them; no flush needed
    victoria.write_lines([LINE, f"vitals,ward=icu,bed=8 hr=80 {T}"])
    assert len(victoria.wait_for_count(3)) == 3


def test_influxdb_client_writes_gzip_and_fails_fast_when_stopped(
    victoria: VictoriaMetrics,
) -> None:
    influxdb_client = pytest.importorskip("influxdb_client")
    urllib3 = pytest.importorskip("urllib3")
    from influxdb_client.client.write_api import SYNCHRONOUS

    with influxdb_client.InfluxDBClient(
        victoria.url, token="x", org="o", enable_gzip=True, timeout=2000
    ) as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        write.write(bucket="b", record=[LINE, f"vitals,ward=icu,bed=8 hr=80 {T}"])
        assert len(victoria.wait_for_count(3)) == 3
        victoria.stop()
        t0 = time.monotonic()
        with pytest.raises(urllib3.exceptions.NewConnectionError):
            write.write(bucket="b", record=[LINE])
        assert time.monotonic() - t0 < 1
