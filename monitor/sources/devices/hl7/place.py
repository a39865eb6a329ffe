"""Where and whose: the ward and bed (``beds``, PV1-3 or the context), the device (OBX-18,
MSH-3) and the patient (PID-3) of a message's values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from monitor.sources.devices import DeviceContext
from monitor.sources.devices.hl7.message import _clean, _first_nonempty, _Msg, _Seg


@dataclass(slots=True)
class _Place:
    ward: str
    bed: str
    device: str
    patient: str | None


def _place(msg: _Msg, ctx: DeviceContext, beds: Mapping[str, tuple[str, str]], bind: str) -> _Place:
    """Where a message's values belong: ward, bed, the message's device and patient."""
    msh = msg.segments[0]
    pid = msg.segment("PID")
    patient = ctx.patient
    if pid is not None:
        patient = _clean(msg.comps(pid, 3)[0]) or ctx.patient
    device = _clean(_first_nonempty(msg.comps(msh, 3))) or ctx.device
    if bind == "fixed":
        device = ctx.device  # a serial line: the configured device names it
    ward, bed = ctx.ward, ctx.bed
    if bind == "pv1":
        ward, bed = _bed(msg, ctx, beds)
    return _Place(ward, bed, device, patient)


def _bed(msg: _Msg, ctx: DeviceContext, beds: Mapping[str, tuple[str, str]]) -> tuple[str, str]:
    """``beds`` by PV1-3 or MSH-4, else ward and bed from PV1-3, else ``ctx``'s."""
    pv1 = msg.segment("PV1")
    # looked up in standard encoding, as the config writes them (ICU^^7)
    location = msg.standard(pv1, 3) if pv1 is not None else ""
    facility = msg.standard(msg.segments[0], 4)
    keys = (location, location.rstrip("^&"), facility, facility.split("^")[0])
    for key in keys:
        if key and key in beds:
            return beds[key]
    parts = msg.tree(pv1, 3)[0] if pv1 is not None else []
    parts += [[""]] * (3 - len(parts))
    bed = _clean(msg.first_sub(parts[2]) or msg.first_sub(parts[1]))
    if not bed:
        return ctx.ward, ctx.bed
    return _clean(msg.first_sub(parts[0])) or ctx.ward, bed


def _device(msg: _Msg, seg: _Seg, default: str) -> str:
    """OBX-18 equipment instance identifier, else the message's device."""
    return _clean(_first_nonempty(msg.comps(seg, 18))) or default
