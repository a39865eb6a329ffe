"""The patient model (pure), the ward mix, the MQTT feed (pure: devices, rates, formats,
clock) and the MQTT simulator (a real subprocess on a real mosquitto).

Scenario signatures and the NEWS2 course of a ward are in test_scenarios.py.
"""

from __future__ import annotations

import itertools
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import pytest
from conftest import Broker, Subscriber, free_port, wait_for

from monitor.config import DEFAULT_ALIASES, DEFAULT_THRESHOLDS
from monitor.model import VITALS
from monitor.sources.codecs import Limits, Origin, decode
from simulators.__main__ import build_parser
from simulators.mqtt import (
    DEFAULT_BACKLOG_S,
    DEFAULT_RATES,
    Feed,
    Message,
    Options,
    Simulator,
    clock_lead,
    parse_rates,
    send_at,
    thinned,
    thinning,
)
from simulators.patient import (
    BASELINE_RANGES,
    DESAT_HOLD_S,
    DESAT_LEAD_S,
    INTEGER_VITALS,
    SCENARIOS,
    VITAL_KEYS,
    Patient,
    assign,
    parse_mix,
    reading,
    ward,
)

TS0 = 1_800_000_000.0
LIMITS = Limits(aliases=DEFAULT_ALIASES)

# ------------------------------------------------------------------ patient model


def crossings(sample: dict[str, float], vitals: tuple[str, ...] = VITAL_KEYS) -> list[str]:
    """Which default alarm limits (README, "Default limits") a sample is beyond."""
    out = []
    for vital in vitals:
        limits = DEFAULT_THRESHOLDS.get(vital)
        if limits is None:
            continue
        v = sample[vital]
        if "low" in limits and v < limits["low"]["warn"]:
            out.append(f"{vital}={v} < {limits['low']['warn']}")
        if "high" in limits and v > limits["high"]["warn"]:
            out.append(f"{vital}={v} > {limits['high']['warn']}")
    return out


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_patient_is_deterministic_for_a_seed(scenario: str) -> None:
    times = [0, 1, 2.5, 7, 59, 60, 61, 3599, 3600, 3601.75, 7300, 86_400]
    a = [Patient(42, scenario).sample(t) for t in times]
    # a fresh patient sampled in another order gives the same values at the same times
    p = Patient(42, scenario)
    b = {t: p.sample(t) for t in reversed(times)}
    assert a == [b[t] for t in times]
    assert [Patient(42, scenario).obs(t) for t in times] == [p.obs(t) for t in times]
    other = [Patient(43, scenario).sample(t) for t in times]
    assert other != a


def test_scenarios_of_a_seed_share_the_patient() -> None:
    """Same baseline, drift and noise in every scenario: before its onset a scenario is
    exactly the normal patient."""
    normal = Patient(5, "normal")
    for scenario in ("sepsis", "bradycardia", "hypotension", "artefacts", "dropout"):
        p = Patient(5, scenario)
        assert p.baseline == normal.baseline
        assert [p.sample(t) for t in range(0, 200, 7)] == [
            normal.sample(t) for t in range(0, 200, 7)
        ], scenario


def test_samples_are_rounded_like_a_monitor_and_plausible() -> None:
    p = Patient(1)
    for t in range(0, 600, 3):
        s = p.sample(t)
        assert list(s) == list(VITAL_KEYS)
        for vital, v in s.items():
            assert type(v) is float, (vital, v)
            if vital in INTEGER_VITALS:
                assert v == int(v), (vital, v)
            else:
                assert round(v, 1) == v, (vital, v)
            _unit, lo, hi = VITALS[vital]
            assert lo <= v <= hi
        assert s["dbp"] < s["sbp"]
    obj = reading(p.sample(0), 1764324000.25)
    assert obj["ts"] == 1764324000.25
    assert isinstance(obj["hr"], int)
    assert isinstance(obj["temp"], float)
    assert p.obs(0) == {"o2": False, "avpu": "A"}


def test_baselines_come_from_adult_ranges_and_differ_between_patients() -> None:
    baselines = [Patient(seed).baseline for seed in range(200)]
    for vital, (lo, hi) in BASELINE_RANGES.items():
        values = [b.get(vital) for b in baselines]
        assert all(lo <= v <= hi for v in values), vital
        # spread over the range, not a constant
        assert max(values) - min(values) > (hi - lo) / 2, vital
    assert all(b.sbp - b.dbp >= 30 for b in baselines)


@pytest.mark.parametrize("seed", range(20))
def test_normal_never_crosses_the_default_limits(seed: int) -> None:
    p = Patient(seed, "normal")
    seen: dict[str, set[float]] = defaultdict(set)
    for t in range(2 * 3600):
        s = p.sample(t)
        bad = crossings(s)
        assert not bad, f"seed {seed} t={t}: {bad}"
        for k, v in s.items():
            seen[k].add(v)
    # ... and it is not a flat line
    assert all(len(values) >= 3 for values in seen.values()), seen.keys()


def test_drift_is_slow_and_noise_is_per_reading() -> None:
    """Ornstein-Uhlenbeck drift: minutes apart values are correlated, hours apart the
    drift has wandered; readings a second apart differ by the noise only."""
    p = Patient(8)
    hr = [p.sample(t)["hr"] for t in range(0, 4 * 3600, 5)]
    diffs_5s = [abs(b - a) for a, b in itertools.pairwise(hr)]
    assert max(diffs_5s) <= 8
    assert sum(diffs_5s) / len(diffs_5s) < 2.5
    assert max(hr) - min(hr) >= 6  # it drifts


def longest_run_below(p: Patient, limit: float, times: range) -> int:
    best = run = 0
    for t in times:
        run = run + 1 if p.sample(t)["spo2"] < limit else 0
        best = max(best, run)
    return best


@pytest.mark.parametrize("seed", range(10))
def test_desaturation_goes_below_85_for_20_s_within_a_minute(seed: int) -> None:
    p = Patient(seed, "desaturation")
    assert longest_run_below(p, 85, range(60)) >= 20
    # normal at the start, then ~1 %/s down
    assert all(p.sample(t)["spo2"] >= 93 for t in range(int(DESAT_LEAD_S)))
    # only SpO2 alarms: HR and RR rise but stay inside their limits
    for t in range(int(3 * p.episode_s)):
        assert not crossings(p.sample(t), ("hr", "rr", "sbp", "map", "temp")), (seed, t)
    nadir_t = DESAT_LEAD_S + p.fall_s + DESAT_HOLD_S / 2
    assert p.sample(nadir_t)["hr"] >= p.sample(0)["hr"] + 10
    assert p.sample(nadir_t)["rr"] >= p.sample(0)["rr"] + 2


def test_desaturation_recovers_and_repeats() -> None:
    p = Patient(3, "desaturation")
    rest = DESAT_LEAD_S + p.fall_s + DESAT_HOLD_S + 10 + 30  # in the normal stretch
    assert p.sample(rest)["spo2"] >= 93
    assert longest_run_below(p, 85, range(int(rest), int(rest + p.episode_s))) >= 50
    # two episodes in a row look alike (same shape, fresh noise)
    first = [p.sample(t)["spo2"] < 90 for t in range(int(p.episode_s))]
    second = [p.sample(t + p.episode_s)["spo2"] < 90 for t in range(int(p.episode_s))]
    assert sum(a != b for a, b in zip(first, second, strict=True)) <= 4


def test_ward_gives_each_bed_its_own_patient() -> None:
    beds = ward(9, ["normal", "normal", "desaturation"])
    assert [b for b, _ in beds] == ["1", "2", "3"]
    assert [p.scenario for _, p in beds] == ["normal", "normal", "desaturation"]
    assert len({p.seed for _, p in beds}) == 3
    assert [p.seed for _, p in ward(9, ["normal"] * 3)] == [p.seed for _, p in beds]


def test_a_beds_series_does_not_depend_on_the_other_beds() -> None:
    small = ward(4, ["normal", "sepsis"])
    large = ward(4, ["copd", "sepsis", *["normal"] * 48])
    times = range(0, 4 * 3600, 97)
    assert [small[1][1].sample(t) for t in times] == [large[1][1].sample(t) for t in times]
    # ... nor does what the feed publishes for it
    a = Feed(small, rates={**DEFAULT_RATES, "nibp": 60})
    b = Feed(large, rates={**DEFAULT_RATES, "nibp": 60})
    for k in range(0, 600, 3):
        assert [m for m in a.tick(k, TS0 + k) if m.bed == "2"] == [
            m for m in b.tick(k, TS0 + k) if m.bed == "2"
        ]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"'septic' .*known: normal, desaturation, sepsis"):
        Patient(1, "septic")
    with pytest.raises(ValueError):
        Patient(1).sample(-1)
    with pytest.raises(ValueError):
        Patient(-1)


# ------------------------------------------------------------------------ ward mix


def test_mix_is_parsed_and_validated() -> None:
    assert parse_mix("normal:0.9,sepsis:0.05,desaturation:0.05") == {
        "normal": 0.9,
        "sepsis": 0.05,
        "desaturation": 0.05,
    }
    assert parse_mix(" normal : 0.3333, copd:0.6667 ") == {"normal": 0.3333, "copd": 0.6667}
    assert parse_mix("sepsis:1") == {"sepsis": 1.0}
    for bad, message in [
        ("normal:0.8,sepsis:0.1", "sum to 0.9, not 1"),
        ("normal:0.8,sepsis:0.3", "sum to 1.1"),
        ("normal:0.5,flu:0.5", r"unknown scenario 'flu' \(known: normal, desaturation, sepsis"),
        ("normal:0.5,normal:0.5", "given twice"),
        ("normal", "not scenario:fraction"),
        ("normal:lots", "not a number"),
        ("normal:1.5,sepsis:-0.5", "not between 0 and 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_mix(bad)


def test_mix_assignment_is_exact_deterministic_and_shuffled() -> None:
    mix = parse_mix("normal:0.8,sepsis:0.2")
    beds = assign(7, 50, mix)
    assert Counter(beds) == {"normal": 40, "sepsis": 10}
    assert beds == assign(7, 50, mix)
    assert beds != assign(8, 50, mix)  # another seed, other septic beds
    assert beds[:10] != ["sepsis"] * 10  # not in blocks
    big = assign(1, 200, parse_mix("normal:0.9,sepsis:0.05,desaturation:0.05"))
    assert Counter(big) == {"normal": 180, "sepsis": 10, "desaturation": 10}
    # largest remainder: the total is always the number of beds
    assert Counter(assign(1, 7, parse_mix("normal:0.5,sepsis:0.5"))) == {"normal": 4, "sepsis": 3}
    assert Counter(assign(1, 3, parse_mix("normal:0.34,sepsis:0.33,copd:0.33"))) == {
        "normal": 1,
        "sepsis": 1,
        "copd": 1,
    }


def test_cli_refuses_a_bad_mix_or_rate_listing_what_is_known(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    args = parser.parse_args(["mqtt", "--beds", "50", "--mix", "normal:0.8,sepsis:0.2"])
    assert args.mix == {"normal": 0.8, "sepsis": 0.2}
    for argv, message in [
        (["--mix", "normal:0.8,flu:0.2"], "argument --mix: unknown scenario 'flu' (known: normal,"),
        (["--mix", "normal:0.8"], "argument --mix: fractions sum to 0.8, not 1"),
        (["--mix", "normal:1", "--scenario", "sepsis"], "not allowed with argument"),
        (["--device-rate", "pulse=1"], "unknown rate 'pulse' (known: hr, spo2, rr, nibp, temp"),
        (["--format", "xml"], "invalid choice: 'xml'"),
    ]:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["mqtt", *argv])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------- feed: devices


def test_device_rates_are_parsed() -> None:
    assert parse_rates("spo2=1,hr=1,nibp=900,temp=14400") == DEFAULT_RATES
    assert parse_rates("nibp=300, temp=0") == {**DEFAULT_RATES, "nibp": 300, "temp": 0}
    for bad, message in [
        ("nibp=1.5", "whole number"),
        ("nibp=-1", "whole number"),
        ("nibp", "not key=seconds"),
        ("nibp=soon", "not a number"),
        ("sbp=900", "unknown rate 'sbp'"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_rates(bad)


def counts_by_device(feed: Feed, ticks: range) -> Counter[tuple[str, str]]:
    n: Counter[tuple[str, str]] = Counter()
    for k in ticks:
        for m in feed.tick(k, TS0 + k):
            n[(m.bed, m.topic.rsplit("/", 1)[1])] += 1
    return n


def test_devices_publish_at_their_ward_rates() -> None:
    """Continuous vitals every second, NIBP every 15 min, temperature every 4 h, o2/avpu
    hourly: each on its own device topic, all at the start."""
    feed = Feed(ward(2, ["normal", "sepsis"]), ward="w3")
    n = counts_by_device(feed, range(2 * 3600))
    for bed in ("1", "2"):
        assert n[(bed, "mon1")] == 7200
        assert n[(bed, "nibp")] == 8
        assert n[(bed, "thermo")] == 1
        assert n[(bed, "obs")] == 2
    first = {m.topic: json.loads(m.payload) for m in feed.tick(0, TS0)}
    assert set(first) == {
        f"vitals/w3/{b}/{d}" for b in "12" for d in ("mon1", "nibp", "thermo", "obs")
    }
    assert set(first["vitals/w3/1/mon1"]) == {"ts", "hr", "spo2", "rr"}
    assert set(first["vitals/w3/1/nibp"]) == {"ts", "sbp", "dbp", "map"}
    assert set(first["vitals/w3/1/thermo"]) == {"ts", "temp"}
    assert first["vitals/w3/1/obs"] == {"ts": TS0, "o2": False, "avpu": "A"}
    assert {m.topic.rsplit("/", 1)[1] for m in feed.tick(900, TS0 + 900)} == {"mon1", "nibp"}


def test_rates_are_configurable_per_vital() -> None:
    rates = parse_rates("spo2=1,hr=5,rr=0,nibp=60,temp=120,obs=0")
    feed = Feed(ward(2, ["normal"]), device="m", rates=rates)
    objs = [
        json.loads(m.payload) | {"dev": m.topic} for k in range(300) for m in feed.tick(k, TS0 + k)
    ]
    mon = [o for o in objs if o["dev"].endswith("/m")]
    assert len(mon) == 300
    assert sum("hr" in o for o in mon) == 60 and not any("rr" in o for o in mon)
    assert sum(o["dev"].endswith("/nibp") for o in objs) == 5
    assert sum(o["dev"].endswith("/thermo") for o in objs) == 3
    assert not any(o["dev"].endswith("/obs") for o in objs)


def test_what_is_published_does_not_depend_on_the_pace() -> None:
    """The messages of simulated second k are the same whichever seconds were published
    before (a faster or slower speed, or a skip), so ts and values match at any speed."""
    patients = ward(12, ["sepsis", "artefacts", "normal"])
    every = Feed(patients)
    by_k = {k: every.tick(k, TS0 + k) for k in range(0, 3700)}
    sparse = Feed(ward(12, ["sepsis", "artefacts", "normal"]))
    for k in range(0, 3700, 37):
        assert sparse.tick(k, TS0 + k) == by_k[k]


# ---------------------------------------------------------------- feed: formats


def decode_all(msgs: list[Message], now: float) -> tuple[set[tuple[object, ...]], list[object]]:
    readings: set[tuple[object, ...]] = set()
    statuses: list[object] = []
    for m in msgs:
        _, ward_, bed, device = m.topic.split("/")
        d = decode(m.payload, Origin(m.topic, ward_, bed, device), now, LIMITS)
        assert d.rejections == [], (m, d.rejections)
        readings |= {(r.bed, r.device, r.vital, r.ts, r.value) for r in d.readings}
        statuses += [(s.bed, s.device, s.ts, s.flags) for s in d.statuses]
    return readings, statuses


def published(feed: Feed, ticks: range) -> list[Message]:
    out = [m for k in ticks for m in feed.tick(k, TS0 + k)]
    return out + feed.flush()


@pytest.mark.parametrize("fmt", ["batch", "senml"])
def test_formats_decode_into_the_same_readings(fmt: str) -> None:
    rates = parse_rates("nibp=10,temp=20,obs=30")
    ticks = range(63)
    expected, _ = decode_all(
        published(Feed(ward(3, ["normal", "sepsis"]), rates=rates), ticks), TS0 + 100
    )
    assert len(expected) == 2 * (63 * 3 + 7 * 3 + 4 + 3 * 2)
    feed = Feed(ward(3, ["normal", "sepsis"]), fmt=fmt, rates=rates, batch_s=5)
    msgs = published(feed, ticks)
    got, _ = decode_all(msgs, TS0 + 100)
    assert got == expected
    # one message per device of a bed per 5 s (the last one partial); obs are objects
    per = Counter((m.bed, m.topic.rsplit("/", 1)[1]) for m in msgs)
    assert per[("1", "mon1")] == 13 and per[("1", "nibp")] == 7
    docs = [json.loads(m.payload) for m in msgs]
    if fmt == "batch":
        assert all(isinstance(d, list) and all("ts" in o for o in d) for d in docs)
        assert len(json.loads(msgs[0].payload)) == 5
    else:
        mon = next(json.loads(m.payload) for m in msgs if m.topic.endswith("/1/mon1"))
        assert mon[0]["bn"] == "urn:dev:icu:1:mon1:" and mon[0]["bt"] == TS0
        assert [r["n"] for r in mon[:3]] == ["HR", "SpO2", "RR"]
        assert mon[3]["t"] == 1
        obs = [json.loads(m.payload) for m in msgs if m.topic.endswith("/obs")]
        assert obs and all(isinstance(o, dict) and o["avpu"] == "A" for o in obs)


def test_object_format_carries_the_values_of_the_model() -> None:
    ((bed, p),) = ward(6, ["sepsis"])
    feed = Feed([(bed, p)])
    k = 4 * 3600  # a temperature round, in the plateau
    got, _ = decode_all(feed.tick(k, TS0 + k), TS0 + k)
    s, o = p.sample(k), p.obs(k)
    expect = {(bed, "mon1", v, TS0 + k, s[v]) for v in ("hr", "spo2", "rr")}
    expect |= {(bed, "nibp", v, TS0 + k, s[v]) for v in ("sbp", "dbp", "map")}
    expect |= {(bed, "thermo", "temp", TS0 + k, s["temp"])}
    expect |= {(bed, "obs", "o2", TS0 + k, float(o["o2"])), (bed, "obs", "avpu", TS0 + k, 1.0)}
    assert got == expect


def test_probe_off_is_a_sensor_off_status_and_ok_when_it_is_back() -> None:
    from simulators.patient import PROBE_FIRST_S, PROBE_OFF_S

    feed = Feed(ward(1, ["artefacts"]))
    first, last = int(PROBE_FIRST_S), int(PROBE_FIRST_S + PROBE_OFF_S)
    mon = {
        k: json.loads(m.payload)
        for k in range(first - 2, last + 2)
        for m in feed.tick(k, TS0 + k)
        if m.topic.endswith("/mon1")
    }
    assert mon[first - 1].keys() == {"ts", "hr", "spo2", "rr"}
    for k in range(first, last):
        assert mon[k] == {"ts": TS0 + k, "status": "sensor_off"}
    assert mon[last]["status"] == "ok" and "spo2" in mon[last]
    assert "status" not in mon[last + 1]
    readings, statuses = decode_all(
        [m for k in range(first - 1, last + 1) for m in feed.tick(k, TS0 + k)], TS0 + last
    )
    assert (("1", "mon1", TS0 + first, frozenset({"sensor_off"}))) in statuses
    assert not any(TS0 + first <= ts < TS0 + last for _b, _d, _v, ts, _x in readings)
    # SenML has no status: the monitor leaves SpO2 out and goes on with HR and RR
    senml = Feed(ward(1, ["artefacts"]), fmt="senml", batch_s=1)
    readings, _ = decode_all(
        [m for k in range(first, last) for m in senml.tick(k, TS0 + k)], TS0 + last
    )
    assert {v for _b, _d, v, _ts, _x in readings} == {"hr", "rr"}


def test_heartbeats_are_status_only_keep_alives() -> None:
    patients = ward(1, ["unplug", "artefacts"])
    feed = Feed(patients)
    (b1, unplug), (b2, art) = patients
    hb = feed.heartbeat(b1, unplug, "thermo", 30, TS0 + 30)
    assert hb is not None and hb.topic == "vitals/icu/1/thermo"
    assert json.loads(hb.payload) == {"ts": TS0 + 30, "status": "ok"}
    _, statuses = decode_all([hb], TS0 + 30)
    assert statuses == [("1", "thermo", TS0 + 30, frozenset())]
    assert feed.heartbeat(b1, unplug, "nibp", 700, TS0 + 700) is None  # unplugged: silent
    off = feed.heartbeat(b2, art, "mon", 245, TS0 + 245)  # probe off: it says so
    assert off is not None and json.loads(off.payload)["status"] == "sensor_off"
    batch = Feed(patients, fmt="batch").heartbeat(b1, unplug, "nibp", 30, TS0 + 30)
    assert batch is not None and json.loads(batch.payload) == [{"ts": TS0 + 30, "status": "ok"}]
    senml = Feed(patients, fmt="senml")
    assert senml.heartbeat(b1, unplug, "nibp", 30, TS0 + 30) is None
    assert senml.heartbeat(b1, unplug, "obs", 30, TS0 + 30) is not None  # obs are objects


# -------------------------------------------------------------------------- clock


def test_event_time_is_never_ahead_of_the_clock() -> None:
    # --speed 60 without --duration: 8 h in the past, fast until caught up, then real time
    lead = clock_lead(60, None, None)
    assert lead == DEFAULT_BACKLOG_S
    assert send_at(14_400, 60, lead) == 240  # 4 h of event time in 4 wall minutes
    caught = lead * 60 / 59
    for k in [0, 1, 600, 14_400, int(caught) - 1, int(caught) + 1, 40_000, 100_000]:
        wall = send_at(k, 60, lead)
        assert k - lead <= wall + 1e-9  # event time (now0 - lead + k) <= wall clock (now0 + wall)
        assert wall == (k / 60 if k <= caught else k - lead)
    # with --duration D: D * speed simulated seconds, the last one stamped "now"
    lead = clock_lead(20, 2.0, None)
    assert lead == 38
    assert [send_at(k, 20, lead) for k in (0, 20, 39, 40)] == [0, 1, 1.95, 2]
    # speed 1 or less: starts now; --start-ago wins
    assert clock_lead(1, None, None) == clock_lead(0.5, 10, None) == 0
    assert send_at(10, 0.5, 0) == 20
    assert clock_lead(60, 10, 3600) == 3600


def test_fast_runs_thin_the_continuous_vitals_only() -> None:
    """50 beds at 60x would be 3000 monitor reports per wall second: every 6th simulated
    second keeps them at 500; NIBP, temperature and observations keep their rounds."""
    assert thinning(DEFAULT_RATES, 50, 60, 500) == 6
    assert thinning(DEFAULT_RATES, 6, 20, 500) == 1  # small runs: every second
    assert thinning(DEFAULT_RATES, 200, 60, 500) == 24
    assert thinning(DEFAULT_RATES, 50, 60, 0) == 1  # no limit
    assert thinning({**DEFAULT_RATES, "hr": 0, "spo2": 0, "rr": 0}, 50, 60, 500) == 1
    assert thinned(parse_rates("hr=2"), 6) == {**DEFAULT_RATES, "hr": 12, "spo2": 6, "rr": 6}
    patients = ward(5, ["sepsis", "normal"])
    fast = Feed(patients, rates=thinned(DEFAULT_RATES, 6))
    full = Feed(patients)
    for k in range(0, 1801):
        got = fast.tick(k, TS0 + k)
        want = full.tick(k, TS0 + k)
        if k % 6:
            assert got == [m for m in want if not m.topic.endswith("/mon1")]
        else:
            assert got == want  # same values at the same simulated seconds


# ----------------------------------------------------------------- MQTT simulator


def sim_cmd(port: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "simulators",
        "mqtt",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_mqtt_simulator_publishes_readings_the_daemon_accepts(
    broker: Broker, subscribe: Callable[[str], Subscriber], protocol: str
) -> None:
    sub = subscribe("vitals/#")
    beds, speed, duration = 3, 20, 2.0
    t0 = time.time()
    proc = subprocess.run(
        sim_cmd(
            broker.port,
            "--beds",
            str(beds),
            "--scenario",
            "desaturation",
            "--speed",
            str(speed),
            "--duration",
            str(duration),
            "--seed",
            "5",
            "--protocol",
            protocol,
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "publishing 3 bed(s) (desaturation 3; seed 5)" in proc.stderr
    ticks = int(duration * speed)
    # per bed: the monitor every simulated second; NIBP, thermometer, obs at the start
    total = beds * (ticks + 3)
    # QoS 1 end to end: everything the simulator had acknowledged reaches the subscriber
    wait_for(lambda: len(sub.messages) >= total, 10, f"{total} messages")
    now = time.time()
    assert len(sub.messages) == total
    ts_by_bed: dict[str, list[float]] = defaultdict(list)
    vitals: Counter[str] = Counter()
    for topic, payload in sub.messages:
        ward_, bed, device = topic.split("/")[1:]
        assert ward_ == "icu"
        decoded = decode(payload, Origin(topic, ward_, bed, device), now, Limits())
        assert decoded.rejections == [], decoded.rejections
        vitals.update(r.vital for r in decoded.readings)
        if device == "mon1":
            assert sorted(r.vital for r in decoded.readings) == ["hr", "rr", "spo2"]
            ts_by_bed[bed].append(json.loads(payload)["ts"])
    assert vitals == {
        "hr": beds * ticks,
        "spo2": beds * ticks,
        "rr": beds * ticks,
        "sbp": beds,
        "dbp": beds,
        "map": beds,
        "temp": beds,
        "o2": beds,
        "avpu": beds,
    }
    assert sorted(ts_by_bed) == ["1", "2", "3"]
    for ts in ts_by_bed.values():
        # one reading per simulated second, never stamped in the future
        assert [round(b - a, 3) for a, b in itertools.pairwise(ts)] == [1.0] * (ticks - 1)
        assert t0 - duration * speed <= ts[0] and ts[-1] <= now


def test_mqtt_simulator_with_a_mix_in_senml_at_speed(
    broker: Broker, subscribe: Callable[[str], Subscriber]
) -> None:
    """--mix assigns scenarios (logged per bed); SenML packs decode; at --speed 60 with
    --start-ago the event time runs 60 s per wall second, behind the clock."""
    sub = subscribe("vitals/#")
    t0 = time.time()
    proc = subprocess.run(
        sim_cmd(
            broker.port,
            "--beds",
            "4",
            "--mix",
            "normal:0.5,sepsis:0.5",
            "--seed",
            "3",
            "--format",
            "senml",
            "--batch",
            "10",
            "--speed",
            "60",
            "--start-ago",
            "3600",
            "--duration",
            "1.5",
            "--ward",
            "w2",
            "--device",
            "m",
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    septic = [
        str(i + 1)
        for i, s in enumerate(assign(3, 4, parse_mix("normal:0.5,sepsis:0.5")))
        if s == "sepsis"
    ]
    assert f"normal 2, sepsis 2 (beds {', '.join(septic)})" in proc.stderr
    wait_for(lambda: len(sub.messages) >= 4 * (9 + 1 + 1 + 1), 10, "the packs")
    now = time.time()
    ts: list[float] = []
    for topic, payload in sub.messages:
        ward_, bed, device = topic.split("/")[1:]
        assert ward_ == "w2" and device in ("m", "nibp", "thermo", "obs")
        d = decode(payload, Origin(topic, ward_, bed, device), now, LIMITS)
        assert d.rejections == []
        ts += [r.ts for r in d.readings if r.vital == "hr" and bed == "1"]
    # 1.5 wall s at 60x: 90 simulated seconds, starting an hour ago
    assert len(ts) == 90 and ts == sorted(ts)
    assert abs(ts[0] - (t0 - 3600)) < 2 and ts[-1] < now - 3400


def test_mqtt_simulator_stops_cleanly_on_sigterm(
    broker: Broker, subscribe: Callable[[str], Subscriber]
) -> None:
    sub = subscribe("vitals/ward7/#")
    proc = subprocess.Popen(
        sim_cmd(broker.port, "--beds", "2", "--ward", "ward7", "--speed", "10"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(sub.messages) >= 4, 10, "first readings")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM: stopping" in err
    assert "event time starts 28800 s ago" in err
    assert "0 confirmed" not in err
    now = time.time()
    assert all(json.loads(p)["ts"] <= now for _t, p in sub.messages)


def test_a_clean_stop_logs_no_error_when_paho_loops_once_more(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """At a stop, paho's network thread may run its loop once more after the DISCONNECT
    closed the socket, before ``loop_stop`` tells it to end: paho then logs the ERROR
    "Client is not connected". Here ``loop_stop`` waits until that has happened, so the
    race goes the bad way every time; nothing at ERROR may reach the log."""
    sim = Simulator(Options(port=broker.port, rates={**DEFAULT_RATES}), ward(1, ["normal"]))
    client = sim._client
    looped = threading.Event()

    def on_log(_c: object, _u: object, _level: int, text: str) -> None:
        if text.startswith("Client is not connected"):
            looped.set()

    real_loop_stop = client.loop_stop

    def loop_stop_late() -> object:
        wait_for(looped.is_set, 10, "paho's loop to run once more without a socket")
        return real_loop_stop()

    client.on_log = on_log
    client.loop_stop = loop_stop_late
    stop = threading.Event()
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(sim.run(stop)))
    runner.start()
    try:
        wait_for(lambda: sim.confirmed > 0, 10, "readings confirmed by the broker")
    finally:
        stop.set()
        runner.join(15)
    assert codes == [0]
    assert looped.is_set()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_mqtt_simulator_stopped_by_a_signal_prints_no_error(
    broker: Broker, subscribe: Callable[[str], Subscriber], sig: signal.Signals
) -> None:
    """``python -m simulators mqtt ...`` stopped with Ctrl-C or SIGTERM, at its real pace
    (where paho's thread is idle in select() and the race above shows most), three times."""
    sub = subscribe("vitals/ward9/#")
    for attempt in range(3):
        before = len(sub.messages)
        proc = subprocess.Popen(
            sim_cmd(broker.port, "--beds", "1", "--ward", "ward9"),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # readings flowing: the signal handlers are installed
            wait_for(lambda: len(sub.messages) > before, 10, "readings")  # noqa: B023
            proc.send_signal(sig)
            _out, err = proc.communicate(timeout=10)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        assert f"{sig.name}: stopping" in err
        assert "ERROR" not in err and "not connected" not in err, f"stop {attempt + 1}:\n{err}"


def test_mqtt_simulator_rides_out_a_broker_restart(
    broker: Broker, subscribe: Callable[[str], Subscriber]
) -> None:
    """Publishing on while the broker is away (paho queues it) is no crash."""
    proc = subprocess.Popen(
        sim_cmd(broker.port, "--beds", "40", "--speed", "60", "--max-rate", "0"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = subscribe("vitals/#")
        wait_for(lambda: len(first.messages) >= 100, 10, "first readings")
        broker.stop()
        time.sleep(1.5)  # thousands of publishes while disconnected
        assert proc.poll() is None
        broker.start()
        again = Subscriber(broker.port, "vitals/#")
        try:
            wait_for(lambda: len(again.messages) >= 100, 15, "readings after the restart")
        finally:
            again.close()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "while disconnected" in err


def test_mqtt_simulator_reports_an_unreachable_broker() -> None:
    proc = subprocess.run(
        sim_cmd(free_port(), "--beds", "1", "--duration", "1", "--connect-timeout", "1"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert "cannot connect" in proc.stderr
