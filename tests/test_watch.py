"""``vitalmon watch``: the ward model on literal messages, and the Textual app in an
80x24 headless terminal against a real mosquitto (retained state for a late start, live
readings, the ack key publishing the command)."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Broker, Publisher, Subscriber, wait_for
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rich.cells import cell_len

from monitor import config as config_mod
from monitor.model import iso
from monitor.views.ward import BUCKET_S, RECENT_BUCKETS, BedView, Ward
from monitor.views.watch import PRIORITY_STYLE, TILE_W, WatchApp, detail, grid, tile

NOW = time.time()
T0 = 1764324000.0  # a multiple of BUCKET_S


def alert(
    ident: str, bed: str, priority: str, rule: str, kind: str = "threshold", state: str = "active"
) -> dict[str, object]:
    return {
        "id": ident,
        "ward": "icu",
        "bed": bed,
        "rule": rule,
        "kind": kind,
        "priority": priority,
        "state": state,
        "message": f"{rule} message",
        "vital": rule.partition(".")[0],
        "at": "2026-11-28T10:00:00Z",
    }


async def poll(pilot: Any, pred: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Let the app run until ``pred()`` holds, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)


def config(tmp_path: Path, port: int) -> config_mod.Config:
    p = tmp_path / "vitalmon.yaml"
    p.write_text(f"mqtt: {{host: 127.0.0.1, port: {port}}}\n")
    return config_mod.load(str(p))


def test_ward_model_sorts_by_severity_and_follows_alert_events(tmp_path):
    w = Ward(config(tmp_path, 1883))
    assert w.feed("vitals/icu/10/mon", json.dumps({"ts": NOW, "hr": 80}).encode(), NOW)
    assert w.feed("vitals/icu/2/mon", json.dumps({"ts": NOW, "hr": 70}).encode(), NOW)
    assert w.feed("vitals/icu/2/mon", json.dumps({"ts": NOW + 60, "hr": 90}).encode(), NOW + 60)
    state = [
        alert("s1", "3", "medium", "spo2.low"),
        alert("t1", "3", "low", "device.stale", kind="technical"),
    ]
    assert w.feed("state/icu/3/alerts", json.dumps(state).encode(), NOW)
    assert w.feed("scores/icu/10", json.dumps({"news2": 6}).encode(), NOW)
    assert w.feed("alerts/icu/4", json.dumps(alert("h1", "4", "high", "hr.high")).encode(), NOW)
    assert w.feed("other/topic", b"{}", NOW) is None
    assert w.feed("vitals/icu/5/mon", b"not json", NOW) is None
    order = [b.bed for b in w.sorted_beds()]
    assert order == ["4", "3", "10", "2"]  # high, medium, then NEWS2 6 before none; 2 < 10
    assert w.beds[("icu", "2")].trend("hr") == "↑" and w.beds[("icu", "10")].trend("hr") == " "
    assert [a["id"] for a in w.beds[("icu", "3")].technical()] == ["t1"]
    resolved = alert("h1", "4", "high", "hr.high", state="resolved")
    w.feed("alerts/icu/4", json.dumps(resolved).encode(), NOW)
    assert w.beds[("icu", "4")].severity() == 4
    t = tile(w.beds[("icu", "3")], selected=False)
    assert t.plain.splitlines()[2].startswith("!MEDIUM spo2.low")
    assert any(str(s.style) == PRIORITY_STYLE["medium"] for s in t.spans)
    lines = grid(w.sorted_beds(), 0, 80).plain.splitlines()
    assert len(lines) == 6 and all(len(ln) <= 80 for ln in lines)  # 3 across, 80 columns


def test_watch_in_80x24_shows_the_ward_and_the_ack_key_sends_the_command(
    broker: Broker, publisher: Publisher, tmp_path: Path
):
    # retained before the app starts: what a late start must show at once
    publisher.client.publish(
        "state/icu/6/alerts",
        json.dumps([alert("a6", "6", "high", "spo2.low")]),
        qos=1,
        retain=True,
    ).wait_for_publish(10)
    publisher.client.publish(
        "scores/icu/6", json.dumps({"news2": 7, "components": {"spo2": 3}}), qos=1, retain=True
    ).wait_for_publish(10)
    acks = Subscriber(broker.port, "vitalmon/cmd/#")
    app = WatchApp(config(tmp_path, broker.port), operator="nurse.kim")

    async def main() -> str:
        async with app.run_test(size=(80, 24)) as pilot:
            until = functools.partial(poll, pilot)

            await until(lambda: ("icu", "6") in app.ward.beds, "the retained state")
            for bed in range(1, 5):
                body = {"ts": time.time(), "hr": 70 + bed, "spo2": 97}
                await asyncio.to_thread(publisher.publish, f"vitals/icu/{bed}/mon", body)
            await until(lambda: len(app.ward.beds) == 5, "the live readings")

            def shown() -> str:
                return app.export_screenshot().replace("&#160;", " ")

            await until(lambda: "HR 74" in shown(), "the screen to show bed 4")
            screen = shown()
            await pilot.press("a")
            await asyncio.to_thread(wait_for, lambda: acks.json("vitalmon/cmd/ack"), 10, "ack")
            return screen

    screen = asyncio.run(main())
    acks.close()
    assert app.beds()[0].bed == "6"  # the alerting bed first
    text = screen
    for needle in ("icu/6", "NEWS2 7", "HIGH spo2.low", "icu/1", "icu/4", "HR 74"):
        assert needle in text, needle
    assert acks.json("vitalmon/cmd/ack") == [{"id": "a6", "by": "nurse.kim"}]


def test_selection_follows_the_most_severe_bed_until_a_key_moves_it(
    broker: Broker, publisher: Publisher, tmp_path: Path
):
    """Started on a quiet ward, the selection moves to the bed that alarms, so the ack
    key acknowledges that alert; once a key has moved the selection it stays on the
    chosen bed; Home follows again."""
    acks = Subscriber(broker.port, "vitalmon/cmd/#")
    app = WatchApp(config(tmp_path, broker.port), operator="nurse.kim")

    async def main() -> list[str]:
        async with app.run_test(size=(80, 24)) as pilot:
            until = functools.partial(poll, pilot)

            def selected() -> str:
                b = app.current()
                return b.bed if b else ""

            def publish(topic: str, body: object) -> Any:
                return asyncio.to_thread(publisher.publish, topic, body)

            seen = []
            # retained, so it is there once the app has subscribed: then live readings
            await asyncio.to_thread(
                lambda: publisher.client.publish(
                    "scores/icu/1", json.dumps({"news2": 0}), qos=1, retain=True
                ).wait_for_publish(10)
            )
            await until(lambda: ("icu", "1") in app.ward.beds, "the retained score")
            for bed in range(1, 7):
                await publish(f"vitals/icu/{bed}/mon", {"ts": time.time(), "hr": 70, "spo2": 97})
            await until(lambda: len(app.ward.beds) == 6, "six beds")
            seen.append(selected())  # bed 1: all quiet, natural order
            await publish("alerts/icu/6", alert("d6", "6", "high", "spo2.low"))
            await until(lambda: selected() == "6", "the selection to follow bed 6")
            await pilot.press("a")
            await asyncio.to_thread(wait_for, lambda: acks.json("vitalmon/cmd/ack"), 10, "ack")
            await pilot.press("right")  # -> the second tile; following stops
            seen.append(selected())
            await publish("alerts/icu/3", alert("h3", "3", "high", "hr.high"))
            await until(lambda: app.beds()[0].bed == "3", "bed 3 on top")
            seen.append(selected())  # still the bed the nurse chose
            await pilot.press("home")
            await until(lambda: selected() == "3", "Home to follow again")
            return seen

    seen = asyncio.run(main())
    acks.close()
    assert acks.json("vitalmon/cmd/ack") == [{"id": "d6", "by": "nurse.kim"}]
    assert seen == ["1", "1", "1"]


def test_sixty_beds_scroll_to_the_selected_one(broker: Broker, tmp_path: Path):
    """64 beds in 80x24 (three across, 22 rows of tiles): moving the selection down to
    the last bed scrolls it into view, and the detail pane follows it."""
    app = WatchApp(config(tmp_path, broker.port), operator="nurse.kim")

    async def main() -> tuple[str, str]:
        async with app.run_test(size=(80, 24)) as pilot:
            now = time.time()
            for bed in range(1, 65):
                body = json.dumps({"ts": now, "hr": 60 + bed % 30, "spo2": 97}).encode()
                app.ward.feed(f"vitals/icu/{bed}/mon", body, now)
            app._refresh(force=True)
            first = app.export_screenshot().replace("&#160;", " ")
            for _ in range(21 + 2):  # a row at a time (three across): bed 64 is 21
                await pilot.press("down")  # rows down; two more stay on the last bed
            deadline = time.monotonic() + 10
            while "icu/64 " not in (shot := app.export_screenshot().replace("&#160;", " ")):
                assert time.monotonic() < deadline, "bed 64 never scrolled into view"
                await pilot.pause(0.05)
            return first, shot

    first, last = asyncio.run(main())
    assert "icu/1 " in first and "icu/64 " not in first  # below the fold at first
    assert app.current() is not None and app.current().bed == "64"
    assert "icu/1 " not in last.split("icu/64 ")[0]  # the top rows scrolled away


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1500), st.floats(50, 150)), min_size=1, max_size=80))
def test_recent_values_are_bucket_means_in_any_arrival_order(pts):
    """Readings in any order (late ones included): the detail pane's recent values are
    the mean of the readings in each BUCKET_S bucket of the last RECENT_BUCKETS up to
    the bed's newest reading, and the range their extremes."""
    b = BedView("icu", "1")
    for ts, v in pts:
        b.add("hr", T0 + ts, v)
    end = (T0 + max(ts for ts, _ in pts)) // BUCKET_S
    want = []
    for k in range(RECENT_BUCKETS - 1, -1, -1):
        vals = [v for ts, v in pts if (T0 + ts) // BUCKET_S == end - k]
        want.append(float(np.mean(vals)) if vals else None)
    got = b.recent_values("hr")
    assert [g is None for g in got] == [w is None for w in want]
    assert all(g is None or abs(g - w) < 1e-9 for g, w in zip(got, want, strict=True))
    spark, lo, hi = b.sparkline("hr")
    in_span = [v for ts, v in pts if (T0 + ts) // BUCKET_S > end - RECENT_BUCKETS]
    assert (lo, hi) == (min(in_span), max(in_span))
    assert len(spark) == RECENT_BUCKETS
    assert [c == " " for c in spark] == [w is None for w in want]


def test_detail_pane_shows_each_vital_with_its_last_ten_minutes():
    b = BedView("icu", "6")
    for i in range(600):  # 10 min of SpO2 at 1 Hz: 97 %, then a fall to 80 % at 6 min
        b.add("spo2", T0 + i, 97.0 if i < 360 else 80.0)
        b.add("hr", T0 + i, 80.0 + i / 60)
    b.add("sbp", T0 + 100, 121.0)  # one cuff measurement, 8 min before the newest
    lines = detail(b, 80).plain.splitlines()
    assert lines[0].startswith("icu/6") and "last 10 min" in lines[0]
    assert all(len(ln) <= 80 for ln in lines)
    hr_spo2, sbp = lines[1], lines[2]  # two vitals a line, in SHOWN order
    assert hr_spo2.startswith("HR") and "SpO2   80→" in hr_spo2
    spark = hr_spo2.split("SpO2   80→ ")[1][:RECENT_BUCKETS]
    assert spark == "█" * 12 + "▁" * 8  # 12 buckets of 30 s at 97, 8 at 80
    assert hr_spo2.endswith("80-97")
    assert sbp.startswith("SBP   121 ") and sbp.endswith(f"@{iso(T0 + 100)[11:16]}")
    narrow = detail(b, 50).plain.splitlines()
    assert [ln[:4] for ln in narrow[1:4]] == ["HR  ", "SpO2", "SBP "]


# --------------------------------------------------------------- layout (issue 15, C18)

LONG_WARD = "intensive-care-north-wing"
#: The tiles across each terminal width: the columns beside the scrollbar (2) hold them.
ACROSS = {80: 3, 60: 2, 120: 4}


def long_bed(i: int) -> str:
    """Bed names, every third one longer than any tile."""
    return f"bed-{i:03d}" + ("-in-the-side-room-by-the-nurses-station" if i % 3 == 0 else "")


def screen_text(app: WatchApp) -> list[str]:
    """The terminal's lines as a user sees them (the compositor's output, as in a
    screenshot)."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def tile_lines(app: WatchApp) -> list[str]:
    """The lines of the screen the tiles cover (scrollbar columns and the space below
    the last row left off)."""
    area = app.query_one("#grid").scrollable_content_region
    area = area.intersection(app.query_one("#tiles").region)
    return [ln[area.x : area.right] for ln in screen_text(app)[area.y : area.bottom]]


def check_tiles(app: WatchApp, width: int) -> list[list[str]]:
    """Assert that the tile area is whole tiles of three lines -- a head line per row of
    tiles (``bed-NNN ... NEWS2``), the vitals (``HR``), the alert line -- and no wrapped
    fragment between them; -> the bed numbers of each head line on screen."""
    lines = tile_lines(app)
    kinds = [
        "head" if "NEWS2" in ln else "vitals" if ln.startswith("HR ") else "alert" for ln in lines
    ]
    cycle = ["head", "vitals", "alert"]
    assert "head" in kinds, "\n".join(lines)
    for i in range(1, len(kinds)):
        want = cycle[(cycle.index(kinds[i - 1]) + 1) % 3]
        assert kinds[i] == want, f"line {i} is not a tile's {want} line:\n" + "\n".join(lines)
    rows = []
    for ln, kind in zip(lines, kinds, strict=True):
        if kind == "head":
            beds = re.findall(r"bed-(\d{3})", ln)
            assert len(beds) == ln.count("NEWS2 -"), ln  # every tile's head, whole
            rows.append(beds)
    n = len(app.ward.beds)
    across = min(ACROSS[width], n)
    assert all(len(r) == across for r in rows[:-1]) and 1 <= len(rows[-1]) <= across, rows
    return rows


@pytest.mark.parametrize("size", [(80, 24), (60, 20), (120, 40)])
def test_tiles_fit_beside_the_scrollbar_and_every_bed_can_be_reached(
    broker: Broker, publisher: Publisher, tmp_path: Path, size: tuple[int, int]
):
    """1, then 10, then 100 beds with long ward and bed names and long alert texts: the
    tiles are laid out for the columns left beside the scrollbar, so every tile keeps
    its three lines (no line wraps into a stray fragment), as many across as fit; paging
    down reaches every bed with its tile whole on screen."""
    width = size[0]
    app = WatchApp(config(tmp_path, broker.port), operator="nurse.kim")

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            until = functools.partial(poll, pilot)
            await until(app.client.connected.is_set, "the app's subscriptions")
            published = 0
            for n in (1, 10, 100):
                for i in range(published + 1, n + 1):
                    ward_bed = f"{LONG_WARD}/{long_bed(i)}"
                    body = {
                        "ts": time.time(),
                        "hr": 60 + i % 40,
                        "spo2": 97,
                        "rr": 18,
                        "sbp": 120 + i % 10,
                        "temp": 37.2,
                    }
                    await asyncio.to_thread(publisher.publish, f"vitals/{ward_bed}/mon", body)
                    if i % 4 == 1:  # a long alert text on every fourth bed
                        a = {
                            "id": f"a{i}",
                            "ward": LONG_WARD,
                            "bed": long_bed(i),
                            "rule": "spo2.low.sustained-desaturation-despite-oxygen",
                            "kind": "physiological",
                            "priority": "high",
                            "state": "active",
                            "message": "SpO2 84 % < 85 % for 15 s " * 4,
                        }
                        await asyncio.to_thread(publisher.publish, f"alerts/{ward_bed}", a)
                published = n
                await until(lambda n=n: len(app.ward.beds) == n, f"{n} beds")
                await until(
                    lambda n=n: sum(len(b.alerts) for b in app.beds()) == (n + 3) // 4,
                    "their alerts",
                )
                app._refresh(force=True)
                await pilot.pause()
                check_tiles(app, width)
            # page down to the last bed: each page shows the selected bed's tile, whole
            names = [b.bed[4:7] for b in app.beds()]
            seen: set[str] = set()
            for _ in range(100):
                await pilot.press("pagedown")
                selected = app.current()
                assert selected is not None
                await until(
                    lambda sel=selected: (
                        sel.bed[4:7] in re.findall(r"bed-(\d{3})", " ".join(tile_lines(app)))
                    ),
                    f"{selected.bed} on screen",
                )
                for row in check_tiles(app, width):
                    seen.update(row)
                if selected.bed == app.beds()[-1].bed:
                    break
            await pilot.press("home")
            await until(lambda: app.query_one("#grid").scroll_y == 0, "Home to scroll back")
            seen.update(b for row in check_tiles(app, width) for b in row)
            assert seen == set(names)

    asyncio.run(main())


def test_a_resized_terminal_lays_the_tiles_out_again_around_the_selected_bed(
    broker: Broker, publisher: Publisher, tmp_path: Path
):
    """40 beds, the last one selected; the terminal resized from 120x40 to 60x20 and to
    80x24: each time the tiles are whole for the new width, as many across as fit, and
    the selected bed's tile stays on screen."""
    app = WatchApp(config(tmp_path, broker.port), operator="nurse.kim")

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            until = functools.partial(poll, pilot)
            await until(app.client.connected.is_set, "the app's subscriptions")
            for i in range(1, 41):
                body = {"ts": time.time(), "hr": 70, "spo2": 97}
                topic = f"vitals/{LONG_WARD}/{long_bed(i)}/mon"
                await asyncio.to_thread(publisher.publish, topic, body)
            await until(lambda: len(app.ward.beds) == 40, "40 beds")
            for _ in range(20):
                await pilot.press("pagedown")
            await until(lambda: app.current() is app.beds()[-1], "the last bed selected")
            for width, height in ((120, 40), (60, 20), (80, 24)):
                await pilot.resize_terminal(width, height)
                await until(
                    lambda w=width: (
                        app.size.width == w
                        and app.query_one("#tiles").size.width
                        == app.query_one("#grid").scrollable_content_region.width
                    ),
                    f"the tiles laid out in {width} columns",
                )
                await until(lambda: "040" in " ".join(tile_lines(app)), "bed 40 on screen")
                rows = check_tiles(app, width)
                assert rows[-1][-1] == "040", rows

    asyncio.run(main())


def test_tiles_at_80x24_have_three_lines_each_and_fit_the_screen(
    broker: Broker, publisher: Publisher, tmp_path: Path
):
    """The issue's screen: 80x24 with more beds than fit. Every tile three lines, three
    across in the 78 columns beside the scrollbar, no tile line reaching past them."""
    app = WatchApp(config(tmp_path, broker.port), operator="nurse.kim")

    async def main() -> tuple[list[str], list[list[str]], int]:
        async with app.run_test(size=(80, 24)) as pilot:
            await poll(pilot, app.client.connected.is_set, "the app's subscriptions")
            for i in range(1, 31):
                body = {"ts": time.time(), "hr": 70, "spo2": 97, "rr": 18, "sbp": 120}
                await asyncio.to_thread(publisher.publish, f"vitals/icu/bed-{i:03d}/mon", body)
            await poll(pilot, lambda: len(app.ward.beds) == 30, "30 beds")
            app._refresh(force=True)
            await pilot.pause()
            scroller = app.query_one("#grid")
            return tile_lines(app), check_tiles(app, 80), scroller.scrollable_content_region.width

    lines, rows, room = asyncio.run(main())
    assert room == 78  # the scrollbar took its two columns
    assert [len(r) for r in rows] == [3] * len(rows)
    assert rows[0] == ["001", "002", "003"] and rows[1] == ["004", "005", "006"]
    assert all(ln.startswith("icu/bed-") for ln in lines[::3])
    assert all(len(ln.rstrip()) <= 78 for ln in lines)


#: Names and rule texts as MQTT topics and payloads may carry them: any characters, wide
#: ones (CJK, emoji) and control characters (a newline in a bed name) included.
TEXTS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 220),
    st.lists(st.tuples(TEXTS, TEXTS, TEXTS), min_size=1, max_size=12),
    st.integers(0, 11),
)
@example(80, [("病棟", "床三", "spo2.low"), ("icu", "bed\n7", "hr.high")], 1)  # wide, newline
def test_grid_lines_never_exceed_the_width(width, beds, selected):
    """Any width, any names and rule texts: every grid line fits ``width`` cells, and
    the grid is whole tiles of three lines."""
    views = []
    for i, (ward, bed, rule) in enumerate(beds):
        b = BedView(ward, bed)
        b.add("hr", T0, 60.0 + i)
        b.add("spo2", T0, 97.0)
        b.alerts["a"] = {"id": "a", "priority": "high", "rule": rule}
        views.append(b)
    lines = grid(views, selected, width).plain.split("\n")
    lines = lines[:-1] if lines[-1] == "" else lines  # (a newline ending the last line)
    assert all(cell_len(ln) <= width for ln in lines), (width, lines)
    assert len(lines) % 3 == 0 and len(lines) <= 3 * len(views)
    if width >= TILE_W:  # every tile's NEWS2, whole, however long or wide its name
        assert sum(ln.count(" NEWS2 -") for ln in lines) >= len(views), lines
