"""Alert delivery end to end: ``vitalmon run`` as a subprocess with ``alerts.routes``,
real mosquitto, real receivers started here (tests/delivery_receivers.py).

* A webhook gets each alert event well within a second of its MQTT event, while the
  two other routes' receivers are down (an MLLP peer that never answers, an SMTP port
  nobody listens on): readings keep being committed, MQTT events keep flowing, the
  down routes raise ``sink.down``, and SIGTERM is not held up by them.
* SIGKILL while a route's receiver is failing, restart: every routed event reaches every
  receiver, none twice, in each alert's order.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from conftest import Broker, DaemonProc, Publisher, wait_for
from delivery_receivers import MllpListener, SmtpServer, WebhookServer, self_signed
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from monitor.broker import free_port

SECRET = "d4emon-hook-key-2f9c"


class Timed:
    """A subscriber keeping each alert event with the monotonic time it arrived."""

    def __init__(self, port: int, topic: str) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"timed-{id(self)}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def _message(self, _c: Any, _u: Any, m: paho.MQTTMessage) -> None:
        at = time.monotonic()
        with self._lock:
            self.events.append((at, json.loads(m.payload)))

    def of(self, ward: str) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            return [(t, e) for t, e in self.events if e["ward"] == ward]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def config(tmp_path: Path, broker: Broker, routes: str, extra: str = "") -> Path:
    path = tmp_path / "vitalmon.yaml"
    path.write_text(
        f"""
mqtt: {{host: 127.0.0.1, port: {broker.port}, client_id: vitalmon,
        reconnect_min_s: 0.2, reconnect_max_s: 1.0}}
sources: [{{type: mqtt, topic: "vitals/{{ward}}/{{bed}}/{{device}}", qos: 1}}]
store: {{type: sqlite, path: {tmp_path / "vitals.db"}}}
engine: {{shutdown_timeout_s: 4}}
rules:
  thresholds:
    spo2: {{low: {{warn: 90, crit: 85}}, delay_s: 15}}
alerts:
  topic: "alerts/{{ward}}/{{bed}}"
  routes:
{routes}
{extra}
"""
    )
    return path


def secret(tmp_path: Path) -> Path:
    f = tmp_path / "hook.key"
    f.write_text(SECRET + "\n")
    f.chmod(0o600)
    return f


def desaturate(pub: Publisher, ward: str, bed: str, end: float) -> None:
    """SpO2 97 for 10 s, then 82 for 30 s (one reading a second, ending at ``end``):
    spo2.low, high, raised on the 16th low reading."""
    values = [97] * 10 + [82] * 30
    for i, v in enumerate(values):
        pub.publish(f"vitals/{ward}/{bed}/mon1", {"ts": end - (len(values) - 1 - i), "spo2": v})


def recover(pub: Publisher, ward: str, bed: str, start: float) -> None:
    for i in range(3):
        pub.publish(f"vitals/{ward}/{bed}/mon1", {"ts": start + i, "spo2": 97})


def stored(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM readings").fetchone()[0])
    finally:
        conn.close()


def outbox(db: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT route, status FROM outbox ORDER BY route, ev").fetchall()
    finally:
        conn.close()


def scrape(port: int) -> dict[tuple[str, str], float]:
    """``/metrics``: the route metrics, by (name, route)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, s.labels["route"]): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if "route" in s.labels
    }


def key(e: dict[str, Any]) -> str:
    return f"{e['id']}:{e['seq']}"


# ---------------------------------------------------------------------- latency


def test_webhook_within_a_second_of_mqtt_while_other_receivers_are_down(
    tmp_path: Path, broker: Broker, publisher: Publisher
) -> None:
    hook = WebhookServer(SECRET)
    hanging = MllpListener(hang=True)
    nobody = free_port()
    routes = f"""
    - name: hook
      match: {{wards: [3west]}}
      receiver: {{type: webhook, url: "{hook.url}/alerts?token=t0k3n",
                 secret_file: {secret(tmp_path)}}}
    - name: acm
      match: {{wards: [3west]}}
      receiver: {{type: hl7-mllp, host: 127.0.0.1, port: {hanging.port}, timeout_s: 1}}
      retry_max_s: 1
      down_alarm_s: 1
    - name: mail
      receiver: {{type: smtp, host: 127.0.0.1, port: {nobody}, starttls: false,
                 from: vitalmon@hospital.example, to: [ward@hospital.example], timeout_s: 1}}
      retry_max_s: 1
      down_alarm_s: 1
"""
    d = DaemonProc(config(tmp_path, broker, routes), broker.port, tmp_path / "daemon.log")
    mqtt = Timed(broker.port, "alerts/#")
    try:
        d.start()
        now = time.time()
        desaturate(publisher, "3west", "6", now)
        raised = wait_for(lambda: mqtt.of("3west"), 5, "the alert on MQTT")[0][1]
        publisher.publish("vitalmon/cmd/ack", {"id": raised["id"], "by": "kim"})
        wait_for(lambda: len(mqtt.of("3west")) == 2, 5, "the acknowledgement on MQTT")
        recover(publisher, "3west", "6", now + 1)
        wait_for(lambda: len(mqtt.of("3west")) == 3, 5, "the recovery on MQTT")
        events = mqtt.of("3west")
        assert [e["state"] for _, e in events] == ["active", "acknowledged", "resolved"]
        wait_for(lambda: len(hook.accepted) == 3, 5, "three on the webhook")
        latencies = [hook.first(key(e)).at - t for t, e in events]  # type: ignore[union-attr]
        print(f"\nwebhook after MQTT (s): {', '.join(f'{x:.4f}' for x in latencies)}")
        assert max(latencies) < 1.0
        # the down routes held up nothing: readings of another bed are committed at once
        before = stored(tmp_path / "vitals.db")
        t0 = time.monotonic()
        for i in range(20):
            publisher.publish("vitals/3west/7/mon1", {"ts": now + i, "spo2": 96, "hr": 70})
        wait_for(lambda: stored(tmp_path / "vitals.db") >= before + 40, 5, "readings stored")
        print(f"40 readings committed in {time.monotonic() - t0:.3f} s with two routes down")
        # ... and they are alarmed: sink.down for each, on MQTT
        down = wait_for(
            lambda: (
                {e["device"] for _, e in mqtt.of("_system") if e["rule"] == "sink.down"}
                == {"route:acm", "route:mail"}
            ),
            10,
            "sink.down for both down routes",
        )
        assert down
        assert hook.problems == []
        assert [r.info["path"] for r in hook.accepted] == ["/alerts?token=t0k3n"] * 3
        assert hanging.attempts and not hanging.accepted
        code, took = d.terminate()
        assert code == 0, d.log()[-3000:]
        assert took < 6
        log = d.log()
        assert "t0k3n" not in log and SECRET not in log
        assert "route acm: still failing at the stop" in log
    finally:
        d.kill()
        mqtt.close()
        hook.close()
        hanging.close()


# ------------------------------------------------------------- kill and restart


def test_kill_mid_delivery_then_restart_delivers_every_event_once(
    tmp_path: Path, broker: Broker, publisher: Publisher
) -> None:
    hook = WebhookServer(SECRET)
    hook.failing = True
    acm = MllpListener()
    crt, keyfile = self_signed(tmp_path)
    smtp = SmtpServer((crt, keyfile), users={"vitalmon": "m4il-Pw"})
    password = tmp_path / "smtp.password"
    password.write_text("m4il-Pw\n")
    routes = f"""
    - name: hook
      match: {{wards: [3west]}}
      receiver: {{type: webhook, url: "{hook.url}", secret_file: {secret(tmp_path)}}}
      retry_min_s: 0.1
      retry_max_s: 0.3
    - name: acm
      match: {{wards: [3west]}}
      receiver: {{type: hl7-mllp, host: 127.0.0.1, port: {acm.port}, receiving_application: AM}}
    - name: mail
      match: {{wards: [3west], priorities: [high]}}
      receiver: {{type: smtp, host: 127.0.0.1, port: {smtp.port}, ca_file: {crt},
                 username: vitalmon, password_file: {password},
                 from: vitalmon@hospital.example, to: [charge-nurse@hospital.example]}}
"""
    metrics = free_port()
    cfg = config(tmp_path, broker, routes, f"metrics: {{listen: '127.0.0.1:{metrics}'}}")
    d = DaemonProc(cfg, broker.port, tmp_path / "daemon.log")
    mqtt = Timed(broker.port, "alerts/3west/#")
    db = tmp_path / "vitals.db"
    try:
        d.start()
        now = time.time()
        for bed in ("5", "6"):
            desaturate(publisher, "3west", bed, now)
        wait_for(lambda: len(mqtt.of("3west")) == 2, 5, "two alerts")
        for _, e in mqtt.of("3west"):
            publisher.publish("vitalmon/cmd/ack", {"id": e["id"], "by": "kim"})
        wait_for(lambda: len(mqtt.of("3west")) == 4, 5, "two acknowledgements")
        for bed in ("5", "6"):
            recover(publisher, "3west", bed, now + 1)
        wait_for(lambda: len(mqtt.of("3west")) == 6, 5, "two recoveries")
        expected = sorted(key(e) for _, e in mqtt.of("3west"))
        wait_for(lambda: sorted(acm.keys()) == expected, 10, "the alarm manager has all six")
        wait_for(lambda: sorted(smtp.keys()) == expected, 15, "six mails")
        wait_for(lambda: hook.attempt_count() >= 2, 5, "the webhook refusing")
        pending = [s for r, s in outbox(db) if r == "hook"]
        assert pending == ["pending"] * 6, pending
        d.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        d.proc.wait(10)  # type: ignore[union-attr]
        hook.failing = False
        refused = hook.attempt_count()
        d.start()
        wait_for(lambda: sorted(hook.keys()) == expected, 10, "the webhook gets all six")
        wait_for(lambda: {s for _, s in outbox(db)} == {"delivered"}, 5, "all delivered")
        print(
            f"\nafter the restart: webhook {len(hook.accepted)} accepted ({refused} refused "
            f"before the kill), alarm manager {len(acm.accepted)}, mail {len(smtp.accepted)}"
        )
        for r in (hook, acm, smtp):
            keys = r.keys()
            assert len(keys) == len(set(keys)) == 6, keys  # none twice
            assert r.problems == []
            by_alert: dict[str, list[int]] = {}
            for k in keys:
                alert, seq = k.split(":")
                by_alert.setdefault(alert, []).append(int(seq))
            assert all(s == sorted(s) for s in by_alert.values())  # each alert in order
        assert len(outbox(db)) == 18
        assert all(i["tls"] and i["user"] == "vitalmon" for i in (r.info for r in smtp.accepted))
        phases = [r.info["phase"] for r in acm.accepted]
        assert sorted(phases) == ["end", "end", "start", "start", "update", "update"]
        scraped = scrape(metrics)
        for route in ("hook", "acm", "mail"):
            assert scraped[("vitalmon_route_backlog", route)] == 0
            assert scraped[("vitalmon_route_oldest_seconds", route)] == 0
        # (counters count this run: the webhook's six; the others had theirs before)
        assert scraped[("vitalmon_route_delivered_total", "hook")] == 6
        assert scraped[("vitalmon_route_delivered_total", "acm")] == 0
        code, _ = d.terminate()
        assert code == 0
    finally:
        d.kill()
        mqtt.close()
        hook.close()
        acm.close()
        smtp.close()
