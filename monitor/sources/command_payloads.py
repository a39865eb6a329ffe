"""The operator commands' topics and payloads (``vitalmon/cmd/...``): parsing and
checking, no I/O. :mod:`monitor.sources.commands` takes them in."""

from __future__ import annotations

import json
from typing import Any

from monitor.model import Admission

ACK_TOPIC = "vitalmon/cmd/ack"
PAUSE_TOPIC = "vitalmon/cmd/pause"
ADMIT_TOPIC = "vitalmon/cmd/admit"
DISCHARGE_TOPIC = "vitalmon/cmd/discharge"
MAX_NAME = 128


def verified_topic(action_topic: str, username: str) -> str:
    """``vitalmon/cmd/ack`` + ``kim`` -> ``vitalmon/cmd/ack/kim``: the form whose user name
    the broker verifies (ACL ``pattern write vitalmon/cmd/+/%u``)."""
    return f"{action_topic}/{username}"


def split_topic(topic: str) -> tuple[str, str | None]:
    """A command topic -> (its plain form, the verified user name or None); ValueError
    for a user name level that is empty or too long."""
    for base in (ACK_TOPIC, PAUSE_TOPIC, ADMIT_TOPIC, DISCHARGE_TOPIC):
        if topic == base:
            return base, None
        if topic.startswith(base + "/"):
            user = topic[len(base) + 1 :]
            if not user or len(user) > MAX_NAME or "/" in user:
                raise ValueError(
                    f"the user name level of {base}/<username> must be a "
                    f"non-empty name of at most {MAX_NAME} chars"
                )
            return base, user
    return topic, None


def _command(
    payload: bytes, names: tuple[str, ...], shape: str
) -> tuple[dict[str, Any], list[str]]:
    """A command's JSON object and its named text fields (stripped); ValueError with
    the reason."""
    try:
        doc: Any = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:  # '[' * 100000: nested beyond what any command needs
        raise ValueError("not JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError(f"expected {shape}")
    texts = []
    for key in names:
        value = doc.get(key)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
            raise ValueError(f"{key!r} must be a non-empty string of at most {MAX_NAME} chars")
        texts.append(value.strip())
    return doc, texts


def parse_ack(payload: bytes, identity: str | None = None) -> tuple[str, str]:
    """``{"id": ..., "by": ...}`` -> (id, by); ValueError with the reason. With a verified
    ``identity``, ``by`` may be left out (it is then the identity)."""
    if identity is None:
        _doc, (ident, by) = _command(payload, ("id", "by"), '{"id": ..., "by": ...}')
        return ident, by
    doc, (ident,) = _command(payload, ("id",), '{"id": ..., "by": ...}')
    return ident, _optional(doc, "by") or identity


def parse_pause(
    payload: bytes, max_s: float, identity: str | None = None
) -> tuple[str, str, float, str]:
    """``{"ward", "bed", "seconds", "by"}`` -> (ward, bed, seconds capped at max_s, by);
    ``by`` optional with a verified ``identity``."""
    shape = '{"ward": ..., "bed": ..., "seconds": ..., "by": ...}'
    if identity is None:
        doc, (ward, bed, by) = _command(payload, ("ward", "bed", "by"), shape)
    else:
        doc, (ward, bed) = _command(payload, ("ward", "bed"), shape)
        by = _optional(doc, "by") or identity
    seconds = doc.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError("'seconds' must be a number > 0")
    return ward, bed, min(float(seconds), max_s), by


def _optional(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise ValueError(
            f"{key!r}, when given, must be a non-empty string of at most {MAX_NAME} chars"
        )
    return value.strip()


def parse_admit(payload: bytes, now: float, identity: str | None = None) -> Admission:
    """``{"ward", "bed", "patient", "profile"?, "by"?}`` -> Admission; ValueError."""
    doc, (ward, bed, patient) = _command(
        payload,
        ("ward", "bed", "patient"),
        '{"ward": ..., "bed": ..., "patient": ..., "profile": ...}',
    )
    return Admission(
        ward,
        bed,
        patient,
        _optional(doc, "profile"),
        now,
        _optional(doc, "by") or identity or "mqtt",
    )


def parse_discharge(
    payload: bytes, identity: str | None = None
) -> tuple[str, str, str | None, str]:
    """``{"ward", "bed", "patient"?, "by"?}`` -> (ward, bed, patient, by); ValueError."""
    doc, (ward, bed) = _command(payload, ("ward", "bed"), '{"ward": ..., "bed": ...}')
    return ward, bed, _optional(doc, "patient"), _optional(doc, "by") or identity or "mqtt"


def check_vacant(admitted: dict[tuple[str, str], Admission], a: Admission) -> None:
    occupant = admitted.get((a.ward, a.bed))
    if occupant is not None and occupant.patient != a.patient:
        raise ValueError(f"bed {a.ward}/{a.bed} is occupied by another patient: discharge it first")
