"""Dead letters: counted by cause, logged at most once per 10 s per cause, published."""

from __future__ import annotations

import json
import logging

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from monitor.model import Rejection
from monitor.sources.deadletter import LOG_EVERY_S, DeadLetters


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_counted_by_cause_logged_once_per_window_published_every_time(caplog):
    published: list[tuple[str, bytes]] = []
    clock = Clock()
    dl = DeadLetters(lambda topic, payload: published.append((topic, payload)), clock=clock)
    caplog.set_level(logging.WARNING, logger="vitalmon.deadletter")
    for _ in range(5):
        dl(Rejection("malformed_json", "bad", "vitals/icu/1/m", b"{x"))
    dl(Rejection("implausible", "spo2=150", "vitals/icu/1/m", b'{"spo2":150}'))
    assert dl.counts == {"malformed_json": 5, "implausible": 1}
    assert len(published) == 6
    assert [r.getMessage().split(")")[0] for r in caplog.records] == [
        "rejected input (malformed_json",
        "rejected input (implausible",
    ]
    clock.t += LOG_EVERY_S
    dl(Rejection("malformed_json", "bad", "vitals/icu/1/m", b"{x"))
    assert len(caplog.records) == 3
    assert "+4 more" in caplog.records[-1].getMessage()
    topic, payload = published[0]
    assert topic == "vitalmon/deadletter"
    letter = json.loads(payload)
    assert letter["reason"] == "malformed_json" and letter["payload"] == "{x"


def test_logs_never_carry_the_payload(caplog):
    caplog.set_level(logging.WARNING, logger="vitalmon.deadletter")
    dl = DeadLetters(None)
    dl(Rejection("unknown_vital", "field 'x'", "t", b'{"patient": "MRN-0012345", "x": 1}'))
    assert "MRN-0012345" not in caplog.text


def test_binary_payload_is_base64_and_long_payload_truncated():
    letter = DeadLetters.letter(Rejection("not_utf8", "d", "t", b"\xff\xfe\x00"))
    assert letter["payload_b64"] == "//4A" and "payload" not in letter
    long = DeadLetters.letter(Rejection("too_large", "d", "t", b"a" * 5000))
    assert len(str(long["payload"])) == 1024 and long["truncated"] is True


# ------------------------------------------------------------------ no identities


def test_letters_never_echo_a_patient_identifier():
    """A dead letter is a side channel: the payload echo keeps the shape of what was
    refused, never who it was about (HL7 PID/NK1/MRG..., JSON "patient", broken or not)."""
    hl7 = (
        b"MSH|^~\\&|MON|ICU|||20251128100000||ORU^R01|1|P|2.5\r"
        b"PID|||MRN-4411^^^HOSP||Doe^Jane||19600101|F\rNK1|1|Doe^John|SPO\r"
        b"PV1||I|icu^^7\rOBX|1|NM|0002-4bb8^SpO2^MDIL||x|%|||||F\r"
    )
    letters = [
        DeadLetters.letter(Rejection("wrong_type", "OBX SpO2", "hl7", hl7)),
        DeadLetters.letter(
            Rejection(
                "implausible", "spo2=150", "t", b'{"ts": 1, "spo2": 150, "patient": "MRN-4411"}'
            )
        ),
        DeadLetters.letter(
            Rejection(
                "malformed_json", "bad", "t", b'[{"Patient" : 4411, "hr": 70}, {"patient":"MRN-4411'
            )
        ),
    ]
    for letter in letters:
        text = json.dumps(letter)
        assert "4411" not in text and "Doe" not in text and "Jane" not in text
    assert "PID|<redacted>" in str(letters[0]["payload"])
    assert "OBX|1|NM|0002-4bb8^SpO2^MDIL||x" in str(letters[0]["payload"])  # the rest kept
    assert '"patient": "<redacted>"' in str(letters[1]["payload"])
    assert '"spo2": 150' in str(letters[1]["payload"])


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-^&", min_size=4, max_size=20),
    st.sampled_from(["PID", "PD1", "NK1", "GT1", "IN1", "IN2", "MRG"]),
    st.sampled_from(["\r", "\n", "\r\n"]),
)
def test_no_person_segment_field_survives(ident: str, segment: str, sep: str) -> None:
    assume("MRN" not in ident)
    frame = f"MSH|^~\\&|M|F{sep}{segment}|1|{ident}|{ident}{sep}OBX|1|NM|HR||70{sep}".encode()
    payload = str(DeadLetters.letter(Rejection("x", "", "", frame))["payload"])
    assert f"|{ident}" not in payload
    assert "OBX|1|NM|HR||70" in payload
