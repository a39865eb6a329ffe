"""Device-reported alarms and INOPs (IntelliVue ``MDIL-ALERT`` OBX) -> vitalmon alerts;
unmapped HL7 observations counted.

The parser and the rule (``DeviceAlarms``) are pure: literal HL7 messages written here
(no capture copied), injected times. The engine is run as it runs in the daemon (its
queue, a recording sink, the real lifecycle with an injected clock). End to end: the
real daemon, a real mosquitto and the real MLLP listener over loopback TCP; every wait
is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import socket
import sqlite3
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import free_port, wait_for
from engine_sinks import Recorder, run_batches
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import AlertsConfig, RulesConfig
from monitor.engine import Engine
from monitor.engine.device_alarms import DeviceAlarms
from monitor.engine.lifecycle import Lifecycle
from monitor.model import (
    CONTINUOUS,
    INTERMITTENT,
    Admission,
    AlertEvent,
    AlertState,
    BedCommand,
    DeviceAlarm,
    DeviceAlarmReport,
    Priority,
    alert_id,
)
from monitor.sources import Batch
from monitor.sources.devices import DeviceContext, MllpFramer, frame
from monitor.sources.devices.hl7 import Hl7Parser, alarm_key, resolve_observation
from monitor.sources.unmapped import OTHER, Unmapped

NOW = datetime(2026, 3, 2, 14, 30, 0, tzinfo=UTC).timestamp()


def stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d%H%M%S+0000")


def ctx(now: float = NOW, **kw: Any) -> DeviceContext:
    base: dict[str, Any] = {"clock": "device", "tz": UTC, "max_skew_s": 300.0}
    base.update(kw)
    return DeviceContext("icu", "fixed-bed", "mon", now, **base)


def oru(
    *obx: str, at: float = NOW, control: str = "Q1", pv1: str = "icu^^7", sender: str = "BX40"
) -> bytes:
    segs = [
        f"MSH|^~\\&|{sender}|WEST3|VM|HOSP|{stamp(at)}||ORU^R01^ORU_R01|{control}|P|2.5",
        "PID|||PT-4411||Tester^Alex",
        f"PV1||I|{pv1}",
        f"OBR|1||||||{stamp(at)}",
        *obx,
    ]
    return ("\r".join(segs) + "\r").encode()


def alarm(cls: str, text: str, n: int | str = "", extra: str = "") -> str:
    """An alarm OBX: ``<n>^<class>^MDIL-ALERT``, the device's text in OBX-5."""
    return f"OBX|9|TX|{n}^{cls}^MDIL-ALERT||{text}||||||F{extra}"


SPO2 = "OBX|1|NM|0002-4bb8^SpO2^MDIL||95|0004-0220^%^MDIL|||||F"
PERF = "OBX|2|NM|0002-d006^Perf^MDIL||1.7||||||F"


def parse(msg: bytes, **kw: Any) -> Any:
    parsed, a = Hl7Parser(bind="pv1").parse_message(msg, ctx(**kw))
    assert a.code == "AA"
    return parsed


def brief(report: DeviceAlarmReport) -> list[tuple[str, str, str, str, str]]:
    return [(a.key, str(a.priority), a.kind, a.text, a.source) for a in report.alarms]


# ------------------------------------------------------------------------ the parser


def test_alarm_segments_are_one_report_of_the_message_device() -> None:
    msg = oru(
        SPO2,
        alarm("RedAlarm", "***xBrady 38<40", 1),
        alarm("YellowAlarm", "**SpO2   88  <90", 2),
        alarm("ShortYellowAlarm", "* Missed Beat", 3),
        alarm("HardInop", "ABP  Transducer Off", 5),
        alarm("SoftInop", "NBP Done", 6),
        PERF,
    )
    parsed = parse(msg)
    (report,) = parsed.device_alarms
    assert (report.ts, report.ward, report.bed, report.device, report.patient) == (
        NOW,
        "icu",
        "7",
        "BX40",
        "PT-4411",  # no ".channel": the monitor itself
    )
    assert brief(report) == [
        ("xBrady", "high", "device", "***xBrady 38<40", "RedAlarm"),
        ("SpO2", "medium", "device", "**SpO2   88  <90", "YellowAlarm"),
        ("Missed Beat", "medium", "device", "* Missed Beat", "ShortYellowAlarm"),
        ("ABP Transducer Off", "medium", "technical", "ABP  Transducer Off", "HardInop"),
        ("NBP Done", "low", "technical", "NBP Done", "SoftInop"),
    ]
    # the vitals are untouched, the alarm segments are not "unmapped"
    assert [(r.device, r.vital, r.value) for r in parsed.readings] == [("BX40.pleth", "spo2", 95)]
    assert parsed.unmapped == Counter({"Perf (0002-d006)": 1})
    assert parsed.rejections == []


@pytest.mark.parametrize(
    ("obx3", "source"),
    [
        ("1^REDALARM^MDIL-ALERT", "RedAlarm"),
        ("^yellowalarm^mdil-alert", "YellowAlarm"),
        ("3^^MDIL-ALERT", "ShortYellowAlarm"),  # no name: the number
        ("5^^MDIL-ALERT", "HardInop"),
        ("6^SoftInop^MDIL-ALERT", "SoftInop"),
    ],
)
def test_alarm_class_by_name_any_case_or_by_number(obx3: str, source: str) -> None:
    parsed = parse(oru(f"OBX|1|TX|{obx3}||PAP Disconnected"))
    assert [a.source for a in parsed.device_alarms[0].alarms] == [source]


def test_unknown_alarm_class_is_counted_not_reported() -> None:
    parsed = parse(oru("OBX|1|TX|9^PurpleAlarm^MDIL-ALERT||Something", "OBX|2|TX|8^^MDIL-ALERT||x"))
    assert parsed.device_alarms[0].alarms == ()
    assert parsed.unmapped == Counter({"PurpleAlarm (9)": 1, "8": 1})


def test_every_oru_has_a_report_possibly_empty() -> None:
    parsed = parse(oru(SPO2))
    assert [(r.device, r.alarms, r.ts) for r in parsed.device_alarms] == [("BX40", (), NOW)]
    bare = parse(oru(at=NOW - 5))  # no OBX at all: the message's device, the message time
    assert [(r.device, r.alarms, r.ts) for r in bare.device_alarms] == [("BX40", (), NOW - 5)]


def test_report_time_is_the_latest_observation_of_the_device() -> None:
    msg = oru(
        "OBX|1|NM|0002-4bb8^SpO2^MDIL||95|%|||||F|||" + stamp(NOW - 20),
        alarm("RedAlarm", "***Apnea 25 sec", 1, "|||" + stamp(NOW - 3)),
        "OBX|3|NM|0002-4182^HR^MDIL||60|/min|||||F|||" + stamp(NOW - 9),
        at=NOW - 30,
    )
    (report,) = parse(msg).device_alarms
    assert report.ts == NOW - 3


def test_obx18_names_the_alarm_device_and_each_device_has_its_report() -> None:
    msg = oru(
        SPO2,  # the message's device (MSH-3)
        alarm("YellowAlarm", "**RR 32 >30", 2, "|||||||TELE-12^^0012AB^EUI-64"),
        "OBX|3|NM|0002-4182^HR^MDIL||60|/min|||||F|||||||TELE-12",
    )
    reports = {r.device: brief(r) for r in parse(msg).device_alarms}
    assert reports == {
        "BX40": [],
        "TELE-12": [("RR", "medium", "device", "**RR 32 >30", "YellowAlarm")],
    }


def test_alarm_with_a_time_refused_withholds_its_device_report() -> None:
    ahead = stamp(NOW + 3600)
    parsed = parse(oru(alarm("RedAlarm", "***Asystole", 1, "|||" + ahead)))
    assert [r.cause for r in parsed.rejections] == ["bad_ts"]
    assert "RedAlarm" in parsed.rejections[0].detail
    assert parsed.device_alarms == []  # nothing is ended by a message not placed in time


def test_one_key_twice_in_a_message_keeps_the_highest_priority() -> None:
    msg = oru(alarm("YellowAlarm", "**HR 130 >120", 2), alarm("RedAlarm", "***HR 160 >150", 1))
    assert brief(parse(msg).device_alarms[0]) == [
        ("HR", "high", "device", "***HR 160 >150", "RedAlarm")
    ]


def test_alarm_text_unescaped_controls_removed_result_status_d_ignored() -> None:
    msg = oru(
        alarm("YellowAlarm", "**ST\\S\\II 2.4 >2.0", 2),
        "OBX|2|TX|1^RedAlarm^MDIL-ALERT||***xTachy 170>150||||||D",  # deleted: not an alarm
    )
    parsed = parse(msg)
    assert brief(parsed.device_alarms[0]) == [
        ("ST^II", "medium", "device", "**ST^II 2.4 >2.0", "YellowAlarm")
    ]
    assert parsed.unmapped == Counter()


def test_receive_clock_stamps_the_report_now() -> None:
    parsed = Hl7Parser(bind="pv1", clock="receive").parse(
        oru(alarm("RedAlarm", "***VF", 1)), ctx(NOW + 999)
    )
    assert [r.ts for r in parsed.device_alarms] == [NOW + 999]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("***xTachy 160>140", "xTachy"),
        ("***xTachy 165>140", "xTachy"),
        ("**SpO2   86  <90", "SpO2"),  # the 2 of SpO2 is part of a word: kept
        ("* Pause", "Pause"),
        ("SpO2T  No Pulse", "SpO2T No Pulse"),
        ("*** PAP Disconnect", "PAP Disconnect"),
        ("No Data Monitor", "No Data Monitor"),
        ("**ST-V2 -1.2 < -1.0", "ST-V2"),
        ("**NBPs 182 > 180", "NBPs"),
        ("***", ""),
    ],
)
def test_alarm_keys(text: str, key: str) -> None:
    assert alarm_key(text) == key


def test_unmapped_observations_counted_by_label_and_code_never_by_value() -> None:
    msg = oru(
        PERF,
        "OBX|2|NM|160324^MDC_SPO2_SIGNAL_QUALITY_INDEX^MDC||3.5|%|||||F",
        "OBX|3|ST|^^^9921^BedsideNote^LOCAL||PT-4411 Tester|||||F",  # alternate id and text
        "OBX|4|NM|150388^MDC_TEMP_SKIN^MDC||33.1|Cel|||||F",
        "OBX|5|NM|0002-d006^Perf^MDIL||1.9||||||F",
        "OBX|6|NM|151562^MDC_RESP_RATE^MDC||14|/min|||||F",  # a vital: not counted
        "OBX|7|NM|0002-d00a^Unknown^MDIL||5||||||N",  # not asked: ignored on purpose
        "OBX|8|NM|" + "X" * 100 + "^LongName||1||||||F",
        "OBX|9|NM|||7||||||F",
    )
    parsed = parse(msg)
    assert parsed.unmapped == Counter(
        {
            "Perf (0002-d006)": 2,
            "MDC_SPO2_SIGNAL_QUALITY_INDEX (160324)": 1,
            "BedsideNote (9921)": 1,
            "MDC_TEMP_SKIN (150388)": 1,
            ("LongName (" + "X" * 100)[:60]: 1,
            "(none)": 1,
        }
    )
    assert all(len(code) <= 60 for code in parsed.unmapped)
    assert not any("PT-4411" in code or "Tester" in code for code in parsed.unmapped)


@pytest.mark.parametrize(
    ("obx3", "target"),
    [
        ("0002-f09c^SpO2T^MDIL", ("spo2", "tele")),
        ("0002-f09c^^MDIL", ("spo2", "tele")),
        ("x^SpO2T^L", ("spo2", "tele")),
        ("x^Pulse (SpO2)^L", ("hr", "pleth")),
        ("x^Pulse(SpO2)^L", ("hr", "pleth")),
        ("x^PlethPulse^L", ("hr", "pleth")),
        ("x^Pleth Pulse^L", ("hr", "pleth")),
        ("x^PR (SpO2)^L", ("hr", "pleth")),
        ("0002-4822^^MDIL", ("hr", "pleth")),
        ("x^Pulse (NBP)^L", ("hr", "nibp")),
        ("x^NBP Pulse^L", ("hr", "nibp")),
        ("x^Pulse(NBP)^L", ("hr", "nibp")),
        ("x^NBPpulse^L", ("hr", "nibp")),
        ("0002-f0e5^^MDIL", ("hr", "nibp")),
        # the existing labels, under the new normalisation
        ("x^NBP-S^L", ("sbp", "nibp")),
        ("x^nbp d^L", ("dbp", "nibp")),
        ("x^Heart_Rate^L", ("hr", "ecg")),
        ("x^Resp Rate^L", ("rr", "resp")),
        ("x^Pulse^L", ("hr", "pulse")),
        ("x^SpO2^L", ("spo2", "pleth")),
    ],
)
def test_telemetry_and_pulse_mappings(obx3: str, target: tuple[str, str]) -> None:
    assert resolve_observation(obx3.split("^")) == target


def test_cuff_and_aperiodic_readings_are_intermittent_periodic_continuous() -> None:
    msg = oru(
        "OBX|1|NM|0002-4a05^NBPs^MDIL||121|mmHg|||||F",
        "OBX|2|NM|x^Pulse (NBP)^L||77|/min|||||F",
        "OBX|3|NM|151562^MDC_RESP_RATE^MDC||14|/min|||||F||||||aperiodic",
        "OBX|4|NM|0002-4182^HR^MDIL||61|/min|||||F||||||PERIODIC",
        "OBX|5|NM|150344^MDC_TEMP^MDC||37.1|Cel|||||F||||||CONTINUOUS",
        SPO2,
        "OBX|7|NM|0002-f09c^SpO2T^MDIL||94|%|||||F",
    )
    modes = {(r.device, r.vital): r.mode for r in parse(msg).readings}
    assert modes == {
        ("BX40.nibp", "sbp"): INTERMITTENT,
        ("BX40.nibp", "hr"): INTERMITTENT,
        ("BX40.resp", "rr"): INTERMITTENT,
        ("BX40.ecg", "hr"): CONTINUOUS,
        ("BX40.temp", "temp"): CONTINUOUS,
        ("BX40.pleth", "spo2"): None,
        ("BX40.tele", "spo2"): None,
    }


_WORD = st.from_regex(r"[A-Za-z][A-Za-z0-9/\-]{0,7}", fullmatch=True)
_LABEL = st.lists(_WORD, min_size=1, max_size=3).map(" ".join)
_NUMBER = st.decimals(-500, 500, places=1, allow_nan=False).map(str)


@settings(max_examples=200, deadline=None)
@given(
    _LABEL,
    st.sampled_from(["", "*", "**", "***", "*** "]),
    st.lists(st.tuples(st.sampled_from(["", "<", ">", " <", "> ", " = "]), _NUMBER), max_size=3),
    st.lists(st.tuples(st.sampled_from(["", "<", ">", " <", "> ", " = "]), _NUMBER), max_size=3),
)
def test_keys_are_stable_when_only_numbers_change(
    label: str, stars: str, a: list[tuple[str, str]], b: list[tuple[str, str]]
) -> None:
    def text(nums: list[tuple[str, str]]) -> str:
        return stars + label + "".join(f" {op}{n}" for op, n in nums)

    key = alarm_key(text(a))
    assert key == alarm_key(text(b))
    assert key == alarm_key(label)
    assert key.strip() == key and "  " not in key


_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "1^RedAlarm",
                    "2^",
                    "^shortyellowalarm",
                    "5^HardInop",
                    "6^x",
                    "^^",
                    "7^Red Alarm",
                    "RedAlarm",
                ]
            ),
            _TEXT,
            st.sampled_from(["", "F", "D", "X", "W"]),
            st.sampled_from(["", stamp(NOW), stamp(NOW + 9999), "garbage", "1999"]),
            st.sampled_from(["", "MON-A", "a/b#c", "^^x"]),
        ),
        max_size=6,
    ),
    st.booleans(),
)
def test_parse_with_alarm_segments_never_raises(
    segs: list[tuple[str, str, str, str, str]], vitals: bool
) -> None:
    obx = [
        f"OBX|{i}|TX|{code}^MDIL-ALERT||{text}||||||{status}|||{ts}||||{dev}"
        for i, (code, text, status, ts, dev) in enumerate(segs)
    ]
    msg = oru(*(([SPO2, PERF] if vitals else []) + obx))
    parsed, a = Hl7Parser(bind="pv1").parse_message(msg, ctx())
    assert a.code in ("AA", "AE")
    for report in parsed.device_alarms:
        assert "/" not in report.device
        assert len({x.key for x in report.alarms}) == len(report.alarms)
        for x in report.alarms:
            assert x.key == alarm_key(x.text) or x.key == x.source
            assert "\r" not in x.text and "\n" not in x.text
    assert all(len(code) <= 60 for code in parsed.unmapped)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


def test_unmapped_counts_are_bounded_and_logged_at_most_every_60_s() -> None:
    clock = [1000.0]
    log = logging.getLogger("test.device_alarms.unmapped")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    handler = Lines()
    log.addHandler(handler)
    u = Unmapped("hl7-test", log, max_codes=3, clock=lambda: clock[0])
    u.add(Counter({"Perf (0002-d006)": 2, "A (1)": 1}))
    u.add(Counter({"B (2)": 1, "C (3)": 4, "D (4)": 1}))  # over the bound: (other)
    clock[0] += 59
    u.add(Counter({"A (1)": 1}))  # not a minute since the last line: counted, not logged
    clock[0] += 1
    u.add(Counter({"Perf (0002-d006)": 1}))
    clock[0] += 600
    u.maybe_log()  # nothing new since the last line: no line
    assert u.counts == Counter({"Perf (0002-d006)": 3, "A (1)": 2, "B (2)": 1, OTHER: 5})
    (level1, first), (level2, second) = handler.lines
    assert (level1, level2) == (logging.WARNING, logging.INFO)
    assert "3 HL7 observation(s) of 2 code(s)" in first and "Perf (0002-d006) x2" in first
    assert "8 HL7 observation(s) of 4 code(s)" in second
    assert "(other) x5" in second and "A (1) x1" in second and "Perf (0002-d006) x1" in second


# ------------------------------------------------------------------------ the rule


def report(
    ts: float, *alarms: DeviceAlarm, device: str = "BX40", bed: str = "7"
) -> DeviceAlarmReport:
    return DeviceAlarmReport(ts, "icu", bed, device, alarms, "PT-4411")


RED = DeviceAlarm("xBrady", Priority.HIGH, "device", "***xBrady 38<40", "RedAlarm")
YELLOW = DeviceAlarm("xBrady", Priority.MEDIUM, "device", "**xBrady 42<45", "YellowAlarm")
INOP = DeviceAlarm("Leads Off", Priority.MEDIUM, "technical", "Leads Off", "HardInop")
T0 = NOW


def states(events: Sequence[AlertEvent]) -> list[tuple[str, str, str, float, int, str]]:
    return [(e.rule, str(e.state), str(e.priority), e.at, e.seq, e.message) for e in events]


def test_raise_is_one_alert_with_the_device_text_and_null_numbers() -> None:
    d = DeviceAlarms()
    (raised,) = d.observe(report(T0, RED))
    assert raised == AlertEvent(
        id=alert_id("icu", "7", "BX40", "device.alarm:xBrady", T0),
        ward="icu",
        bed="7",
        device="BX40",
        patient="PT-4411",
        vital="",
        rule="device.alarm",
        kind="device",
        priority=Priority.HIGH,
        state=AlertState.ACTIVE,
        value=raised.value,
        limit=raised.limit,
        message="***xBrady 38<40",
        started_at=T0,
        at=T0,
        seq=1,
        extra={"source": "RedAlarm", "device_alarm": "xBrady"},
    )
    assert math.isnan(raised.value) and math.isnan(raised.limit)
    public = raised.to_json()
    assert (public["value"], public["limit"]) == (None, None)
    assert (public["source"], public["device_alarm"]) == ("RedAlarm", "xBrady")
    json.dumps(public, allow_nan=False)  # valid JSON: no NaN
    assert d.active() == 1
    assert d.observe(report(T0 + 1, RED)) == []  # still reported: nothing new


def test_priority_change_is_one_event_text_change_alone_none() -> None:
    d = DeviceAlarms()
    (raised,) = d.observe(report(T0, YELLOW))
    # the value in the text changes: the same alarm, no event
    assert (
        d.observe(
            report(
                T0 + 2,
                DeviceAlarm("xBrady", Priority.MEDIUM, "device", "**xBrady 41<45", "YellowAlarm"),
            )
        )
        == []
    )
    (worse,) = d.observe(report(T0 + 4, RED))  # yellow -> red: the same alert, escalated
    assert (worse.id, worse.seq, worse.priority, worse.state, worse.message, worse.at) == (
        raised.id,
        2,
        Priority.HIGH,
        AlertState.ACTIVE,
        "***xBrady 38<40",
        T0 + 4,
    )
    assert worse.extra == {"source": "RedAlarm", "device_alarm": "xBrady"}
    newer = DeviceAlarm("xBrady", Priority.HIGH, "device", "***xBrady 35<40", "RedAlarm")
    assert d.observe(report(T0 + 6, newer)) == []
    (ended,) = d.observe(report(T0 + 8))
    assert (ended.id, ended.seq, ended.state, ended.at, ended.message) == (
        raised.id,
        3,
        AlertState.RESOLVED,
        T0 + 8,
        "***xBrady 35<40 — ended (no longer reported by the device)",
    )
    assert d.active() == 0


def test_absent_key_resolves_others_stay_and_inops_are_technical() -> None:
    d = DeviceAlarms()
    raised = d.observe(report(T0, RED, INOP))
    assert [(e.rule, e.kind, str(e.priority)) for e in raised] == [
        ("device.alarm", "device", "high"),
        ("device.inop", "technical", "medium"),
    ]
    assert raised[0].id != raised[1].id
    assert raised[1].id == alert_id("icu", "7", "BX40", "device.alarm:Leads Off", T0)
    assert states(d.observe(report(T0 + 2, INOP))) == [
        (
            "device.alarm",
            "resolved",
            "high",
            T0 + 2,
            2,
            "***xBrady 38<40 — ended (no longer reported by the device)",
        ),
    ]
    assert d.active() == 1
    assert [e.state for e in d.observe(report(T0 + 3))] == [AlertState.RESOLVED]


def test_out_of_order_and_duplicate_reports_are_ignored() -> None:
    d = DeviceAlarms()
    (raised,) = d.observe(report(T0, RED))
    # same instant: the later word applies (HL7 times have whole seconds)...
    (ended,) = d.observe(report(T0))
    assert (ended.id, ended.state) == (raised.id, AlertState.RESOLVED)
    # ...but an alarm ended at that instant is not raised again within it (a redelivered
    # duplicate of the first report would repeat its id)
    assert d.observe(report(T0, RED)) == []
    assert d.observe(report(T0 - 5)) == []  # older: out of order
    assert d.observe(report(T0 - 5, INOP)) == []
    assert d.active() == 0
    (again,) = d.observe(report(T0 + 1, RED))  # a later report carrying it: a new alert
    assert again.id != raised.id
    assert d.active() == 1
    # another device of the bed has its own watermark and its own alerts
    other = d.observe(report(T0 - 5, RED, device="TELE-12"))
    assert [e.device for e in other] == ["TELE-12"]
    assert other[0].id != alert_id("icu", "7", "BX40", "device.alarm:xBrady", T0)


def test_returned_events_are_copies_the_lifecycle_may_change() -> None:
    d = DeviceAlarms()
    (raised,) = d.observe(report(T0, YELLOW))
    raised.extra["escalated"] = True  # what the lifecycle does to an event on its way
    raised.priority = Priority.HIGH
    (worse,) = d.observe(report(T0 + 1, RED))
    assert "escalated" not in worse.extra and worse.seq == 2


def test_kind_change_resolves_and_raises_anew() -> None:
    d = DeviceAlarms()
    d.observe(report(T0, DeviceAlarm("SpO2", Priority.MEDIUM, "device", "**SpO2 88<90")))
    events = d.observe(report(T0 + 1, DeviceAlarm("SpO2", Priority.LOW, "technical", "SpO2")))
    assert [(e.rule, str(e.state)) for e in events] == [
        ("device.alarm", "resolved"),
        ("device.inop", "active"),
    ]


def test_discharge_resolves_the_bed_and_keeps_the_watermark() -> None:
    d = DeviceAlarms()
    d.observe(report(T0, RED, INOP))
    d.observe(report(T0, RED, bed="8"))
    closed = d.reset_bed("icu", "7")
    assert [(e.state, e.at, e.message) for e in closed] == [
        (AlertState.RESOLVED, T0, "Leads Off — ended (patient discharged)"),
        (AlertState.RESOLVED, T0, "***xBrady 38<40 — ended (patient discharged)"),
    ]
    assert d.active() == 1  # bed 8 is another patient
    assert d.observe(report(T0, RED)) == []  # redelivered from before the discharge
    (again,) = d.observe(report(T0 + 5, RED))  # a new report still carrying it: a new alert
    assert again.id == alert_id("icu", "7", "BX40", "device.alarm:xBrady", T0 + 5)


def test_restore_carries_an_alert_on_under_its_id() -> None:
    first = DeviceAlarms()
    (raised,) = first.observe(report(T0, YELLOW))
    stored = copy.deepcopy(raised)
    stored.value = None  # type: ignore[assignment]  # as SQLite gives NaN back
    d = DeviceAlarms()
    assert d.restore(stored) is True
    assert d.active() == 1
    (worse,) = d.observe(report(T0 + 60, RED))
    assert (worse.id, worse.seq, worse.priority) == (raised.id, 2, Priority.HIGH)
    assert math.isnan(worse.value)
    (ended,) = d.observe(report(T0 + 70))
    assert (ended.id, ended.seq, ended.state) == (raised.id, 3, AlertState.RESOLVED)
    other = copy.deepcopy(raised)
    other.rule, other.extra = "spo2.low", {}
    assert DeviceAlarms().restore(other) is False


# ------------------------------------------------------------------------ the engine


def test_engine_passes_device_alarms_through_the_lifecycle() -> None:
    """Raise, acknowledge, worsen (a new acknowledgement is needed), escalate, discharge,
    restart: the lifecycle numbers every event and treats them as any other alert."""
    clock = [5000.0]
    lifecycle = Lifecycle(AlertsConfig(escalate_after_s=30, renotify_s=0), clock=lambda: clock[0])
    sink = Recorder()
    eng = Engine(RulesConfig(), [sink], lifecycle=lifecycle)

    def feed(*batches: Batch, engine: Engine = eng) -> None:
        run_batches(engine, *batches)

    feed(Batch([], device_alarms=[report(T0, YELLOW, INOP)]))
    alarm_ev, inop_ev = sink.events
    assert (alarm_ev.kind, alarm_ev.priority, inop_ev.kind) == ("device", "medium", "technical")
    assert alarm_ev.patient == "PT-4411"
    assert {e.id for e in lifecycle.active()} == {alarm_ev.id, inop_ev.id}

    acked = lifecycle.ack(alarm_ev.id, "kim")
    assert acked is not None and acked.state == AlertState.ACKNOWLEDGED and acked.seq == 2
    feed(Batch([], device_alarms=[report(T0 + 2, RED, INOP)]))
    worse = sink.events[-1]
    # worse than what was acknowledged: active again, numbered after the acknowledgement
    assert (worse.id, worse.state, worse.priority, worse.seq) == (
        alarm_ev.id,
        AlertState.ACTIVE,
        Priority.HIGH,
        3,
    )
    assert "ack_by" not in worse.extra

    clock[0] += 31
    escalated = {e.id: e for e in lifecycle.tick()}
    assert escalated[inop_ev.id].priority == Priority.HIGH  # medium INOP, unacknowledged
    assert escalated[inop_ev.id].extra["action"] == "escalate"
    assert escalated[alarm_ev.id].priority == Priority.HIGH  # (high stays high)

    discharge = BedCommand("discharge", Admission("icu", "7", "PT-4411", None, T0 + 3, "kim"))
    feed(Batch([], bed_commands=[discharge]))
    ended = {e.id: e for e in sink.events[-2:]}
    assert {e.state for e in ended.values()} == {AlertState.RESOLVED}
    assert ended[inop_ev.id].extra.get("escalated") is True
    assert ended[alarm_ev.id].seq == 5  # raise, ack, worse, escalate, resolve
    assert lifecycle.active() == []

    # a restart: an alert open at the stop goes on under its id and is ended by the device
    feed(Batch([], device_alarms=[report(T0 + 10, RED)]))
    open_at_stop = sink.events[-1]
    eng2 = Engine(RulesConfig(), [sink], lifecycle=Lifecycle(AlertsConfig(), clock=lambda: 0))
    assert eng2.restore([open_at_stop]) == []
    feed(Batch([], device_alarms=[report(T0 + 20)]), engine=eng2)
    assert (sink.events[-1].id, sink.events[-1].state) == (open_at_stop.id, AlertState.RESOLVED)


def test_engine_counts_a_report_as_a_sign_of_life_at_its_cadence() -> None:
    from monitor.engine.technical import Staleness

    eng = Engine(RulesConfig(), [Recorder()])
    eng.staleness = Staleness(30, [("icu", "7")], started=100.0)
    assert [e.rule for e in eng.staleness.check(200.0)] == ["device.stale"]  # never heard of

    def feed(*batches: Batch) -> None:
        run_batches(eng, *batches)

    feed(Batch([], received_at=201.0, device_alarms=[report(T0)]))
    assert eng.staleness.check(210.0) == []  # the bed spoke: the "*" alarm resolved, none new
    # a central station sending a message a minute: its channels (BX40.ecg, ...) are what
    # is watched for silence; the report's bare device name is not one more device
    feed(
        *(
            Batch([], received_at=201.0 + 60 * i, device_alarms=[report(T0 + 60 * i)])
            for i in (1, 2)
        )
    )
    assert eng.staleness.check(321.0 + 10_000) == []
    # PCD-04 news comes when an alarm changes, with no cadence: not watched for silence
    eng.staleness = Staleness(30, [], started=100.0)
    partial = DeviceAlarmReport(T0, "icu", "9", "ACMGW", (RED,), None, complete=False)
    feed(Batch([], received_at=201.0, device_alarms=[partial]))
    assert eng.staleness.check(10_000.0) == []


# ------------------------------------------------------------------------ end to end


def send(port: int, *messages: bytes) -> list[list[str]]:
    """Messages over one MLLP connection -> the MSA fields of their ACKs."""
    framer = MllpFramer()
    acks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"".join(frame(m) for m in messages))
        while len(acks) < len(messages):
            chunk = s.recv(4096)
            assert chunk, "connection closed before the ACKs"
            acks += framer.feed(chunk)
    return [
        next(seg for seg in a.decode().split("\r") if seg.startswith("MSA|")).split("|")
        for a in acks
    ]


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def hl7_daemon(daemon: Any, extra: str = "") -> tuple[Any, int, int]:
    mllp, http = free_port(), free_port()
    d = daemon(f"metrics:\n  listen: 127.0.0.1:{http}\n", start=False)
    d.config.write_text(
        d.config.read_text()
        .replace(
            "sources:\n",
            f"sources:\n  - type: hl7-mllp\n    listen: 127.0.0.1:{mllp}\n    ward: icu\n",
        )
        .replace(
            'topic: "alerts/{ward}/{bed}"\n  qos: 1',
            'topic: "alerts/{ward}/{bed}"\n  qos: 1\n' + extra,
        )
    )
    d.start()
    wait_for(lambda: "listening on" in d.log(), 10, "the MLLP listener")
    return d, mllp, http


def by_rule(alerts: Any, rule: str) -> list[dict[str, Any]]:
    return [a for a in alerts.json() if a["rule"] == rule]


def test_red_alarm_and_inop_over_mllp_raise_ack_resolve_and_count_unknown_codes(
    daemon: Any, subscribe: Any, publisher: Any
) -> None:
    d, mllp, http = hl7_daemon(daemon, "  pause_max_s: 2\n")
    alerts = subscribe("alerts/#")
    state = subscribe("state/icu/7/alerts")
    t = time.time() - 30
    red = alarm("RedAlarm", "***xBrady 38<40", 1)
    inop = alarm("HardInop", "ECG Leads Off", 5)
    assert [a[1:3] for a in send(mllp, oru(SPO2, PERF, red, inop, at=t, control="M1"))] == [
        ["AA", "M1"]
    ]
    raised = wait_for(lambda: by_rule(alerts, "device.alarm"), 10, "the red alarm")[0]
    assert (raised["kind"], raised["priority"], raised["state"], raised["message"]) == (
        "device",
        "high",
        "active",
        "***xBrady 38<40",
    )
    assert (raised["ward"], raised["bed"], raised["device"], raised["vital"]) == (
        "icu",
        "7",
        "BX40",
        "",
    )
    assert (raised["value"], raised["limit"], raised["source"]) == (None, None, "RedAlarm")
    technical = wait_for(lambda: by_rule(alerts, "device.inop"), 10, "the INOP")[0]
    assert (technical["kind"], technical["priority"], technical["message"]) == (
        "technical",
        "medium",
        "ECG Leads Off",
    )
    # the retained bed state lists both, with null numbers
    wait_for(lambda: state.json() and len(state.json()[-1]) == 2, 10, "the bed state")
    assert {a["id"] for a in state.json()[-1]} == {raised["id"], technical["id"]}
    assert all(a["value"] is None for a in state.json()[-1])

    publisher.publish("vitalmon/cmd/ack", {"id": raised["id"], "by": "kim"})
    wait_for(
        lambda: [a for a in by_rule(alerts, "device.alarm") if a["state"] == "acknowledged"],
        10,
        "acknowledged",
    )

    # a new value in the text: the same alarm (no event); then both gone: resolved
    later = alarm("RedAlarm", "***xBrady 36<40", 1)
    send(
        mllp,
        oru(SPO2, PERF, later, inop, at=t + 2, control="M2"),
        oru(SPO2, PERF, at=t + 4, control="M3"),
    )
    wait_for(
        lambda: len([a for a in alerts.json() if a["state"] == "resolved"]) == 2,
        10,
        "both resolved",
    )
    red_events = by_rule(alerts, "device.alarm")
    assert [(a["state"], a["seq"]) for a in red_events] == [
        ("active", 1),
        ("acknowledged", 2),
        ("resolved", 3),
    ]
    assert {a["id"] for a in red_events} == {raised["id"]}
    assert red_events[-1]["message"] == (
        "***xBrady 36<40 — ended (no longer reported by the device)"
    )
    assert red_events[-1]["ack_by"] == "kim"
    wait_for(lambda: state.json()[-1] == [], 10, "an empty bed state")

    # pause: a yellow alarm (medium) is held, then published when the pause ends
    publisher.publish("vitalmon/cmd/pause", {"ward": "icu", "bed": "7", "seconds": 60, "by": "kim"})
    wait_for(lambda: "paused for 2 s" in d.log(), 10, "the pause")
    paused_at = time.monotonic()
    yellow = alarm("YellowAlarm", "**SpO2 88 <90", 2)
    send(mllp, oru(SPO2, yellow, at=t + 6, control="M4"))
    wait_for(lambda: state.json()[-1], 10, "the yellow alarm on the bed state")
    if time.monotonic() - paused_at < 1.8:
        assert not [a for a in alerts.json() if a["message"].startswith("**SpO2")]
    held = wait_for(
        lambda: [a for a in alerts.json() if a["message"].startswith("**SpO2")], 10, "the release"
    )
    assert (held[0]["priority"], held[0]["state"], held[0]["kind"]) == (
        "medium",
        "active",
        "device",
    )
    assert time.monotonic() - paused_at >= 1.0

    # unknown observation codes are counted on /metrics (never their values)
    text = wait_for(lambda: m if "Perf" in (m := metrics(http)) else None, 10, "the metric")
    counted = [
        line
        for line in text.splitlines()
        if line.startswith("vitalmon_hl7_unmapped_observations_total{")
    ]
    assert counted == ['vitalmon_hl7_unmapped_observations_total{code="Perf (0002-d006)"} 3.0']
    assert "not mapped to a vital" in d.log()
    assert "PT-4411" not in d.log()


def test_device_alarm_open_at_a_restart_is_ended_by_the_next_message(
    daemon: Any, subscribe: Any, tmp_path: Any
) -> None:
    d, mllp, _http = hl7_daemon(daemon)
    alerts = subscribe("alerts/#")
    t = time.time() - 30
    send(mllp, oru(SPO2, alarm("SoftInop", "SpO2 Change Site", 6), at=t))
    raised = wait_for(lambda: by_rule(alerts, "device.inop"), 10, "the INOP")[0]
    assert (raised["kind"], raised["priority"]) == ("technical", "low")
    code, _ = d.terminate()
    assert code == 0
    conn = sqlite3.connect(tmp_path / "vitals.db")
    assert conn.execute(
        "SELECT value, limit_value FROM alert_events WHERE id = ?", (raised["id"],)
    ).fetchall() == [(None, None)]
    conn.close()
    d.start()
    wait_for(lambda: d.log().count("listening on") >= 2, 10, "the listener again")
    send(mllp, oru(SPO2, at=t + 5))
    ended = wait_for(
        lambda: [a for a in by_rule(alerts, "device.inop") if a["state"] == "resolved"],
        10,
        "resolved",
    )[0]
    assert (ended["id"], ended["seq"]) == (raised["id"], 2)
    assert ended["message"] == "SpO2 Change Site — ended (no longer reported by the device)"


# ------------------------------------------------------------------------ IHE PCD-04


def r40(*segs: str, at: float = NOW, control: str = "A1") -> bytes:
    head = [
        f"MSH|^~\\&|ACMGW^00A1B2^EUI-64|WEST3|AM|HOSP|{stamp(at)}||ORU^R40^ORU_R40|{control}|P|2.6",
        "PID|||PT-4411||Tester^Alex",
        "PV1||I|icu^^9",
    ]
    return ("\r".join([*head, *segs]) + "\r").encode()


def low_spo2(state: str, at: float, phase: str = "start") -> list[str]:
    """One alarm, IHE PCD-04 style: identification (priority and type in OBX-8), the
    value that triggered it, its phase and state."""
    return [
        f"OBR|1||AL-5^ACMGW|196616^MDC_EVT_ALARM^MDC|||{stamp(at)}",
        f"OBX|1|ST|196670^MDC_EVT_LO^MDC|1.3.1.150456.1|SpO2 below limit|||L~PM~SP|||F|||"
        f"{stamp(at)}||||BX40^^0011^EUI-64",
        f"OBX|2|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.3.1.150456.2|86|262688^MDC_DIM_PERCENT^MDC"
        f"|90-100||||F|||{stamp(at)}||||BX40",
        f"OBX|3|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|1.3.1.150456.3|{phase}||||||F",
        f"OBX|4|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.3.1.150456.4|{state}||||||F",
        "OBX|5|ST|68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC|1.3.1.150456.5|enabled||||||F",
    ]


def test_pcd04_alarm_is_a_report_of_that_alarm_alone() -> None:
    msg = r40(*low_spo2("active", NOW - 2), "OBX|6|NM|0002-d006^Perf^MDIL||0.4||||||F")
    parsed, a = Hl7Parser(bind="pv1").parse_message(msg, ctx())
    assert (a.code, a.trigger) == ("AA", "R40")
    (rep,) = parsed.device_alarms
    assert (rep.ts, rep.ward, rep.bed, rep.device, rep.complete) == (
        NOW - 2,
        "icu",
        "9",
        "BX40",
        False,
    )
    assert rep.alarms == (
        DeviceAlarm(
            "MDC_EVT_LO MDC_PULS_OXIM_SAT_O2",
            Priority.MEDIUM,
            "device",
            "SpO2 below limit",
            "MDC_EVT_LO",
            True,
        ),
    )
    # the value that triggered it is a reading; the attributes are not "unmapped"
    assert [(r.device, r.vital, r.value) for r in parsed.readings] == [("BX40.pleth", "spo2", 86)]
    assert parsed.unmapped == Counter({"Perf (0002-d006)": 1})
    ended = parse_r40(r40(*low_spo2("inactive", NOW, "end")))
    assert [(x.key, x.active) for x in ended.device_alarms[0].alarms] == [
        ("MDC_EVT_LO MDC_PULS_OXIM_SAT_O2", False)
    ]
    by_phase = parse_r40(r40(*[s for s in low_spo2("", NOW, "end") if "ALARM_STATE" not in s]))
    assert by_phase.device_alarms[0].alarms[0].active is False  # no state: the phase says


def parse_r40(msg: bytes) -> Any:
    parsed, a = Hl7Parser(bind="pv1").parse_message(msg, ctx())
    assert (a.code, a.trigger) == ("AA", "R40")
    return parsed


def test_pcd04_event_in_obx5_technical_with_its_source() -> None:
    msg = r40(
        f"OBR|1||AL-9^ACMGW|196616^MDC_EVT_ALARM^MDC|||{stamp(NOW)}",
        "OBX|1|CWE|196616^MDC_EVT_ALARM^MDC|1.0.0.0.1|196650^MDC_EVT_LEAD_DISCONN^MDC^^^^^^"
        "Lead II off|||ST~PH|||F",
        "OBX|2|CWE|68480^MDC_ATTR_ALERT_SOURCE^MDC|1.0.0.0.2|147842^MDC_ECG_HEART_RATE^MDC||||||F",
        "OBX|3|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.0.0.0.4|latched||||||F",
    )
    (rep,) = parse_r40(msg).device_alarms
    assert rep.device == "ACMGW"  # no OBX-18: the sending application
    assert rep.alarms == (
        DeviceAlarm(
            "MDC_EVT_LEAD_DISCONN MDC_ECG_HEART_RATE",
            Priority.HIGH,
            "technical",
            "Lead II off",
            "MDC_EVT_LEAD_DISCONN",
            True,
        ),
    )


def news(ts: float, *alarms: DeviceAlarm) -> DeviceAlarmReport:
    return DeviceAlarmReport(ts, "icu", "9", "BX40", alarms, None, complete=False)


LOW = DeviceAlarm(
    "MDC_EVT_LO MDC_PULS_OXIM_SAT_O2", Priority.MEDIUM, "device", "SpO2 low", "MDC_EVT_LO"
)
APNEA = DeviceAlarm(
    "MDC_EVT_APNEA MDC_RESP_RATE", Priority.HIGH, "device", "Apnea", "MDC_EVT_APNEA"
)


def over(a: DeviceAlarm) -> DeviceAlarm:
    return DeviceAlarm(a.key, a.priority, a.kind, a.text, a.source, active=False)


def test_partial_reports_change_only_the_alarms_they_name() -> None:
    d = DeviceAlarms()
    (low,) = d.observe(news(T0, LOW))
    (apnea,) = d.observe(news(T0, APNEA))  # same instant, another alarm: both stand
    assert d.active() == 2
    assert d.observe(news(T0 + 1, LOW)) == []  # "continue": nothing new
    worse = DeviceAlarm(LOW.key, Priority.HIGH, "device", "SpO2 very low", "MDC_EVT_LO")
    (up,) = d.observe(news(T0 + 2, worse))
    assert (up.id, up.priority, up.seq, up.message) == (low.id, Priority.HIGH, 2, "SpO2 very low")
    (ended,) = d.observe(news(T0 + 3, over(LOW)))
    assert (ended.id, ended.state, ended.seq, ended.message) == (
        low.id,
        AlertState.RESOLVED,
        3,
        "SpO2 low — ended (reported over by the device)",
    )
    assert d.observe(news(T0 + 3, LOW)) == []  # a raise at the instant of its end: undone
    assert d.observe(news(T0 + 1, LOW)) == []  # older news of that alarm
    assert d.observe(news(T0 + 4, over(LOW))) == []  # not open: nothing to end
    assert d.active() == 1
    # a complete report (an ORU^R01 of the same device: numerics, another transaction)
    # speaks only for the alarms complete reports raised: apnea, from PCD-04 news, stands
    assert d.observe(DeviceAlarmReport(T0 + 5, "icu", "9", "BX40", (), None)) == []
    assert d.active() == 1
    assert d.observe(news(T0 + 4, over(APNEA))) == []  # older than that full set
    (gone,) = d.observe(news(T0 + 6, over(APNEA)))  # only its own news ends it
    assert (gone.id, gone.state) == (apnea.id, AlertState.RESOLVED)


def test_pcd04_over_the_mllp_listener_is_acked_aa_and_emitted() -> None:
    from monitor.config import Hl7MllpSourceConfig
    from monitor.sources.hl7mllp import Hl7MllpSource

    async def main() -> tuple[list[Batch], list[list[str]]]:
        src = Hl7MllpSource(
            Hl7MllpSourceConfig(type="hl7-mllp", listen="127.0.0.1:0", clock="receive")
        )
        batches: list[Batch] = []

        async def emit(batch: Batch) -> None:
            batches.append(batch)
            assert batch.done is not None
            batch.done()  # committed

        task = asyncio.create_task(src.run(emit, lambda rej: None))
        await asyncio.wait_for(src.listening.wait(), 5)
        assert src.port
        reader, writer = await asyncio.open_connection("127.0.0.1", src.port)
        writer.write(frame(r40(*low_spo2("active", NOW), control="A7")))
        framer = MllpFramer()
        acks: list[bytes] = []
        while not acks:
            data = await asyncio.wait_for(reader.read(4096), 5)
            assert data, "closed before the ACK"
            acks += framer.feed(data)
        writer.close()
        src.stop()
        await asyncio.wait_for(task, 5)
        segs = [seg.split("|") for seg in acks[0].decode().split("\r") if seg]
        return batches, segs

    batches, segs = asyncio.run(main())
    assert segs[0][8] == "ACK^R40^ACK"
    assert segs[1][:3] == ["MSA", "AA", "A7"]
    (batch,) = batches
    assert [(r.device, r.complete, r.alarms[0].key) for r in batch.device_alarms] == [
        ("BX40", False, "MDC_EVT_LO MDC_PULS_OXIM_SAT_O2")
    ]
