"""Memory: the daemon's RSS per bed after 10 minutes of 1 Hz readings, vs its RSS with 0 beds.

For each bed count (1,000 by default): a fresh daemon (SQLite store, default rules,
``rules.window_s`` 600); baseline: its RSS (``VmRSS`` of ``/proc/PID/status``) once
started and idle, with 0 beds; then every bed gets ``--minutes`` (10) of event time at
1 Hz for ``--vitals`` (hr, spo2, rr), fast: JSON arrays of 10 one-second objects per
message, minute by minute, event time in the past, never more than 400 messages
waiting in the daemon (its RSS would otherwise keep the high-water mark of a backlog).
After each minute has been committed (``vitalmon_readings_committed_total``) the RSS is
read again. Per bed = (RSS after - RSS with 0 beds) / beds.

A second table shows what one series' window (``monitor.engine.window.Window``) holds
in numpy buffers at 1 Hz: after the 10 minutes fed here, at steady state once a
10-minute window slides, and for the vitals whose default trend/baseline rules need
more history (their windows span ``rules.trends.needs_s``, 4 h 5 min).

    python benchmarks/memory.py [--beds 1000[,10000]] [--minutes 10] [--quick] [--json FILE]

10,000 beds take 10 times as long as 1,000 (about 20 minutes at ~15,000 readings/s).
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from common import (
    Broker,
    Daemon,
    RawPublisher,
    bed_messages,
    encode_all,
    machine,
    machine_line,
    parser,
    table,
    wait_for,
    write_json,
)

from monitor.config import RulesConfig
from monitor.engine.window import Window

VITALS = ("hr", "spo2", "rr")
#: messages per send; at most two sends are waiting in the daemon at any time
SLICE = 200
IDLE_S = 2.0


def window_bytes(span_s: float, samples: int) -> int:
    """Bytes of one window's numpy buffers after ``samples`` readings 1 s apart."""
    w = Window(span_s)
    for t in range(samples):
        w.add(float(t), 80.0)
    return int(w._ts.nbytes + w._v.nbytes)


def window_table(vitals: tuple[str, ...]) -> list[dict[str, Any]]:
    rules = RulesConfig()
    out = []
    for vital in vitals:
        span = max(rules.window_s, rules.trends.needs_s(vital))
        out.append(
            {
                "vital": vital,
                "default_span_s": span,
                "after_10_min_bytes": window_bytes(span, 600),
                "steady_10_min_window_bytes": window_bytes(600.0, 3 * 600),
                "steady_default_span_bytes": window_bytes(span, int(2 * span) + 1),
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
    work: Path, port: int, beds: int, minutes: int, vitals: tuple[str, ...]
) -> dict[str, Any]:
    names = [str(b) for b in range(1, beds + 1)]
    t0 = float(int(time.time()) - (minutes + 1) * 60)
    chunks = []
    total = 0
    for m in range(minutes):
        msgs, n = bed_messages(names, 60, t0 + 60 * m, "array10", vitals=vitals, seed=m)
        chunks.append(encode_all(msgs))
        total += n
    with Daemon(
        work / f"beds-{beds}", port, client_id=f"bench-mem-{beds}", rules="  window_s: 600\n"
    ).start() as d:
        time.sleep(IDLE_S)
        rss0 = d.rss_kib()
        curve = []
        pub = RawPublisher(port, "bench-mem-pub")
        per_msg = 10 * len(vitals)
        start = time.perf_counter()
        done = 0

        def handled(n: int) -> bool:
            return sum(d.accounted()) >= n

        for m, packets in enumerate(chunks):
            # at most 2 slices uncommitted: the daemon never holds a backlog, whose
            # high-water mark would stay in its RSS (freed memory is not handed back)
            for i in range(0, len(packets), SLICE):
                part = packets[i : i + SLICE]
                pub.send(part)
                done += len(part) * per_msg
                wait_for(
                    partial(handled, done - 2 * SLICE * per_msg),
                    600,
                    f"minute {m + 1} committed",
                    every=0.05,
                )
            wait_for(partial(handled, done), 600, f"minute {m + 1} committed", every=0.05)
            curve.append(
                {"minute": m + 1, "rss_kib": d.rss_kib(), "seconds": time.perf_counter() - start}
            )
        seconds = time.perf_counter() - start
        pub.drain()
        pub.close()
        time.sleep(1.0)
        rss1 = d.rss_kib()
        parts = rss_parts(d.pid)
        metrics = d.metrics()
    series = int(metrics.get("vitalmon_series", 0))
    committed = int(metrics.get("vitalmon_readings_committed_total", 0))
    if series != beds * len(vitals) or committed != total:
        raise RuntimeError(
            f"expected {beds * len(vitals)} series and {total} readings, "
            f"got {series} and {committed}"
        )
    return {
        "beds": beds,
        "vitals": list(vitals),
        "minutes": minutes,
        "readings": total,
        "series": series,
        "rss_0_beds_kib": rss0,
        "rss_kib": rss1,
        "kib_per_bed": (rss1 - rss0) / beds,
        "kib_per_series": (rss1 - rss0) / series,
        "feed_seconds": seconds,
        "readings_per_s": total / seconds,
        "curve": curve,
        "rss_parts_kib": parts,
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "memory")
    p.add_argument("--beds", default="1000", help="bed counts, comma-separated")
    p.add_argument("--minutes", type=int, default=10, help="event time fed per bed")
    p.add_argument("--vitals", default=",".join(VITALS), help="vitals per bed, 1 Hz each")
    args = p.parse_args(argv)
    beds = [int(b) for b in args.beds.split(",")]
    minutes = args.minutes
    vitals = tuple(v.strip() for v in args.vitals.split(",") if v.strip())
    if args.quick:
        beds, minutes = [20, 50], 2
    result: dict[str, Any] = {"machine": machine(), "runs": [], "windows": window_table(vitals)}
    with tempfile.TemporaryDirectory(prefix="vitalmon-memory-") as tmp:
        work = Path(tmp)
        with Broker(work / "broker") as broker:
            for n in beds:
                result["runs"].append(run_beds(work, broker.port, n, minutes, vitals))
                print(f"{n} beds: done", file=sys.stderr, flush=True)
    runs = result["runs"]
    for prev, cur in itertools.pairwise(runs):
        cur["marginal_kib_per_bed"] = (cur["rss_kib"] - prev["rss_kib"]) / (
            cur["beds"] - prev["beds"]
        )
    print(report(result))
    write_json(args.json, result)
    return 0


def report(result: dict[str, Any]) -> str:
    runs = result["runs"]
    curve_rows = []
    for r in runs:
        points = r["curve"]
        curve_rows.append(
            [f"{r['beds']:,}"]
            + [f"{(c['rss_kib'] - r['rss_0_beds_kib']) / r['beds']:.1f}" for c in points]
        )
    width = max(len(r["curve"]) for r in runs)
    curve_rows = [row + [""] * (width + 1 - len(row)) for row in curve_rows]
    return "\n".join(
        [
            machine_line(result["machine"]),
            f"each bed: {', '.join(runs[0]['vitals'])} at 1 Hz for {runs[0]['minutes']} min of "
            "event time, fed as JSON arrays of 10 s; RSS = VmRSS of the daemon; baseline: the "
            "same daemon started and idle, 0 beds",
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
                    "feed s",
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
            "KiB per bed: (RSS after - RSS with 0 beds) / beds. marginal: (RSS after - the "
            "previous row's RSS after) / (beds - its beds): what one more bed costs.",
            "",
            "KiB per bed above the 0-bed RSS after each minute of event time:",
            table(["beds", *(f"{m + 1} min" for m in range(width))], curve_rows),
            "",
            "numpy buffers of one series' window at 1 Hz (KiB; Window grows its buffer 1.5x when "
            "more than 7/8 full at compaction):",
            table(
                [
                    "vital",
                    "default span",
                    "after 10 min",
                    "steady, 10-min window",
                    "steady, default span",
                ],
                [
                    [
                        w["vital"],
                        f"{w['default_span_s'] / 60:g} min",
                        f"{w['after_10_min_bytes'] / 1024:.1f}",
                        f"{w['steady_10_min_window_bytes'] / 1024:.1f}",
                        f"{w['steady_default_span_bytes'] / 1024:.1f}",
                    ]
                    for w in result["windows"]
                ],
            ),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
