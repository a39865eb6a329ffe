"""The Prometheus endpoint: a real asyncio server on a free loopback port, real HTTP clients.

Each test runs its own event loop (asyncio.run); clients run in a thread (urllib), as a
subprocess (curl) or on a raw socket. Waiting is on events and on the server's answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

import monitor.metrics
from monitor.metrics import (
    CONTENT_TYPE,
    SPECS,
    Metrics,
    Sample,
    parse_listen,
    sample,
)

CURL = shutil.which("curl")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def serving(m: Metrics) -> AsyncIterator[str]:
    """``m.serve("127.0.0.1:0")`` in a task; yields the base URL; closes and joins it."""
    task = asyncio.create_task(m.serve("127.0.0.1:0"))
    listening = asyncio.create_task(m.listening.wait())
    done, _ = await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        listening.cancel()
        task.result()  # raises what serve() raised
        raise AssertionError("serve() returned before listening")
    assert m.port
    try:
        yield f"http://127.0.0.1:{m.port}"
    finally:
        m.close()
        await asyncio.wait_for(task, 5)
    assert not m.listening.is_set()


def _fetch(url: str, method: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with _OPENER.open(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(_fetch, url, method)


async def raw(port: int, data: bytes, *, eof: bool = False) -> bytes:
    """Send ``data`` as it is (then EOF if ``eof``); all the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


def families(text: bytes) -> dict[str, Any]:
    """Parsed exposition (the real parser), by family name as the parser names it."""
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def values(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(text.decode())
        for s in f.samples
    }


def healthy() -> tuple[bool, str]:
    return True, ""


def fixed(*samples: Sample) -> Callable[[], Iterable[Sample]]:
    return lambda: list(samples)


# ------------------------------------------------------------------- endpoints


def test_metrics_endpoint_groups_samples_into_families() -> None:
    collect = fixed(
        sample("vitalmon_readings_received_total", 12),
        sample("vitalmon_readings_rejected_total", 2, cause="bad_json"),
        sample("vitalmon_readings_rejected_total", 3, cause="out_of_range"),
        sample("vitalmon_alert_events_total", 1, kind="threshold", priority="h", state="raised"),
        sample("vitalmon_mqtt_connected", True),
        sample("vitalmon_queue_depth", 4, queue="engine"),
        sample("vitalmon_queue_depth", 0, queue="sqlite"),
    )

    async def main() -> None:
        m = Metrics(collect, healthy)
        async with serving(m) as url:
            status, headers, body = await get(url + "/metrics")
        assert status == 200
        assert headers["Content-Type"] == CONTENT_TYPE
        assert headers["Connection"] == "close"
        assert int(headers["Content-Length"]) == len(body)
        text = body.decode()
        # one family per name, counters exposed with their _total name
        assert text.count("# TYPE vitalmon_readings_rejected_total counter\n") == 1
        assert text.count("# TYPE vitalmon_queue_depth gauge\n") == 1
        assert "# HELP vitalmon_readings_received_total Readings handed" in text
        assert "vitalmon_readings_received_total 12.0\n" in text
        assert 'vitalmon_readings_rejected_total{cause="bad_json"} 2.0\n' in text
        assert 'vitalmon_readings_rejected_total{cause="out_of_range"} 3.0\n' in text
        assert (
            'vitalmon_alert_events_total{kind="threshold",priority="h",state="raised"} 1.0\n'
        ) in text
        assert "vitalmon_mqtt_connected 1.0\n" in text
        fams = families(body)
        assert fams["vitalmon_readings_rejected"].type == "counter"
        assert len(fams["vitalmon_readings_rejected"].samples) == 2
        assert len(fams["vitalmon_queue_depth"].samples) == 2
        assert values(body)[("vitalmon_metrics_samples_skipped_total", frozenset())] == 0

    run(main())


def test_healthz_ok_then_unavailable_with_the_reason() -> None:
    state = {"ok": True, "reason": ""}

    async def main() -> None:
        m = Metrics(fixed(), lambda: (bool(state["ok"]), str(state["reason"])))
        async with serving(m) as url:
            status, headers, body = await get(url + "/healthz")
            assert (status, body) == (200, b"ok\n")
            assert headers["Content-Type"].startswith("text/plain")
            state.update(ok=False, reason="mqtt disconnected for 42 s")
            status, _, body = await get(url + "/healthz")
            assert (status, body) == (503, b"mqtt disconnected for 42 s\n")
            state.update(ok=True)
            assert (await get(url + "/healthz"))[0] == 200

    run(main())


def test_healthz_that_raises_is_unhealthy_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    async def main() -> None:
        m = Metrics(fixed(), broken)
        async with serving(m) as url:
            for _ in range(3):
                status, _, body = await get(url + "/healthz")
                assert status == 503
                assert b"RuntimeError" in body

    with caplog.at_level(logging.ERROR, logger="vitalmon.metrics"):
        run(main())
    assert len([r for r in caplog.records if "health check failed" in r.message]) == 1


def test_other_paths_methods_and_head() -> None:
    async def main() -> None:
        m = Metrics(fixed(sample("vitalmon_store_bytes", 4096)), healthy)
        async with serving(m) as url:
            assert (await get(url + "/nope"))[0] == 404
            assert (await get(url + "/"))[0] == 404
            assert (await get(url + "/metrics/x"))[0] == 404
            status, _, body = await get(url + "/metrics?name[]=x")  # a query is ignored
            assert status == 200 and b"vitalmon_store_bytes 4096.0" in body
            full = (await get(url + "/metrics"))[2]
            status, headers, body = await get(url + "/metrics", "HEAD")
            assert (status, body) == (200, b"")
            assert headers["Content-Type"] == CONTENT_TYPE
            assert abs(int(headers["Content-Length"]) - len(full)) < 200  # process stats move
            status, headers, body = await get(url + "/healthz", "HEAD")
            assert (status, body, headers["Content-Length"]) == (200, b"", "3")
            status, headers, _ = await get(url + "/metrics", "POST")
            assert status == 405
            assert headers["Allow"] == "GET, HEAD"

    run(main())


def test_bad_requests_get_400_431_408_and_the_server_goes_on() -> None:
    async def main() -> None:
        m = Metrics(fixed(), healthy, read_timeout=0.3)
        async with serving(m) as url:
            assert m.port is not None
            for bad in (
                b"garbage\r\n\r\n",
                b"GET /metrics\r\n\r\n",
                b"GET /metrics HTTP/2.0\r\n\r\n",
                b"get /metrics HTTP/1.1\r\n\r\n",
                b"GET metrics HTTP/1.1\r\n\r\n",
                b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
            ):
                answer = await raw(m.port, bad)
                assert answer.startswith(b"HTTP/1.1 400 "), (bad, answer)
            # a request cut short by the client's EOF
            answer = await raw(m.port, b"GET /metrics HTTP/1.1\r\n", eof=True)
            assert answer.startswith(b"HTTP/1.1 400 ")
            huge = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n"
            assert (await raw(m.port, huge)).startswith(b"HTTP/1.1 431 ")
            # a client that never finishes its request: answered 408 after read_timeout
            answer = await raw(m.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            assert answer.startswith(b"HTTP/1.1 408 ")
            # a connection closed without a request gets nothing, and breaks nothing
            _, writer = await asyncio.open_connection("127.0.0.1", m.port)
            writer.close()
            # HTTP/1.0 and an absolute-form target work
            answer = await raw(m.port, b"GET http://x/healthz HTTP/1.0\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\nok\n")
            assert (await get(url + "/healthz"))[0] == 200

    run(main())


# --------------------------------------------------------------- histogram, process


def test_latency_histogram_buckets_appear_after_observations() -> None:
    m = Metrics(fixed(), healthy)
    before = values(m.render())
    assert before[("vitalmon_ingest_to_alert_seconds_count", frozenset())] == 0
    for seconds in (0.0007, 0.003, 2.0, 45.0, 120.0):
        m.observe_latency(seconds)
    m.observe_latency(math.nan)  # left out
    m.observe_latency(-1.0)  # left out

    async def main() -> bytes:
        async with serving(m) as url:
            status, _, body = await get(url + "/metrics")
        assert status == 200
        return body

    body = run(main())
    text = body.decode()
    assert "# TYPE vitalmon_ingest_to_alert_seconds histogram" in text
    v = values(body)

    def bucket(le: str) -> float:
        return v[("vitalmon_ingest_to_alert_seconds_bucket", frozenset({("le", le)}))]

    assert bucket("0.001") == 1
    assert bucket("0.005") == 2
    assert bucket("2.5") == 3
    assert bucket("60.0") == 4
    assert bucket("+Inf") == 5
    assert v[("vitalmon_ingest_to_alert_seconds_count", frozenset())] == 5
    assert v[("vitalmon_ingest_to_alert_seconds_sum", frozenset())] == pytest.approx(167.0037)
    assert m.latency is not None


def test_process_metrics_are_present() -> None:
    text = Metrics(fixed(), healthy).render().decode()
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "python_info",
        "python_gc_objects_collected_total",
    ):
        assert f"\n{name}" in text, name


def test_own_registry_never_the_global_one() -> None:
    a = Metrics(fixed(sample("vitalmon_store_bytes", 1)), healthy)
    b = Metrics(fixed(sample("vitalmon_store_bytes", 2)), healthy)  # no duplicate-name error
    a.observe_latency(0.5)
    assert b"vitalmon_store_bytes 1.0" in a.render()
    assert b"vitalmon_store_bytes 2.0" in b.render()
    assert values(b.render())[("vitalmon_ingest_to_alert_seconds_count", frozenset())] == 0
    assert b"vitalmon_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


# ---------------------------------------------------------------- robustness


def test_collect_that_raises_still_serves_process_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def collect() -> Iterable[Sample]:
        nonlocal calls
        calls += 1
        yield sample("vitalmon_store_bytes", 1)
        raise RuntimeError("daemon state torn")

    async def main() -> list[bytes]:
        m = Metrics(collect, healthy)
        bodies = []
        async with serving(m) as url:
            for _ in range(3):
                status, _, body = await get(url + "/metrics")
                assert status == 200
                bodies.append(body)
        return bodies

    with caplog.at_level(logging.WARNING, logger="vitalmon.metrics"):
        bodies = run(main())
    assert calls == 3
    for n, body in enumerate(bodies, 1):
        assert b"\nprocess_cpu_seconds_total " in body
        assert b"vitalmon_store_bytes" not in body  # a failed collection gives no partial set
        assert values(body)[("vitalmon_metrics_collect_errors_total", frozenset())] == n
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1  # rate-limited: once a minute
    assert "collecting the daemon's metrics failed" in errors[0].getMessage()
    assert errors[0].exc_info is not None and "daemon state torn" in str(errors[0].exc_info[1])


def test_invalid_samples_are_skipped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    good = sample("vitalmon_readings_rejected_total", 1, cause="bad_json")
    bad: list[Any] = [
        Sample("vitalmon_store_bytes", "gauge", "h", math.nan),
        Sample("vitalmon_series", "gauge", "h", math.inf),
        Sample("vitalmon_readings_received_total", "counter", "h", -1),
        Sample("vitalmon_x", "gauge", "h", "many"),  # type: ignore[arg-type]
        Sample("vitalmon bad name", "gauge", "h", 1),
        Sample("9vitalmon", "gauge", "h", 1),
        Sample("vitalmon_y", "gauge", "h", 1, {"bad-label": "x"}),
        Sample("vitalmon_y", "gauge", "h", 1, {"__reserved": "x"}),
        Sample("vitalmon_y", "gauge", "h", 1, {"port": 3}),  # type: ignore[dict-item]
        Sample("vitalmon_readings_committed", "counter", "h", 1),  # no _total
        Sample("vitalmon_z", "summary", "h", 1),  # type: ignore[arg-type]
        Sample("process_cpu_seconds_total", "counter", "h", 1),  # owned by another
        Sample("vitalmon_ingest_to_alert_seconds", "gauge", "h", 1),
        Sample("vitalmon_metrics_samples_skipped_total", "counter", "h", 1),
        Sample("vitalmon_readings_rejected_total", "gauge", "h", 1, {"cause": "x"}),  # kind
        Sample("vitalmon_readings_rejected_total", "counter", "h", 1, {"sink": "x"}),  # labels
        Sample("vitalmon_readings_rejected_total", "counter", "h", 9, {"cause": "bad_json"}),
        ("vitalmon_tuple", "gauge", "h", 1),  # not a Sample
    ]
    collect = fixed(good, *bad, sample("vitalmon_series", 7))

    with caplog.at_level(logging.WARNING, logger="vitalmon.metrics"):
        m = Metrics(collect, healthy)
        first, second = m.render(), m.render()
    for body in (first, second):
        v = values(body)  # the real parser accepts it: the exposition is valid
        assert v[("vitalmon_readings_rejected_total", frozenset({("cause", "bad_json")}))] == 1
        assert v[("vitalmon_series", frozenset())] == 7
        text = body.decode()
        for name in (
            "vitalmon_store_bytes",
            "vitalmon_readings_received_total",
            "vitalmon_x",
            "vitalmon_y",
            "vitalmon_z",
            "vitalmon_tuple",
            "vitalmon bad",
            "9vitalmon",
            "vitalmon_readings_committed",
        ):
            assert name not in text, name
        for owned in (
            "process_cpu_seconds_total",
            "vitalmon_ingest_to_alert_seconds",
            "vitalmon_metrics_samples_skipped_total",
        ):
            assert text.count(f"# TYPE {owned} ") == 1, owned
        assert text.count("# TYPE vitalmon_readings_rejected_total ") == 1
        assert not any(line.endswith(("NaN", "Inf")) for line in text.splitlines())
    assert values(first)[("vitalmon_metrics_samples_skipped_total", frozenset())] == len(bad)
    assert values(second)[("vitalmon_metrics_samples_skipped_total", frozenset())] == 2 * len(bad)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(bad)  # each problem once, not once per scrape
    assert any("is not finite" in r.getMessage() for r in warnings)


def test_samples_are_bounded_in_what_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    many = [Sample(f"bad name {i}", "gauge", "h", 1) for i in range(400)]
    with caplog.at_level(logging.WARNING, logger="vitalmon.metrics"):
        body = Metrics(fixed(*many), healthy).render()
    assert values(body)[("vitalmon_metrics_samples_skipped_total", frozenset())] == 400
    assert len(caplog.records) == 257  # 256 problems, then one "no longer logged"


# ------------------------------------------------------------------- lifecycle


def test_serve_on_port_zero_close_and_cancel() -> None:
    async def main() -> None:
        m = Metrics(fixed(), healthy)
        assert m.port is None and not m.listening.is_set()
        async with serving(m):
            port = m.port
            assert port is not None and port > 0
            with pytest.raises(RuntimeError):
                await m.serve("127.0.0.1:0")
        with pytest.raises(OSError):  # closed: nothing listens any more
            await asyncio.open_connection("127.0.0.1", port)
        await asyncio.wait_for(m.serve("127.0.0.1:0"), 1)  # after close(): returns at once

        m2 = Metrics(fixed(), healthy)
        task = asyncio.create_task(m2.serve("127.0.0.1:0"))
        await m2.listening.wait()
        # a connection in flight does not hold up cancellation
        reader, writer = await asyncio.open_connection("127.0.0.1", m2.port)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await reader.read() == b""
        writer.close()
        assert not m2.listening.is_set()

    run(main())


def test_bind_error_propagates() -> None:
    async def main() -> None:
        a = Metrics(fixed(), healthy)
        async with serving(a):
            b = Metrics(fixed(), healthy)
            with pytest.raises(OSError):
                await b.serve(f"127.0.0.1:{a.port}")

    run(main())


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9464", ":9464", "host:", "host:http", "h:65536", "h:-1"])
def test_parse_listen_refuses(listen: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_listen(listen)


# ------------------------------------------------------------------ the table


def test_every_documented_metric_renders_under_its_name() -> None:
    labels = {
        "cause": "bad_json",
        "sink": "influx",
        "kind": "threshold",
        "priority": "high",
        "state": "raised",
        "queue": "engine",
        "port": "/dev/ttyUSB0",
        "code": "Perf (0002-d006)",
        "reason": "late",
        "stream": "VITALMON_READINGS",
        "partition": "3",
        "outcome": "stored",
        "route": "pager-3west",
    }
    produced = [
        sample(name, 1, **{k: labels[k] for k in spec.labels})
        for name, spec in SPECS.items()
        if spec.kind != "histogram" and not name.startswith("vitalmon_metrics_")
    ]
    m = Metrics(fixed(*produced), healthy)
    text = m.render().decode()
    v = values(m.render())
    assert v[("vitalmon_metrics_samples_skipped_total", frozenset())] == 0
    for name, spec in SPECS.items():
        assert f"# TYPE {name} {spec.kind}\n" in text, name
        assert f"# HELP {name} {spec.help}\n" in text, name
        doc = monitor.metrics.__doc__ or ""
        braces = "{" + ", ".join(spec.labels) + "}" if spec.labels else ""
        assert f"``{name}{braces}`` {spec.kind}\n    {spec.help}\n" in doc, name
        if spec.kind == "counter":
            assert name.endswith("_total")


def test_sample_helper_checks_the_table() -> None:
    s = sample("vitalmon_serial_port_open", 1, port="/dev/ttyS0")
    assert (s.kind, s.labels) == ("gauge", {"port": "/dev/ttyS0"})
    assert s.help == SPECS["vitalmon_serial_port_open"].help
    with pytest.raises(KeyError):
        sample("vitalmon_unknown", 1)
    with pytest.raises(ValueError, match="labels"):
        sample("vitalmon_serial_port_open", 1)
    with pytest.raises(ValueError, match="histogram"):
        sample("vitalmon_ingest_to_alert_seconds", 1)


# ------------------------------------------------------------------------ curl


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_against_the_endpoint() -> None:
    assert CURL is not None
    state = {"ok": True}

    async def curl(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            CURL,
            "-sS",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode() + err.decode()

    async def main() -> None:
        m = Metrics(
            fixed(sample("vitalmon_mqtt_connected", 1)), lambda: (state["ok"], "store not writable")
        )
        m.observe_latency(0.02)
        async with serving(m) as url:
            rc, out = await curl("-f", url + "/metrics")
            assert rc == 0, out
            assert "vitalmon_mqtt_connected 1.0" in out
            assert 'vitalmon_ingest_to_alert_seconds_bucket{le="0.025"} 1.0' in out
            assert "process_cpu_seconds_total" in out
            rc, out = await curl("-f", url + "/healthz")
            assert (rc, out) == (0, "ok\n")
            state["ok"] = False
            rc, out = await curl("-o", "-", "-w", "%{http_code}", url + "/healthz")
            assert (rc, out) == (0, "store not writable\n503")
            rc, _ = await curl("-f", url + "/healthz")
            assert rc == 22  # curl -f: HTTP error
            rc, out = await curl("-I", url + "/metrics")
            assert rc == 0
            assert out.startswith("HTTP/1.1 200 OK\r\n")
            assert f"Content-Type: {CONTENT_TYPE}\r\n" in out
            rc, out = await curl("-o", "/dev/null", "-w", "%{http_code}", url + "/other")
            assert (rc, out) == (0, "404")

    run(main())
