"""Dead letters: every refused input is counted by cause, logged at most once per
10 s per cause, and published to ``vitalmon/deadletter`` with its reason.

The payload echoed (its first KiB, for whoever integrates a device) never carries a
patient identifier (:func:`redact`): a dead letter is a side channel, read by people and
tools that have no business with identities. HL7 segments that identify a person (PID,
PD1, NK1, GT1, IN1, IN2, MRG) keep only their name; a JSON ``"patient"`` value becomes
``"<redacted>"``, in valid and broken JSON alike."""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable

from monitor.model import Rejection, iso

log = logging.getLogger("vitalmon.deadletter")

TOPIC = "vitalmon/deadletter"
LOG_EVERY_S = 10.0
MAX_PAYLOAD_ECHO = 1024

Publish = Callable[[str, bytes], object]

REDACTED = "<redacted>"
#: HL7 segments about a person: only their name is echoed.
_PERSON_SEGMENTS = ("PID", "PD1", "NK1", "GT1", "IN1", "IN2", "MRG")
_HL7_PERSON = re.compile(rb"(^|[\r\n\x0b])(" + b"|".join(s.encode() for s in _PERSON_SEGMENTS)
                         + rb")([|^~\\&])[^\r\n\x1c]*")  # fmt: skip
#: ``"patient": <string or number>`` in any JSON, valid or not (any case, any spacing).
_JSON_PATIENT = re.compile(rb'("patient"\s*:\s*)("(?:[^"\\]|\\.)*"?|-?[0-9][0-9.eE+-]*)',
                           re.IGNORECASE)  # fmt: skip


def redact(payload: bytes) -> bytes:
    """``payload`` without patient identifiers (module docstring)."""
    out = _HL7_PERSON.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + REDACTED.encode(),
                          payload)  # fmt: skip
    return _JSON_PATIENT.sub(lambda m: m.group(1) + b'"' + REDACTED.encode() + b'"', out)


class DeadLetters:
    def __init__(
        self, publish: Publish | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.counts: Counter[str] = Counter()
        self._publish = publish
        self._clock = clock
        self._last_log: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def __call__(self, rej: Rejection) -> None:
        self.counts[rej.cause] += 1
        now = self._clock()
        last = self._last_log.get(rej.cause)
        if last is None or now - last >= LOG_EVERY_S:
            more = self._suppressed.pop(rej.cause, 0)
            # No payload in logs: it may carry patient identifiers.
            log.warning(
                "rejected input (%s) on %s: %s%s",
                rej.cause,
                rej.topic or "-",
                rej.detail,
                f" (+{more} more since last report)" if more else "",
            )
            self._last_log[rej.cause] = now
        else:
            self._suppressed[rej.cause] += 1
        if self._publish is not None:
            self._publish(TOPIC, json.dumps(self.letter(rej)).encode())

    @staticmethod
    def letter(rej: Rejection) -> dict[str, object]:
        out: dict[str, object] = {
            "reason": rej.cause,
            "detail": rej.detail,
            "topic": rej.topic,
            "at": iso(time.time()),
        }
        raw = redact(rej.payload)[:MAX_PAYLOAD_ECHO]
        try:
            out["payload"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            out["payload_b64"] = base64.b64encode(raw).decode()
        if len(rej.payload) > MAX_PAYLOAD_ECHO:
            out["truncated"] = True
        return out
