"""Profiles, per-bed limits, admit/discharge and hot reload of rules.

Pure engine tests feed literal readings; the MQTT tests run the real daemon against a
real mosquitto (admit, discharge, restart, SIGHUP).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from typing import Any

import pytest
from conftest import wait_for

from monitor.config import Config, ConfigError, parse
from monitor.engine import Engine
from monitor.engine.technical import Staleness
from monitor.model import Admission, AlertEvent, BedCommand, Reading

T0 = 1_764_324_000.0


def engine(data: dict[str, Any] | None = None) -> tuple[Engine, Config]:
    cfg = parse(data or {})
    eng = Engine(cfg.rules, sinks=[], profiles=cfg.resolve_profiles()[0], beds=cfg.bed_profiles())
    return eng, cfg


def feed(
    eng: Engine, bed: str, vital: str, values: list[float], start: float = 0.0, device: str = "mon"
) -> list[AlertEvent]:
    readings = [Reading(T0 + start + i, "icu", bed, device, vital, v) for i, v in enumerate(values)]
    return eng.process(readings)


def summary(events: list[AlertEvent]) -> list[tuple[str, str, str]]:
    return [(e.rule, str(e.state), str(e.priority)) for e in events]


# ------------------------------------------------------------------------ config


def test_builtin_profiles_and_config_overrides_merge_per_vital_and_key():
    cfg = parse(
        {
            "rules": {"thresholds": {"hr": {"delay_s": 5}}},
            "profiles": {
                "copd": {"thresholds": {"spo2": {"low": {"warn": 87, "crit": 83}}}},
                "cardiac": {"thresholds": {"hr": {"low": {"warn": 45, "crit": 35}}}},
            },
            "beds": {"icu/7": {"profile": "copd"}, "icu/8": {"profile": "cardiac"}},
        }
    )
    profiles, errors = cfg.resolve_profiles()
    assert errors == []
    assert sorted(profiles) == ["adult", "cardiac", "copd", "opioid"]
    assert profiles["adult"].thresholds == cfg.rules.thresholds
    copd = profiles["copd"]
    assert (copd.thresholds["spo2"].low.warn, copd.thresholds["spo2"].low.crit) == (87, 83)
    assert copd.news2_scale == 2 and profiles["adult"].news2_scale == 1
    cardiac = profiles["cardiac"].thresholds["hr"]
    # the profile replaces hr.low; hr.high and the base's delay_s 5 are kept
    assert (cardiac.low.warn, cardiac.high.warn, cardiac.delay_s) == (45, 120, 5)
    assert profiles["opioid"].thresholds["etco2"].high.crit == 60
    assert cfg.bed_profiles() == {("icu", "7"): "copd", ("icu", "8"): "cardiac"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"beds": {"icu/7": {"profile": "kids"}}},
            "beds.icu/7.profile: unknown profile 'kids' (known: adult, copd, opioid)",
        ),
        (
            {"profiles": {"copd": {"thresholds": {"spo2": {"low": {"warn": 80, "crit": 85}}}}}},
            "profiles.copd.thresholds.spo2: low.crit (85.0) must be <= low.warn (80.0)",
        ),
        (
            {"profiles": {"x": {"thresholds": {"hr": {"delay_s": -1}}}}},
            "profiles.x.thresholds.hr.delay_s: Input should be greater than or equal to 0",
        ),
        ({"profiles": {"x": {"news2_scale": 3}}}, "profiles.x.news2_scale: Input should be 1 or 2"),
        (
            {"profiles": {"x": {"thresholds": {"hr": {"delay_s": 900}}}}},
            "profiles.x.thresholds: rules.window_s (300) must cover the longest delay_s (900) "
            "plus rules.max_gap_s (30)",
        ),
    ],
)
def test_bad_profiles_are_reported_with_their_key_path(data, expected):
    with pytest.raises(ConfigError) as exc:
        parse(data)
    assert expected in exc.value.errors


# ------------------------------------------------------------------- engine: profiles


def test_bed_profile_sets_its_limits_and_news2_scale():
    eng, _ = engine({"beds": {"icu/7": {"profile": "copd"}}})
    # SpO2 89 for 30 s: adult (warn < 90) alarms, copd (warn < 88) does not
    assert summary(feed(eng, "1", "spo2", [89] * 30)) == [("spo2.low", "active", "medium")]
    assert feed(eng, "7", "spo2", [89] * 30) == []
    # NEWS2 SpO2 scale 2 on the copd bed: 89 % scores 0 (scale 1: 3)
    assert eng.scores.beds[("icu", "7")].tracker.scale == 2
    assert eng.scores.beds[("icu", "1")].tracker.scale == 1


def test_admit_with_profile_rebinds_series_keeping_window_and_matching_alerts():
    eng, _ = engine()
    raised = feed(eng, "3", "spo2", [86] * 30)  # adult: < 90 warn, delay 15 s
    assert summary(raised) == [("spo2.low", "active", "medium")]
    alert_id = raised[0].id
    eng.admit(Admission("icu", "3", "p-1", "opioid", T0 + 30, "kim"))  # warn 92, crit 88
    assert eng.bed_profile[("icu", "3")] == "opioid"
    # same rule name: the same alert goes on (no reset); the window kept 30 s of 86,
    # so crit (< 88 for 15 s) is reached on the next reading
    nxt = feed(eng, "3", "spo2", [86], start=30)
    assert [(e.id, str(e.priority)) for e in nxt] == [(alert_id, "high")]
    # alerts raised from now on carry the admitted patient (readings name none)
    assert [e.patient for e in feed(eng, "3", "hr", [150] * 12)] == ["p-1"]


def test_readmitting_another_patient_needs_a_discharge_and_unknown_profiles_are_refused():
    eng, _ = engine()
    eng.admit(Admission("icu", "3", "p-1", None, T0, "kim"))
    with pytest.raises(ValueError, match="occupied by another patient"):
        eng.check_admit(Admission("icu", "3", "p-2", None, T0, "kim"))
    with pytest.raises(ValueError, match="unknown profile 'kids'"):
        eng.check_admit(Admission("icu", "3", "p-1", "kids", T0, "kim"))
    eng.check_admit(Admission("icu", "3", "p-1", "copd", T0, "kim"))  # same patient: fine


def test_discharge_resolves_every_alert_of_the_bed_and_resets_its_windows():
    eng, _ = engine()
    eng.staleness = Staleness(30, [], time.time())
    eng.admit(Admission("icu", "4", "p-9", None, T0, "kim"))
    events = feed(eng, "4", "spo2", [80] * 20) + feed(eng, "4", "hr", [150] * 20)
    events += feed(eng, "5", "spo2", [80] * 20)  # another bed: untouched
    assert {(e.bed, e.rule) for e in events} == {
        ("4", "spo2.low"),
        ("4", "hr.high"),
        ("5", "spo2.low"),
    }
    closed = eng.apply(BedCommand("discharge", Admission("icu", "4", "p-9", None, T0 + 60, "kim")))
    assert sorted((e.rule, str(e.state)) for e in closed) == [
        ("hr.high", "resolved"),
        ("spo2.low", "resolved"),
    ]
    assert all(e.message == "patient discharged: alarm closed" for e in closed)
    assert not [k for k in eng.series if k.bed == "4"]
    assert ("icu", "4") not in eng.admissions
    assert [k for k in eng.series if k.bed == "5"]
    # a new stay starts from an empty window: after a normal first reading (a new series
    # judges its first reading on its own), 10 s of 80 is not yet 15 s
    assert feed(eng, "4", "spo2", [97] + [80] * 10, start=100) == []


def test_discharge_resolves_the_score_alert_and_clears_the_score():
    eng, _ = engine()
    vitals = {"rr": 30, "spo2": 90, "o2": 1, "sbp": 95, "hr": 135, "avpu": 0, "temp": 39.5}
    readings = [Reading(T0, "icu", "6", "mon", v, x) for v, x in vitals.items()]
    events = eng.process(readings)
    assert [(e.rule, str(e.priority)) for e in events if e.rule == "news2"][-1] == ("news2", "high")
    eng._score_updates.clear()
    closed = eng.discharge("icu", "6", T0 + 10)
    assert [(e.rule, str(e.state)) for e in closed if e.rule == "news2"] == [("news2", "resolved")]
    assert [(u.bed, u.payload) for u in eng._score_updates] == [("6", None)]


# ------------------------------------------------------------------- engine: reload


def test_reconfigure_keeps_active_alerts_and_applies_new_limits_to_the_next_reading():
    eng, _ = engine()
    hr = feed(eng, "2", "hr", [150] * 20)
    assert summary(hr) == [("hr.high", "active", "high")]
    spo2 = feed(eng, "2", "spo2", [87] * 20)  # < 90 warn, not < 85 crit
    assert summary(spo2) == [("spo2.low", "active", "medium")]
    new = parse({"rules": {"thresholds": {"spo2": {"low": {"warn": 90, "crit": 88}}}}})
    closed = eng.reconfigure(new.rules, new.resolve_profiles()[0], new.bed_profiles())
    assert closed == []  # every rule still exists: nothing reset
    nxt = feed(eng, "2", "spo2", [87], start=20) + feed(eng, "2", "hr", [150], start=20)
    # spo2 87 < the new crit 88 (it had been medium under crit 85): the same alert, now high
    assert summary(nxt) == [("spo2.low", "active", "high")]
    assert nxt[0].id == spo2[0].id


def test_reconfigure_resolves_alerts_of_rules_that_are_gone():
    eng, _ = engine()
    raised = feed(eng, "2", "hr", [150] * 20)
    new = parse({"rules": {"thresholds": {"hr": None}}})
    closed = eng.reconfigure(new.rules, new.resolve_profiles()[0], new.bed_profiles())
    assert [(e.id, str(e.state)) for e in closed] == [(raised[0].id, "resolved")]
    assert "no longer applies" in closed[0].message
    assert feed(eng, "2", "hr", [150] * 5, start=20) == []


# ------------------------------------------------------------------ over MQTT


def mosquitto_pub(port: int, topic: str, doc: dict[str, Any]) -> None:
    subprocess.run(
        ["mosquitto_pub", "-p", str(port), "-q", "1", "-t", topic, "-m", json.dumps(doc)],
        check=True,
        timeout=10,
    )


def test_admitted_silent_bed_alarms_admission_survives_restart_discharge_closes(
    daemon, subscribe, publisher, broker, tmp_path
):
    """1. admit icu/30 (copd) with mosquitto_pub; it never sends: device.stale after
    stale_after_s 2; 2. restart: the admission is kept; 3. a discharge naming another
    patient is refused; 4. the discharge closes the bed's alarms; all audited."""
    d = daemon("  stale_after_s: 2\n")
    alerts = subscribe("alerts/#")
    dead = subscribe("vitalmon/deadletter")
    t_admit = time.monotonic()
    mosquitto_pub(
        broker.port,
        "vitalmon/cmd/admit",
        {"ward": "icu", "bed": "30", "patient": "p-30", "profile": "copd", "by": "kim"},
    )
    stale = wait_for(lambda: [a for a in alerts.json() if a["bed"] == "30"], 10, "stale alarm")
    assert time.monotonic() - t_admit >= 2
    assert [(a["rule"], a["kind"], a["state"]) for a in stale] == [
        ("device.stale", "technical", "active")
    ]
    assert "bed expected but never sent data" in stale[0]["message"]
    assert stale[0]["patient"] == "p-30"  # the admitted patient, though no reading named one

    code, _ = d.terminate()
    assert code == 0
    d.start()
    assert "1 admitted bed(s) carried over" in d.log()
    # the bed is expected again after the restart: silent, it alarms again
    wait_for(
        lambda: len([a for a in alerts.json() if a["bed"] == "30" and a["state"] == "active"]) >= 2,
        10,
        "stale again",
    )

    mosquitto_pub(
        broker.port, "vitalmon/cmd/discharge", {"ward": "icu", "bed": "30", "patient": "p-31"}
    )
    letter = wait_for(dead.json, 5, "wrong patient refused")[0]
    assert letter["reason"] == "wrong_patient"
    mosquitto_pub(
        broker.port,
        "vitalmon/cmd/discharge",
        {"ward": "icu", "bed": "30", "patient": "p-30", "by": "kim"},
    )
    closed = wait_for(
        lambda: [
            a
            for a in alerts.json()
            if a["bed"] == "30" and a["state"] == "resolved" and "discharged" in a["message"]
        ],
        5,
        "discharge closes the alarm",
    )
    assert closed[0]["rule"] == "device.stale"
    conn = sqlite3.connect(tmp_path / "vitals.db")
    try:
        assert conn.execute("SELECT count(*) FROM beds").fetchone()[0] == 0

        def audited() -> list[str] | None:
            rows = conn.execute("SELECT action FROM audit WHERE bed = '30' ORDER BY at")
            got = [r[0] for r in rows]
            # the discharge's audit row may be committed after its alert event is
            # published: wait for it, not for the first row
            return got if "discharge" in got else None

        actions = wait_for(audited, 5, "the discharge audited")
        assert actions == ["admit", "discharge"]
    finally:
        conn.close()


def test_bad_admissions_are_dead_lettered(daemon, subscribe, broker):
    daemon()
    dead = subscribe("vitalmon/deadletter")
    mosquitto_pub(broker.port, "vitalmon/cmd/admit", {"ward": "icu", "bed": "1"})
    mosquitto_pub(
        broker.port,
        "vitalmon/cmd/admit",
        {"ward": "icu", "bed": "1", "patient": "p", "profile": "kids"},
    )
    mosquitto_pub(broker.port, "vitalmon/cmd/admit", {"ward": "icu", "bed": "1", "patient": "p"})
    mosquitto_pub(broker.port, "vitalmon/cmd/admit", {"ward": "icu", "bed": "1", "patient": "q"})
    letters = wait_for(lambda: len(dead.json()) >= 3 and dead.json(), 5, "three dead letters")
    assert [x["reason"] for x in letters] == ["bad_command"] * 3
    assert "'patient' must be a non-empty string" in letters[0]["detail"]
    assert "unknown profile 'kids'" in letters[1]["detail"]
    assert "occupied by another patient" in letters[2]["detail"]


def test_sighup_applies_new_limits_without_resetting_active_alerts(daemon, subscribe, publisher):
    """1. hr and spo2 alerts active (spo2 87: medium under crit 85); 2. the config's SpO2
    crit becomes 88 and SIGHUP: nothing resolves, the next spo2 reading makes the same
    alert high; another bed alarms on the new limit; 3. an invalid config is refused,
    every error logged, and the running limits stay."""
    d = daemon()
    alerts = subscribe("alerts/#")
    now = time.time()
    for i in range(20):
        publisher.publish("vitals/icu/2/mon", {"ts": now - 40 + i, "hr": 150, "spo2": 87})
    first = wait_for(lambda: len(alerts.json()) >= 2 and alerts.json(), 5, "two alerts")
    by_rule = {a["rule"]: a for a in first}
    assert (by_rule["spo2.low"]["priority"], by_rule["hr.high"]["priority"]) == ("medium", "high")

    d.config.write_text(d.config.read_text().replace("crit: 85", "crit: 88"))
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in d.log(), 5, "reload")
    publisher.publish("vitals/icu/2/mon", {"ts": now - 20, "hr": 150, "spo2": 87})
    nxt = wait_for(lambda: alerts.json()[2:], 5, "the next alert")
    assert [(a["id"], a["rule"], a["priority"], a["state"]) for a in nxt] == [
        (by_rule["spo2.low"]["id"], "spo2.low", "high", "active")
    ]
    for i in range(20):  # a new bed: 87 is now beyond crit
        publisher.publish("vitals/icu/9/mon", {"ts": now - 40 + i, "spo2": 87})
    bed9 = wait_for(lambda: [a for a in alerts.json() if a["bed"] == "9"], 5, "bed 9")
    assert [(a["priority"], a["limit"]) for a in bed9] == [("high", 88)]
    assert not [a for a in alerts.json() if a["state"] == "resolved"]

    good = d.config.read_text()
    d.config.write_text(good.replace("crit: 88", "crit: 95").replace("qos: 1", "qos: 7", 1))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in d.log(), 5, "refusal")
    log = d.log()
    assert "rules.thresholds.spo2: low.crit (95.0) must be <= low.warn (90.0)" in log
    assert "sources[0].qos: Input should be 0, 1 or 2" in log
    for i in range(20):  # still the 88 limit: 89 raises medium, not high
        publisher.publish("vitals/icu/10/mon", {"ts": now - 40 + i, "spo2": 89})
    bed10 = wait_for(lambda: [a for a in alerts.json() if a["bed"] == "10"], 5, "bed 10")
    assert [(a["priority"], a["limit"]) for a in bed10] == [("medium", 90)]
    assert d.proc.poll() is None
