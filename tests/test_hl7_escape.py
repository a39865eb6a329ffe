"""HL7 escape sequences and encoding characters (issue 15, B17): every text field the
parser uses is unescaped with the message's own encoding characters (MSH-1, MSH-2).

Each test failed on the parser that split python-hl7's output by hand: ``\\T\\`` stayed
``\\T\\`` in patient ids, device names, OBX-3 labels, units and PCD-04 texts, ``\\X..\\``
and ``\\.br\\`` were never decoded, an escape character other than ``\\`` was never seen,
a PV1-3 in other encoding characters matched no ``beds`` entry, and the ACK echoed an
escaped control id escaped twice.

The escaping here is the test's own (:func:`escape`), written from HL7 v2 chapter 2.7,
and so is the reading of the ACK (:func:`unescape_ack`): neither is the parser's code.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from monitor.model import Priority
from monitor.sources.devices import DeviceContext
from monitor.sources.devices.hl7 import Hl7Parser, ack, resolve_observation

DATA = Path(__file__).parent / "data" / "device_messages" / "hl7_misc"
NOW = datetime(2025, 6, 10, 1, 51, 27, tzinfo=UTC).timestamp()
STAMP = "20250610015127+0000"


def ctx(now: float = NOW, **kw: Any) -> DeviceContext:
    base: dict[str, Any] = {"clock": "device", "tz": UTC, "max_skew_s": 300.0}
    base.update(kw)
    return DeviceContext("icu", "fixed-bed", "mon", now, **base)


# --------------------------------------------------------------- the test's own HL7


@dataclass(frozen=True)
class Enc:
    """Encoding characters: MSH-1 and the four of MSH-2."""

    field: str = "|"
    comp: str = "^"
    rep: str = "~"
    esc: str = "\\"
    sub: str = "&"

    @property
    def msh2(self) -> str:
        return self.comp + self.rep + self.esc + self.sub


STANDARD = Enc()
#: Encoding characters that none of the samples contains.
OTHER = Enc("#", "$", "*", "!", "@")


def escape(text: str, enc: Enc, hexify: bool = False) -> str:
    """Text -> an HL7 field value (HL7 v2 2.7): delimiters as \\F\\ \\S\\ \\R\\ \\E\\ \\T\\,
    CR as \\.br\\, other control characters (and, with ``hexify``, any non-ASCII
    character) as \\Xhh..\\ of their UTF-8 bytes."""
    names = {enc.field: "F", enc.comp: "S", enc.rep: "R", enc.esc: "E", enc.sub: "T", "\r": ".br"}
    out = []
    for ch in text:
        if ch in names:
            out.append(enc.esc + names[ch] + enc.esc)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F or (hexify and ord(ch) > 0x7E):
            out.append(enc.esc + "X" + ch.encode().hex().upper() + enc.esc)
        else:
            out.append(ch)
    return "".join(out)


#: Stand-ins for the component and repetition separators in the fields given to
#: :func:`message` (control characters: :func:`escape` never leaves one in a text).
C, R = "\x01", "\x02"


def message(segments: list[list[str]], enc: Enc) -> bytes:
    """Segments as lists of already encoded fields (:data:`C` and :data:`R` stand for the
    component and repetition separators) -> an HL7 message."""
    lines = []
    for seg in segments:
        fields = [f.replace(C, enc.comp).replace(R, enc.rep) for f in seg]
        if seg[0] == "MSH":
            lines.append("MSH" + enc.field + enc.msh2 + enc.field + enc.field.join(fields[1:]))
        else:
            lines.append(enc.field.join(fields))
    return ("\r".join(lines) + "\r").encode()


def oru(
    enc: Enc,
    *obx: list[str],
    control: str = "C1",
    sender: str = "MON1",
    patient: str = "P77",
    pv1: str = f"ICU{C}{C}7",
    kind: str = f"ORU{C}R01",
) -> bytes:
    """An ORU (fields already encoded for ``enc``)."""
    return message(
        [
            ["MSH", sender, "FAC1", "VM", "HOSP", STAMP, "", kind, control, "P", "2.6"],
            ["PID", "", "", patient + f"{C}{C}{C}HOSP", "", f"Doe{C}Jane"],
            ["PV1", "", "I", pv1],
            ["OBR", "1", "", "", "", "", "", STAMP],
            *obx,
        ],
        enc,
    )


def obx(code: str, value: str, unit: str = "", kind: str = "NM", device: str = "") -> list[str]:
    return [
        "OBX",
        "1",
        kind,
        code,
        "",
        value,
        unit,
        "",
        "",
        "",
        "",
        "F",
        "",
        "",
        "",
        "",
        "",
        "",
        device,
    ]


HR = f"147842{C}MDC_ECG_HEART_RATE{C}MDC"


def unescape_ack(raw: str) -> str:
    """A field of vitalmon's ACK (standard encoding) -> its text."""

    def one(m: re.Match[str]) -> str:
        seq = m.group(1)
        if seq[:1] == "X":
            return bytes.fromhex(seq[1:]).decode()
        return {"F": "|", "S": "^", "R": "~", "E": "\\", "T": "&", ".br": "\r"}[seq]

    return re.sub(r"\\([^\\]*)\\", one, raw)


def msa(ack_bytes: bytes) -> list[str]:
    segs = ack_bytes.decode().split("\r")
    return next(s for s in segs if s.startswith("MSA|")).split("|")


def topic_safe(text: str) -> str:
    """README: names are sanitised for MQTT topics (``/``, ``+``, ``#`` and control
    characters become ``_``; at most 64 characters)."""
    return re.sub(r"[/+#\x00-\x1f\x7f]", "_", text.strip())[:64].strip()


# --------------------------------------------------------------- properties


_DELIMS = "|^~\\&#$%!@*?;:={}<>"
#: Five distinct delimiters none of which the fixed parts of the messages use.
encodings = st.permutations(list(_DELIMS)).map(lambda p: Enc(*p[:5]))
#: Any text: every delimiter, non-ASCII (accents, CJK, emoji), no control characters.
texts = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")) | st.sampled_from(_DELIMS),
    min_size=1,
    max_size=30,
).filter(lambda t: t.strip() == t and t != "")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    enc=encodings,
    hexify=st.booleans(),
    patient=texts,
    device=texts,
    alarm=texts,
    label=texts,
    control=texts,
)
def test_oru_r01_texts_round_trip_through_escaping(
    enc: Enc, hexify: bool, patient: str, device: str, alarm: str, label: str, control: str
) -> None:
    """Arbitrary text, escaped for arbitrary encoding characters, comes back as it was:
    patient id (PID-3), device (OBX-18), alarm text (MDIL-ALERT OBX-5), OBX-3 label (the
    unmapped count) and control id (MSH-10, echoed in MSA-2)."""
    assume(resolve_observation(["99999", label, "L"]) is None)
    assume(label.upper() not in ("MDIL-ALERT", "99999"))
    e = lambda t: escape(t, enc, hexify)  # noqa: E731
    msg = oru(
        enc,
        obx(HR, "72", "/min", device=e(device)),
        obx(f"1{C}RedAlarm{C}MDIL-ALERT", e(alarm), kind="TX", device=e(device)),
        obx(f"99999{C}" + e(label) + f"{C}L", "1", kind="ST", device=e(device)),
        control=e(control),
        patient=e(patient),
    )
    parsed, a = Hl7Parser(bind="pv1").parse_message(msg, ctx())
    assert a.code == "AA", (a, msg)
    (r,) = parsed.readings
    assert (r.patient, r.device, r.value, r.ward, r.bed) == (
        topic_safe(patient),
        topic_safe(device) + ".ecg",
        72.0,
        "ICU",
        "7",
    )
    (rep,) = parsed.device_alarms
    assert [(x.text, x.priority, x.source) for x in rep.alarms] == [
        (alarm, Priority.HIGH, "RedAlarm")
    ]
    want = re.sub(r"[/+#\x00-\x1f\x7f]", "_", f"{label} (99999)")[:60]
    assert parsed.unmapped == Counter({want: 1})
    assert unescape_ack(msa(ack(a))[2]) == control


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(enc=encodings, hexify=st.booleans(), said=texts, unit_hex=st.booleans())
def test_oru_r40_alarm_texts_and_units_round_trip(
    enc: Enc, hexify: bool, said: str, unit_hex: bool
) -> None:
    """PCD-04: the alarm's text from OBX-5 (ST) and from MDC_ATTR_ALERT_TEXT; a unit
    written with escapes (``kPa`` in hex) still converts."""
    assume(not said.upper().startswith("MDC_"))  # a mnemonic, not a text
    e = lambda t: escape(t, enc, hexify)  # noqa: E731
    unit = f"{enc.esc}X6B5061{enc.esc}" if unit_hex else "kPa"
    ident = [
        "OBX",
        "1",
        "ST",
        f"196670{C}MDC_EVT_LO{C}MDC",
        "1.1",
        e(said),
        "",
        "",
        f"PH{R}SP",
        "",
        "",
        "F",
    ]
    value = [
        "OBX",
        "2",
        "NM",
        f"150021{C}MDC_PRESS_BLD_NONINV_SYS{C}MDC",
        "1.2",
        "16",
        unit,
        "",
        "",
        "",
        "",
        "F",
    ]
    r40 = lambda *s: oru(enc, *s, kind=f"ORU{C}R40")  # noqa: E731
    parsed, a = Hl7Parser(bind="pv1").parse_message(r40(ident, value), ctx())
    assert a.code == "AA"
    ((alarm,),) = [rep.alarms for rep in parsed.device_alarms]
    assert (alarm.text, alarm.priority) == (said, Priority.HIGH)
    assert [(r.vital, round(r.value, 2)) for r in parsed.readings] == [("sbp", 120.01)]
    attr = [
        "OBX",
        "3",
        "ST",
        f"68485{C}MDC_ATTR_ALERT_TEXT{C}MDC",
        "1.3",
        e(said),
        "",
        "",
        "",
        "",
        "",
        "F",
    ]
    ident[5] = "other"
    parsed = Hl7Parser(bind="pv1").parse(r40(ident, attr), ctx())
    assert [a.text for rep in parsed.device_alarms for a in rep.alarms] == [said]


# --------------------------------------------------------------- encoding characters


def translate(sample: bytes, enc: Enc) -> bytes:
    """A sample in standard encoding (and without escapes) rewritten in ``enc``."""
    text = sample.decode("latin-1")
    assert not set(text) & set(enc.field + enc.msh2)
    table = str.maketrans(
        {"|": enc.field, "^": enc.comp, "~": enc.rep, "\\": enc.esc, "&": enc.sub}
    )
    return text.translate(table).encode("latin-1")


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.hl7")))
def test_samples_in_other_encoding_characters_parse_alike(name: str) -> None:
    sample = (DATA / name).read_bytes()
    other = translate(sample, OTHER)
    p = Hl7Parser({"^^&10": "w/1"}, bind="pv1")
    for now in (NOW, datetime(2003, 1, 10, 15, 26, 30).timestamp()):
        c = ctx(now, max_skew_s=10 * 365 * 86400)
        (std, a), (alt, b) = p.parse_message(sample, c), p.parse_message(other, c)
        assert (alt.readings, alt.statuses, alt.device_alarms, alt.unmapped) == (
            std.readings,
            std.statuses,
            std.device_alarms,
            std.unmapped,
        )
        assert [(x.cause, x.detail) for x in alt.rejections] == [
            (x.cause, x.detail) for x in std.rejections
        ]
        assert a == b  # the ACK is in standard encoding whatever the message's


def test_other_encoding_characters_escapes_beds_times_and_ack() -> None:
    """``MSH#$*!@``: escapes with ``!`` stand for that message's delimiters; a ``beds`` key
    written ``ICU^^7`` matches its ``ICU$$7``; an OBX-14 with a precision component; the
    control id echoed in the ACK's standard encoding."""
    hr = obx(HR, "72", "/min", device="Mon!T!1")
    hr[14] = "20250610015000$S"
    msg = oru(
        OTHER,
        hr,
        obx("1$YellowAlarm$MDIL-ALERT", "!R!!R!HR 130!F!high!S!|^&", kind="TX"),
        control="C^9!T!x",
        patient="12!T!34",
        pv1="ICU$$7",
    )
    p = Hl7Parser({"ICU^^7": "cardio/4"}, bind="pv1")
    parsed, a = p.parse_message(msg, ctx())
    (r,) = parsed.readings
    assert (r.ward, r.bed, r.patient, r.device) == ("cardio", "4", "12@34", "Mon@1.ecg")
    assert r.ts == datetime(2025, 6, 10, 1, 50, tzinfo=UTC).timestamp()  # OBX-14, not OBR-7
    assert [x.text for rep in parsed.device_alarms for x in rep.alarms] == [
        "**HR 130#high$|^&"
    ]  # * is R
    assert msa(ack(a))[:3] == ["MSA", "AA", "C\\S\\9@x"]  # in the ACK's standard encoding


# --------------------------------------------------------------- the escape sequences


def test_standard_escapes_in_every_text_field() -> None:
    msg = oru(
        STANDARD,
        obx(HR, "72", "/min", device="Mon\\T\\1"),
        obx("1^RedAlarm^MDIL-ALERT", "\\H\\***xTachy\\N\\ 160>140 \\F\\\\S\\", kind="TX"),
        obx("0002-d006^Perf\\T\\Co^MDIL", "1.7"),
        obx("150021^MDC_PRESS_BLD_NONINV_SYS^MDC", "120", "mm\\X5B\\Hg\\X5D\\"),
        obx("x^\\X4852\\^L", "60"),  # the label HR, written in hex
        control="C\\T\\1",
        patient="P\\S\\77",
        sender="A\\R\\B",
    )
    parsed, a = Hl7Parser(bind="pv1").parse_message(msg, ctx())
    assert {(r.device, r.vital, r.value, r.patient) for r in parsed.readings} == {
        ("Mon&1.ecg", "hr", 72.0, "P^77"),
        ("A~B.nibp", "sbp", 120.0, "P^77"),
        ("A~B.ecg", "hr", 60.0, "P^77"),
    }
    ((alarm,),) = [rep.alarms for rep in parsed.device_alarms if rep.alarms]
    assert (alarm.text, alarm.key) == ("***xTachy 160>140 |^", "xTachy |^")  # \H\: nothing
    assert parsed.unmapped == Counter({"Perf&Co (0002-d006)": 1})
    assert msa(ack(a))[2] == "C\\T\\1"  # echoed as it came, not escaped twice
    assert a.sending_app == "A\\R\\B"


def test_formatting_hex_and_unknown_sequences() -> None:
    """``\\.br\\`` is a line break (a space in a one-line text), ``\\Xhh..\\`` bytes in the
    message's character set; a count that would make megabytes of ``\\.sk99999999\\`` is
    one space, unknown sequences (``\\Z..\\``, ``\\C..\\``) nothing."""
    msg = oru(
        STANDARD,
        obx(HR, "72", "/min", device="Z\\XC3A9\\"),
        obx("1^RedAlarm^MDIL-ALERT", "Line 1\\.br\\Line 2\\.sp2\\end\\Zvendor\\", kind="TX"),
        patient="A\\.sk99999999\\B\\C2842\\",
    )
    parsed = Hl7Parser(bind="pv1").parse(msg, ctx())
    (r,) = parsed.readings
    assert (r.device, r.patient) == ("Zé.ecg", "A B")
    ((alarm,),) = [rep.alarms for rep in parsed.device_alarms if rep.alarms]
    assert alarm.text == "Line 1 Line 2  end"
    latin1 = oru(STANDARD, obx(HR, "72", "/min", device="Z\\XE9\\")).replace(b"P77", b"\xe9")
    assert [r.device for r in Hl7Parser(bind="pv1").parse(latin1, ctx()).readings] == ["Zé.ecg"]


@pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")
def test_an_unescapable_field_logs_no_patient_data(caplog: pytest.LogCaptureFixture) -> None:
    """python-hl7 logs the whole field it cannot unescape (an empty ``\\\\`` sequence, a bad
    hex): never in vitalmon's log, which carries no patient identifiers."""
    caplog.set_level(logging.DEBUG)
    msg = oru(STANDARD, obx(HR, "72", "/min"), patient="SECRET\\\\4711\\XZZ\\")
    parsed = Hl7Parser(bind="pv1").parse(msg, ctx())
    assert [r.patient for r in parsed.readings] == ["SECRET4711"]
    assert not [r for r in caplog.records if "SECRET" in r.getMessage()]


def test_truncation_character_in_msh2() -> None:
    """HL7 v2.7 adds a fifth encoding character (truncation, ``#``): still parsed."""
    msg = oru(STANDARD, obx(HR, "72", "/min"), patient="P\\T\\1").replace(
        b"MSH|^~\\&|", b"MSH|^~\\&#|"
    )
    parsed, a = Hl7Parser(bind="pv1").parse_message(msg, ctx())
    assert [r.patient for r in parsed.readings] == ["P&1"]
    assert a.code == "AA"
