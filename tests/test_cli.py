"""The ``vitalmon`` command line as a new user meets it: ``watch`` and ``ack`` with only the
broker named (no config file), ``pidof vitalmon`` finding the daemon for a SIGHUP reload.

Everything runs against a real mosquitto; the daemon, ``ack`` and ``pidof`` are real
processes. ``watch`` runs its Textual app headless (as in test_watch.py), started by the
command line itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from conftest import MOSQUITTO, Broker, DaemonProc, Publisher, free_port, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from monitor import cli
from monitor import config as config_mod
from monitor.config import Config
from monitor.views import watch as watch_mod
from monitor.views.watch import WatchApp

#: ``vitalmon ARGS`` in a subprocess, on a machine with no config at the default path:
#: the default is pointed at a file that does not exist (``/etc/vitalmon`` may exist here).
NO_DEFAULT_CONFIG = (
    "import sys; from monitor import config; config.DEFAULT_CONFIG_PATH = sys.argv[1]; "
    "from monitor.cli import main; main(sys.argv[2:])"
)


def vitalmon_without_config(
    tmp_path: Path, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    missing = tmp_path / "etc" / "vitalmon.yaml"
    assert not missing.exists()
    return subprocess.run(
        [sys.executable, "-c", NO_DEFAULT_CONFIG, str(missing), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def raise_spo2(publisher: Publisher, bed: str) -> None:
    """20 s of SpO2 80 (event time, ending now): the daemon raises ``spo2.low``."""
    now = time.time()
    for i in range(20):
        publisher.publish(f"vitals/icu/{bed}/ox", {"ts": now - 25 + i, "spo2": 80})


class Client:
    """A paho client (optionally logged in) recording what it receives."""

    def __init__(self, port: int, topic: str, login: tuple[str, str] | None = None) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{id(self)}")
        if login:
            self.client.username_pw_set(*login)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10), "the test client did not subscribe"

    def _on_message(self, _c: object, _u: object, m: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((m.topic, json.loads(m.payload)))

    def received(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [doc for t, doc in self.messages if t == topic]

    def publish(self, topic: str, doc: object, retain: bool = False) -> None:
        self.client.publish(topic, json.dumps(doc), qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[int]:
    """mosquitto that refuses anonymous clients; login ``nurse.kim`` / ``s3cret``."""
    work = tmp_path / "auth-broker"
    work.mkdir()
    passwd = work / "passwd"
    passwd.touch(0o600)
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwd), "nurse.kim", "s3cret"], check=True, timeout=10
    )
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\nuser root\n"
    )
    with (work / "mosquitto.log").open("ab") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)

    def accepting() -> bool:
        assert proc.poll() is None, (work / "mosquitto.log").read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    try:
        wait_for(accepting, 10, "the broker with logins")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def run_watch_headless(
    monkeypatch: pytest.MonkeyPatch, client: Client, argv: list[str]
) -> list[tuple[Config, str]]:
    """``vitalmon watch ARGV`` through ``cli.main`` with the default config path pointing
    nowhere; its app runs headless: once the retained alert of bed icu/6 shows, ``a``
    acknowledges it. -> the (config, operator) watch ran with."""
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", "/nonexistent/vitalmon.yaml")
    started: list[tuple[Config, str]] = []

    def headless(cfg: Config, operator: str) -> int:
        started.append((cfg, operator))
        app = WatchApp(cfg, operator)

        async def main() -> None:
            async with app.run_test(size=(80, 24)) as pilot:
                deadline = time.monotonic() + 10
                while ("icu", "6") not in app.ward.beds:
                    assert time.monotonic() < deadline, "watch did not show the retained alert"
                    await pilot.pause(0.05)
                await pilot.press("a")
                await asyncio.to_thread(
                    wait_for, lambda: client.received("vitalmon/cmd/ack"), 10, "the ack"
                )

        asyncio.run(main())
        return 0

    monkeypatch.setattr(watch_mod, "run", headless)
    with pytest.raises(SystemExit) as exited:
        cli.main(["watch", *argv])
    assert exited.value.code == 0
    return started


# ------------------------------------------------------------- watch and ack, no config


def alert(ident: str) -> dict[str, object]:
    return {
        "id": ident,
        "ward": "icu",
        "bed": "6",
        "rule": "spo2.low",
        "kind": "physiological",
        "priority": "high",
        "state": "active",
        "message": "SpO2 80 % < 85 % for 15 s",
        "vital": "spo2",
        "at": "2026-11-28T10:00:00Z",
    }


def test_watch_with_only_host_and_port(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    client = Client(broker.port, "vitalmon/cmd/#")
    try:
        client.publish("state/icu/6/alerts", [alert("a6")], retain=True)
        started = run_watch_headless(
            monkeypatch,
            client,
            ["--host", "127.0.0.1", "--port", str(broker.port), "--by", "nurse.kim"],
        )
        assert client.received("vitalmon/cmd/ack") == [{"id": "a6", "by": "nurse.kim"}]
    finally:
        client.close()
    cfg = started[0][0]
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("127.0.0.1", broker.port)
    assert cfg.alerts == Config().alerts  # the built-in topics


def test_watch_logs_in_with_username_and_password_file(
    auth_broker: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "nurse.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    client = Client(auth_broker, "vitalmon/cmd/#", login=("nurse.kim", "s3cret"))
    try:
        client.publish("state/icu/6/alerts", [alert("b6")], retain=True)
        run_watch_headless(
            monkeypatch,
            client,
            [
                "--host",
                "127.0.0.1",
                "--port",
                str(auth_broker),
                "--username",
                "nurse.kim",
                "--password-file",
                str(secret),
            ],
        )
        assert client.received("vitalmon/cmd/ack") == [
            {
                "id": "b6",
                "by": os.environ.get("USER") or os.environ.get("LOGNAME") or "central-station",
            }
        ]
    finally:
        client.close()


def test_ack_with_only_host_and_port(
    daemon: Callable[..., DaemonProc], broker: Broker, publisher: Publisher, tmp_path: Path
) -> None:
    daemon()
    alerts = Client(broker.port, "alerts/#")
    try:
        raise_spo2(publisher, bed="5")
        raised = wait_for(lambda: alerts.received("alerts/icu/5"), 10, "the alert")[0]
    finally:
        alerts.close()
    out = vitalmon_without_config(
        tmp_path,
        "ack",
        raised["id"],
        "--by",
        "dr.lee",
        "--host",
        "127.0.0.1",
        "--port",
        str(broker.port),
    )
    assert out.returncode == 0, out.stderr
    event = json.loads(out.stdout)
    assert (event["id"], event["state"], event["ack_by"]) == (
        raised["id"],
        "acknowledged",
        "dr.lee",
    )


def test_watch_and_ack_without_config_or_broker_say_what_to_give(tmp_path: Path) -> None:
    for args in (["watch"], ["ack", "0123456789abcdef", "--by", "kim"]):
        out = vitalmon_without_config(tmp_path, *args)
        assert out.returncode == 1
        assert f"vitalmon {args[0]}: no config at " in out.stderr
        assert "give -c FILE, or the broker with --host/--port" in out.stderr
    out = vitalmon_without_config(tmp_path, "ack", "x", "--by", "kim", "--port", "70000")
    assert out.returncode == 1
    assert "--port: Input should be less than or equal to 65535" in out.stderr


# ------------------------------------------------------------------- pidof vitalmon


def pidof(name: str) -> list[int]:
    exe = shutil.which("pidof") or "/usr/bin/pidof"
    assert os.path.exists(exe), "pidof is not installed (Debian: sysvinit-utils)"
    out = subprocess.run([exe, name], capture_output=True, text=True, timeout=10, check=False)
    return [int(p) for p in out.stdout.split()]


def console_script(tmp_path: Path) -> Path:
    """``vitalmon`` as pip installs it: a Python script with a ``#!`` line."""
    script = tmp_path / "bin" / "vitalmon"
    script.parent.mkdir()
    repo = Path(__file__).resolve().parent.parent
    script.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(repo)!r})\n"
        "from monitor.cli import main\nif __name__ == '__main__':\n"
        "    sys.exit(main())\n"
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("how", ["console script", "python -m monitor"])
def test_pidof_finds_the_daemon_and_sighup_reloads_it(
    daemon: Callable[..., DaemonProc], tmp_path: Path, how: str
) -> None:
    d = daemon(start=False)
    log = d.logfile.open("ab")
    if how == "console script":
        argv = [str(console_script(tmp_path)), "run", "-c", str(d.config)]
    else:
        argv = [sys.executable, "-m", "monitor", "run", "-c", str(d.config)]
    d.proc = proc = subprocess.Popen(argv, stdout=log, stderr=log)
    wait_for(lambda: "ready:" in d.log() or proc.poll() is not None, 15, "daemon ready")
    assert proc.poll() is None, d.log()
    # what `kill -HUP $(pidof vitalmon)` signals (other tests' daemons may be listed too)
    assert proc.pid in pidof("vitalmon")
    assert Path(f"/proc/{proc.pid}/comm").read_text() == "vitalmon\n"
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    assert cmdline == [b"vitalmon", b"run", b"-c", str(d.config).encode()]
    os.kill(proc.pid, signal.SIGHUP)
    wait_for(lambda: f"reloaded {d.config}" in d.log(), 10, "the reload")
    assert d.terminate()[0] == 0
