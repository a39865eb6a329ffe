"""HL7 v2 ORU^R01 (unsolicited observation results) -> readings, device statuses, the
device's own alarms and INOPs, an ACK.

What a central station, a monitor gateway or an integration engine pushes over MLLP
(:mod:`monitor.sources.hl7mllp`) or a serial line. Parsed with ``python-hl7``; no I/O.
:meth:`Hl7Parser.parse_message` returns the :class:`~monitor.sources.devices.Parsed`
content and the :class:`Ack` the sender is owed; :func:`ack` renders it.

**Message.** Segments may end in CR (the standard), LF or CRLF. The separators and the
escape character are the message's own (MSH-1, MSH-2: ``MSH#$*!@`` works as ``MSH|^~\\&``),
and every text field used (OBX-3 and OBX-6 codes and labels, OBX-5 values and alarm texts,
OBX-18, MSH-3, PID-3, PV1-3) is read through python-hl7 and unescaped by
:meth:`hl7.Message.unescape` (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, ``\\.br\\`` and the other
formatting sequences, ``\\Xhh..\\`` as bytes in the message's character set; highlighting
and unknown sequences are dropped). ``beds`` keys and the fields echoed in the ACK are
in standard encoding whatever the message's. ``ORU^R01`` (IHE PCD-01
observations) and ``ORU^R40`` (IHE PCD-04 alarms, below) are taken (MSH-9); anything else
is refused (``unsupported_message``, ACK ``AE``), and so is a frame that is not an HL7 v2
message at all (``malformed_hl7``, ACK ``AE``). A parsed message is acknowledged ``AA``
(``ACK^R01^ACK``, ``ACK^R40^ACK``) even when some of its values are refused (those go to
the dead letters; a sender told ``AE`` would only resend the same values).

**Which OBX is which vital.** OBX-3 is matched, in this order of precedence, by:

1. an IEEE 11073 MDC mnemonic (any component starting ``MDC_``, e.g. the text of
   ``150456^MDC_PULS_OXIM_SAT_O2^MDC``): when there is one it decides alone, since
   numeric codes are the part vendors get wrong (one sample sends
   ``150031^MDC_PRESS_CUFF_SYS`` with sub-id ``1.1.9.150301``);
2. a vendor label (a text component, any case): Philips ``HR``, ``Pulse``, ``SpO2``,
   ``NBPs`` ...;
3. a numeric MDC code (OBX-3.1 or 3.4), or a Philips MDIL code ``PPPP-HHHH`` (partition
   and term code in hex: ``0002-4bb8`` is 2 * 65536 + 0x4bb8 = 150456).

Each vital comes with a *channel*, appended to the device name (``<device>.<channel>``,
as ``vitalmon replay`` names ``hr@ecg`` and ``hr@pleth``): an ECG heart rate and a pulse
rate, or a cuff and an arterial pressure, are then two series, never one overwriting
the other.

========================================  ==========================  =======  =======
MDC mnemonic                              code                        vital    channel
========================================  ==========================  =======  =======
MDC_PULS_OXIM_SAT_O2                      150456                      spo2     pleth
MDC_PULS_OXIM_PULS_RATE                   149530                      hr       pleth
MDC_ECG_HEART_RATE (MDC_ECG_CARD_BEAT_    147842                      hr       ecg
RATE)
MDC_PULS_RATE                             149514                      hr       pulse
MDC_PULS_RATE_NON_INV                     149546                      hr       nibp
MDC_BLD_PULS_RATE_INV                     149522                      hr       abp
MDC_RESP_RATE, MDC_TTHOR_RESP_RATE        151562, 151578              rr       resp
MDC_AWAY_RESP_RATE, MDC_CO2_RESP_RATE     151570, 151594              rr       co2
MDC_PRESS_BLD_NONINV_SYS/_DIA/_MEAN       150021/150022/150023        sbp/dbp/map  nibp
MDC_PRESS_CUFF_SYS/_DIA/_MEAN             150301/150302/150303        sbp/dbp/map  nibp
MDC_PRESS_BLD_SYS/_DIA/_MEAN              150017/150018/150019        sbp/dbp/map  abp
MDC_PRESS_BLD_ART_ABP_SYS/_DIA/_MEAN      150037/150038/150039        sbp/dbp/map  abp
MDC_PRESS_BLD_ART_SYS/_DIA/_MEAN          (mnemonic only)             sbp/dbp/map  abp
MDC_TEMP, MDC_TEMP_BODY, _CORE, _TYMP,    150344, 150364, 150368,     temp     temp
_RECT, _ORAL, _EAR, _AXILLA, _GIT         150392, 188420, 188424,
(and _ESOPH, _NASOPH, _VESIC, _BLD, _ART  188428, 188452, 188456
by mnemonic)
MDC_AWAY_CO2_ET, MDC_CONC_AWAY_CO2_ET     151708                      etco2    co2
========================================  ==========================  =======  =======

Vendor labels (matched normalised: lower case, without spaces, parentheses, hyphens and
underscores, so ``Pulse (SpO2)``, ``Pulse(SpO2)`` and ``pulse_spo2`` are one label):
``HR``, ``Heart Rate`` -> hr/ecg; ``Pulse``, ``PR``, ``Pulse Rate`` -> hr/pulse; ``Pulse
(SpO2)``, ``PlethPulse``, ``PR (SpO2)`` -> hr/pleth; ``Pulse (NBP)``, ``NBP Pulse`` ->
hr/nibp; ``SpO2`` -> spo2/pleth; ``SpO2T`` (telemetry) -> spo2/tele; ``RR``, ``Resp``,
``Resp Rate`` -> rr/resp; ``awRR`` -> rr/co2; ``NBPs``/``NBPd``/``NBPm`` (also
``NIBPs``..., ``NBP-S``...) -> sbp/dbp/map nibp; ``ABPs``/``ABPd``/``ABPm``,
``ARTs``/``ARTd``/``ARTm`` -> sbp/dbp/map abp; ``Temp``, ``Tcore``, ``Trect``,
``Tesoph``, ``Tnaso``, ``Ttymp``, ``Toral``, ``Taxil``, ``Tblood``, ``Tvesic``, ``Tart``
-> temp; ``etCO2`` -> etco2/co2. Philips MDIL codes beyond the MDC numbering:
``0002-f09c`` -> spo2/tele, ``0002-4822`` -> hr/pleth, ``0002-f0e5`` -> hr/nibp.
Skin, room and differential temperatures are not body temperature and are not taken.

**Unmapped observations are counted, never dropped silently.** Any other OBX (signal
quality, height, body position, a CE/ST result, a vendor code vitalmon does not know)
that is not an alarm segment and not of an ignored result status (below) increments
:attr:`Parsed.unmapped` under a short text of its OBX-3 alone, label and code
(``Perf (0002-d006)``, ``MDC_SPO2_SIGNAL_QUALITY_INDEX (160324)``; at most 60
characters): never its value, never patient data. The sources export the counts
(``vitalmon_hl7_unmapped_observations_total{code}``) and log the most frequent.

**Measurement mode.** A cuff reading (channel ``nibp``, any vital) or one whose OBX-17
observation method says ``APERIODIC`` (any case) is :data:`~monitor.model.INTERMITTENT`;
OBX-17 ``PERIODIC`` or ``CONTINUOUS`` makes it :data:`~monitor.model.CONTINUOUS`
(OBX-13 is read the same way when OBX-17 is empty: the invalid-values sample puts
``APERIODIC`` there); otherwise the mode is left to the engine (None).

**Device alarms and INOPs.** A Philips IntelliVue central station (and any sender using
its convention) carries the monitor's own active alarms as OBX segments (value type TX)
whose OBX-3 is ``<n>^<class>^MDIL-ALERT`` and OBX-5 the monitor's own text
(``***xTachy 160>140``, ``SpO2T  No Pulse``). The class (matched by name, any case; by
its number when the name is absent) gives priority and kind (:data:`ALERT_CLASSES`):

==================  ===  ========  ===========
class               n    priority  kind
==================  ===  ========  ===========
RedAlarm            1    high      device
YellowAlarm         2    medium    device
ShortYellowAlarm    3    medium    device
HardInop            5    medium    technical
SoftInop            6    low       technical
==================  ===  ========  ===========

IEC 60601-1-8 has three alarm priorities with their colours: red = high, yellow =
medium, cyan = low. A *short* yellow is a yellow alarm that clears itself (arrhythmia
such as a pause), so it stays medium: its shortness is already expressed by its
disappearing from the next message. An alarm stays in every message while it is active
and is absent once it ends, so each message is the device's full set: every ORU^R01
yields one :class:`~monitor.model.DeviceAlarmReport` per device it speaks for (the
device of each of its OBX segments: OBX-18, else the message's device, MSH-3 or
``ctx.device``; without the ``.channel`` suffix of vitals; the message's device when
it has no OBX), with all that device's alarms, possibly none (an empty report ends
what was active). The report's time is the latest time of the device's observations
in the message (OBX-14, else OBR-7, else MSH-7, as for vitals and with the same
``bad_ts`` refusal; an alarm segment whose time is refused withholds its device's
report, so no alarm is ended by a message that cannot be placed in time), else the
message's time, else the receive time. An alarm's identity (:func:`alarm_key`) is its
text without leading asterisks, numbers (and the comparison operators next to them)
and repeated spaces: ``***xTachy 160>140`` and ``***xTachy 165>140`` are one alarm,
``xTachy``. An unknown class is not an alarm: it is counted as unmapped.

**IHE PCD-04 (ORU^R40).** An alarm communication message speaks of one alarm at a time
(start, continue, end), not of the device's full set, so each alarm becomes a report of
that alarm alone (``complete`` False: the device's other alarms stand). An alarm is an
identification OBX whose OBX-3 is an ``MDC_EVT_*`` mnemonic (``MDC_EVT_LO``, or
``MDC_EVT_ALARM`` with the event in OBX-5) and the ``MDC_ATTR_*`` OBX after it (up to the
next identification or OBR). Priority: OBX-8 abnormal flags ``PH`` high, ``PM`` medium,
``PL`` (and ``PN``) low (else ``MDC_ATTR_ALARM_PRIORITY``; else medium); kind: flag ``ST``
technical, ``SP``/``SA`` device (else ``MDC_ATTR_ALERT_TYPE``). Active or over:
``MDC_ATTR_ALARM_STATE`` ``active``/``latched`` or ``inactive``; without it, an
``MDC_ATTR_EVENT_PHASE`` of ``end``, ``stop``, ``reset`` or ``inactivate`` is over.
Text: ``MDC_ATTR_ALERT_TEXT``, else OBX-5's text (original text of a coded OBX-5), else
the event mnemonic. Key: the event mnemonic and the source (``MDC_ATTR_ALERT_SOURCE``,
else the first vital OBX of the group, else the text), e.g. ``MDC_EVT_LO
MDC_PULS_OXIM_SAT_O2``. Device and time as for an alarm segment of ORU^R01 (OBX-18,
OBX-14 of the identification OBX). Vital OBX in the message are readings as in ORU^R01;
other OBX are counted unmapped.

**Values and units.** OBX-5 (first repetition; NM, or SN ``=^97``) must be an HL7
number; a known vital that carries something else is refused (``wrong_type``), an empty
OBX-5 is ignored. OBX-6 is matched by MDC mnemonic, UCUM/vendor text, MDC code or MDIL
code (``MDC_DIM_PERCENT``, ``262688``, ``0004-0220``, ``%``; ``/min``, ``bpm``, ``rpm``,
``{beats}/min``, ``MDC_DIM_BEAT_PER_MIN``/``RESP_PER_MIN``; ``mmHg``, ``mm[Hg]``,
``kPa``, ``MDC_DIM_MMHG``/``KILO_PASCAL``; ``Cel``, ``degC``, ``[degF]``, ``degF``, ``K``,
``MDC_DIM_DEGC``/``FAHR``/``KELVIN``) and converted to vitalmon's unit as the SenML
decoder does (:mod:`monitor.sources.codecs`); a unit that does not fit the vital is
refused (``bad_unit``); no unit at all means vitalmon's unit.

**No measurement.** A monitor with no probe attached sends a marker in place of the
value. OBX-11 result status ``X`` ("cannot be obtained"), or a value in
:data:`NO_VALUE_MARKERS` (``-100`` as in the invalid-values sample; ``-999``, ``-99.9``;
the IEEE 11073 NaN and NRes codes 8388607, -8388608, 2047, -2048) is no reading: it
becomes technical state, a :class:`~monitor.model.DeviceStatus` of that channel's device
with the flag ``no_sensor`` ("no sensor connected"), at the latest time of that device in
the message (so the message's own readings from the device do not clear it; a later
valid value does, see :mod:`monitor.engine.sensor`). Result statuses ``N`` (not asked),
``I`` (pending), ``D`` (deleted) and ``W`` (wrong) are ignored (and not counted as
unmapped). Any other value outside
:data:`~monitor.model.VITALS` ranges is refused as ``implausible`` (the 384.5 °C of the
sample).

**Duplicates.** OBX-1 set ids are not used: monitors number them carelessly (the sample
repeats 3 and 4). An observation is what OBX-3 says it is. Two values of one vital from
one device at one instant (two SpO2 channels, say): the first valid one wins; a later
equal one is dropped silently, a different one refused (``duplicate``).

**Where.** ``bind="pv1"`` (the MLLP listener): ``beds`` maps the raw PV1-3 (e.g.
``ICU^^7``, also without trailing separators) or MSH-4 (raw, or its first component) to
``ward/bed`` first; else PV1-3 gives bed = PV1-3.3 (else the room, PV1-3.2) and ward =
PV1-3.1 (else ``ctx.ward``), each the first non-empty subcomponent (``^^&10`` is bed
``10``; ``^^Doc1&5&1`` is bed ``Doc1``); a PV1-3 without bed or room means ``ctx.ward`` /
``ctx.bed``. ``bind="fixed"`` (a serial line at one bed) always uses ``ctx``, device
included. Device (``pv1``): OBX-18 (equipment instance id), else MSH-3 (sending
application), else ``ctx.device``;
patient: PID-3 (first id), else ``ctx.patient``. Names are sanitised for MQTT topics
(``/``, ``+``, ``#`` and control characters become ``_``; at most 64 characters).

**When.** With ``clock="message"`` and a context whose ``clock`` is ``"device"`` (the MLLP
listener's, or a serial port set to ``clock: device``): OBX-14, else the OBR-7 of the
OBX's order, else MSH-7 (DTM ``YYYYMMDDHHMM[SS[.S+]][+/-ZZZZ]``; without an offset in
``ctx.tz``, None meaning the local zone); none of them parsable: the receive time.
Otherwise (``clock="receive"``, or a serial port left at its default ``clock: receive``)
every value takes the receive time ``ctx.now``. A message time more than
``ctx.max_skew_s`` ahead of ``ctx.now``, or before 2000, is refused (``bad_ts``) for the
values that carry it. Past times are history, not error: an interface engine resends
what it queued during an outage. They are stored; the engine evaluates those recent
enough (``rules.max_lag_s``) and keeps the rest as history.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Final, Literal

import hl7

from monitor.model import (
    CONTINUOUS,
    INTERMITTENT,
    DeviceAlarm,
    DeviceAlarmReport,
    DeviceStatus,
    Priority,
    Reading,
)
from monitor.sources.codecs import _UNITS, check_value
from monitor.sources.devices import DeviceContext, Parsed

_MIN_TS = 946_684_800.0  #: 2000-01-01: earlier HL7 times are a clock never set

# python-hl7 logs the whole field it cannot unescape (an empty ``\\`` sequence): patient
# identifiers, in a log that must carry none. Its logger says nothing else.
hl7.util.logger.addFilter(lambda _record: False)

#: Rejection causes of this format, beyond :data:`monitor.sources.codecs.CAUSES`.
CAUSES: Final[dict[str, str]] = {
    "malformed_hl7": "a frame that is not an HL7 v2 message (no MSH segment, or unparsable)",
    "unsupported_message": "an HL7 message other than ORU^R01",
    "duplicate": "a second, different value of one vital from one device at one instant",
    "truncated_frame": "an MLLP frame cut short by the start of the next one (no end bytes):"
    " discarded, never acknowledged (the MLLP listener)",
}

AckCode = Literal["AA", "AE", "AR"]

#: Values monitors send in place of a measurement (no probe, no value): -> ``no_sensor``.
NO_VALUE_MARKERS: Final = frozenset(
    {-100.0, -999.0, -99.9, -9999.0, 8388607.0, -8388608.0, 2047.0, -2048.0}
)

#: OBX-11 result statuses that mean "no value here, on purpose": ignored.
_IGNORED_STATUS: Final = frozenset({"N", "I", "D", "W"})
#: OBX-11 "results cannot be obtained for this observation": no sensor.
_NO_RESULT_STATUS: Final = "X"

_Target = tuple[str, str]  # (vital, channel)

#: Body temperature sites (MDC_TEMP_<site>); skin, room and differences are not taken.
_TEMP_SITES: Final = "BODY CORE TYMP RECT ORAL EAR AXILLA GIT ESOPH NASOPH VESIC BLD ART"
#: Philips temperature labels (lower case).
_TEMP_LABELS: Final = "temp tcore trect tesoph tnaso ttymp toral taxil tblood tvesic tart"

_NIBP = {"SYS": ("sbp", "nibp"), "DIA": ("dbp", "nibp"), "MEAN": ("map", "nibp")}
_ABP = {"SYS": ("sbp", "abp"), "DIA": ("dbp", "abp"), "MEAN": ("map", "abp")}

#: MDC mnemonic -> (vital, channel).
MDC_NAMES: Final[dict[str, _Target]] = {
    "MDC_PULS_OXIM_SAT_O2": ("spo2", "pleth"),
    "MDC_PULS_OXIM_PULS_RATE": ("hr", "pleth"),
    "MDC_ECG_HEART_RATE": ("hr", "ecg"),
    "MDC_ECG_CARD_BEAT_RATE": ("hr", "ecg"),
    "MDC_PULS_RATE": ("hr", "pulse"),
    "MDC_PULS_RATE_NON_INV": ("hr", "nibp"),
    "MDC_BLD_PULS_RATE_INV": ("hr", "abp"),
    "MDC_RESP_RATE": ("rr", "resp"),
    "MDC_TTHOR_RESP_RATE": ("rr", "resp"),
    "MDC_AWAY_RESP_RATE": ("rr", "co2"),
    "MDC_CO2_RESP_RATE": ("rr", "co2"),
    **{f"MDC_PRESS_BLD_NONINV_{k}": v for k, v in _NIBP.items()},
    **{f"MDC_PRESS_CUFF_{k}": v for k, v in _NIBP.items()},
    **{f"MDC_PRESS_BLD_{k}": v for k, v in _ABP.items()},
    **{f"MDC_PRESS_BLD_ART_{k}": v for k, v in _ABP.items()},
    **{f"MDC_PRESS_BLD_ART_ABP_{k}": v for k, v in _ABP.items()},
    "MDC_TEMP": ("temp", "temp"),
    **{f"MDC_TEMP_{site}": ("temp", "temp") for site in _TEMP_SITES.split()},
    "MDC_AWAY_CO2_ET": ("etco2", "co2"),
    "MDC_CONC_AWAY_CO2_ET": ("etco2", "co2"),
}

#: MDC code (partition * 65536 + term code) -> (vital, channel).
MDC_CODES: Final[dict[int, _Target]] = {
    150456: ("spo2", "pleth"),
    149530: ("hr", "pleth"),
    147842: ("hr", "ecg"),
    149514: ("hr", "pulse"),
    149546: ("hr", "nibp"),
    149522: ("hr", "abp"),
    151562: ("rr", "resp"),
    151578: ("rr", "resp"),
    151570: ("rr", "co2"),
    151594: ("rr", "co2"),
    150021: ("sbp", "nibp"),
    150022: ("dbp", "nibp"),
    150023: ("map", "nibp"),
    150301: ("sbp", "nibp"),
    150302: ("dbp", "nibp"),
    150303: ("map", "nibp"),
    150017: ("sbp", "abp"),
    150018: ("dbp", "abp"),
    150019: ("map", "abp"),
    150037: ("sbp", "abp"),
    150038: ("dbp", "abp"),
    150039: ("map", "abp"),
    **{
        c: ("temp", "temp")
        for c in (150344, 150364, 150368, 150392, 188420, 188424, 188428, 188452, 188456)
    },
    151708: ("etco2", "co2"),
    # Philips MDIL codes (partition 2) beyond the MDC numbering
    0x2F09C: ("spo2", "tele"),  # 0002-f09c SpO2T, SpO2 from a telemetry transceiver
    0x24822: ("hr", "pleth"),  # 0002-4822 pulse rate from the pleth
    0x2F0E5: ("hr", "nibp"),  # 0002-f0e5 pulse rate from the cuff
}

#: Vendor labels (lower case) -> (vital, channel).
LABELS: Final[dict[str, _Target]] = {
    "hr": ("hr", "ecg"),
    "heart rate": ("hr", "ecg"),
    "pulse": ("hr", "pulse"),
    "pr": ("hr", "pulse"),
    "pulse rate": ("hr", "pulse"),
    "pulse (spo2)": ("hr", "pleth"),
    "pleth pulse": ("hr", "pleth"),
    "pr (spo2)": ("hr", "pleth"),
    "pulse (nbp)": ("hr", "nibp"),
    "pulse (nibp)": ("hr", "nibp"),
    "nbp pulse": ("hr", "nibp"),
    "spo2": ("spo2", "pleth"),
    "spo2t": ("spo2", "tele"),
    "rr": ("rr", "resp"),
    "resp": ("rr", "resp"),
    "resp rate": ("rr", "resp"),
    "awrr": ("rr", "co2"),
    **{
        f"{name}{sep}{suffix}": target
        for name, table in (("nbp", _NIBP), ("nibp", _NIBP), ("abp", _ABP), ("art", _ABP))
        for sep in ("", "-", " ")
        for suffix, target in zip("sdm", table.values(), strict=True)
    },
    **{t: ("temp", "temp") for t in _TEMP_LABELS.split()},
    "etco2": ("etco2", "co2"),
}

_LABEL_NOISE = re.compile(r"[\s()\-_]+")


def _norm_label(text: str) -> str:
    """A vendor label as looked up: lower case, no spaces, parentheses, hyphens or
    underscores (``Pulse (SpO2)``, ``Pulse(SpO2)``, ``pulse_spo2`` -> ``pulsespo2``)."""
    return _LABEL_NOISE.sub("", text.lower())


#: :data:`LABELS` by normalised label.
_LABEL_KEYS: Final[dict[str, _Target]] = {_norm_label(k): v for k, v in LABELS.items()}

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

#: OBX-17 observation method -> measurement mode.
_METHODS: Final = {"APERIODIC": INTERMITTENT, "PERIODIC": CONTINUOUS, "CONTINUOUS": CONTINUOUS}
#: Channels whose readings are intermittent whatever OBX-17 says (a cuff cycle).
_INTERMITTENT_CHANNELS: Final = frozenset({"nibp"})

#: An unmapped observation's text for :attr:`Parsed.unmapped`, at most this long.
UNMAPPED_CODE_CHARS: Final = 60
_MAX_ALARM_TEXT = 200

#: OBX-6 unit (lower case: MDC mnemonic, UCUM or vendor text) -> vitalmon's unit name
#: (a key of the conversion table in :mod:`monitor.sources.codecs`).
UNIT_NAMES: Final[dict[str, str]] = {
    "mdc_dim_percent": "%",
    "mdc_dim_vol_percent": "%",
    "%": "%",
    "mdc_dim_beat_per_min": "/min",
    "mdc_dim_resp_per_min": "/min",
    "/min": "/min",
    "1/min": "/min",
    "bpm": "/min",
    "rpm": "/min",
    "brpm": "/min",
    "beats/min": "/min",
    "beat/min": "/min",
    "breaths/min": "/min",
    "{beats}/min": "/min",
    "{beat}/min": "/min",
    "{breaths}/min": "/min",
    "{breath}/min": "/min",
    "mdc_dim_mmhg": "mmHg",
    "mmhg": "mmHg",
    "mm[hg]": "mmHg",
    "mdc_dim_kilo_pascal": "kPa",
    "kpa": "kPa",
    "mdc_dim_degc": "Cel",
    "cel": "Cel",
    "degc": "Cel",
    "°c": "Cel",
    "mdc_dim_fahr": "degF",
    "[degf]": "degF",
    "degf": "degF",
    "°f": "degF",
    "mdc_dim_kelvin": "K",
    "k": "K",
}

#: OBX-6 MDC unit codes (partition 4) -> vitalmon's unit name.
UNIT_CODES: Final[dict[int, str]] = {
    262688: "%",
    264864: "/min",
    264928: "/min",
    266016: "mmHg",
    265987: "kPa",
    268192: "Cel",
    266560: "degF",
    266528: "K",
}

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_MDIL = re.compile(r"([0-9A-Fa-f]{4})-([0-9A-Fa-f]{4})")
_DTM = re.compile(
    r"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?(?:([+-])(\d{2})(\d{2}))?"
)
_UNSAFE = re.compile(r"[/+#\x00-\x1f\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: A number in an alarm text, with the comparison operators next to it (``160>140``,
#: ``<90``): not part of the alarm's identity. Digits inside a word (``SpO2``) stay.
_KEY_NUMBER = re.compile(r"[<>=≤≥]*\s*(?<![\w.])[-+]?\d+(?:[.,:]\d+)*(?!\w)\s*[<>=≤≥]*")
_MAX_NAME = 64


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


#: A segment as python-hl7 parses it (``hl7.Segment``; the library is untyped).
_Seg = Any


@dataclass(slots=True)
class _Msg:
    """A message parsed by python-hl7, whose separators and escape character are those of
    its MSH-1 and MSH-2 (any encoding characters, not only ``|^~\\&``).

    Fields go by their HL7 number (``seg[0]`` is the name; for MSH, 1 is the field
    separator and 2 the encoding characters, as python-hl7 numbers them). Every text read
    through here is unescaped by :meth:`hl7.Message.unescape` with the message's own
    encoding characters (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, ``\\.br\\`` and the other
    formatting sequences, ``\\Xhh..\\``; see :class:`_Unescapes`): nothing is split or
    unescaped by hand.
    """

    message: Any  #: the ``hl7.Message``
    segments: list[_Seg]  #: its segments, MSH first
    standard_encoding: bool  #: MSH-1 and MSH-2 are ``|`` and ``^~\\&``
    unescapes: _Unescapes
    #: (id of the segment, field) -> :meth:`comps` (fields are read several times)
    _comps: dict[tuple[int, int], list[str]] = field(default_factory=dict)

    @staticmethod
    def name(seg: _Seg) -> str:
        return str(seg[0]).strip().upper()

    def tree(self, seg: _Seg, n: int) -> list[list[list[str]]]:
        """Field ``n`` as python-hl7 parsed it: repetitions -> components -> escaped
        subcomponents (one empty repetition when the field is absent)."""
        if n >= len(seg):
            return [[[""]]]
        return [[[str(s) for s in _parts(c)] for c in _parts(r)] for r in _parts(seg[n])]

    def unescape(self, raw: str) -> str:
        """One subcomponent's text: :meth:`hl7.Message.unescape`."""
        return str(self.message.unescape(raw, self.unescapes))

    def comps(self, seg: _Seg, n: int) -> list[str]:
        """The components of field ``n`` (first repetition), each unescaped (its
        subcomponents, if any, joined by ``&``)."""
        key = (id(seg), n)
        got = self._comps.get(key)
        if got is None:
            got = self._comps[key] = [self._comp(c) for c in self.tree(seg, n)[0]]
        return list(got)

    def value(self, seg: _Seg, n: int) -> str:
        """The first component of field ``n`` (first repetition), unescaped."""
        return self.comps(seg, n)[0]

    def firsts(self, seg: _Seg, n: int) -> list[str]:
        """The first component of every repetition of field ``n``, unescaped."""
        return [self._comp(r[0]) for r in self.tree(seg, n)]

    def text(self, seg: _Seg, n: int) -> str:
        """Field ``n`` (first repetition) as text: a TX/ST/FT value. Its components (a
        sender that did not escape ``^``) are joined by ``^``."""
        return "^".join(self.comps(seg, n))

    def first_sub(self, subs: list[str]) -> str:
        """The first non-empty subcomponent of a component (escaped, from :meth:`tree`)."""
        return next((t for t in (self.unescape(s).strip() for s in subs) if t), "")

    def standard(self, seg: _Seg, n: int) -> str:
        """Field ``n`` (first repetition) in standard encoding (``^``, ``&``, ``\\``): to
        echo it in the ACK, or to look it up in ``beds``. A message in standard encoding is
        echoed as it came; another one is unescaped and escaped again."""
        comps = self.tree(seg, n)[0]
        if self.standard_encoding:
            return "^".join("&".join(c) for c in comps)
        return "^".join("&".join(_escape(self.unescape(s)) for s in c) for c in comps)

    def segment(self, name: str) -> _Seg | None:
        """The first segment called ``name``."""
        return next((s for s in self.segments if self.name(s) == name), None)

    def _comp(self, subs: list[str]) -> str:
        return "&".join(self.unescape(s) for s in subs)


def _parts(node: Any) -> list[Any]:
    """A python-hl7 container's parts. python-hl7 does not nest a text without a deeper
    separator (``Field(["x"])`` rather than a repetition of a component): a bare string
    is its own only part."""
    if isinstance(node, str):
        return [node]
    return list(node) or [""]


class _Unescapes:
    """The ``app_map`` given to :meth:`hl7.Message.unescape`: the escape sequences its
    defaults get wrong. It keeps ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` (the message's own
    separators and escape character), ``\\.br\\ \\.sp\\ \\.ce\\`` (line breaks),
    ``\\.in\\ \\.ti\\ \\.sk\\`` (spaces), ``\\.fi\\ \\.nf\\`` (nothing), and ``\\.sp\\``,
    ``\\.in\\``, ``\\.ti\\``, ``\\.sk\\`` with a count of at most 999; here:

    * ``\\H\\``, ``\\N\\`` (highlighting on and off) are nothing (python-hl7: ``_``);
    * ``\\Xhhhh..\\`` is bytes in the message's character set (how its frame decoded:
      UTF-8, else ISO 8859-1), not one character per byte;
    * anything else (another formatting command, a count over 999 that would make
      megabytes of a few bytes, ``\\C..\\``/``\\M..\\`` character set switches, ``\\Z..\\``
      local escapes, malformed hex) is dropped (a formatting command becomes one space),
      where python-hl7 would log the field (patient data) or raise.
    """

    __slots__ = ("encoding",)

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding

    def __bool__(self) -> bool:
        return True

    def __contains__(self, seq: object) -> bool:
        return (
            isinstance(seq, str) and seq not in _LIB_ESCAPES and _LIB_COUNTED.fullmatch(seq) is None
        )

    def __getitem__(self, seq: str) -> str:
        if seq[:1] == "X" and _HEX.fullmatch(seq[1:]):
            data = bytes.fromhex(seq[1:])
            try:
                return data.decode(self.encoding)
            except UnicodeDecodeError:
                return data.decode("latin-1")
        return " " if seq.startswith(".") else ""


#: Escape sequences python-hl7 unescapes well by itself.
_LIB_ESCAPES: Final = frozenset(
    {"F", "S", "T", "R", "E", ".br", ".sp", ".fi", ".nf", ".in", ".ti", ".sk", ".ce"}
)
_LIB_COUNTED: Final = re.compile(r"\.(?:sp|in|ti|sk) ?[+-]?[0-9]{1,3}")
_HEX: Final = re.compile(r"(?:[0-9A-Fa-f]{2})+")


@dataclass(slots=True)
class _Obs:
    """One OBX that is a vital, on its way to a reading or a status."""

    ts: float
    device: str
    vital: str
    value: float | None  #: None: no measurement (a marker)
    label: str
    mode: str | None = None  #: measurement mode (CONTINUOUS, INTERMITTENT; None: unknown)


@dataclass(slots=True)
class _Pcd04:
    """One alarm of an ORU^R40: its identification OBX and the attributes after it."""

    seg: _Seg  #: the identification OBX (``MDC_EVT_*`` in OBX-3)
    fallback: tuple[str, str]  #: (OBR-7, MSH-7)
    event: str  #: the OBX-3 mnemonic
    source: str = ""  #: the first vital observed with it (when no MDC_ATTR_ALERT_SOURCE)
    attrs: dict[str, str] = field(default_factory=dict)  #: MDC_ATTR_* -> value


@dataclass(slots=True)
class _Place:
    ward: str
    bed: str
    device: str
    patient: str | None


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
        place = self._place(msg, ctx)
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
                device = self._device(msg, seg, place.device)
                times = spoken.setdefault(device, [])
                if _is_alert(code):
                    alarm = _alarm(msg, seg, code)
                    if alarm is None:
                        if msg.value(seg, 11).strip().upper() not in _IGNORED_STATUS:
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
                    if msg.value(seg, 11).strip().upper() not in _IGNORED_STATUS:
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
        place = self._place(msg, ctx)
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
            ignored = msg.value(seg, 11).strip().upper() in _IGNORED_STATUS
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
            device = self._device(msg, seg, place.device)
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
            device = self._device(msg, g.seg, place.device)
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
        status = msg.value(seg, 11).strip().upper()
        if status in _IGNORED_STATUS:
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

    # ----------------------------------------------------------------- context

    def _place(self, msg: _Msg, ctx: DeviceContext) -> _Place:
        msh = msg.segments[0]
        pid = msg.segment("PID")
        patient = ctx.patient
        if pid is not None:
            patient = _clean(msg.comps(pid, 3)[0]) or ctx.patient
        device = _clean(_first_nonempty(msg.comps(msh, 3))) or ctx.device
        if self.bind == "fixed":
            device = ctx.device  # a serial line: the configured device names it
        ward, bed = ctx.ward, ctx.bed
        if self.bind == "pv1":
            ward, bed = self._bed(msg, ctx)
        return _Place(ward, bed, device, patient)

    def _bed(self, msg: _Msg, ctx: DeviceContext) -> tuple[str, str]:
        pv1 = msg.segment("PV1")
        # looked up in standard encoding, as the config writes them (ICU^^7)
        location = msg.standard(pv1, 3) if pv1 is not None else ""
        facility = msg.standard(msg.segments[0], 4)
        keys = (location, location.rstrip("^&"), facility, facility.split("^")[0])
        for key in keys:
            if key and key in self.beds:
                return self.beds[key]
        parts = msg.tree(pv1, 3)[0] if pv1 is not None else []
        parts += [[""]] * (3 - len(parts))
        bed = _clean(msg.first_sub(parts[2]) or msg.first_sub(parts[1]))
        if not bed:
            return ctx.ward, ctx.bed
        return _clean(msg.first_sub(parts[0])) or ctx.ward, bed

    def _device(self, msg: _Msg, seg: _Seg, default: str) -> str:
        """OBX-18 equipment instance identifier, else the message's device."""
        return _clean(_first_nonempty(msg.comps(seg, 18))) or default


# ------------------------------------------------------------------------ mapping


def resolve_observation(components: list[str]) -> tuple[str, str] | None:
    """OBX-3 components -> (vital, channel), or None when it is not a vital we take."""
    names = [c.strip() for c in components if c.strip()]
    mnemonics = [n.upper() for n in names if n.upper().startswith("MDC_")]
    if mnemonics:
        for m in mnemonics:
            if m in MDC_NAMES:
                return MDC_NAMES[m]
        return None  # an MDC observation, just not a vital
    for n in names:
        target = _LABEL_KEYS.get(_norm_label(n))
        if target is not None:
            return target
    for n in names:
        code = _code(n)
        if code is not None and code in MDC_CODES:
            return MDC_CODES[code]
    return None


def _method(msg: _Msg, seg: _Seg) -> str | None:
    """OBX-17 observation method -> measurement mode (None: it does not say). Some
    monitors put the same word in OBX-13 (the invalid-values sample's cuff values): it is
    taken there when OBX-17 says nothing."""
    for n in (17, 13):
        for c in msg.comps(seg, n):
            mode = _METHODS.get(c.strip().upper())
            if mode is not None:
                return mode
    return None


def _code_text(components: list[str]) -> str:
    """OBX-3 as a short, safe text for the unmapped counts: ``label (code)`` from the
    identifier and text (or the alternate ones), never more than 60 characters."""
    c = [x.strip() for x in components] + [""] * 5
    code = c[0] or c[3]
    label = c[1] or c[4]
    if label and code and label != code:
        text = f"{label} ({code})"
    else:
        text = label or code or next((x for x in c if x), "(none)")
    return _clip(text, UNMAPPED_CODE_CHARS)


# ------------------------------------------------------------------------- alarms


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
    if msg.value(seg, 11).strip().upper() in _IGNORED_STATUS:
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
    if msg.value(g.seg, 11).strip().upper() in _IGNORED_STATUS:
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


def resolve_unit(components: list[str]) -> str | None:
    """OBX-6 components -> vitalmon's unit name, "" for no unit, None when unknown."""
    names = [c.strip() for c in components if c.strip()]
    if not names:
        return ""
    for n in names:
        unit = UNIT_NAMES.get(n.lower())
        if unit is not None:
            return unit
    for n in names:
        code = _code(n)
        if code is not None and code in UNIT_CODES:
            return UNIT_CODES[code]
    return None


def _code(text: str) -> int | None:
    """A numeric MDC code, or a Philips MDIL ``PPPP-HHHH`` code, as partition*65536+term."""
    if text.isascii() and text.isdigit() and len(text) <= 9:  # not "¹": int() refuses it
        return int(text)
    m = _MDIL.fullmatch(text)
    if m is None:
        return None
    return int(m.group(1), 16) * 65536 + int(m.group(2), 16)


def _convert(vital: str, number: float, unit_components: list[str]) -> float | None:
    unit = resolve_unit(unit_components)
    if unit is None:
        return None
    if unit == "":
        return number
    conv = _UNITS.get(vital, {}).get(unit)
    if conv is None:
        return None
    scale, offset = conv
    return number * scale + offset


def _label(components: list[str]) -> str:
    names = [c.strip() for c in components if c.strip()]
    text = [n for n in names if not n.isdigit() and _MDIL.fullmatch(n) is None]
    return (text or names or ["?"])[0]


# ------------------------------------------------------------------------- values


def _value_text(msg: _Msg, seg: _Seg) -> str:
    """OBX-5 as a number's text: NM as is; SN ``[comparator]^num`` when it is exact."""
    parts = msg.comps(seg, 5)
    if len(parts) >= 2 and parts[0].strip() in ("", "=") and not "".join(parts[2:]).strip():
        return parts[1].strip()
    return "^".join(parts).strip()


def _number(raw: str) -> float | None:
    """An HL7 NM: optional sign, digits, optional decimal point (no exponent, no NaN)."""
    if _NUMBER.fullmatch(raw) is None:
        return None
    value = float(raw)
    return value if math.isfinite(value) else None


def parse_dtm(raw: str, tz: tzinfo | None) -> float | None:
    """HL7 DTM/TS ``YYYYMMDDHHMM[SS[.S+]][+/-ZZZZ]`` (a TS precision component after
    ``^`` is ignored) -> epoch seconds; no offset: in ``tz`` (None: local). None when it
    is not one (a date alone included)."""
    m = _DTM.fullmatch(raw.split("^", 1)[0].strip())
    if m is None:
        return None
    y, mo, d, h, mi = (int(m.group(i)) for i in range(1, 6))
    s = int(m.group(6) or 0)
    us = int((m.group(7) or "0").ljust(6, "0"))
    try:
        dt = datetime(y, mo, d, h, mi, s, us)
        if m.group(8):
            oh, om = int(m.group(9)), int(m.group(10))
            if oh > 14 or om > 59:
                return None
            offset = timedelta(hours=oh, minutes=om)
            dt = dt.replace(tzinfo=timezone(offset if m.group(8) == "+" else -offset))
        elif tz is not None:
            dt = dt.replace(tzinfo=tz)
        return dt.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _first_time(candidates: Iterable[str], tz: tzinfo | None) -> float | None:
    for raw in candidates:
        if raw.strip():
            ts = parse_dtm(raw, tz)
            if ts is not None:
                return ts
    return None


# -------------------------------------------------------------------------- ACK


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


# ------------------------------------------------------------------------ helpers


def _decode(frame: bytes) -> tuple[str, str]:
    try:
        return frame.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return frame.decode("latin-1"), "latin-1"  # ISO 8859-1 (Philips 8859/1)


def _split(text: str, encoding: str) -> _Msg | None:
    """Text -> segments with CR, LF or CRLF ends, parsed by python-hl7 (separators and
    escape character from MSH-1 and MSH-2); None: no MSH."""
    text = text.lstrip("\ufeff \t\r\n")
    if not text.startswith("MSH") or len(text) < 8:
        return None
    lines = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s.strip()]
    try:
        parsed = hl7.parse("\r".join(lines))
    except (hl7.ParseException, IndexError, ValueError):
        return None
    if len(str(parsed.separators)) < 5:
        return None
    segments = list(parsed)
    if not segments or _Msg.name(segments[0]) != "MSH" or len(segments[0]) < 3:
        return None
    standard = str(segments[0][1]) == "|" and str(segments[0][2]) == "^~\\&"
    return _Msg(parsed, segments, standard, _Unescapes(encoding))


def _first_nonempty(components: list[str]) -> str:
    return next((c.strip() for c in components if c.strip()), "")


def _clean(text: str) -> str:
    """A name fit for an MQTT topic level and a log line."""
    return _UNSAFE.sub("_", text.strip())[:_MAX_NAME].strip()


def _clip(text: str, n: int = 40) -> str:
    return _UNSAFE.sub("_", text)[:n]


def _escape(text: str) -> str:
    """Text -> HL7 text in standard encoding (separators escaped, no segment breaks)."""
    out = text.replace("\\", "\\E\\")
    for ch, esc in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(ch, esc)
    return out.replace("\r", " ").replace("\n", " ")


__all__ = [
    "ALERT_CLASSES",
    "CAUSES",
    "LABELS",
    "MDC_CODES",
    "MDC_NAMES",
    "NO_VALUE_MARKERS",
    "UNIT_CODES",
    "UNIT_NAMES",
    "Ack",
    "AckCode",
    "Hl7Parser",
    "ack",
    "alarm_key",
    "alert_class",
    "parse_dtm",
    "resolve_observation",
    "resolve_unit",
]
