"""Simulated patients: seeded, deterministic vital signs as a function of time. Pure: no I/O.

``Patient(seed, scenario).sample(t)`` gives what the bedside monitor reports ``t``
seconds (event time) after the start of the simulation; ``obs(t)`` the nurse's NEWS2
observations (``o2``: on oxygen, ``avpu``: ACVPU letter). The value depends only on
``(seed, scenario, t)`` -- not on which other times were sampled before, in what order,
at what speed, or how many other beds are simulated -- so a test, a publisher and a
later replay all see the same patient. :func:`ward` derives each bed's seed from the
run's seed and the bed's position (:func:`bed_seed`).

**The model.** A value is ``baseline + drift + scenario + coupling + noise``, clamped to
the scenario's band, then rounded as a monitor reports it:

* *baseline*: drawn per patient (stream ``[seed, 1]``) from adult resting ranges
  (truncated normal distributions, :data:`BASELINE_DIST`) that sit well inside NEWS2's
  0-score bands; the same seed has the same baseline in every scenario;
* *drift*: one Ornstein-Uhlenbeck process per vital (:data:`DRIFT`: stationary standard
  deviation and time constant), on a 10 s grid interpolated linearly, generated hour by
  hour (stream ``[seed, 4, hour]``) and chained from hour to hour; diastolic pressure
  drifts with systolic; HR's drift is proportional to the rate (relative to baseline);
* *scenario drivers*: fever (°C), hypoxaemia (SpO2 points lost), blood loss (fraction
  of the blood volume), vasodilation (SBP points lost) and direct HR/RR effects;
* *coupling* (:data:`HR_PER_DEG` ...): fever raises HR by 10 /min and RR by 2 /min per
  °C; hypoxaemia raises HR by 1 /min and RR by 0.3 /min per SpO2 point lost; a falling
  SBP raises HR by 0.3 /min per mmHg (baroreflex); blood loss raises HR by 10 /min per
  10 % of the blood volume and, beyond 15 % (compensated), lowers SBP by 2 mmHg per %;
* *noise*: white measurement noise per reading (:data:`NOISE_SD`, stream
  ``[seed, 2, hour]``, interpolated linearly between whole seconds).

MAP is ``(SBP + 2 DBP) / 3``. ``normal`` values are clamped to :data:`NORMAL_BAND`,
inside the default alarm limits (SpO2 < 90, HR < 50 or > 120, RR < 8 or > 24, SBP < 90
or > 180, MAP < 65, Temp < 35.5 or > 38) *and* where no NEWS2 parameter scores more than
1 (temperature 0): a normal bed's NEWS2 is at most 4 and never has a red (3) parameter,
so it never raises a NEWS2 alert; with the baselines inside the 0 bands it is 0-2 nearly
always.

**Scenarios** (:data:`SCENARIOS`; times are event time from the start):

* ``normal``: as above; on air, alert (``o2`` false, ``avpu`` "A").
* ``desaturation`` repeats an episode: normal for :data:`DESAT_LEAD_S`, SpO2 falls at
  :data:`DESAT_FALL_PER_S` to a nadir of 80-82 %, stays there :data:`DESAT_HOLD_S`
  (HR rises 15-25 /min and RR 3-5 /min as the body compensates), recovers to baseline
  over :data:`DESAT_RECOVER_S`, stays normal :data:`DESAT_REST_S`, and starts again.
  Only SpO2 alarms: HR and RR stay inside the alarm limits (:data:`SAFE_BAND`).
* ``sepsis``: normal until :data:`SEPSIS_ONSET_S` (30 min), then hours-long
  deterioration: progress ``p = sqrt(x)``, ``x`` going 0 -> 1 over
  :data:`SEPSIS_COURSE_S` (4 h; full severity at 4 h 30 min, then a plateau). At full
  severity: fever +2.2-2.8 °C (38.8-39.7 °C), SBP down to 80-90 mmHg (vasodilation),
  SpO2 down to 91-93 %, RR +8-11 /min (acidosis), HR +8-14 /min, plus the coupling:
  HR ends 110-145, RR 28-34. Oxygen is started (``o2`` true) once the SpO2 trend is
  below 94 % (1 h 25 to 3 h 15), new confusion (``avpu`` "C") at ``p`` >= 0.85
  (3 h 25 min), responds to voice only ("V") from 5 h 30 min. NEWS2, complete (all seven
  parameters at that instant), timeline over 120 seeded patients: 0-2 before onset;
  >= 5 first at 45 min-1 h 40 (median 1 h 10) and for good by 2 h 20 at the latest
  (median 1 h 30); >= 7 first at 1 h-2 h 10 (median 1 h 35) and for good by 3 h at the
  latest (median 1 h 50); 12-19 from 4 h 30 on. (The tests check: < 5 before onset,
  >= 5 from 2 h 30, >= 7 from 3 h, >= 12 from 4 h 30, the median >= 5 at 2 h.) What a
  daemon scores also depends on when temperature and o2/avpu were last taken (see
  :mod:`simulators.mqtt`).
* ``bradycardia``: from :data:`BRADY_ONSET_S` (5 min) HR falls over
  :data:`BRADY_FALL_S` (10 min) to 35-44 /min and stays there; SBP drops 0.3 mmHg per
  beat lost (low cardiac output).
* ``hypotension``: haemorrhage from :data:`HYPO_ONSET_S` (5 min): blood loss grows over
  :data:`HYPO_FALL_S` (20 min) to what takes SBP to 72-80 mmHg (MAP ~52-68) and stays;
  HR rises with the loss (100-130 /min), RR a little.
* ``copd``: chronic hypoxaemia with confirmed hypercapnic respiratory failure: SpO2
  around 89-91 % (mostly 88-92 %, the BTS target; compensated: no coupling), RR +1 /min,
  on controlled oxygen (``o2`` true). Meant for beds on NEWS2 SpO2 scale 2 (vitalmon's
  ``copd`` profile), where it scores 2-4; on scale 1 its SpO2 alone scores 2-3.
* ``artefacts``: a ``normal`` patient whose monitor shows artefacts: motion spikes
  (single readings, never two in a row, about one every :data:`SPIKE_EVERY_S` seconds:
  HR 140-190 or SpO2 70-82) and probe-off SpO2 dropouts: the probe is off for
  :data:`PROBE_OFF_S` every :data:`PROBE_CYCLE_S`, first at :data:`PROBE_FIRST_S`;
  meanwhile ``sample`` has no ``spo2`` and :meth:`Patient.sensor_off` is true (the MQTT
  simulator sends ``"status": "sensor_off"``).
* ``dropout``: a ``normal`` patient whose devices go silent (network loss):
  :meth:`Patient.silent` is true for :data:`DROPOUT_S` every :data:`DROPOUT_CYCLE_S`,
  first at :data:`DROPOUT_FIRST_S`, for every device group.
* ``unplug``: a ``normal`` patient whose bedside monitor (continuous vitals and NIBP:
  groups ``mon`` and ``nibp``) is unplugged once, at :data:`UNPLUG_AT_S` for
  :data:`UNPLUG_S`, then plugged in again (:meth:`Patient.unplug_window`).

``simulators serial`` offers every scenario here as well, through :meth:`Patient.sample`:
artefact spikes show, a probe-off SpO2 is sent as missing (dashes; the sensor-off bits
are its own ``sensor_off`` scenario's), but ``dropout`` and ``unplug`` are normal
patients there. ``unplug`` unplugs the pty itself on this schedule (wall seconds:
:data:`UNPLUG_AT_S` and :data:`UNPLUG_S` divided by ``--speed``) unless
``--unplug-after``/``--replug-after`` say otherwise.

Device groups (:data:`GROUPS`): what one device reports -- ``mon`` (HR, SpO2, RR,
continuous), ``nibp`` (SBP, DBP, MAP), ``thermo`` (temperature), ``obs`` (the nurse's
``o2`` and ``avpu``).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

#: Vitals a simulated patient has, in payload order.
VITAL_KEYS: Final = ("hr", "spo2", "rr", "sbp", "dbp", "map", "temp")
#: Vitals published as integers (temp has one decimal).
INTEGER_VITALS: Final = frozenset({"hr", "spo2", "rr", "sbp", "dbp", "map"})
#: NEWS2 observations that are not measured by a monitor.
OBS_KEYS: Final = ("o2", "avpu")

#: What each device (group) reports.
GROUPS: Final[dict[str, tuple[str, ...]]] = {
    "mon": ("hr", "spo2", "rr"),
    "nibp": ("sbp", "dbp", "map"),
    "thermo": ("temp",),
    "obs": OBS_KEYS,
}

SCENARIOS: Final = (
    "normal",
    "desaturation",
    "sepsis",
    "bradycardia",
    "hypotension",
    "copd",
    "artefacts",
    "dropout",
    "unplug",
)

Avpu = Literal["A", "C", "V", "P", "U"]

#: Adult resting values the baselines are drawn from: (mean, sd, low, high) of a
#: truncated normal distribution. Each lies inside NEWS2's 0-score band with a margin.
BASELINE_DIST: Final[dict[str, tuple[float, float, float, float]]] = {
    "hr": (74.0, 9.0, 58.0, 88.0),
    "spo2": (97.5, 1.0, 96.5, 99.5),
    "rr": (15.0, 1.5, 13.0, 18.0),
    "sbp": (126.0, 10.0, 115.0, 150.0),
    "temp": (36.8, 0.2, 36.4, 37.2),
}
#: Pulse pressure (SBP - DBP) and the DBP range it is kept in.
PULSE_PRESSURE_DIST: Final = (45.0, 7.0, 35.0, 60.0)
DBP_RANGE: Final = (60.0, 90.0)
#: Range of each baseline, for reference and tests.
BASELINE_RANGES: Final[dict[str, tuple[float, float]]] = {
    **{k: (lo, hi) for k, (_m, _s, lo, hi) in BASELINE_DIST.items()},
    "dbp": DBP_RANGE,
}

#: ``normal`` (and artefacts/dropout/unplug) values are kept in this band: strictly
#: inside the default alarm limits, and where no NEWS2 parameter scores more than 1
#: (temperature: 0).
NORMAL_BAND: Final[dict[str, tuple[float, float]]] = {
    "hr": (52.0, 108.0),
    "spo2": (94.0, 100.0),
    "rr": (10.0, 20.0),
    "sbp": (102.0, 170.0),
    "dbp": (50.0, 100.0),
    "map": (68.0, 125.0),
    "temp": (36.1, 37.9),
}
#: ``desaturation`` values are kept in this band (SpO2 may fall to 70): strictly inside
#: the default alarm limits, so only SpO2 alarms.
SAFE_BAND: Final[dict[str, tuple[float, float]]] = {
    "hr": (54.0, 115.0),
    "spo2": (70.0, 100.0),
    "rr": (9.0, 22.0),
    "sbp": (96.0, 170.0),
    "dbp": (50.0, 100.0),
    "map": (68.0, 125.0),
    "temp": (35.8, 37.8),
}
#: The sick scenarios' values are kept physiologically possible.
PHYSIO_BAND: Final[dict[str, tuple[float, float]]] = {
    "hr": (25.0, 200.0),
    "spo2": (60.0, 100.0),
    "rr": (4.0, 50.0),
    "sbp": (50.0, 240.0),
    "dbp": (25.0, 140.0),
    "map": (35.0, 170.0),
    "temp": (34.0, 41.5),
}

#: Slow drift: Ornstein-Uhlenbeck stationary standard deviation and time constant (s).
DRIFT: Final[dict[str, tuple[float, float]]] = {
    "hr": (3.0, 1200.0),
    "spo2": (0.5, 900.0),
    "rr": (0.8, 900.0),
    "sbp": (4.0, 1800.0),
    "temp": (0.1, 3600.0),
}
#: Diastolic pressure drifts with systolic, by this factor.
DBP_DRIFT_FACTOR: Final = 0.6
_DRIFTING: Final = ("hr", "spo2", "rr", "sbp", "temp")
_DRIFT_STEP_S: Final = 10
_DRIFT_STEPS: Final = 360  # one hour per block

#: Measurement noise per reading, standard deviation.
NOISE_SD: Final[dict[str, float]] = {
    "hr": 1.0,
    "spo2": 0.4,
    "rr": 0.6,
    "sbp": 3.0,
    "dbp": 2.0,
    "temp": 0.05,
}
_NOISY: Final = ("hr", "spo2", "rr", "sbp", "dbp", "temp")
_BLOCK_S: Final = 3600

# ------------------------------------------------------------------- coupling

#: Fever: HR and RR per °C above the patient's baseline temperature.
HR_PER_DEG: Final = 10.0
RR_PER_DEG: Final = 2.0
#: Hypoxaemia: HR and RR per SpO2 point lost.
HR_PER_SPO2: Final = 1.0
RR_PER_SPO2: Final = 0.3
#: Baroreflex: HR per mmHg of SBP lost.
HR_PER_MMHG: Final = 0.3
#: Blood loss (fraction of the blood volume): HR per unit; SBP per unit beyond the
#: compensated fraction; DBP falls by this share of the SBP fall; RR per unit.
HR_PER_LOSS: Final = 100.0
SBP_PER_LOSS: Final = 200.0
COMPENSATED_LOSS: Final = 0.15
DBP_SHARE: Final = 0.5
RR_PER_LOSS: Final = 15.0

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
#: Room left for the drift when capping the compensation.
_DESAT_HR_MARGIN: Final = 5.0
_DESAT_RR_MARGIN: Final = 1.5

# ------------------------------------------------------------------------ sepsis

SEPSIS_ONSET_S: Final = 1800.0
SEPSIS_COURSE_S: Final = 4 * 3600.0
#: Progress is ``x ** SEPSIS_SHAPE`` (x: fraction of the course): faster at first.
SEPSIS_SHAPE: Final = 0.5
#: Per patient, at full severity: fever (°C above baseline), SBP and SpO2 reached,
#: direct RR and HR rises.
SEPSIS_FEVER: Final = (2.2, 2.8)
SEPSIS_SBP: Final = (80.0, 90.0)
SEPSIS_SPO2: Final = (91.0, 93.0)
SEPSIS_RR: Final = (8.0, 11.0)
SEPSIS_HR: Final = (8.0, 14.0)
#: Oxygen is started once the SpO2 trend falls below this.
SEPSIS_O2_BELOW: Final = 94.0
#: ACVPU "C" (new confusion) from this progress on; "V" from this long after full severity.
SEPSIS_CONFUSED_AT: Final = 0.85
SEPSIS_VOICE_AFTER_S: Final = 3600.0

# ------------------------------------------------------------ bradycardia, hypotension

BRADY_ONSET_S: Final = 300.0
BRADY_FALL_S: Final = 600.0
BRADY_HR: Final = (35.0, 44.0)
BRADY_SBP_PER_BEAT: Final = 0.3

HYPO_ONSET_S: Final = 300.0
HYPO_FALL_S: Final = 1200.0
HYPO_SBP: Final = (72.0, 80.0)

# --------------------------------------------------------------------------- copd

COPD_SPO2: Final = (89.0, 91.0)
COPD_RR_RISE: Final = 1.0

# -------------------------------------------------------------- artefacts, silence

#: Motion spikes: about one every this many seconds (never two in a row).
SPIKE_EVERY_S: Final = 120.0
SPIKE_HR: Final = (140.0, 190.0)
SPIKE_SPO2: Final = (70.0, 82.0)
#: Probe-off dropouts of SpO2.
PROBE_FIRST_S: Final = 240.0
PROBE_CYCLE_S: Final = 600.0
PROBE_OFF_S: Final = 20.0

DROPOUT_FIRST_S: Final = 600.0
DROPOUT_CYCLE_S: Final = 1800.0
DROPOUT_S: Final = 180.0

UNPLUG_AT_S: Final = 600.0
UNPLUG_S: Final = 900.0
#: Device groups the unplugged bedside monitor takes down with it.
UNPLUG_GROUPS: Final = frozenset({"mon", "nibp"})

_NORMAL_LIKE: Final = frozenset({"normal", "artefacts", "dropout", "unplug"})


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
class Drivers:
    """What a scenario does to the patient at one instant (before the coupling)."""

    fever: float = 0.0  #: °C above baseline
    hypoxaemia: float = 0.0  #: SpO2 points lost
    vasodilation: float = 0.0  #: SBP mmHg lost (DBP loses DBP_SHARE of it)
    blood_loss: float = 0.0  #: fraction of the blood volume
    hr: float = 0.0  #: direct HR change /min
    rr: float = 0.0  #: direct RR change /min
    #: SpO2 points lost for good (COPD): compensated, so no coupling.
    chronic_hypoxaemia: float = 0.0


_NO_DRIVERS: Final = Drivers()


def mean_arterial(sbp: float, dbp: float) -> float:
    """MAP estimated from systolic and diastolic pressure: (SBP + 2 DBP) / 3."""
    return (sbp + 2 * dbp) / 3


def _truncnorm(rng: np.random.Generator, dist: tuple[float, float, float, float]) -> float:
    mean, sd, lo, hi = dist
    for _ in range(100):
        v = float(rng.normal(mean, sd))
        if lo <= v <= hi:
            return v
    return min(max(mean, lo), hi)  # pragma: no cover - 100 misses are (nearly) impossible


def _ramp(t: float, start: float, length: float) -> float:
    """0 before ``start``, rising linearly to 1 at ``start + length``, then 1."""
    return min(max((t - start) / length, 0.0), 1.0)


def _scenario_rng(seed: int, scenario: str) -> np.random.Generator:
    return np.random.default_rng([seed, 3, zlib.crc32(scenario.encode())])


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
        d = BASELINE_DIST
        hr = _truncnorm(rng, d["hr"])
        spo2 = _truncnorm(rng, d["spo2"])
        rr = _truncnorm(rng, d["rr"])
        sbp = _truncnorm(rng, d["sbp"])
        dbp = min(max(sbp - _truncnorm(rng, PULSE_PRESSURE_DIST), DBP_RANGE[0]), DBP_RANGE[1])
        temp = _truncnorm(rng, d["temp"])
        # The desaturation episode is drawn for every scenario (same stream as the
        # baseline), so that all scenarios of a seed share the same patient.
        self.nadir = float(rng.uniform(*DESAT_NADIR))
        hr_rise = float(rng.uniform(*DESAT_HR_RISE))
        rr_rise = float(rng.uniform(*DESAT_RR_RISE))
        if scenario == "desaturation":
            # Leave room for the compensation to stay inside the safe band.
            hr = min(hr, DESAT_HR_PEAK_MAX - DESAT_HR_RISE[0] - _DESAT_HR_MARGIN)
            rr = min(rr, DESAT_RR_PEAK_MAX - DESAT_RR_RISE[0] - _DESAT_RR_MARGIN)
        self.baseline = Baseline(hr=hr, spo2=spo2, rr=rr, sbp=sbp, dbp=dbp, temp=temp)
        self.hr_rise = min(hr_rise, DESAT_HR_PEAK_MAX - _DESAT_HR_MARGIN - hr)
        self.rr_rise = min(rr_rise, DESAT_RR_PEAK_MAX - _DESAT_RR_MARGIN - rr)
        self.fall_s = max(spo2 - self.nadir, 0.0) / DESAT_FALL_PER_S
        self.episode_s = DESAT_LEAD_S + self.fall_s + DESAT_HOLD_S + DESAT_RECOVER_S + DESAT_REST_S

        # Scenario parameters: a stream of their own per scenario.
        srng = _scenario_rng(seed, scenario)
        self.params: dict[str, float] = {}
        p = self.params
        if scenario == "sepsis":
            p["fever"] = float(srng.uniform(*SEPSIS_FEVER))
            p["sbp"] = float(srng.uniform(*SEPSIS_SBP))
            p["spo2"] = float(srng.uniform(*SEPSIS_SPO2))
            p["rr"] = float(srng.uniform(*SEPSIS_RR))
            p["hr"] = float(srng.uniform(*SEPSIS_HR))
            # Oxygen starts when the SpO2 trend crosses SEPSIS_O2_BELOW.
            drop = spo2 - p["spo2"]
            need = (spo2 - SEPSIS_O2_BELOW) / drop if drop > 0 else 2.0
            p["o2_at"] = self._sepsis_time(need)
            p["confused_at"] = self._sepsis_time(SEPSIS_CONFUSED_AT)
            p["voice_at"] = SEPSIS_ONSET_S + SEPSIS_COURSE_S + SEPSIS_VOICE_AFTER_S
        elif scenario == "bradycardia":
            p["hr"] = float(srng.uniform(*BRADY_HR))
        elif scenario == "hypotension":
            target = float(srng.uniform(*HYPO_SBP))
            p["sbp"] = target
            p["loss"] = COMPENSATED_LOSS + (sbp - target) / SBP_PER_LOSS
        elif scenario == "copd":
            p["spo2"] = float(srng.uniform(*COPD_SPO2))

        n = len(_DRIFTING)
        sd = np.array([DRIFT[v][0] for v in _DRIFTING])
        tau = np.array([DRIFT[v][1] for v in _DRIFTING])
        self._ou_a = np.exp(-_DRIFT_STEP_S / tau)
        self._ou_b = sd * np.sqrt(1 - self._ou_a**2)
        start = np.random.default_rng([seed, 6]).standard_normal(n) * sd
        #: Drift state at the start of each hour block computed so far.
        self._ou_start: dict[int, npt.NDArray[np.float64]] = {0: start}
        self._ou_cache: dict[int, npt.NDArray[np.float64]] = {}
        self._noise_cache: dict[int, npt.NDArray[np.float64]] = {}
        self._spike_cache: dict[int, npt.NDArray[np.float64]] = {}

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

    def progress(self, t: float) -> float:
        """Sepsis: how far the deterioration is at ``t``, 0 (before onset) .. 1 (full)."""
        if self.scenario != "sepsis":
            return 0.0
        return float(_ramp(t, SEPSIS_ONSET_S, SEPSIS_COURSE_S) ** SEPSIS_SHAPE)

    def drivers(self, t: float) -> Drivers:
        """The scenario's effects at ``t`` (noise-free; the coupling is applied after)."""
        s, p, b = self.scenario, self.params, self.baseline
        if s == "sepsis":
            k = self.progress(t)
            if k == 0:
                return _NO_DRIVERS
            return Drivers(
                fever=k * p["fever"],
                hypoxaemia=k * max(b.spo2 - p["spo2"], 0.0),
                vasodilation=k * max(b.sbp - p["sbp"], 0.0),
                hr=k * p["hr"],
                rr=k * p["rr"],
            )
        if s == "bradycardia":
            k = _ramp(t, BRADY_ONSET_S, BRADY_FALL_S)
            lost = k * max(b.hr - p["hr"], 0.0)
            # low output: SBP falls (and the baroreflex cannot raise a blocked HR)
            return Drivers(hr=-lost, vasodilation=BRADY_SBP_PER_BEAT * lost)
        if s == "hypotension":
            return Drivers(blood_loss=_ramp(t, HYPO_ONSET_S, HYPO_FALL_S) * p["loss"])
        if s == "copd":
            return Drivers(chronic_hypoxaemia=max(b.spo2 - p["spo2"], 0.0), rr=COPD_RR_RISE)
        return _NO_DRIVERS

    def sample(self, t: float) -> dict[str, float]:
        """What the monitor reports at ``t`` seconds, rounded as a monitor does.

        Integer vitals come back as whole floats (``72.0``); temp has one decimal.
        ``spo2`` is absent while the probe is off (``artefacts``, :meth:`sensor_off`).
        """
        if t < 0 or not math.isfinite(t):
            raise ValueError("t must be a finite number of seconds >= 0")
        noise = self._noise(t).tolist()
        drift = self._drift(t).tolist()
        b = self.baseline
        raw: dict[str, float] = {
            "hr": b.hr,  # its drift is added below, in proportion to the rate
            "spo2": b.spo2 + drift[1],
            "rr": b.rr + drift[2],
            "sbp": b.sbp + drift[3],
            "dbp": b.dbp + DBP_DRIFT_FACTOR * drift[3],
            "temp": b.temp + drift[4],
        }
        d = self.drivers(t)
        if d is not _NO_DRIVERS:
            sbp_loss = SBP_PER_LOSS * max(d.blood_loss - COMPENSATED_LOSS, 0.0)
            sbp_drop = d.vasodilation + sbp_loss
            raw["temp"] += d.fever
            raw["spo2"] -= d.hypoxaemia + d.chronic_hypoxaemia
            raw["sbp"] -= sbp_drop
            raw["dbp"] -= DBP_SHARE * sbp_drop
            raw["hr"] += (
                d.hr
                + HR_PER_DEG * d.fever
                + HR_PER_SPO2 * d.hypoxaemia
                + HR_PER_LOSS * d.blood_loss
                + (HR_PER_MMHG * d.vasodilation if d.hr >= 0 else 0.0)
            )
            raw["rr"] += (
                d.rr
                + RR_PER_DEG * d.fever
                + RR_PER_SPO2 * d.hypoxaemia
                + RR_PER_LOSS * d.blood_loss
            )
        raw["hr"] += drift[0] * max(raw["hr"], 0.0) / b.hr  # variability scales with rate
        for i, vital in enumerate(_NOISY):
            raw[vital] += NOISE_SD[vital] * noise[i]
        s = self.severity(t)
        if s > 0:
            raw["spo2"] = (1 - s) * raw["spo2"] + s * (self.nadir + NOISE_SD["spo2"] * noise[1])
            raw["hr"] += s * self.hr_rise
            raw["rr"] += s * self.rr_rise
        band = self._band()
        out: dict[str, float] = {}
        for vital in _NOISY:
            lo, hi = band[vital]
            out[vital] = min(max(raw[vital], lo), hi)
        out["dbp"] = min(out["dbp"], out["sbp"] - 20)
        lo, hi = band["map"]
        out["map"] = min(max(mean_arterial(out["sbp"], out["dbp"]), lo), hi)
        if self.scenario == "artefacts":
            spike = self._spike(t)
            if spike is not None:
                vital, value = spike
                out[vital] = value
        rounded = {
            k: float(round(out[k])) if k in INTEGER_VITALS else round(out[k], 1) for k in VITAL_KEYS
        }
        if self.sensor_off(t):
            del rounded["spo2"]
        return rounded

    def obs(self, t: float) -> dict[str, bool | str]:
        """The nurse's NEWS2 observations at ``t``: ``o2`` (on oxygen) and ``avpu``."""
        o2 = self.scenario == "copd"
        avpu: Avpu = "A"
        if self.scenario == "sepsis":
            p = self.params
            o2 = t >= p["o2_at"]
            if t >= p["voice_at"]:
                avpu = "V"
            elif t >= p["confused_at"]:
                avpu = "C"
        return {"o2": o2, "avpu": avpu}

    def sensor_off(self, t: float) -> bool:
        """Whether the SpO2 probe is off at ``t`` (``artefacts``)."""
        if self.scenario != "artefacts" or t < PROBE_FIRST_S:
            return False
        return (t - PROBE_FIRST_S) % PROBE_CYCLE_S < PROBE_OFF_S

    def silent(self, t: float, group: str = "mon") -> bool:
        """Whether device ``group`` (:data:`GROUPS`) sends nothing at ``t``."""
        if self.scenario == "dropout":
            return t >= DROPOUT_FIRST_S and (t - DROPOUT_FIRST_S) % DROPOUT_CYCLE_S < DROPOUT_S
        if self.scenario == "unplug":
            return group in UNPLUG_GROUPS and UNPLUG_AT_S <= t < UNPLUG_AT_S + UNPLUG_S
        return False

    def unplug_window(self) -> tuple[float, float] | None:
        """``unplug``: (seconds after the start, seconds unplugged); else None."""
        return (UNPLUG_AT_S, UNPLUG_S) if self.scenario == "unplug" else None

    # ---------------------------------------------------------------- private

    def _sepsis_time(self, progress: float) -> float:
        """Event time at which sepsis reaches ``progress`` (inf if never)."""
        if progress > 1:
            return math.inf
        if progress <= 0:
            return SEPSIS_ONSET_S
        return SEPSIS_ONSET_S + SEPSIS_COURSE_S * float(progress ** (1 / SEPSIS_SHAPE))

    def _band(self) -> dict[str, tuple[float, float]]:
        if self.scenario in _NORMAL_LIKE:
            return NORMAL_BAND
        if self.scenario == "desaturation":
            return SAFE_BAND
        return PHYSIO_BAND

    def _noise(self, t: float) -> npt.NDArray[np.float64]:
        """Standard normal noise per vital at ``t``: seeded per second, interpolated."""
        k = math.floor(t)
        frac = t - k
        a = self._noise_at(k)
        if frac == 0:
            return a
        return a * (1 - frac) + self._noise_at(k + 1) * frac

    def _noise_at(self, k: int) -> npt.NDArray[np.float64]:
        block, i = divmod(k, _BLOCK_S)
        arr = self._noise_cache.get(block)
        if arr is None:
            rng = np.random.default_rng([self.seed, 2, block])
            arr = rng.standard_normal((_BLOCK_S, len(_NOISY)))
            _put(self._noise_cache, block, arr)
        row: npt.NDArray[np.float64] = arr[i]
        return row

    def _drift(self, t: float) -> npt.NDArray[np.float64]:
        """Drift per drifting vital at ``t``: the OU path, interpolated on its grid."""
        block, u = divmod(t, _BLOCK_S)
        path = self._ou_block(int(block))
        x = u / _DRIFT_STEP_S
        i = min(int(x), _DRIFT_STEPS - 1)
        frac = x - i
        row: npt.NDArray[np.float64] = path[i] * (1 - frac) + path[i + 1] * frac
        return row

    def _ou_block(self, block: int) -> npt.NDArray[np.float64]:
        """The drift path of hour ``block`` (361 grid points: its start to the next's)."""
        path = self._ou_cache.get(block)
        if path is not None:
            return path
        known = max(b for b in self._ou_start if b <= block)
        for b in range(known, block + 1):
            path = self._ou_cache.get(b)
            if path is None:
                eps = np.random.default_rng([self.seed, 4, b]).standard_normal(
                    (_DRIFT_STEPS, len(_DRIFTING))
                )
                # x[n] = a^n x[0] + sum_{j<n} a^(n-1-j) s eps[j], all steps at once
                # (a^-n stays below e^4 over one block: no loss of precision).
                a, s = self._ou_a, self._ou_b
                n = np.arange(_DRIFT_STEPS + 1)[:, None]
                pw = a**n
                kicks = np.cumsum(s * eps / pw[1:], axis=0)
                path = pw * (self._ou_start[b] + np.vstack([np.zeros(len(_DRIFTING)), kicks]))
                _put(self._ou_cache, b, path)
            self._ou_start[b + 1] = path[-1]
        assert path is not None
        return path

    def _spike(self, t: float) -> tuple[str, float] | None:
        """``artefacts``: a motion spike at whole second ``t`` -> (vital, value), or None."""
        if t != math.floor(t) or t < 1:
            return None
        k = int(t)
        row = self._spike_row(k)
        if not self._spike_candidate(row) or self._spike_candidate(self._spike_row(k - 1)):
            return None  # isolated: never two in a row
        if row[1] < 0.5:
            return "hr", float(round(SPIKE_HR[0] + row[2] * (SPIKE_HR[1] - SPIKE_HR[0])))
        return "spo2", float(round(SPIKE_SPO2[0] + row[2] * (SPIKE_SPO2[1] - SPIKE_SPO2[0])))

    @staticmethod
    def _spike_candidate(row: npt.NDArray[np.float64]) -> bool:
        return bool(row[0] < 1.0 / SPIKE_EVERY_S)

    def _spike_row(self, k: int) -> npt.NDArray[np.float64]:
        block, i = divmod(k, _BLOCK_S)
        arr = self._spike_cache.get(block)
        if arr is None:
            arr = np.random.default_rng([self.seed, 5, block]).uniform(size=(_BLOCK_S, 3))
            _put(self._spike_cache, block, arr)
        row: npt.NDArray[np.float64] = arr[i]
        return row


def _put(
    cache: dict[int, npt.NDArray[np.float64]], key: int, value: npt.NDArray[np.float64]
) -> None:
    """Keep at most 4 blocks per cache (the oldest inserted goes first)."""
    if len(cache) >= 4:
        cache.pop(next(iter(cache)))
    cache[key] = value


def bed_seed(seed: int, bed_index: int) -> int:
    """Each bed's patient seed, derived from the run's seed and the bed's position."""
    state = np.random.SeedSequence([seed, bed_index]).generate_state(1, np.uint32)
    return int(state[0])


def ward(seed: int, scenarios: list[str]) -> list[tuple[str, Patient]]:
    """Beds ``"1"``..``"N"``, one per scenario given, each with its own derived seed.

    Bed ``i``'s patient depends only on ``(seed, i, scenario)``: not on the other beds.
    """
    return [
        (str(i + 1), Patient(bed_seed(seed, i), scenario)) for i, scenario in enumerate(scenarios)
    ]


# ------------------------------------------------------------------------ ward mix


def parse_mix(text: str) -> dict[str, float]:
    """``"normal:0.9,sepsis:0.05,desaturation:0.05"`` -> ``{scenario: fraction}``.

    ValueError (listing the known scenarios when one is unknown) unless every item is
    ``scenario:fraction`` with a known scenario, named once, a fraction in [0, 1], and
    the fractions sum to 1 (within 0.001).
    """
    mix: dict[str, float] = {}
    for item in text.split(","):
        name, sep, frac = item.strip().partition(":")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"{item.strip()!r} is not scenario:fraction")
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
        if name in mix:
            raise ValueError(f"scenario {name!r} given twice")
        try:
            value = float(frac)
        except ValueError:
            raise ValueError(f"fraction {frac.strip()!r} of {name} is not a number") from None
        if not 0 <= value <= 1:
            raise ValueError(f"fraction {value:g} of {name} is not between 0 and 1")
        mix[name] = value
    total = sum(mix.values())
    if abs(total - 1) > 1e-3:
        raise ValueError(f"fractions sum to {total:g}, not 1")
    return mix


def assign(seed: int, beds: int, mix: dict[str, float]) -> list[str]:
    """Scenario of beds 1..``beds``: counts by largest remainder, order shuffled (seeded).

    Deterministic for ``(seed, beds, mix)``; with 50 beds and ``normal:0.8,sepsis:0.2``
    exactly 40 are normal and 10 septic.
    """
    if beds < 0:
        raise ValueError("beds must be >= 0")
    exact = {name: beds * frac for name, frac in mix.items()}
    counts = {name: math.floor(v) for name, v in exact.items()}
    left = beds - sum(counts.values())
    order = sorted(mix, key=lambda n: (-(exact[n] - counts[n]), list(mix).index(n)))
    for name in order[:left]:
        counts[name] += 1
    scenarios = [name for name in mix for _ in range(counts[name])]
    perm = np.random.default_rng(np.random.SeedSequence([seed, 7, beds])).permutation(beds)
    return [scenarios[int(i)] for i in perm]


# ------------------------------------------------------------------------ payloads


def reading(sample: dict[str, float], ts: float) -> dict[str, float | int]:
    """A sample as a vitalmon reading object: ``{"ts": ..., "hr": 72, ..., "temp": 36.9}``."""
    out: dict[str, float | int] = {"ts": round(ts, 3)}
    for k in VITAL_KEYS:
        if k in sample:
            v = sample[k]
            out[k] = int(v) if k in INTEGER_VITALS else v
    return out


def observation(obs: dict[str, bool | str], ts: float) -> dict[str, float | bool | str]:
    """NEWS2 observations as a reading object: ``{"ts": ..., "o2": false, "avpu": "A"}``."""
    out: dict[str, float | bool | str] = {"ts": round(ts, 3)}
    for k in OBS_KEYS:
        if k in obs:
            out[k] = obs[k]
    return out
