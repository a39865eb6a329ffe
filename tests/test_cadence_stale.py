"""device.stale from the device's own cadence: pure, injected times (``Staleness``)."""

from __future__ import annotations

import time

from conftest import free_port, wait_for

from monitor.config import RulesConfig
from monitor.engine.technical import Staleness
from monitor.model import AlertState

WARD, BED = "icu", "7"


def staleness(expected: list[tuple[str, str]] | None = None) -> Staleness:
    r = RulesConfig()  # the defaults: 30 s, 3 intervals, 3600 s for an unknown interval
    assert (r.stale_after_s, r.stale_factor, r.stale_unknown_s) == (30, 3, 3600)
    return Staleness(r.stale_after_s, expected or [], 0.0, r.stale_factor, r.stale_unknown_s)


def stale(s: Staleness, now: float) -> list[tuple[str, str, str]]:
    return [(e.bed, e.device, e.rule) for e in s.check(now)]


def test_a_cuff_every_15_minutes_is_stale_after_three_intervals():
    s = staleness()
    s.seen(WARD, BED, "cuff", 0.0, 0.0)
    s.seen(WARD, BED, "cuff", 900.0, 900.0)
    assert s.limit((WARD, BED, "cuff")) == 2700
    assert stale(s, 900 + 30) == []
    assert stale(s, 900 + 1800) == []
    assert stale(s, 900 + 2699) == []
    assert stale(s, 900 + 2700) == [(BED, "cuff", "device.stale")]
    assert stale(s, 900 + 5000) == []  # raised once
    (back,) = s.seen(WARD, BED, "cuff", 6000.0, 6000.0)
    assert (back.state, back.seq) == (AlertState.RESOLVED, 2)


def test_a_1_hz_device_is_stale_after_stale_after_s():
    s = staleness()
    for t in range(10):
        s.seen(WARD, BED, "ox", float(t), float(t))
    assert s.limit((WARD, BED, "ox")) == 30  # 3 x 1 s is shorter: stale_after_s wins
    assert stale(s, 9 + 29) == []
    assert stale(s, 9 + 30) == [(BED, "ox", "device.stale")]


def test_a_device_seen_once_waits_stale_unknown_s_unless_it_is_a_stream():
    """One reading tells no interval: a spot check or a charting system is not stale
    30 s later; a device declared continuous (a stream that stopped) is."""
    s = staleness()
    s.seen(WARD, BED, "spot", 0.0, 0.0)
    s.seen(WARD, BED, "mon", 0.0, 0.0, "continuous")
    s.seen(WARD, BED, "status-only", 0.0)  # statuses only (no reading): stale_after_s
    assert stale(s, 30) == [(BED, "mon", "device.stale"), (BED, "status-only", "device.stale")]
    assert stale(s, 3599) == []
    assert stale(s, 3600) == [(BED, "spot", "device.stale")]


def test_once_its_interval_is_known_an_intermittent_device_follows_it():
    s = staleness()
    s.seen(WARD, BED, "spot", 0.0, 0.0, "intermittent")
    s.seen(WARD, BED, "spot", 600.0, 600.0, "intermittent")
    assert s.limit((WARD, BED, "spot")) == 1800
    assert stale(s, 600 + 1799) == []
    assert stale(s, 600 + 1800) == [(BED, "spot", "device.stale")]


def test_an_expected_bed_that_never_sent_anything_still_alarms_after_stale_after_s():
    s = staleness([("icu", "9")])
    s.seen(WARD, BED, "cuff", 0.0, 0.0)  # another bed's slow device changes nothing
    s.seen(WARD, BED, "cuff", 10.0, 900.0)
    assert stale(s, 29) == []
    assert ("9", "*", "device.stale") in stale(s, 30)


def test_the_cadence_is_learned_from_event_time_not_arrival():
    """A backlog arriving in one burst (same arrival, stamps 900 s apart): the device's
    interval is still 900 s, so it is stale after 2700 s, not 30 s."""
    s = staleness()
    for i in range(4):
        s.seen(WARD, BED, "cuff", 5000.0, 1000.0 + 900 * i)
    assert s.limit((WARD, BED, "cuff")) == 2700
    assert stale(s, 5000 + 30) == []
    assert stale(s, 5000 + 2699) == []
    assert stale(s, 5000 + 2700) == [(BED, "cuff", "device.stale")]
    # and arrivals every second of readings stamped 900 s apart do not shrink it
    s = staleness()
    for i in range(6):
        s.seen(WARD, BED, "cuff", 5000.0 + i, 900.0 * i)
    assert s.limit((WARD, BED, "cuff")) == 2700


def test_repeats_and_out_of_order_readings_say_nothing_about_the_cadence():
    s = staleness()
    for ts in (0.0, 900.0, 900.0, 450.0, 1800.0):  # a repeat and an older one between
        s.seen(WARD, BED, "cuff", ts, ts)
    assert s.limit((WARD, BED, "cuff")) == 2700
    # a status (no event time) is a sign of life but no interval
    s.seen(WARD, BED, "cuff", 1810.0)
    assert s.limit((WARD, BED, "cuff")) == 2700
    assert stale(s, 1810 + 2699) == []
    assert stale(s, 1810 + 2700) == [(BED, "cuff", "device.stale")]


# ------------------------------------------------------------- end to end, over MLLP


def test_a_cuff_over_hl7_raises_no_stale_a_silent_monitor_does(daemon, subscribe):
    """``stale_after_s: 2``: 1. a cuff (NBPs/NBPd/NBPm, an HL7 cuff channel: intermittent)
    sends one cycle, then the next one stamped 15 min later; 2. a monitor sends HR at
    1 s cadence, then stops; 3. the monitor's silence raises device.stale within seconds,
    while the cuff, silent longer, is judged on its own cadence (unknown: stale_unknown_s;
    then 3 x 900 s) and raises nothing."""
    from test_device_alarms import oru, send

    mllp = free_port()
    d = daemon(start=False)
    d.config.write_text(
        d.config.read_text()
        .replace(
            "sources:\n",
            f"sources:\n  - type: hl7-mllp\n    listen: 127.0.0.1:{mllp}\n    ward: icu\n",
        )
        .replace("rules:\n", "rules:\n  stale_after_s: 2\n")
    )
    d.start()
    wait_for(lambda: "listening on" in d.log(), 10, "the MLLP listener")
    alerts = subscribe("alerts/#")
    t = time.time() - 900
    nbp = (
        "OBX|1|NM|0002-4a05^NBPs^MDIL||118|0004-0f20^mmHg^MDIL|||||F",
        "OBX|2|NM|0002-4a06^NBPd^MDIL||71|0004-0f20^mmHg^MDIL|||||F",
        "OBX|3|NM|0002-4a07^NBPm^MDIL||88|0004-0f20^mmHg^MDIL|||||F",
    )
    cuff = [
        oru(*nbp, at=t, control="C1", pv1="icu^^8", sender="CUFF8"),
        oru(*nbp, at=t + 900, control="C2", pv1="icu^^8", sender="CUFF8"),
    ]
    assert [a[1] for a in send(mllp, *cuff)] == ["AA", "AA"]
    hr = "OBX|1|NM|0002-4182^HR^MDIL||72|0004-0aa0^bpm^MDIL|||||F"
    now = time.time()
    monitor = [
        oru(hr, at=now - 5 + i, control=f"H{i}", pv1="icu^^9", sender="MON9") for i in range(5)
    ]
    assert [a[1] for a in send(mllp, *monitor)] == ["AA"] * 5
    stale = wait_for(
        lambda: [a for a in alerts.json() if a["rule"] == "device.stale"],
        15,
        "the monitor's device.stale",
    )
    assert {a["bed"] for a in stale} == {"9"}
    assert not [a for a in alerts.json() if a["bed"] == "8"]
