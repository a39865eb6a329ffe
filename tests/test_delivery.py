"""Alert delivery in one process: the real journal (SQLite in tmp_path), the router and the
deliverers, against real receivers on loopback (tests/delivery_receivers.py): an MLLP
listener checking IHE PCD-04 with the ``hl7`` library, an HTTP server checking the HMAC
signature, aiosmtpd with STARTTLS and a login, and mosquitto for the mqtt receiver.

Each test runs its own event loop; waiting is polling with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, until
from delivery_receivers import DripServer, MllpListener, SmtpServer, WebhookServer, self_signed

from monitor.config import AlertsConfig, MqttConfig, RouteConfig, SqliteStoreConfig
from monitor.model import AlertEvent, AlertState, Priority, new_alert
from monitor.mqtt import Client
from monitor.sinks.alerts import AlertPublisher
from monitor.sinks.delivery import Delivery
from monitor.sinks.sqlite import SqliteSink

SECRET = "hook-secret-" + "7f3a9c"
TESTS = Path(__file__).resolve().parent
T0 = time.time() - 60


def run(coro: Any, timeout: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def lifecycle(
    ward: str, bed: str, *, priority: Priority = Priority.MEDIUM, started: float = T0
) -> list[AlertEvent]:
    """An SpO2 alert raised, acknowledged and resolved (as the lifecycle numbers them)."""
    raised = new_alert(
        ward=ward,
        bed=bed,
        device="mon1",
        patient="P-1",
        vital="spo2",
        rule="spo2.low",
        kind="physiological",
        priority=priority,
        value=84.0,
        limit=90.0,
        message="SpO2 84 % < 90 % for 15 s",
        started=started,
    )
    acked = replace(
        raised,
        seq=2,
        state=AlertState.ACKNOWLEDGED,
        at=started + 5,
        extra={"ack_by": "kim", "action": "acknowledge"},
    )
    resolved = replace(
        raised,
        seq=3,
        state=AlertState.RESOLVED,
        value=95.0,
        at=started + 9,
        extra={"ack_by": "kim"},
    )
    return [raised, acked, resolved]


def key(e: AlertEvent) -> str:
    return f"{e.id}:{e.seq}"


def secret_file(tmp_path: Path) -> Path:
    f = tmp_path / "hook.key"
    f.write_text(SECRET + "\n")
    f.chmod(0o600)
    return f


def route(name: str, receiver: dict[str, Any], **more: Any) -> RouteConfig:
    return RouteConfig.model_validate(
        {"name": name, "receiver": receiver, "retry_min_s": 0.05, "retry_max_s": 0.2, **more}
    )


def webhook(url: str, tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": url, "secret_file": str(secret_file(tmp_path)), **more}


@contextlib.asynccontextmanager
async def journal_at(path: Path, **cfg: Any) -> AsyncIterator[SqliteSink]:
    journal = SqliteSink(SqliteStoreConfig(path=str(path), **cfg))
    await journal.open()
    task = asyncio.create_task(journal.run())
    try:
        yield journal
    finally:
        journal.close()
        await asyncio.wait_for(task, 10)
        await journal.release()


async def commit(journal: SqliteSink, events: list[AlertEvent]) -> None:
    done = asyncio.get_running_loop().create_future()
    await journal.write([], events, lambda: done.set_result(None))
    await done


@contextlib.asynccontextmanager
async def delivering(
    routes: list[RouteConfig], journal: SqliteSink, client: Client | None = None, **kw: Any
) -> AsyncIterator[Delivery]:
    d = Delivery(routes, journal, client or Client(MqttConfig()), **kw)
    await d.open()
    tasks = [asyncio.create_task(c, name=n) for n, c in d.tasks()]
    try:
        yield d
    finally:
        d.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


def outbox(db: Path) -> list[tuple[str, int, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT route, ev, status FROM outbox ORDER BY route, ev").fetchall()
    finally:
        conn.close()


# ------------------------------------------------------------------- routing


def test_routes_match_and_route_each_event_once_across_restarts(tmp_path: Path) -> None:
    """Four webhook routes with different matches on one server (a path each): each gets
    the events its match takes, once, in order; a restart routes and sends nothing again,
    and what is committed after it goes out once."""
    hook = WebhookServer(SECRET)
    x = lifecycle("a", "1", priority=Priority.MEDIUM)
    escalated = replace(
        x[0],
        seq=2,
        priority=Priority.HIGH,
        at=T0 + 3,
        extra={"escalated": True, "action": "escalate"},
    )
    x_resolved = replace(
        x[0],
        seq=3,
        priority=Priority.HIGH,
        state=AlertState.RESOLVED,
        at=T0 + 9,
        extra={"escalated": True},
    )
    x = [x[0], escalated, x_resolved]
    y = lifecycle("b", "2", priority=Priority.HIGH, started=T0 + 1)
    routes = [
        route("all", webhook(hook.url + "/all", tmp_path)),
        route("high", webhook(hook.url + "/high", tmp_path), match={"priorities": ["high"]}),
        route("esc", webhook(hook.url + "/esc", tmp_path), match={"escalated": True}),
        route(
            "ward-a",
            webhook(hook.url + "/a", tmp_path),
            match={"wards": ["a"], "states": ["active"]},
        ),
    ]
    expected = {
        "/all": [key(e) for e in (x[0], y[0], x[1], y[1], x[2], y[2])],
        "/high": [key(e) for e in (y[0], x[1], y[1], x[2], y[2])],
        "/esc": [key(x[1]), key(x[2])],
        "/a": [key(x[0]), key(x[1])],
    }
    db = tmp_path / "vitals.db"

    def by_path() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in list(hook.accepted):
            out.setdefault(r.info["path"], []).append(r.key)
        return out

    async def main() -> None:
        async with journal_at(db) as journal:
            async with delivering(routes, journal):
                await commit(journal, [x[0], y[0]])
                await commit(journal, [x[1], y[1]])
                await commit(journal, [x[2], y[2]])
                await until(lambda: by_path() == expected, 5, "every route's events")
            assert hook.attempt_count() == 15
            async with delivering(routes, journal) as again:
                later = lifecycle("c", "3", started=T0 + 20)[:1]
                await commit(journal, later)
                await until(lambda: len(hook.accepted) == 16, 5, "the event after the restart")
                assert again.router.counts["events"] == 1
        assert hook.problems == []
        assert by_path()["/all"] == [*expected["/all"], key(later[0])]
        assert hook.attempt_count() == 16  # nothing sent twice
        assert {s for _, _, s in outbox(db)} == {"delivered"}
        assert len(outbox(db)) == 16

    try:
        run(main())
    finally:
        hook.close()


def test_a_route_added_later_starts_from_then_and_none_configured_forgets(tmp_path: Path) -> None:
    """Routes take the events committed from their first start on: not the journal's
    past, nor what was committed while no route was configured."""
    hook = WebhookServer(SECRET)
    db = tmp_path / "vitals.db"
    first, second, third, fourth = (lifecycle("a", str(b), started=T0 + b)[0] for b in range(4))

    async def main() -> None:
        async with journal_at(db) as journal:
            await commit(journal, [first])  # before any route
            async with delivering([route("r", webhook(hook.url, tmp_path))], journal):
                await commit(journal, [second])
                await until(lambda: hook.keys() == [key(second)], 5, "the second")
            async with delivering([], journal):  # no route: its position is forgotten
                await commit(journal, [third])
            async with delivering([route("r", webhook(hook.url, tmp_path))], journal):
                await commit(journal, [fourth])
                await until(lambda: len(hook.accepted) == 2, 5, "the fourth")

    try:
        run(main())
    finally:
        hook.close()
    assert hook.keys() == [key(second), key(fourth)]


# ------------------------------------------------------------------ receivers


def test_webhook_retries_a_failing_server_and_delivers_in_order(tmp_path: Path) -> None:
    """503 to the first three attempts: the first event is retried (jittered backoff)
    until accepted, the others wait behind it; every attempt carried a valid signature
    and the same key for the same event."""
    hook = WebhookServer(SECRET, fail_first=3)
    events = lifecycle("3west", "6")
    db = tmp_path / "vitals.db"

    async def main() -> Delivery:
        async with (
            journal_at(db) as journal,
            delivering([route("hook", webhook(hook.url, tmp_path))], journal) as d,
        ):
            await commit(journal, events)
            await until(lambda: len(hook.accepted) == 3, 10, "three accepted")
            return d

    try:
        d = run(main())
    finally:
        hook.close()
    assert hook.problems == []
    assert hook.keys() == [key(e) for e in events]
    assert [r.key for r in hook.attempts[:4]] == [key(events[0])] * 4
    counts = d.deliverers["hook"].counts
    assert (counts["delivered"], counts["failed"]) == (3, 3)
    body = hook.accepted[0].info["event"]
    assert body == events[0].to_json()


def replay(url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST ``body`` with ``headers`` as captured (a replay): -> the HTTP status."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        conn.request("POST", parts.path or "/", body, headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_webhook_signature_covers_the_timestamp_and_the_key(tmp_path: Path) -> None:
    """X-Vitalmon-Signature is the HMAC of "<timestamp>.<key>." and the body: the receiver
    (checking it as docs/delivery.md says, the timestamp within 5 minutes) accepts what
    vitalmon sends; the captured request replayed with another X-Vitalmon-Event (past the
    receiver's de-duplication) or another X-Vitalmon-Timestamp (later than the tolerance)
    is refused with 401."""
    hook = WebhookServer(SECRET)
    event = lifecycle("3west", "6")[0]

    async def main() -> None:
        async with (
            journal_at(tmp_path / "vitals.db") as journal,
            delivering([route("hook", webhook(hook.url, tmp_path))], journal),
        ):
            await commit(journal, [event])
            await until(lambda: len(hook.accepted) == 1, 5, "the event")

    try:
        run(main())
        assert hook.problems == []
        got = hook.accepted[0]
        headers = {
            k: v for k, v in got.info["headers"].items() if k.lower().startswith(("x-", "content-"))
        }
        body = got.info["body"]
        ts = headers["X-Vitalmon-Timestamp"]
        signed = f"{ts}.{key(event)}.".encode() + body
        assert headers["X-Vitalmon-Signature"] == (
            "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
        )
        assert replay(hook.url, body, headers) == 204  # the same again: a duplicate key
        new_key = {**headers, "X-Vitalmon-Event": f"{event.id}:9"}
        assert replay(hook.url, body, new_key) == 401
        later = {**headers, "X-Vitalmon-Timestamp": str(int(ts) + 600)}
        assert replay(hook.url, body, later) == 401
        stale = {**headers, "X-Vitalmon-Timestamp": str(int(ts) - 600)}
        assert replay(hook.url, body, stale) == 401
        assert hook.keys() == [key(event), key(event)]
        assert len(hook.problems) == 3
    finally:
        hook.close()


def test_hl7_pcd04_lifecycle_and_an_ae_is_retried(tmp_path: Path) -> None:
    """Raise, escalate, acknowledge, resolve as IHE PCD-04 alert states; the alarm
    manager answers AE to the first message: sent again, then AA."""
    mllp = MllpListener()
    mllp.answers = ["AE"]
    raised, acked, resolved = lifecycle("3west", "6", priority=Priority.MEDIUM)
    escalated = replace(
        raised, seq=2, priority=Priority.HIGH, extra={"escalated": True, "action": "escalate"}
    )
    acked = replace(acked, seq=3, priority=Priority.HIGH, extra={**acked.extra, "escalated": True})
    resolved = replace(resolved, seq=4, priority=Priority.HIGH, extra={"ack_by": "kim"})
    events = [raised, escalated, acked, resolved]
    cfg = {"type": "hl7-mllp", "host": "127.0.0.1", "port": mllp.port, "timeout_s": 2}

    async def main() -> None:
        async with (
            journal_at(tmp_path / "vitals.db") as journal,
            delivering([route("acm", cfg)], journal),
        ):
            await commit(journal, events)
            await until(lambda: len(mllp.accepted) == 4, 10, "four ACKed")

    try:
        run(main())
    finally:
        mllp.close()
    assert mllp.problems == []
    assert [r.key for r in mllp.attempts] == [key(events[0]), *(key(e) for e in events)]
    got = [r.info for r in mllp.accepted]
    assert [(i["phase"], i["state"], i["inactivation"], i["priority"]) for i in got] == [
        ("start", "active", "enabled", "PM"),
        ("escalate", "active", "enabled", "PH"),
        ("update", "active", "alert-acknowledged", "PH"),
        ("end", "inactive", "alert-acknowledged", "PH"),
    ]
    first = got[0]
    assert (first["ward"], first["bed"], first["alert"], first["event"]) == (
        "3west",
        "6",
        raised.id,
        "MDC_EVT_LO",
    )
    assert first["type"] == "SP"
    assert first["text"] == raised.message
    assert first["attrs"]["MDC_ATTR_ALERT_SOURCE"] == "150456^MDC_PULS_OXIM_SAT_O2^MDC"
    assert first["attrs"]["MDC_PULS_OXIM_SAT_O2"] == "84"


def test_smtp_over_starttls_with_a_login(tmp_path: Path) -> None:
    """aiosmtpd requiring STARTTLS and a login, its certificate self-signed at test time
    and trusted through ca_file: one mail per event, Message-ID from the key, the JSON
    attached. A server that does not offer STARTTLS gets nothing (no fallback)."""
    crt, keyfile = self_signed(tmp_path)
    smtp = SmtpServer((crt, keyfile), users={"vitalmon": "m4il-Pw"})
    plain = SmtpServer(None)
    password = tmp_path / "smtp.password"
    password.write_text("m4il-Pw\n")
    mail = {
        "type": "smtp",
        "host": "127.0.0.1",
        "port": smtp.port,
        "ca_file": str(crt),
        "username": "vitalmon",
        "password_file": str(password),
        "from": "vitalmon@hospital.example",
        "to": ["ward-3west@hospital.example", "biomed@hospital.example"],
        "timeout_s": 5,
    }
    events = lifecycle("3west", "6")
    unsafe = {**mail, "port": plain.port, "username": None, "password_file": None}
    unsafe = {k: v for k, v in unsafe.items() if v is not None}

    async def main() -> Delivery:
        async with journal_at(tmp_path / "vitals.db") as journal:
            routes = [route("mail", mail), route("plain", unsafe)]
            async with delivering(routes, journal) as d:
                await commit(journal, events)
                await until(lambda: len(smtp.accepted) == 3, 15, "three mails")
                await until(lambda: d.deliverers["plain"].counts["failed"] >= 2, 5, "refusals")
                return d

    try:
        d = run(main())
    finally:
        smtp.close()
        plain.close()
    assert plain.accepted == []
    assert d.deliverers["plain"].counts["delivered"] == 0
    got = [r.info for r in smtp.accepted]
    assert [r.key for r in smtp.accepted] == [key(e) for e in events]
    assert all(i["tls"] and i["user"] == "vitalmon" for i in got)
    assert got[0]["to"] == mail["to"]
    assert got[0]["message_id"] == f"<{events[0].id}.1.vitalmon@hospital.example>"
    assert got[0]["subject"] == "[vitalmon MEDIUM] 3west/6 SpO2 low 84 (active)"
    assert got[2]["subject"] == "[vitalmon MEDIUM] 3west/6 SpO2 low 95 (resolved)"
    assert got[1]["event"] == events[1].to_json()
    assert "Acknowledged by  kim" in got[1]["text"]


def test_mqtt_receiver_publishes_on_its_topic(tmp_path: Path, broker: Broker, subscribe) -> None:
    pager = subscribe("pager/#")
    events = lifecycle("3west", "6", priority=Priority.HIGH)
    cfg = {"type": "mqtt", "topic": "pager/{ward}/{priority}/{vital}"}

    async def main() -> None:
        client = Client(MqttConfig(port=broker.port, client_id="delivery-test"))
        client.start()
        try:
            async with (
                journal_at(tmp_path / "vitals.db") as journal,
                delivering([route("pager", cfg)], journal, client) as d,
            ):
                await commit(journal, events)
                await until(lambda: d.deliverers["pager"].counts["delivered"] == 3, 10)
        finally:
            await client.stop()

    run(main())
    wait = time.monotonic() + 5
    while len(pager.messages) < 3 and time.monotonic() < wait:
        time.sleep(0.01)
    assert [t for t, _ in pager.messages] == ["pager/3west/high/spo2"] * 3
    assert pager.json() == [e.to_json() for e in events]


def test_a_down_receiver_holds_up_no_other_route_and_raises_sink_down(tmp_path: Path) -> None:
    """Route "refused" posts to a port nobody listens on, route "hanging" to an MLLP
    listener that never answers; route "ok" gets every event at once all the same. The
    failing routes raise sink.down after down_alarm_s (on the heartbeat's check()); the
    refused one resolves it once a server listens there and takes its backlog."""
    ok = WebhookServer(SECRET)
    hanging = MllpListener(hang=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused_port = s.getsockname()[1]
    routes = [
        route("ok", webhook(ok.url, tmp_path)),
        route("refused", webhook(f"http://127.0.0.1:{refused_port}", tmp_path), down_alarm_s=1),
        route(
            "hanging",
            {"type": "hl7-mllp", "host": "127.0.0.1", "port": hanging.port, "timeout_s": 0.5},
            down_alarm_s=1,
        ),
    ]
    conditions: list[tuple[str, str, bool]] = []
    late: list[WebhookServer] = []

    async def main() -> None:
        async with journal_at(tmp_path / "vitals.db") as journal, delivering(routes, journal) as d:
            d.on_condition = lambda rule, comp, active, _detail: conditions.append(
                (rule, comp, active)
            )
            for n in range(5):
                events = lifecycle("3west", str(n), started=T0 + n)
                t0 = time.monotonic()
                await commit(journal, events)
                await until(lambda n=n: len(ok.accepted) == 3 * (n + 1), 2, "route ok")
                assert time.monotonic() - t0 < 1.0
            deadline = time.monotonic() + 5
            while len(conditions) < 2 and time.monotonic() < deadline:
                d.check()
                await asyncio.sleep(0.05)
            assert sorted(conditions) == [
                ("sink.down", "route:hanging", True),
                ("sink.down", "route:refused", True),
            ]
            assert d.deliverers["refused"].backlog == 15
            late.append(WebhookServer(SECRET, port=refused_port))
            await until(lambda: len(late[0].accepted) == 15, 10, "the backlog")
            await until(lambda: ("sink.down", "route:refused", False) in conditions, 2)
            assert d.deliverers["hanging"].counts["delivered"] == 0

    try:
        run(main(), 60)
    finally:
        ok.close()
        hanging.close()
        for s in late:
            s.close()
    assert hanging.attempts  # it was tried (and never answered)


def test_an_event_refused_for_good_is_rejected_and_the_route_goes_on(tmp_path: Path) -> None:
    """The alarm manager answers AR, the webhook 422, the mail relay 554 to an alert's
    raise (each refusal echoing the patient id): each route tries it reject_after (3)
    times, then marks it rejected, counts it, raises route.rejected (the alert, its bed,
    the receiver's reason; never the patient id) and delivers the alert's later events
    in order. route.rejected resolves once the route delivered again, down_alarm_s
    after it was raised. Before, the route retried the raise forever and every later
    alarm waited behind it."""
    events = lifecycle("3west", "6")
    first = key(events[0])
    mllp = MllpListener()
    mllp.answers = ["AR", "AR", "AR"]
    hook = WebhookServer(SECRET)
    hook.refuse = {first: 422}
    smtp = SmtpServer(None)
    smtp.refuse = {first}
    mail = {"type": "smtp", "host": "127.0.0.1", "port": smtp.port, "starttls": False}
    mail |= {"from": "vitalmon@hospital.example", "to": ["biomed@hospital.example"]}
    routes = [
        route("acm", {"type": "hl7-mllp", "host": "127.0.0.1", "port": mllp.port}, down_alarm_s=1),
        route("hook", webhook(hook.url, tmp_path), down_alarm_s=1),
        route("mail", mail, down_alarm_s=1),
    ]
    conditions: list[tuple[str, str, bool, str]] = []
    db = tmp_path / "vitals.db"
    later = [key(e) for e in events[1:]]

    async def main() -> Delivery:
        async with journal_at(db) as journal, delivering(routes, journal) as d:
            d.on_condition = lambda *c: conditions.append(c)
            await commit(journal, events)
            for server in (mllp, hook, smtp):
                await until(lambda s=server: s.keys() == later, 10, "the later events")

            def resolved() -> bool:
                d.check()
                return sum(1 for c in conditions if c[0] == "route.rejected" and not c[2]) == 3

            await until(resolved, 5, "route.rejected resolved")
            return d

    try:
        d = run(main())
    finally:
        mllp.close()
        hook.close()
        smtp.close()
    for server in (mllp, hook, smtp):
        assert [r.key for r in server.attempts] == [first] * 3 + later
    for name, reason in (("acm", "ACK AR"), ("hook", "HTTP 422"), ("mail", "SMTP 554")):
        dlv = d.deliverers[name]
        assert (dlv.counts["rejected"], dlv.counts["delivered"], dlv.backlog) == (1, 2, 0)
        (raised,) = [c for c in conditions if c[:3] == ("route.rejected", f"route:{name}", True)]
        detail = raised[3]
        assert events[0].id in detail and "3west/6" in detail and reason in detail, detail
        assert "P-1" not in detail, detail
    assert [s for r, _, s in outbox(db) if r == "hook"] == ["rejected", "delivered", "delivered"]
    assert not any(c[0] == "sink.down" for c in conditions)


@pytest.mark.parametrize(
    ("status", "for_good"),
    [
        *((s, True) for s in (400, 409, 413, 422)),
        *((s, False) for s in (401, 403, 404, 408, 425, 429, 500, 503)),
    ],
)
def test_which_http_answers_refuse_an_event_for_good(status: int, for_good: bool) -> None:
    """A 4xx about the request is a refusal for good; a timeout, a rate limit, a 5xx,
    and the 4xx that say the route itself is wrong (the key, the url) are retried."""
    from monitor.sinks.delivery import webhook as hook

    assert hook.for_good(status) is for_good


@pytest.mark.parametrize("kind", ["webhook", "smtp"])
def test_a_receiver_that_drips_its_answer_is_cut_off_at_timeout_s(
    tmp_path: Path, kind: str
) -> None:
    """A server that accepts and answers one byte a second keeps every socket read alive:
    timeout_s (2 s) bounds the whole attempt all the same. Each attempt's connection is
    closed by vitalmon within about timeout_s, and the next attempt starts then (before,
    the first attempt never ended: the receiver's one worker thread stayed on it)."""
    drip = DripServer(b"HTTP/1.1 200 OK" if kind == "webhook" else b"220 drip.example")
    if kind == "webhook":
        receiver = webhook(f"http://127.0.0.1:{drip.port}/", tmp_path, timeout_s=2)
    else:
        receiver = {"type": "smtp", "host": "127.0.0.1", "port": drip.port, "starttls": False}
        receiver |= {"from": "a@b.example", "to": ["c@d.example"], "timeout_s": 2}

    async def main() -> Delivery:
        async with (
            journal_at(tmp_path / "vitals.db") as journal,
            delivering([route("drip", receiver)], journal) as d,
        ):
            await commit(journal, lifecycle("3west", "6")[:1])
            await until(lambda: len(drip.closed()) >= 2, 10, "two attempts cut off")
            return d

    try:
        d = run(main())
    finally:
        drip.close()
    assert all(span < 3.5 for span in drip.closed()), drip.closed()
    counts = d.deliverers["drip"].counts
    assert counts["failed"] >= 2 and counts["delivered"] == 0


def test_a_hung_attempt_holds_up_no_stop(tmp_path: Path) -> None:
    """A process whose webhook attempt hangs on a dripping server ends at once when its
    event loop does: the attempt is given up at timeout_s and nothing joins its thread
    (before, the interpreter's exit waited for the executor's worker, which the drip
    kept busy: a stop hung)."""
    drip = DripServer(b"HTTP/1.1 200 OK", limit_s=60)
    key_file = secret_file(tmp_path)
    script = tmp_path / "hang.py"
    script.write_text(
        f"""
import asyncio, sys, time
sys.path[:0] = [{str(TESTS.parent)!r}, {str(TESTS)!r}]
from test_delivery import lifecycle
from monitor.config import WebhookReceiverConfig
from monitor.sinks.delivery.webhook import WebhookReceiver

async def main():
    cfg = WebhookReceiverConfig(
        type="webhook", url="http://127.0.0.1:{drip.port}/", secret_file={str(key_file)!r},
        timeout_s=2,
    )
    r = WebhookReceiver(cfg, "hook")
    e = lifecycle("3west", "6")[0]
    try:
        await asyncio.wait_for(r.send(e, "k:1"), 30)
    except Exception as exc:
        print("failed:", type(exc).__name__, flush=True)
    await r.close()

asyncio.run(main())
"""
    )
    started = time.monotonic()
    try:
        out = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
            cwd=TESTS.parent,
        )
    finally:
        drip.close()
    took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "failed: TimeoutError"
    assert took < 8, took


# ---------------------------------------------------------------------- pauses


def test_pauses_hold_and_release_the_latest(tmp_path: Path) -> None:
    """Bed 6 paused: its medium alert's raise and acknowledgement are held, a high alert
    breaks through at once, an alert raised and resolved during the pause is never sent;
    bed 7 (not paused) goes at once. At the pause's end only the acknowledgement goes."""
    hook = WebhookServer(SECRET)
    publisher = AlertPublisher(AlertsConfig(), Client(MqttConfig()))
    during = time.time() + 5  # (events of the pause, which begins before them)
    held = lifecycle("3west", "6", started=during)[:2]  # raise + ack: only the ack goes
    brief = lifecycle("3west", "6", started=during + 1)  # raise .. resolve: nothing goes
    brief = [brief[0], brief[2]]
    urgent = lifecycle("3west", "6", priority=Priority.HIGH, started=during + 2)[:1]
    other = lifecycle("3west", "7", started=during + 3)[:1]

    async def main() -> Delivery:
        async with journal_at(tmp_path / "vitals.db") as journal:
            routes = [route("hook", webhook(hook.url, tmp_path))]
            kw = {"pauses": publisher, "breakthrough": lambda: publisher.cfg.pause_breakthrough}
            async with delivering(routes, journal, **kw) as d:
                until_ = publisher.pause("3west", "6", 2.0, time.time())
                await commit(journal, [held[0], brief[0], urgent[0], other[0]])
                await commit(journal, [held[1], brief[1]])
                await until(lambda: len(hook.accepted) == 2, 5, "the breakthrough and bed 7")
                assert hook.keys() == [key(urgent[0]), key(other[0])]
                assert time.time() < until_  # (still paused when that was checked)
                await until(lambda: len(hook.accepted) == 3, 5, "the release")
                assert time.time() >= until_
                return d

    try:
        d = run(main())
    finally:
        hook.close()
    assert hook.keys() == [key(urgent[0]), key(other[0]), key(held[1])]
    c = d.deliverers["hook"].counts
    assert (c["held"], c["superseded"], c["skipped"], c["delivered"]) == (4, 1, 2, 3)
    assert d.deliverers["hook"].backlog == 0
    statuses = {ev: s for _, ev, s in outbox(tmp_path / "vitals.db")}
    assert sorted(statuses.values()) == [
        "delivered",
        "delivered",
        "delivered",
        "skipped",
        "skipped",
        "superseded",
    ]


def test_an_alarm_raised_before_a_pause_reaches_its_receiver_and_so_does_its_end(
    tmp_path: Path,
) -> None:
    """An alarm raised before the bed's pause (so published on MQTT) waits in the outbox,
    its webhook down; the bed is paused, and the alarm resolves during the pause. The
    route tells the receiver of every alarm whose raise MQTT announced, and its end: the
    raise goes as soon as the webhook is back (the pause holds only what came after it
    began), the end at the pause's end. Before, the raise was held because the bed was
    paused when its turn came, and both were skipped at the pause's end: the receiver
    never heard of an alarm the central station had shown."""
    hook = WebhookServer(SECRET)
    hook.failing = True
    publisher = AlertPublisher(AlertsConfig(), Client(MqttConfig()))
    raised, _, resolved = lifecycle("3west", "6", started=time.time() - 30)
    resolved = replace(resolved, seq=2, at=time.time() + 5)  # (during the pause)

    async def main() -> Delivery:
        async with journal_at(tmp_path / "vitals.db") as journal:
            routes = [route("hook", webhook(hook.url, tmp_path))]
            kw = {"pauses": publisher, "breakthrough": lambda: publisher.cfg.pause_breakthrough}
            async with delivering(routes, journal, **kw) as d:
                dlv = d.deliverers["hook"]
                await commit(journal, [raised])
                await until(lambda: dlv.counts["failed"] >= 1, 5, "the webhook down")
                until_ = publisher.pause("3west", "6", 3.0, time.time())
                await commit(journal, [resolved])
                c = dlv.counts
                await until(lambda: c["failed"] >= 2 or c["held"], 5, "the raise tried again")
                assert c["held"] == 0, "the raise (published before the pause) was held"
                hook.failing = False
                await until(lambda: hook.keys() == [key(raised)], 5, "the raise")
                await until(lambda: dlv.counts["held"] == 1, 5, "the end held")
                assert time.time() < until_  # (delivered and held during the pause)
                await until(lambda: len(hook.accepted) == 2, 10, "the end after the pause")
                assert time.time() >= until_
                return d

    try:
        d = run(main())
    finally:
        hook.close()
    assert hook.keys() == [key(raised), key(resolved)]
    assert d.deliverers["hook"].counts["skipped"] == 0


def test_held_rows_survive_a_restart_and_go_out_without_the_pause(tmp_path: Path) -> None:
    """A restart forgets pauses (one instance): the held rows go at the next start,
    the latest of each alert only."""
    hook = WebhookServer(SECRET)
    publisher = AlertPublisher(AlertsConfig(), Client(MqttConfig()))
    events = lifecycle("3west", "6", started=time.time() + 5)[:2]  # (during the pause)
    db = tmp_path / "vitals.db"

    async def main() -> None:
        async with journal_at(db) as journal:
            routes = [route("hook", webhook(hook.url, tmp_path))]
            async with delivering(routes, journal, pauses=publisher) as d:
                publisher.pause("3west", "6", 60, time.time())
                await commit(journal, events)
                await until(lambda: d.deliverers["hook"].counts["held"] == 2, 5, "held")
            assert [s for _, _, s in outbox(db)] == ["held", "held"]
            fresh = AlertPublisher(AlertsConfig(), Client(MqttConfig()))
            async with delivering(routes, journal, pauses=fresh):
                await until(lambda: hook.keys() == [key(events[1])], 5, "the latest")

    try:
        run(main())
    finally:
        hook.close()
    assert [s for _, _, s in outbox(db)] == ["superseded", "delivered"]


def test_an_alert_open_longer_than_the_outbox_keeps_rows_still_ends_after_a_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox forgets done rows after KEEP_S (7 days; here at once): an alert raised
    and delivered, whose rows are that old when it resolves during a pause, still gets
    its end at the pause's end: the route's latest delivered row of an alert whose end
    it has not had is kept (before, the pause's end took it for never announced and
    skipped the end: the alarm manager kept showing it active). Once the end is
    delivered, its rows go as well."""
    from monitor.sinks.delivery import router

    monkeypatch.setattr(router, "KEEP_S", -1.0)  # every done row is "older than 7 days"
    monkeypatch.setattr(router, "PRUNE_EVERY_S", 0.0)  # pruned after every routing
    hook = WebhookServer(SECRET)
    publisher = AlertPublisher(AlertsConfig(), Client(MqttConfig()))
    raised, _, resolved = lifecycle("3west", "6")
    resolved = replace(resolved, seq=2, at=time.time() + 5)  # (during the pause)
    other = lifecycle("3west", "7", started=T0 + 1)[0]
    db = tmp_path / "vitals.db"

    async def main() -> Delivery:
        async with journal_at(db) as journal:
            routes = [route("hook", webhook(hook.url, tmp_path))]
            kw = {"pauses": publisher, "breakthrough": lambda: publisher.cfg.pause_breakthrough}
            async with delivering(routes, journal, **kw) as d:
                await commit(journal, [raised])
                await until(lambda: hook.keys() == [key(raised)], 5, "the raise")
                until_ = publisher.pause("3west", "6", 2.0, time.time())
                await commit(journal, [resolved])  # (routed, then the outbox pruned)
                await until(lambda: d.deliverers["hook"].counts["held"] == 1, 5, "held")
                assert [s for _, _, s in outbox(db)] == ["delivered", "held"]
                await until(lambda: len(hook.accepted) == 2, 10, "the end after the pause")
                assert time.time() >= until_
                await commit(journal, [other])  # (the alert is over: its rows go)
                await until(lambda: len(hook.accepted) == 3, 5, "the other")
                return d

    try:
        d = run(main())
    finally:
        hook.close()
    assert hook.keys() == [key(raised), key(resolved), key(other)]
    assert d.deliverers["hook"].counts["skipped"] == 0
    assert [ev for _, ev, _ in outbox(db)] == [3]  # (the other's raise: delivered, kept)


def test_an_outbox_from_before_the_state_column_gets_it_filled(tmp_path: Path) -> None:
    """A journal whose outbox has no state column (vitalmon before it) gets the column
    when opened, filled from its events, so that the pruning knows which alerts ended."""
    db = tmp_path / "vitals.db"
    events = lifecycle("3west", "6")

    async def main() -> None:
        async with journal_at(db) as journal:
            await commit(journal, events)
        conn = sqlite3.connect(db)
        conn.executescript(
            "DROP TABLE outbox; CREATE TABLE outbox (route TEXT NOT NULL, ev INTEGER NOT NULL,"
            " alert TEXT NOT NULL, status TEXT NOT NULL, routed_at REAL NOT NULL,"
            " done_at REAL, PRIMARY KEY (route, ev)) WITHOUT ROWID;"
        )
        conn.executemany(
            "INSERT INTO outbox (route, ev, alert, status, routed_at)"
            " VALUES ('r', ?, ?, 'delivered', 0)",
            [(ev, events[0].id) for ev in (1, 2, 3)],
        )
        conn.commit()
        conn.close()
        async with journal_at(db):
            pass

    run(main())
    conn = sqlite3.connect(db)
    try:
        states = conn.execute("SELECT ev, state FROM outbox ORDER BY ev").fetchall()
    finally:
        conn.close()
    assert states == [(1, "active"), (2, "acknowledged"), (3, "resolved")]


# ------------------------------------------------------------------ retention


def test_retention_keeps_the_alert_events_a_route_still_owes(tmp_path: Path) -> None:
    """aggregate_days 1 (the spool's): alert events two days old that a route has not
    delivered yet (its webhook answers 503), or that the router has not even routed yet,
    are kept by retention until the route is done with them; then they go. Before, they
    were deleted: never delivered, never reported, the backlog stuck."""
    hook = WebhookServer(SECRET)
    hook.failing = True
    old = time.time() - 2 * 86400
    first = lifecycle("3west", "6", started=old)[0]
    second = lifecycle("3west", "7", started=old + 1)[0]
    db = tmp_path / "vitals.db"

    def events() -> int:
        conn = sqlite3.connect(db)
        try:
            return int(conn.execute("SELECT count(*) FROM alert_events").fetchone()[0])
        finally:
            conn.close()

    async def main() -> Delivery:
        async with journal_at(db, raw_days=1, aggregate_days=1) as journal:
            routes = [route("hook", webhook(hook.url, tmp_path))]
            d = Delivery(routes, journal, Client(MqttConfig()))
            await d.open()  # (the router's position: the journal's end)
            await commit(journal, [first])  # committed, not routed yet
            report = await journal.maintain()
            assert events() == 1  # (kept: the router owes it to its routes)
            assert report.kept_alerts == 1
            tasks = [asyncio.create_task(c, name=n) for n, c in d.tasks()]
            try:
                dlv = d.deliverers["hook"]
                await commit(journal, [second])
                await until(lambda: dlv.counts["failed"] >= 2, 5, "failed attempts")
                await journal.maintain()  # both owed: pending
                assert events() == 2
                hook.failing = False
                await until(lambda: len(hook.accepted) == 2, 5, "both delivered")
                await until(lambda: dlv.backlog == 0, 5, "the backlog")
                report = await journal.maintain()
                assert events() == 0  # done with: they go
                assert report.kept_alerts == 0
                assert dlv.oldest_s == 0
            finally:
                d.close()
                await asyncio.wait_for(asyncio.gather(*tasks), 10)
            return d

    try:
        run(main())
    finally:
        hook.close()
    assert hook.keys() == [key(first), key(second)]
    assert [s for _, _, s in outbox(db)] == ["delivered", "delivered"]


def test_a_row_whose_event_left_the_journal_is_marked_lost_and_alarmed(tmp_path: Path) -> None:
    """An outbox row whose alert event is no longer in the journal (an older vitalmon's
    retention, a hand) is marked lost, counted, logged and raised as route.lost: the
    route goes on, and its backlog does not stay stuck on it."""
    hook = WebhookServer(SECRET)
    hook.failing = True
    gone, later = lifecycle("3west", "6")[0], lifecycle("3west", "7", started=T0 + 1)[0]
    db = tmp_path / "vitals.db"
    conditions: list[tuple[str, str, bool, str]] = []

    async def main() -> Delivery:
        async with (
            journal_at(db) as journal,
            delivering([route("hook", webhook(hook.url, tmp_path))], journal) as d,
        ):
            d.on_condition = lambda *c: conditions.append(c)
            dlv = d.deliverers["hook"]
            await commit(journal, [gone])
            await until(lambda: dlv.counts["failed"] >= 1, 5, "a failed attempt")
            conn = sqlite3.connect(db)
            conn.execute("DELETE FROM alert_events WHERE id = ?", (gone.id,))
            conn.commit()
            conn.close()
            hook.failing = False
            await commit(journal, [later])
            await until(lambda: hook.keys() == [key(later)], 5, "the later event")
            await until(lambda: dlv.backlog == 0, 5, "the backlog")
            return d

    try:
        d = run(main())
    finally:
        hook.close()
    assert d.deliverers["hook"].counts["lost"] == 1
    assert [s for _, _, s in outbox(db)] == ["lost", "delivered"]
    (raised,) = [c for c in conditions if c[0] == "route.lost"]
    assert raised[1:3] == ("route:hook", True)
    assert gone.id in raised[3] and "P-1" not in raised[3]


# --------------------------------------------------------------------- schema


def test_the_outbox_is_added_to_a_journal_made_before_it(tmp_path: Path) -> None:
    """A journal from before alert delivery (no outbox table) gets one when opened, and
    routes deliver from it."""
    db = tmp_path / "vitals.db"
    hook = WebhookServer(SECRET)
    events = lifecycle("3west", "6")

    async def main() -> None:
        async with journal_at(db) as journal:
            await commit(journal, events[:1])
        conn = sqlite3.connect(db)
        conn.executescript("DROP TABLE outbox;")
        conn.close()
        async with (
            journal_at(db) as journal,
            delivering([route("hook", webhook(hook.url, tmp_path))], journal),
        ):
            await commit(journal, events[1:])
            await until(lambda: len(hook.accepted) == 2, 5, "two")

    try:
        run(main())
    finally:
        hook.close()
    assert hook.keys() == [key(e) for e in events[1:]]


@pytest.mark.parametrize("bad", ["garbage", "no-msa"])
def test_an_answer_that_is_no_ack_is_a_failure(tmp_path: Path, bad: str) -> None:
    """An MLLP peer answering something else than an ACK: retried, never accepted."""
    answers: list[bytes] = []

    async def main() -> Delivery:
        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    answers.append(await reader.readuntil(b"\x1c\x0d"))
                    reply = b"hello" if bad == "garbage" else b"MSH|^~\\&|AM\rXYZ|1"
                    writer.write(b"\x0b" + reply + b"\x1c\x0d")
                    await writer.drain()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = {"type": "hl7-mllp", "host": "127.0.0.1", "port": port, "timeout_s": 1}
        try:
            async with (
                journal_at(tmp_path / "vitals.db") as journal,
                delivering([route("acm", cfg)], journal) as d,
            ):
                await commit(journal, lifecycle("3west", "6")[:1])
                await until(lambda: d.deliverers["acm"].counts["failed"] >= 2, 5)
                return d
        finally:
            server.close()

    d = run(main())
    assert d.deliverers["acm"].counts["delivered"] == 0
    assert len(answers) >= 2


def test_the_oldest_wait_is_zero_the_moment_nothing_is_owed(tmp_path: Path) -> None:
    """``oldest_s`` (the metric of the oldest undelivered event) says 0 as soon as the
    last open row is done with, not at the deliverer's next round: watched between every
    step of the event loop, no instant has nothing owed and a wait reported. Before, the
    last delivery left the backlog 0 and ``oldest_s`` growing until the next read of the
    outbox (a suite run saw 0.21 s)."""
    hook = WebhookServer(SECRET)
    events = [lifecycle("3west", str(bed))[0] for bed in (6, 7, 8)]

    async def main() -> None:
        async with journal_at(tmp_path / "vitals.db") as journal:
            d = Delivery(
                [route("hook", webhook(hook.url, tmp_path))], journal, Client(MqttConfig())
            )
            await d.open()
            tasks = [asyncio.create_task(c, name=n) for n, c in d.tasks()]
            try:
                dlv = d.deliverers["hook"]
                await commit(journal, events)
                deadline = time.monotonic() + 10
                seen_owed = False
                while not (len(hook.accepted) == 3 and dlv.backlog == 0):
                    assert time.monotonic() < deadline, "not delivered"
                    seen_owed = seen_owed or dlv.backlog > 0
                    assert dlv.backlog > 0 or dlv.oldest_s == 0, dlv.oldest_s
                    await asyncio.sleep(0)  # (every step of the loop)
                assert seen_owed
                assert dlv.oldest_s == 0
            finally:
                d.close()
                await asyncio.wait_for(asyncio.gather(*tasks), 10)

    try:
        run(main())
    finally:
        hook.close()
