"""The report as text: the alert table, the header and the summary rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, TextIO

from monitor.model import (
    AlertEvent,
    iso,
)
from monitor.replay.recording import Recording
from monitor.replay.run import Report


def offset(seconds: float) -> str:
    """Seconds from the start -> ``+HH:MM:SS``."""
    s = round(seconds)
    return f"+{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _hms(seconds: float) -> str:
    return offset(seconds)[1:]


ALERT_HEADER: Final = (
    f"{'offset':<10} {'rule':<10} {'device':<7} {'priority':<8} {'state':<8} {'seq':>3}  message"
)


def alert_line(e: AlertEvent, start: float) -> str:
    return (
        f"{offset(e.at - start):<10} {e.rule:<10} {e.device:<7} {e.priority!s:<8} "
        f"{e.state!s:<8} {e.seq:>3}  {e.message}"
    )


def header_lines(rec: Recording, rules_note: str | None, speed: float | None) -> list[str]:
    cols = ", ".join(f"{name}->{col}" for name, col in rec.columns.items())
    lines = [
        f"replay {Path(rec.path).name}: ward {rec.ward}, bed {rec.bed}, {rec.rows} rows "
        f"every {rec.interval_s:g} s, {rec.duration_s / 3600:.2f} h from {iso(rec.start)}, "
        f"speed {'max' if speed is None else f'{speed:g}x'}",
        f"columns: {cols}" + (f"; ignored: {', '.join(rec.ignored)}" if rec.ignored else ""),
        f"readings: {len(rec.readings)} accepted, {sum(rec.missing.values())} missing "
        f"(blank or 0), {sum(rec.rejected.values())} rejected",
    ]
    lines += [f"  rejected {col}: {cause} x{n}" for (col, cause), n in sorted(rec.rejected.items())]
    if rules_note:
        lines.append(f"note: {rules_note}")
    return lines


SUMMARY_ROWS: Final = (
    ("raised", "alerts raised"),
    ("reached_high", "  reached high"),
    ("medium_only", "  medium only"),
    ("escalations", "escalations (to high)"),
    ("events", "alert events (raise/change/resolve)"),
    ("burden_per_h", "alarm burden (raised per patient-h)"),
    ("time_in_alarm_s", "time in alarm (s)"),
    ("time_in_alarm_pct", "time in alarm (% of recording)"),
    ("active_at_end", "still active at the end"),
)


def _cell(value: Any) -> str:
    """As the JSON has it: 13.33, 79.2, 3420 (an integral float without its .0)."""
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def summary_lines(report: Report) -> list[str]:
    s = report.summary()
    v, n = s["vitalmon"], s["naive"]
    w = 38
    lines = [f"{'summary':<{w}} {'vitalmon':>10} {'naive':>10}"]
    for key, label in SUMMARY_ROWS:
        lines.append(f"{label:<{w}} {_cell(v[key]):>10} {_cell(n[key]):>10}")
        if key == "time_in_alarm_s":
            hms = "  time in alarm (h:m:s)"
            lines.append(f"{hms:<{w}} {_hms(v[key]):>10} {_hms(n[key]):>10}")
    rules = sorted(set(v["by_rule"]) | set(n["by_rule"]))
    if rules:
        lines.append("")
        lines.append(f"{'alerts raised by rule@device':<{w}} {'vitalmon':>10} {'naive':>10}")
        for r in rules:
            lines.append(f"{r:<{w}} {v['by_rule'].get(r, 0):>10} {n['by_rule'].get(r, 0):>10}")
    lines.append("")
    lines.append(
        "naive: the same limits with delay_s 0, clear_band 0 and confirm 1 (no artefact "
        "rejection), no trend rules, no flapping detection."
    )
    return lines


def print_table_header(
    rec: Recording, rules_note: str | None, speed: float | None, out: TextIO
) -> None:
    for line in header_lines(rec, rules_note, speed):
        print(line, file=out)
    print("", file=out)
    print("vitalmon alerts", file=out)
    print(ALERT_HEADER, file=out, flush=True)


def print_table_footer(report: Report, out: TextIO) -> None:
    if not report.vitalmon:
        print("(none)", file=out)
    print("", file=out)
    for line in summary_lines(report):
        print(line, file=out)


def render_table(report: Report) -> str:
    """The whole table as one string (what ``--format table`` prints)."""
    lines = [*header_lines(report.rec, report.rules_note, report.speed), "", "vitalmon alerts"]
    lines.append(ALERT_HEADER)
    lines += [alert_line(e, report.rec.start) for e in report.vitalmon]
    if not report.vitalmon:
        lines.append("(none)")
    lines += ["", *summary_lines(report)]
    return "\n".join(lines) + "\n"
