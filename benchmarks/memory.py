"""Memory: the daemon's RSS per bed at steady state (every window full), vs its RSS with 0 beds.

For each bed count (50 by default): a fresh daemon (SQLite store, default rules);
baseline: its RSS (``VmRSS`` of ``/proc/PID/status``) once started and idle, with 0 beds;
then every bed is filled (``common.Fill``) with ``--fill-s`` of event time (default: what
the default rules need, 4 h 5 min) at one reading per ``--fill-step`` (1) s for each of
``--vitals`` (the six of the other benchmarks), each vital only as far back as its window
reaches (4 h 5 min for hr, spo2, rr and sbp, 10 min for dbp and map), fast: JSON arrays of
60 one-second objects per message, never more than 20,000 readings waiting in the daemon
(its RSS would otherwise keep the high-water mark of a backlog). The fill chases the wall
clock and ends 2 s behind it. The RSS is read every 30 min of event time and at the end.
Per bed = (RSS after - RSS with 0 beds) / beds, and marginal = what one more bed costs
between two bed counts (the steady-state figure the targets use: the first includes a
one-off ~15-20 MB the fill's backlog leaves behind).

Targets (issue 16): <= 64 KiB per bed at steady state, and 10,000 beds < 1 GiB RSS (when
fewer beds were measured: the largest run's RSS plus the marginal for each bed more).

A second table shows what one series' window (``monitor.engine.window.Window``) holds
in numpy buffers at 1 Hz: at steady state for a 10-minute window, and for the span the
default rules give each vital.

    python benchmarks/memory.py [--beds 50,150] [--fill-s S] [--fill-step S] [--quick]
                                [--json FILE]

At ~12,000 readings/s a bed's 4 h 5 min (60,000 readings) takes ~5 s: the default 50
and 150 beds ~17 min, 1,000 beds ~80 min, 10,000 beds ~14 h.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    SIX,
    Broker,
    Daemon,
    Fill,
    RawPublisher,
    default_fill_s,
    fill_line,
    fill_options,
    machine,
    machine_line,
    parser,
    table,
    target,
    targets_table,
    vital_needs,
    write_json,
)

from monitor.config import RulesConfig
from monitor.engine import Engine
from monitor.model import Reading

BEDS = "50,150"
QUICK_BEDS = [10, 30]
QUICK_FILL_S = 600.0
IDLE_S = 2.0
#: the RSS is read after every this much event time of the fill
CURVE_EVERY_S = 1800.0
TARGET_KIB_PER_BED = 64.0
TARGET_BEDS = 10_000
TARGET_RSS_KIB = 1024 * 1024


def _nbytes(obj: Any) -> int:
    """Bytes of the numpy arrays an object holds in its slots."""
    total = 0
    for name in getattr(obj, "__slots__", ()):
        value = getattr(obj, name, None)
        total += int(getattr(value, "nbytes", 0) or 0)
    return total


def window_table(vitals: tuple[str, ...]) -> list[dict[str, Any]]:
    """What the engine keeps per series at steady state: one bed fed ``vitals`` at 1 Hz
    for the span its default rules read, in process: the raw window's buffers and the
    per-minute history's (monitor.engine.history), read from the engine's own series."""
    needs = vital_needs(vitals)
    span = int(max(needs.values()))
    engine = Engine(RulesConfig(), sinks=[])
    t0 = time.time() - span - 10
    for s in range(span):
        engine.process([Reading(t0 + s, "icu", "1", "mon1", v, 80.0 + s % 3) for v in vitals])
        engine.take_score_updates()
    out = []
    for key, series in sorted(engine.series.items()):
        w = series.window
        hist = getattr(w, "history", None)
        out.append(
            {
                "vital": key.vital,
                "default_span_s": needs[key.vital],
                "raw_span_s": w.span_s,
                "raw_readings": len(w),
                "window_bytes": _nbytes(w),
                "history_bytes": _nbytes(hist) if hist is not None else 0,
            }
        )
    return out


def rss_parts(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile (KiB) of a process."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1])
    return out


def run_beds(
    work: Path, port: int, beds: int, fill: Fill, vitals: tuple[str, ...]
) -> dict[str, Any]:
    names = [str(b) for b in range(1, beds + 1)]
    with Daemon(work / f"beds-{beds}", port, client_id=f"bench-mem-{beds}").start() as d:
        time.sleep(IDLE_S)
        rss0 = d.rss_kib()
        curve: list[dict[str, Any]] = []
        pub = RawPublisher(port, "bench-mem-pub")
        start = time.perf_counter()

        def progress(event_s: float) -> None:
            if event_s >= (len(curve) + 1) * CURVE_EVERY_S:
                curve.append(
                    {
                        "event_s": event_s,
                        "rss_kib": d.rss_kib(),
                        "seconds": time.perf_counter() - start,
                    }
                )

        fed = fill.run(
            pub,
            names,
            lambda: sum(d.accounted()),
            lambda: time.time() - 2,
            progress,
        )
        pub.drain()
        pub.close()
        time.sleep(1.0)
        rss1 = d.rss_kib()
        curve.append(
            {"event_s": fed.get("event_s", 0.0), "rss_kib": rss1, "seconds": fed["seconds"]}
        )
        parts = rss_parts(d.pid)
        metrics = d.metrics()
    series = int(metrics.get("vitalmon_series", 0))
    committed = int(metrics.get("vitalmon_readings_committed_total", 0))
    if series != beds * len(vitals) or committed != fed["readings"]:
        raise RuntimeError(
            f"expected {beds * len(vitals)} series and {fed['readings']} readings, "
            f"got {series} and {committed}"
        )
    return {
        "beds": beds,
        "vitals": list(vitals),
        "fill": fed,
        "readings": fed["readings"],
        "series": series,
        "rss_0_beds_kib": rss0,
        "rss_kib": rss1,
        "kib_per_bed": (rss1 - rss0) / beds,
        "kib_per_series": (rss1 - rss0) / series,
        "feed_seconds": fed["seconds"],
        "readings_per_s": fed["readings_per_s"],
        "curve": curve,
        "rss_parts_kib": parts,
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "memory")
    p.add_argument("--beds", default=BEDS, help="bed counts, comma-separated")
    p.add_argument("--vitals", default=",".join(SIX), help="vitals per bed, 1 Hz each")
    fill_options(p, 1.0)
    args = p.parse_args(argv)
    beds = [int(b) for b in args.beds.split(",")]
    vitals = tuple(v.strip() for v in args.vitals.split(",") if v.strip())
    fill_s = default_fill_s() if args.fill_s is None else args.fill_s
    if args.quick:
        beds = QUICK_BEDS
        fill_s = QUICK_FILL_S if args.fill_s is None else fill_s
    fill = Fill(fill_s, args.fill_step, vitals)
    result: dict[str, Any] = {
        "machine": machine(),
        "fill_s": fill_s,
        "fill_step_s": args.fill_step,
        "runs": [],
        "windows": window_table(vitals),
    }
    with tempfile.TemporaryDirectory(prefix="vitalmon-memory-") as tmp:
        work = Path(tmp)
        with Broker(work / "broker") as broker:
            for n in beds:
                result["runs"].append(run_beds(work, broker.port, n, fill, vitals))
                print(f"{n} beds: done", file=sys.stderr, flush=True)
    runs = result["runs"]
    for prev, cur in itertools.pairwise(runs):
        cur["marginal_kib_per_bed"] = (cur["rss_kib"] - prev["rss_kib"]) / (
            cur["beds"] - prev["beds"]
        )
    result["targets"] = targets(result)
    print(report(result))
    write_json(args.json, result)
    return 0


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per bed at steady state: what one more bed costs between the two largest runs
    (``marginal_kib_per_bed``). The RSS above the idle daemon divided by the beds also
    holds what the fill's backlog left behind once (readings in flight, SQLite's page
    cache, memory the allocators keep: ~15-20 MB whatever the beds), which at 10-50 beds
    reads as hundreds of KiB per bed; with one run only, that is all there is."""
    r = max(result["runs"], key=lambda r: r["beds"])
    marginal = r.get("marginal_kib_per_bed")
    if r["beds"] >= TARGET_BEDS:
        rss, how = r["rss_kib"] * TARGET_BEDS / r["beds"], "measured"
    elif marginal is not None:
        rss = r["rss_kib"] + (TARGET_BEDS - r["beds"]) * marginal
        how = f"{r['beds']:,} beds + marginal"
    else:
        rss, how = r["rss_0_beds_kib"] + TARGET_BEDS * r["kib_per_bed"], f"from {r['beds']:,} beds"
    span = f"{result['fill_s'] / 3600:.2f} h"
    per_bed, what = (
        (marginal, "marginal") if marginal is not None else (r["kib_per_bed"], "above 0 beds")
    )
    return [
        target(
            f"memory: KiB per bed after {span} ({what}, {r['beds']:,} beds)",
            TARGET_KIB_PER_BED,
            per_bed,
            "KiB",
            at_least=False,
        ),
        target(
            f"memory: RSS at {TARGET_BEDS:,} beds ({how})",
            TARGET_RSS_KIB / 1024,
            rss / 1024,
            "MiB",
            at_least=False,
        ),
    ]


def _per_bed(point: dict[str, Any], run: dict[str, Any]) -> float:
    return float(point["rss_kib"] - run["rss_0_beds_kib"]) / float(run["beds"])


def _kib(b: int | None) -> str:
    return "-" if b is None else f"{b / 1024:.1f}"


def report(result: dict[str, Any]) -> str:
    runs = result["runs"]
    curve_rows = []
    for r in runs:
        curve_rows.append(
            [f"{r['beds']:,}"]
            + [f"{c['event_s'] / 3600:.1f} h: {_per_bed(c, r):.1f}" for c in r["curve"]]
        )
    width = max(len(r["curve"]) for r in runs)
    curve_rows = [row + [""] * (width + 1 - len(row)) for row in curve_rows]
    return "\n".join(
        [
            machine_line(result["machine"]),
            f"each bed: {', '.join(runs[0]['vitals'])}; RSS = VmRSS of the daemon; baseline: the "
            "same daemon started and idle, 0 beds",
            fill_line(runs[-1]["fill"]),
            "",
            table(
                [
                    "beds",
                    "series",
                    "readings",
                    "RSS 0 beds MiB",
                    "RSS after MiB",
                    "KiB per bed",
                    "KiB per series",
                    "marginal KiB per bed",
                    "fill s",
                    "readings/s",
                ],
                [
                    [
                        f"{r['beds']:,}",
                        f"{r['series']:,}",
                        f"{r['readings']:,}",
                        f"{r['rss_0_beds_kib'] / 1024:.1f}",
                        f"{r['rss_kib'] / 1024:.1f}",
                        f"{r['kib_per_bed']:.1f}",
                        f"{r['kib_per_series']:.1f}",
                        f"{r['marginal_kib_per_bed']:.1f}" if "marginal_kib_per_bed" in r else "-",
                        f"{r['feed_seconds']:.0f}",
                        f"{r['readings_per_s']:,.0f}",
                    ]
                    for r in runs
                ],
            ),
            "KiB per bed: (RSS after - RSS with 0 beds) / beds, which includes what the fill's "
            "backlog left once (readings in flight, SQLite's page cache, memory the allocators "
            "keep). marginal: (RSS after - the previous row's RSS after) / (beds - its beds): "
            "what one more bed costs at steady state (the targets' per-bed figure).",
            "",
            "KiB per bed above the 0-bed RSS as the fill went on (event time fed: KiB):",
            table(["beds", *(f"{m + 1}" for m in range(width))], curve_rows),
            "",
            "what the engine keeps per series at steady state, 1 Hz (numpy buffers, KiB; one "
            "bed fed in process for the span its default rules read):",
            table(
                ["vital", "rules read", "raw span", "raw readings", "window", "history", "all"],
                [
                    [
                        w["vital"],
                        f"{w['default_span_s'] / 60:g} min",
                        f"{w['raw_span_s'] / 60:g} min",
                        str(w["raw_readings"]),
                        _kib(w["window_bytes"]),
                        _kib(w["history_bytes"]),
                        _kib(w["window_bytes"] + w["history_bytes"]),
                    ]
                    for w in result["windows"]
                ],
            ),
            "per bed: "
            + _kib(sum(w["window_bytes"] + w["history_bytes"] for w in result["windows"]))
            + " KiB of numpy buffers",
            "",
            targets_table(result["targets"]),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
