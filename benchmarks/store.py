"""Store benchmarks: ours side by side with a raw baseline, in the same run on the same machine.

1. SQLite commit: readings/s committed by :class:`SqliteSink` (one ``write`` per MQTT-like
   message of 1, 10 or 100 readings, each with a ``done`` callback; timed until the last
   ``done`` fires) vs ``executemany`` of the same rows into a bare table, one transaction
   per message, without and with the store's UNIQUE key.
2. Forwarding: readings/s forwarded by :class:`Forwarder` + :class:`InfluxRemote` from a
   pre-filled journal to a fresh VictoriaMetrics (timed until the cursor reaches the
   journal's head) vs a raw ``http.client`` POST of the same line protocol to
   ``/api/v2/write``. The point count in VictoriaMetrics is checked after every run.

    python benchmarks/store.py [--readings N] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import http.client
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

from common import NORMAL, table
from common import machine as common_machine

from monitor.broker import free_port
from monitor.config import InfluxStoreConfig, SqliteStoreConfig
from monitor.model import Reading
from monitor.sinks.forward import Forwarder, Row
from monitor.sinks.influx import InfluxRemote, reading_lines
from monitor.sinks.sqlite import SqliteSink, connect, read_readings

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "store.json"

T0 = 1764324000.0  # 2025-11-28 10:00 UTC: in the past, inside VictoriaMetrics' retention
WARD = "icu"
BEDS = 50
PER_WRITE = (1, 10, 100)  # readings per SqliteSink.write, i.e. per MQTT message
FORWARD_BATCHES = (500, 5000)  # journal rows per remote write

BARE_SCHEMA = """CREATE TABLE readings (
    ward TEXT NOT NULL, bed TEXT NOT NULL, device TEXT NOT NULL, vital TEXT NOT NULL,
    ts REAL NOT NULL, value REAL NOT NULL{key})"""
UNIQUE_KEY = ",\n    UNIQUE (ward, bed, device, vital, ts)"
COLS = "ward, bed, device, vital, ts, value"

VM_BINARY = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
VM_WRITE = "/api/v2/write?" + urllib.parse.urlencode(
    {"org": "bench", "bucket": "bench", "precision": "ns"}
)


def make_readings(n: int, seed: int = 1) -> list[Reading]:
    """``n`` readings: every second, each of 50 beds reports its 8 vitals."""
    rng = random.Random(seed)
    out: list[Reading] = []
    second = 0
    while len(out) < n:
        for b in range(1, BEDS + 1):
            bed = f"{b:02d}"
            for vital, (mean, sd, decimals) in NORMAL.items():
                value = round(rng.gauss(mean, sd), decimals)
                out.append(Reading(T0 + second, WARD, bed, f"mon-{bed}", vital, value))
        second += 1
    return out[:n]


def chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def count_rows(path: Path, table: str = "readings") -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


# ------------------------------------------------------------------------ SQLite commit


async def _ours_commit(path: Path, readings: list[Reading], per_write: int) -> tuple[float, int]:
    """SqliteSink with its default configuration -> (seconds, transactions)."""
    sink = SqliteSink(SqliteStoreConfig(path=str(path)))
    await sink.open()
    commit = sink._commit
    txns = 0

    def counting_commit(conn: sqlite3.Connection, *, batch: list[Any]) -> int:
        nonlocal txns
        txns += 1
        return commit(conn, batch=batch)

    sink._commit = counting_commit  # type: ignore[method-assign]
    task = asyncio.create_task(sink.run())
    messages = chunks(readings, per_write)
    pending = len(messages)
    finished = asyncio.Event()
    end = 0.0

    def done() -> None:
        nonlocal pending, end
        pending -= 1
        if pending == 0:
            end = time.perf_counter()
            finished.set()

    start = time.perf_counter()
    for message in messages:
        await sink.write(message, [], done)
    await finished.wait()
    sink.close()
    await task
    await sink.release()
    return end - start, txns


def ours_commit(path: Path, readings: list[Reading], per_write: int) -> tuple[float, int]:
    seconds, txns = asyncio.run(_ours_commit(path, readings, per_write))
    if (stored := count_rows(path)) != len(readings):
        raise RuntimeError(f"SqliteSink stored {stored} of {len(readings)} readings")
    return seconds, txns


def baseline_commit(path: Path, readings: list[Reading], per_txn: int, table: str) -> float:
    """``executemany`` of ``per_txn`` rows per transaction (WAL, synchronous=NORMAL) into
    ``table``: ``bare`` (no key, no index), ``unique`` (the store's UNIQUE key) or
    ``journal`` (SqliteSink's own schema, made by its ``connect()``) -> seconds."""
    if table == "journal":
        conn = connect(str(path))
        rows: list[tuple[Any, ...]] = [
            (r.ward, r.bed, r.device, r.vital, r.ts, r.value, r.patient) for r in readings
        ]
        sql = f"INSERT OR IGNORE INTO readings ({COLS}, patient) VALUES (?,?,?,?,?,?,?)"
    else:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # as SqliteSink's default
        conn.execute(BARE_SCHEMA.format(key=UNIQUE_KEY if table == "unique" else ""))
        rows = [(r.ward, r.bed, r.device, r.vital, r.ts, r.value) for r in readings]
        sql = f"INSERT OR IGNORE INTO readings ({COLS}) VALUES (?,?,?,?,?,?)"
    transactions = chunks(rows, per_txn)
    start = time.perf_counter()
    for part in transactions:
        conn.execute("BEGIN")
        conn.executemany(sql, part)
        conn.execute("COMMIT")
    seconds = time.perf_counter() - start
    conn.close()
    if (stored := count_rows(path)) != len(readings):
        raise RuntimeError(f"baseline {table} stored {stored} of {len(readings)} readings")
    return seconds


def bench_sqlite(work: Path, readings: list[Reading], repeat: int) -> list[dict[str, Any]]:
    n = len(readings)
    results = []
    for per_write in PER_WRITE:
        runs: dict[str, list[float]] = {"ours": [], "bare": [], "unique": [], "journal": []}
        txns = 0
        for i in range(repeat):  # interleaved, so drift of the machine hits all alike
            seconds, txns = ours_commit(work / f"ours-{per_write}-{i}.db", readings, per_write)
            runs["ours"].append(seconds)
            for kind in ("bare", "unique"):
                runs[kind].append(
                    baseline_commit(work / f"{kind}-{per_write}-{i}.db", readings, per_write, kind)
                )
            runs["journal"].append(
                baseline_commit(
                    work / f"journal-{per_write}-{i}.db", readings, -(-n // txns), "journal"
                )
            )
        best = {name: n / min(seconds) for name, seconds in runs.items()}
        results.append(
            {
                "readings_per_write": per_write,
                "ours_rps": best["ours"],
                "ours_transactions": txns,
                "bare_rps": best["bare"],
                "unique_rps": best["unique"],
                "baseline_transactions": -(-n // per_write),
                "journal_rps": best["journal"],
                "ours_vs_bare": best["ours"] / best["bare"],
                "ours_vs_unique": best["ours"] / best["unique"],
                "ours_vs_journal": best["ours"] / best["journal"],
                "seconds": runs,
            }
        )
    return results


# ------------------------------------------------------------------------ VictoriaMetrics


class Victoria:
    """A fresh ``victoria-metrics`` on a free loopback port (flags as in tests/tsdb.py)."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            VM_BINARY,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={workdir / 'data'}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-dedup.minScrapeInterval=1ms",
        ]
        self.log = workdir / "vm.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"victoria-metrics did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return bytes(r.read())

    def _healthy(self) -> bool:
        try:
            return self._get("/health") == b"OK"
        except (OSError, http.client.HTTPException):
            return False

    def count(self) -> int:
        """Samples of every ``vitals_*`` series, after a flush."""
        self._get("/internal/force_flush")
        query = urllib.parse.urlencode(
            {"match[]": '{__name__=~"vitals_.*"}', "start": 0, "end": int(time.time()) + 86400}
        )
        return sum(
            len(json.loads(line)["values"])
            for line in self._get(f"/api/v1/export?{query}").splitlines()
            if line.strip()
        )

    def expect(self, n: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while (got := self.count()) != n:
            if got > n or time.monotonic() > deadline:
                raise RuntimeError(f"VictoriaMetrics holds {got} samples, expected {n}")
            time.sleep(0.05)
        if "cannot unmarshal InfluxDB line" in self.log.read_text(errors="replace"):
            raise RuntimeError(f"VictoriaMetrics skipped lines, see {self.log}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------ forwarding


async def _prefill(path: Path, readings: list[Reading]) -> None:
    sink = SqliteSink(SqliteStoreConfig(path=str(path)))
    await sink.open()
    task = asyncio.create_task(sink.run())
    for message in chunks(readings, 1000):
        await sink.write(message, [])
    sink.close()
    await task
    await sink.release()


async def _ours_forward(journal: Path, url: str, batch: int, gzip_on: bool) -> float:
    """Forwarder + InfluxRemote from the journal's beginning to its head -> seconds."""
    sink = SqliteSink(SqliteStoreConfig(path=str(journal)))
    await sink.open()
    try:
        cfg = InfluxStoreConfig(url=url, org="bench", bucket="bench", gzip=gzip_on)
        fwd = Forwarder(
            f"bench:{url}",
            sink,
            InfluxRemote(cfg),
            batch_size=batch,
            start_from="beginning",
            retry_min_s=0.1,
            retry_max_s=1.0,
        )
        await fwd.open()
        start = time.perf_counter()
        task = asyncio.create_task(fwd.run())
        while fwd.cursor[0] < sink.head:
            if fwd.counts["send_errors"] or task.done():
                raise RuntimeError(f"forwarder failed: {fwd.counts}")
            await asyncio.sleep(0.002)
        seconds = time.perf_counter() - start
        fwd.close()
        await task
        return seconds
    finally:
        await sink.release()


def baseline_forward(url: str, bodies: list[str], gzip_on: bool) -> float:
    """One keep-alive connection, one POST per batch (encode and gzip timed) -> seconds."""
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=30)
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if gzip_on:
        headers["Content-Encoding"] = "gzip"
    start = time.perf_counter()
    for text in bodies:
        body = text.encode()
        if gzip_on:
            body = gzip.compress(body)  # the level influxdb-client uses (9)
        conn.request("POST", VM_WRITE, body=body, headers=headers)
        response = conn.getresponse()
        detail = response.read()
        if response.status != 204:
            raise RuntimeError(f"write answered {response.status}: {detail!r}")
    seconds = time.perf_counter() - start
    conn.close()
    return seconds


def _ours_forward_sync(journal: Path, batch: int, gzip_on: bool, url: str) -> float:
    return asyncio.run(_ours_forward(journal, url, batch, gzip_on))


def _baseline_forward_to(bodies: list[str], gzip_on: bool, url: str) -> float:
    return baseline_forward(url, bodies, gzip_on)


def on_fresh_vm(work: Path, n: int, run: Callable[[str], float]) -> float:
    """Run ``run(url)`` against a fresh VictoriaMetrics, check it holds ``n`` samples."""
    vm = Victoria(Path(tempfile.mkdtemp(prefix="vm-", dir=work)))
    try:
        seconds = run(vm.url)
        vm.expect(n)
        return seconds
    finally:
        vm.stop()


def read_journal(journal: Path, batch: int) -> tuple[list[Sequence[Row]], float]:
    """The journal as the forwarder reads it, batch by batch -> (batches, seconds)."""
    conn = sqlite3.connect(journal)
    batches: list[Sequence[Row]] = []
    start = time.perf_counter()
    while rows := read_readings(conn, batches[-1][-1][0] if batches else 0, batch):
        batches.append(rows)
    seconds = time.perf_counter() - start
    conn.close()
    return batches, seconds


def bench_forward(work: Path, readings: list[Reading], repeat: int) -> list[dict[str, Any]]:
    n = len(readings)
    journal = work / "journal.db"
    asyncio.run(_prefill(journal, readings))
    results = []
    for batch in FORWARD_BATCHES:
        # What ours does besides the POST, timed alone: read the journal, build the lines.
        parts, read_s = read_journal(journal, batch)
        start = time.perf_counter()
        bodies = ["\n".join(reading_lines(part)) for part in parts]
        lines_s = time.perf_counter() - start
        gzipped = sum(len(gzip.compress(body.encode())) for body in bodies)
        for gzip_on in (False, True):
            runs: dict[str, list[float]] = {"ours": [], "raw": []}
            for _ in range(repeat):
                runs["ours"].append(
                    on_fresh_vm(
                        work,
                        n,
                        partial(_ours_forward_sync, journal, batch, gzip_on),
                    )
                )
                runs["raw"].append(
                    on_fresh_vm(work, n, partial(_baseline_forward_to, bodies, gzip_on))
                )
            ours, raw = n / min(runs["ours"]), n / min(runs["raw"])
            results.append(
                {
                    "batch": batch,
                    "gzip": gzip_on,
                    "ours_rps": ours,
                    "raw_post_rps": raw,
                    "ours_vs_raw": ours / raw,
                    "journal_read_rps": n / read_s,
                    "reading_lines_rps": n / lines_s,
                    "bytes_per_reading": (gzipped if gzip_on else sum(map(len, bodies))) / n,
                    "verified_samples": n,
                    "seconds": runs,
                }
            )
    return results


# ------------------------------------------------------------------------ report


def machine() -> dict[str, Any]:
    """common.machine() plus the versions of influxdb-client and VictoriaMetrics."""
    try:
        vm = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "victoria-metrics"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        vm = "?"  # not Debian's package: the binary reports no version of its own
    return {
        **common_machine(),
        "influxdb_client": metadata.version("influxdb-client"),
        "victoria_metrics": vm,
    }


def report(result: dict[str, Any]) -> str:
    m = result["machine"]
    out = [
        f"machine: {m['cores']} cores ({m['usable_cores']} usable), {m['cpu']}; {m['platform']}",
        f"python {m['python']}, sqlite {m['sqlite']}, influxdb-client {m['influxdb_client']}, "
        f"victoria-metrics {m['victoria_metrics']}",
        f"{result['readings']} readings ({BEDS} beds x {len(NORMAL)} vitals, 1 s apart); "
        f"readings/s, best of {result['repeat']}; ratio = ours / baseline",
        "",
        "1. SQLite commit (WAL, synchronous=NORMAL). ours: SqliteSink (defaults), one write()",
        "   with a done callback per message, until the last done. bare / unique: executemany,",
        "   one transaction per message, into (ward, bed, device, vital, ts, value) without /",
        "   with the UNIQUE key. journal: executemany into SqliteSink's own schema in as many",
        "   transactions as ours made (what is left of ours/journal is the sink's machinery).",
        table(
            [
                "per write",
                "ours",
                "txns",
                "bare",
                "unique",
                "txns",
                "journal",
                "ours/bare",
                "ours/unique",
                "ours/journal",
            ],
            [
                [
                    str(r["readings_per_write"]),
                    f"{r['ours_rps']:,.0f}",
                    str(r["ours_transactions"]),
                    f"{r['bare_rps']:,.0f}",
                    f"{r['unique_rps']:,.0f}",
                    str(r["baseline_transactions"]),
                    f"{r['journal_rps']:,.0f}",
                    f"{r['ours_vs_bare']:.2f}",
                    f"{r['ours_vs_unique']:.2f}",
                    f"{r['ours_vs_journal']:.2f}",
                ]
                for r in result["sqlite"]
            ],
        ),
        "",
        "2. Forwarding to a fresh VictoriaMetrics (sample count verified after every run).",
        "   ours: Forwarder + InfluxRemote from a pre-filled journal until the cursor reaches",
        "   the head. raw: http.client POST of the same line protocol, one per batch (encode",
        "   and gzip timed, lines built beforehand). read / lines: ours' journal read and",
        "   reading_lines() timed alone. B/reading: body bytes per reading (gzip level 9).",
        table(
            ["batch", "gzip", "ours", "raw POST", "ours/raw", "read", "lines", "B/reading"],
            [
                [
                    str(r["batch"]),
                    "on" if r["gzip"] else "off",
                    f"{r['ours_rps']:,.0f}",
                    f"{r['raw_post_rps']:,.0f}",
                    f"{r['ours_vs_raw']:.2f}",
                    f"{r['journal_read_rps']:,.0f}",
                    f"{r['reading_lines_rps']:,.0f}",
                    f"{r['bytes_per_reading']:.1f}",
                ]
                for r in result["forward"]
            ],
        ),
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--readings", type=int, default=100_000, help="readings per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    args = parser.parse_args(argv)
    if args.readings < 1 or args.repeat < 1:
        parser.error("--readings and --repeat must be positive")
    if not Path(VM_BINARY).exists():
        parser.error("victoria-metrics is not installed (apt-get install victoria-metrics)")
    readings = make_readings(args.readings)
    result: dict[str, Any] = {
        "machine": machine(),
        "readings": args.readings,
        "repeat": args.repeat,
    }
    with tempfile.TemporaryDirectory(prefix="vitalmon-bench-") as tmp:
        work = Path(tmp)
        result["sqlite"] = bench_sqlite(work, readings, args.repeat)
        result["forward"] = bench_forward(work, readings, args.repeat)
    print(report(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
