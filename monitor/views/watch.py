"""``vitalmon watch``: a terminal central station (Textual), from the MQTT topics alone.

One tile per bed, most severe first: the bed, NEWS2 in its band's colour, the latest
vitals with trend arrows, and its most severe open alert in the priority's colour (high
red, medium yellow, low cyan); technical alarms (``⚙``) in magenta, apart from them. A
detail pane shows the selected bed: each vital with its last 10 minutes as a sparkline
(the time of its latest value when older than a minute), and every open alert.
The selection follows the most severe bed until a key moves it (arrows or h/j/k/l by
tile and row, PageUp/PageDown by screen); Home or ``g`` goes back to following. ``a``
acknowledges the selected bed's most severe alert not yet acknowledged
(``vitalmon/cmd/ack`` with ``--by``), ``p`` pauses its alarms for 2 minutes
(``vitalmon/cmd/pause``), ``q`` quits. It only subscribes and publishes commands, so it
runs on any machine that reaches the broker; retained state and score topics make a late
start complete at once. Tiles are three lines by 26 columns: three across in 80 columns,
scrolling for more beds.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Footer, Static

from monitor.config import Config
from monitor.model import LABELS, fmt_reading, iso
from monitor.mqtt import Client, Message
from monitor.sources.commands import ACK_TOPIC, PAUSE_TOPIC
from monitor.views.ward import BUCKET_S, SHOWN, BedView, Ward

PRIORITY_STYLE = {"high": "bold white on red", "medium": "bold black on yellow",
                  "low": "bold black on cyan"}  # fmt: skip
TECHNICAL_STYLE = "bold magenta"
TILE_W = 26
PAUSE_S = 120


def news2_style(score: int | None) -> str:
    if score is None:
        return "dim"
    if score >= 7:
        return "bold white on red"
    if score >= 5:
        return "bold black on yellow"
    return "green"


def _fmt(vital: str, value: float | None) -> str:
    if value is None:
        return "-"
    return fmt_reading(vital, value)


def tile(b: BedView, selected: bool) -> Text:
    """A bed in three lines of TILE_W columns."""
    t = Text(no_wrap=True, overflow="crop")
    score = b.news2.get("news2") if b.news2 else None
    head = Text(f"{b.ward}/{b.bed}"[: TILE_W - 10].ljust(TILE_W - 10),
                style="reverse" if selected else "bold")  # fmt: skip
    t.append_text(head)
    label = f" NEWS2 {score if score is not None else '-'}"
    t.append(label.ljust(10), style=news2_style(score if isinstance(score, int) else None))
    t.append("\n")
    parts = []
    for vital in ("hr", "spo2", "rr", "sbp"):
        v = b.latest(vital)
        if v is not None:
            parts.append(f"{LABELS.get(vital, vital)} {_fmt(vital, v)}{b.trend(vital)}")
    t.append(" ".join(parts)[:TILE_W].ljust(TILE_W))
    t.append("\n")
    clinical, technical = b.clinical(), b.technical()
    if clinical:
        a = clinical[0]
        mark = "✓" if a.get("state") == "acknowledged" else "!"
        more = f" +{len(clinical) - 1}" if len(clinical) > 1 else ""
        text = f"{mark}{str(a.get('priority', '')).upper()} {a.get('rule', '')}{more}"
        t.append(text[:TILE_W].ljust(TILE_W), style=PRIORITY_STYLE.get(str(a.get("priority"))))
    elif technical:
        t.append(f"⚙ {technical[0].get('rule', '')}"[:TILE_W].ljust(TILE_W), style=TECHNICAL_STYLE)
    else:
        t.append("".ljust(TILE_W))
    return t


def grid(beds: list[BedView], selected: int, width: int) -> Text:
    """Tiles three (or as many as fit) across."""
    per_row = max(1, (width + 1) // (TILE_W + 1))
    out = Text(no_wrap=True, overflow="crop")
    for start in range(0, len(beds), per_row):
        row = [tile(b, start + i == selected) for i, b in enumerate(beds[start : start + per_row])]
        lines = [r.split("\n") for r in row]
        for n in range(3):
            for i, r in enumerate(lines):
                if i:
                    out.append(" ")
                out.append_text(r[n] if n < len(r) else Text(" " * TILE_W))
            out.append("\n")
    return out


#: Columns of one vital in the detail pane: label, value, arrow, sparkline, range.
VITAL_W = 39


def vital_line(b: BedView, vital: str) -> Text:
    """``SpO2   80↓ ▇▇▇▆▄▂▁▁▁▁▁▁ 80-99``: the latest value and the last 10 minutes (a
    bucket per character, scaled to their range); a vital not measured in the last
    minute gives the time of its latest value instead of the range."""
    ts, v = b.history[vital][-1]
    spark, lo, hi = b.sparkline(vital)
    t = Text(f"{LABELS.get(vital, vital):<5}{_fmt(vital, v):>4}{b.trend(vital)} ")
    t.append(spark, style="cyan")
    if b.last_ts - ts > 2 * BUCKET_S:
        t.append(f" @{iso(ts)[11:16]}", style="dim")
    elif lo is not None and hi is not None:
        t.append(f" {_fmt(vital, lo)}-{_fmt(vital, hi)}", style="dim")
    return t


def detail(b: BedView | None, width: int = 80) -> Text:
    """The selected bed: NEWS2 with its components and the time of the newest reading,
    each vital with its recent values (two per line in 79 columns), its open alerts."""
    if b is None:
        return Text("no beds yet: waiting for readings, alerts or retained state", style="dim")
    t = Text(f"{b.ward}/{b.bed}  ", style="bold")
    if b.news2:
        t.append(f"NEWS2 {b.news2.get('news2')} ", style=news2_style(b.news2.get("news2")))
        comps = b.news2.get("components") or {}
        t.append(" ".join(f"{k} {v}" for k, v in comps.items() if v))
    if b.last_ts:
        t.append(f"  latest {iso(b.last_ts)[11:19]}, last 10 min:", style="dim")
    t.append("\n")
    per_line = 2 if width >= 2 * VITAL_W + 1 else 1
    shown = [v for v in SHOWN if b.history.get(v)]
    for i, vital in enumerate(shown):
        line = vital_line(b, vital)
        last = i % per_line == per_line - 1 or i == len(shown) - 1
        if not last:
            line.pad_right(VITAL_W - len(line) + 1)
        t.append_text(line)
        if last:
            t.append("\n")
    for a in [*b.clinical(), *b.technical()]:
        style = PRIORITY_STYLE.get(str(a.get("priority")), "")
        if a.get("kind") == "technical":
            style = TECHNICAL_STYLE
        t.append(f"{str(a.get('priority', '')).upper():6} {a.get('state', ''):12} ", style=style)
        t.append(f"{a.get('message', '')}  [{a.get('id')}]\n")
    return t


class WatchApp(App[None]):
    TITLE = "vitalmon watch"
    CSS = """
    #grid { height: 1fr; }
    #detail { height: auto; max-height: 10; border-top: solid $accent; }
    """
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("right,l", "move(1)", "next", show=False),
        Binding("left,h", "move(-1)", "previous", show=False),
        Binding("down,j", "move_rows(1)", "row down", show=False),
        Binding("up,k", "move_rows(-1)", "row up", show=False),
        Binding("pagedown", "move_page(1)", "page down", show=False),
        Binding("pageup", "move_page(-1)", "page up", show=False),
        Binding("home,g", "follow", "most severe"),
        Binding("a", "ack", "acknowledge"),
        Binding("p", "pause", "pause 2 min"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, cfg: Config, operator: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.operator = operator
        self.ward = Ward(cfg)
        self.selected = 0
        self.selected_key: tuple[str, str] | None = None
        #: The selection is the most severe bed until a key moves it.
        self.following = True
        self.status = ""
        self.client = Client(cfg.mqtt, persistent=False, client_id=f"vitalmon-watch-{os.getpid()}")
        for topic in self.ward.topics:
            self.client.subscribe(topic, 0, self._deliver)
        self._dirty = False

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="grid", can_focus=False):  # (keys are the app's)
            yield Static(id="tiles")
        yield Static(id="detail")
        yield Footer()

    async def on_mount(self) -> None:
        self.client.start()
        self.set_interval(0.25, self._refresh)
        self._refresh(force=True)

    async def on_unmount(self) -> None:
        await self.client.stop(timeout=1.0)

    def _deliver(self, msg: Message) -> None:
        if self.ward.feed(msg.topic, msg.payload, time.time()) is not None:
            self._dirty = True

    def beds(self) -> list[BedView]:
        return self.ward.sorted_beds()

    def current(self) -> BedView | None:
        """The selected bed: the most severe one while following, else the bed a key
        selected, wherever the order moves it."""
        beds = self.beds()
        if not beds:
            return None
        keys = [(b.ward, b.bed) for b in beds]
        if self.following:
            self.selected = 0
        elif self.selected_key in keys:
            self.selected = keys.index(self.selected_key)
        self.selected = min(self.selected, len(beds) - 1)
        self.selected_key = keys[self.selected]
        return beds[self.selected]

    def _refresh(self, force: bool = False) -> None:
        if not (self._dirty or force):
            return
        self._dirty = False
        self.current()  # (follows the selected bed to its new place)
        beds = self.beds()
        width = self.size.width or 80
        self.query_one("#tiles", Static).update(grid(beds, self.selected, width))
        self._keep_in_view(width)
        d = detail(self.current(), width)
        if self.status:
            d.append(self.status, style="italic")
        self.query_one("#detail", Static).update(d)
        up = "connected" if self.client.connected.is_set() else "connecting..."
        self.sub_title = f"{len(beds)} beds, {self.cfg.mqtt.host}:{self.cfg.mqtt.port} {up}"

    def _per_row(self, width: int | None = None) -> int:
        return max(1, ((width or self.size.width or 80) + 1) // (TILE_W + 1))

    def _keep_in_view(self, width: int) -> None:
        """Scroll the tiles so that the selected bed's row is on screen."""
        scroller = self.query_one("#grid", VerticalScroll)
        per_row = self._per_row(width)
        top = (self.selected // per_row) * 3
        height = scroller.size.height
        if height and not scroller.scroll_y <= top <= scroller.scroll_y + height - 3:
            scroller.scroll_to(y=max(0, top - height + 3) if top > scroller.scroll_y else top,
                               animate=False)  # fmt: skip

    def action_move(self, step: int) -> None:
        """The bed ``step`` tiles on, wrapping around the ward."""
        self._select(lambda i, n: (i + step) % n)

    def action_move_rows(self, rows: int) -> None:
        """The bed ``rows`` rows down (or up), held at the first and last bed."""
        step = rows * self._per_row()
        self._select(lambda i, n: min(max(i + step, 0), n - 1))

    def action_move_page(self, pages: int) -> None:
        height = self.query_one("#grid", VerticalScroll).size.height or 3
        step = pages * max(1, height // 3) * self._per_row()
        self._select(lambda i, n: min(max(i + step, 0), n - 1))

    def _select(self, to: Callable[[int, int], int]) -> None:
        """Select ``to(selected index, beds)``; the selection stops following."""
        beds = self.beds()
        if beds:
            self.current()
            self.following = False
            self.selected = to(self.selected, len(beds))
            self.selected_key = (beds[self.selected].ward, beds[self.selected].bed)
        self._refresh(force=True)

    def action_follow(self) -> None:
        self.following = True
        self._refresh(force=True)

    def _command(self, topic: str, body: dict[str, Any], done: str) -> None:
        fut = self.client.publish(topic, json.dumps(body), qos=1)

        def sent(f: Any) -> None:
            self.status = done if f.exception() is None else f"not sent: {f.exception()}"
            self._refresh(force=True)

        fut.add_done_callback(sent)

    def action_ack(self) -> None:
        b = self.current()
        open_ = [a for a in (b.clinical() + b.technical() if b else [])
                 if a.get("state") != "acknowledged"]  # fmt: skip
        if b is None or not open_:
            self.status = "nothing to acknowledge on this bed"
            self._refresh(force=True)
            return
        a = open_[0]
        self._command(ACK_TOPIC, {"id": a["id"], "by": self.operator},
                      f"acknowledge sent for {a.get('rule')} on {b.ward}/{b.bed}")  # fmt: skip

    def action_pause(self) -> None:
        b = self.current()
        if b is None:
            return
        body = {"ward": b.ward, "bed": b.bed, "seconds": PAUSE_S, "by": self.operator}
        self._command(PAUSE_TOPIC, body, f"pause {PAUSE_S} s sent for {b.ward}/{b.bed}")


def run(cfg: Config, operator: str) -> int:
    WatchApp(cfg, operator).run()
    return 0
