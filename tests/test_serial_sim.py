"""The serial-device simulator: formatters against verbatim device output, and the
simulator itself on a real pty read with pyserial (a subprocess, unplugged and replugged).

The expected layouts are verbatim lines from the device captures kept with the project's
shared data (``device_messages/``); each is copied here with its source, since the tests
do not read outside the repository.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import hl7
import pytest
import serial
from conftest import wait_for

from simulators.patient import reading
from simulators.serial import (
    EXC_NORMAL,
    EXC_SENSOR_OFF,
    NELLCOR_HEADER_EVERY,
    SENSOR_ON_S,
    Device,
    Location,
    NellcorLimits,
    Options,
    SerialSimulator,
    format_hl7,
    format_jsonl,
    format_masimo,
    format_nellcor,
    nellcor_header,
    nellcor_status,
)

ROOT = Path(__file__).resolve().parent.parent

# device_messages/masimo_serial/rad8_asixreader_javadoc.txt, first line (Rad-8, CRLF).
RAD8_LINE = (
    b"02/24/18 04:48:53 SN=0000145838 SPO2=097% BPM=080 PI=04.96% SPCO=--.-% SPMET=--.-% "
    b"DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800\r\n"
)
# device_messages/masimo_serial/rad8_misc_single_lines.txt, second line: PI missing.
RAD8_LINE_NO_PI = (
    b"05/20/21 14:06:02 SN=0000182948 SPO2=098% BPM=101 PI=--.--% SPCO=--.-% SPMET=--.-% "
    b"DESAT=-- PIDELTA=+-- ALARM=0010 EXC=000824\r\n"
)
# device_messages/nellcor_serial/n560_asixreader_javadoc.txt: the header and two data
# lines (CRLF; the second header line ends in a blank).
N560_HEADER = (
    b"N-560    VERSION 1.61.00    CRC:XXXX  SpO2 Limit: 95-100%    PR Limit: 59-148BPM\r\n"
    b"                             ADULT           25SAT-S \r\n"
    b"TIME                 %SpO2   BPM     PA     Status\r\n"
)
N560_LINE = b"07-Jan-04 11:24:50   100     105      88                   AO\r\n"
N560_LINE_MOTION = b"07-Jan-04 11:24:54   100     102      36    MO             AO\r\n"
# device_messages/hl7_misc/comen_nc_monitor_pcd01.hl7: its MSH and SpO2 OBX segments.
COMEN_MSH = (
    "MSH|^~\\&|NC_Monitor|KC261551373G|||20250610015127+0800||ORU^R01^ORU_R01|"
    "202506100151270003|P|2.6||||||UNICODE UTF-8"
)
COMEN_OBX_SPO2 = (
    "OBX||NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456|97|262688^MDC_DIM_PERCENT^MDC"
    "|||||F|||20250610015127+0800"
)

MASIMO_RE = re.compile(
    rb"(?P<date>\d\d/\d\d/\d\d) (?P<time>\d\d:\d\d:\d\d) SN=(?P<sn>\d{10}) "
    rb"SPO2=(?P<spo2>\d{3}|---)% BPM=(?P<bpm>\d{3}|---) PI=(?P<pi>\d\d\.\d\d|--\.--)% "
    rb"SPCO=--\.-% SPMET=--\.-% DESAT=-- PIDELTA=\+-- ALARM=(?P<alarm>[0-9A-F]{4}) "
    rb"EXC=(?P<exc>[0-9A-F]{6})\r\n"
)

VITALS = {
    "hr": 72.0,
    "spo2": 96.0,
    "rr": 16.0,
    "sbp": 121.0,
    "dbp": 79.0,
    "map": 93.0,
    "temp": 36.8,
}


def local(year: int, month: int, day: int, h: int, m: int, s: int) -> float:
    """Epoch seconds of a local wall-clock time (device clocks are local)."""
    return datetime(year, month, day, h, m, s).timestamp()


# ------------------------------------------------------------------ Masimo


def test_masimo_line_is_the_rad8_line_byte_for_byte():
    t = local(2018, 2, 24, 4, 48, 53)
    line = format_masimo(t, {"spo2": 97.0, "hr": 80.0, "pi": 4.96}, serial_number=145838)
    assert line == RAD8_LINE
    assert MASIMO_RE.fullmatch(RAD8_LINE)


def test_masimo_missing_values_are_dashes_and_bit_fields_are_hex():
    t = local(2021, 5, 20, 14, 6, 2)
    line = format_masimo(t, {"spo2": 98.0, "hr": 101.0}, 0x824, serial_number=182948, alarm=0x10)
    assert line == RAD8_LINE_NO_PI
    off = format_masimo(t, {"spo2": None, "hr": None, "pi": None}, EXC_SENSOR_OFF)
    m = MASIMO_RE.fullmatch(off)
    assert m is not None
    assert (m["spo2"], m["bpm"], m["pi"], m["exc"]) == (b"---", b"---", b"--.--", b"000020")
    assert len(off) == len(RAD8_LINE)  # fixed width whatever is missing


# ------------------------------------------------------------------ Nellcor


def test_nellcor_header_and_lines_are_the_n560_capture_byte_for_byte():
    assert nellcor_header(NellcorLimits(95, 100, 59, 148)) == N560_HEADER
    v = {"spo2": 100.0, "hr": 105.0, "pa": 88.0}
    assert format_nellcor(local(2004, 1, 7, 11, 24, 50), v, frozenset({"AO"})) == N560_LINE
    v = {"spo2": 100.0, "hr": 102.0, "pa": 36.0}
    line = format_nellcor(local(2004, 1, 7, 11, 24, 54), v, frozenset({"MO", "AO"}))
    assert line == N560_LINE_MOTION


def test_nellcor_columns_stay_aligned_with_short_missing_values_and_flags():
    header_cols = N560_HEADER.split(b"\r\n")[2]
    t = local(2004, 1, 7, 11, 24, 56)
    v = {"spo2": 85.0, "hr": 48.0, "pa": 7.0}
    flags = nellcor_status(v)
    assert flags == {"SL", "PL"}  # default limits: SpO2 90-100, PR 50-120
    line = format_nellcor(t, v, flags)
    assert line == b"07-Jan-04 11:24:56    85      48       7       SL PL\r\n"
    # Values end where the capture's do: right-aligned under their column titles.
    assert line.index(b"85") + 2 == header_cols.index(b"%SpO2") + 3
    assert line.index(b"48") + 2 == header_cols.index(b"BPM") + 3
    assert line[44:46] == b"  " and line[47:49] == b"SL"
    off = format_nellcor(t, {}, nellcor_status({}, sensor_off=True))
    assert off == b"07-Jan-04 11:24:56   ---     ---     ---    SD\r\n"


# ------------------------------------------------------------------ HL7


def mllp_payload(msg: bytes) -> str:
    assert msg.startswith(b"\x0b") and msg.endswith(b"\x1c\x0d")
    assert msg.count(b"\x0b") == 1 and msg.count(b"\x1c") == 1
    body = msg[1:-2].decode("utf-8")
    assert body.endswith("\r") and "\n" not in body
    return body


def test_hl7_is_a_pcd01_oru_in_mllp_with_the_comen_field_layout():
    t = local(2025, 6, 10, 1, 51, 27)
    loc = Location(point_of_care="ICU3", room="12", bed="B", patient_id="P42")
    body = mllp_payload(format_hl7(t, VITALS, control_id="C1", location=loc))
    segs = body.rstrip("\r").split("\r")
    assert [s[:3] for s in segs] == ["MSH", "PID", "PV1", "OBR"] + ["OBX"] * 7

    msh, ref = segs[0].split("|"), COMEN_MSH.split("|")
    assert len(msh) == len(ref)
    for i in (0, 1, 8, 10, 11, 17):  # segment, encoding chars, type, P, 2.6, charset
        assert msh[i] == ref[i]
    assert re.fullmatch(r"20250610015127[+-]\d{4}", msh[6])
    assert msh[9] == "C1"

    obx = {s.split("|")[3].split("^")[0]: s.split("|") for s in segs if s.startswith("OBX")}
    spo2, ref_obx = obx["150456"], COMEN_OBX_SPO2.split("|")
    assert len(spo2) == len(ref_obx)
    for i in (0, 2, 3, 4, 6, 11):  # OBX, NM, code, sub-id, unit, F
        assert spo2[i] == ref_obx[i]
    assert spo2[5] == "96" and spo2[14] == msh[6]
    assert [o[1] for o in obx.values()] == [str(i) for i in range(1, 8)]  # set ids
    values = {code: (o[5], o[6].split("^")[0]) for code, o in obx.items()}
    assert values == {
        "150456": ("96", "262688"),
        "147842": ("72", "264864"),
        "151562": ("16", "264928"),
        "150021": ("121", "266016"),
        "150022": ("79", "266016"),
        "150023": ("93", "266016"),
        "150344": ("36.8", "268192"),
    }

    msg = hl7.parse(body)  # an HL7 library reads it the same way
    assert str(msg.segment("PV1")[3]) == "ICU3^12^B"
    assert str(msg.segment("PID")[3]) == "P42"
    assert str(msg.segment("MSH")[9]) == "ORU^R01^ORU_R01"


def test_hl7_leaves_out_what_is_missing():
    body = mllp_payload(format_hl7(0.0, {**VITALS, "spo2": None, "temp": None}, control_id="2"))
    codes = [s.split("|")[3].split("^")[0] for s in body.split("\r") if s.startswith("OBX")]
    assert codes == ["147842", "151562", "150021", "150022", "150023"]


# ------------------------------------------------------------------ JSON lines


def test_jsonl_is_the_mqtt_reading_object_per_line():
    line = format_jsonl(1764324000.25, VITALS)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == reading(VITALS, 1764324000.25)
    assert json.loads(line)["hr"] == 72 and isinstance(json.loads(line)["hr"], int)
    off = json.loads(format_jsonl(1764324001.0, {}, "sensor_off"))
    assert off == {"ts": 1764324001.0, "status": "sensor_off"}


# ------------------------------------------------------------------ the device


def test_device_frames_are_deterministic_and_follow_the_scenario():
    a = Device("masimo", "desaturation", 7)
    b = Device("masimo", "desaturation", 7)
    t0 = local(2026, 1, 1, 0, 0, 0)
    frames = [a.frame(k, t0 + k) for k in range(120)]
    assert frames == [b.frame(k, t0 + k) for k in range(120)]
    assert frames != [Device("masimo", "desaturation", 8).frame(k, t0 + k) for k in range(120)]
    spo2 = []
    for f in frames:
        m = MASIMO_RE.fullmatch(f)
        assert m is not None and m["exc"] == b"%06X" % EXC_NORMAL
        spo2.append(int(m["spo2"]))
    assert max(spo2[:10]) >= 93 and min(spo2) <= 83  # normal, then the desaturation


def test_sensor_off_scenario_sends_dashes_and_the_sensor_off_bits():
    dev = Device("masimo", "sensor_off", 1)
    on = MASIMO_RE.fullmatch(dev.frame(0, 0.0))
    off = MASIMO_RE.fullmatch(dev.frame(int(SENSOR_ON_S) + 1, 0.0))
    assert on is not None and on["exc"] == b"000800" and on["spo2"] != b"---"
    assert off is not None and off["exc"] == b"000020" and off["spo2"] == b"---"
    nellcor = Device("nellcor", "sensor_off", 1).frame(int(SENSOR_ON_S / 2) + 1, 0.0)
    assert nellcor.rstrip().endswith(b"SD") and b"---" in nellcor
    jsonl = Device("jsonl", "sensor_off", 1)
    assert json.loads(jsonl.frame(int(SENSOR_ON_S) + 1, 5.0)) == {"ts": 5.0, "status": "sensor_off"}
    assert json.loads(jsonl.frame(0, 5.0))["status"] == "ok"


def test_nellcor_header_at_power_on_and_every_so_many_lines():
    dev = Device("nellcor", "normal", 3)
    with_header = [k for k in range(60) if dev.frame(k, 0.0).startswith(b"N-560 ")]
    assert with_header == [0, NELLCOR_HEADER_EVERY, 2 * NELLCOR_HEADER_EVERY]


def test_nobody_reading_drops_frames_instead_of_blocking():
    out = io.StringIO()
    sim = SerialSimulator(Options(fmt="hl7", seed=1, rate=2000, duration=0.3), out=out)
    started = time.monotonic()
    assert sim.run() == 0
    assert time.monotonic() - started < 3
    path = out.getvalue().split()[1]
    assert out.getvalue() == f"device: {path}\n"
    assert sim.written > 0 and sim.dropped > 0  # ~19 KB fit, then whole frames dropped
    assert sim.written + sim.dropped == sim.frames
    assert not os.path.exists(path)


def test_frames_are_paced_on_the_monotonic_clock():
    out = io.StringIO()
    sim = SerialSimulator(Options(fmt="jsonl", seed=4, rate=50, duration=0.6), out=out)
    got: list[tuple[float, bytes]] = []

    def reader() -> None:
        path = wait_for(lambda: out.getvalue().partition("device: ")[2].strip(), 5, "path")
        # pyserial's open discards what was buffered: lines arrive from now on.
        with serial.Serial(path, 9600, timeout=0.2) as port:
            while True:
                try:
                    line = port.read_until(b"\n")
                except serial.SerialException:  # unplugged at the end of the run
                    return
                if line:
                    got.append((time.monotonic(), line))

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    started = time.monotonic()
    assert sim.run() == 0
    assert 0.6 <= time.monotonic() - started < 2
    t.join(5)
    assert 29 <= sim.frames <= 31 and sim.written == sim.frames  # 50/s for 0.6 s
    objs = [json.loads(line) for _, line in got]
    assert len(objs) >= 10
    assert {round(b["ts"] - a["ts"], 3) for a, b in itertools.pairwise(objs)} == {1.0}
    assert abs(objs[-1]["ts"] - time.time()) < 2  # speed 50: the last one is stamped now
    span = got[-1][0] - got[0][0]  # written one by one, 20 ms apart, not in a burst
    assert span >= (len(got) - 1) / 50 - 0.05


def test_cli_refuses_replug_without_unplug_and_rate_with_speed(capsys):
    from simulators.__main__ import main

    assert main(["serial", "--replug-after", "1", "--link", "x"]) == 2
    assert "--replug-after needs --unplug-after" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serial", "--rate", "5", "--speed", "2"])


# ------------------------------------------------------------------ the pty, for real


class Sim:
    """``python -m simulators serial ...`` with its stdout lines on a queue."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simulators", "-q", "serial", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def device(self, timeout: float = 5.0) -> str:
        line = self.lines.get(timeout=timeout)
        assert line.startswith("device: /dev/"), line
        return line.split(": ", 1)[1].strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def sim() -> Iterator[type[Sim]]:
    started: list[Sim] = []

    class Started(Sim):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Started
    for s in started:
        s.stop()


def read_masimo(port: serial.Serial, n: int, timeout: float = 3.0) -> list[re.Match[bytes]]:
    deadline = time.monotonic() + timeout
    out = []
    while len(out) < n:
        assert time.monotonic() < deadline, f"only {len(out)} lines in {timeout} s"
        line = port.read_until(b"\r\n")
        if line.endswith(b"\r\n"):
            m = MASIMO_RE.fullmatch(line)
            assert m is not None, line
            out.append(m)
    return out


def test_masimo_on_a_pty_read_with_pyserial(sim, tmp_path):
    link = tmp_path / "ttyX"
    s = sim(
        "--format", "masimo", "--seed", "5", "--rate", "20", "--duration", "3", "--link", str(link)
    )
    path = s.device()
    assert os.readlink(link) == path
    with serial.Serial(str(link), 9600, timeout=0.5) as port:
        lines = read_masimo(port, 20)
    stamps = [
        datetime.strptime(f"{m['date'].decode()} {m['time'].decode()}", "%m/%d/%y %H:%M:%S")
        for m in lines
    ]
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)] == [1.0] * 19
    assert abs(stamps[0].timestamp() - time.time()) < 120  # device clock: local time
    assert {m["sn"] for m in lines} == {lines[0]["sn"]}
    for m in lines:
        assert 91 <= int(m["spo2"]) <= 100 and 54 <= int(m["bpm"]) <= 115
        assert 0.5 <= float(m["pi"]) <= 10 and m["exc"] == b"000800" and m["alarm"] == b"0000"
    assert s.proc.wait(timeout=5) == 0
    assert not os.path.lexists(link) and not os.path.exists(path)


def test_unplug_fails_the_reader_and_replug_comes_back_on_the_link(sim, tmp_path):
    link = tmp_path / "ttyX"
    s = sim(
        "--format",
        "masimo",
        "--seed",
        "2",
        "--rate",
        "20",
        "--duration",
        "20",
        "--unplug-after",
        "1",
        "--replug-after",
        "1.5",
        "--link",
        str(link),
    )
    first = s.device()
    with serial.Serial(str(link), 9600, timeout=0.5) as port:
        read_masimo(port, 3)
        deadline = time.monotonic() + 4
        with pytest.raises(serial.SerialException):  # noqa: PT012
            while time.monotonic() < deadline:
                port.read(4096)
        # The link went before the pty was closed; the replug is 1.5 s away.
        assert not os.path.lexists(link)
        assert not os.path.exists(first)
    second = s.device(timeout=5)
    wait_for(lambda: os.path.lexists(link), 2, "the link again")
    assert os.readlink(link) == second
    with serial.Serial(str(link), 9600, timeout=0.5) as port:
        assert len(read_masimo(port, 3)) == 3
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=5) == 0
    assert not os.path.lexists(link)


def test_unplug_scenario_unplugs_the_pty_on_its_own_schedule():
    """``--scenario unplug``: the pty is unplugged at the patient model's UNPLUG_AT_S and
    plugged in again UNPLUG_S later (simulated seconds, so divided by the speed), unless
    --unplug-after says otherwise; other scenarios are never unplugged by themselves."""
    from simulators import patient as patient_model
    from simulators.serial import Options, SerialSimulator

    sim = SerialSimulator(Options(fmt="masimo", scenario="unplug", speed=60.0), out=io.StringIO())
    assert sim.opts.unplug_after == pytest.approx(patient_model.UNPLUG_AT_S / 60.0)
    assert sim.opts.replug_after == pytest.approx(patient_model.UNPLUG_S / 60.0)
    own = SerialSimulator(
        Options(fmt="hl7", scenario="unplug", unplug_after=3.0), out=io.StringIO()
    )
    assert (own.opts.unplug_after, own.opts.replug_after) == (3.0, None)
    normal = SerialSimulator(Options(fmt="masimo", scenario="normal"), out=io.StringIO())
    assert normal.opts.unplug_after is None
