"""What ``vitalmon watch`` draws (:mod:`monitor.views.watch`): a bed's tile, the grid of
tiles laid out for the columns there are (and the widgets holding it), and the detail
pane of the selected bed. Pure rendering: a :class:`~monitor.views.ward.BedView` in,
``rich`` text out."""

from __future__ import annotations

from collections.abc import Callable

from rich.cells import cell_len
from rich.text import Text
from textual.containers import VerticalScroll
from textual.geometry import Size
from textual.widget import Widget

from monitor.model import LABELS, fmt_reading, iso
from monitor.views.ward import BUCKET_S, SHOWN, BedView

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
