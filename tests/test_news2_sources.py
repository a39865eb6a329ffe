"""NEWS2 takes each parameter from one device at a time, never a mix that alternates.

Pure: literal readings through News2Scores (no clock, no I/O).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import News2Config
from monitor.engine.score import News2Scores, source_rank
from monitor.model import Reading

T0 = 1764324000.0
#: every other parameter normal and fresh: only hr decides the score
OTHERS = {"rr": 16, "spo2": 97, "o2": 0, "sbp": 120, "avpu": 0, "temp": 37.0}


def scores(**cfg: float) -> News2Scores:
    s = News2Scores(News2Config(hold_s=0, **cfg))
    for k, v in OTHERS.items():
        s.observe(Reading(T0, "icu", "1", "chart", k, float(v)), settle=False)
    return s


def hr_points(s: News2Scores, device: str, t: float, value: float) -> int | None:
    """Feed one HR; -> the hr component of the score after it (None: no change told)."""
    update, _event = s.observe(Reading(T0 + t, "icu", "1", device, "hr", value))
    return None if update is None or update.payload is None else update.payload["components"]["hr"]


def held_hr(s: News2Scores) -> float:
    latest = s.beds[("icu", "1")].tracker.latest("hr")
    assert latest is not None
    return float(latest[1])


def test_ranks_by_device_kind() -> None:
    assert source_rank("MON1.ecg") < source_rank("chart") < source_rank("MON1.pleth")
    assert source_rank("pleth") < source_rank("nibp") == source_rank("MON1.nibp")
    assert source_rank("abp") == source_rank("ecg") == 0


def test_ecg_and_pleth_interleaved_the_ecg_is_the_source_throughout() -> None:
    """ECG HR 80 (0 points) and a pleth pulse of 115 (2 points) every second: the score
    uses the ECG all along, it does not alternate 0/2/0/2."""
    s = scores()
    told = []
    for t in range(1, 60):
        for device, value in (("MON1.ecg", 80.0), ("MON1.pleth", 115.0)):
            told.append(hr_points(s, device, t, value))
            assert held_hr(s) == 80.0
    assert {p for p in told if p is not None} == {0}


def test_the_pleth_takes_over_when_the_ecg_has_been_silent_for_source_s() -> None:
    s = scores(source_s=300)
    hr_points(s, "MON1.ecg", 1, 80.0)
    assert hr_points(s, "MON1.pleth", 200, 115.0) is None  # the ECG is still recent
    assert held_hr(s) == 80.0
    assert hr_points(s, "MON1.pleth", 302, 116.0) == 2  # ECG silent for 301 s
    assert held_hr(s) == 116.0
    assert hr_points(s, "MON1.ecg", 303, 82.0) == 0  # back: preferred again
    assert held_hr(s) == 82.0


def test_two_devices_of_the_same_kind_do_not_alternate() -> None:
    """Two oximeters (bedside and telemetry) of equal rank: the first stays the source."""
    s = scores()
    hr_points(s, "MON1.pleth", 1, 80.0)
    for t in range(2, 40):
        hr_points(s, "TELE.tele", t, 120.0)
        hr_points(s, "MON1.pleth", t, 80.0)
        assert held_hr(s) == 80.0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["M.ecg", "M.pleth", "chart", "M.nibp"]),
            st.floats(40, 200, allow_nan=False),
        ),
        min_size=2,
        max_size=80,
    )
)
def test_the_source_only_changes_when_the_preferred_one_appears_or_falls_silent(
    feed: list[tuple[str, float]],
) -> None:
    """Readings a second apart from random devices: a switch of source happens only to a
    device of better rank, or from one that has sent nothing for source_s."""
    s = scores(source_s=5)
    last_seen: dict[str, float] = {}
    source = None
    for i, (device, value) in enumerate(feed):
        t = float(i + 1)
        s.observe(Reading(T0 + t, "icu", "1", device, "hr", value))
        last_seen[device] = t
        now = s.beds[("icu", "1")].source["hr"]
        if source is not None and now != source:
            assert source_rank(now) < source_rank(source) or t - last_seen[source] > 5
        source = now
