"""A real VictoriaMetrics (Debian's ``victoria-metrics`` 1.79.5) as an InfluxDB-protocol store.

Line protocol goes in through ``/api/v2/write`` (what ``influxdb_client`` speaks); assertions read
raw samples back through ``/api/v1/export``. Nothing is mocked; waiting is a poll with a deadline.
What the helpers rely on, established against 1.79.5:

* ``vitals,ward=icu,bed=7 hr=72,spo2=97 <ns>`` becomes one series per field, named
  ``<measurement>_<field>`` (``vitals_hr``, ``vitals_spo2``), with the tags as labels and the
  timestamp cut to milliseconds; ``org``/``bucket`` add no label. A string field is stored as
  the number 0, a boolean as 1/0. A timestamp of literally 0 means "now".
* ``-dedup.minScrapeInterval=1ms`` makes export return one sample per (series, millisecond) however
  often it was written (without it every re-sent point is exported again). Which value survives
  when the duplicates differ is not reliably "the last written".
* A line that does not parse is skipped with ``204 No Content`` all the same, and only logged;
  :meth:`VictoriaMetrics.write_lines` looks at that log so a baseline cannot silently lose a line.
  Samples stamped later than now + 2 days are dropped the same way (log throttled to one per 5 s;
  ``vm_rows_ignored_total{reason="big_timestamp"}`` counts them).
* Without ``/internal/force_flush`` a point of a known series is exported ~1 s after the write and
  a point of a new series ~10 s after it; after a flush at once, so
  :meth:`VictoriaMetrics.wait_for_count` flushes on every poll.
* SIGTERM persists everything. SIGKILL loses what was acknowledged in the last ~10 s (~5 s after a
  flush): a "crash" test with :meth:`VictoriaMetrics.kill` must expect that.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

VICTORIA = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"

VITALS = '{__name__=~"vitals_.*"}'
"""Series selector for every field of the ``vitals`` measurement."""

_SKIPPED_LINE = "cannot unmarshal InfluxDB line"  # 1.79.5 logs this, unthrottled, per bad line


@dataclass(frozen=True)
class Point:
    """One exported sample, e.g. ``vitals_hr{ward="icu",bed="7"} 72.0 @ 1764324000250`` (ms)."""

    name: str
    labels: dict[str, str]
    value: float
    ts: int

    @property
    def key(self) -> tuple[str, frozenset[tuple[str, str]], int]:
        """Hashable identity of the sample: series and timestamp (not the value)."""
        return self.name, frozenset(self.labels.items()), self.ts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VictoriaMetrics:
    """``victoria-metrics`` on a free loopback port; data and ``vm.log`` under ``workdir``."""

    def __init__(self, workdir: Path, binary: str = VICTORIA) -> None:
        self.workdir = Path(workdir)
        self.binary = binary
        self.port: int | None = None  # chosen by the first start(), kept by restart()
        self.proc: subprocess.Popen[bytes] | None = None

    # --- process -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.port is not None, "VictoriaMetrics was never started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def logfile(self) -> Path:
        return self.workdir / "vm.log"

    def log(self, since: int = 0) -> str:
        """The server's log from byte offset ``since`` (see :meth:`log_size`)."""
        try:
            with self.logfile.open("rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        return self.logfile.stat().st_size if self.logfile.exists() else 0

    def log_tail(self, lines: int = 30, since: int = 0) -> str:
        return "\n".join(self.log(since).splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        """Start (on the same port with the same data if it ran before); wait for ``/health``."""
        assert not self.running(), "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        fixed = self.port is not None
        for _attempt in range(1 if fixed else 3):
            if not fixed:
                self.port = _free_port()
            offset = self.log_size()
            if self._spawn(timeout):
                return
            # A port from _free_port() can be taken before the server binds it: pick another.
            if "address already in use" not in self.log(offset):
                break
        raise RuntimeError(
            f"victoria-metrics did not start on 127.0.0.1:{self.port}; "
            f"log tail ({self.logfile}):\n{self.log_tail(since=offset)}"
        )

    def _spawn(self, timeout: float) -> bool:
        argv = [
            self.binary,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.data}",
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-dedup.minScrapeInterval=1ms",
        ]
        with self.logfile.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self._healthy():
                return True
            time.sleep(0.02)
        self.kill()
        return False

    def _healthy(self) -> bool:
        try:
            return self._get("/health", timeout=0.5) == b"OK"
        except (OSError, http.client.HTTPException):
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (the server persists everything first) and wait for the exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(
                    f"victoria-metrics ignored SIGTERM for {timeout} s:\n{self.log_tail()}"
                ) from None
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: what was written in the last ~10 s (~5 s after a flush) is lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """Stop (if running) and start again on the same port with the same data."""
        self.stop()
        self.start()

    # --- HTTP ----------------------------------------------------------------------------

    def _get(self, path: str, timeout: float = 10.0) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return bytes(r.read())

    def flush(self) -> None:
        """Make every accepted sample visible to export now (``/internal/force_flush``)."""
        self._get("/internal/force_flush")

    def export(self, match: str = VITALS) -> list[Point]:
        """Samples of the series matching ``match`` (deduplicated), sorted by series and time.

        Export sees what was flushed: call :meth:`flush` first, or use :meth:`wait_for_count`.
        """
        # Left to itself export ends at the current second, truncated: a sample stamped "now"
        # would show up to 1 s late. The server keeps nothing later than now + 2 days.
        end = int(time.time()) + 3 * 86400
        query = urllib.parse.urlencode({"match[]": match, "start": 0, "end": end})
        points: list[Point] = []
        for line in self._get(f"/api/v1/export?{query}").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            labels = dict(row["metric"])
            name = labels.pop("__name__", "")
            points.extend(
                Point(name, labels, float(v), int(ts))
                for v, ts in zip(row["values"], row["timestamps"], strict=True)
            )
        points.sort(key=lambda p: (p.name, sorted(p.labels.items()), p.ts))
        return points

    def count(self, match: str = VITALS) -> int:
        """How many samples match now (no flush: see :meth:`export`)."""
        return len(self.export(match))

    def wait_for_count(self, n: int, match: str = VITALS, timeout: float = 10.0) -> list[Point]:
        """Flush and export until exactly ``n`` samples match; -> those samples.

        Fails at once if more than ``n`` match: samples are never removed, so that is final.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.flush()
            points = self.export(match)
            if len(points) == n:
                return points
            if len(points) > n or time.monotonic() > deadline:
                shown = "\n".join(map(str, points[:20]))
                more = "\n..." if len(points) > 20 else ""
                how = "got" if len(points) > n else f"timed out after {timeout} s with"
                raise AssertionError(
                    f"expected {n} samples matching {match}, {how} {len(points)}:\n{shown}{more}"
                )
            time.sleep(0.02)

    def metrics(self) -> str:
        """The server's own ``/metrics`` text (the server caches it for ~1 s)."""
        return self._get("/metrics").decode()

    def write_lines(
        self, lines: str | Iterable[str], precision: str = "ns", check: bool = True
    ) -> None:
        """POST raw InfluxDB line protocol to ``/api/v2/write``, as influxdb_client does.

        The server answers 204 even when it skips a malformed line; with ``check`` a skipped line
        (seen in the server's log during this request, so also one sent by someone else at the
        same moment) raises ``ValueError``.
        """
        body = lines if isinstance(lines, str) else "\n".join(lines)
        offset = self.log_size()
        query = urllib.parse.urlencode({"org": "o", "bucket": "b", "precision": precision})
        req = urllib.request.Request(
            f"{self.url}/api/v2/write?{query}",
            data=body.encode(),
            method="POST",
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            raise RuntimeError(f"write answered {e.code}: {detail}") from e
        if status != 204:
            raise RuntimeError(f"write answered {status}, expected 204")
        if check:
            skipped = [line for line in self.log(offset).splitlines() if _SKIPPED_LINE in line]
            if skipped:
                raise ValueError("victoria-metrics skipped lines:\n" + "\n".join(skipped))


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A fresh VictoriaMetrics per test, stopped (killed if need be) afterwards."""
    if not Path(VICTORIA).exists():
        pytest.fail("victoria-metrics is not installed: apt-get install victoria-metrics")
    vm = VictoriaMetrics(tmp_path / "victoria")
    vm.start()
    try:
        yield vm
    finally:
        try:
            vm.stop()
        finally:
            vm.kill()
