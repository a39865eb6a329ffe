"""The patient model (pure) and the MQTT simulator (a real subprocess on a real mosquitto)."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable

import pytest
from conftest import Broker, Subscriber, free_port, wait_for

from monitor.config import DEFAULT_THRESHOLDS
from monitor.model import VITALS
from monitor.sources.codecs import Limits, Origin, decode
from simulators.patient import (
    DESAT_HOLD_S,
    DESAT_LEAD_S,
    INTEGER_VITALS,
    VITAL_KEYS,
    Patient,
    reading,
    ward,
)

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


@pytest.mark.parametrize("scenario", ["normal", "desaturation"])
def test_patient_is_deterministic_for_a_seed(scenario: str) -> None:
    times = [0, 1, 2.5, 7, 59, 60, 61, 3599, 3600, 3601.75, 86_400]
    a = [Patient(42, scenario).sample(t) for t in times]
    # a fresh patient sampled in another order gives the same values at the same times
    p = Patient(42, scenario)
    b = {t: p.sample(t) for t in reversed(times)}
    assert a == [b[t] for t in times]
    other = [Patient(43, scenario).sample(t) for t in times]
    assert other != a


def test_samples_are_rounded_like_a_monitor_and_plausible() -> None:
    p = Patient(1)
    for t in range(0, 600, 3):
        s = p.sample(t)
        assert list(s) == list(VITAL_KEYS)
        for vital, v in s.items():
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


def test_baselines_come_from_normal_adult_ranges() -> None:
    for seed in range(50):
        b = Patient(seed).baseline
        assert 60 <= b.hr <= 95
        assert 95 <= b.spo2 <= 99
        assert 12 <= b.rr <= 18
        assert 105 <= b.sbp <= 140
        assert 60 <= b.dbp <= 85
        assert 36.4 <= b.temp <= 37.3


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


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="scenario"):
        Patient(1, "sepsis")
    with pytest.raises(ValueError):
        Patient(1).sample(-1)


# ----------------------------------------------------------------- MQTT simulator


def sim_cmd(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "simulators", "mqtt", "--host", "127.0.0.1", "--port",
            str(port), *args]  # fmt: skip


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_mqtt_simulator_publishes_readings_the_daemon_accepts(
    broker: Broker, subscribe: Callable[[str], Subscriber], protocol: str
) -> None:
    sub = subscribe("vitals/#")
    beds, speed, duration = 3, 20, 2.0
    t0 = time.time()
    proc = subprocess.run(
        sim_cmd(broker.port, "--beds", str(beds), "--scenario", "desaturation", "--speed",
                str(speed), "--duration", str(duration), "--seed", "5", "--protocol", protocol),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "publishing 3 bed(s)" in proc.stderr
    ticks = int(duration * speed)
    # QoS 1 end to end: everything the simulator had acknowledged reaches the subscriber
    wait_for(lambda: len(sub.messages) >= beds * ticks, 10, f"{beds * ticks} messages")
    now = time.time()
    assert len(sub.messages) == beds * ticks
    ts_by_bed: dict[str, list[float]] = defaultdict(list)
    for topic, payload in sub.messages:
        ward_, bed, device = topic.split("/")[1:]
        assert (ward_, device) == ("icu", "mon1")
        decoded = decode(payload, Origin(topic, ward_, bed, device), now, Limits())
        assert decoded.rejections == [], decoded.rejections
        assert sorted(r.vital for r in decoded.readings) == sorted(VITAL_KEYS)
        ts_by_bed[bed].append(json.loads(payload)["ts"])
    assert sorted(ts_by_bed) == ["1", "2", "3"]
    for ts in ts_by_bed.values():
        # one reading per simulated second, never stamped in the future
        assert [round(b - a, 3) for a, b in itertools.pairwise(ts)] == [1.0] * (ticks - 1)
        assert t0 - duration * speed <= ts[0] and ts[-1] <= now


def test_mqtt_simulator_stops_cleanly_on_sigterm(
    broker: Broker, subscribe: Callable[[str], Subscriber]
) -> None:
    sub = subscribe("vitals/ward7/#")
    proc = subprocess.Popen(
        sim_cmd(broker.port, "--beds", "2", "--ward", "ward7", "--speed", "10"),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: len(sub.messages) >= 4, 10, "first readings")
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM: stopping" in err
    assert "0 confirmed" not in err


def test_mqtt_simulator_reports_an_unreachable_broker() -> None:
    proc = subprocess.run(
        sim_cmd(free_port(), "--beds", "1", "--duration", "1", "--connect-timeout", "1"),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "cannot connect" in proc.stderr
