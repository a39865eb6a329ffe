"""Dead letters: every refused input is counted by cause, logged at most once per
10 s per cause, and published to ``vitalmon/deadletter`` with its reason.

The payload echoed (its first KiB, for whoever integrates a device) never carries a
patient identifier (:func:`redact`): a dead letter is a side channel, read by people and
tools that have no business with identities.

* HL7 segments that identify a person (PID, PD1, NK1, GT1, IN1, IN2, MRG) keep only their
  name and field separator: ``PID|<redacted>``. A segment is recognised as leniently as
  the parser reads it, whatever the message's encoding characters: its name in any case,
  after blanks, at the start of any line (CR, LF, the MLLP bytes), followed by the field
  separator its message declares (the character after ``MSH``, ``FHS`` or ``BHS``:
  ``MSH#$*!@...`` declares ``#``) or by any other character that cannot continue a
  segment name (so a fragment without its MSH is covered too). HL7 inside a JSON string
  (segment breaks written ``\\r``) is redacted the same way.
* A JSON ``"patient"`` key (any case, ``\\u`` escapes decoded, at any depth, also in JSON
  carried as a string inside JSON) has its value, whatever its type, replaced by
  ``"<redacted>"``, in valid and broken JSON alike: in place, so the rest keeps its shape;
  a valid document where anything is still left is redacted as parsed and re-serialised.
* UTF-16 and UTF-32 payloads (JSON accepts them, commands included) are redacted as text
  and echoed in their own encoding.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from monitor.model import Rejection, iso

log = logging.getLogger("vitalmon.deadletter")

TOPIC = "vitalmon/deadletter"
LOG_EVERY_S = 10.0
MAX_PAYLOAD_ECHO = 1024

Publish = Callable[[str, bytes], object]

REDACTED = "<redacted>"
_REDACTED = REDACTED.encode()
#: HL7 segments about a person: only their name is echoed.
_PERSON_SEGMENTS = ("PID", "PD1", "NK1", "GT1", "IN1", "IN2", "MRG")
_PERSON_NAMES = b"|".join(s.encode() for s in _PERSON_SEGMENTS)
#: Where an HL7 segment starts: the payload's start, a line end, the MLLP bytes; then
#: blanks or anything else that is not a letter or digit (the parser strips blanks around
#: a segment's name, in any script).
_LEAD = rb"(?:^|[\r\n\x0b\x1c])[^\r\n\x0b\x1cA-Za-z0-9]*"
#: A header segment and the field separator it declares (MSH-1, FHS-1, BHS-1).
_HEADER = re.compile(_LEAD + rb"(?:MSH|FHS|BHS)([^\r\n])", re.IGNORECASE)
#: The same, in HL7 carried as a JSON (or C) string: segments end in ``\r`` or ``\n``
#: escapes, and the string in an unescaped quote.
_LEAD_ESCAPED = rb'(?:\\[rn]|")(?:[^\r\nA-Za-z0-9"\\]|\\[tfb]|\\u[0-9A-Fa-f]{4})*'
_REST_ESCAPED = rb'(?:[^"\\\r\n]|\\[^rn\r\n])*'
_HEADER_ESCAPED = re.compile(_LEAD_ESCAPED + rb"(?:MSH|FHS|BHS)([^\r\n])", re.IGNORECASE)
_ANY_PERSON = re.compile(_PERSON_NAMES, re.IGNORECASE)
#: ``"patient"`` as a JSON key, also escaped inside a JSON string (``\"patient\"``) and
#: with ``\u`` escapes: group 1 is the backslashes before its quotes (a run of them taken
#: whole, and a few: JSON in JSON in JSON), group 2 the key.
_JSON_KEY = re.compile(
    rb'(?<!\\)(\\{0,15})"((?:[^"\\]|\\[^"]){0,256}?)\1"(?:\s|\\[rnt])*:(?:\s|\\[rnt])*'
)
_KEY_ESCAPE = re.compile(r"(?<!\\)\\{1,15}u([0-9a-fA-F]{4})")
#: A number, a literal or broken JSON, up to the next delimiter.
_SCALAR = re.compile(rb'[^,}\]\s\\"]*')
_WIDE = ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be")


def redact(payload: bytes) -> bytes:
    """``payload`` without patient identifiers (module docstring)."""
    wide = _wide_encoding(payload)
    if wide is not None:  # as the text JSON reads there; then as bytes all the same
        unit = 4 if "32" in wide else 2
        text = payload[: len(payload) - len(payload) % unit].decode(wide, "replace")
        utf8 = text.encode("utf-8", "surrogatepass")
        out = _redact(utf8)
        if out != utf8:
            payload = out.decode("utf-8", "surrogatepass").encode(wide, "surrogatepass")
    return _redact(payload)


def _redact(payload: bytes) -> bytes:
    out = _redact_hl7(payload)
    out = _redact_json_keys(out)
    lower = out.lower()
    if b"atient" not in lower and b"\\u" not in lower and not _ANY_PERSON.search(out):
        return out  # nothing a document could still hide
    doc = _json_doc(out)
    if doc is not None:  # a valid document: whatever the in-place passes could not see
        try:
            redacted, changed = _redact_doc(doc)
            if changed:
                out = json.dumps(redacted, ensure_ascii=False).encode("utf-8", "surrogatepass")
        except RecursionError:  # nested as deep as the parser goes: what is done stands
            pass
    return out


def _redact_hl7(payload: bytes) -> bytes:
    """Person segments -> ``<name><separator><redacted>``, with the field separators the
    payload's own header segments declare, and any non-alphanumeric one."""
    if not _ANY_PERSON.search(payload):
        return payload
    seps = {m.group(1) for m in _HEADER.finditer(payload)}
    seps |= {m.group(1) for m in _HEADER_ESCAPED.finditer(payload)}
    # no header: the separator is unknown, and any character after a name may be it
    alnum = bytes(sorted(c for c in b"".join(seps) if _alnum(c))) if seps else _ALNUM
    person, escaped = _person_patterns(alnum)
    out = person.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + _REDACTED, payload)
    return escaped.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + _REDACTED, out)


@functools.lru_cache(maxsize=64)
def _person_patterns(alnum_seps: bytes) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """Person segments, raw and escaped, for these declared alphanumeric separators (any
    other character after a person segment's name is taken as its separator anyway)."""
    declared = rb"|[" + re.escape(alnum_seps) + rb"]" if alnum_seps else b""
    sep = rb"(?:[^\r\nA-Za-z0-9]" + declared + rb")"
    raw = re.compile(
        rb"(" + _LEAD + rb")(" + _PERSON_NAMES + rb")(" + sep + rb")[^\r\n]*", re.IGNORECASE
    )
    # in a JSON string, the separator may be written as an escape (\" \\ \u0023)
    sep_escaped = rb'(?:\\u[0-9A-Fa-f]{4}|\\[^rn\r\n]|[^\r\nA-Za-z0-9"\\]' + declared + rb")"
    escaped = re.compile(
        rb"("
        + _LEAD_ESCAPED
        + rb")("
        + _PERSON_NAMES
        + rb")("
        + sep_escaped
        + rb")"
        + _REST_ESCAPED,
        re.IGNORECASE,
    )
    return raw, escaped


_ALNUM = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _alnum(c: int) -> bool:
    return 0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A


def _redact_json_keys(payload: bytes) -> bytes:
    """Every ``"patient": <value>`` -> ``"patient": "<redacted>"``, in place, in valid or
    broken JSON, at any depth and escaping level."""
    lower = payload.lower()
    if b"atient" not in lower and b"\\u" not in lower:
        return payload
    out = bytearray()
    copied = 0  #: payload[:copied] is in out
    pos = 0  #: where the next key is looked for
    while (m := _JSON_KEY.search(payload, pos)) is not None:
        if not _is_patient(m.group(2)):
            # on from inside it: the value may hold keys (an object), or this "key" was
            # the end of a value and the start of the next key
            pos = m.start() + len(m.group(1)) + 1
            continue
        start = m.end()
        end = _value_end(payload, start, len(m.group(1)))
        q = m.group(1) + b'"'
        out += payload[copied:start] + q + _REDACTED + q
        copied = pos = end  # (end == start: no value there, broken JSON: the marker alone)
    return bytes(out + payload[copied:])


def _is_patient(key: bytes) -> bool:
    text = _KEY_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), key.decode("latin-1"))
    return text.replace("\\", "").casefold() == "patient"


def _value_end(buf: bytes, i: int, level: int) -> int:
    """Where the JSON value starting at ``i`` ends (its length in broken JSON: the end of
    ``buf``). ``level``: backslashes before its quotes (0 for plain JSON, 1 for JSON in a
    JSON string...)."""
    n = len(buf)
    if i >= n:
        return i
    if buf.startswith(b"\\" * level + b'"', i):
        return _string_end(buf, i + level + 1, level)
    if buf[i] in b"{[":
        depth = 0
        j = i
        while j < n:
            c = buf[j]
            if c == 0x22:  # a quote: a string of this level starts here, or nothing
                run = _backslashes_before(buf, j)
                j = _string_end(buf, j + 1, level) if run == level else j + 1
                continue
            if c in b"{[":
                depth += 1
            elif c in b"}]":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return n
    m = _SCALAR.match(buf, i)
    return m.end() if m else i


def _string_end(buf: bytes, j: int, level: int) -> int:
    """After the opening quote at ``j - 1``: just past its closing quote (a quote after a
    run of backslashes r with r % 2(level+1) == level), else the end of ``buf``."""
    n = len(buf)
    while j < n:
        k = buf.find(b'"', j)
        if k < 0:
            return n
        if _backslashes_before(buf, k) % (2 * (level + 1)) == level:
            return k + 1
        j = k + 1
    return n


def _backslashes_before(buf: bytes, k: int) -> int:
    r = 0
    while k - r - 1 >= 0 and buf[k - r - 1] == 0x5C:
        r += 1
    return r


def _json_doc(payload: bytes) -> Any:
    """The document, when ``payload`` is one valid JSON object or array (else None)."""
    head = payload.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head not in (b"{", b"[", b'"'):
        return None
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


def _redact_doc(doc: Any) -> tuple[Any, bool]:
    """``doc`` with every ``patient`` key's value redacted, and every string redacted as
    a payload of its own (HL7, JSON in a string); -> (doc, changed)."""
    if isinstance(doc, dict):
        changed = False
        out: dict[str, Any] = {}
        for k, v in doc.items():
            if isinstance(k, str) and k.casefold() == "patient":
                out[k] = REDACTED
                changed = changed or v != REDACTED
            else:
                out[k], c = _redact_doc(v)
                changed = changed or c
        return out, changed
    if isinstance(doc, list):
        items = [_redact_doc(v) for v in doc]
        return [v for v, _ in items], any(c for _, c in items)
    if isinstance(doc, str):
        raw = doc.encode("utf-8", "surrogatepass")
        inner = _json_doc(raw) if raw.lstrip()[:1] in (b"{", b"[") else None
        if inner is not None:
            redacted, changed = _redact_doc(inner)
            return (json.dumps(redacted, ensure_ascii=False), True) if changed else (doc, False)
        out_raw = _redact_hl7(raw)
        if out_raw != raw:
            return out_raw.decode("utf-8", "surrogatepass"), True
    return doc, False


def _wide_encoding(payload: bytes) -> str | None:
    """UTF-16 or UTF-32 as JSON (``json.loads``, commands included) detects them: a BOM,
    or zero bytes in the first four (ASCII in UTF-16 or UTF-32 is valid UTF-8 as well);
    else None."""
    if b"\x00" not in payload[:4] and not payload.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None
    enc = json.detect_encoding(payload)
    return enc if enc in _WIDE else None


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
