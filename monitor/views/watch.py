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

The tiles and the detail pane are drawn by :mod:`monitor.views.tiles`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Footer, Static

from monitor.config import Config
from monitor.mqtt import Client, Message
from monitor.sources.commands import ACK_TOPIC, PAUSE_TOPIC
from monitor.views.tiles import (
    NEWS2_W,
    PRIORITY_STYLE,
    TECHNICAL_STYLE,
    TILE_H,
    TILE_W,
    VITAL_W,
    Tiles,
    TileScroll,
    _cut,
    _fmt,
    _line,
    _printable,
    bed_name,
    detail,
    grid,
    layout,
    news2_style,
    tile,
    tile_lines,
    vital_line,
)
from monitor.views.ward import BedView, Ward

PAUSE_S = 120


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


__all__ = [
    "NEWS2_W",
    "PAUSE_S",
    "PRIORITY_STYLE",
    "TECHNICAL_STYLE",
    "TILE_H",
    "TILE_W",
    "VITAL_W",
    "TileScroll",
    "Tiles",
    "WatchApp",
    "_cut",
    "_fmt",
    "_line",
    "_printable",
    "bed_name",
    "detail",
    "grid",
    "layout",
    "news2_style",
    "run",
    "tile",
    "tile_lines",
    "vital_line",
]
