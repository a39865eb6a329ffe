"""Simulated patients: seeded, deterministic vital signs as a function of time. Pure: no I/O.

``Patient(seed, scenario).sample(t)`` gives the vitals ``t`` seconds after the start of
the simulation. The value depends only on ``(seed, scenario, t)`` -- not on which other
times were sampled before or in what order -- so a test, a publisher and a later replay
all see the same patient.

A patient is a baseline drawn from normal adult ranges, a slow drift (two sinusoids per
vital with periods of 10 min to 1.5 h) and small per-second noise (Gaussian, seeded per
hour-long block of seconds, interpolated linearly between whole seconds).

Scenarios:

* ``normal`` stays inside a safe band, so it never crosses the default alarm limits
  (SpO2 < 90, HR < 50 or > 120, RR < 8 or > 24, SBP < 90 or > 180, MAP < 65,
  Temp < 35.5 or > 38);
* ``desaturation`` repeats an episode: normal for :data:`DESAT_LEAD_S`, SpO2 falls at
  :data:`DESAT_FALL_PER_S` to a nadir of 80-82 %, stays there :data:`DESAT_HOLD_S`
  (HR rises 15-25 /min and RR 3-5 /min as the body compensates), recovers to baseline
  over :data:`DESAT_RECOVER_S`, stays normal :data:`DESAT_REST_S`, and starts again.
  Only SpO2 alarms: HR and RR stay inside the safe band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

#: Vitals a simulated patient has, in payload order.
VITAL_KEYS: Final = ("hr", "spo2", "rr", "sbp", "dbp", "map", "temp")
#: Vitals published as integers (temp has one decimal).
INTEGER_VITALS: Final = frozenset({"hr", "spo2", "rr", "sbp", "dbp", "map"})

SCENARIOS: Final = ("normal", "desaturation")

#: Normal adult ranges the baselines are drawn from.
BASELINE_RANGES: Final[dict[str, tuple[float, float]]] = {
    "hr": (60.0, 95.0),
    "spo2": (95.0, 99.0),
    "rr": (12.0, 18.0),
    "sbp": (105.0, 140.0),
    "dbp": (60.0, 85.0),
    "temp": (36.4, 37.3),
}

#: Every value is kept inside this band (before rounding), strictly inside the default
#: alarm limits: a ``normal`` patient never alarms, a ``desaturating`` one only on SpO2.
SAFE_BAND: Final[dict[str, tuple[float, float]]] = {
    "hr": (54.0, 115.0),
    "spo2": (91.0, 100.0),
    "rr": (9.0, 22.0),
    "sbp": (96.0, 170.0),
    "dbp": (50.0, 100.0),
    "map": (68.0, 125.0),
    "temp": (35.8, 37.8),
}

#: Slow drift: peak amplitude per vital (two sinusoids, each up to half of it).
DRIFT: Final[dict[str, float]] = {
    "hr": 5.0,
    "spo2": 1.0,
    "rr": 1.5,
    "sbp": 5.0,
    "dbp": 3.0,
    "temp": 0.15,
}
#: Per-second noise, standard deviation.
NOISE_SD: Final[dict[str, float]] = {
    "hr": 1.2,
    "spo2": 0.4,
    "rr": 0.6,
    "sbp": 1.5,
    "dbp": 1.0,
    "temp": 0.03,
}
_NOISY: Final = ("hr", "spo2", "rr", "sbp", "dbp", "temp")
_NOISE_BLOCK_S: Final = 3600

# ------------------------------------------------------------ desaturation episode

#: Normal seconds at the start of each episode.
DESAT_LEAD_S: Final = 10.0
#: Fall of SpO2 per second, from baseline to the nadir.
DESAT_FALL_PER_S: Final = 1.0
#: Nadir range, drawn per patient.
DESAT_NADIR: Final = (80.0, 82.0)
#: Seconds at the nadir.
DESAT_HOLD_S: Final = 60.0
#: Seconds from the nadir back to baseline.
DESAT_RECOVER_S: Final = 10.0
#: Normal seconds after recovery, before the next episode.
DESAT_REST_S: Final = 60.0
#: Compensation at the nadir: HR and RR rise (drawn per patient), capped so that the
#: peak mean stays below these.
DESAT_HR_RISE: Final = (15.0, 25.0)
DESAT_RR_RISE: Final = (3.0, 5.0)
DESAT_HR_PEAK_MAX: Final = 110.0
DESAT_RR_PEAK_MAX: Final = 21.0


@dataclass(frozen=True, slots=True)
class Baseline:
    hr: float
    spo2: float
    rr: float
    sbp: float
    dbp: float
    temp: float

    def get(self, vital: str) -> float:
        return float(getattr(self, vital))


@dataclass(frozen=True, slots=True)
class _Drift:
    amplitude: tuple[float, float]
    period_s: tuple[float, float]
    phase: tuple[float, float]

    def at(self, t: float) -> float:
        return sum(
            a * math.sin(2 * math.pi * t / p + ph)
            for a, p, ph in zip(self.amplitude, self.period_s, self.phase, strict=True)
        )


def mean_arterial(sbp: float, dbp: float) -> float:
    """MAP estimated from systolic and diastolic pressure: (SBP + 2 DBP) / 3."""
    return (sbp + 2 * dbp) / 3


class Patient:
    """One simulated patient. ``seed`` is a non-negative integer."""

    def __init__(self, seed: int, scenario: str = "normal") -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r} (known: {', '.join(SCENARIOS)})")
        if seed < 0:
            raise ValueError("seed must be >= 0")
        self.seed = seed
        self.scenario = scenario
        rng = np.random.default_rng([seed, 1])
        r = BASELINE_RANGES

        def draw(vital: str) -> float:
            lo, hi = r[vital]
            return float(rng.uniform(lo, hi))

        hr = draw("hr")
        rr = draw("rr")
        if scenario == "desaturation":
            # Leave room for the compensation to stay inside the safe band.
            hr = min(hr, DESAT_HR_PEAK_MAX - DESAT_HR_RISE[0] - DRIFT["hr"])
            rr = min(rr, DESAT_RR_PEAK_MAX - DESAT_RR_RISE[0] - DRIFT["rr"])
        sbp = draw("sbp")
        pulse_pressure = float(rng.uniform(35.0, 55.0))
        dbp = min(max(sbp - pulse_pressure, r["dbp"][0]), r["dbp"][1])
        self.baseline = Baseline(
            hr=hr, spo2=draw("spo2"), rr=rr, sbp=sbp, dbp=dbp, temp=draw("temp")
        )
        self._drift: dict[str, _Drift] = {}
        bp_phase: tuple[float, float] | None = None
        bp_period: tuple[float, float] | None = None
        for vital in _NOISY:
            amp = DRIFT[vital]
            a = (float(rng.uniform(0.2, 0.5)) * amp, float(rng.uniform(0.2, 0.5)) * amp)
            period = (float(rng.uniform(600, 1800)), float(rng.uniform(1800, 5400)))
            phase = (float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 2 * math.pi)))
            if vital in ("sbp", "dbp"):  # systolic and diastolic drift together
                bp_phase = bp_phase or phase
                bp_period = bp_period or period
                phase, period = bp_phase, bp_period
            self._drift[vital] = _Drift(a, period, phase)
        # Desaturation episode, drawn even for `normal` so both scenarios of a seed share
        # the same baseline.
        self.nadir = float(rng.uniform(*DESAT_NADIR))
        hr_rise = float(rng.uniform(*DESAT_HR_RISE))
        rr_rise = float(rng.uniform(*DESAT_RR_RISE))
        self.hr_rise = min(hr_rise, DESAT_HR_PEAK_MAX - DRIFT["hr"] - hr)
        self.rr_rise = min(rr_rise, DESAT_RR_PEAK_MAX - DRIFT["rr"] - rr)
        self.fall_s = max(self.baseline.spo2 - self.nadir, 0.0) / DESAT_FALL_PER_S
        self.episode_s = DESAT_LEAD_S + self.fall_s + DESAT_HOLD_S + DESAT_RECOVER_S + DESAT_REST_S
        self._noise_cache: dict[int, npt.NDArray[np.float64]] = {}

    def __repr__(self) -> str:
        return f"Patient(seed={self.seed}, scenario={self.scenario!r})"

    # ------------------------------------------------------------------ public

    def severity(self, t: float) -> float:
        """How far into the desaturation the patient is at ``t``: 0 normal .. 1 nadir."""
        if self.scenario != "desaturation":
            return 0.0
        u = t % self.episode_s
        u -= DESAT_LEAD_S
        if u < 0:
            return 0.0
        if u < self.fall_s:
            return u / self.fall_s
        u -= self.fall_s
        if u < DESAT_HOLD_S:
            return 1.0
        u -= DESAT_HOLD_S
        if u < DESAT_RECOVER_S:
            return 1.0 - u / DESAT_RECOVER_S
        return 0.0

    def sample(self, t: float) -> dict[str, float]:
        """Vitals ``t`` seconds after the start, rounded as a monitor reports them.

        Integer vitals come back as whole floats (``72.0``); temp has one decimal.
        """
        if t < 0 or not math.isfinite(t):
            raise ValueError("t must be a finite number of seconds >= 0")
        noise = self._noise(t)
        raw: dict[str, float] = {}
        for i, vital in enumerate(_NOISY):
            raw[vital] = (
                self.baseline.get(vital)
                + self._drift[vital].at(t)
                + NOISE_SD[vital] * float(noise[i])
            )
        s = self.severity(t)
        if s > 0:
            raw["spo2"] = (1 - s) * raw["spo2"] + s * (self.nadir + NOISE_SD["spo2"] * noise[1])
            raw["hr"] += s * self.hr_rise
            raw["rr"] += s * self.rr_rise
        out: dict[str, float] = {}
        for vital in _NOISY:
            lo, hi = SAFE_BAND[vital]
            if vital == "spo2" and self.scenario == "desaturation":
                lo = 70.0
            out[vital] = min(max(raw[vital], lo), hi)
        out["dbp"] = min(out["dbp"], out["sbp"] - 20)
        lo, hi = SAFE_BAND["map"]
        out["map"] = min(max(mean_arterial(out["sbp"], out["dbp"]), lo), hi)
        return {
            k: float(round(out[k])) if k in INTEGER_VITALS else round(out[k], 1) for k in VITAL_KEYS
        }

    # ---------------------------------------------------------------- private

    def _noise(self, t: float) -> npt.NDArray[np.float64]:
        """Standard normal noise per vital at ``t``: seeded per second, interpolated."""
        k = math.floor(t)
        frac = t - k
        a = self._noise_at(k)
        if frac == 0:
            return a
        return a * (1 - frac) + self._noise_at(k + 1) * frac

    def _noise_at(self, k: int) -> npt.NDArray[np.float64]:
        block, i = divmod(k, _NOISE_BLOCK_S)
        arr = self._noise_cache.get(block)
        if arr is None:
            rng = np.random.default_rng([self.seed, 2, block])
            arr = rng.standard_normal((_NOISE_BLOCK_S, len(_NOISY)))
            if len(self._noise_cache) >= 4:
                self._noise_cache.pop(next(iter(self._noise_cache)))
            self._noise_cache[block] = arr
        row: npt.NDArray[np.float64] = arr[i]
        return row


def bed_seed(seed: int, bed_index: int) -> int:
    """Each bed's patient seed, derived from the run's seed and the bed's position."""
    state = np.random.SeedSequence([seed, bed_index]).generate_state(1, np.uint32)
    return int(state[0])


def ward(seed: int, scenarios: list[str]) -> list[tuple[str, Patient]]:
    """Beds ``"1"``..``"N"``, one per scenario given, each with its own derived seed."""
    return [
        (str(i + 1), Patient(bed_seed(seed, i), scenario)) for i, scenario in enumerate(scenarios)
    ]


def reading(sample: dict[str, float], ts: float) -> dict[str, float | int]:
    """A sample as a vitalmon reading object: ``{"ts": ..., "hr": 72, ..., "temp": 36.9}``."""
    out: dict[str, float | int] = {"ts": round(ts, 3)}
    for k in VITAL_KEYS:
        if k in sample:
            v = sample[k]
            out[k] = int(v) if k in INTEGER_VITALS else v
    return out
