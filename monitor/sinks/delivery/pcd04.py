"""IHE PCD-04 Report Alert: an alert event as an HL7 v2.6 ``ORU^R40^ORU_R40`` message
(:func:`encode`), and the ACK an alarm manager answers it with (:func:`read_ack`). No I/O.

One message per alert event, one alert per message::

    MSH|^~\\&|vitalmon||AM|HOSP|20261128104022.000+0000||ORU^R40^ORU_R40|<id>.<seq>|P|2.6
        |||AL|NE||UNICODE UTF-8|||IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4.1^ISO
    PID|||<patient>                  (PID-3 empty when the alert names no patient)
    PV1||I|<ward>^^<bed>             (point of care ^ room ^ bed)
    OBR|1|<id>^vitalmon|<id>^vitalmon|196616^MDC_EVT_ALARM^MDC|||<started_at>
    OBX|1|ST|196670^MDC_EVT_LO^MDC|1.0.0.0.1|<message>|||L~PH~SP|||F|||<at>||||<device>
    OBX|2|CWE|68480^MDC_ATTR_ALERT_SOURCE^MDC|1.0.0.0.2|150456^MDC_PULS_OXIM_SAT_O2^MDC||||||F
    OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.0.0.0.3|82|262688^MDC_DIM_PERCENT^MDC|>85
        ||||F|||<at>
    OBX|4|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|1.0.0.0.4|start||||||F
    OBX|5|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.0.0.0.5|active||||||F
    OBX|6|ST|68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC|1.0.0.0.6|enabled||||||F

* MSH-10, the message control id, is the event's idempotency key ``<id>:<seq>`` with a
  dot: ``<id>.<seq>`` (at most 20 characters below seq 1000: any HL7 version's limit).
  MSH-21 names the IHE PCD ACM profile; MSH-15/16 ask for an accept ACK only.
* OBR-3 (filler order number) is the alert id, the same for all of the alert's
  messages; OBR-7 its onset.
* The alert-type OBX: the event (``MDC_EVT_LO`` for a ``*.low`` or falling trend rule,
  ``MDC_EVT_HI`` for ``*.high``, a rising trend or NEWS2, ``MDC_EVT_DISCONN`` for a
  device or sensor off, else ``MDC_EVT_ALARM``) with the alert's message as its text;
  OBX-8 the abnormality (``L``/``H`` where it applies), the priority (``PH``, ``PM``,
  ``PL``) and the alert type (``ST`` technical, else ``SP`` physiological); OBX-14 the
  time of this change; OBX-18 the device.
* The source: ``MDC_ATTR_ALERT_SOURCE`` (the vital's MDC code, else its name), then the
  vital's value with its MDC unit and, for a threshold, the limit as the range OBX-7
  (``>85`` for a low limit, ``<120`` for a high one).
* The lifecycle as PCD-04 alert states (:func:`states`):

  ===========================  =============  ===========  ====================
  alert event                  event phase    alarm state  inactivation state
  ===========================  =============  ===========  ====================
  raised (seq 1)               ``start``      ``active``   ``enabled``
  changed by its rule          ``update``     ``active``   as acknowledged
  re-notified                  ``continue``   ``active``   ``enabled``
  escalated                    ``escalate``   ``active``   ``enabled``
  acknowledged                 ``update``     ``active``   ``alert-acknowledged``
  resolved                     ``end``        ``inactive`` as acknowledged
  ===========================  =============  ===========  ====================

Text is escaped (:func:`monitor.hl7v2.escape`) and its control characters made spaces: a
``|`` or ``^`` in a message or a name never breaks the structure, nor an MLLP byte the
frame.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Final

from monitor.hl7v2 import MDC_VITALS, escape, hl7_time
from monitor.model import AlertEvent, AlertState, Priority

PROFILE: Final = "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4.1^ISO"
MESSAGE_TYPE: Final = "ORU^R40^ORU_R40"
ALARM: Final = (196616, "MDC_EVT_ALARM")
EVT_LO: Final = (196670, "MDC_EVT_LO")
EVT_HI: Final = (196648, "MDC_EVT_HI")
EVT_DISCONN: Final = (196630, "MDC_EVT_DISCONN")
ATTR_SOURCE: Final = (68480, "MDC_ATTR_ALERT_SOURCE")
ATTR_PHASE: Final = (68481, "MDC_ATTR_EVENT_PHASE")
ATTR_STATE: Final = (68482, "MDC_ATTR_ALARM_STATE")
ATTR_INACTIVATION: Final = (68483, "MDC_ATTR_ALARM_INACTIVATION_STATE")
PRIORITIES: Final = {Priority.HIGH: "PH", Priority.MEDIUM: "PM", Priority.LOW: "PL"}

_LOW_RULES: Final = frozenset({"low", "trend_down", "baseline_down"})
_HIGH_RULES: Final = frozenset({"high", "trend_up", "baseline_up"})
_OFF_RULES: Final = frozenset({"device.disconnected", "sensor.off"})


@dataclass(frozen=True, slots=True)
class Header:
    """MSH-3 .. MSH-6 and MSH-11 (plain text)."""

    sending_application: str = "vitalmon"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    processing_id: str = "P"


def control_id(key: str) -> str:
    """MSH-10 of an event's message: its idempotency key ``<id>:<seq>`` as ``<id>.<seq>``."""
    return key.replace(":", ".")


def event_type(e: AlertEvent) -> tuple[tuple[int, str], str]:
    """The alert's MDC event (code, mnemonic) and its abnormality flag (``L``, ``H``, "")."""
    suffix = e.rule.rsplit(".", 1)[-1]
    if suffix in _LOW_RULES:
        return EVT_LO, "L"
    if suffix in _HIGH_RULES or e.kind == "score":
        return EVT_HI, "H"
    if e.rule in _OFF_RULES:
        return EVT_DISCONN, ""
    return ALARM, ""


def states(e: AlertEvent) -> tuple[str, str, str]:
    """The event as PCD-04 alert states: (event phase, alarm state, inactivation state)."""
    action = e.extra.get("action")
    acked = e.state == AlertState.ACKNOWLEDGED or "ack_by" in e.extra
    inactivation = "alert-acknowledged" if acked else "enabled"
    if e.state == AlertState.RESOLVED:
        return "end", "inactive", inactivation
    if action == "escalate":
        return "escalate", "active", inactivation
    if action == "renotify":
        return "continue", "active", inactivation
    if action == "acknowledge":
        return "update", "active", "alert-acknowledged"
    return ("start" if e.seq == 1 else "update"), "active", inactivation


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _text(text: str) -> str:
    """Text for a field: control characters (an MLLP start or end byte, a segment break)
    made spaces, the separators escaped."""
    return escape(_CONTROL.sub(" ", text))


def _coded(code: tuple[int, str]) -> str:
    return f"{code[0]}^{code[1]}^MDC"


def _number(v: float) -> str:
    """An HL7 NM: plain decimal, no exponent."""
    text = f"{v:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def encode(
    e: AlertEvent, key: str, header: Header | None = None, now: float | None = None
) -> bytes:
    """The ORU^R40 message of ``e`` (CR-terminated segments, UTF-8, not framed)."""
    h = header or Header()
    at = hl7_time(e.at)
    msh = [
        "MSH",
        "^~\\&",
        _text(h.sending_application),
        _text(h.sending_facility),
        _text(h.receiving_application),
        _text(h.receiving_facility),
        hl7_time(time.time() if now is None else now),
        "",
        MESSAGE_TYPE,
        _text(control_id(key)),
        h.processing_id,
        "2.6",
        "",
        "",
        "AL",
        "NE",
        "",
        "UNICODE UTF-8",
        "",
        "",
        PROFILE,
    ]
    alert = _text(e.id)
    segments = [
        "|".join(msh),
        f"PID|||{_text(e.patient or '')}",
        f"PV1||I|{_text(e.ward)}^^{_text(e.bed)}",
        f"OBR|1|{alert}^vitalmon|{alert}^vitalmon|{_coded(ALARM)}|||{hl7_time(e.started_at)}",
    ]
    evt, abnormal = event_type(e)
    flags = "~".join(
        f for f in (abnormal, PRIORITIES[e.priority], "ST" if e.kind == "technical" else "SP") if f
    )
    obx: list[tuple[str, str, str, str]] = [  # (type, code, value, rest from OBX-6 on)
        ("ST", _coded(evt), _text(e.message), f"||{flags}|||F|||{at}||||{_text(e.device)}")
    ]
    vital = MDC_VITALS.get(e.vital)
    if vital is not None:
        source = _coded(vital[:2])
        obx.append(("CWE", _coded(ATTR_SOURCE), source, "|||||F"))
        if math.isfinite(e.value):
            limit = ""
            if math.isfinite(e.limit) and abnormal:
                limit = f"{'>' if abnormal == 'L' else '<'}{_number(e.limit)}"
            unit = _coded(vital[2:])
            obx.append(("NM", source, _number(e.value), f"{unit}|{limit}||||F|||{at}"))
    else:
        obx.append(("ST", _coded(ATTR_SOURCE), _text(e.vital or e.rule), "|||||F"))
    phase, state, inactivation = states(e)
    obx += [
        ("ST", _coded(ATTR_PHASE), phase, "|||||F"),
        ("ST", _coded(ATTR_STATE), state, "|||||F"),
        ("ST", _coded(ATTR_INACTIVATION), inactivation, "|||||F"),
    ]
    for n, (vtype, code, value, rest) in enumerate(obx, 1):
        segments.append(f"OBX|{n}|{vtype}|{code}|1.0.0.0.{n}|{value}|{rest}")
    return ("\r".join(segments) + "\r").encode("utf-8")


class AckError(ValueError):
    """An answer that is not an HL7 ACK."""


_SEGMENT_END = re.compile(r"[\r\n]+")


def read_ack(payload: bytes) -> tuple[str, str, str]:
    """An HL7 ACK (unframed) -> (MSA-1 code, MSA-2 control id, MSA-3 text). Its own
    separators (MSH-1) are honoured; :class:`AckError` when it has no MSA."""
    text = payload.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    segments = [s for s in _SEGMENT_END.split(text) if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 4:
        raise AckError("the answer is not an HL7 message")
    sep = segments[0][3]
    for seg in segments[1:]:
        fields = seg.split(sep)
        if fields[0] == "MSA":
            fields += ["", "", ""]
            return fields[1].strip().upper(), fields[2].strip(), fields[3][:200]
    raise AckError("the answer has no MSA segment")
