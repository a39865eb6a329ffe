"""ORU^R01 and ORU^R40 messages -> readings, device statuses, device alarm reports,
rejections and the ACK owed (:class:`Hl7Parser`); see :mod:`monitor.sources.devices.hl7`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from monitor.model import INTERMITTENT, DeviceAlarm, DeviceAlarmReport, DeviceStatus, Reading
from monitor.sources.codecs import check_value
from monitor.sources.devices import DeviceContext, Parsed
from monitor.sources.devices.hl7.ack import Ack, _with
from monitor.sources.devices.hl7.alarms import (
    _alarm,
    _coded,
    _distinct,
    _is_alert,
    _mnemonic,
    _Pcd04,
    _pcd04_alarm,
)
from monitor.sources.devices.hl7.codes import (
    _INTERMITTENT_CHANNELS,
    _code_text,
    _convert,
    _label,
    _method,
    _Target,
    resolve_observation,
)
from monitor.sources.devices.hl7.message import (
    _NO_RESULT_STATUS,
    _clip,
    _decode,
    _Msg,
    _Seg,
    _split,
)
from monitor.sources.devices.hl7.place import _device, _Place, _place
from monitor.sources.devices.hl7.values import (
    _MIN_TS,
    NO_VALUE_MARKERS,
    _first_time,
    _number,
    _value_text,
)

#: Rejection causes of this format, beyond :data:`monitor.sources.codecs.CAUSES`.
CAUSES: Final[dict[str, str]] = {
    "malformed_hl7": "a frame that is not an HL7 v2 message (no MSH segment, or unparsable)",
    "unsupported_message": "an HL7 message other than ORU^R01",
    "duplicate": "a second, different value of one vital from one device at one instant",
    "truncated_frame": "an MLLP frame cut short by the start of the next one (no end bytes):"
    " discarded, never acknowledged (the MLLP listener)",
}


@dataclass(slots=True)
class _Obs:
    """One OBX that is a vital, on its way to a reading or a status."""

    ts: float
    device: str
    vital: str
    value: float | None  #: None: no measurement (a marker)
    label: str
    mode: str | None = None  #: measurement mode (CONTINUOUS, INTERMITTENT; None: unknown)


class Hl7Parser:
    """ORU^R01 messages -> readings, device statuses, rejections and the ACK owed.

    Stateless between messages: one parser may serve any number of connections.
    """

    def __init__(
        self,
        beds: Mapping[str, str] | None = None,
        bind: Literal["pv1", "fixed"] = "fixed",
        clock: Literal["message", "receive"] = "message",
    ) -> None:
        self.beds: dict[str, tuple[str, str]] = {}
        for key, where in (beds or {}).items():
            ward, sep, bed = where.partition("/")
            if not sep or not ward or not bed or "/" in bed:
                raise ValueError(f"beds[{key!r}] = {where!r}: expected ward/bed")
            self.beds[key] = (ward, bed)
        if bind not in ("pv1", "fixed"):
            raise ValueError(f"bind {bind!r}: expected 'pv1' or 'fixed'")
        if clock not in ("message", "receive"):
            raise ValueError(f"clock {clock!r}: expected 'message' or 'receive'")
        self.bind = bind
        self.clock = clock

    def parse(self, frame: bytes, ctx: DeviceContext) -> Parsed:
        """One message (without MLLP framing) -> readings, statuses, rejections."""
        return self.parse_message(frame, ctx)[0]

    def parse_message(self, frame: bytes, ctx: DeviceContext) -> tuple[Parsed, Ack]:
        """One message -> its content and the ACK its sender is owed. Never raises."""
        try:
            return self._parse(frame, ctx)
        except Exception as exc:  # noqa: BLE001 - any input is refused, never raised
            out = Parsed()
            out.reject("malformed_hl7", f"unparsable HL7 ({type(exc).__name__})", frame)
            return out, Ack("AE", text="unparsable HL7 message", error="102")

    # ----------------------------------------------------------------- message

    def _parse(self, frame: bytes, ctx: DeviceContext) -> tuple[Parsed, Ack]:
        out = Parsed()
        text, encoding = _decode(frame)
        msg = _split(text, encoding)
        if msg is None:
            out.reject("malformed_hl7", "no parsable MSH segment", frame)
            return out, Ack("AE", text="not an HL7 v2 message", error="100", encoding=encoding)
        msh = msg.segments[0]
        mtype = [c.strip().upper() for c in msg.comps(msh, 9)]
        header = Ack(
            "AA",
            control_id=msg.standard(msh, 10).strip(),
            sending_app=msg.standard(msh, 3),
            sending_facility=msg.standard(msh, 4),
            receiving_app=msg.standard(msh, 5),
            receiving_facility=msg.standard(msh, 6),
            processing_id=msg.value(msh, 11).strip() or "P",
            version=msg.value(msh, 12).strip() or "2.5",
            encoding=encoding,
            trigger=_clip(mtype[1]) if len(mtype) > 1 and mtype[1].isalnum() else "R01",
        )
        kind = "^".join(mtype[:2])
        if kind not in ("ORU^R01", "ORU^R40"):
            shown = _clip(kind.replace("\\", "")) or "(empty)"
            detail = f"MSH-9 {shown}: only ORU^R01 and ORU^R40 are taken"
            out.reject("unsupported_message", detail, frame)
            return out, _with(header, "AE", f"unsupported message type {shown}", "200")
        if kind == "ORU^R40":
            self._alarm_events(msg, ctx, out, frame)
        else:
            self._observations(msg, ctx, out, frame)
        note = f"{len(out.rejections)} value(s) refused" if out.rejections else ""
        return out, _with(header, "AA", note, "")

    def _observations(self, msg: _Msg, ctx: DeviceContext, out: Parsed, frame: bytes) -> None:
        place = _place(msg, ctx, self.beds, self.bind)
        use_message_time = self.clock == "message" and ctx.clock == "device"
        msh_ts = msg.value(msg.segments[0], 7)
        obr_ts = ""
        observations: list[_Obs] = []
        #: device (no channel) -> times of its observations: the devices the message
        #: speaks for (alarm reports), in order
        spoken: dict[str, list[float]] = {}
        alarms: dict[str, list[DeviceAlarm]] = {}
        untimed: set[str] = set()  #: devices with an alarm whose time was refused
        for seg in msg.segments[1:]:
            name = msg.name(seg)
            if name == "OBR":
                obr_ts = msg.value(seg, 7)
            elif name == "OBX":
                fallback = (obr_ts, msh_ts)
                code = msg.comps(seg, 3)
                device = _device(msg, seg, place.device)
                times = spoken.setdefault(device, [])
                if _is_alert(code):
                    alarm = _alarm(msg, seg, code)
                    if alarm is None:
                        if not msg.ignored(seg):
                            out.unmapped[_code_text(code)] += 1  # a class we do not know
                        continue
                    ts, refused = self._when(msg, seg, ctx, fallback, use_message_time)
                    if refused:
                        self._bad_ts(f"OBX {alarm.source}", ts, ctx, out, frame)
                        untimed.add(device)
                        continue
                    times.append(ts)
                    alarms.setdefault(device, []).append(alarm)
                    continue
                target = resolve_observation(code)
                if target is None:
                    if not msg.ignored(seg):
                        out.unmapped[_code_text(code)] += 1  # not a vital vitalmon knows
                    continue
                obs = self._obx(
                    msg, seg, target, device, ctx, fallback, use_message_time, out, frame
                )
                if obs is not None:
                    observations.append(obs)
                    times.append(obs.ts)
        self._collect(observations, place, out, frame)
        if not spoken:
            spoken[place.device] = []  # a message without OBX speaks for its device
        for device, times in spoken.items():
            if device in untimed:
                continue  # its alarms cannot be placed in time: nothing ends by this message
            at = max(times) if times else ctx.now
            if not times and use_message_time:
                told = _first_time((obr_ts, msh_ts), ctx.tz)
                at = ctx.now if told is None else told
                if at - ctx.now > ctx.max_skew_s or at < _MIN_TS:
                    continue  # (its observations, if any, were refused as bad_ts)
            found = _distinct(alarms.get(device, ()))
            report = DeviceAlarmReport(at, place.ward, place.bed, device, found, place.patient)
            out.device_alarms.append(report)

    def _alarm_events(self, msg: _Msg, ctx: DeviceContext, out: Parsed, frame: bytes) -> None:
        """ORU^R40 (IHE PCD-04): each alarm identification OBX (``MDC_EVT_*``) and the
        ``MDC_ATTR_*`` OBX after it -> one report of that alarm alone (not complete);
        numeric OBX among them are readings as in ORU^R01."""
        place = _place(msg, ctx, self.beds, self.bind)
        use_message_time = self.clock == "message" and ctx.clock == "device"
        msh_ts = msg.value(msg.segments[0], 7)
        obr_ts = ""
        observations: list[_Obs] = []
        groups: list[_Pcd04] = []
        current: _Pcd04 | None = None
        for seg in msg.segments[1:]:
            name = msg.name(seg)
            if name == "OBR":
                obr_ts = msg.value(seg, 7)
                current = None  # an alarm's OBX follow its own OBR
                continue
            if name != "OBX":
                continue
            code = msg.comps(seg, 3)
            mnemonic = _mnemonic(code)
            ignored = msg.ignored(seg)
            if mnemonic.startswith("MDC_EVT_"):
                current = _Pcd04(seg, (obr_ts, msh_ts), mnemonic)
                groups.append(current)
                continue
            if mnemonic.startswith("MDC_ATTR_") and current is not None:
                current.attrs[mnemonic] = _coded(msg, seg)
                continue
            target = resolve_observation(code)
            if target is None:
                if not ignored:
                    out.unmapped[_code_text(code)] += 1
                continue
            if current is not None and not current.source:
                current.source = mnemonic or _clip(_label(code))
            fallback = (obr_ts, msh_ts)
            device = _device(msg, seg, place.device)
            obs = self._obx(msg, seg, target, device, ctx, fallback, use_message_time, out, frame)
            if obs is not None:
                observations.append(obs)
        self._collect(observations, place, out, frame)
        for g in groups:
            alarm = _pcd04_alarm(msg, g)
            if alarm is None:
                continue
            ts, refused = self._when(msg, g.seg, ctx, g.fallback, use_message_time)
            if refused:
                self._bad_ts(f"OBX {alarm.source}", ts, ctx, out, frame)
                continue
            device = _device(msg, g.seg, place.device)
            report = DeviceAlarmReport(
                ts, place.ward, place.bed, device, (alarm,), place.patient, complete=False
            )
            out.device_alarms.append(report)

    def _when(
        self,
        msg: _Msg,
        seg: _Seg,
        ctx: DeviceContext,
        fallback: tuple[str, str],
        use_message_time: bool,
    ) -> tuple[float, bool]:
        """An OBX's time (OBX-14, else OBR-7, else MSH-7; else, or with the receive clock,
        ``ctx.now``) and whether it is refused (beyond ``ctx.max_skew_s`` ahead of the
        receive time, or before 2000)."""
        if not use_message_time:
            return ctx.now, False
        ts = _first_time((msg.value(seg, 14), *fallback), ctx.tz)
        if ts is None:
            return ctx.now, False
        return ts, ts - ctx.now > ctx.max_skew_s or ts < _MIN_TS

    def _bad_ts(self, what: str, ts: float, ctx: DeviceContext, out: Parsed, frame: bytes) -> None:
        out.reject(
            "bad_ts",
            f"{what}: message time is {ts - ctx.now:+.0f} s from the receive"
            f" time (at most {ctx.max_skew_s:g} s ahead, after 2000)",
            frame,
        )

    def _obx(
        self,
        msg: _Msg,
        seg: _Seg,
        target: _Target,
        device: str,
        ctx: DeviceContext,
        fallback: tuple[str, str],
        use_message_time: bool,
        out: Parsed,
        frame: bytes,
    ) -> _Obs | None:
        vital, channel = target
        label = _clip(_label(msg.comps(seg, 3)))
        status = msg.status(seg)
        if msg.ignored(seg):
            return None
        raw = _value_text(msg, seg)
        marker = status == _NO_RESULT_STATUS
        value: float | None = None
        if not marker:
            if raw == "":
                return None  # nothing measured, nothing said: ignored
            number = _number(raw)
            if number is None:
                detail = f"OBX {label}: {vital}={_clip(raw)!r} is not a number"
                out.reject("wrong_type", detail, frame)
                return None
            marker = number in NO_VALUE_MARKERS
            if not marker:
                converted = _convert(vital, number, msg.comps(seg, 6))
                if converted is None:
                    unit = _clip(msg.text(seg, 6))
                    out.reject("bad_unit", f"OBX {label}: {vital} in {unit!r}", frame)
                    return None
                value, cause, detail = check_value(vital, converted)
                if value is None:
                    out.reject(cause, f"OBX {label}: {detail}", frame)
                    return None
        ts, refused = self._when(msg, seg, ctx, fallback, use_message_time)
        if refused:
            self._bad_ts(f"OBX {label}", ts, ctx, out, frame)
            return None
        mode = INTERMITTENT if channel in _INTERMITTENT_CHANNELS else _method(msg, seg)
        return _Obs(ts, f"{device}.{channel}", vital, value, label, mode)

    def _collect(self, observations: list[_Obs], place: _Place, out: Parsed, frame: bytes) -> None:
        """Observations -> readings (first value per device, vital and instant wins) and
        one ``no_sensor`` status per device that sent a marker."""
        seen: dict[tuple[str, str, float], float] = {}
        latest: dict[str, float] = {}
        blind: set[str] = set()
        for obs in observations:
            latest[obs.device] = max(latest.get(obs.device, obs.ts), obs.ts)
            if obs.value is None:
                blind.add(obs.device)
                continue
            key = (obs.device, obs.vital, obs.ts)
            first = seen.get(key)
            if first is None:
                seen[key] = obs.value
                reading = Reading(
                    obs.ts,
                    place.ward,
                    place.bed,
                    obs.device,
                    obs.vital,
                    obs.value,
                    place.patient,
                    obs.mode,
                )
                out.readings.append(reading)
            elif first != obs.value:
                out.reject(
                    "duplicate",
                    f"OBX {obs.label}: {obs.vital}={obs.value:g} after {first:g} at the same"
                    " time from the same device",
                    frame,
                )
        for device in sorted(blind, key=lambda d: latest[d]):
            flags = frozenset({"no_sensor"})
            status = DeviceStatus(
                latest[device], place.ward, place.bed, device, flags, place.patient
            )
            out.statuses.append(status)
