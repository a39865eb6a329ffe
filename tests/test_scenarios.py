"""Scenario signatures of the patient model, its physiological coupling, and the NEWS2
course of a simulated ward scored by the real engine (monitor.engine). Pure: no I/O."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter

import pytest

from monitor.config import DEFAULT_ALIASES, RulesConfig
from monitor.engine.engine import Engine
from monitor.engine.news2 import (
    Inputs,
    Score,
    score,
    score_hr,
    score_rr,
    score_sbp,
    score_spo2,
    score_temp,
)
from monitor.model import AlertEvent, Priority
from monitor.sources.codecs import Limits, Origin, decode
from simulators.mqtt import DEFAULT_RATES, Feed
from simulators.patient import (
    BRADY_FALL_S,
    BRADY_ONSET_S,
    COMPENSATED_LOSS,
    DROPOUT_CYCLE_S,
    DROPOUT_FIRST_S,
    DROPOUT_S,
    HR_PER_DEG,
    HR_PER_LOSS,
    HR_PER_MMHG,
    HR_PER_SPO2,
    HYPO_FALL_S,
    HYPO_ONSET_S,
    NORMAL_BAND,
    PROBE_CYCLE_S,
    PROBE_FIRST_S,
    PROBE_OFF_S,
    RR_PER_DEG,
    RR_PER_SPO2,
    SBP_PER_LOSS,
    SEPSIS_ONSET_S,
    UNPLUG_AT_S,
    UNPLUG_S,
    Patient,
    assign,
    bed_seed,
    parse_mix,
    ward,
)

H = 3600
TS0 = 1_800_000_000.0


def news2(p: Patient, t: float, scale: int = 1) -> Score:
    """The patient's complete NEWS2 at ``t`` (every parameter measured at that instant)."""
    s, o = p.sample(t), p.obs(t)
    avpu = o["avpu"]
    assert avpu in ("A", "C", "V", "P", "U") and isinstance(o["o2"], bool)
    return score(
        Inputs(
            rr=s["rr"],
            spo2=s.get("spo2"),
            o2=o["o2"],
            sbp=s["sbp"],
            hr=s["hr"],
            avpu=avpu,
            temp=s["temp"],
            scale=1 if scale == 1 else 2,
        )
    )


def patients(scenario: str, n: int, seed: int = 31) -> list[Patient]:
    return [Patient(bed_seed(seed, i), scenario) for i in range(n)]


# ----------------------------------------------------------------------- normal


def test_the_normal_band_keeps_news2_below_5_without_a_red_parameter() -> None:
    """Whatever the noise, a normal bed scores at most 1 per parameter (temperature 0),
    on air and alert: at most 4 and never a 3, so it never raises a NEWS2 alert."""
    worst = 0
    for vital, scorer in (
        ("hr", score_hr),
        ("rr", score_rr),
        ("sbp", score_sbp),
        ("spo2", score_spo2),
        ("temp", score_temp),
    ):
        lo, hi = NORMAL_BAND[vital]
        edge = max(scorer(lo), scorer(hi))
        assert edge <= (0 if vital == "temp" else 1), vital
        worst += edge
    assert worst == 4


def test_normal_beds_score_0_to_2_nearly_always() -> None:
    totals = Counter(
        news2(p, t).total for p in patients("normal", 30) for t in range(0, 4 * H, 120)
    )
    assert max(totals) <= 4
    assert sum(n for total, n in totals.items() if total <= 2) / totals.total() > 0.99


# ----------------------------------------------------------------------- sepsis


def test_sepsis_drifts_for_hours_hr_rr_temp_up_sbp_down() -> None:
    for p in patients("sepsis", 10):
        before = [p.sample(t) for t in range(0, int(SEPSIS_ONSET_S), 60)]
        late = [p.sample(t) for t in range(5 * H, 6 * H, 60)]

        def mean(rows: list[dict[str, float]], k: str) -> float:
            return statistics.fmean(r[k] for r in rows)

        assert mean(late, "hr") >= mean(before, "hr") + 25
        assert mean(late, "rr") >= mean(before, "rr") + 8
        assert mean(late, "temp") >= mean(before, "temp") + 1.8
        assert mean(late, "sbp") <= 100 and mean(late, "sbp") <= mean(before, "sbp") - 15
        assert mean(late, "spo2") <= 94
        # a drift, not a step: halfway through the course it is halfway there
        mid = p.sample(2 * H)
        assert mean(before, "temp") + 0.5 < mid["temp"] < mean(late, "temp") - 0.2


def test_sepsis_news2_timeline() -> None:
    """As documented: < 5 before onset; >= 5 for good by 2 h 30; >= 7 for good by 3 h;
    the median septic patient at >= 5 by 2 h; oxygen, then confusion, then voice only."""
    at_2h = []
    for p in patients("sepsis", 40):
        assert all(news2(p, t).total < 5 for t in range(0, int(SEPSIS_ONSET_S), 300))
        assert all(news2(p, t).total >= 5 for t in range(int(2.5 * H), 6 * H, 300))
        assert all(news2(p, t).total >= 7 for t in range(3 * H, 6 * H, 300))
        assert min(news2(p, t).total for t in range(int(4.5 * H), 6 * H, 300)) >= 12
        at_2h.append(news2(p, 2 * H).total)
        o2_at = next(t for t in range(0, 6 * H, 60) if p.obs(t)["o2"])
        c_at = next(t for t in range(0, 6 * H, 60) if p.obs(t)["avpu"] == "C")
        v_at = next(t for t in range(0, 6 * H, 60) if p.obs(t)["avpu"] == "V")
        assert 1.25 * H <= o2_at <= 3.5 * H and 3 * H <= c_at <= 3.5 * H and v_at == 5.5 * H
    assert statistics.median(at_2h) >= 5


def test_coupling_fever_hypoxaemia_and_blood_loss() -> None:
    """A scenario and ``normal`` of the same seed share baseline, drift and noise: their
    difference is the scenario with its coupling (to the rounding)."""
    seed = bed_seed(2, 0)
    normal, sepsis = Patient(seed, "normal"), Patient(seed, "sepsis")
    for t in (2 * H, 3 * H, 5 * H):
        d = sepsis.drivers(t)
        n, s = normal.sample(t), sepsis.sample(t)
        hr = d.hr + HR_PER_DEG * d.fever + HR_PER_SPO2 * d.hypoxaemia + HR_PER_MMHG * d.vasodilation
        rr = d.rr + RR_PER_DEG * d.fever + RR_PER_SPO2 * d.hypoxaemia
        # (HR's drift is proportional to the rate: up to ~15 % of the change)
        assert abs((s["hr"] - n["hr"]) - hr) <= 1.5 + 0.15 * hr, t
        assert abs((s["rr"] - n["rr"]) - rr) <= 1.5, t
        assert abs((s["temp"] - n["temp"]) - d.fever) <= 0.11, t
        assert abs((n["sbp"] - s["sbp"]) - d.vasodilation) <= 1.5, t
    assert HR_PER_DEG * sepsis.drivers(5 * H).fever >= 20  # the fever alone: +20 /min
    hypo = Patient(seed, "hypotension")
    t = HYPO_ONSET_S + HYPO_FALL_S + 600
    loss = hypo.drivers(t).blood_loss
    assert 0.25 < loss < 0.6
    n, s = normal.sample(t), hypo.sample(t)
    assert abs((s["hr"] - n["hr"]) - HR_PER_LOSS * loss) <= 1.5 + 0.15 * HR_PER_LOSS * loss
    assert abs((n["sbp"] - s["sbp"]) - SBP_PER_LOSS * (loss - COMPENSATED_LOSS)) <= 1.5
    assert s["map"] < n["map"] - 15


# ------------------------------------------------------------- other scenarios


def test_bradycardia_hr_below_50() -> None:
    for p in patients("bradycardia", 10):
        assert all(p.sample(t)["hr"] >= 52 for t in range(0, int(BRADY_ONSET_S), 10))
        after = [p.sample(t)["hr"] for t in range(int(BRADY_ONSET_S + BRADY_FALL_S), 2 * H, 5)]
        assert sum(hr < 50 for hr in after) / len(after) >= 0.9
        assert max(after) < 56 and min(after) >= 25


def test_hypotension_sbp_below_90_and_map_low() -> None:
    for p in patients("hypotension", 10):
        start = p.sample(0)
        rows = [p.sample(t) for t in range(int(HYPO_ONSET_S + HYPO_FALL_S), 2 * H, 30)]
        assert sum(r["sbp"] < 90 for r in rows) / len(rows) >= 0.9
        assert statistics.fmean(r["map"] for r in rows) < 70
        assert statistics.fmean(r["hr"] for r in rows) >= start["hr"] + 20


def test_copd_chronic_spo2_88_to_92_on_scale_2() -> None:
    spo2 = []
    totals: Counter[int] = Counter()
    for p in patients("copd", 10):
        for t in range(0, 4 * H, 30):
            spo2.append(p.sample(t)["spo2"])
            assert p.obs(t) == {"o2": True, "avpu": "A"}  # on controlled oxygen
        totals.update(news2(p, t, scale=2).total for t in range(0, 4 * H, 300))
        assert news2(p, 0, scale=1).components["spo2"] >= 2  # why scale 2 matters
    assert sum(88 <= v <= 92 for v in spo2) / len(spo2) >= 0.95
    assert sum(n for total, n in totals.items() if total < 5) / totals.total() >= 0.98


def test_artefacts_isolated_spikes_and_probe_off() -> None:
    for p in patients("artefacts", 5):
        rows = {t: p.sample(t) for t in range(2 * H)}
        spikes = [t for t, r in rows.items() if r["hr"] >= 140 or r.get("spo2", 100) <= 85]
        assert 30 <= len(spikes) <= 100  # about one every 2 min
        for t in spikes:
            # a single reading: its neighbours are the patient's own values
            for u in (t - 1, t + 1):
                assert 52 <= rows[u]["hr"] <= 108 and rows[u].get("spo2", 96) >= 93, (t, u)
        assert {"hr", "spo2"} == {
            "hr" if rows[t]["hr"] >= 140 else "spo2" for t in spikes
        }  # both kinds
        off = [t for t in rows if p.sensor_off(t)]
        assert off[0] == PROBE_FIRST_S and len(off) == 12 * PROBE_OFF_S
        assert all(("spo2" in rows[t]) != p.sensor_off(t) for t in rows)
        assert p.sensor_off(PROBE_FIRST_S + PROBE_CYCLE_S + 1)


def feed_gaps(scenario: str, group_device: str, hours: float) -> list[tuple[int, int]]:
    """(start, length) of the gaps in a device's messages, in simulated seconds."""
    feed = Feed(ward(4, [scenario]), rates={**DEFAULT_RATES, "nibp": 30, "temp": 30, "obs": 30})
    sent = [
        k
        for k in range(int(hours * H))
        for m in feed.tick(k, TS0 + k)
        if m.topic.endswith("/" + group_device)
    ]
    step = 1 if group_device == "mon1" else 30
    return [(a + step, b - a - step) for a, b in itertools.pairwise(sent) if b - a > step]


def test_dropout_the_beds_devices_go_silent() -> None:
    gap = [(int(DROPOUT_FIRST_S + i * DROPOUT_CYCLE_S), int(DROPOUT_S)) for i in range(2)]
    assert feed_gaps("dropout", "mon1", 1) == gap
    assert feed_gaps("dropout", "thermo", 1) == gap  # every device of the bed
    p = Patient(1, "dropout")
    assert all(p.silent(DROPOUT_FIRST_S + 1, g) for g in ("mon", "nibp", "thermo", "obs"))
    assert Feed([("1", p)]).heartbeat("1", p, "thermo", 700, TS0 + 700) is None


def test_unplug_takes_the_monitor_down_once() -> None:
    assert feed_gaps("unplug", "mon1", 1) == [(int(UNPLUG_AT_S), int(UNPLUG_S))]
    assert feed_gaps("unplug", "nibp", 1) == [(int(UNPLUG_AT_S), int(UNPLUG_S))]
    assert feed_gaps("unplug", "thermo", 1) == []
    assert Patient(1, "unplug").unplug_window() == (UNPLUG_AT_S, UNPLUG_S)
    assert Patient(1, "normal").unplug_window() is None


# --------------------------------------------------------- a ward, by the engine


def test_a_ward_with_sepsis_escalates_news2_on_the_septic_beds_only() -> None:
    """50 beds (40 normal, 10 septic) for 4 h of event time, published by the feed at the
    default ward rates (the monitor every 2 min here, for speed), decoded by the daemon's
    codec and evaluated by the engine with the default rules (NEWS2 freshness 30 min,
    complete scores only): every septic bed reaches a high NEWS2 alert (at the 4 h
    temperature round at the latest), no normal bed raises any alert at all."""
    seed = 11
    scenarios = assign(seed, 50, parse_mix("normal:0.8,sepsis:0.2"))
    feed = Feed(ward(seed, scenarios), rates={**DEFAULT_RATES, "hr": 120, "spo2": 120, "rr": 120})
    engine = Engine(RulesConfig(), [])
    limits = Limits(aliases=DEFAULT_ALIASES)
    events: list[AlertEvent] = []
    for k in range(0, 4 * H + 1, 120):
        readings = []
        for m in feed.tick(k, TS0 + k):
            _, w, b, d = m.topic.split("/")
            decoded = decode(m.payload, Origin(m.topic, w, b, d), TS0 + k, limits)
            assert decoded.rejections == []
            readings += decoded.readings
        events += engine.process(readings)
    septic = {str(i + 1) for i, s in enumerate(scenarios) if s == "sepsis"}
    assert len(septic) == 10
    news = [e for e in events if e.rule == "news2"]
    assert {e.bed for e in news} == septic
    highest = {bed: max((e for e in news if e.bed == bed), key=lambda e: e.value) for bed in septic}
    assert all(e.priority == Priority.HIGH and e.value >= 7 for e in highest.values())
    assert all(e.priority in (Priority.MEDIUM, Priority.HIGH) for e in news)
    assert not [e for e in events if e.bed not in septic]  # no alert of any kind
    # the septic beds' scores, as the engine holds them at the end: complete and high
    for bed in septic:
        tracked = engine.scores.beds[("icu", bed)].tracker.current(TS0 + 4 * H, 1800)
        assert not tracked.partial and tracked.total >= 12


@pytest.mark.parametrize("scenario", ["sepsis", "bradycardia", "hypotension", "copd"])
def test_sick_scenarios_stay_physiological(scenario: str) -> None:
    for p in patients(scenario, 5):
        for t in range(0, 8 * H, 97):
            s = p.sample(t)
            assert 25 <= s["hr"] <= 200 and 60 <= s["spo2"] <= 100 and 4 <= s["rr"] <= 50
            assert 34 <= s["temp"] <= 41.5 and s["dbp"] < s["sbp"] and s["dbp"] < s["map"]
