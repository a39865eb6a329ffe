"""Faults on a serial line with ``format: hl7`` (MLLP framing): each test failed on the
code before its fix.

(a) A frame without its end (``0x1C 0x0D``) followed by a complete message: the serial
source's framer merged the two (a start byte never restarted a frame), so the cut-short
message's values were stored as if whole, and the frame was neither counted nor
dead-lettered. The MLLP listener had the same defect (tests/test_faults_mllp.py); both now
share one framer.
(b) The serial source's ``too_long`` count restarted from zero at every reopening of the
port (it was overwritten with the count of the latest framer, not added to).

A real daemon (``vitalmon run``, mosquitto, SQLite) reading a real pty pair (socat), as in
tests/test_serial.py. Waits are polls with a deadline, never sleeps.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from test_serial import Socat, masimo_line

from monitor.sinks.sqlite import query_readings
from monitor.sources.devices import MllpFramer, frame
from monitor.sources.hl7mllp import RestartingMllpFramer

STAMP = time.strftime("%Y%m%d%H%M%S+0000", time.gmtime())


class Pty(Socat):
    """tests/test_serial.py's socat pair, unplugged the other way round: socat ends first
    (its links go with it), then our end is closed, so the daemon cannot reopen the old
    pty in between."""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(5)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[Pty]:
    if shutil.which("socat") is None:
        pytest.fail("socat is not installed: run scripts/test (it installs it)")
    s = Pty(tmp_path)
    s.start()
    yield s
    s.stop()


def message(control: str, spo2: int, patient: str = "P2") -> bytes:
    """An ORU^R01 with one SpO2 value (the serial source files it under its own bed)."""
    segs = [
        f"MSH|^~\\&|MON|WEST|VM|HOSP|{STAMP}||ORU^R01^ORU_R01|{control}|P|2.6",
        f"PID|||{patient}||Doe^Jane",
        "PV1||I|icu^^14",
        f"OBR|1||||||{STAMP}",
        f"OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC||{spo2}|%|||||F",
    ]
    return ("\r".join(segs) + "\r").encode()


def serial_daemon(daemon: Any, port: Path, fmt: str, extra: str = "") -> Any:
    d = daemon("log:\n  repeat_window_s: 0\n", start=False)  # every "open" line logged
    d.config.write_text(
        d.config.read_text().replace(
            "sources:\n",
            f"sources:\n  - type: serial\n    port: {port}\n    format: {fmt}\n"
            f"    ward: icu\n    bed: '14'\n{extra}",
        )
    )
    d.start()
    wait_for(lambda: f"open ({fmt}" in d.log(), 10, "port open")
    return d


def stored(db: Path, vital: str = "spo2") -> list[float]:
    return [row[5] for row in query_readings(str(db), "14", ward="icu", vital=vital)]


def summary(d: Any, key: str) -> int:
    """``key``'s count in the daemon's last summary line (``stopped: ...``)."""
    lines = [line for line in d.log().splitlines() if "stopped: " in line]
    assert lines, d.log()[-2000:]
    m = re.search(rf"(?:^|, ){re.escape(key)} (\d+)", lines[-1].split("stopped: ", 1)[1])
    return int(m.group(1)) if m else 0


def test_framers_are_one_class() -> None:
    """The serial source (MllpFramer) and the listener (RestartingMllpFramer) use one
    framer, where a start byte restarts a frame: no second copy to drift."""
    assert RestartingMllpFramer is MllpFramer
    framer = MllpFramer(1024)
    assert framer.feed(b"\x0bMSH|A\r" + frame(b"MSH|B\r")) == [b"MSH|B\r"]
    assert framer.take_truncated() == [b"MSH|A\r"] and framer.truncated == 1


def test_hl7_frame_without_its_end_on_a_serial_line_is_discarded_not_merged(
    daemon: Any, subscribe: Any, pty: Pty, tmp_path: Path
) -> None:
    """M1 (whole, but no end bytes), M3 cut mid-way, then M2 framed, on a pty: only M2's
    value is stored (before: M1 and M2 were one frame, M1's value stored as if whole);
    M1 and M3 are counted ``truncated`` and dead-lettered ``truncated_frame`` with their
    control ids, never their content; logged once as a warning."""
    dead = subscribe("vitalmon/deadletter")
    d = serial_daemon(daemon, pty.a, "hl7")
    m1 = message("M1", 97, patient="SECRET-4711")
    m3 = message("M3", 95, patient="SECRET-4712")
    pty.write(b"\x0b" + m1 + b"\x0b" + m3[: m3.index(b"OBR")] + frame(message("M2", 91)))
    wait_for(lambda: stored(tmp_path / "vitals.db"), 10, "M2 stored")
    pty.write(frame(message("M4", 93)))  # the stream goes on, message by message
    wait_for(lambda: len(stored(tmp_path / "vitals.db")) >= 2, 10, "M4 stored")
    assert stored(tmp_path / "vitals.db") == [91.0, 93.0]
    letters = wait_for(
        lambda: (
            [x for x in dead.json() if x["reason"] == "truncated_frame"]
            if len(dead.json()) >= 2
            else None
        ),
        10,
        "two dead letters",
    )
    assert ["control id M1" in x["detail"] for x in letters] == [True, False]
    assert "control id M3" in letters[1]["detail"]
    assert {x["topic"] for x in letters} == {f"serial:{pty.a}"}
    assert not [x for x in letters if x.get("payload")]  # no content echoed
    assert "SECRET" not in str(dead.json())
    cut = [
        line
        for line in d.log().splitlines()
        if " WARNING vitalmon.source.serial" in line and "cut short" in line
    ]
    assert len(cut) == 1, cut  # once per opening of the port
    code, _ = d.terminate()
    assert code == 0
    assert summary(d, f"serial:{pty.a}.truncated") == 2
    assert summary(d, f"serial:{pty.a}.frames") == 2
    assert "SECRET" not in d.log()


def test_serial_too_long_count_is_kept_across_a_reopened_port(
    daemon: Any, pty: Pty, tmp_path: Path
) -> None:
    """An over-long line, the port lost and reopened, another over-long line: too_long
    is 2 (before: 1, the count of the latest opening only)."""
    d = serial_daemon(daemon, pty.a, "masimo", "    max_line_bytes: 256\n")
    db = tmp_path / "vitals.db"
    pty.write(b"x" * 300 + b"\r\n" + masimo_line(time.time(), 97, 80))
    wait_for(lambda: stored(db), 10, "the line after the long one")
    pty.stop()
    wait_for(lambda: "lost (" in d.log(), 10, "port lost")
    pty.start()
    wait_for(lambda: d.log().count("open (masimo") == 2, 10, "port reopened")
    pty.write(b"y" * 300 + b"\r\n" + masimo_line(time.time(), 96, 80))
    wait_for(lambda: 96.0 in stored(db), 10, "the line after the second long one")
    code, _ = d.terminate()
    assert code == 0
    assert summary(d, f"serial:{pty.a}.too_long") == 2
    assert summary(d, f"serial:{pty.a}.lost") == 1
