"""Dead letters: counted by cause, logged at most once per 10 s per cause, published."""

from __future__ import annotations

import json
import logging

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
        "rejected input (malformed_json", "rejected input (implausible"]  # fmt: skip
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
