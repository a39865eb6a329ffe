"""HL7 v2 ORU^R01: the parser on real samples, the ACK, MLLP framing, the MLLP listener.

Samples: tests/data/device_messages/hl7_misc (see tests/data/SOURCES.md). The listener is
tested over real loopback TCP; every wait is on an event or a read, with a timeout.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import Hl7MllpSourceConfig
from monitor.model import Rejection
from monitor.sources import Batch
from monitor.sources.devices import DeviceContext, MllpFramer, frame
from monitor.sources.devices.hl7 import Ack, Hl7Parser, ack, parse_dtm, resolve_observation
from monitor.sources.hl7mllp import Hl7MllpSource

DATA = Path(__file__).parent / "data" / "device_messages" / "hl7_misc"
COMEN = (DATA / "comen_nc_monitor_pcd01.hl7").read_bytes()
NORTHERN = (DATA / "northern_patient_monitor_dart_comment.hl7").read_bytes()
PHILIPS = (DATA / "philips_center_doc_sample.hl7").read_bytes()
EFFICIA = (DATA / "philips_efficia_cm_readme_example.hl7").read_bytes()
SAMPLES = [COMEN, NORTHERN, PHILIPS, EFFICIA]


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def ctx(now: float, **kw: Any) -> DeviceContext:
    base: dict[str, Any] = {"clock": "device", "tz": UTC, "max_skew_s": 300.0}
    base.update(kw)
    return DeviceContext("icu", "fixed-bed", "mon", now, **base)


def values(parsed: Any) -> dict[tuple[str, str], float]:
    return {(r.device, r.vital): r.value for r in parsed.readings}


def causes(parsed: Any) -> list[str]:
    return [r.cause for r in parsed.rejections]


def oru(*obx: str, msh7: str = "20250610015127+0800", pv1: str = "", obr7: str = "") -> bytes:
    segs = [
        f"MSH|^~\\&|MON1|FAC1|CIS|HOSP|{msh7}||ORU^R01^ORU_R01|C42|P|2.6",
        "PID|||P77||Doe^Jane",
        f"PV1||I|{pv1}",
        f"OBR|1||||||{obr7}",
        *obx,
    ]
    return ("\r".join(segs) + "\r").encode()


NOW = epoch("2025-06-10T01:51:27+08:00")

# ------------------------------------------------------------------ samples


def test_comen_pcd01_sample_with_mdc_codes() -> None:
    parsed, a = Hl7Parser(bind="pv1").parse_message(COMEN, ctx(NOW))
    assert a.code == "AA"
    assert a.control_id == "202506100151270003"
    assert values(parsed) == {
        ("NC_Monitor.pleth", "spo2"): 97.0,
        ("NC_Monitor.pulse", "hr"): 59.0,  # 149522^MDC_PULS_RATE: the mnemonic decides
        ("NC_Monitor.resp", "rr"): 20.0,
        ("NC_Monitor.temp", "temp"): 37.0,
        ("NC_Monitor.nibp", "sbp"): 120.0,
        ("NC_Monitor.nibp", "dbp"): 80.0,
        ("NC_Monitor.nibp", "map"): 90.0,
    }
    # the second SpO2 channel (1.3.2, same value, same instant) is dropped silently
    assert parsed.rejections == []
    assert parsed.statuses == []
    r = parsed.readings[0]
    assert (r.ts, r.ward, r.bed, r.patient) == (NOW, "icu", "10", "10006")  # PV1-3 ^^&10


def test_invalid_values_sample_markers_implausible_and_duplicate_set_ids() -> None:
    msg_time = epoch("2025-06-12T09:08:38+00:00")
    parsed, a = Hl7Parser(bind="pv1").parse_message(NORTHERN, ctx(msg_time, max_skew_s=3600))
    assert a.code == "AA"
    assert a.text == "1 value(s) refused"
    # SpO2 -100 and its pulse rate -100: no reading, technical state of the oximeter
    assert [(s.device, s.flags, s.ts) for s in parsed.statuses] == [
        ("northern.pleth", frozenset({"no_sensor"}), msg_time)
    ]
    assert parsed.statuses[0].patient == "0001"
    # 384.5 °C is implausible; set ids 3 and 4 come twice, all seven OBX count on their own
    assert causes(parsed) == ["implausible"]
    assert "384.5" in parsed.rejections[0].detail
    cuff = epoch("2025-06-12T09:33:19+00:00")  # OBX-14 of the APERIODIC cuff values
    assert [(r.device, r.vital, r.value, r.ts) for r in parsed.readings] == [
        ("northern.temp", "temp", 38.5, msg_time),
        ("northern.nibp", "sbp", 142.0, cuff),  # 150031^MDC_PRESS_CUFF_SYS: mnemonic wins
        ("northern.nibp", "map", 114.0, cuff),
        ("northern.nibp", "dbp", 100.0, cuff),
    ]
    assert {r.bed for r in parsed.readings} == {"fixed-bed"}  # PV1-3 ^^^: the context's


def test_invalid_values_sample_times_beyond_skew_are_bad_ts() -> None:
    msg_time = epoch("2025-06-12T09:08:38+00:00")
    parsed = Hl7Parser().parse(NORTHERN, ctx(msg_time))  # cuff values 25 min later
    assert causes(parsed).count("bad_ts") == 3
    assert {r.vital for r in parsed.readings} == {"temp"}


def test_philips_information_center_sample() -> None:
    now = datetime(2003, 1, 10, 15, 26, 30).timestamp()  # OBR-7, no offset: local zone
    parsed, a = Hl7Parser(bind="pv1").parse_message(PHILIPS, ctx(now, tz=None))
    assert (a.code, a.control_id, a.version) == ("AA", "HP104220879017992", "2.2")
    assert values(parsed) == {
        ("mon.pleth", "spo2"): 95.0,
        ("mon.resp", "rr"): 15.0,
        ("mon.ecg", "hr"): 60.0,
        ("mon.abp", "sbp"): 120.0,
        ("mon.abp", "dbp"): 70.0,
        ("mon.abp", "map"): 91.0,
    }
    assert {(r.ts, r.ward, r.bed, r.patient) for r in parsed.readings} == {
        (now, "icu", "Doc1", "MRN5733")  # PV1-3 ^^Doc1&5&1; no MSH-3: ctx.device
    }


def test_philips_efficia_sample_heart_rate_and_pulse_are_two_series() -> None:
    now = epoch("2013-01-03T02:17:00+00:00")
    parsed = Hl7Parser(bind="pv1").parse(EFFICIA, ctx(now))
    assert values(parsed) == {
        ("EfficiaCM.ecg", "hr"): 60.0,
        ("EfficiaCM.pleth", "spo2"): 96.0,
        ("EfficiaCM.resp", "rr"): 20.0,
        ("EfficiaCM.pulse", "hr"): 59.0,
    }
    assert {r.ts for r in parsed.readings} == {now}
    assert {r.patient for r in parsed.readings} == {"1234"}


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_lf_and_crlf_segment_ends(ending: bytes) -> None:
    p = Hl7Parser()
    assert p.parse(COMEN.replace(b"\r", ending), ctx(NOW)) == p.parse(COMEN, ctx(NOW))


# ------------------------------------------------------------------ mapping


@pytest.mark.parametrize(
    ("obx3", "target"),
    [
        ("150456^MDC_PULS_OXIM_SAT_O2^MDC", ("spo2", "pleth")),
        ("147842^MDC_ECG_HEART_RATE^MDC", ("hr", "ecg")),
        ("149530^^MDC", ("hr", "pleth")),
        ("151562", ("rr", "resp")),
        ("^MDC_AWAY_RESP_RATE^MDC", ("rr", "co2")),
        ("150037^MDC_PRESS_BLD_ART_ABP_SYS^MDC", ("sbp", "abp")),
        ("150017^MDC_PRESS_BLD_SYS^MDC", ("sbp", "abp")),
        ("150023^MDC_PRESS_BLD_NONINV_MEAN^MDC", ("map", "nibp")),
        ("150364^MDC_TEMP_BODY^MDC", ("temp", "temp")),
        ("151708^MDC_CONC_AWAY_CO2_ET^MDC", ("etco2", "co2")),
        ("0002-4182^HR^MDIL", ("hr", "ecg")),
        ("0002-4bb8^^MDIL", ("spo2", "pleth")),  # by MDIL code alone
        ("x^nbpS^L", ("sbp", "nibp")),
        ("x^Tcore^L", ("temp", "temp")),
        ("x^etCO2^L", ("etco2", "co2")),
        ("150388^MDC_TEMP_SKIN^MDC", None),
        ("160324^MDC_SPO2_SIGNAL_QUALITY_INDEX^MDC", None),
        ("150344^MDC_TEMP_SKIN^MDC", None),  # a known code under another mnemonic
        ("8867-4^Heart rate^LN", ("hr", "ecg")),
    ],
)
def test_observation_mapping(obx3: str, target: tuple[str, str] | None) -> None:
    assert resolve_observation(obx3.split("^")) == target


def test_units_convert_and_refuse() -> None:
    msg = oru(
        "OBX|1|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC||16|265987^MDC_DIM_KILO_PASCAL^MDC",
        "OBX|2|NM|150344^MDC_TEMP^MDC||98.6|[degF]^degF^UCUM",
        "OBX|3|NM|147842^MDC_ECG_HEART_RATE^MDC||1.2|Hz",
        "OBX|4|NM|147842^MDC_ECG_HEART_RATE^MDC||72|262688^MDC_DIM_PERCENT^MDC",
        "OBX|5|NM|151708^MDC_AWAY_CO2_ET^MDC||5|kPa",
        "OBX|6|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC||96|",
        "OBX|7|NM|151562^MDC_RESP_RATE^MDC||14|0004-0ae0^rpm^MDIL",
    )
    parsed = Hl7Parser(bind="pv1").parse(msg, ctx(NOW))
    got = values(parsed)
    assert got[("MON1.nibp", "sbp")] == pytest.approx(120.01, abs=0.01)
    assert got[("MON1.temp", "temp")] == pytest.approx(37.0)
    assert got[("MON1.co2", "etco2")] == pytest.approx(37.5, abs=0.01)
    assert got[("MON1.pleth", "spo2")] == 96.0  # no unit: vitalmon's
    assert got[("MON1.resp", "rr")] == 14.0
    assert ("MON1.ecg", "hr") not in got
    assert causes(parsed) == ["bad_unit", "bad_unit"]  # "Hz" unknown here; % is not a rate


def test_markers_result_status_and_wrong_type() -> None:
    msg = oru(
        "OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC||-999|%",
        "OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|||/min|||||X",
        "OBX|3|NM|151562^MDC_RESP_RATE^MDC||12|/min|||||N",
        "OBX|4|NM|150344^MDC_TEMP^MDC||---|Cel",
        "OBX|5|NM|150021^MDC_PRESS_BLD_NONINV_SYS^MDC|||mmHg",
        "OBX|6|SN|150022^MDC_PRESS_BLD_NONINV_DIA^MDC||=^81|mmHg",
        "OBX|7|SN|150023^MDC_PRESS_BLD_NONINV_MEAN^MDC||>^300|mmHg",
        "OBX|8|ST|0^Comment^L||hello",
        "OBX|9|NM|149530^MDC_PULS_OXIM_PULS_RATE^MDC||NaN|/min",
    )
    parsed = Hl7Parser(bind="pv1").parse(msg, ctx(NOW))
    assert {(s.device, s.flags) for s in parsed.statuses} == {
        ("MON1.pleth", frozenset({"no_sensor"})),
        ("MON1.ecg", frozenset({"no_sensor"})),
    }
    assert values(parsed) == {("MON1.nibp", "dbp"): 81.0}
    assert causes(parsed) == ["wrong_type", "wrong_type", "wrong_type"]
    assert all("Jane" not in r.detail and "P77" not in r.detail for r in parsed.rejections)


def test_duplicate_values_first_wins() -> None:
    msg = oru(
        "OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.7.1|80|/min",
        "OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.7.2|80|/min",
        "OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.7.3|95|/min",
        "OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.7.4|80|/min||||||||20250610015128+0800",
    )
    parsed = Hl7Parser().parse(msg, ctx(NOW))
    assert [(r.value, r.ts) for r in parsed.readings] == [(80.0, NOW), (80.0, NOW + 1)]
    assert causes(parsed) == ["duplicate"]


def test_device_from_obx18_and_sanitised() -> None:
    msg = oru("OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC||97|%|||||F|||||||a/b+c#d^^x^EUI-64")
    parsed = Hl7Parser().parse(msg, ctx(NOW))
    assert [r.device for r in parsed.readings] == ["a_b_c_d.pleth"]


# ------------------------------------------------------------------ binding


SPO2 = "OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC||97|%"


@pytest.mark.parametrize(
    ("pv1", "beds", "where"),
    [
        ("ICU2^R12^B3", {}, ("ICU2", "B3")),
        ("ICU2^R12", {}, ("ICU2", "R12")),  # no bed: the room
        ("^^7", {}, ("icu", "7")),  # no point of care: ctx.ward
        ("ICU2^^", {}, ("icu", "fixed-bed")),  # no bed, no room: the context's
        ("", {}, ("icu", "fixed-bed")),
        ("ICU2^R12^B3", {"ICU2^R12^B3": "cardio/4"}, ("cardio", "4")),
        ("ICU2^R12^B3^^^", {"ICU2^R12^B3": "cardio/4"}, ("cardio", "4")),
        ("ICU2^R12^B3", {"FAC1": "ward9/1"}, ("ward9", "1")),  # MSH-4
        ("a/b^^c+d", {}, ("a_b", "c_d")),
    ],
)
def test_pv1_binding(pv1: str, beds: dict[str, str], where: tuple[str, str]) -> None:
    parsed = Hl7Parser(beds, bind="pv1").parse(oru(SPO2, pv1=pv1), ctx(NOW))
    assert [(r.ward, r.bed) for r in parsed.readings] == [where]
    assert parsed.readings[0].patient == "P77"


def test_fixed_binding_ignores_pv1_and_beds() -> None:
    p = Hl7Parser({"ICU2^R12^B3": "cardio/4"}, bind="fixed")
    parsed = p.parse(oru(SPO2, pv1="ICU2^R12^B3"), ctx(NOW))
    assert [(r.ward, r.bed) for r in parsed.readings] == [("icu", "fixed-bed")]


def test_bad_beds_mapping_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="ward/bed"):
        Hl7Parser({"x": "nobed"})


# ------------------------------------------------------------------ time


def test_time_precedence_offsets_and_zone() -> None:
    msg = oru(
        "OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC||97|%|||||F|||20250610015000",
        "OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC||70|/min|||||F|||garbage",
        "OBX|3|NM|151562^MDC_RESP_RATE^MDC||14|/min|||||F|||20250609175100.25-0000",
        msh7="20250610015127+0800",
        obr7="20250610015100+0800",
    )
    plus8 = timezone(timedelta(hours=8))
    parsed = Hl7Parser().parse(msg, ctx(NOW, tz=plus8))
    ts = {r.vital: r.ts for r in parsed.readings}
    assert ts["spo2"] == epoch("2025-06-10T01:50:00+08:00")  # OBX-14, no offset: ctx.tz
    assert ts["hr"] == epoch("2025-06-10T01:51:00+08:00")  # unparsable OBX-14: OBR-7
    assert ts["rr"] == epoch("2025-06-09T17:51:00.25+00:00")  # with its own offset
    no_obr = oru(SPO2, msh7="20250610015127+0800")
    assert Hl7Parser().parse(no_obr, ctx(NOW)).readings[0].ts == NOW  # MSH-7


def test_receive_clock_and_unparsable_times_use_now() -> None:
    later = NOW + 86400
    msg = oru(SPO2)
    assert Hl7Parser(clock="receive").parse(msg, ctx(later)).readings[0].ts == later
    assert Hl7Parser().parse(msg, ctx(later, clock="receive")).readings[0].ts == later
    no_times = oru(SPO2, msh7="")
    assert Hl7Parser().parse(no_times, ctx(later)).readings[0].ts == later


def test_future_times_refused_as_bad_ts_past_times_are_history() -> None:
    parsed = Hl7Parser().parse(oru(SPO2), ctx(NOW - 301))  # the message is 301 s ahead
    assert causes(parsed) == ["bad_ts"]
    assert parsed.readings == []
    assert Hl7Parser().parse(oru(SPO2), ctx(NOW - 299)).readings
    # an interface engine resending a day-old queue: stored at the message's time
    late = Hl7Parser().parse(oru(SPO2), ctx(NOW + 86400))
    assert [r.ts for r in late.readings] == [NOW]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("202506100151", "2025-06-10T01:51:00+00:00"),
        ("20250610015127.1234+0130", "2025-06-10T01:51:27.1234+01:30"),
        ("20250610015127^S", "2025-06-10T01:51:27+00:00"),
        ("20250610", None),
        ("20251310015127", None),
        ("20250610015127+2400", None),
        ("", None),
    ],
)
def test_parse_dtm(raw: str, expected: str | None) -> None:
    got = parse_dtm(raw, UTC)
    assert got == (None if expected is None else epoch(expected))


# ------------------------------------------------------------------ refusals and ACK


def test_unsupported_message_type_gets_ae() -> None:
    adt = b"MSH|^~\\&|ADT1|H|VM|V|20250610015127||ADT^A01|MSG7|P|2.5\rPID|||P1||X^Y\r"
    parsed, a = Hl7Parser().parse_message(adt, ctx(NOW))
    assert causes(parsed) == ["unsupported_message"]
    assert parsed.readings == [] and parsed.statuses == []
    assert (a.code, a.control_id, a.error) == ("AE", "MSG7", "200")
    segs = ack(a, control_id="ACK1").decode().split("\r")
    assert segs[-1] == ""
    msh, msa, err = (s.split("|") for s in segs[:3])
    assert msh[2:5] == ["VM", "V", "ADT1"] and msh[5] == "H"  # swapped
    # the trigger event is echoed: an ADT^A01 is answered ACK^A01^ACK
    assert (msh[8], msh[9], msh[10], msh[11]) == ("ACK^A01^ACK", "ACK1", "P", "2.5")
    assert msa[:3] == ["MSA", "AE", "MSG7"]
    assert "ADT^A01" in msa[3].replace("\\S\\", "^")
    assert err[0] == "ERR" and err[3].startswith("200^")


@pytest.mark.parametrize("junk", [b"", b"hello", b"PID|||1\r", b"MSH", b"MSH|", b"\xff\xfe"])
def test_not_hl7_gets_ae(junk: bytes) -> None:
    parsed, a = Hl7Parser().parse_message(junk, ctx(NOW))
    assert causes(parsed) == ["malformed_hl7"]
    assert a.code == "AE"
    assert ack(a).startswith(b"MSH|^~\\&|")


def test_ack_aa_for_sample() -> None:
    _, a = Hl7Parser().parse_message(COMEN, ctx(NOW))
    text = ack(a, now=0).decode()
    msh, msa, end = text.split("\r")
    assert end == ""
    fields = msh.split("|")
    assert fields[2:7] == ["vitalmon", "", "NC_Monitor", "KC261551373G", "19700101000000+0000"]
    assert fields[8] == "ACK^R01^ACK" and fields[11] == "2.6"
    assert fields[9] and fields[9] != a.control_id  # a control id of its own
    assert msa == "MSA|AA|202506100151270003|"
    assert "ERR" not in text


def test_ack_escapes_and_old_version_err() -> None:
    a = Ack("AE", "id|1", "bad ^ thing\r", "102", version="2.3")
    segs = ack(a, control_id="X").decode("utf-8").split("\r")
    assert segs[1] == "MSA|AE|id|1|bad \\S\\ thing "  # control_id is given already encoded
    assert segs[2].startswith("ERR|^^^102&")


# ------------------------------------------------------------------ properties


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_never_raise(data: bytes) -> None:
    parsed, a = Hl7Parser(bind="pv1").parse_message(data, ctx(NOW))
    assert a.code in ("AA", "AE", "AR")
    assert isinstance(ack(a), bytes)
    assert all(isinstance(r, Rejection) for r in parsed.rejections)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SAMPLES),
    st.lists(
        st.tuples(
            st.integers(0, 2000),
            st.sampled_from([b"", b"|", b"^", b"&", b"~", b"\\", b"\r", b"\n", b"\x00", b"-1"]),
            st.integers(0, 3),
        ),
        max_size=6,
    ),
    st.integers(0, 2000),
)
def test_corrupted_samples_never_raise(
    sample: bytes, edits: list[tuple[int, bytes, int]], cut: int
) -> None:
    data = bytearray(sample)
    for pos, insert, delete in edits:
        p = pos % (len(data) + 1)
        data[p : p + delete] = insert
    data = data[: max(cut, 8)]
    parsed, a = Hl7Parser({"^^&10": "w/1"}, bind="pv1").parse_message(bytes(data), ctx(NOW))
    ack(a)
    for r in parsed.readings:
        assert "/" not in r.device + r.ward + r.bed


_payload = st.binary(max_size=200).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
_garbage = st.binary(max_size=30).map(lambda b: b.replace(b"\x0b", b""))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(_garbage, _payload), max_size=6),
    st.lists(st.integers(1, 50), min_size=1, max_size=20),
)
def test_mllp_framer_any_chunking_same_messages(
    parts: list[tuple[bytes, bytes]], sizes: list[int]
) -> None:
    stream = b"".join(g + frame(p) for g, p in parts)
    framer = MllpFramer(1024)
    got: list[bytes] = []
    i = 0
    k = 0
    while i < len(stream):
        n = sizes[k % len(sizes)]
        got += framer.feed(stream[i : i + n])
        i += n
        k += 1
    assert got == [p for _, p in parts]
    assert framer.garbage == sum(len(g) for g, _ in parts)
    assert framer.too_long == 0


# ------------------------------------------------------------------ the listener


def config(**kw: Any) -> Hl7MllpSourceConfig:
    """Port 0: the system picks a free port; the test reads ``source.port``."""
    base: dict[str, Any] = {"type": "hl7-mllp", "listen": "127.0.0.1:0", "clock": "receive"}
    base.update(kw)
    return Hl7MllpSourceConfig(**base)


class Harness:
    """A running source, an emit that records batches, and dead letters."""

    def __init__(self, source: Hl7MllpSource, commit: Callable[[Batch], None]) -> None:
        self.source = source
        self.batches: list[Batch] = []
        self.rejected: list[Rejection] = []
        self.emitted = asyncio.Condition()
        self.commit = commit
        self.task: asyncio.Task[None] | None = None

    async def emit(self, batch: Batch) -> None:
        async with self.emitted:
            self.batches.append(batch)
            self.emitted.notify_all()
        self.commit(batch)

    async def wait_batches(self, n: int) -> None:
        async with self.emitted:
            await asyncio.wait_for(self.emitted.wait_for(lambda: len(self.batches) >= n), 5)

    async def __aenter__(self) -> Harness:
        self.task = asyncio.create_task(self.source.run(self.emit, self.rejected.append))
        await asyncio.wait_for(self.source.listening.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.source.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert self.source.port
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.source.port), 5)


def commit_in_thread(batch: Batch) -> None:
    """Like a journal committing in another thread: done from a foreign thread."""
    assert batch.done is not None
    threading.Thread(target=batch.done).start()


async def read_acks(reader: asyncio.StreamReader, n: int) -> list[list[str]]:
    """n framed ACKs -> their MSA segments' fields."""
    framer = MllpFramer()
    got: list[bytes] = []
    while len(got) < n:
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert data, "connection closed before the ACKs came"
        got += framer.feed(data)
    assert framer.garbage == 0
    out = []
    for msg in got:
        segs = msg.decode().split("\r")
        assert segs[0].split("|")[8].startswith("ACK^")
        out.append(next(s for s in segs if s.startswith("MSA|")).split("|"))
    return out


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_listener_two_samples_with_garbage_then_a_non_oru() -> None:
    async def main() -> None:
        src = Hl7MllpSource(config())
        async with Harness(src, commit_in_thread) as h:
            reader, writer = await h.connect()
            writer.write(frame(COMEN) + b"noise\r\n" + frame(EFFICIA))
            acks = await read_acks(reader, 2)
            assert [a[1:3] for a in acks] == [
                ["AA", "202506100151270003"],
                ["AA", "CN92390246..."],
            ]
            assert len(h.batches) == 2
            assert {(r.device, r.vital) for r in h.batches[1].readings} >= {
                ("EfficiaCM.ecg", "hr"),
                ("EfficiaCM.pulse", "hr"),
            }
            assert {r.ward for b in h.batches for r in b.readings} == {"default"}
            writer.write(frame(b"MSH|^~\\&|A|B|C|D|20250101||ADT^A08|Q9|P|2.5\r"))
            (ae,) = await read_acks(reader, 1)
            assert ae[1:3] == ["AE", "Q9"]
            assert [r.cause for r in h.rejected] == ["unsupported_message"]
            assert {r.topic for r in h.rejected} == {"hl7-mllp"}
            writer.close()
        c = src.counts
        assert (c["messages"], c["acked_aa"], c["acked_ae"], c["connections"]) == (3, 2, 1, 1)
        assert c["garbage"] == len(b"noise\r\n")

    run(main())


def test_listener_acks_only_after_commit_and_in_arrival_order() -> None:
    async def main() -> None:
        src = Hl7MllpSource(config())
        async with Harness(src, lambda b: None) as h:  # nothing commits by itself
            reader, writer = await h.connect()
            writer.write(frame(PHILIPS) + frame(COMEN))
            await h.wait_batches(2)
            assert src.counts["acked_aa"] == 0  # emitted, not committed: no ACK
            first, second = h.batches
            assert first.done is not None and second.done is not None
            second.done()  # commits may complete out of order ...
            first.done()
            acks = await read_acks(reader, 2)  # ... ACKs never do
            assert [a[2] for a in acks] == ["HP104220879017992", "202506100151270003"]
            writer.close()

    run(main())


def test_listener_stop_waits_for_the_acks_of_what_was_emitted() -> None:
    async def main() -> None:
        src = Hl7MllpSource(config())
        h = Harness(src, lambda b: None)
        await h.__aenter__()
        reader, writer = await h.connect()
        writer.write(frame(COMEN))
        await h.wait_batches(1)
        src.stop()
        assert h.task is not None and not h.task.done()
        done = h.batches[0].done
        assert done is not None
        done()  # the journal commits during shutdown
        (a,) = await read_acks(reader, 1)
        assert a[1] == "AA"
        await asyncio.wait_for(h.task, 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after its ACK
        writer.close()

    run(main())


def test_listener_bounds_connections_and_idleness() -> None:
    async def main() -> None:
        src = Hl7MllpSource(config(max_connections=1, idle_timeout_s=0.3))
        async with Harness(src, commit_in_thread) as h:
            r1, w1 = await h.connect()
            w1.write(frame(EFFICIA))
            await read_acks(r1, 1)  # the first connection is being served
            r2, w2 = await h.connect()
            assert await asyncio.wait_for(r2.read(), 5) == b""  # refused at once
            assert src.counts["refused"] == 1
            assert await asyncio.wait_for(r1.read(), 5) == b""  # idle: closed
            assert src.counts["idle_closed"] == 1
            w1.close()
            w2.close()

    run(main())


def test_listener_peer_gone_mid_message_loses_nothing_accepted() -> None:
    async def main() -> None:
        src = Hl7MllpSource(config(max_message_bytes=1024))
        async with Harness(src, commit_in_thread) as h:
            reader, writer = await h.connect()
            writer.write(frame(EFFICIA) + frame(PHILIPS)[:50])
            await read_acks(reader, 1)
            writer.close()
            await h.wait_batches(1)
            # an over-long frame is dropped and dead-lettered, the next one still works
            r2, w2 = await h.connect()
            w2.write(b"\x0b" + b"x" * 2000 + b"\x1c\x0d" + frame(PHILIPS))
            (a,) = await read_acks(r2, 1)
            assert a[2] == "HP104220879017992"
            assert src.counts["too_long"] >= 1
            assert "too_large" in [r.cause for r in h.rejected]
            w2.close()
        assert len(h.batches) == 2
        assert src.counts["messages"] == 2

    run(main())


def test_listener_message_clock_and_pv1() -> None:
    async def main() -> None:
        now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
        msg = oru(SPO2, msh7=now, pv1="CCU^^12")
        src = Hl7MllpSource(config(clock="message", beds={}))
        async with Harness(src, commit_in_thread) as h:
            reader, writer = await h.connect()
            writer.write(frame(msg))
            await read_acks(reader, 1)
            (r,) = h.batches[0].readings
            assert (r.ward, r.bed, r.device, r.patient) == ("CCU", "12", "MON1.pleth", "P77")
            assert r.ts == parse_dtm(now, UTC)
            writer.close()

    run(main())


def test_serial_binding_names_the_configured_device() -> None:
    # over a serial line (bind "fixed") the source's device names the readings, with the
    # channel suffix that keeps ECG and pleth heart rates apart
    parsed = Hl7Parser().parse(oru(SPO2), ctx(NOW))
    assert {r.device.split(".")[0] for r in parsed.readings} == {"mon"}
