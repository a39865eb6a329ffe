"""IHE PCD-04 (ORU^R40) as the ``hl7-mllp`` route sends it: the encoder against the ``hl7``
library and against vitalmon's own PCD-04 parser (the HL7 source), property-based with
hypothesis; the lifecycle mapping; reading ACKs; the MDC codes sent per vital.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import replace
from datetime import UTC

import hl7
import pytest
from delivery_receivers import check_pcd04
from hypothesis import given
from hypothesis import strategies as st

from monitor.hl7v2 import MDC_VITALS, escape, frame, hl7_time
from monitor.model import VITALS, AlertEvent, AlertState, Priority, new_alert
from monitor.sinks.delivery.pcd04 import AckError, encode, read_ack, states
from monitor.sources.devices import DeviceContext
from monitor.sources.devices.hl7 import Ack, Hl7Parser, ack, resolve_observation, resolve_unit

NOW = 1_790_000_000.25
KINDS = ["physiological", "trend", "score", "device", "technical"]
RULES = {
    "spo2.low": "L",
    "hr.high": "H",
    "rr.trend_up": "H",
    "sbp.baseline_down": "L",
    "device.stale": "",
    "sensor.off": "",
    "news2": "H",
}
safe_name = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=16)
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)


@st.composite
def alert_events(draw: st.DrawFn, names: st.SearchStrategy[str] = safe_name) -> AlertEvent:
    vital = draw(st.sampled_from([*MDC_VITALS, "news2", ""]))
    rule = draw(st.sampled_from(sorted(RULES)))
    kind = "score" if rule == "news2" else draw(st.sampled_from(KINDS))
    _unit, low, high = VITALS.get(vital, ("", 0.0, 20.0))
    value = draw(st.one_of(st.just(math.nan), st.integers(int(low), int(high)).map(float)))
    limit = draw(st.one_of(st.just(math.nan), st.integers(int(low), int(high)).map(float)))
    e = new_alert(
        ward=draw(names),
        bed=draw(names),
        device=draw(names),
        patient=draw(st.one_of(st.none(), names)),
        vital=vital,
        rule=rule,
        kind=kind,
        priority=draw(st.sampled_from(list(Priority))),
        value=value,
        limit=limit,
        message=draw(any_text),
        started=NOW - draw(st.integers(0, 3600)),
        at=NOW,
    )
    step = draw(st.sampled_from(["raise", "update", "renotify", "escalate", "ack", "resolve"]))
    extra = {
        "raise": {},
        "update": {},
        "renotify": {"renotify": True, "action": "renotify"},
        "escalate": {"escalated": True, "action": "escalate"},
        "ack": {"ack_by": "kim", "action": "acknowledge"},
        "resolve": draw(st.sampled_from([{}, {"ack_by": "kim"}])),
    }[step]
    state = {"ack": AlertState.ACKNOWLEDGED, "resolve": AlertState.RESOLVED}.get(
        step, AlertState.ACTIVE
    )
    return replace(
        e, seq=1 if step == "raise" else draw(st.integers(2, 999)), state=state, extra=extra
    )


def key(e: AlertEvent) -> str:
    return f"{e.id}:{e.seq}"


@given(alert_events(names=any_text.filter(bool)))
def test_any_event_is_a_well_formed_oru_r40(e: AlertEvent) -> None:
    """Whatever the text (separators, escape characters, control characters, any
    script), the message parses with the ``hl7`` library into the PCD-04 structure, and
    every text comes back as it was (control characters as spaces)."""
    raw = encode(e, key(e), now=NOW)
    assert b"\x0b" not in raw and b"\x1c" not in raw
    text = raw.decode()
    assert text.endswith("\r") and "\n" not in text
    info = check_pcd04(text)
    plain = lambda s: re.sub(r"[\x00-\x1f\x7f]", " ", s)  # noqa: E731
    assert info["control"] == f"{e.id}.{e.seq}"
    assert info["alert"] == e.id
    assert info["text"] == plain(e.message)
    msg = hl7.parse(text)
    place = msg.segment("PV1")[3][0]
    assert msg.unescape(str(place[0])) == plain(e.ward)
    assert msg.unescape(str(place[2])) == plain(e.bed)
    assert info["priority"] == {"high": "PH", "medium": "PM", "low": "PL"}[e.priority]
    assert info["type"] == ("ST" if e.kind == "technical" else "SP")
    assert (info["phase"], info["state"], info["inactivation"]) == states(e)
    assert len(msg.segments("OBX")) == (6 if e.vital in MDC_VITALS and e.value == e.value else 5)


@given(alert_events())
def test_vitalmons_own_hl7_source_reads_back_what_the_route_sends(e: AlertEvent) -> None:
    """The ORU^R40 through the HL7 source's parser (ORU^R40, IHE PCD-04): one alarm of
    the bed in PV1-3, its priority, type, activity, time, text, source and value."""
    now = NOW
    parser = Hl7Parser(bind="pv1")
    ctx = DeviceContext("default", "x", "gw", now, clock="device", tz=UTC, max_skew_s=300)
    parsed, answer = parser.parse_message(encode(e, key(e), now=now), ctx)
    assert (answer.code, answer.trigger, answer.control_id) == ("AA", "R40", f"{e.id}.{e.seq}")
    (report,) = parsed.device_alarms
    assert (report.ward, report.bed, report.device) == (e.ward, e.bed, e.device)
    assert report.patient == e.patient
    assert abs(report.ts - e.at) < 0.002
    (alarm,) = report.alarms
    assert alarm.priority == e.priority
    assert alarm.kind == ("technical" if e.kind == "technical" else "device")
    assert alarm.active is (e.state != AlertState.RESOLVED)
    said = re.sub(r"[\x00-\x1f\x7f]", " ", e.message).strip()[:200]
    assert alarm.text == (said or alarm.source)
    if e.vital in MDC_VITALS:
        assert alarm.key.endswith(MDC_VITALS[e.vital][1])
        if math.isfinite(e.value):
            assert [(r.vital, r.value) for r in parsed.readings] == [(e.vital, e.value)]
    else:
        assert parsed.readings == []


@pytest.mark.parametrize(
    ("state", "seq", "extra", "expected"),
    [
        (AlertState.ACTIVE, 1, {}, ("start", "active", "enabled")),
        (AlertState.ACTIVE, 2, {}, ("update", "active", "enabled")),
        (
            AlertState.ACTIVE,
            3,
            {"renotify": True, "action": "renotify"},
            ("continue", "active", "enabled"),
        ),
        (
            AlertState.ACTIVE,
            2,
            {"escalated": True, "action": "escalate"},
            ("escalate", "active", "enabled"),
        ),
        (
            AlertState.ACKNOWLEDGED,
            3,
            {"ack_by": "kim", "action": "acknowledge"},
            ("update", "active", "alert-acknowledged"),
        ),
        (AlertState.ACKNOWLEDGED, 4, {"ack_by": "kim"}, ("update", "active", "alert-acknowledged")),
        (AlertState.RESOLVED, 4, {}, ("end", "inactive", "enabled")),
        (AlertState.RESOLVED, 5, {"ack_by": "kim"}, ("end", "inactive", "alert-acknowledged")),
    ],
)
def test_the_lifecycle_as_pcd04_alert_states(
    state: AlertState, seq: int, extra: dict[str, object], expected: tuple[str, str, str]
) -> None:
    e = new_alert(
        ward="3west",
        bed="6",
        device="mon1",
        patient=None,
        vital="spo2",
        rule="spo2.low",
        kind="physiological",
        priority=Priority.HIGH,
        value=84,
        limit=85,
        message="SpO2 84 % < 85 % for 15 s",
        started=NOW,
    )
    assert states(replace(e, state=state, seq=seq, extra=extra)) == expected


def test_a_threshold_alert_message_as_sent() -> None:
    e = new_alert(
        ward="3west",
        bed="6",
        device="mon|1",
        patient="PT^4411",
        vital="spo2",
        rule="spo2.low",
        kind="physiological",
        priority=Priority.HIGH,
        value=84,
        limit=85,
        message="SpO2 84 % < 85 % for 15 s",
        started=NOW - 15,
        at=NOW,
    )
    segments = encode(e, key(e), now=NOW).decode().split("\r")
    assert segments[0] == (
        f"MSH|^~\\&|vitalmon||||{hl7_time(NOW)}||ORU^R40^ORU_R40|{e.id}.1|P|2.6|||AL|NE||"
        "UNICODE UTF-8|||IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4.1^ISO"
    )
    assert segments[1:] == [
        "PID|||PT\\S\\4411",
        "PV1||I|3west^^6",
        f"OBR|1|{e.id}^vitalmon|{e.id}^vitalmon|196616^MDC_EVT_ALARM^MDC|||{hl7_time(NOW - 15)}",
        f"OBX|1|ST|196670^MDC_EVT_LO^MDC|1.0.0.0.1|SpO2 84 % < 85 % for 15 s|||L~PH~SP|||F|||"
        f"{hl7_time(NOW)}||||mon\\F\\1",
        "OBX|2|CWE|68480^MDC_ATTR_ALERT_SOURCE^MDC|1.0.0.0.2|150456^MDC_PULS_OXIM_SAT_O2^MDC"
        "||||||F",
        "OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.0.0.0.3|84|262688^MDC_DIM_PERCENT^MDC|>85"
        f"||||F|||{hl7_time(NOW)}",
        "OBX|4|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|1.0.0.0.4|start||||||F",
        "OBX|5|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.0.0.0.5|active||||||F",
        "OBX|6|ST|68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC|1.0.0.0.6|enabled||||||F",
        "",
    ]


def test_reading_acks() -> None:
    e = new_alert(
        ward="w",
        bed="1",
        device="d",
        patient=None,
        vital="hr",
        rule="hr.high",
        kind="physiological",
        priority=Priority.MEDIUM,
        value=130,
        limit=120,
        message="HR 130 /min > 120 /min",
        started=NOW,
    )
    sent = encode(e, key(e), now=NOW).decode()
    for code in ("AA", "AE", "AR", "CA"):
        answer = str(hl7.parse(sent).create_ack(ack_code=code)).encode()
        assert read_ack(answer)[:2] == (code, f"{e.id}.1")
    ours = ack(Ack("AE", control_id="X.2", text="no such bed | sorry", version="2.6"))
    assert read_ack(ours) == ("AE", "X.2", "no such bed \\F\\ sorry")
    other = b"MSH#$*!@#AM#####ACK#9#P#2.6\rMSA#CA#Y.3"
    assert read_ack(other) == ("CA", "Y.3", "")
    for bad in (b"", b"hello", b"MSH|^~\\&|AM\rERR|x", frame(b"MSH")):
        with pytest.raises(AckError):
            read_ack(bad)


@pytest.mark.parametrize("vital", sorted(MDC_VITALS))
def test_the_mdc_code_sent_for_each_vital_reads_back_as_that_vital(vital: str) -> None:
    code, mnemonic, unit_code, unit = MDC_VITALS[vital]
    assert resolve_observation([str(code)])[0] == vital  # type: ignore[index]
    assert resolve_observation(["", mnemonic])[0] == vital  # type: ignore[index]
    units = {"%": "%", "/min": "/min", "mmHg": "mmHg", "°C": "Cel"}
    assert resolve_unit([str(unit_code)]) == resolve_unit([unit]) == units[VITALS[vital][0]]


@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=40))
def test_escape_is_undone_by_the_hl7_library(text: str) -> None:
    flat = text.replace("\r", " ").replace("\n", " ")
    msg = hl7.parse(f"MSH|^~\\&|a\rNTE|1||{escape(text)}|end")
    assert msg.unescape(str(msg.segment("NTE")[3])) == flat
