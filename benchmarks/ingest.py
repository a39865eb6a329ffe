"""Ingest: readings/s the daemon fully processes at steady state vs a bare ``mosquitto_sub``.

One broker, one pre-encoded stream per variant (``--beds`` 20 beds, normal values, 1 s apart
per series), sent by the same raw QoS 1 publisher (at most 1000 unacknowledged) to
``vitals/icu/{bed}/mon1``:

* ``single``: one message per reading, ``{"ts": ..., "hr": 78}``;
* ``object``: one message per bed and second with six vitals (hr spo2 rr sbp dbp map);
* ``array10``: one message per bed and 10 s, a JSON array of 10 such objects.

ours: a fresh ``python -m monitor run`` (SQLite store with ``synchronous`` normal, then a
second one with full; default rules). Before measuring, every bed is filled
(``common.Fill``): ``--fill-s`` of event time (default: what the default rules need,
4 h 5 min) at one reading per ``--fill-step`` s, fast, so that every window is as full as
at steady state; the fill ends where the streams begin, and the streams (one after the
other, event time running on) end just behind the wall clock. Per variant the clock runs
from the first publish until ``vitalmon_readings_committed_total`` (its metrics
endpoint, polled every 0.1 s) has grown by the stream's readings, i.e. every reading
parsed, evaluated, committed and acknowledged. baseline: ``mosquitto_sub -t 'vitals/#'
-q 1`` on the same messages after the daemons have stopped, its output counted; the clock
runs from the first publish to the last message received.

Target (issue 16): one reading per message, ours >= 50 % of mosquitto_sub's msg/s.

    python benchmarks/ingest.py [--quick] [--json FILE] [--beds 20] [--fill-s S]
                                [--fill-step S] [--synchronous normal,full] [--profile DIR]
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    MOSQUITTO_SUB,
    Broker,
    Daemon,
    Fill,
    RawPublisher,
    bed_messages,
    default_fill_s,
    encode_all,
    fill_line,
    fill_options,
    forget_session,
    machine,
    machine_line,
    parser,
    publish_packet,
    table,
    target,
    targets_table,
    wait_for,
    write_json,
)

BEDS = 20
SYNCHRONOUS = ("normal", "full")
#: variant -> messages (full size)
MESSAGES = {"single": 60_000, "object": 20_000, "array10": 3_000}
QUICK = {"single": 1_200, "object": 400, "array10": 60}
QUICK_FILL_S = 600.0
TARGET_PCT_OF_SUB = 50.0
POLL_S = 0.1
CLK_TCK = 100  # os.sysconf("SC_CLK_TCK") on Linux


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def stream_seconds(shape: str, messages: int, beds: int) -> int:
    """Event time a stream of ``messages`` spans per bed."""
    per_bed_second = {"single": 6, "object": 1, "array10": 0.1}[shape]
    seconds = max(1, round(messages / beds / per_bed_second))
    return max(10, seconds // 10 * 10) if shape == "array10" else seconds  # whole arrays


def stream(shape: str, messages: int, beds: int, t0: float) -> tuple[list[bytes], int]:
    """-> (PUBLISH packets, readings), event time from ``t0``."""
    names = [str(b) for b in range(1, beds + 1)]
    msgs, readings = bed_messages(names, stream_seconds(shape, messages, beds), t0, shape)
    return encode_all(msgs), readings


def send_in_background(pub: RawPublisher, packets: list[bytes]) -> threading.Thread:
    t = threading.Thread(target=pub.send, args=(packets,), name="publisher", daemon=True)
    t.start()
    return t


class LineCounter:
    """``mosquitto_sub`` with its output lines counted in a thread."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO_SUB, "-p", str(port), "-t", "vitals/#", "-q", "1", "-i", "bare-sub"],
            stdout=subprocess.PIPE,
        )
        self.count = 0
        self.target = -1
        self.reached = threading.Event()
        self.at = 0.0
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 1 << 16):
            with self._lock:
                self.count += chunk.count(b"\n")
                if self.count >= self.target >= 0 and not self.reached.is_set():
                    self.at = time.perf_counter()
                    self.reached.set()

    def expect(self, n: int) -> None:
        with self._lock:
            self.count, self.target = 0, n

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def baseline(port: int, packets: list[bytes]) -> dict[str, Any]:
    sub = LineCounter(port)
    try:
        # ready when a marker published after its start comes back
        marker = RawPublisher(port, "marker")

        def subscribed() -> bool:
            marker.send([publish_packet("vitals/_/_/ready", b"{}", 1)])
            return sub.count > 0

        wait_for(subscribed, 10, "mosquitto_sub subscribed", every=0.05)
        marker.drain()
        marker.close()
        time.sleep(0.2)
        sub.expect(len(packets))
        pub = RawPublisher(port, "bench-pub")
        cpu0, t0 = cpu_s(sub.proc.pid), time.perf_counter()
        sender = send_in_background(pub, packets)
        sender.join()
        sent_s = time.perf_counter() - t0
        if not sub.reached.wait(120):
            raise RuntimeError(f"mosquitto_sub got {sub.count} of {len(packets)} messages")
        seconds = sub.at - t0
        cpu = cpu_s(sub.proc.pid) - cpu0
        pub.drain()
        pub.close()
    finally:
        sub.stop()
    return {"seconds": seconds, "publish_seconds": sent_s, "cpu_pct": 100 * cpu / seconds}


def ours(
    d: Daemon, port: int, name: str, packets: list[bytes], readings: int, profile: Path | None
) -> dict[str, Any]:
    """One stream through the running daemon ``d`` -> seconds and CPU (and its profile)."""
    spy = None
    raw = None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        raw = profile / f"ingest-{name}.txt"
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(d.pid),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attaches
    m0 = d.metrics()
    done = sum(d.accounted()) + readings
    pub = RawPublisher(port, "bench-pub")
    cpu0, t0 = cpu_s(d.pid), time.perf_counter()
    sender = send_in_background(pub, packets)
    deadline = t0 + 600
    while sum(handled := d.accounted()) < done:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the daemon committed {handled[0]} of {done} readings")
        time.sleep(POLL_S)
    seconds = time.perf_counter() - t0
    cpu = cpu_s(d.pid) - cpu0
    sender.join()
    pub.drain()
    pub.close()
    m = d.metrics()
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
    refused = {
        k: v - m0.get(k, 0.0)
        for k, v in m.items()
        if k.startswith(("vitalmon_readings_rejected_total", "vitalmon_readings_duplicates_total"))
        or k.startswith("vitalmon_readings_not_evaluated_total")
    }
    if any(refused.values()):
        raise RuntimeError(f"readings refused, duplicated or not evaluated: {refused}")
    out: dict[str, Any] = {"seconds": seconds, "cpu_pct": 100 * cpu / seconds}
    if raw is not None:
        out["profile"] = str(raw)
        out["top"] = top_functions(raw)
    return out


def ours_filled(
    work: Path,
    port: int,
    sizes: dict[str, int],
    beds: int,
    fill: Fill,
    synchronous: str = "normal",
    profile: Path | None = None,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A fresh daemon (``store.synchronous``), filled, then every stream of ``sizes``
    (variant -> messages) in turn, event time running on from the fill's end to just
    behind the wall clock -> (the fill, {variant: result with its "packets"})."""
    client_id = f"bench-ingest-{synchronous}"
    names = [str(b) for b in range(1, beds + 1)]
    spans = {shape: stream_seconds(shape, n, beds) for shape, n in sizes.items()}
    ahead = sum(spans.values()) + 2  # the streams' event time, after the fill
    out: dict[str, dict[str, Any]] = {}
    with Daemon(work / client_id, port, client_id=client_id, synchronous=synchronous) as d:
        d.start()
        pub = RawPublisher(port, "bench-fill")
        filled = fill.run(pub, names, lambda: sum(d.accounted()), lambda: time.time() - ahead)
        pub.drain()
        pub.close()
        t0 = float(int(filled.get("end_ts", time.time() - ahead))) + 1
        for shape, n in sizes.items():
            packets, readings = stream(shape, n, beds, t0)
            t0 += spans[shape]
            mine = ours(d, port, f"{shape}-{synchronous}", packets, readings, profile)
            out[shape] = {**mine, "packets": packets, "readings": readings}
            print(f"{shape}, synchronous {synchronous}: done", file=sys.stderr, flush=True)
    forget_session(port, client_id)
    return filled, out


#: Frames that only carry the others (event loop, threads, entry points): not listed.
SCAFFOLDING = (
    "asyncio/",
    "threading.py",
    "runpy",
    "concurrent/futures",
    "selectors.py",
    "monitor/cli.py",
    "monitor/daemon.py",
    "monitor/__main__.py",
    "Client._thread_main",
    "Client.loop_forever",
    "Client._loop ",
)


def thread_of(frames: list[str]) -> str:
    if any("Client._thread_main" in f for f in frames):
        return "paho network thread"
    if any("concurrent/futures/thread.py" in f for f in frames):
        return "SQLite thread"
    if frames and frames[0].startswith("_run_module_as_main"):
        return "event loop (main thread)"
    return "other"


def top_functions(raw: Path, n: int = 15) -> dict[str, Any]:
    """py-spy's collapsed stacks -> share of samples per thread, and the functions with
    the most samples including their callees (total) and alone (self)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        samples += k
        frames = stack.split(";")
        threads[thread_of(frames)] += k
        labels = [re.sub(r":\d+\)$", ")", f) for f in frames]  # per function, not per line
        own[labels[-1]] += k
        for f in set(labels):
            total[f] += k
    if not samples:
        return {"samples": 0, "threads": {}, "functions": []}
    ranked = [f for f, _ in total.most_common() if not any(s in f for s in SCAFFOLDING)]
    return {
        "samples": samples,
        "threads": {t: 100 * c / samples for t, c in threads.most_common()},
        "functions": [
            {
                "function": f,
                "total_pct": 100 * total[f] / samples,
                "self_pct": 100 * own[f] / samples,
            }
            for f in ranked[:n]
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "ingest")
    p.add_argument("--beds", type=int, default=BEDS, help="beds in the stream")
    p.add_argument(
        "--synchronous",
        default=",".join(SYNCHRONOUS),
        help="the daemon's store.synchronous, one daemon each: normal, full",
    )
    fill_options(p, 1.0)
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record the daemon with py-spy (collapsed stacks in DIR) and print "
        "its top functions; slows ours down",
    )
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else MESSAGES
    modes = [m.strip() for m in args.synchronous.split(",") if m.strip()]
    if bad := [m for m in modes if m not in SYNCHRONOUS]:
        p.error(f"--synchronous: {', '.join(bad)} (normal or full)")
    fill_s = default_fill_s() if args.fill_s is None else args.fill_s
    if args.quick and args.fill_s is None:
        fill_s = QUICK_FILL_S
    fill = Fill(fill_s, args.fill_step)
    result: dict[str, Any] = {
        "machine": machine(),
        "beds": args.beds,
        "fill_s": fill_s,
        "fill_step_s": args.fill_step,
        "fill": {},
        "variants": [],
    }
    with tempfile.TemporaryDirectory(prefix="vitalmon-ingest-") as tmp:
        work = Path(tmp)
        with Broker(work / "broker") as broker:
            runs = {}
            for mode in modes:
                result["fill"][mode], runs[mode] = ours_filled(
                    work, broker.port, sizes, args.beds, fill, mode, args.profile
                )
            first = runs[modes[0]]
            for shape in sizes:
                packets, readings = first[shape]["packets"], first[shape]["readings"]
                base = baseline(broker.port, packets)
                print(f"{shape}, mosquitto_sub: done", file=sys.stderr, flush=True)
                msgs = len(packets)
                for mode in modes:
                    mine = runs[mode][shape]
                    row = {
                        "variant": shape,
                        "synchronous": mode,
                        "readings_per_message": readings / msgs,
                        "messages": msgs,
                        "readings": readings,
                        "publisher_msgs_per_s": msgs / base["publish_seconds"],
                        "baseline_msgs_per_s": msgs / base["seconds"],
                        "baseline_readings_per_s": readings / base["seconds"],
                        "baseline_cpu_pct": base["cpu_pct"],
                        "ours_msgs_per_s": msgs / mine["seconds"],
                        "ours_readings_per_s": readings / mine["seconds"],
                        "ours_cpu_pct": mine["cpu_pct"],
                        "ours_pct_of_baseline": 100 * base["seconds"] / mine["seconds"],
                        "seconds": {"baseline": base["seconds"], "ours": mine["seconds"]},
                    }
                    for k in ("profile", "top"):
                        if k in mine:
                            row[k] = mine[k]
                    result["variants"].append(row)
    result["targets"] = targets(result)
    print(report(result))
    write_json(args.json, result)
    return 0


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        target(
            f"ingest: one reading per message, synchronous {r['synchronous']}: % of "
            "mosquitto_sub msg/s",
            TARGET_PCT_OF_SUB,
            r["ours_pct_of_baseline"],
            "%",
        )
        for r in result["variants"]
        if r["variant"] == "single"
    ]


def report(result: dict[str, Any]) -> str:
    out = [
        machine_line(result["machine"]),
        f"{result['beds']} beds, normal values, QoS 1, one publisher (raw socket, <= 1000 "
        "unacknowledged); baseline: mosquitto_sub -t 'vitals/#' -q 1 counting lines; ours: "
        "vitalmon run (all default rules, SQLite) until vitalmon_readings_committed_total has "
        "grown by the stream's readings; sync: its store.synchronous",
        *(f"{mode}: {fill_line(f)}" for mode, f in result["fill"].items()),
        "",
        table(
            [
                "variant",
                "sync",
                "rd/msg",
                "messages",
                "readings",
                "publisher msg/s",
                "mosquitto_sub msg/s",
                "ours msg/s",
                "ours readings/s",
                "ours % of sub",
                "sub CPU %",
                "ours CPU %",
            ],
            [
                [
                    r["variant"],
                    r["synchronous"],
                    f"{r['readings_per_message']:g}",
                    f"{r['messages']:,}",
                    f"{r['readings']:,}",
                    f"{r['publisher_msgs_per_s']:,.0f}",
                    f"{r['baseline_msgs_per_s']:,.0f}",
                    f"{r['ours_msgs_per_s']:,.0f}",
                    f"{r['ours_readings_per_s']:,.0f}",
                    f"{r['ours_pct_of_baseline']:.1f}",
                    f"{r['baseline_cpu_pct']:.0f}",
                    f"{r['ours_cpu_pct']:.0f}",
                ]
                for r in result["variants"]
            ],
        ),
        "",
        "ours % of sub: messages/s of ours as a percentage of mosquitto_sub's on the same stream. "
        "CPU %: the subscriber process (100 = one core).",
        "",
        targets_table(result["targets"]),
    ]
    for r in result["variants"]:
        top = r.get("top")
        if not top:
            continue
        shares = ", ".join(f"{t} {pct:.0f} %" for t, pct in top["threads"].items())
        out += [
            "",
            f"py-spy, ours, {r['variant']} ({r['synchronous']}): {top['samples']} samples "
            f"({r['profile']}); by thread: {shares}",
        ]
        out.append(
            table(
                ["function (with callees)", "total %", "self %"],
                [
                    [t["function"], f"{t['total_pct']:.1f}", f"{t['self_pct']:.1f}"]
                    for t in top["functions"]
                ],
            )
        )
    return "\n".join(out)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
