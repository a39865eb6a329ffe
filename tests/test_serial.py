"""Serial devices on real ptys (socat): line to MQTT alert, unplug and replug."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import wait_for

from monitor.sources.link import DISCONNECTED, LinkAlarms

DATA = Path(__file__).parent / "data"


class Socat:
    """``socat pty,raw,echo=0,link=A pty,raw,echo=0,link=B``: vitalmon reads A, we write B."""

    def __init__(self, tmp: Path) -> None:
        self.a, self.b = tmp / "ttyA", tmp / "ttyB"
        self.proc: subprocess.Popen[bytes] | None = None
        self.fd: int | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self.a.exists() and self.b.exists(), 5, "socat links")
        self.fd = os.open(self.b, os.O_RDWR | os.O_NOCTTY)

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        os.write(self.fd, data)

    def stop(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(5)


@pytest.fixture
def socat(tmp_path: Path) -> Iterator[Socat]:
    if shutil.which("socat") is None:
        pytest.fail("socat is not installed: run scripts/test (it installs it)")
    s = Socat(tmp_path)
    s.start()
    yield s
    s.stop()


def masimo_line(t: float, spo2: int | None, bpm: int | None, exc: int = 0x800) -> bytes:
    stamp = datetime.fromtimestamp(t).strftime("%m/%d/%y %H:%M:%S")  # device clock: local
    s = "---" if spo2 is None else f"{spo2:03d}"
    b = "---" if bpm is None else f"{bpm:03d}"
    return (
        f"{stamp} SN=0000145838 SPO2={s}% BPM={b} PI=04.96% SPCO=--.-% SPMET=--.-% "
        f"DESAT=-- PIDELTA=+-- ALARM=0000 EXC={exc:06X}\r\n"
    ).encode()


def test_link_alarms_raise_once_and_resolve_once():
    link = LinkAlarms("icu", "12", "masimo")
    first = link.raise_(DISCONNECTED, "cannot open /dev/ttyUSB0", 100.0)
    assert first is not None and (first.kind, first.state, first.seq) == ("technical", "active", 1)
    assert link.raise_(DISCONNECTED, "again", 101.0) is None
    done = link.clear(DISCONNECTED, "data again", 130.0)
    assert done is not None and (done.id, done.state, done.seq) == (first.id, "resolved", 2)
    assert "(alarm lasted 30 s)" in done.message
    assert link.clear(DISCONNECTED, "data again", 131.0) is None


def test_masimo_on_a_pty_alarms_over_mqtt_unplug_and_replug(daemon, subscribe, socat, tmp_path):
    """The issue's acceptance on socat: 1. Masimo lines with SpO2 falling to 80 % raise
    the SpO2 alert over MQTT; 2. killing socat raises device.disconnected within 2 s;
    3. socat again: readings resume within 5 s and the alarm resolves."""
    d = daemon(start=False)
    d.config.write_text(
        d.config.read_text().replace(
            "sources:\n",
            f"sources:\n  - type: serial\n    port: {socat.a}\n    format: masimo\n"
            "    ward: icu\n    bed: '12'\n    clock: device\n",
        )
    )
    alerts = subscribe("alerts/#")
    d.start()
    wait_for(lambda: "open (masimo" in d.log(), 5, "port open")  # (opening flushes input)
    t0 = time.time() - 60
    lines = [masimo_line(t0 + i, 97 - (i if i < 17 else 17), 80) for i in range(40)]
    socat.write(b"".join(lines))  # SpO2 97 -> 80 %, then 80 % for 23 s
    raised = wait_for(
        lambda: (
            len([a for a in alerts.json() if a["rule"] == "spo2.low"]) >= 2
            and [a for a in alerts.json() if a["rule"] == "spo2.low"]
        ),
        10,
        "alert",
    )
    # below 90 % for 15 s: medium; below 85 % for 15 s: the same alert, high
    assert [(a["bed"], a["device"], a["priority"]) for a in raised] == [
        ("12", "masimo", "medium"),
        ("12", "masimo", "high"),
    ]
    assert raised[0]["id"] == raised[1]["id"]
    assert raised[1]["message"] == "SpO2 80 % < 85 % for 15 s"

    killed = time.monotonic()
    socat.stop()
    lost = wait_for(
        lambda: [a for a in alerts.json() if a["rule"] == "device.disconnected"],
        5,
        "device.disconnected",
    )
    assert time.monotonic() - killed < 2.0
    assert (lost[0]["kind"], lost[0]["state"], lost[0]["bed"]) == ("technical", "active", "12")

    socat.start()
    back = time.monotonic()

    def device_sends_and_alarm_resolved() -> bool:
        socat.write(masimo_line(time.time(), 97, 80))  # the device goes on, line by line
        return any(
            a["rule"] == "device.disconnected" and a["state"] == "resolved" for a in alerts.json()
        )

    wait_for(device_sends_and_alarm_resolved, 5, "disconnected resolved")
    assert time.monotonic() - back < 5.0


def test_oru_r01_over_mllp_is_acked_after_commit_and_stored(daemon, tmp_path):
    """The issue's acceptance for HL7: a real ORU^R01 (Comen, IHE PCD-01) sent over MLLP
    to the hl7-mllp listener gets an AA ACK, and its readings are stored."""
    import socket

    from conftest import free_port

    from monitor.sources.devices import frame

    port = free_port()
    d = daemon(start=False)
    d.config.write_text(
        d.config.read_text().replace(
            "sources:\n",
            f"sources:\n  - type: hl7-mllp\n    listen: 127.0.0.1:{port}\n    ward: icu\n",
        )
    )
    d.start()
    sample = (DATA / "device_messages" / "hl7_misc" / "comen_nc_monitor_pcd01.hl7").read_bytes()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"noise" + frame(sample))
        ack = b""
        while not ack.endswith(b"\x1c\r"):
            chunk = s.recv(4096)
            assert chunk, "connection closed before the ACK"
            ack += chunk
    assert ack.startswith(b"\x0b")
    segments = ack[1:-2].split(b"\r")
    assert segments[0].split(b"|")[8] == b"ACK^R01^ACK"
    assert segments[1].split(b"|")[:3] == [b"MSA", b"AA", b"202506100151270003"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor",
            "query",
            "-c",
            str(d.config),
            "--ward",
            "icu",
            "--bed",
            "10",
            "--format",
            "csv",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = {tuple(line.split(",")[3:]) for line in out.stdout.splitlines()[1:]}
    assert ("NC_Monitor.pleth", "spo2", "97") in rows
    assert ("NC_Monitor.nibp", "sbp", "120") in rows
    assert len(rows) == 7


def serial_config(d, port: Path, extra: str = "") -> None:
    d.config.write_text(
        d.config.read_text().replace(
            "sources:\n",
            f"sources:\n  - type: serial\n    port: {port}\n    format: masimo\n"
            f"    ward: icu\n    bed: '14'\n{extra}",
        )
    )


def test_open_port_gone_quiet_raises_device_silent_resolved_by_data(daemon, subscribe, socat):
    """A pty whose writer stops raises no error: only the silent_after_s timer notices."""
    d = daemon(start=False)
    serial_config(d, socat.a, "    silent_after_s: 2\n")
    alerts = subscribe("alerts/#")
    d.start()
    wait_for(lambda: "open (masimo" in d.log(), 5, "port open")
    socat.write(masimo_line(time.time(), 97, 80))
    silent = wait_for(
        lambda: [a for a in alerts.json() if a["rule"] == "device.silent"], 5, "device.silent"
    )
    assert (silent[0]["kind"], silent[0]["state"], silent[0]["bed"]) == (
        "technical",
        "active",
        "14",
    )
    socat.write(masimo_line(time.time(), 97, 80))
    back = wait_for(
        lambda: [
            a for a in alerts.json() if a["rule"] == "device.silent" and a["state"] == "resolved"
        ],
        5,
        "resolved",
    )
    assert back[0]["id"] == silent[0]["id"]
    # one alarm per silence: no device.stale for the same device as well
    assert not [a for a in alerts.json() if a["rule"] == "device.stale"]


def test_port_missing_at_startup_retry_by_default_error_when_asked(daemon, subscribe, tmp_path):
    missing = tmp_path / "ttyUSB9"
    d = daemon(start=False)
    serial_config(d, missing)
    alerts = subscribe("alerts/#")
    d.start()  # retry (default): the daemon runs and says the device is disconnected
    lost = wait_for(
        lambda: [a for a in alerts.json() if a["rule"] == "device.disconnected"],
        5,
        "device.disconnected",
    )
    assert "cannot open" in lost[0]["message"]
    d.terminate()
    serial_config(d, missing, "    startup_error_behavior: error\n")
    proc = subprocess.run(
        [sys.executable, "-m", "monitor", "run", "-c", str(d.config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert f"serial port {missing}" in proc.stderr
