"""Device formats: real Masimo and Nellcor serial captures replayed verbatim, worked
examples for every rule, and properties (no input ever raises; Masimo and Nellcor lines
round-trip; line framing does not depend on how the bytes were chunked).

Samples: tests/data/device_messages/ (see tests/data/SOURCES.md). Pure logic, no I/O
beyond reading them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.model import DEVICE_FLAGS, DeviceStatus, Reading
from monitor.sources.codecs import CAUSES
from monitor.sources.devices import DeviceContext, LineFramer, Parsed, make_parser
from monitor.sources.devices.masimo import EXC_FLAGS, MasimoParser
from monitor.sources.devices.nellcor import NellcorParser
from monitor.sources.devices.text import DEVICE_CAUSES, CsvParser, JsonLinesParser

DATA = Path(__file__).parent / "data" / "device_messages"
NOW = 1764324000.0  # 2025-11-28T10:00:00Z
CTX = DeviceContext("icu", "7", "mon1", NOW, patient="p42")
ALL_CAUSES = set(CAUSES) | set(DEVICE_CAUSES)
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def lines(path: Path, chunk: int = 0) -> list[bytes]:
    """A capture through the real LineFramer (in ``chunk``-byte pieces when given)."""
    data = path.read_bytes()
    framer = LineFramer()
    if not chunk:
        return framer.feed(data)
    out: list[bytes] = []
    for i in range(0, len(data), chunk):
        out += framer.feed(data[i : i + chunk])
    return out


def sample_lines(folder: str) -> list[bytes]:
    return [ln for p in sorted((DATA / folder).glob("*.txt")) for ln in lines(p)]


def values(p: Parsed) -> dict[str, float]:
    out = {r.vital: r.value for r in p.readings}
    assert len(out) == len(p.readings), "a vital appeared twice"
    return out


def flags(p: Parsed) -> set[str] | None:
    assert len(p.statuses) <= 1
    return set(p.statuses[0].flags) if p.statuses else None


def causes(p: Parsed) -> list[str]:
    return [r.cause for r in p.rejections]


def check_well_formed(p: Parsed, ctx: DeviceContext = CTX) -> None:
    """What every parse result must satisfy, whatever the input."""
    assert isinstance(p, Parsed)
    for r in p.readings:
        assert isinstance(r, Reading)
        assert (r.ward, r.bed) == (ctx.ward, ctx.bed)
        assert isinstance(r.value, float)
    for s in p.statuses:
        assert isinstance(s, DeviceStatus)
        assert s.flags <= set(DEVICE_FLAGS)
    for rej in p.rejections:
        assert rej.cause in ALL_CAUSES, rej
        assert len(rej.payload) <= 1024
        assert len(rej.detail) <= 400


def masimo(line: str | bytes, ctx: DeviceContext = CTX) -> Parsed:
    frame = line.encode() if isinstance(line, str) else line
    p = MasimoParser().parse(frame, ctx)
    check_well_formed(p, ctx)
    return p


# ----------------------------------------------------------------------- make_parser


def test_make_parser_builds_each_text_format():
    assert isinstance(make_parser("masimo"), MasimoParser)
    assert isinstance(make_parser("nellcor"), NellcorParser)
    assert isinstance(make_parser("jsonl"), JsonLinesParser)
    assert isinstance(make_parser("csv"), CsvParser)


# -------------------------------------------------------------------- Masimo: samples


def test_masimo_samples_are_copied_verbatim_with_crlf():
    raw = (DATA / "masimo_serial" / "rad8_asixreader_javadoc.txt").read_bytes()
    assert raw.count(b"\r\n") == 6
    assert len(sample_lines("masimo_serial")) == 16


def test_rad8_first_line():
    (first, *_rest) = lines(DATA / "masimo_serial" / "rad8_asixreader_javadoc.txt")
    p = masimo(first)
    assert p.readings == [
        Reading(NOW, "icu", "7", "mon1", "spo2", 97.0, "p42"),
        Reading(NOW, "icu", "7", "mon1", "hr", 80.0, "p42"),
    ]
    assert p.statuses == [DeviceStatus(NOW, "icu", "7", "mon1", frozenset(), "p42")]
    assert p.rejections == []


def test_rad8_capture_replayed_in_any_chunking():
    path = DATA / "masimo_serial" / "rad8_asixreader_javadoc.txt"
    for chunk in (0, 1, 7, 64):
        parser = MasimoParser()
        got = [values(parser.parse(ln, CTX)) for ln in lines(path, chunk)]
        assert [(v["spo2"], v["hr"]) for v in got] == [
            (97, 80),
            (97, 81),
            (97, 81),
            (97, 81),
            (97, 80),
            (97, 80),
        ]


def test_yahnatan_capture():
    got = [masimo(ln) for ln in lines(DATA / "masimo_serial" / "rad8_yahnatan_pulseox_README.txt")]
    assert [(values(p)["spo2"], values(p)["hr"]) for p in got] == [
        (98, 97),
        (98, 96),
        (98, 96),
        (98, 96),
        (98, 97),
    ]
    assert all(flags(p) == set() and p.rejections == [] for p in got)


def test_misc_lines_dashes_sensor_off_and_silenced_alarm():
    no_sensor, sensor_off, silenced = lines(DATA / "masimo_serial" / "rad8_misc_single_lines.txt")
    # SPO2=---% BPM=--- EXC=000001: no value, no rejection, the no-sensor flag.
    p = masimo(no_sensor)
    assert (p.readings, p.rejections, flags(p)) == ([], [], {"no_sensor"})
    # EXC=000824 = 0x800 (Masimo SET, informational) + 0x020 sensor off + 0x004 low perfusion.
    # The device still printed 98/101: not trusted while it says the sensor is off.
    p = masimo(sensor_off)
    assert flags(p) == {"sensor_off", "low_perfusion"}
    assert p.readings == []
    assert causes(p) == ["sensor_flag", "sensor_flag"]
    assert "sensor_off" in p.rejections[0].detail
    # ALARM=0038: 0x20 alarm silenced (-> alarms_off), 0x10 alarm active, 0x08 PR low: the
    # device's own alarms raise nothing here.
    p = masimo(silenced)
    assert values(p) == {"spo2": 98, "hr": 57}
    assert flags(p) == {"alarms_off"}
    assert p.rejections == []


def test_radical7_and_radical5_examples():
    rad7, rad5 = lines(DATA / "masimo_serial" / "radical7_radical5_mdpnp_examples.txt")
    p = masimo(rad7)  # EXC=000820: sensor off
    assert flags(p) == {"sensor_off"}
    assert causes(p) == ["sensor_flag", "sensor_flag"]
    p = masimo(rad5)  # fewer fields, short EXC=800 and ALARM=20 (silenced)
    assert values(p) == {"spo2": 97, "hr": 64}
    assert flags(p) == {"alarms_off"}
    assert p.rejections == []


def test_serial_number_is_never_kept():
    for ln in sample_lines("masimo_serial"):
        bad = ln.replace(b"SPO2=0", b"SPO2=x").replace(b"SPO2=-", b"SPO2=x")
        for p in (masimo(ln), masimo(bad), masimo(b"garbage " + ln)):
            for rej in p.rejections:
                for sn in (b"0000145838", b"0000093112", b"0000182948", b"0123456789"):
                    assert sn not in rej.payload
                    assert sn.decode() not in rej.detail


# ------------------------------------------------------------------- Masimo: examples

LINE = "02/24/18 04:48:53 SN=0000145838 SPO2={spo2}% BPM={bpm} PI=04.96% ALARM={alarm} EXC={exc}"


def mline(spo2: str = "097", bpm: str = "080", exc: str = "000800", alarm: str = "0000") -> str:
    return LINE.format(spo2=spo2, bpm=bpm, exc=exc, alarm=alarm)


@pytest.mark.parametrize(
    ("bit", "expected"),
    [
        (0x000001, {"no_sensor"}),
        (0x000002, {"sensor_fault"}),
        (0x000004, {"low_perfusion"}),
        (0x000008, {"searching"}),
        (0x000010, {"interference"}),
        (0x000020, {"sensor_off"}),
        (0x000040, {"interference"}),
        (0x000080, {"sensor_fault"}),
        (0x000100, {"sensor_fault"}),
        (0x000200, set()),
        (0x000400, {"low_signal"}),
        (0x000800, set()),
        (0x001000, {"no_sensor"}),
        (0x002000, {"sensor_fault"}),
        (0x004000, {"sensor_fault"}),
        (0x008000, {"sensor_fault"}),
        (0x010000, {"sensor_fault"}),
        (0x020000, set()),
        (0x040000, {"sensor_fault"}),
        (0x080000, set()),
        (0x100000, set()),
        (0x200000, set()),
        (0x400000, set()),
        (0x800000, set()),
    ],
)
def test_exc_bit_table(bit, expected):
    p = masimo(mline(spo2="---", bpm="---", exc=f"{bit:06X}"))
    assert flags(p) == expected
    assert p.readings == p.rejections == []


def test_exc_zero_is_all_clear_and_values_pass_with_non_blind_flags():
    assert flags(masimo(mline(exc="000000"))) == set()
    p = masimo(mline(exc="000454"))  # low perfusion, interference, ambient light, low SIQ
    assert flags(p) == {"low_perfusion", "interference", "low_signal"}
    assert values(p) == {"spo2": 97, "hr": 80}


@pytest.mark.parametrize("exc", ["000001", "000002", "000008", "000020", "001000", "040000"])
def test_values_under_a_no_measurement_flag_are_refused(exc):
    p = masimo(mline(exc=exc))
    assert p.readings == []
    assert causes(p) == ["sensor_flag", "sensor_flag"]


def test_alarm_bits_other_than_silenced_raise_nothing():
    for alarm in ("0001", "0002", "0004", "0008", "0010", "0040", "3F00"):
        assert flags(masimo(mline(alarm=alarm))) == set()
    assert flags(masimo(mline(alarm="0020"))) == {"alarms_off"}
    assert flags(masimo(mline(alarm="0020", exc="000004"))) == {"alarms_off", "low_perfusion"}


def test_implausible_and_non_numeric_values():
    p = masimo(mline(spo2="101", bpm="400"))
    assert p.readings == []
    assert causes(p) == ["implausible", "implausible"]
    p = masimo(mline(spo2="9x7"))
    assert causes(p) == ["wrong_type"]
    assert values(p) == {"hr": 80}


def test_partial_dashes_are_no_value():
    p = masimo(mline(spo2="---", bpm="072"))
    assert values(p) == {"hr": 72}
    assert p.rejections == []


def test_a_line_without_exc_gives_no_status():
    p = masimo("09/15/10 15:10:29 SPO2=097% BPM=064 PI=11.82%")
    assert values(p) == {"spo2": 97, "hr": 64}
    assert p.statuses == []


def test_exc_or_alarm_not_hex_is_bad_status_and_no_status():
    for line in (mline(exc="00G800"), mline(alarm="00Z0"), mline(exc="")):
        p = masimo(line)
        assert causes(p) == ["bad_status"]
        assert p.statuses == []
        assert values(p) == {"spo2": 97, "hr": 80}


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"\x00\xff\xfe garbage at the wrong baud rate \x80\x81",
        b"SPO2=097% BPM=080",  # no date/time
        b"02/24/18 04:48:53",  # no fields
        b"02/24/18 04:48:53 SN=0000145838 PI=04.96%",  # none of SPO2, BPM, EXC
        b"2/24/18 04:48:53 SPO2=097% BPM=080 EXC=000800",
        b"02/24/2018 04:48:53 SPO2=097% BPM=080 EXC=000800",
        b"x" * 5000,
    ],
)
def test_not_a_masimo_line_is_one_bad_line(junk):
    p = masimo(junk)
    assert causes(p) == ["bad_line"]
    assert (p.readings, p.statuses) == ([], [])
    assert len(p.rejections[0].detail) < 120
    assert p.rejections[0].payload == junk.replace(b"SN=0000145838", b"SN=*")[:1024]


# ------------------------------------------------------------------------ device clock

STAMP = datetime(2018, 2, 24, 4, 48, 53, tzinfo=UTC).timestamp()


def test_device_clock_in_the_configured_zone():
    ctx = DeviceContext("icu", "7", "mon1", STAMP + 5, clock="device", tz=UTC)
    p = masimo(mline(exc="000004"), ctx)
    assert {r.ts for r in p.readings} == {STAMP}
    assert p.statuses[0].ts == STAMP
    berlin = ZoneInfo("Europe/Berlin")  # UTC+1 in February
    ctx = DeviceContext("icu", "7", "mon1", STAMP - 3600, clock="device", tz=berlin)
    assert {r.ts for r in masimo(mline(), ctx).readings} == {STAMP - 3600}


def test_device_clock_none_zone_is_the_local_zone():
    local = datetime(2018, 2, 24, 4, 48, 53).timestamp()  # naive: the local zone
    ctx = DeviceContext("icu", "7", "mon1", local, clock="device")
    assert {r.ts for r in masimo(mline(), ctx).readings} == {local}


def test_device_clock_off_refuses_values_but_keeps_the_status_at_receive_time():
    ctx = DeviceContext("icu", "7", "mon1", STAMP + 3600, clock="device", tz=UTC, max_skew_s=300)
    p = masimo(mline(exc="000004"), ctx)
    assert p.readings == []
    assert causes(p) == ["bad_ts"]
    assert "off by -3600 s" in p.rejections[0].detail
    assert p.statuses[0].ts == STAMP + 3600
    assert flags(p) == {"low_perfusion"}
    # Within the skew: accepted.
    ok = DeviceContext("icu", "7", "mon1", STAMP + 299, clock="device", tz=UTC, max_skew_s=300)
    assert len(masimo(mline(), ok).readings) == 2
    # Dashes only: nothing to refuse, no rejection.
    assert masimo(mline(spo2="---", bpm="---"), ctx).rejections == []


def test_receive_clock_ignores_the_device_date():
    p = masimo("13/45/99 25:61:61 SPO2=097% BPM=080 EXC=000800")  # not a date, not used
    assert {r.ts for r in p.readings} == {NOW}


def test_device_clock_with_an_impossible_date_is_bad_ts():
    ctx = DeviceContext("icu", "7", "mon1", NOW, clock="device", tz=UTC)
    p = masimo("02/30/18 04:48:53 SPO2=097% BPM=080 EXC=000800", ctx)
    assert causes(p) == ["bad_ts"]
    assert p.statuses[0].ts == NOW


# ------------------------------------------------------------------- Nellcor: samples


def nellcor_replay(frames: list[bytes], ctx: DeviceContext = CTX) -> list[Parsed]:
    parser = NellcorParser()
    out = [parser.parse(f, ctx) for f in frames]
    for p in out:
        check_well_formed(p, ctx)
    return out


def test_n560_capture():
    frames = lines(DATA / "nellcor_serial" / "n560_asixreader_javadoc.txt")
    assert len(frames) == 8
    got = nellcor_replay(frames)
    header, data = got[:3], got[3:]
    assert all(p == Parsed() for p in header)  # skipped silently
    assert [values(p) for p in data] == [
        {"spo2": 100, "hr": 105},
        {"spo2": 100, "hr": 104},
        {"spo2": 100, "hr": 102},
        {"spo2": 100, "hr": 101},
        {"spo2": 100, "hr": 101},
    ]
    assert [flags(p) for p in data] == [
        {"alarms_off"},
        {"alarms_off"},
        {"alarms_off", "motion"},
        {"alarms_off", "motion"},
        {"alarms_off"},
    ]
    assert all(p.rejections == [] for p in data)
    assert all(r.patient == "p42" and r.device == "mon1" for p in data for r in p.readings)


def test_n560_device_clock():
    frames = lines(DATA / "nellcor_serial" / "n560_asixreader_javadoc.txt")
    t0 = datetime(2004, 1, 7, 11, 24, 50, tzinfo=UTC).timestamp()
    ctx = DeviceContext("icu", "7", "mon1", t0 + 10, clock="device", tz=UTC)
    data = nellcor_replay(frames, ctx)[3:]
    assert [p.readings[0].ts - t0 for p in data] == [0, 2, 4, 6, 8]
    assert [p.statuses[0].ts - t0 for p in data] == [0, 2, 4, 6, 8]
    late = DeviceContext("icu", "7", "mon1", NOW, clock="device", tz=UTC)
    data = nellcor_replay(frames, late)[3:]
    assert all(causes(p) == ["bad_ts"] and p.readings == [] for p in data)
    assert all(p.statuses[0].ts == NOW for p in data)


# ------------------------------------------------------------------ Nellcor: examples

HEADING = b"TIME                 %SpO2   BPM     PA     Status"


def nline(spo2: str = "100", bpm: str = "105", pa: str = "88", codes: str = "") -> bytes:
    return f"07-Jan-04 11:24:50   {spo2:<3}     {bpm:<3}     {pa:>3}    {codes}".encode()


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ("", set()),
        ("AO", {"alarms_off"}),
        ("AS", {"alarms_off"}),
        ("MO", {"motion"}),
        ("PS", {"searching"}),
        ("LP", {"searching"}),
        ("LM", {"searching", "motion"}),
        ("SD", {"no_sensor"}),
        ("SO", {"sensor_off"}),
        ("LB BU", set()),
        ("PH PL SH SL", set()),
        ("ZZ", set()),  # unknown code: ignored
        ("MO    AS    AO", {"motion", "alarms_off"}),
    ],
)
def test_nellcor_status_codes(codes, expected):
    (p,) = nellcor_replay([nline(spo2="---", bpm="---", pa="---", codes=codes)])
    assert flags(p) == expected
    assert p.readings == p.rejections == []


def test_nellcor_values_under_sensor_off_are_refused():
    (p,) = nellcor_replay([nline(codes="SO")])
    assert causes(p) == ["sensor_flag", "sensor_flag"]
    (p,) = nellcor_replay([nline(codes="MO")])  # motion: values still count
    assert values(p) == {"spo2": 100, "hr": 105}


def test_nellcor_blank_value_is_placed_by_column():
    (p,) = nellcor_replay([nline(bpm="", codes="AO")])
    assert values(p) == {"spo2": 100}
    (p,) = nellcor_replay([nline(spo2="", codes="AO")])
    assert values(p) == {"hr": 105}
    # Columns from a heading line shifted by 4 characters.
    shifted = b"    " + HEADING
    _, p = nellcor_replay([shifted, b"    " + nline(spo2="")])
    assert values(p) == {"hr": 105}


def test_nellcor_out_of_range_and_other_header_lines():
    (p,) = nellcor_replay([nline(spo2="101", bpm="420")])
    assert causes(p) == ["implausible", "implausible"]
    headers = [
        b"NPB-295 VERSION 2.0.0.0 CRC: XXXX SpO2 Limit: 70-100% PR Limit: 60-160BPM",
        b"                             NEONATE           SAT-S OFF",
        b"   ",
    ]
    assert all(p == Parsed() for p in nellcor_replay(headers))


@pytest.mark.parametrize(
    "junk",
    [
        b"\x00\xff garbage",
        b"07-Jan-04 11:24:50   100     105      88    M0",  # damaged code
        b"07-Jan-04 11:24:50   100     105      88   12   AO",  # a fourth value
        b"07-Jan-04 11:24:50   100     105      88    AO MO PS LB SD",  # five codes
        b"07-Xyz-04 11:24:50   100     105      88",
        b"07-Jan-04 11:24:5   100     105      88",
    ],
)
def test_nellcor_bad_lines(junk):
    (p,) = nellcor_replay([junk])
    assert causes(p) == ["bad_line"]
    assert p.readings == p.statuses == []


# ------------------------------------------------------------------------------ jsonl


def jsonl(obj: object, ctx: DeviceContext = CTX) -> Parsed:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    p = JsonLinesParser().parse(raw, ctx)
    check_well_formed(p, ctx)
    return p


def test_jsonl_reading_object_with_and_without_ts():
    p = jsonl({"hr": 72, "spo2": 97})
    assert p.readings == [
        Reading(NOW, "icu", "7", "mon1", "hr", 72.0, "p42"),
        Reading(NOW, "icu", "7", "mon1", "spo2", 97.0, "p42"),
    ]
    p = jsonl({"ts": NOW - 30, "hr": 72, "patient": "other", "device": "pump"})
    assert p.readings == [Reading(NOW - 30, "icu", "7", "pump", "hr", 72.0, "other")]


def test_jsonl_status_and_rejections_as_the_mqtt_codec():
    p = jsonl({"status": ["sensor_off"], "spo2": 97})
    assert p.statuses == [DeviceStatus(NOW, "icu", "7", "mon1", frozenset({"sensor_off"}), "p42")]
    assert causes(p) == ["sensor_flag"]
    assert causes(jsonl(b"{not json")) == ["malformed_json"]
    assert causes(jsonl({"ts": NOW + 301, "hr": 70})) == ["future_ts"]
    assert causes(jsonl({"hr": 700, "pulse": 3})) == ["implausible", "unknown_vital"]
    assert causes(jsonl(b"\xff\xfe")) == ["not_utf8"]
    assert jsonl(b"   ") == Parsed()


def test_jsonl_max_skew_is_the_future_limit():
    ctx = DeviceContext("icu", "7", "mon1", NOW, max_skew_s=10)
    assert causes(jsonl({"ts": NOW + 11, "hr": 70}, ctx)) == ["future_ts"]
    assert values(jsonl({"ts": NOW + 9, "hr": 70}, ctx)) == {"hr": 70}


def test_jsonl_payload_kept_at_most_1_kib():
    p = jsonl(b'{"hr": "' + b"x" * 3000 + b'"}')
    assert causes(p) == ["wrong_type"]
    assert len(p.rejections[0].payload) == 1024


# -------------------------------------------------------------------------------- csv


def csv_replay(text: str, ctx: DeviceContext = CTX) -> list[Parsed]:
    parser = CsvParser()
    out = [parser.parse(ln, ctx) for ln in LineFramer().feed(text.encode())]
    for p in out:
        check_well_formed(p, ctx)
    return out


def test_csv_header_then_rows():
    got = csv_replay(
        "ts,HR,spo2,rr\n1764323990,72,97,14\n2025-11-28T10:00:05+01:00,73,,15\n,74,96,\n"
    )
    assert got[0] == Parsed()
    assert [[(r.ts, r.vital, r.value) for r in p.readings] for p in got[1:]] == [
        [(NOW - 10, "hr", 72), (NOW - 10, "spo2", 97), (NOW - 10, "rr", 14)],
        [(NOW + 5 - 3600, "hr", 73), (NOW + 5 - 3600, "rr", 15)],
        [(NOW, "hr", 74), (NOW, "spo2", 96)],
    ]
    assert all(r.patient == "p42" for p in got for r in p.readings)


def test_csv_without_ts_column_uses_receive_time():
    _, p = csv_replay("hr,spo2\n60,99\n")
    assert {r.ts for r in p.readings} == {NOW}


def test_csv_unknown_columns_rejected_once_then_ignored():
    got = csv_replay("ts,hr,pulse,nibp\n,70,71,120\n,72,73,121\n")
    assert causes(got[0]) == ["unknown_vital"]
    assert "pulse" in got[0].rejections[0].detail
    assert [values(p) for p in got[1:]] == [{"hr": 70}, {"hr": 72}]
    assert all(p.rejections == [] for p in got[1:])


def test_csv_wrong_field_count_and_bad_values():
    got = csv_replay("hr,spo2\n70\n70,97,1\n700,abc\n70,nan\n")
    assert [causes(p) for p in got[1:]] == [
        ["bad_line"],
        ["bad_line"],
        ["implausible", "wrong_type"],
        ["not_finite"],
    ]
    assert values(got[4]) == {"hr": 70}


def test_csv_bad_ts():
    got = csv_replay("ts,hr\n2025-11-28T10:00:00,70\nyesterday,70\n4764324000,70\n")
    assert [causes(p) for p in got[1:]] == [["bad_ts"], ["bad_ts"], ["bad_ts"]]
    assert all(p.readings == [] for p in got)


def test_csv_o2_and_avpu():
    _, p = csv_replay("o2,avpu,temp\ntrue,v,36.9\n")
    assert values(p) == {"o2": 1, "avpu": 2, "temp": 36.9}
    _, p = csv_replay("o2,avpu\n2,X\n")
    assert causes(p) == ["wrong_type", "wrong_type"]


def test_csv_header_again_resets_and_a_new_header_replaces():
    got = csv_replay("hr,spo2\n70,97\nhr,spo2\n71,98\nspo2,rr,hr\n96,12,60\n")
    assert [values(p) for p in got] == [
        {},
        {"hr": 70, "spo2": 97},
        {},
        {"hr": 71, "spo2": 98},
        {},
        {"spo2": 96, "rr": 12, "hr": 60},
    ]
    assert all(p.rejections == [] for p in got)


def test_csv_rows_before_a_usable_header_are_bad_lines():
    got = csv_replay("70,97\npulse,sat\n70,97\nhr\n70\n")
    assert [causes(p) for p in got] == [
        ["bad_line"],
        ["unknown_vital"],
        ["bad_line"],
        [],
        [],
    ]
    assert values(got[4]) == {"hr": 70}


def test_csv_blank_lines_and_bom():
    got = csv_replay("\ufeffhr\n\n   \n70\n")
    assert [values(p) for p in got] == [{}, {}, {"hr": 70}]


# ------------------------------------------------------------------------- properties

PARSERS = (MasimoParser, NellcorParser, JsonLinesParser, CsvParser)
REAL = sample_lines("masimo_serial") + sample_lines("nellcor_serial")
CLOCK_CTX = DeviceContext("icu", "7", "mon1", NOW, clock="device", tz=UTC, patient="p42")


@PROPS
@given(frames=st.lists(st.binary(max_size=300), max_size=6))
def test_arbitrary_bytes_never_raise(frames):
    for make in PARSERS:
        parser = make()
        for ctx in (CTX, CLOCK_CTX):
            for f in frames:
                check_well_formed(parser.parse(f, ctx), ctx)


@PROPS
@given(
    frames=st.lists(
        st.text(alphabet="0123456789-/:,.%= ABCDEFHIKLMNOPRSTVXZabcehnrstv+e", max_size=120),
        max_size=6,
    )
)
def test_arbitrary_format_like_text_never_raises(frames):
    for make in PARSERS:
        parser = make()
        parser.parse(b"ts,hr,spo2", CTX)  # a CSV header first (ignored by the others)
        parser.parse(HEADING, CTX)
        for f in frames:
            check_well_formed(parser.parse(f.encode(), CLOCK_CTX), CLOCK_CTX)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    line = bytearray(draw(st.sampled_from(REAL)))
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(line)))
        op = draw(st.sampled_from(["flip", "delete", "insert", "dup"]))
        if op == "flip" and i < len(line):
            line[i] = draw(st.integers(0, 255))
        elif op == "delete" and i < len(line):
            del line[i : i + draw(st.integers(1, 8))]
        elif op == "insert":
            line[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            line[i:i] = line[i : i + draw(st.integers(1, 20))]
    return bytes(line)


@PROPS
@given(frames=st.lists(mutated(), min_size=1, max_size=4))
def test_corrupted_real_lines_never_raise(frames):
    for make in PARSERS:
        parser = make()
        for ctx in (CTX, CLOCK_CTX):
            for f in frames:
                check_well_formed(parser.parse(f, ctx), ctx)


def expected_exc_flags(exc: int) -> set[str]:
    return {flag for bit, flag in EXC_FLAGS.items() if exc & bit}


@PROPS
@given(
    spo2=st.one_of(st.integers(0, 100), st.none()),
    bpm=st.one_of(st.integers(0, 350), st.none()),
    exc=st.integers(0, 0xFFFFFF),
    alarm=st.integers(0, 0xFFFF),
    full=st.booleans(),
)
def test_masimo_round_trip(spo2, bpm, exc, alarm, full):
    s = "---" if spo2 is None else f"{spo2:03d}"
    b = "---" if bpm is None else f"{bpm:03d}"
    if full:  # Rad-8 / Radical-7 layout
        line = (
            f"02/24/18 04:48:53 SN=0000145838 SPO2={s}% BPM={b} PI=04.96% SPCO=--.-% "
            f"SPMET=--.-% DESAT=-- PIDELTA=+-- ALARM={alarm:04X} EXC={exc:06X}\r"
        )
    else:  # Radical-5 layout
        line = f"09/15/10 15:10:29 SPO2={s}% BPM={b} PI=11.82% ALARM={alarm:X} EXC={exc:X}"
    p = masimo(line)
    want = expected_exc_flags(exc) | ({"alarms_off"} if alarm & 0x20 else set())
    assert flags(p) == want
    sent = {k: float(v) for k, v in (("spo2", spo2), ("hr", bpm)) if v is not None}
    if any(DEVICE_FLAGS[f][3] for f in want):
        assert p.readings == []
        assert causes(p) == ["sensor_flag"] * len(sent)
    else:
        assert values(p) == sent
        assert p.rejections == []


@PROPS
@given(
    spo2=st.one_of(st.integers(0, 100), st.none()),
    bpm=st.one_of(st.integers(0, 350), st.none()),
    pa=st.one_of(st.integers(0, 254), st.none()),
    codes=st.lists(
        st.sampled_from(["AO", "AS", "MO", "PS", "LP", "LM", "SD", "SO", "LB", "PH"]),
        max_size=4,
        unique=True,
    ),
)
def test_nellcor_round_trip(spo2, bpm, pa, codes):
    table = {
        "AO": {"alarms_off"},
        "AS": {"alarms_off"},
        "MO": {"motion"},
        "PS": {"searching"},
        "LP": {"searching"},
        "LM": {"searching", "motion"},
        "SD": {"no_sensor"},
        "SO": {"sensor_off"},
    }
    dash = "---"
    frame = nline(
        dash if spo2 is None else str(spo2),
        dash if bpm is None else str(bpm),
        dash if pa is None else str(pa),
        "    ".join(codes),
    )
    (p,) = nellcor_replay([HEADING, frame])[1:]
    want = set().union(*(table.get(c, set()) for c in codes))
    assert flags(p) == want
    sent = {k: float(v) for k, v in (("spo2", spo2), ("hr", bpm)) if v is not None}
    if any(DEVICE_FLAGS[f][3] for f in want):
        assert causes(p) == ["sensor_flag"] * len(sent)
    else:
        assert values(p) == sent
        assert p.rejections == []


@PROPS
@given(
    body=st.lists(
        st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=12
    ),
    seps=st.lists(st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n"]), min_size=12, max_size=12),
    cuts=st.lists(st.integers(0, 800), max_size=10),
)
def test_line_framer_is_independent_of_chunking(body, seps, cuts):
    stream = b"".join(line + sep for line, sep in zip(body, seps, strict=False))
    whole = LineFramer(max_bytes=64).feed(stream)
    assert whole == [line for line in body if line]
    framer = LineFramer(max_bytes=64)
    got: list[bytes] = []
    last = 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts):
        got += framer.feed(stream[last:cut])
        last = cut
    got += framer.feed(stream[last:])
    assert got == whole
    assert framer.too_long == 0


def test_line_framer_drops_a_line_over_max_bytes_that_arrives_in_pieces():
    framer = LineFramer(max_bytes=16)
    out = framer.feed(b"ok\r\n" + b"x" * 10)
    out += framer.feed(b"x" * 10)  # 20 bytes pending > 16: dropped
    out += framer.feed(b"x" * 10 + b"\r\nnext\r\n")
    assert out == [b"ok", b"next"]
    assert framer.too_long == 1
