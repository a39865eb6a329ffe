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
start complete at once. Tiles are three lines high and laid out for the columns the
tile area has beside its scrollbar (always reserved, so the layout does not jump when
the ward outgrows the screen): as many across as fit at least TILE_W columns each
(three in 80 columns, two in 60, four in 120), sharing the spare columns; a name, vitals
or alert text longer than its tile is cut at the tile's edge, never wrapped, and the
tiles scroll (the keys above) to reach every bed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

from rich.cells import cell_len
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import Footer, Static

from monitor.config import Config
from monitor.model import LABELS, fmt_reading, iso
from monitor.mqtt import Client, Message
from monitor.sources.commands import ACK_TOPIC, PAUSE_TOPIC
from monitor.views.ward import BUCKET_S, SHOWN, BedView, Ward

PRIORITY_STYLE = {
    "high": "bold white on red",
    "medium": "bold black on yellow",
    "low": "bold black on cyan",
}
TECHNICAL_STYLE = "bold magenta"
#: The narrowest tile: three across in the 78 columns 80 leave beside the scrollbar.
TILE_W = 25
#: Lines of a tile: the bed and NEWS2, the vitals, the most severe alert.
TILE_H = 3
#: Columns of a tile's NEWS2 label (`` NEWS2 12``).
NEWS2_W = 10
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


def layout(width: int) -> tuple[int, int]:
    """-> (tiles across, columns of each) in ``width`` columns: as many as fit TILE_W
    columns and a space between, sharing the spare columns; one tile, cut to ``width``,
    when not even one fits."""
    per_row = max(1, (width + 1) // (TILE_W + 1))
    return per_row, max(1, (width + 1) // per_row - 1)


def _printable(s: str) -> str:
    """``s`` with control and other unprintable characters (a newline in a bed name) as
    spaces: a tile's line is one terminal line."""
    return "".join(c if c.isprintable() else " " for c in s)


def _cut(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells, ``…`` ending it where it was cut."""
    if cell_len(text) <= width:
        return text
    t = Text(text)
    t.truncate(width, overflow="ellipsis")
    return t.plain


def bed_name(ward: str, bed: str, width: int) -> str:
    """``ward/bed`` in ``width`` cells: the ward shortened first (``intens…/bed-12``), the
    bed name only when it alone does not fit."""
    ward, bed = _printable(ward), _printable(bed)
    full = f"{ward}/{bed}"
    if cell_len(full) <= width:
        return full
    room = width - cell_len(bed) - 2  # the ward's cells, beside "…/" and the bed
    if room >= 1:
        return f"{_cut(ward, room + 1)}/{bed}"
    return _cut(bed, width)


def _line(text: Text, width: int) -> Text:
    """``text`` as exactly ``width`` cells: cut or padded with spaces."""
    text.no_wrap, text.overflow = True, "crop"
    text.truncate(width, overflow="crop", pad=True)
    return text


def tile_lines(b: BedView, selected: bool, width: int = TILE_W) -> list[Text]:
    """A bed in TILE_H lines of exactly ``width`` cells."""
    score = b.news2.get("news2") if b.news2 else None
    name_w = max(0, width - NEWS2_W)
    name = bed_name(b.ward, b.bed, name_w)
    head = Text(
        name + " " * max(0, name_w - cell_len(name)),  # (cells: wide characters)
        style="reverse" if selected else "bold",
    )
    label = f" NEWS2 {score if score is not None else '-'}"
    head.append(label.ljust(NEWS2_W), style=news2_style(score if isinstance(score, int) else None))
    vitals = ""
    for vital in ("hr", "spo2", "rr", "sbp"):
        v = b.latest(vital)
        if v is None:
            continue
        part = f"{LABELS.get(vital, vital)} {_fmt(vital, v)}{b.trend(vital)}"
        if vitals and cell_len(f"{vitals} {part}") > width:
            break  # whole vitals only: no label without its value
        vitals = f"{vitals} {part}" if vitals else part
    clinical, technical = b.clinical(), b.technical()
    if clinical:
        a = clinical[0]
        mark = "✓" if a.get("state") == "acknowledged" else "!"
        more = f" +{len(clinical) - 1}" if len(clinical) > 1 else ""
        # the count of further alerts stays when the rule's name is cut
        room = max(0, width - cell_len(more))
        text = _cut(
            _printable(f"{mark}{str(a.get('priority', '')).upper()} {a.get('rule', '')}"), room
        )
        alert = Text(text + more, style=PRIORITY_STYLE.get(str(a.get("priority")), ""))
    elif technical:
        alert = Text(_printable(f"⚙ {technical[0].get('rule', '')}"), style=TECHNICAL_STYLE)
    else:
        alert = Text()
    return [_line(head, width), _line(Text(vitals), width), _line(alert, width)]


def tile(b: BedView, selected: bool, width: int = TILE_W) -> Text:
    """A bed in TILE_H lines of ``width`` columns."""
    return Text("\n", no_wrap=True, overflow="crop").join(tile_lines(b, selected, width))


def grid(beds: list[BedView], selected: int, width: int) -> Text:
    """The tiles, as many across as fit ``width`` (:func:`layout`): no line is wider."""
    per_row, tile_w = layout(width)
    lines: list[Text] = []
    for start in range(0, len(beds), per_row):
        row = [
            tile_lines(b, start + i == selected, tile_w)
            for i, b in enumerate(beds[start : start + per_row])
        ]
        for n in range(TILE_H):
            lines.append(Text(" ").join(t[n] for t in row))
    return Text("\n", no_wrap=True, overflow="crop").join(lines)


class Tiles(Widget):
    """The tiles, laid out when drawn for the widget's own width: the columns the
    scroller leaves beside its scrollbar, whatever the terminal's size."""

    DEFAULT_CSS = """
    Tiles { height: auto; text-wrap: nowrap; text-overflow: clip; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.beds: list[BedView] = []
        self.selected = 0

    def show(self, beds: list[BedView], selected: int) -> None:
        self.beds, self.selected = beds, selected
        self.refresh(layout=True)

    def per_row(self) -> int:
        return layout(self.content_size.width)[0] if self.content_size.width else 0

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return TILE_H * -(-len(self.beds) // layout(width)[0])

    def render(self) -> Text:
        return grid(self.beds, self.selected, self.content_size.width)


class TileScroll(VerticalScroll):
    """The tiles' scroller: when its size changes (a resized terminal), once the tiles
    are laid out again, it calls ``relaid`` (the app keeps the selected bed in view)."""

    def __init__(self, relaid: Callable[[], None], *, id: str | None = None) -> None:
        super().__init__(id=id, can_focus=False)  # (keys are the app's)
        self._relaid = relaid

    def on_resize(self) -> None:
        self.call_after_refresh(self._relaid)


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
    #grid { height: 1fr; scrollbar-gutter: stable; }
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
        self._shown = False

    def compose(self) -> ComposeResult:
        with TileScroll(self._keep_in_view, id="grid"):
            yield Tiles(id="tiles")
        yield Static(id="detail")
        yield Footer()

    async def on_mount(self) -> None:
        self.client.start()
        self.set_interval(0.25, self._refresh)
        self._refresh(force=True)
        self._shown = True

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
        self.query_one(Tiles).show(beds, self.selected)
        self.call_after_refresh(self._keep_in_view)  # (once the tiles are laid out)
        d = detail(self.current(), width)
        if self.status:
            d.append(self.status, style="italic")
        self.query_one("#detail", Static).update(d)
        up = "connected" if self.client.connected.is_set() else "connecting..."
        self.sub_title = f"{len(beds)} beds, {self.cfg.mqtt.host}:{self.cfg.mqtt.port} {up}"

    def on_resize(self) -> None:
        if self._shown:  # (not the first size, before on_mount)
            self._refresh(force=True)  # (the detail pane's vitals a line)

    def _per_row(self) -> int:
        """Tiles across, as laid out (before the first layout: as they will be)."""
        grid_w = self.query_one("#grid", VerticalScroll).scrollable_content_region.width
        return self.query_one(Tiles).per_row() or layout(grid_w or self.size.width or 80)[0]

    def _keep_in_view(self) -> None:
        """Scroll the tiles so that the selected bed's row is on screen."""
        scroller = self.query_one("#grid", VerticalScroll)
        top = (self.selected // self._per_row()) * TILE_H
        height = scroller.scrollable_content_region.height
        if height and not scroller.scroll_y <= top <= scroller.scroll_y + height - TILE_H:
            scroller.scroll_to(
                y=max(0, top - height + TILE_H) if top > scroller.scroll_y else top, animate=False
            )

    def action_move(self, step: int) -> None:
        """The bed ``step`` tiles on, wrapping around the ward."""
        self._select(lambda i, n: (i + step) % n)

    def action_move_rows(self, rows: int) -> None:
        """The bed ``rows`` rows down (or up), held at the first and last bed."""
        step = rows * self._per_row()
        self._select(lambda i, n: min(max(i + step, 0), n - 1))

    def action_move_page(self, pages: int) -> None:
        height = self.query_one("#grid", VerticalScroll).scrollable_content_region.height
        step = pages * max(1, height // TILE_H) * self._per_row()
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
        open_ = [
            a
            for a in (b.clinical() + b.technical() if b else [])
            if a.get("state") != "acknowledged"
        ]
        if b is None or not open_:
            self.status = "nothing to acknowledge on this bed"
            self._refresh(force=True)
            return
        a = open_[0]
        self._command(
            ACK_TOPIC,
            {"id": a["id"], "by": self.operator},
            f"acknowledge sent for {a.get('rule')} on {b.ward}/{b.bed}",
        )

    def action_pause(self) -> None:
        b = self.current()
        if b is None:
            return
        body = {"ward": b.ward, "bed": b.bed, "seconds": PAUSE_S, "by": self.operator}
        self._command(PAUSE_TOPIC, body, f"pause {PAUSE_S} s sent for {b.ward}/{b.bed}")


def run(cfg: Config, operator: str) -> int:
    WatchApp(cfg, operator).run()
    return 0
