"""Differential: the engine that skips the threshold rules a reading cannot change
(``gate_quiet``) says exactly what the engine that runs every rule on every reading says,
on random streams and on the MIMIC-II recordings: same events (every field, ids
included), same flags on the stored readings, same NEWS2 updates."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import RulesConfig
from monitor.engine import Engine
from monitor.model import Reading
from monitor.replay import load_csv

DATA = Path(__file__).parent / "data"
T0 = 1_764_324_000.0
VITALS = {"hr": (20, 200), "spo2": (70, 100), "rr": (2, 40), "sbp": (60, 220), "temp": (34, 41)}


def _run(gate: bool, batches: list[list[Reading]], rules: RulesConfig) -> list[Any]:
    engine = Engine(rules, sinks=[])
    engine.gate_quiet = gate
    out: list[Any] = []
    for b in batches:
        readings = list(b)
        events = engine.process(readings)
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
def test_the_gate_changes_nothing_on_random_streams(batches: list[list[Reading]]) -> None:
    rules = RulesConfig(thresholds={"hr": {"delay_s": 5}, "spo2": {"delay_s": 0}})
    assert _run(True, batches, rules) == _run(False, batches, rules)


def test_the_gate_changes_nothing_on_the_recordings() -> None:
    for name in ("s00001-2896-10-10-00-31n.csv", "s25047-2704-05-04-10-44n.csv"):
        rec = load_csv(DATA / name, bed="1")
        batches: list[list[Reading]] = []
        for r in rec.readings:  # one batch per instant, as `vitalmon replay` feeds them
            if batches and batches[-1][0].ts == r.ts:
                batches[-1].append(r)
            else:
                batches.append([r])
        gated = _run(True, batches, RulesConfig())
        assert gated == _run(False, batches, RulesConfig())
        assert any(events for events in gated[::3])  # the recordings do raise alerts
