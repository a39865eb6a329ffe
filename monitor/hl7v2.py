"""HL7 v2 and MLLP as both directions use them: the MLLP frame, escaping text for a field
in standard encoding, an HL7 timestamp, and each vital's IEEE 11073 (MDC) code and unit.

A utility of no pipeline stage (it imports none): the HL7 sources
(:mod:`monitor.sources.devices.hl7`, :mod:`monitor.sources.hl7mllp`) take messages in
with it, the HL7 alert receiver (:mod:`monitor.sinks.delivery.hl7mllp`) sends with it.

* :func:`frame`: ``0x0B <message> 0x1C 0x0D`` (:data:`MLLP_START`, :data:`MLLP_END`).
* :func:`escape`: text -> a field's text in standard encoding (``|^~\\&``): the separators
  and the escape character escaped (``\\F\\ \\S\\ \\R\\ \\T\\ \\E\\``), line breaks made
  spaces (a CR would end the segment).
* :func:`hl7_time`: epoch seconds -> ``YYYYMMDDHHMMSS.fff+0000`` (DTM, UTC).
* :data:`MDC_VITALS`: vital -> (MDC code, mnemonic, unit code, unit mnemonic), the one
  code vitalmon *sends* for a vital; the parser (:mod:`monitor.sources.devices.hl7.codes`)
  takes these and many more (``tests/test_delivery_pcd04.py`` checks that each code here
  reads back as its vital and unit).
"""

from __future__ import annotations

import time
from typing import Final

MLLP_START: Final = b"\x0b"
MLLP_END: Final = b"\x1c\x0d"


def frame(payload: bytes) -> bytes:
    """An HL7 message in MLLP framing."""
    return MLLP_START + payload + MLLP_END


def escape(text: str) -> str:
    """Text -> HL7 text in standard encoding (separators escaped, no segment breaks)."""
    out = text.replace("\\", "\\E\\")
    for ch, esc in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(ch, esc)
    return out.replace("\r", " ").replace("\n", " ")


def hl7_time(ts: float) -> str:
    """Epoch seconds -> an HL7 DTM in UTC with milliseconds: ``20261128104007.123+0000``."""
    ms = round(ts * 1000)
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}+0000"


#: vital -> (MDC code, MDC mnemonic, unit code, unit mnemonic) as vitalmon sends them.
MDC_VITALS: Final[dict[str, tuple[int, str, int, str]]] = {
    "spo2": (150456, "MDC_PULS_OXIM_SAT_O2", 262688, "MDC_DIM_PERCENT"),
    "hr": (147842, "MDC_ECG_HEART_RATE", 264864, "MDC_DIM_BEAT_PER_MIN"),
    "rr": (151562, "MDC_RESP_RATE", 264928, "MDC_DIM_RESP_PER_MIN"),
    "sbp": (150021, "MDC_PRESS_BLD_NONINV_SYS", 266016, "MDC_DIM_MMHG"),
    "dbp": (150022, "MDC_PRESS_BLD_NONINV_DIA", 266016, "MDC_DIM_MMHG"),
    "map": (150023, "MDC_PRESS_BLD_NONINV_MEAN", 266016, "MDC_DIM_MMHG"),
    "temp": (150344, "MDC_TEMP", 268192, "MDC_DIM_DEGC"),
    "etco2": (151708, "MDC_AWAY_CO2_ET", 266016, "MDC_DIM_MMHG"),
}
