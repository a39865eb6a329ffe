"""NEWS2, the Royal College of Physicians' National Early Warning Score (2017). Pure: no I/O.

Seven parameters are scored 0-3 from the NEWS2 chart and summed. The chart, as
implemented here (values in vitalmon's units, see :data:`monitor.model.VITALS`)::

    parameter         3       2        1        0          1        2         3
    rr    /min       <=8               9-11     12-20               21-24     >=25
    spo2  % scale 1  <=91     92-93    94-95    >=96
    spo2  % scale 2  <=83     84-85    86-87    88-92
                                                >=93 air   93-94 O2  95-96 O2  >=97 O2
    o2               -        oxygen            air
    sbp   mmHg       <=90     91-100   101-110  111-219                       >=220
    hr    /min       <=40              41-50    51-90      91-110   111-130   >=131
    avpu             -                          A                             C, V, P, U
    temp  °C         <=35.0            35.1-36.0  36.1-38.0  38.1-39.0  >=39.1

SpO2 scale 2 is for patients with confirmed hypercapnic respiratory failure (a
per-patient clinical decision); every other parameter is scored the same on both scales.

**Values between chart rows.** The chart's rows are whole numbers (tenths of a degree
for temperature), but values arrive as floats, possibly averaged. A value is first
rounded *half up* to the chart's resolution (rr, spo2, sbp, hr to a whole number; temp
to 0.1 °C), then looked up. Rounding is decimal, on the value as written
(``repr``), so ``35.05`` is 35.1 even though the nearest binary float is a hair below.
Each cut-off therefore sits half a chart step beyond its row, and the half belongs to
the higher row: RR 8.49 -> 8 -> 3, RR 8.5 -> 9 -> 1; SpO2 91.5 -> 92 -> 2 (scale 1);
SBP 110.5 -> 111 -> 0; temp 35.04 -> 35.0 -> 3, temp 35.05 -> 35.1 -> 1.
Non-finite values are refused (``ValueError``).

**Triggers** (RCP clinical risk -> vitalmon alert priority; the highest that applies wins):

    aggregate >= 7                     high        "emergency response"
    aggregate 5-6                      medium      "urgent response"
    any single parameter scoring 3     low         "urgent ward review"   (RCP: low-medium)
    aggregate 0-4, no 3                no trigger                         (RCP: low)

**Missing parameters.** A score may be partial (some parameters absent or stale). It is
still computed and still triggers on what it has: every missing parameter can only add
(each scores >= 0), so a partial total is a lower bound of the full one and a trigger it
raises would also be raised by the full score. For the same reason SpO2 on scale 2 with
the air/oxygen input missing is scored as if on air (the lower of the two).

Worked example, a patient on scale 2 (confirmed hypercapnic respiratory failure)::

    rr 26 -> 3 (red), spo2 89 on oxygen -> 0 (scale 1 would give 3), o2 -> 2,
    sbp 135 -> 0, hr 96 -> 1, avpu A -> 0, temp 37.2 -> 0
    total 6 -> medium "urgent response" (the red RR alone would be low; medium is higher)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Final, Literal

from monitor.model import Priority

Avpu = Literal["A", "C", "V", "P", "U"]
Scale = Literal[1, 2]

#: The NEWS2 parameters, in chart order (also the order of components and ``missing``).
PARAMETERS: Final[tuple[str, ...]] = ("rr", "spo2", "o2", "sbp", "hr", "avpu", "temp")
AVPU: Final[tuple[str, ...]] = ("A", "C", "V", "P", "U")

#: Trigger messages, by priority.
MESSAGES: Final[dict[Priority, str]] = {
    Priority.LOW: "urgent ward review",
    Priority.MEDIUM: "urgent response",
    Priority.HIGH: "emergency response",
}


# ------------------------------------------------------------------ rounding


@functools.lru_cache(maxsize=4096)  # pure; a bed's values repeat (decimal rounding is slow)
def _chart(value: float, tenths: bool = False) -> int:
    """``value`` rounded half up to the chart's resolution, as an integer.

    Whole units, or tenths when ``tenths`` (36.05 -> 361). Decimal rounding of the
    value's shortest ``repr``, so the result is what a person reading the number would
    get. Raises ``ValueError`` for NaN and infinities.
    """
    if not math.isfinite(value):
        raise ValueError(f"NEWS2 cannot score a non-finite value: {value!r}")
    d = Decimal(repr(float(value)))
    if tenths:
        d *= 10
    return int(d.quantize(Decimal(1), rounding=ROUND_HALF_UP))


# ------------------------------------------------------------ per parameter


def score_rr(value: float) -> int:
    """Respiration rate /min: <=8 -> 3; 9-11 -> 1; 12-20 -> 0; 21-24 -> 2; >=25 -> 3."""
    v = _chart(value)
    if v <= 8:
        return 3
    if v <= 11:
        return 1
    if v <= 20:
        return 0
    if v <= 24:
        return 2
    return 3


def score_spo2(value: float, scale: Scale = 1, o2: bool = False) -> int:
    """SpO2 %, on ``scale`` 1 or 2; ``o2`` (on oxygen) matters only on scale 2 at >= 93.

    Scale 1: <=91 -> 3; 92-93 -> 2; 94-95 -> 1; >=96 -> 0.
    Scale 2: <=83 -> 3; 84-85 -> 2; 86-87 -> 1; 88-92 -> 0; >=93 on air -> 0;
    on oxygen 93-94 -> 1, 95-96 -> 2, >=97 -> 3.
    """
    v = _chart(value)
    if scale == 1:
        if v <= 91:
            return 3
        if v <= 93:
            return 2
        if v <= 95:
            return 1
        return 0
    if scale != 2:
        raise ValueError(f"SpO2 scale must be 1 or 2, not {scale!r}")
    if v <= 83:
        return 3
    if v <= 85:
        return 2
    if v <= 87:
        return 1
    if v <= 92 or not o2:
        return 0
    if v <= 94:
        return 1
    if v <= 96:
        return 2
    return 3


def score_o2(on_oxygen: bool) -> int:
    """Air or oxygen: oxygen -> 2; air -> 0."""
    return 2 if on_oxygen else 0


def score_sbp(value: float) -> int:
    """Systolic BP mmHg: <=90 -> 3; 91-100 -> 2; 101-110 -> 1; 111-219 -> 0; >=220 -> 3."""
    v = _chart(value)
    if v <= 90:
        return 3
    if v <= 100:
        return 2
    if v <= 110:
        return 1
    if v <= 219:
        return 0
    return 3


def score_hr(value: float) -> int:
    """Pulse /min: <=40 -> 3; 41-50 -> 1; 51-90 -> 0; 91-110 -> 1; 111-130 -> 2; >=131 -> 3."""
    v = _chart(value)
    if v <= 40:
        return 3
    if v <= 50:
        return 1
    if v <= 90:
        return 0
    if v <= 110:
        return 1
    if v <= 130:
        return 2
    return 3


def score_avpu(level: str) -> int:
    """ACVPU: A -> 0; C (new confusion), V, P, U -> 3. Any other letter: ``ValueError``."""
    if level not in AVPU:
        raise ValueError(f"ACVPU must be one of {', '.join(AVPU)}, not {level!r}")
    return 0 if level == "A" else 3


def score_temp(value: float) -> int:
    """Temperature °C: <=35.0 -> 3; 35.1-36.0 -> 1; 36.1-38.0 -> 0; 38.1-39.0 -> 1; >=39.1 -> 2."""
    v = _chart(value, tenths=True)
    if v <= 350:
        return 3
    if v <= 360:
        return 1
    if v <= 380:
        return 0
    if v <= 390:
        return 1
    return 2


# ------------------------------------------------------------------ the score


@dataclass(frozen=True, slots=True)
class Inputs:
    """One set of NEWS2 observations; ``None`` means absent. ``o2``: True on oxygen."""

    rr: float | None = None
    spo2: float | None = None
    o2: bool | None = None
    sbp: float | None = None
    hr: float | None = None
    avpu: Avpu | None = None
    temp: float | None = None
    scale: Scale = 1


@dataclass(frozen=True, slots=True)
class Score:
    """A NEWS2 score. ``components`` holds only present parameters, in chart order."""

    total: int
    components: dict[str, int] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    red: tuple[str, ...] = ()  #: parameters scoring 3

    @property
    def partial(self) -> bool:
        """True when some parameter is missing: ``total`` is then a lower bound."""
        return bool(self.missing)

    @property
    def risk(self) -> str:
        """RCP clinical risk: "low", "low-medium", "medium" or "high"."""
        if self.total >= 7:
            return "high"
        if self.total >= 5:
            return "medium"
        if self.red:
            return "low-medium"
        return "low"

    def trigger(self) -> tuple[Priority | None, str]:
        """-> (alert priority, message), or ``(None, "")`` when nothing triggers.

        Aggregate >= 7: high; 5-6: medium; else any parameter scoring 3: low. The
        highest that applies wins. A partial score triggers on what it has.
        """
        if self.total >= 7:
            p = Priority.HIGH
        elif self.total >= 5:
            p = Priority.MEDIUM
        elif self.red:
            p = Priority.LOW
        else:
            return None, ""
        return p, MESSAGES[p]


@functools.lru_cache(maxsize=8192)  # pure; asked for every NEWS2 reading
def sub_score(vital: str, value: float, scale: Scale) -> int | None:
    """The chart's score of one held numeric ``value`` of ``vital`` when it depends on
    nothing else the bed holds (every numeric parameter, SpO2 on scale 1); None for the
    others (o2, avpu, SpO2 on scale 2, which reads o2)."""
    scorer = _ALONE.get(vital)
    if scorer is None or (vital == "spo2" and scale != 1):
        return None
    return scorer(float(value))


def score(inputs: Inputs) -> Score:
    """Score ``inputs``: every present parameter from the chart; absent ones are ``missing``.

    SpO2 on scale 2 with ``o2`` absent is scored as on air (a lower bound, like the
    total of any partial score).
    """
    present: dict[str, int] = {}
    if inputs.rr is not None:
        present["rr"] = score_rr(inputs.rr)
    if inputs.spo2 is not None:
        present["spo2"] = score_spo2(inputs.spo2, inputs.scale, bool(inputs.o2))
    if inputs.o2 is not None:
        present["o2"] = score_o2(inputs.o2)
    if inputs.sbp is not None:
        present["sbp"] = score_sbp(inputs.sbp)
    if inputs.hr is not None:
        present["hr"] = score_hr(inputs.hr)
    if inputs.avpu is not None:
        present["avpu"] = score_avpu(inputs.avpu)
    if inputs.temp is not None:
        present["temp"] = score_temp(inputs.temp)
    components = {p: present[p] for p in PARAMETERS if p in present}
    return Score(
        total=sum(components.values()),
        components=components,
        missing=tuple(p for p in PARAMETERS if p not in components),
        red=tuple(p for p, s in components.items() if s == 3),
    )


_ALONE: Final = {
    "rr": score_rr,
    "spo2": score_spo2,
    "sbp": score_sbp,
    "hr": score_hr,
    "temp": score_temp,
}
