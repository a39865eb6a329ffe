"""Faults on serial text lines: a line cut short runs into the next one. Serial text
lines have no start marker, so when a device's line is cut (cable glitch, device reset
mid-line, buffer overrun) the next line follows on the same line.

Masimo (each test here failed on the code before its fix): the merged line gave the cut
line's stamp and the first value of each key, a reading mixing two samples (SpO2 95 of the
cut line with HR 80 of the next) presented as true. Now a line with a second date/time, a
key twice or more than ``MAX_FIELDS`` fields is one ``bad_line`` ("two lines merged"),
with no reading and no status.

Nellcor: a cut data line followed by any line was refused already (the next line's date is
no value or status code; kept as a test). Two cases were not: a cut header line followed
by a data line was skipped silently as a header (the data line lost, uncounted), and the
blanks of a cut mode line shifted the columns of a data line that leaves a cell blank
(SpO2 98 read as HR 98). Now values are placed counting from the line's date, and a line
with the next line's date and time mid-line is ``bad_line``.

Parser level (hypothesis), plus one real daemon reading a pty (socat), as in
tests/test_serial.py.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serial import Socat, masimo_line, serial_config

from monitor.sinks.sqlite import query_readings
from monitor.sources.devices import DeviceContext, LineFramer, Parsed
from monitor.sources.devices.masimo import MAX_FIELDS, MasimoParser
from monitor.sources.devices.nellcor import MONTHS, NellcorParser

NOW = 1764324000.0  # 2025-11-28T10:00:00Z
#: Device clock: a line's own stamp is its time, so a stamp taken from the wrong line shows.
CTX = DeviceContext("icu", "7", "mon1", NOW, clock="device", tz=UTC, patient="p42")
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MERGED = "two lines merged (a line cut short?)"


def masimo(frame: bytes) -> Parsed:
    return MasimoParser().parse(frame, CTX)


def refused_whole(p: Parsed) -> bool:
    """One ``bad_line``, nothing else: no reading, no status."""
    return [r.cause for r in p.rejections] == ["bad_line"] and p.readings == [] and p.statuses == []


def causes_details(p: Parsed) -> list[tuple[str, str]]:
    return [(r.cause, r.detail) for r in p.rejections]


def readings(p: Parsed) -> list[tuple[float, str, float]]:
    return [(r.ts, r.vital, r.value) for r in p.readings]


# --------------------------------------------------------------------- Masimo: examples


def mstamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%m/%d/%y %H:%M:%S")


def rad8(t: float, spo2: str, bpm: str, exc: str = "000800") -> bytes:
    return (
        f"{mstamp(t)} SN=0000145838 SPO2={spo2}% BPM={bpm} PI=04.96% SPCO=--.-% "
        f"SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM=0000 EXC={exc}"
    ).encode()


def test_masimo_cut_line_and_the_next_are_refused_not_mixed():
    """The defect as found: SpO2 95 of a line cut short, HR 80 of the next (which has no
    SpO2). Before: spo2 95 and hr 80 at the cut line's time, as one sample."""
    cut = rad8(NOW - 1, "095", "071")
    cut = cut[: cut.index(b"BPM=")]
    nxt = rad8(NOW, "---", "080")
    assert readings(masimo(nxt)) == [(NOW, "hr", 80.0)]
    p = masimo(cut + nxt)
    assert refused_whole(p), p
    assert p.rejections[0].detail.startswith(MERGED)
    assert b"0000145838" not in p.rejections[0].payload  # both serial numbers masked
    assert p.rejections[0].payload.count(b"SN=*") == 2


NEXT = rad8(NOW, "097", "080").decode()


@pytest.mark.parametrize(
    ("line", "why"),
    [
        # The cut line's stamp, then the next line whole: no key repeats.
        pytest.param(f"{mstamp(NOW - 1)} {NEXT}", "a second date/time", id="stamp-then-line"),
        # Cut inside the stamp: the next line's stamp is mid-line.
        pytest.param(f"{mstamp(NOW - 1)[:14]}{NEXT}", "date and time mid-line", id="cut-stamp"),
        # The line end lost: two whole lines.
        pytest.param(
            f"{rad8(NOW - 1, '095', '071').decode()}{NEXT}", "a second date/time", id="no-end"
        ),
        # A key twice (any case), the next line's stamp lost with the cut.
        pytest.param(
            f"{mstamp(NOW)} SPO2=095% BPM=071 SPO2=097% EXC=000800", "SPO2= twice", id="spo2-twice"
        ),
        pytest.param(
            f"{mstamp(NOW)} SPO2=095% BPM=--- PI=04.96% bpm=080 EXC=000800",
            "BPM= twice",
            id="bpm-twice-any-case",
        ),
        pytest.param(
            f"{mstamp(NOW)} SN=0000145838 SPO2=095% SN=0000145838 BPM=080",
            "SN= twice",
            id="sn-twice",
        ),
        # More fields than a line has.
        pytest.param(
            f"{mstamp(NOW)} SPO2=097% BPM=080 EXC=000800 "
            + " ".join(f"X{i}=1" for i in range(MAX_FIELDS - 2)),
            f"more than {MAX_FIELDS}",
            id="too-many-fields",
        ),
    ],
)
def test_masimo_merged_lines_are_one_bad_line(line, why):
    p = masimo(line.encode())
    assert refused_whole(p), p
    assert p.rejections[0].detail.startswith(MERGED)
    assert why in p.rejections[0].detail
    assert "0000145838" not in p.rejections[0].detail


def test_masimo_lines_that_are_not_merged_still_count():
    widest = (
        f"{mstamp(NOW)} SN=0123456789 SPO2=098% BPM=072 PI=20.00% SPCO=01.0% SPMET=00.5% "
        "DESAT=01 PIDELTA=-02 PVI=027 ALARM=0000 EXC=000800"
    )
    extra = " ".join(f"X{i}=1" for i in range(MAX_FIELDS - 11))  # exactly MAX_FIELDS
    for line in (widest, f"{widest} {extra}", f"{mstamp(NOW)} SPO2=097% BPM=064 PI=11.82%"):
        p = masimo(line.encode())
        assert p.rejections == [] and len(p.readings) == 2, (line, p)


# ------------------------------------------------------------------- Masimo: property


@st.composite
def masimo_lines(draw: st.DrawFn) -> bytes:
    """A valid Masimo line in one of the layouts the parser accepts, with random values,
    bit fields and a stamp within the device clock's skew of NOW."""
    t = NOW + draw(st.integers(-250, 250))
    s = draw(st.one_of(st.just("---"), st.integers(0, 100).map(lambda v: f"{v:03d}")))
    b = draw(st.one_of(st.just("---"), st.integers(0, 350).map(lambda v: f"{v:03d}")))
    pi = draw(st.one_of(st.just("--.--"), st.floats(0.02, 20).map(lambda v: f"{v:05.2f}")))
    exc = draw(st.integers(0, 0xFFFFFF))
    alarm = draw(st.integers(0, 0xFFFF))
    sn = draw(st.integers(0, 9_999_999_999))
    layout = draw(st.sampled_from(["rad8", "radical7", "radical5", "no_exc"]))
    stamp = mstamp(t)
    if layout == "rad8":
        line = (
            f"{stamp} SN={sn:010d} SPO2={s}% BPM={b} PI={pi}% SPCO=--.-% SPMET=--.-% "
            f"DESAT=-- PIDELTA=+-- ALARM={alarm:04X} EXC={exc:06X}"
        )
    elif layout == "radical7":
        line = (
            f"{stamp} SN={sn:010d} SPO2={s}% BPM={b} PI={pi}% SPCO=01.0% SPMET=00.5% "
            f"DESAT=01 PIDELTA=-02 PVI=027 ALARM={alarm:04X} EXC={exc:06X}"
        )
    elif layout == "radical5":
        line = f"{stamp} SPO2={s}% BPM={b} PI={pi}% ALARM={alarm:X} EXC={exc:X}"
    else:
        line = f"{stamp} SPO2={s}% BPM={b} PI={pi}%"
    return line.encode()


@PROPS
@given(first=masimo_lines(), second=masimo_lines(), data=st.data())
def test_masimo_cut_line_followed_by_the_next_never_mixes_them(first, second, data):
    """First line cut at any position (0: nothing of it left; its full length: only the
    line end lost), the second line whole after it: the result is the second line's
    exactly, or one bad_line and nothing else. Never a value or a stamp of neither line
    whole, never the first line's stamp with the second's values."""
    cut = data.draw(st.integers(0, len(first)), label="cut")
    (frame,) = LineFramer().feed(first[:cut] + second + b"\r\n")
    p = masimo(frame)
    alone = masimo(second)
    if cut == 0:
        assert p == alone
        return
    # Not a reading or status the second line alone does not give: none with a value or
    # stamp of neither line, none with the first line's stamp and the second's values.
    mixed = [r for r in readings(p) if r not in readings(alone)]
    assert not mixed, (frame, mixed)
    assert not [s for s in p.statuses if s not in alone.statuses], (frame, p.statuses)
    # And in fact refused as a whole (the second line's stamp is always mid-line).
    assert refused_whole(p), (frame, p)
    assert p.rejections[0].detail.startswith(MERGED), p.rejections[0].detail


# -------------------------------------------------------------------- Nellcor: examples

HEADER = [
    b"N-560    VERSION 1.61.00    CRC:XXXX  SpO2 Limit: 95-100%    PR Limit: 59-148BPM",
    b"                             ADULT           25SAT-S ",
    b"TIME                 %SpO2   BPM     PA     Status",
]


def nstamp(t: float) -> str:
    d = datetime.fromtimestamp(t, UTC)
    return f"{d.day:02d}-{MONTHS[d.month - 1].title()}-{d:%y %H:%M:%S}"


def nline(t: float, spo2: str = "100", bpm: str = "105", pa: str = "88", codes: str = "") -> bytes:
    """A data line in the N-560's columns (values at 21, 29, 37; a blank cell is blanks)."""
    return f"{nstamp(t)}   {spo2:<3}     {bpm:<3}     {pa:>3}    {codes}".rstrip().encode()


def nellcor(*frames: bytes) -> Parsed:
    """The last frame's result, after the header (column headings) and ``frames``."""
    parser = NellcorParser()
    for h in HEADER:
        assert parser.parse(h, CTX) == Parsed()
    out = [parser.parse(f, CTX) for f in frames]
    return out[-1]


@pytest.mark.parametrize("at", [5, 14, 18, 21, 24, 32, 40, 44, 50, 100])
def test_nellcor_cut_data_line_followed_by_the_next_was_refused_already(at):
    first = nline(NOW - 2, "095", "071", "30", "MO")
    p = nellcor(first[:at] + nline(NOW, "097", "080", "40", "AO"))
    assert refused_whole(p), p


@pytest.mark.parametrize("at", [4, 5, 8, 12, 16, 20, 28])
def test_nellcor_blanks_of_a_cut_mode_line_shift_no_column(at):
    """The mode line's leading blanks, then a data line that leaves BPM and PA blank.
    Before: from 5 blanks on, SpO2 98 was read as HR 98 (from 16, dropped as PA)."""
    p = nellcor(HEADER[1][:at] + nline(NOW, "98", "", ""))
    assert readings(p) == [(NOW, "spo2", 98.0)]
    assert p.rejections == []


@pytest.mark.parametrize(("header", "at"), [(0, 5), (0, 12), (0, 40), (2, 4), (2, 25), (2, 50)])
def test_nellcor_cut_header_followed_by_a_data_line_is_counted_not_skipped(header, at):
    """Before: skipped silently as a header line, the data line lost and not counted."""
    p = nellcor(HEADER[header][:at] + nline(NOW, "097", "080", "40", "AO"))
    assert refused_whole(p), p
    assert p.rejections[0].detail.startswith(MERGED)


# ------------------------------------------------------------------- Nellcor: property


@st.composite
def nellcor_lines(draw: st.DrawFn) -> bytes:
    """A data line with random values (a number, dashes, or a blank cell), status codes
    and a stamp within the device clock's skew of NOW (every 2 s)."""
    t = NOW + 2 * draw(st.integers(-120, 120))

    def cell(hi: int) -> str:
        return draw(st.one_of(st.sampled_from(["---", ""]), st.integers(0, hi).map(str)))

    codes = draw(
        st.lists(
            st.sampled_from(["AO", "AS", "MO", "PS", "LB", "PH", "SO"]), max_size=4, unique=True
        )
    )
    return nline(t, cell(100), cell(350), cell(254), "    ".join(codes))


@PROPS
@given(
    first=st.one_of(nellcor_lines(), st.sampled_from(HEADER)),
    second=nellcor_lines(),
    data=st.data(),
)
def test_nellcor_cut_line_followed_by_the_next_never_mixes_them(first, second, data):
    """Any line (data or header) cut at any position, a data line whole after it: the
    second line's result exactly (only when nothing but blanks is left of the first), or
    one bad_line; never silently nothing; the column positions are not changed."""
    cut = data.draw(st.integers(0, len(first)), label="cut")
    parser = NellcorParser()
    for h in HEADER:
        parser.parse(h, CTX)
    p = parser.parse(first[:cut] + second, CTX)
    alone = nellcor(second)
    mixed = [r for r in readings(p) if r not in readings(alone)]
    assert not mixed, (first[:cut] + second, mixed)
    assert alone.statuses  # every data line gives a status
    if not first[:cut].strip():
        assert (p.readings, p.statuses) == (alone.readings, alone.statuses)
        assert causes_details(p) == causes_details(alone)  # (the payload has the blanks)
    else:
        assert refused_whole(p), (first[:cut] + second, p)
    assert parser.parse(second, CTX) == alone  # the merged line changed no column


# ------------------------------------------------------------------- a daemon on a pty


def stored(db: Path) -> list[tuple[str, float]]:
    return [(row[4], row[5]) for row in query_readings(str(db), "14", ward="icu")]


def test_masimo_merged_line_on_a_pty_stores_nothing_of_it(
    daemon: Any, subscribe: Any, tmp_path: Path
) -> None:
    """A real daemon reading a pty: a line cut before its BPM, the next line (SpO2
    dashes, HR 80) right after it, then a whole line. Before: spo2 95 and hr 80 stored at
    the cut line's time. Now only the whole line's values are stored; the merged line is
    dead-lettered ``bad_line`` with its serial number masked."""
    socat = Socat(tmp_path)
    socat.start()
    try:
        dead = subscribe("vitalmon/deadletter")
        d = daemon(start=False)
        serial_config(d, socat.a, "    clock: device\n")
        d.start()
        wait_for(lambda: "open (masimo" in d.log(), 10, "port open")
        t = time.time()
        cut = masimo_line(t - 2, 95, 71)
        cut = cut[: cut.index(b"BPM=")]
        socat.write(cut + masimo_line(t - 1, None, 80) + masimo_line(t, 97, 72))
        db = tmp_path / "vitals.db"
        wait_for(lambda: ("hr", 72.0) in stored(db), 10, "the whole line stored")
        code, _ = d.terminate()
        assert code == 0
        assert sorted(stored(db)) == [("hr", 72.0), ("spo2", 97.0)]
        letters = [x for x in dead.json() if x["reason"] == "bad_line"]
        assert len(letters) == 1 and MERGED in letters[0]["detail"]
        assert "0000145838" not in str(dead.json())
    finally:
        socat.stop()
