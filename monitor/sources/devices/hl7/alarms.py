"""The device's own alarms and INOPs: IntelliVue alarm segments of ORU^R01
(``<n>^<class>^MDIL-ALERT``) and IHE PCD-04 (ORU^R40) alarm groups -> alarms, and an
alarm's identity across messages (:func:`alarm_key`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from monitor.model import DeviceAlarm, Priority
from monitor.sources.devices.hl7.message import _clip, _first_nonempty, _Msg, _Seg

#: IntelliVue alert classes (OBX-3 ``<n>^<class>^MDIL-ALERT``): class -> (number,
#: priority, kind). Yellow is IEC 60601-1-8 medium priority; a *short* yellow only
#: clears itself, so it is medium too.
ALERT_CLASSES: Final[dict[str, tuple[int, Priority, str]]] = {
    "RedAlarm": (1, Priority.HIGH, "device"),
    "YellowAlarm": (2, Priority.MEDIUM, "device"),
    "ShortYellowAlarm": (3, Priority.MEDIUM, "device"),
    "HardInop": (5, Priority.MEDIUM, "technical"),
    "SoftInop": (6, Priority.LOW, "technical"),
}
ALERT_SYSTEM: Final = "MDIL-ALERT"
_ALERT_BY_NAME: Final = {name.lower(): name for name in ALERT_CLASSES}
_ALERT_BY_NUMBER: Final = {str(entry[0]): name for name, entry in ALERT_CLASSES.items()}

_MAX_ALARM_TEXT = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: A number in an alarm text, with the comparison operators next to it (``160>140``,
#: ``<90``): not part of the alarm's identity. Digits inside a word (``SpO2``) stay.
_KEY_NUMBER = re.compile(r"[<>=≤≥]*\s*(?<![\w.])[-+]?\d+(?:[.,:]\d+)*(?!\w)\s*[<>=≤≥]*")


@dataclass(slots=True)
class _Pcd04:
    """One alarm of an ORU^R40: its identification OBX and the attributes after it."""

    seg: _Seg  #: the identification OBX (``MDC_EVT_*`` in OBX-3)
    fallback: tuple[str, str]  #: (OBR-7, MSH-7)
    event: str  #: the OBX-3 mnemonic
    source: str = ""  #: the first vital observed with it (when no MDC_ATTR_ALERT_SOURCE)
    attrs: dict[str, str] = field(default_factory=dict)  #: MDC_ATTR_* -> value


def _is_alert(components: list[str]) -> bool:
    """OBX-3 of an IntelliVue alarm segment (coding system ``MDIL-ALERT``)."""
    return any(c.strip().upper() == ALERT_SYSTEM for c in components)


def alert_class(components: list[str]) -> str | None:
    """OBX-3 of an alarm segment -> its class (a key of :data:`ALERT_CLASSES`): by the
    name (any case), or by the number when there is no name; None when unknown."""
    number = components[0].strip() if components else ""
    name = components[1].strip() if len(components) > 1 else ""
    if name:
        return _ALERT_BY_NAME.get(name.lower())
    return _ALERT_BY_NUMBER.get(number) or _ALERT_BY_NAME.get(number.lower())


def alarm_key(text: str) -> str:
    """An alarm's identity across messages: its text without leading asterisks, numbers
    (with the ``<``, ``>``, ``=`` next to them) and repeated spaces (``***xTachy
    160>140`` -> ``xTachy``; ``**SpO2   86  <90`` -> ``SpO2``; ``SpO2T  No Pulse`` ->
    ``SpO2T No Pulse``)."""
    return " ".join(_KEY_NUMBER.sub(" ", text.lstrip(" *")).split())


def _alarm(msg: _Msg, seg: _Seg, code: list[str]) -> DeviceAlarm | None:
    """An alarm segment -> the alarm it reports; None: an unknown class, or a result
    status that says there is nothing here (``D``, ``W``, ...)."""
    if msg.ignored(seg):
        return None
    cls = alert_class(code)
    if cls is None:
        return None
    _n, priority, kind = ALERT_CLASSES[cls]
    raw = msg.text(seg, 5)
    text = _CONTROL.sub(" ", raw).strip()[:_MAX_ALARM_TEXT] or cls
    return DeviceAlarm(alarm_key(text) or cls, priority, kind, text, cls)


_RANK: Final = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2}


def _distinct(alarms: Iterable[DeviceAlarm]) -> tuple[DeviceAlarm, ...]:
    """One alarm per key (the highest priority; the first of equals), in message order."""
    out: dict[str, DeviceAlarm] = {}
    for a in alarms:
        kept = out.get(a.key)
        if kept is None or _RANK[a.priority] > _RANK[kept.priority]:
            out[a.key] = a
    return tuple(out.values())


#: IHE PCD-04 alert priority (OBX-8 abnormal flags, or MDC_ATTR_ALARM_PRIORITY).
PCD04_PRIORITIES: Final = {
    "PH": Priority.HIGH,
    "PM": Priority.MEDIUM,
    "PL": Priority.LOW,
    "PN": Priority.LOW,  # no priority: a notification
}
#: IHE PCD-04 alert type (OBX-8, or MDC_ATTR_ALERT_TYPE): technical, else physiological.
_TECHNICAL_TYPE: Final = "ST"
_ALERT_TYPES: Final = frozenset({"SP", "ST", "SA"})
#: MDC_ATTR_ALARM_STATE values of an alarm that is over; MDC_ATTR_EVENT_PHASE likewise.
_INACTIVE_STATES: Final = frozenset({"inactive", "off"})
_ACTIVE_STATES: Final = frozenset({"active", "latched"})
_ENDED_PHASES: Final = frozenset({"end", "stop", "reset", "inactivate"})


def _mnemonic(components: list[str]) -> str:
    """The first MDC mnemonic among components (upper case), or ""."""
    return next((c.strip().upper() for c in components if c.strip().upper().startswith("MDC_")), "")


def _coded(msg: _Msg, seg: _Seg) -> str:
    """OBX-5 of an attribute: its MDC mnemonic, else its first non-empty component."""
    comps = msg.comps(seg, 5)
    return _mnemonic(comps) or _first_nonempty(comps)


def _pcd04_alarm(msg: _Msg, g: _Pcd04) -> DeviceAlarm | None:
    """An ORU^R40 alarm group -> the alarm; None when its result status says "nothing"."""
    if msg.ignored(g.seg):
        return None
    event = g.event
    value = msg.comps(g.seg, 5)
    specific = _mnemonic(value)
    if specific.startswith("MDC_EVT_"):  # MDC_EVT_ALARM with the event in OBX-5 (CWE)
        event = specific
        # CWE original text (component 9), else its text (2) when that is not the mnemonic
        texts = [value[i].strip() for i in (8, 1) if i < len(value)]
        text = next((t for t in texts if t and not t.upper().startswith("MDC_")), "")
    else:
        text = msg.text(g.seg, 5)
    text = g.attrs.get("MDC_ATTR_ALERT_TEXT") or text
    text = _CONTROL.sub(" ", text).strip()[:_MAX_ALARM_TEXT] or event
    source = g.attrs.get("MDC_ATTR_ALERT_SOURCE") or g.source
    flags = [f.strip().upper() for f in msg.firsts(g.seg, 8)]
    flags.append(g.attrs.get("MDC_ATTR_ALARM_PRIORITY", "").upper())
    flags.append(g.attrs.get("MDC_ATTR_ALERT_TYPE", "").upper())
    priority = next((PCD04_PRIORITIES[f] for f in flags if f in PCD04_PRIORITIES), Priority.MEDIUM)
    kind_flag = next((f for f in flags if f in _ALERT_TYPES), "SP")
    kind = "technical" if kind_flag == _TECHNICAL_TYPE else "device"
    state = g.attrs.get("MDC_ATTR_ALARM_STATE", "").lower()
    phase = (g.attrs.get("MDC_ATTR_EVENT_PHASE") or g.attrs.get("MDC_ATTR_EVT_PHASE", "")).lower()
    active = state in _ACTIVE_STATES or (
        state not in _INACTIVE_STATES and phase not in _ENDED_PHASES
    )
    said = alarm_key(text)
    key = f"{event} {source or said}" if (source or said) not in ("", event) else event
    return DeviceAlarm(_clip(key, 120), priority, kind, text, event, active)
