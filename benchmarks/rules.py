"""Rules: vital samples/s through the engine alone, vs two bare baselines on the same samples.

Readings are generated beforehand: each bed reports six vitals (hr spo2 rr sbp dbp map,
normal adult values, nothing beyond a limit) once a second, in time order, one bed
after another within each second. Each engine first takes a warm-up period (windows
filling, series created; not timed), then the timed period, one ``process()`` call per
bed and second (the six readings of one monitor message, as the daemon calls it).

* ours: ``monitor.engine.Engine(RulesConfig(), sinks=[]).process(readings)``: default
  thresholds, trend and baseline rules, NEWS2, flapping, sensor state;
* ours, no trends: the same with ``rules.trends.enabled: false``;
* window append (baseline): ``monitor.engine.window.Window.add`` into a dict of
  per-series windows (600 s): the bare numpy sliding window, no rule at all;
* naive loop (baseline): a plain Python loop comparing each value to its vital's warn
  limits, counting those beyond: the naive monitor.

    python benchmarks/rules.py [--quick] [--json FILE]
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from common import SIX, machine, machine_line, normal_value, parser, table, write_json

from monitor.config import RulesConfig
from monitor.engine import Engine
from monitor.engine.window import Window
from monitor.model import Reading

T0 = 1764324000.0
#: name -> (beds, warm-up seconds, timed seconds)
FULL = {"1 bed": (1, 3600, 3600), "10,000 beds": (10_000, 2, 3)}
QUICK = {"1 bed": (1, 60, 120), "10,000 beds": (500, 1, 2)}

Batch = Sequence[Reading]


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


def engine_runner(rules: RulesConfig) -> Callable[[], Callable[[list[Batch]], None]]:
    def fresh() -> Callable[[list[Batch]], None]:
        engine = Engine(rules, sinks=[])

        def run(batches: list[Batch]) -> None:
            process = engine.process
            for batch in batches:
                if process(batch):
                    raise RuntimeError("normal values raised an alert")

        return run

    return fresh


def window_runner() -> Callable[[list[Batch]], None]:
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


def naive_runner() -> Callable[[list[Batch]], None]:
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
    fresh: Callable[[], Callable[[list[Batch]], None]], warm: list[Batch], timed: list[Batch]
) -> float:
    """Warm up (untimed), then time ``timed`` -> seconds."""
    run = fresh()
    run(warm)
    start = time.perf_counter()
    run(timed)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, "rules").parse_args(argv)
    cases = QUICK if args.quick else FULL
    runners: dict[str, Callable[[], Callable[[list[Batch]], None]]] = {
        "ours": engine_runner(RulesConfig()),
        "ours_no_trends": engine_runner(RulesConfig.model_validate({"trends": {"enabled": False}})),
        "window_append": window_runner,
        "naive_loop": naive_runner,
    }
    result: dict[str, Any] = {"machine": machine(), "cases": []}
    for name, (beds, warm_s, timed_s) in cases.items():
        warm = make_batches(beds, warm_s, T0)
        timed = make_batches(beds, timed_s, T0 + warm_s)
        n = sum(len(b) for b in timed)
        rate = {key: n / measure(fresh, warm, timed) for key, fresh in runners.items()}
        result["cases"].append(
            {
                "case": name,
                "beds": beds,
                "warmup_s": warm_s,
                "timed_s": timed_s,
                "samples": n,
                "samples_per_s": rate,
                "ours_pct_of_window_append": 100 * rate["ours"] / rate["window_append"],
                "ours_pct_of_naive_loop": 100 * rate["ours"] / rate["naive_loop"],
            }
        )
        print(f"{name}: done", file=sys.stderr, flush=True)
    print(report(result))
    write_json(args.json, result)
    return 0


def report(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            machine_line(result["machine"]),
            "vital samples/s through Engine.process alone (six vitals per bed per second, normal "
            "values, one process() per bed-second, after a warm-up); baselines: Window.add into "
            "per-series windows (bare numpy window), and a plain loop comparing values to the "
            "warn limits (naive monitor)",
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
                        f"{c['samples_per_s']['ours']:,.0f}",
                        f"{c['samples_per_s']['ours_no_trends']:,.0f}",
                        f"{c['samples_per_s']['window_append']:,.0f}",
                        f"{c['samples_per_s']['naive_loop']:,.0f}",
                        f"{c['ours_pct_of_window_append']:.1f}",
                        f"{c['ours_pct_of_naive_loop']:.2f}",
                    ]
                    for c in result["cases"]
                ],
            ),
            "",
            "warm-up before the timed samples: "
            + "; ".join(
                f"{c['case']}: {c['warmup_s']} s of event time, then {c['timed_s']} s timed"
                for c in result["cases"]
            ),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
