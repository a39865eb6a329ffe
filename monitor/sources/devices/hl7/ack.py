"""The HL7 ACK a sender is owed for each message: :class:`Ack` (what the parser found)
and :func:`ack` (its bytes)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import Final, Literal

from monitor.hl7v2 import escape as _escape

AckCode = Literal["AA", "AE", "AR"]


@dataclass(frozen=True, slots=True)
class Ack:
    """What the sender of one message is owed: MSA-1 ``code`` for MSA-2 ``control_id``.

    The MSH fields are those of the acknowledged message, in standard encoding
    (``|^~\\&``); :func:`ack` swaps sender and receiver.
    """

    code: AckCode
    control_id: str = ""  #: MSH-10 of the acknowledged message
    text: str = ""  #: MSA-3: why (AE/AR), or a note (values refused)
    error: str = ""  #: HL7 table 0357 code for ERR (AE/AR): 100, 102, 200, 207
    sending_app: str = ""  #: MSH-3
    sending_facility: str = ""  #: MSH-4
    receiving_app: str = ""  #: MSH-5
    receiving_facility: str = ""  #: MSH-6
    processing_id: str = "P"  #: MSH-11
    version: str = "2.5"  #: MSH-12
    trigger: str = "R01"  #: MSH-9.2 of the acknowledged message, echoed in ACK^<trigger>^ACK
    encoding: str = "utf-8"  #: how the message was decoded (the ACK is encoded alike)


def ack(a: Ack, *, control_id: str | None = None, now: float | None = None) -> bytes:
    """An HL7 ACK for ``a``: MSH (sender and receiver swapped, ``ACK^R01^ACK``, a new
    control id, the version echoed), MSA and, for AE/AR, ERR. CR-terminated segments,
    not framed (the caller frames it with :func:`monitor.sources.devices.frame`)."""
    t = time.gmtime(time.time() if now is None else now)
    stamp = time.strftime("%Y%m%d%H%M%S", t) + "+0000"
    cid = control_id if control_id is not None else uuid.uuid4().hex[:20]
    msh = "|".join(
        (
            "MSH",
            "^~\\&",
            a.receiving_app or "vitalmon",
            a.receiving_facility,
            a.sending_app,
            a.sending_facility,
            stamp,
            "",
            f"ACK^{a.trigger}^ACK",
            _escape(cid),
            a.processing_id,
            a.version,
        )
    )
    segments = [msh, "|".join(("MSA", a.code, a.control_id, _escape(a.text)))]
    if a.code != "AA":
        code = a.error or "207"
        text = _escape(_ERRORS.get(code, "Application internal error"))
        if _version(a.version) >= (2, 5):
            segments.append(f"ERR|||{code}^{text}^HL70357|E||||{_escape(a.text)}")
        else:
            segments.append(f"ERR|^^^{code}&{text}&HL70357")
    body = "\r".join(segments) + "\r"
    return body.encode(a.encoding, errors="replace")


_ERRORS: Final = {
    "100": "Segment sequence error",
    "102": "Data type error",
    "200": "Unsupported message type",
    "207": "Application internal error",
}


def _version(v: str) -> tuple[int, int]:
    parts = [*v.split("."), "0"][:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return (2, 5)


def _with(header: Ack, code: AckCode, text: str, error: str) -> Ack:
    return replace(header, code=code, text=text, error=error)
