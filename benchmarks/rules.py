"""Rules: vital samples/s through the engine alone, at steady state, vs two bare baselines.

Each bed reports six vitals (hr spo2 rr sbp dbp map, normal adult values, nothing beyond
a limit) once a second, in time order, one ``Engine.process()`` call per bed and second
(the six readings of one monitor message, as the daemon calls it). Before anything is
timed, every engine is filled: each bed's series get the event time their windows span
under the engine's rules (``common.vital_needs``: 4 h 5 min for hr, spo2, rr and sbp with
the default trend and baseline rules, 10 min otherwise), one reading every
``--fill-step`` s, fed as fast as the engine takes them (not timed). Then rounds of
event time at 1 Hz are timed (each round's readings made beforehand, untimed) until
``--min-time`` s have been timed; that is one repeat, and ``--repeat`` repeats give the
median and the spread (min..max).

* ours: ``monitor.engine.Engine(RulesConfig(), sinks=[]).process(readings)``: default
  thresholds, trend and baseline rules, NEWS2, flapping, sensor state;
* ours, no trends: the same with ``rules.trends.enabled: false`` (its windows span 10 min);
* window append (baseline): ``monitor.engine.window.Window.add`` into a dict of
  per-series windows (600 s): the bare numpy sliding window, no rule at all;
* naive loop (baseline): a plain Python loop comparing each value to its vital's warn
  limits, counting those beyond: the naive monitor.

The target (issue 16): ours >= 1,000,000 samples/s on one core at 10,000 beds with full
4-hour windows.

    python benchmarks/rules.py [--quick] [--json FILE] [--fill-s S] [--fill-step S]
                               [--min-time S] [--repeat N]
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from common import (
    SIX,
    default_fill_s,
    fill_value,
    machine,
    machine_line,
    normal_value,
    parser,
    table,
    target,
    targets_table,
    vital_needs,
    write_json,
)

from monitor.config import RulesConfig
from monitor.engine import Engine
from monitor.engine.window import Window
from monitor.model import Reading

T0 = 1764324000.0
#: cases: (beds, fill step s, seconds of event time per timed round at first); the
#: target is the last (largest) one
FULL = ((1, 1.0, 600), (10_000, 600.0, 1))
QUICK = ((1, 1.0, 120), (300, 600.0, 1))
TARGET_SAMPLES_PER_S = 1_000_000

Batch = Sequence[Reading]
Runner = Callable[[list[Batch]], None]


def make_batches(beds: int, seconds: int, start: float, seed: int = 1) -> list[Batch]:
    """One batch (six readings) per bed and second, in time order."""
    rng = random.Random(seed)
    out: list[Batch] = []
    names = [str(b) for b in range(1, beds + 1)]
    for s in range(seconds):
        ts = start + s
        for bed in names:
            out.append(
                [Reading(ts, "icu", bed, "mon1", v, float(normal_value(rng, v))) for v in SIX]
            )
    return out


def fill_batches(
    beds: int, end: float, span_s: float, step_s: float, needs: dict[str, float], seed: int = 2
) -> list[Batch]:
    """The fill: event time ``end - span_s`` .. ``end`` (exclusive), a reading every
    ``step_s`` per series, each vital only as far back as its window reaches."""
    rng = random.Random(seed)
    out: list[Batch] = []
    names = [str(b) for b in range(1, beds + 1)]
    n = max(0, math.ceil(span_s / step_s))
    for i in range(n):
        ts = end - span_s + i * step_s
        vitals = [v for v in SIX if ts >= end - needs[v]]
        if not vitals:
            continue
        for bed in names:
            out.append(
                [
                    Reading(ts, "icu", bed, "mon1", v, float(fill_value(rng, v, step_s)))
                    for v in vitals
                ]
            )
    return out


class EngineCase:
    """An engine (``rules``) filled for ``beds`` beds."""

    def __init__(self, rules: RulesConfig) -> None:
        self.rules = rules

    def fresh(self) -> Runner:
        engine = Engine(self.rules, sinks=[])

        def run(batches: list[Batch]) -> None:
            process = engine.process
            for batch in batches:
                events = process(list(batch))
                if events:
                    raise RuntimeError(f"normal values raised an alert: {events[0]}")

        return run


def window_runner() -> Runner:
    windows: dict[tuple[str, str, str, str], Window] = {}

    def run(batches: list[Batch]) -> None:
        for batch in batches:
            for r in batch:
                key = (r.ward, r.bed, r.device, r.vital)
                w = windows.get(key)
                if w is None:
                    w = windows[key] = Window(600.0)
                w.add(r.ts, r.value)

    return run


def naive_runner() -> Runner:
    limits: dict[str, tuple[float, float]] = {}
    for vital, tc in RulesConfig().thresholds.items():
        low = tc.low.warn if tc.low is not None else None
        high = tc.high.warn if tc.high is not None else None
        limits[vital] = (-math.inf if low is None else low, math.inf if high is None else high)
    state = {"beyond": 0}

    def run(batches: list[Batch]) -> None:
        beyond = 0
        for batch in batches:
            for r in batch:
                lim = limits.get(r.vital)
                if lim is not None and (r.value < lim[0] or r.value > lim[1]):
                    beyond += 1
        state["beyond"] += beyond

    return run


def measure(
    fresh: Callable[[], Runner],
    needs: dict[str, float],
    beds: int,
    fill_s: float,
    fill_step: float,
    round_s: int,
    min_time: float,
    repeat: int,
) -> dict[str, Any]:
    """Fill (untimed), then ``repeat`` times: rounds of ``round_s`` s of event time until
    ``min_time`` s are timed -> samples/s (median, min, max) and what was done."""
    run = fresh()
    end = T0 + fill_s
    fill = fill_batches(beds, end, fill_s, fill_step, needs) if fill_s > 0 else []
    t = time.perf_counter()
    run(fill)
    fill_seconds = time.perf_counter() - t
    fill_samples = sum(len(b) for b in fill)
    del fill
    rates = []
    samples = 0
    ts = end
    for r in range(repeat):
        timed = 0.0
        n = 0
        while timed < min_time:
            batches = make_batches(beds, round_s, ts, seed=r * 1000 + int(ts) % 1000)
            ts += round_s
            start = time.perf_counter()
            run(batches)
            took = time.perf_counter() - start
            timed += took
            n += sum(len(b) for b in batches)
            if took < min_time / 8 and beds * round_s * len(SIX) < 1_000_000:
                round_s *= 2  # a fast runner: fewer, longer rounds (making them is untimed)
        rates.append(n / timed)
        samples += n
    return {
        "samples_per_s": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "repeats": rates,
        "timed_samples": samples,
        "fill_samples": fill_samples,
        "fill_seconds": fill_seconds,
        "event_s_timed": ts - end,
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "rules")
    p.add_argument(
        "--fill-s",
        type=float,
        default=None,
        help=f"event time filled before timing (default: the rules' need, {default_fill_s():g} "
        "s; 0: no fill)",
    )
    p.add_argument(
        "--fill-step",
        type=float,
        default=None,
        help="s of event time between a series' fill readings (default: 1 for 1 bed, 600 "
        "for 10,000 beds: at 1 Hz their fill is 600 M samples)",
    )
    p.add_argument("--min-time", type=float, default=5.0, help="s timed per repeat")
    p.add_argument("--repeat", type=int, default=3, help="repeats per runner (median, spread)")
    args = p.parse_args(argv)
    cases = QUICK if args.quick else FULL
    min_time, repeat = (0.2, 2) if args.quick else (args.min_time, args.repeat)
    default_rules = RulesConfig()
    no_trends = RulesConfig.model_validate({"trends": {"enabled": False}})
    fill_s = default_fill_s() if args.fill_s is None else args.fill_s
    if args.quick and args.fill_s is None:
        fill_s = 1800.0
    runners: dict[str, tuple[Callable[[], Runner], dict[str, float]]] = {
        "ours": (EngineCase(default_rules).fresh, vital_needs(SIX, default_rules)),
        "ours_no_trends": (EngineCase(no_trends).fresh, vital_needs(SIX, no_trends)),
        "window_append": (window_runner, vital_needs(SIX, no_trends)),
        "naive_loop": (naive_runner, {v: 0.0 for v in SIX}),
    }
    result: dict[str, Any] = {
        "machine": machine(),
        "fill_s": fill_s,
        "min_time_s": min_time,
        "repeat": repeat,
        "cases": [],
    }
    for beds, case_step, round_s in cases:
        name = f"{beds:,} bed" + ("s" if beds > 1 else "")
        step = args.fill_step if args.fill_step is not None else case_step
        runs = {
            # the baselines are 10-100x faster: a tenth of the time (making the readings,
            # untimed, would take far longer than timing them)
            key: measure(
                fresh,
                needs,
                beds,
                fill_s,
                step,
                round_s,
                min_time if key.startswith("ours") else min_time / 10,
                repeat,
            )
            for key, (fresh, needs) in runners.items()
        }
        rate = {key: r["samples_per_s"] for key, r in runs.items()}
        result["cases"].append(
            {
                "case": name,
                "beds": beds,
                "fill_step_s": step,
                "round_s": round_s,
                "samples": runs["ours"]["timed_samples"],
                "samples_per_s": rate,
                "runs": runs,
                "ours_pct_of_window_append": 100 * rate["ours"] / rate["window_append"],
                "ours_pct_of_naive_loop": 100 * rate["ours"] / rate["naive_loop"],
            }
        )
        print(f"{name}: done", file=sys.stderr, flush=True)
    result["targets"] = targets(result)
    print(report(result))
    write_json(args.json, result)
    return 0


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    case = max(result["cases"], key=lambda c: c["beds"])
    return [
        target(
            f"rules: samples/s, one core, {case['case']}, full windows",
            TARGET_SAMPLES_PER_S,
            case["samples_per_s"]["ours"],
            "samples/s",
        )
    ]


def report(result: dict[str, Any]) -> str:
    def cell(c: dict[str, Any], key: str) -> str:
        r = c["runs"][key]
        spread = 100 * (r["max"] - r["min"]) / r["samples_per_s"] if r["samples_per_s"] else 0
        return f"{r['samples_per_s']:,.0f} ±{spread / 2:.0f}%"

    return "\n".join(
        [
            machine_line(result["machine"]),
            "vital samples/s through Engine.process alone (six vitals per bed per second, normal "
            "values, one process() per bed-second) at steady state: windows filled first; "
            "baselines: Window.add into per-series windows (bare numpy window), and a plain "
            "loop comparing values to the warn limits (naive monitor)",
            f"median of {result['repeat']} repeats of >= {result['min_time_s']:g} s timed each; "
            "± half the spread (max - min) over the repeats",
            "",
            table(
                [
                    "case",
                    "samples",
                    "ours",
                    "ours, no trends",
                    "window append",
                    "naive loop",
                    "ours % of window",
                    "ours % of naive",
                ],
                [
                    [
                        c["case"],
                        f"{c['samples']:,}",
                        cell(c, "ours"),
                        cell(c, "ours_no_trends"),
                        cell(c, "window_append"),
                        cell(c, "naive_loop"),
                        f"{c['ours_pct_of_window_append']:.1f}",
                        f"{c['ours_pct_of_naive_loop']:.2f}",
                    ]
                    for c in result["cases"]
                ],
            ),
            "",
            "fill before timing (untimed): "
            + "; ".join(
                f"{c['case']}: {result['fill_s'] / 3600:.2f} h of event time, a reading every "
                f"{c['fill_step_s']:g} s per series, {c['runs']['ours']['fill_samples']:,} "
                f"samples in {c['runs']['ours']['fill_seconds']:.0f} s (ours)"
                for c in result["cases"]
            ),
            "a fill step above 1 s leaves the windows spanning the rules' need but holding "
            "fewer readings than at 1 Hz (cheaper medians and fits): that case's rate is an "
            "upper bound for today's engine",
            "",
            targets_table(result["targets"]),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
