"""Differential: the engine's shortcuts change nothing. The engine that skips the
threshold rules a reading cannot change (``gate_quiet``) and the NEWS2 score that stands
(``News2Scores.shortcut``: no recomputation while inputs keep their sub-scores) say
exactly what the engine without them says, on random streams and on the MIMIC-II
recordings: same events (every field, ids included), same flags on the stored readings,
same NEWS2 updates."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import RulesConfig
from monitor.engine import Engine
from monitor.model import Reading
from monitor.replay import load_csv

DATA = Path(__file__).parent / "data"
T0 = 1_764_324_000.0
VITALS = {"hr": (20, 200), "spo2": (70, 100), "rr": (2, 40), "sbp": (60, 220), "temp": (34, 41)}


#: A step of a stream: readings (arriving at a wall-clock time, or None: a replay), a
#: tick of the daemon's clock, or a bed's NEWS2 scale changed (its profile).
Step = list[Reading] | tuple[str, float] | tuple[str, str, int]


def _run(shortcuts: bool, batches: list[Step], rules: RulesConfig) -> list[Any]:
    engine = Engine(rules, sinks=[])
    engine.gate_quiet = shortcuts
    engine.scores.shortcut = shortcuts
    out: list[Any] = []
    for b in batches:
        if isinstance(b, tuple):
            if b[0] == "tick":
                out.append([dataclasses.asdict(e) for e in engine.tick(float(b[1]))])
            else:
                engine.scores.set_scale("icu", str(b[1]), 2 if b[2] == 2 else 1)
            continue
        readings = list(b)
        arrival = readings[0].ts + 5 if readings[0].patient == "live" else None
        events = engine.process(readings, arrival)
        out.append([dataclasses.asdict(e) for e in events])
        out.append([r.flag for r in readings])
        out.append([(u.ward, u.bed, u.payload) for u in engine.take_score_updates()])
    out.append(sorted((k, [a and a.id for a in s.active]) for k, s in engine.series.items()))
    return out


@st.composite
def streams(draw: st.DrawFn) -> list[list[Reading]]:
    """A few beds and devices, each vital drifting across its limits, at a random cadence,
    with repeats, late readings, gaps and intermittent (spot) readings."""
    beds = draw(st.integers(1, 3))
    n = draw(st.integers(20, 400))
    t = T0
    level = {v: draw(st.floats(lo, hi)) for v, (lo, hi) in VITALS.items()}
    batches: list[list[Reading]] = []
    for _ in range(n):
        t += draw(st.sampled_from([0.0, 1.0, 1.0, 1.0, 5.0, 40.0, 300.0]))
        bed = str(draw(st.integers(1, beds)))
        device = draw(st.sampled_from(["mon1", "mon1", "mon2"]))
        batch = []
        for vital in draw(st.lists(st.sampled_from(sorted(VITALS)), min_size=1, max_size=4)):
            lo, hi = VITALS[vital]
            level[vital] = min(hi, max(lo, level[vital] + draw(st.floats(-15, 15))))
            ts = t - draw(st.sampled_from([0.0, 0.0, 0.0, 2.0, 90.0]))  # some late
            mode = draw(st.sampled_from([None, None, None, "intermittent", "continuous"]))
            batch.append(Reading(ts, "icu", bed, device, vital, round(level[vital], 1), mode=mode))
        if draw(st.booleans()) and batches:
            batch += batches[-1][:1]  # a repeat
        batches.append(batch)
    return batches


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_the_shortcuts_change_nothing_on_random_streams(batches: list[Step]) -> None:
    rules = RulesConfig(thresholds={"hr": {"delay_s": 5}, "spo2": {"delay_s": 0}})
    assert _run(True, batches, rules) == _run(False, batches, rules)


def test_the_shortcuts_change_nothing_on_the_recordings() -> None:
    for name in ("s00001-2896-10-10-00-31n.csv", "s25047-2704-05-04-10-44n.csv"):
        rec = load_csv(DATA / name, bed="1")
        batches: list[Step] = []
        for r in rec.readings:  # one batch per instant, as `vitalmon replay` feeds them
            last = batches[-1] if batches else None
            if isinstance(last, list) and last[0].ts == r.ts:
                last.append(r)
            else:
                batches.append([r])
        gated = _run(True, batches, RulesConfig())
        assert gated == _run(False, batches, RulesConfig())
        assert any(events for events in gated[::3])  # the recordings do raise alerts


#: NEWS2 inputs near their chart's cut-offs, so that sub-scores mostly hold and sometimes
#: change (the shortcut's two cases)
NEWS2 = {"rr": (19.0, 22.0), "spo2": (91.0, 97.0), "sbp": (89.0, 112.0), "hr": (88.0, 112.0)}
NEWS2 |= {"temp": (35.8, 38.4)}


@st.composite
def news2_streams(draw: st.DrawFn) -> list[Step]:
    """Beds scored from two devices each, values wandering across NEWS2 cut-offs, o2 and
    ACVPU charted now and then, late and live arrivals, the clock ticking past inputs'
    freshness and holds, and scales changing."""
    beds = draw(st.integers(1, 2))
    t = T0
    level = {v: draw(st.floats(lo, hi)) for v, (lo, hi) in NEWS2.items()}
    steps: list[Step] = []
    for _ in range(draw(st.integers(20, 250))):
        t += draw(st.sampled_from([0.0, 1.0, 1.0, 1.0, 7.0, 30.0, 95.0]))
        bed = str(draw(st.integers(1, beds)))
        kind = draw(st.sampled_from(["vitals"] * 8 + ["charted", "tick", "scale"]))
        if kind == "tick":
            steps.append(("tick", t + draw(st.sampled_from([0.0, 5.0, 60.0, 200.0]))))
            continue
        if kind == "scale":
            steps.append(("scale", bed, draw(st.sampled_from([1, 2]))))
            continue
        # several sources of a parameter, preferred by kind (ecg, then mon1, then cuff)
        device = draw(st.sampled_from(["mon1", "mon1", "mon1.ecg", "cuff"]))
        live = draw(st.sampled_from([None, "live"]))
        batch = []
        if kind == "charted":
            for vital, hi in (("o2", 1), ("avpu", 4)):
                if draw(st.booleans()):
                    batch.append(
                        Reading(
                            t, "icu", bed, "chart", vital, float(draw(st.integers(0, hi))), live
                        )
                    )
        for vital in draw(st.lists(st.sampled_from(sorted(NEWS2)), min_size=1, max_size=5)):
            lo, hi = NEWS2[vital]
            step = draw(st.sampled_from([0.0, 0.1, -0.1, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0]))
            level[vital] = min(hi, max(lo, level[vital] + step))
            # some late, some older than the inputs' freshness (120 s), some that far ahead
            ts = t - draw(st.sampled_from([0.0, 0.0, 0.0, 3.0, 150.0, -150.0]))
            batch.append(Reading(ts, "icu", bed, device, vital, round(level[vital], 1), live))
        if batch:
            steps.append(batch)
    return steps


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(news2_streams(), st.sampled_from([20.0, 300.0]))
def test_the_news2_shortcut_changes_nothing(steps: list[Step], source_s: float) -> None:
    # a preferred source kept for longer than freshness_s (300 s) holds stale values
    rules = RulesConfig(news2={"freshness_s": 120, "hold_s": 30, "source_s": source_s})
    ours = _run(True, steps, rules)
    assert ours == _run(False, steps, rules)


def test_a_value_ahead_of_the_score_counts_once_the_clock_reaches_it() -> None:
    """A parameter's source may hold a value more than ``freshness_s`` ahead of the bed's
    present (one kept aside, then chosen by name when the preferred source is no longer
    recent): the score leaves it out, and it counts, with no input changing, once the
    present is within ``freshness_s`` of it. The score does not stand meanwhile (found by
    review: the shortcut published nothing where the reference counted hr 150)."""

    def at(dt: float, device: str, vital: str, value: float) -> Reading:
        return Reading(T0 + dt, "icu", "1", device, vital, value)

    steps: list[Step] = [
        [at(900, "Z.chart", "hr", 80.0), at(900, "R.chart", "rr", 16.0)],
        [at(1100, "B.chart", "hr", 150.0)],  # as preferred as Z, which stays: kept aside
        [at(600, "M.ecg", "hr", 80.0)],  # an ECG takes over (an old value, late)
        # the ECG is no longer recent: B wins by name, 100 s ahead: not counted
        [at(1000, "Z.chart", "hr", 81.0), at(1000, "R.chart", "rr", 16.0)],
        [at(1050, "R.chart", "rr", 17.0)],  # rr's sub-score holds; B's hr counts now
    ]
    for partial in (False, True):
        rules = RulesConfig(news2={"freshness_s": 60, "alert_partial": partial})
        ours = _run(True, steps, rules)
        assert ours == _run(False, steps, rules)
        assert ours[-2] == [("icu", "1", mock.ANY)]  # the score at 1050 is published
        assert ours[-2][0][2]["components"] == {"rr": 0, "hr": 3}
