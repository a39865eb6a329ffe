"""Which OBX is which vital, and in which unit: the MDC mnemonic, MDC code, Philips MDIL
code and vendor label tables (OBX-3), the unit tables (OBX-6) and their conversion, the
measurement mode (OBX-17) and the short text an unmapped observation is counted under."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final, TypeVar

from monitor.model import CONTINUOUS, INTERMITTENT
from monitor.sources.codecs import _UNITS
from monitor.sources.devices.hl7.message import _clip, _Msg, _Seg

_T = TypeVar("_T")

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

#: OBX-17 observation method -> measurement mode.
_METHODS: Final = {"APERIODIC": INTERMITTENT, "PERIODIC": CONTINUOUS, "CONTINUOUS": CONTINUOUS}
#: Channels whose readings are intermittent whatever OBX-17 says (a cuff cycle).
_INTERMITTENT_CHANNELS: Final = frozenset({"nibp"})

#: An unmapped observation's text for :attr:`Parsed.unmapped`, at most this long.
UNMAPPED_CODE_CHARS: Final = 60

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

_MDIL = re.compile(r"([0-9A-Fa-f]{4})-([0-9A-Fa-f]{4})")


def resolve_observation(components: list[str]) -> tuple[str, str] | None:
    """OBX-3 components -> (vital, channel), or None when it is not a vital we take."""
    names = [c.strip() for c in components if c.strip()]
    mnemonics = [n.upper() for n in names if n.upper().startswith("MDC_")]
    if mnemonics:
        for m in mnemonics:
            if m in MDC_NAMES:
                return MDC_NAMES[m]
        return None  # an MDC observation, just not a vital
    return _lookup(names, _LABEL_KEYS, _norm_label, MDC_CODES)


def resolve_unit(components: list[str]) -> str | None:
    """OBX-6 components -> vitalmon's unit name, "" for no unit, None when unknown."""
    names = [c.strip() for c in components if c.strip()]
    if not names:
        return ""
    return _lookup(names, UNIT_NAMES, str.lower, UNIT_CODES)


def _lookup(
    names: list[str],
    by_text: Mapping[str, _T],
    key: Callable[[str], str],
    by_code: Mapping[int, _T],
) -> _T | None:
    """The first name found in ``by_text`` (as ``key`` makes it), else the first whose MDC or
    MDIL code is in ``by_code``; None: none of them."""
    for n in names:
        hit = by_text.get(key(n))
        if hit is not None:
            return hit
    for n in names:
        code = _code(n)
        if code is not None and code in by_code:
            return by_code[code]
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
