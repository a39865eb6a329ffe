"""Codec: messages/s that ``decode()`` turns into readings, msgspec with its fast path
(ours) vs the stdlib ``json`` path it replaced (``decode_stdlib``, the baseline).

Pure CPU, one process, no broker: each payload is decoded ``--number`` times in a row,
ours and the baseline interleaved, best of ``--repeat`` rounds (the least disturbed by
the rest of the machine). Payloads as devices send them (benchmarks/common.py):

* ``single``: one reading, ``{"ts": ..., "hr": 78}``;
* ``object``: six vitals of one instant (hr spo2 rr sbp dbp map);
* ``batch100``: 100 readings, a JSON array of 100 single-reading objects;
* ``array10``: a JSON array of 10 six-vital objects (60 readings, a device's backlog);
* ``senml``: a SenML pack of the six vitals.

It also counts the payloads that took the reference path inside ours: 0 for all of these.

    python benchmarks/codec.py [--quick] [--json FILE]
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Callable
from typing import Any

from common import SIX, machine, machine_line, normal_value, parser, table, write_json

from monitor.config import DEFAULT_ALIASES
from monitor.sources import codecs
from monitor.sources.codecs import Decoded, Limits, Origin, decode, decode_stdlib

NOW = 1764324000.0
ORIGIN = Origin("vitals/icu/7/mon1", "icu", "7", "mon1")
LIMITS = Limits(aliases=DEFAULT_ALIASES)
SENML_NAMES = {"hr": "HR", "spo2": "SpO2", "rr": "resp", "sbp": "sbp", "dbp": "dbp", "map": "map"}


def payloads(seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    t0 = NOW - 600

    def six(ts: float) -> dict[str, Any]:
        return {"ts": ts, **{v: normal_value(rng, v) for v in SIX}}

    senml: list[dict[str, Any]] = [{"bn": "urn:dev:mac:0024befffe804ff1:", "bt": t0}]
    senml += [{"n": SENML_NAMES[v], "v": normal_value(rng, v)} for v in SIX]
    return {
        "single": dumps({"ts": t0, "hr": normal_value(rng, "hr")}).encode(),
        "object": dumps(six(t0)).encode(),
        "batch100": dumps(
            [{"ts": t0 + i, "hr": normal_value(rng, "hr")} for i in range(100)]
        ).encode(),
        "array10": dumps([six(t0 + i) for i in range(10)]).encode(),
        "senml": dumps(senml).encode(),
    }


def best_rate(fn: Callable[[], Decoded], number: int, rounds: list[float]) -> None:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    rounds.append(number / (time.perf_counter() - start))


def fallbacks(payload: bytes) -> int:
    """1 if decode() hands ``payload`` to the reference path, else 0."""
    return int(codecs._fast_doc(payload) is codecs._REFERENCE)


def main() -> None:
    p = parser(__doc__, "codec")
    p.add_argument("--repeat", type=int, default=7, help="rounds; the best counts")
    p.add_argument("--number", type=int, default=0, help="decodes per round (0: by size)")
    args = p.parse_args()
    repeat = 2 if args.quick else args.repeat
    m = machine()
    print(machine_line(m))
    import msgspec

    print(f"msgspec {msgspec.__version__}")
    rows, results = [], []
    for name, payload in payloads().items():
        new = decode(payload, ORIGIN, NOW, LIMITS)
        old = decode_stdlib(payload, ORIGIN, NOW, LIMITS)
        assert new.readings == old.readings
        assert new.rejections == old.rejections == []
        readings = len(new.readings)
        number = args.number or max(20, 40_000 // readings // (20 if args.quick else 1))
        ours: list[float] = []
        base: list[float] = []
        for _ in range(repeat):
            best_rate(functools.partial(decode, payload, ORIGIN, NOW, LIMITS), number, ours)
            best_rate(functools.partial(decode_stdlib, payload, ORIGIN, NOW, LIMITS), number, base)
        o, b = max(ours), max(base)
        results.append(
            {
                "payload": name,
                "bytes": len(payload),
                "readings_per_message": readings,
                "baseline_msgs_per_s": round(b),
                "ours_msgs_per_s": round(o),
                "baseline_readings_per_s": round(b * readings),
                "ours_readings_per_s": round(o * readings),
                "ratio": round(o / b, 2),
                "fallbacks": fallbacks(payload),
            }
        )
        rows.append(
            [
                name,
                str(len(payload)),
                str(readings),
                f"{b:,.0f}",
                f"{o:,.0f}",
                f"{o * readings:,.0f}",
                f"{o / b:.2f}x",
                str(fallbacks(payload)),
            ]
        )
    print()
    print(
        table(
            [
                "payload",
                "bytes",
                "readings",
                "stdlib msg/s",
                "ours msg/s",
                "ours readings/s",
                "ours/stdlib",
                "fallback",
            ],
            rows,
        )
    )
    write_json(args.json, {"machine": m, "repeat": repeat, "payloads": results})


if __name__ == "__main__":
    main()
