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

from monitor.sources.devices.hl7.ack import Ack, AckCode, ack
from monitor.sources.devices.hl7.alarms import (
    ALERT_CLASSES,
    ALERT_SYSTEM,
    PCD04_PRIORITIES,
    alarm_key,
    alert_class,
)
from monitor.sources.devices.hl7.codes import (
    LABELS,
    MDC_CODES,
    MDC_NAMES,
    UNIT_CODES,
    UNIT_NAMES,
    UNMAPPED_CODE_CHARS,
    resolve_observation,
    resolve_unit,
)
from monitor.sources.devices.hl7.parser import CAUSES, Hl7Parser
from monitor.sources.devices.hl7.values import NO_VALUE_MARKERS, parse_dtm

__all__ = [
    "ALERT_CLASSES",
    "ALERT_SYSTEM",
    "CAUSES",
    "LABELS",
    "MDC_CODES",
    "MDC_NAMES",
    "NO_VALUE_MARKERS",
    "PCD04_PRIORITIES",
    "UNIT_CODES",
    "UNIT_NAMES",
    "UNMAPPED_CODE_CHARS",
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
