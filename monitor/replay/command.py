"""``vitalmon replay``: :func:`main`, with ``--store`` (the readings and alerts into a
SQLite store) and ``--report`` (``vitalmon report``'s figure of the recording)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from monitor.config import RulesConfig
from monitor.model import (
    AlertEvent,
    iso,
)
from monitor.replay.output import alert_line, print_table_footer, print_table_header
from monitor.replay.recording import (
    Recording,
    ReplayError,
    load_csv,
    parse_map,
    parse_speed,
    parse_start,
)
from monitor.replay.run import Report, replay


def check_store(path: str) -> None:
    """Refuse a ``--store`` that cannot be created, before the replay runs."""
    p = Path(path)
    if p.is_dir():
        raise ReplayError(f"--store {path}: is a directory; give a file such as replay.db")
    if not p.parent.is_dir():
        raise ReplayError(f"--store {path}: no directory {p.parent}")


def save(rec: Recording, events: Sequence[AlertEvent], path: str) -> int:
    """Write the recording's readings and vitalmon's alert events into the SQLite store at
    ``path`` (the daemon's schema; created if missing). Readings and events already there
    are kept, and the same ones are not stored twice (alert ids follow from event time),
    so replaying again is harmless. -> readings newly stored."""
    import sqlite3

    from monitor.sinks.sqlite import alert_row, connect, reading_row, write_rows

    try:
        conn = connect(path)
        try:
            return write_rows(
                conn, [reading_row(r) for r in rec.readings], [alert_row(e) for e in events]
            )
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ReplayError(f"--store {path}: {exc}") from None


def plot(rec: Recording, rules: RulesConfig, store: str, out: Path) -> str:
    """The ``vitalmon report`` figure of the whole recording from the store a replay
    wrote, with the limits the replay used -> what was drawn."""
    from monitor.config import Config
    from monitor.sinks.sqlite import connect
    from monitor.views.report import ReportError, make

    conn = connect(store, readonly=True)
    try:
        return make(conn, Config(rules=rules), rec.ward, rec.bed, rec.start, rec.end, out)
    except ReportError as exc:
        raise ReplayError(f"--report: {exc}") from None
    finally:
        conn.close()


def keep(
    rec: Recording, report: Report, store: str | None, report_to: Path | None, out: TextIO
) -> None:
    """``--store`` and ``--report``: the replay's readings and alerts into a store, the
    report drawn from it (a temporary one when only ``--report`` is given)."""
    if store is not None:
        n = save(rec, report.vitalmon, store)
        print(
            f"store {store}: {n} readings and {len(report.vitalmon)} alert events of "
            f"ward {rec.ward}, bed {rec.bed} (vitalmon report|stats --store {store} "
            f"--since {iso(rec.start)})",
            file=out,
        )
    if report_to is None:
        return
    if store is not None:
        print(f"report {plot(rec, report.rules, store, report_to)}", file=out)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vitalmon-replay-") as tmp:
        db = str(Path(tmp) / "replay.db")
        save(rec, report.vitalmon, db)
        print(f"report {plot(rec, report.rules, db, report_to)}", file=out)


def main(
    path: str,
    bed: str,
    ward: str | None = None,
    speed: str = "max",
    rules: RulesConfig | None = None,
    start: str | None = None,
    maps: Sequence[str] = (),
    fmt: str = "table",
    out: TextIO | None = None,
    store: str | None = None,
    report_to: str | None = None,
) -> int:
    """``vitalmon replay``: -> exit status (1 for a user error, reported on stderr).

    ``store``: also write the readings and vitalmon's alert events into this SQLite store;
    ``report_to``: also draw ``vitalmon report``'s figure of the recording to this file.
    """
    out = sys.stdout if out is None else out
    try:
        pace = parse_speed(speed)
        t0 = parse_start(start)
        figure = None
        if report_to is not None:
            from monitor.views.report import ReportError, check_output

            try:
                figure = check_output(report_to)
            except ReportError as exc:
                raise ReplayError(f"--report {exc}") from None
        if store is not None:
            check_store(store)
        rec = load_csv(
            path,
            bed,
            ward or "default",
            t0,
            parse_map(maps),
            (rules or RulesConfig()).modes.continuous_max_interval_s,
        )
    except ReplayError as exc:
        print(f"vitalmon replay: {exc}", file=sys.stderr)
        return 1
    if fmt == "json":
        report = replay(rec, rules, pace)
        json.dump(report.to_json(), out, indent=1)
        out.write("\n")
        return _keep(rec, report, store, figure, sys.stderr)
    print_table_header(rec, None, pace, out)

    def live(e: AlertEvent) -> None:
        print(alert_line(e, rec.start), file=out, flush=True)

    report = replay(rec, rules, pace, on_event=live)
    print_table_footer(report, out)
    return _keep(rec, report, store, figure, out)


def _keep(
    rec: Recording, report: Report, store: str | None, figure: Path | None, out: TextIO
) -> int:
    if store is None and figure is None:
        return 0
    print("", file=out)
    try:
        keep(rec, report, store, figure, out)
    except ReplayError as exc:
        print(f"vitalmon replay: {exc}", file=sys.stderr)
        return 1
    return 0
