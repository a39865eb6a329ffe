"""``vitalmon demo`` end to end, as a user runs it: a subprocess, on mosquitto and on amqtt.

The desaturating bed's first alert comes ~32 simulated seconds after start; the
demo's hidden ``VITALMON_DEMO_SPEED`` makes that a few wall seconds here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import wait_for
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from monitor import demo as demo_mod
from monitor.config import MqttConfig
from monitor.mqtt import Client, Message

BEDS = 3
#: An alert line for the desaturating (last) bed, e.g. ``10:41:06  HIGH    icu/3    spo2.low
#: ACTIVE       SpO2 82 % < 85 % for 15 s   (id 90917ca312586d3d)`` (on one line)
ALERT = re.compile(
    rf"^\d\d:\d\d:\d\d  (MEDIUM|HIGH)\s+icu/{BEDS}\s+spo2\.low\s+ACTIVE\s+SpO2 \d+ % < (90|85) % "
    r"for \d+ s\s+\(id [0-9a-f]{16}\)$"
)
#: The desaturating bed's SpO2 alert, with the id as printed, whatever it looks like.
PRINTED = re.compile(rf"icu/{BEDS}\s+spo2\.low\s+ACTIVE .*\(id (\S+)\)$")


@dataclass
class DemoProc:
    """``python -m monitor demo`` with its stdout collected line by line as it comes."""

    args: list[str]
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "demo", "--beds", str(BEDS), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env={**os.environ, "PYTHONIOENCODING": "utf-8", **self.env},
        )
        self.first_alert_after: float | None = None
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self.first_alert_after is None and ALERT.match(line.rstrip("\n")):
                self.first_alert_after = time.monotonic() - self.t0
            self.lines.append(line.rstrip("\n"))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.err.extend(self.proc.stderr)

    def wait(self, timeout: float) -> tuple[int, str]:
        try:
            self.proc.wait(timeout)
        finally:
            self.proc.kill()
        for t in self._readers:
            t.join(5)
        return self.proc.returncode, "".join(self.err)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def header_value(self, pattern: str) -> str:
        m = re.search(pattern, self.text)
        assert m, f"{pattern!r} not in:\n{self.text}"
        return m.group(1)


def check_clean_exit(d: DemoProc, code: int, err: str) -> None:
    out = d.text
    assert code == 0, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert any(ALERT.match(line) for line in d.lines), out
    # nothing about other beds: they are normal
    assert not re.search(r"icu/[12] ", out), out
    workdir = d.header_value(r"temp dir (\S+)")
    assert f"removed {workdir}" in out
    assert not Path(workdir).exists()
    assert re.search(r"stopped after \d+ s: \d+ alert event\(s\), first after", out), out
    assert "rejected 0" in out
    assert "Traceback" not in err, err


def test_demo_with_mosquitto(tmp_path: Path) -> None:
    d = DemoProc(
        ["--duration", "15"],
        {demo_mod.ENV_BROKER: "mosquitto", demo_mod.ENV_SPEED: "5", "TMPDIR": str(tmp_path)},
    )
    code, err = d.wait(timeout=45)
    check_clean_exit(d, code, err)
    assert "broker mosquitto" in d.text
    pid = int(d.header_value(r"broker mosquitto \(.*, pid (\d+)\)"))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the broker is gone
    assert list(tmp_path.iterdir()) == []


def test_demo_with_embedded_amqtt(tmp_path: Path) -> None:
    d = DemoProc(
        ["--duration", "15"],
        {demo_mod.ENV_BROKER: "embedded", demo_mod.ENV_SPEED: "5", "TMPDIR": str(tmp_path)},
    )
    code, err = d.wait(timeout=45)
    check_clean_exit(d, code, err)
    assert "broker embedded amqtt" in d.text
    assert "MQTT 3.1.1" in d.text
    # vitalmon reports no error (amqtt itself may warn when the machine is loaded)
    assert not re.search(r"ERROR\s+vitalmon", err), err
    assert list(tmp_path.iterdir()) == []


def test_demo_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    d = DemoProc([], {demo_mod.ENV_SPEED: "5", "TMPDIR": str(tmp_path)})
    try:
        wait_for(
            lambda: d.first_alert_after is not None or d.proc.poll() is not None,
            40,
            "the first alert",
        )
        assert d.proc.poll() is None, d.text
        d.proc.send_signal(signal.SIGINT)
    finally:
        code, err = d.wait(timeout=20)
    check_clean_exit(d, code, err)
    assert list(tmp_path.iterdir()) == []


def test_the_printed_alert_id_is_what_vitalmon_ack_takes(tmp_path: Path) -> None:
    """A user copies the id from a line the demo prints into ``vitalmon ack``, with the
    demo's config (the command the header gives for ``watch``): it is acknowledged."""
    d = DemoProc([], {demo_mod.ENV_SPEED: "5", "TMPDIR": str(tmp_path)})
    try:
        m = wait_for(
            lambda: (
                next(filter(None, map(PRINTED.search, d.lines)), None) or d.proc.poll() is not None
            ),
            40,
            "the first alert",
        )
        assert isinstance(m, re.Match), d.text
        printed = m.group(1)
        config = d.header_value(r"vitalmon watch -c (\S+)")
        out = subprocess.run(
            [sys.executable, "-m", "monitor", "ack", printed, "--by", "nurse.kim", "-c", config],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, f"ack {printed}: {out.stderr}"
        event = json.loads(out.stdout)
        assert (event["state"], event["ack_by"], event["id"]) == (
            "acknowledged",
            "nurse.kim",
            printed,
        )
        # and the demo prints the acknowledgement under the same id
        wait_for(
            lambda: any("ACKNOWLEDGED" in ln and ln.endswith(f"(id {printed})") for ln in d.lines),
            10,
            "the acknowledgement printed",
        )
    finally:
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGINT)
        code, err = d.wait(timeout=20)
    check_clean_exit(d, code, err)


# ------------------------------------------------------------------- in-process


def test_choose_broker_explains_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(demo_mod, "find_mosquitto", lambda: None)
    monkeypatch.setattr(demo_mod, "_amqtt_available", lambda: False)
    with pytest.raises(demo_mod.DemoError, match=r"install mosquitto .*vitalmon\[demo\]"):
        demo_mod.choose_broker(tmp_path, "auto")
    with pytest.raises(demo_mod.DemoError, match="amqtt is not installed"):
        demo_mod.choose_broker(tmp_path, "embedded")
    with pytest.raises(demo_mod.DemoError, match="mosquitto is not installed"):
        demo_mod.choose_broker(tmp_path, "mosquitto")
    with pytest.raises(demo_mod.DemoError, match="use auto, mosquitto or embedded"):
        demo_mod.choose_broker(tmp_path, "rabbitmq")
    monkeypatch.setattr(demo_mod, "_amqtt_available", lambda: True)
    assert isinstance(demo_mod.choose_broker(tmp_path, "auto"), demo_mod.EmbeddedBroker)
    monkeypatch.setattr(demo_mod, "find_mosquitto", lambda: "/usr/sbin/mosquitto")
    assert isinstance(demo_mod.choose_broker(tmp_path, "auto"), demo_mod.MosquittoBroker)
    assert isinstance(demo_mod.choose_broker(tmp_path, "embedded"), demo_mod.EmbeddedBroker)


def test_demo_without_any_broker_fails_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo_mod, "find_mosquitto", lambda: None)
    monkeypatch.setattr(demo_mod, "_amqtt_available", lambda: False)
    monkeypatch.delenv(demo_mod.ENV_BROKER, raising=False)
    assert demo_mod.demo(duration=5, beds=2, keep=False) == 1
    err = capsys.readouterr().err
    assert "pip install 'vitalmon[demo]'" in err
    assert "mosquitto" in err


def test_format_alert() -> None:
    payload = (
        b'{"id":"90917ca3e1f2a4b5","ward":"icu","bed":"6","device":"mon1","patient":null,'
        b'"vital":"spo2","rule":"spo2.low","kind":"physiological","priority":"high",'
        b'"state":"active","value":82,"limit":85,"message":"SpO2 82 % < 85 % for 15 s",'
        b'"started_at":"2025-11-28T09:40:51.000Z","at":"2025-11-28T09:41:06.000Z","seq":2}'
    )
    line = demo_mod.format_alert(payload)
    assert re.fullmatch(
        r"\d\d:\d\d:06  HIGH    icu/6    spo2\.low   ACTIVE       SpO2 82 % < 85 % for 15 s"
        r"   \(id 90917ca3e1f2a4b5\)",
        line,
    ), line
    assert demo_mod.format_alert(b"not json").startswith("(unreadable alert)")


def test_embedded_broker_keeps_the_daemons_persistent_session() -> None:
    """amqtt + the daemon's client (MQTT 3.1.1, clean_session=False, manual ack).

    Readings published while the daemon is away are queued and delivered when it comes
    back -- which amqtt only does for clients that send a username (see EmbeddedBroker).
    """

    async def until(pred: Callable[[], object], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    def publish(port: int, n: int) -> None:
        c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="pub", protocol=MQTTProtocolVersion.MQTTv311
        )
        c.username_pw_set("sim")
        c.connect("127.0.0.1", port)
        c.loop_start()
        for i in range(n):
            c.publish(f"vitals/icu/{i}/m", b'{"hr": 70}', qos=1).wait_for_publish(5)
        c.disconnect()
        c.loop_stop()

    async def main() -> None:
        broker = demo_mod.EmbeddedBroker()
        await broker.start()
        got: list[str] = []
        try:

            def client() -> Client:
                cfg = MqttConfig(
                    port=broker.port,
                    protocol="3.1.1",
                    client_id="vitalmon-test",
                    username=broker.username,
                    reconnect_min_s=0.2,
                )
                c = Client(cfg)

                def deliver(m: Message) -> None:
                    got.append(m.topic)
                    c.ack(m)

                c.subscribe("vitals/+/+/+", 1, deliver)
                return c

            c = client()
            c.start()
            await asyncio.wait_for(c.connected.wait(), 10)
            await asyncio.to_thread(publish, broker.port, 1)
            await until(lambda: got == ["vitals/icu/0/m"], "the first reading")
            await c.stop()
            sessions = broker.broker.sessions
            await until(
                lambda: sessions["vitalmon-test"][0].transitions.state == "disconnected",
                "the broker to see the daemon go",
            )
            await asyncio.to_thread(publish, broker.port, 3)  # while the daemon is away
            c = client()
            c.start()
            await until(lambda: len(got) >= 4, "the queued readings")
            await c.stop()
            assert got == ["vitals/icu/0/m", "vitals/icu/0/m", "vitals/icu/1/m", "vitals/icu/2/m"]
        finally:
            await broker.stop()

    asyncio.run(main())


def test_the_demo_serves_the_web_station_and_routes_alerts_to_a_webhook(tmp_path: Path) -> None:
    """The header names the web station and its login, which work; ``--webhook URL``
    delivers the desaturating bed's alert, signed, within a second of its MQTT event."""
    import hashlib
    import hmac
    import http.server

    from webtools import Http

    got: list[tuple[float, dict[str, str], bytes]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((time.time(), dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    d = DemoProc(["--webhook", url], {demo_mod.ENV_SPEED: "5", "TMPDIR": str(tmp_path)})
    sub: paho.Client | None = None
    try:
        wait_for(lambda: "alerts (alerts/#)" in d.text or d.proc.poll() is not None, 30, "header")
        web = d.header_value(r"web station: (\S+) ")
        user = d.header_value(r"log in as (\S+), ")
        password = d.header_value(r"password (\S+)\)")
        key = Path(d.header_value(r"HMAC key in (\S+)\)")).read_text().splitlines()[0]
        h = Http(web)
        assert h.login(user, password) == 303
        assert h.request("GET", "/")[0] == 200
        # the MQTT events as a subscriber sees them (the daemon's login may read alerts/#)
        workdir = Path(d.header_value(r"temp dir (\S+)"))
        port = int(d.header_value(r"on 127\.0\.0\.1:(\d+), MQTT"))
        seen: dict[str, float] = {}
        sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="hook-test")
        sub.username_pw_set("vitalmon", (workdir / "vitalmon.password").read_text().strip())

        def on_message(_c: object, _u: object, m: paho.MQTTMessage) -> None:
            e = json.loads(m.payload)
            seen.setdefault(f"{e['id']}:{e['seq']}", time.time())

        sub.on_message = on_message
        sub.on_connect = lambda c, *_: c.subscribe("alerts/#", 1)
        sub.connect("127.0.0.1", port)
        sub.loop_start()

        def spo2() -> tuple[float, dict[str, str], bytes] | None:
            for t, headers, body in got:
                e = json.loads(body)
                if (
                    e["rule"] == "spo2.low"
                    and e["bed"] == str(BEDS)
                    and headers.get("X-Vitalmon-Event") in seen
                ):
                    return t, headers, body
            return None

        t, headers, body = wait_for(spo2, 40, "bed's spo2.low at the webhook")
        signed = f"{headers['X-Vitalmon-Timestamp']}.{headers['X-Vitalmon-Event']}.".encode() + body
        sign = hmac.new(key.encode(), signed, hashlib.sha256).hexdigest()
        assert headers["X-Vitalmon-Signature"] == f"sha256={sign}"
        lag = t - seen[headers["X-Vitalmon-Event"]]
        assert lag < 1.0, lag
    finally:
        if sub is not None:
            sub.loop_stop()
            sub.disconnect()
        server.shutdown()
        if d.proc.poll() is None:
            d.proc.send_signal(signal.SIGINT)
        code, err = d.wait(timeout=20)
    assert code == 0, err
