"""Dead letters never echo a patient identifier, whatever the payload's encoding: each
test failed on the code before its fix.

:func:`~monitor.sources.deadletter.redact` knew person segments (PID, NK1, ...) only
with the standard field separator ``|`` at the start of a line, in upper case, and a
JSON ``"patient"`` only with a string or number value, in plain JSON. The HL7 parser
takes the message's own encoding characters (``MSH#$*!@``), segment names in any case
and with blanks around them, and JSON readers take UTF-16 and UTF-32: an ORU^R01 in other
encoding characters had its PID echoed on ``vitalmon/deadletter``, and so had a command
with its patient as an object, or sent in UTF-16.

The properties drive ``DeadLetters.letter`` (what is published) with random encoding
characters and patient ids; the end-to-end tests go through a real daemon (``vitalmon
run``, mosquitto, an MLLP socket, ``mosquitto_pub``).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
from typing import Any

from conftest import free_port, wait_for
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from monitor.model import Rejection
from monitor.sources.deadletter import DeadLetters, redact
from monitor.sources.devices import DeviceContext, MllpFramer, frame
from monitor.sources.devices.hl7 import Hl7Parser

PERSON = ["PID", "PD1", "NK1", "GT1", "IN1", "IN2", "MRG"]
STAMP = time.strftime("%Y%m%d%H%M%S+0000", time.gmtime())


def echoed(payload: bytes) -> str:
    """Everything a dead letter of ``payload`` shows: its JSON, and the bytes of a base64
    echo as text (UTF-8, and UTF-16/32 when they are)."""
    letter = DeadLetters.letter(Rejection("wrong_type", "OBX SpO2", "hl7-mllp", payload))
    shown = [json.dumps(letter), str(letter.get("payload", ""))]
    if "payload_b64" in letter:
        raw = base64.b64decode(str(letter["payload_b64"]))
        for enc in (
            "utf-8",
            "latin-1",
            "utf-16",
            "utf-16-le",
            "utf-16-be",
            "utf-32-le",
            "utf-32-be",
        ):
            shown.append(raw[: len(raw) - len(raw) % 4].decode(enc, "replace"))
    return "\n".join(shown)


def oru(enc: str, patient: str, seg: str = "PID", end: str = "\r", value: str = "abc") -> bytes:
    """An ORU^R01 in the encoding characters ``enc`` (MSH-1 and MSH-2), its patient id in
    ``seg``, one SpO2 OBX (``abc``: refused, so dead-lettered with the message)."""
    f, c = enc[0], enc[1]
    segs = [
        f"MSH{enc}{f}MON7{f}WEST{f}VM{f}HOSP{f}{STAMP}{f}{f}ORU{c}R01{c}ORU_R01{f}C1{f}P{f}2.6",
        f"{seg}{f}{f}{f}{patient}{f}{f}Doe{c}Jane",
        f"PV1{f}{f}I{f}icu{c}{c}7",
        f"OBR{f}1{f}{f}{f}{f}{f}{f}{STAMP}",
        f"OBX{f}1{f}NM{f}150456{c}MDC_PULS_OXIM_SAT_O2{c}MDC{f}{f}{value}{f}%{f}{f}{f}{f}{f}F",
    ]
    return (end.join(segs) + end).encode()


# ------------------------------------------------------------------------ properties

_printable = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
_encoding = st.lists(_printable, min_size=5, max_size=5, unique=True).map("".join)
_ids = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789-", min_size=6, max_size=16).map(
    lambda s: "Q" + s
)


@settings(max_examples=400, deadline=None)
@given(
    enc=_encoding,
    patient=_ids,
    seg=st.sampled_from(PERSON),
    end=st.sampled_from(["\r", "\n", "\r\n"]),
    case=st.sampled_from([str.upper, str.lower, str.title]),
    blanks=st.sampled_from(["", " ", "\t ", "\ufeff"]),
    wrap=st.sampled_from(["raw", "mllp", "json", "utf-16", "cut"]),
)
def test_no_patient_id_in_a_dead_letter_whatever_the_encoding_characters(
    enc: str, patient: str, seg: str, end: str, case: Any, blanks: str, wrap: str
) -> None:
    msg = oru(enc, patient, seg, end)
    assume(patient not in oru(enc, "", seg, end).decode())  # the id is only in `seg`
    # the segment as leniently written as the parser reads it (name in any case, blanks)
    msg = msg.replace((end + seg).encode(), (end + blanks + case(seg)).encode())
    if wrap == "mllp":
        payload = frame(msg)
    elif wrap == "json":  # HL7 carried in a JSON string: segment breaks escaped
        payload = json.dumps({"device": "gw", "hl7": msg.decode()}).encode()
    elif wrap == "utf-16":
        payload = msg.decode().encode("utf-16")
    elif wrap == "cut":  # a fragment: from inside the segment before, without the MSH
        payload = msg[msg.index(b"WEST") :]
    else:
        payload = msg
    assert patient not in echoed(payload)


def test_the_generated_messages_are_what_the_parser_reads() -> None:
    """The property's messages carry the patient as the parser reads it (PID-3), in other
    encoding characters too, so what it redacts is what was at stake."""
    ctx = DeviceContext("icu", "7", "mon", time.time())
    for enc in ("|^~\\&", "#$*!@"):
        for end in ("\r", "\n"):
            parsed = Hl7Parser(bind="pv1").parse(oru(enc, "QSECRET1", end=end, value="97"), ctx)
            assert [r.patient for r in parsed.readings] == ["QSECRET1"], (enc, end)
    lower = oru("#$*!@", "QSECRET1", value="97").replace(b"\rPID", b"\r pid")
    assert [r.patient for r in Hl7Parser(bind="pv1").parse(lower, ctx).readings] == ["QSECRET1"]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(
    patient=_ids,
    shape=st.sampled_from(["string", "object", "list", "number"]),
    key=st.sampled_from(["patient", "Patient", "PATIENT", "p\\u0061tient"]),
    depth=st.integers(0, 3),
    other=_json_values,
    layout=st.sampled_from(
        ["compact", "spaced", "in_a_string", "broken", "utf-16", "utf-16-be", "utf-32-be"]
    ),
)
def test_no_patient_id_in_a_json_dead_letter_at_any_depth(
    patient: str, shape: str, key: str, depth: int, other: Any, layout: str
) -> None:
    value: Any = {
        "string": patient,
        "object": {"id": patient, "name": ["Doe", "Jane"]},
        "list": [{"mrn": patient}],
        "number": int("8" + "".join(str(ord(c) % 10) for c in patient)),  # 8+ digits
    }[shape]
    secret = str(value) if shape == "number" else patient
    assume(secret not in json.dumps(other))
    doc: Any = {"__KEY__": value, "ts": 1, "spo2": 150, "other": other}
    for _ in range(depth):
        doc = {"ward": "icu", "nested": [doc]}
    sep = (",", ":") if layout == "compact" else (", ", ": ")
    text = json.dumps(doc, separators=sep).replace('"__KEY__"', f'"{key}"')
    if layout == "in_a_string":  # JSON carried as a string in JSON
        text = json.dumps({"data": text})
    payload = text.encode()
    if layout == "broken":  # cut right after the secret's first character
        payload = payload[: payload.index(secret.encode()) + 1 + len(secret) // 2]
    elif layout.startswith("utf-"):
        payload = text.encode(layout)
    assert secret not in echoed(payload)


# ------------------------------------------------------------------------ examples


def test_examples_that_leaked_and_what_is_kept() -> None:
    other = oru("#$*!@", "QSECRET-4711")
    out = redact(other).decode()
    assert "QSECRET" not in out and "Doe" not in out
    assert "\rPID#<redacted>\r" in out
    assert "OBX#1#NM#150456$MDC_PULS_OXIM_SAT_O2$MDC##abc#%" in out  # the rest is kept
    assert redact(oru("|^~\\&", "QSECRET-4711")).count(b"PID|<redacted>\r") == 1
    # an alphanumeric field separator: only the declared one is taken after a name
    alnum = oru("X^~\\&", "QSECRET-4711")
    assert b"QSECRET" not in redact(alnum) and b"PIDX<redacted>" in redact(alnum)
    # with a header, a name followed by a letter that is not its separator is no segment;
    # in a fragment without one, any character may be the separator
    assert redact(b"MSH|^~\\&|M\rPIDGIN|1\r") == b"MSH|^~\\&|M\rPIDGIN|1\r"
    assert redact(b"OBR|1\rPIDXXQSECRET\r") == b"OBR|1\rPIDX<redacted>\r"
    # JSON: the value whatever its type, in place (the rest keeps its shape)
    assert redact(b'{"spo2":150,"patient":{"id":"QSECRET","n":[1,{"a":"]"}]},"hr":1}') == (
        b'{"spo2":150,"patient":"<redacted>","hr":1}'
    )
    assert redact(b'{"p\\u0061tient": "QSECRET", "hr": 1}') == (
        b'{"p\\u0061tient": "<redacted>", "hr": 1}'
    )
    assert redact(b'{"d": "{\\"patient\\": \\"QSECRET\\"}"}') == (
        b'{"d": "{\\"patient\\": \\"<redacted>\\"}"}'
    )
    utf16 = '{"ward": "icu", "patient": "QSECRET"}'.encode("utf-16")
    assert redact(utf16).decode("utf-16") == '{"ward": "icu", "patient": "<redacted>"}'
    # what needs no redaction is echoed as it came
    for same in (b"\xff\xfe\x00", b'{"spo2": 150}', b"MSH|^~\\&|M\rOBX|1|NM|HR||70\r"):
        assert redact(same) == same


# ------------------------------------------------------------------------ end to end


def mllp_daemon(daemon: Any) -> tuple[Any, int]:
    port = free_port()
    d = daemon(start=False)
    d.config.write_text(
        d.config.read_text().replace(
            "sources:\n",
            f"sources:\n  - type: hl7-mllp\n    listen: 127.0.0.1:{port}\n"
            "    ward: icu\n    clock: receive\n",
        )
    )
    d.start()
    wait_for(lambda: "listening on" in d.log(), 10, "the MLLP listener")
    return d, port


def test_an_oru_in_other_encoding_characters_is_dead_lettered_without_its_pid(
    daemon: Any, subscribe: Any
) -> None:
    """A real ORU^R01 in ``MSH#$*!@`` with a refused SpO2 value, over MLLP: the dead
    letter echoes the message without the PID's content (before: ``PID###QSECRET-4711``)."""
    _, port = mllp_daemon(daemon)
    dead = subscribe("vitalmon/deadletter")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(frame(oru("#$*!@", "QSECRET-4711")))
        framer = MllpFramer()
        acks: list[bytes] = []
        while not acks:
            chunk = s.recv(4096)
            assert chunk, "closed before the ACK"
            acks += framer.feed(chunk)
    letters = wait_for(
        lambda: [x for x in dead.json() if x["reason"] == "wrong_type"],
        10,
        "the refused value dead-lettered",
    )
    assert "PID#<redacted>" in letters[0]["payload"]
    assert "MDC_PULS_OXIM_SAT_O2" in letters[0]["payload"]
    assert "QSECRET" not in json.dumps(dead.json())


def test_commands_with_a_patient_object_or_in_utf16_are_dead_lettered_without_it(
    daemon: Any, subscribe: Any, broker: Any
) -> None:
    """Two refused admissions (``mosquitto_pub``): the patient as an object (``'patient'
    must be a non-empty string``) and a whole command in UTF-16 (unknown profile). Before,
    both letters echoed the id: the object was not redacted, the UTF-16 bytes were echoed
    in base64 as they came."""
    daemon()
    dead = subscribe("vitalmon/deadletter")
    as_object = json.dumps({"ward": "icu", "bed": "1", "patient": {"mrn": "QSECRET-1"}})
    utf16 = json.dumps({"ward": "icu", "bed": "1", "patient": "QSECRET-2", "profile": "kids"})
    for payload in (as_object.encode(), utf16.encode("utf-16")):
        subprocess.run(
            ["mosquitto_pub", "-p", str(broker.port), "-q", "1", "-t", "vitalmon/cmd/admit", "-s"],
            input=payload,
            check=True,
            timeout=10,
        )
    letters = wait_for(lambda: len(dead.json()) >= 2 and dead.json(), 10, "two dead letters")
    assert [x["reason"] for x in letters] == ["bad_command", "bad_command"]
    assert "'patient' must be a non-empty string" in letters[0]["detail"]
    assert "unknown profile 'kids'" in letters[1]["detail"]
    assert letters[0]["payload"] == '{"ward": "icu", "bed": "1", "patient": "<redacted>"}'
    shown = base64.b64decode(letters[1]["payload_b64"]).decode("utf-16")
    assert json.loads(shown)["patient"] == "<redacted>"
    assert "QSECRET" not in json.dumps(letters)
