"""Serial devices on real ptys (socat): line to MQTT alert, unplug and replug."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import wait_for

from monitor.sources.link import DISCONNECTED, LinkAlarms


class Socat:
    """``socat pty,raw,echo=0,link=A pty,raw,echo=0,link=B``: vitalmon reads A, we write B."""

    def __init__(self, tmp: Path) -> None:
        self.a, self.b = tmp / "ttyA", tmp / "ttyB"
        self.proc: subprocess.Popen[bytes] | None = None
        self.fd: int | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
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
    return (f"{stamp} SN=0000145838 SPO2={s}% BPM={b} PI=04.96% SPCO=--.-% SPMET=--.-% "
            f"DESAT=-- PIDELTA=+-- ALARM=0000 EXC={exc:06X}\r\n").encode()  # fmt: skip


def test_link_alarms_raise_once_and_resolve_once():
    link = LinkAlarms("icu", "12", "masimo")
    first = link.raise_(DISCONNECTED, "cannot open /dev/ttyUSB0", 100.0)
    assert first is not None and (first.kind, first.state, first.seq) == ("technical", "active", 1)
    assert link.raise_(DISCONNECTED, "again", 101.0) is None
    done = link.clear(DISCONNECTED, "data again", 130.0)
    assert done is not None and (done.id, done.state, done.seq) == (first.id, "resolved", 2)
    assert "after 30 s" in done.message
    assert link.clear(DISCONNECTED, "data again", 131.0) is None


def test_masimo_on_a_pty_alarms_over_mqtt_unplug_and_replug(daemon, subscribe, socat, tmp_path):
    """The issue's acceptance on socat: 1. Masimo lines with SpO2 falling to 80 % raise
    the SpO2 alert over MQTT; 2. killing socat raises device.disconnected within 2 s;
    3. socat again: readings resume within 5 s and the alarm resolves."""
    d = daemon(start=False)
    d.config.write_text(d.config.read_text().replace(
        "sources:\n",
        f"sources:\n  - type: serial\n    port: {socat.a}\n    format: masimo\n"
        "    ward: icu\n    bed: '12'\n    clock: device\n",
    ))  # fmt: skip
    d.start()
    alerts = subscribe("alerts/#")
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
        ("12", "masimo", "medium"), ("12", "masimo", "high")]  # fmt: skip
    assert raised[0]["id"] == raised[1]["id"]
    assert raised[1]["message"] == "SpO2 80 % < 85 % for 15 s"

    killed = time.monotonic()
    socat.stop()
    lost = wait_for(lambda: [a for a in alerts.json() if a["rule"] == "device.disconnected"],
                    5, "device.disconnected")  # fmt: skip
    assert time.monotonic() - killed < 2.0
    assert (lost[0]["kind"], lost[0]["state"], lost[0]["bed"]) == ("technical", "active", "12")

    socat.start()
    back = time.monotonic()

    def device_sends_and_alarm_resolved() -> bool:
        socat.write(masimo_line(time.time(), 97, 80))  # the device goes on, line by line
        return any(a["rule"] == "device.disconnected" and a["state"] == "resolved"
                   for a in alerts.json())  # fmt: skip

    wait_for(device_sends_and_alarm_resolved, 5, "disconnected resolved")
    assert time.monotonic() - back < 5.0
