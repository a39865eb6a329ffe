"""Faults on the HL7 MLLP listener (issue 15, B13): each test failed on the code before
its fix.

(a) A frame without its end (``0x1C 0x0D``) swallowed the complete message after it:
nothing of the second was stored, and the ACK carried the first one's control id.
(b) 64 idle connections from one address locked every sender out until the idle timeout
(600 s); a connection that never sent a message was kept as long.

Real sockets against a real daemon (``vitalmon run``, mosquitto, SQLite), or the source
on a real loopback socket; the framer alone where only bytes are at stake. Waits are
polls with a deadline or reads with a timeout, never sleeps.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import select
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import Hl7MllpSourceConfig
from monitor.sinks.sqlite import query_readings
from monitor.sources.devices import MllpFramer, frame
from monitor.sources.hl7mllp import Hl7MllpSource, RestartingMllpFramer

STAMP = time.strftime("%Y%m%d%H%M%S+0000", time.gmtime())


def message(control: str, spo2: int, patient: str = "P2", bed: str = "7") -> bytes:
    """An ORU^R01 with one SpO2 value, for ``icu`` bed ``bed``."""
    segs = [
        f"MSH|^~\\&|MON{bed}|WEST|VM|HOSP|{STAMP}||ORU^R01^ORU_R01|{control}|P|2.6",
        f"PID|||{patient}||Doe^Jane",
        f"PV1||I|icu^^{bed}",
        f"OBR|1||||||{STAMP}",
        f"OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC||{spo2}|%|||||F",
    ]
    return ("\r".join(segs) + "\r").encode()


def mllp_daemon(daemon: Any, source: str = "") -> tuple[Any, int]:
    """The daemon with an MLLP listener (``source``: more keys of it)."""
    port = free_port()
    d = daemon(start=False)
    d.config.write_text(
        d.config.read_text().replace(
            "sources:\n",
            f"sources:\n  - type: hl7-mllp\n    listen: 127.0.0.1:{port}\n"
            f"    ward: icu\n    clock: receive\n{source}",
        )
    )
    d.start()
    wait_for(lambda: "listening on" in d.log(), 10, "the MLLP listener")
    return d, port


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def read_acks(s: socket.socket, n: int) -> list[list[str]]:
    """The next ``n`` ACKs on ``s`` -> their MSA fields."""
    framer = MllpFramer()
    acks: list[bytes] = []
    while len(acks) < n:
        chunk = s.recv(4096)
        assert chunk, f"connection closed after {len(acks)} of {n} ACK(s)"
        acks += framer.feed(chunk)
    assert len(acks) == n, acks
    return [
        next(seg for seg in a.decode().split("\r") if seg.startswith("MSA|")).split("|")
        for a in acks
    ]


def is_closed(s: socket.socket) -> bool:
    """The listener closed ``s`` (EOF or reset), looked at without waiting or reading."""
    readable, _, _ = select.select([s], [], [], 0)
    if not readable:
        return False
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def warnings(d: Any, pattern: str) -> list[str]:
    return [
        line for line in d.log().splitlines() if " WARNING " in line and re.search(pattern, line)
    ]


def spo2_stored(db: Path, bed: str) -> list[float]:
    return [row[5] for row in query_readings(str(db), bed, ward="icu", vital="spo2")]


# ------------------------------------------------------------------ (a) a frame cut short


def test_a_frame_without_its_end_is_discarded_and_the_next_message_acked_with_its_own_id(
    daemon: Any, subscribe: Any, tmp_path: Path
) -> None:
    """M1 (whole, but no end bytes), then M3 cut mid-way, then M2 framed: M2 is stored
    and ACKed ``AA M2`` (before: one merged frame, ``AA M1``, M2's value never stored);
    M1 and M3 are dead-lettered as truncated frames, with their control ids and no patient
    identifier, and logged once for the connection; the next message is M4's ACK alone."""
    d, port = mllp_daemon(daemon)
    dead = subscribe("vitalmon/deadletter")
    m1 = message("M1", 97, patient="SECRET-4711")
    m3 = message("M3", 95, patient="SECRET-4712")
    with connect(port) as s:
        s.sendall(b"\x0b" + m1 + b"\x0b" + m3[: m3.index(b"OBR")] + frame(message("M2", 91)))
        assert [a[1:3] for a in read_acks(s, 1)] == [["AA", "M2"]]
        assert spo2_stored(tmp_path / "vitals.db", "7") == [91.0]  # ACKed once committed
        s.sendall(frame(message("M4", 93)))  # nothing else was owed before its ACK
        assert [a[1:3] for a in read_acks(s, 1)] == [["AA", "M4"]]
    assert spo2_stored(tmp_path / "vitals.db", "7") == [91.0, 93.0]
    letters = wait_for(
        lambda: (
            [x for x in dead.json() if x["reason"] == "truncated_frame"]
            if len(dead.json()) >= 2
            else None
        ),
        10,
        "two dead letters",
    )
    assert ["control id M1" in x["detail"] for x in letters] == [True, False]
    assert "control id M3" in letters[1]["detail"]
    assert {x["topic"] for x in letters} == {"hl7-mllp"}
    assert "SECRET" not in json.dumps(dead.json())
    assert len(warnings(d, r"vitalmon\.source\.hl7mllp: .*cut short")) == 1  # once
    assert "SECRET" not in d.log()


_payload = st.binary(min_size=1, max_size=120).map(
    lambda b: b"MSH|" + b.replace(b"\x0b", b"").replace(b"\x1c", b"")
)
_garbage = st.binary(max_size=20).map(lambda b: b.replace(b"\x0b", b""))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_garbage, _payload, st.booleans()), min_size=1, max_size=8),
    st.lists(st.integers(1, 40), min_size=1, max_size=10),
)
def test_framer_restarts_on_a_start_byte_whatever_the_chunking(
    parts: list[tuple[bytes, bytes, bool]], sizes: list[int]
) -> None:
    """Complete frames come out whole and in order, each frame cut short (followed by the
    next start byte) is set aside on its own, however TCP splits the bytes."""
    parts[-1] = (*parts[-1][:2], False)  # the last one is not cut: nothing comes after it
    stream = b""
    cut_before = False
    for garbage, payload, cut in parts:
        stream += b"" if cut_before else garbage  # (after a cut frame, bytes are its own)
        stream += b"\x0b" + payload if cut else frame(payload)
        cut_before = cut
    framer = RestartingMllpFramer(1024)
    got: list[bytes] = []
    cuts: list[bytes] = []
    i = k = 0
    while i < len(stream):
        got += framer.feed(stream[i : i + sizes[k % len(sizes)]])
        cuts += framer.take_truncated()
        i += sizes[k % len(sizes)]
        k += 1
    assert got == [p for _, p, cut in parts if not cut]
    assert cuts == [p for _, p, cut in parts if cut]
    assert framer.truncated == len(cuts)
    assert framer.too_long == 0


def test_framer_stray_start_bytes_and_a_long_frame_cut_short() -> None:
    framer = RestartingMllpFramer(1024)
    assert framer.feed(b"\x0b\x0b\r\n\x0b" + frame(b"MSH|A")) == [b"MSH|A"]
    assert (framer.truncated, framer.garbage) == (0, 5)  # stray start bytes: garbage
    # a frame dropped as too long: the rest of it is not counted as garbage
    assert framer.feed(b"\x0bMSH|" + b"x" * 2000) == []
    assert framer.feed(b"y" * 100 + b"\x1c\r" + frame(b"MSH|B")) == [b"MSH|B"]
    assert (framer.too_long, framer.garbage) == (1, 5)


# ------------------------------------------------------------------ (b) connections


def test_one_peer_holding_connections_does_not_lock_out_another_sender(daemon: Any) -> None:
    """64 idle connections from 127.0.0.1 (the default max_connections): the listener
    keeps 8 of them (max_connections_per_peer), closes the 56 others at once and logs the
    refusals once; a sender from 127.0.0.2 gets its message through (before: all 64 were
    kept, and every other sender was refused for up to idle_timeout_s, 600 s)."""
    d, port = mllp_daemon(daemon)
    hogs = [connect(port) for _ in range(64)]
    try:
        wait_for(lambda: sum(map(is_closed, hogs)) >= 56, 10, "56 connections closed")
        t0 = time.monotonic()
        with connect(port, source="127.0.0.2") as s:
            s.sendall(frame(message("L1", 96, bed="8")))
            assert [a[1:3] for a in read_acks(s, 1)] == [["AA", "L1"]]
        took = time.monotonic() - t0
        assert took < 5, took
        assert sum(map(is_closed, hogs)) == 56  # the 8 kept are open (within 30 s)
        refused = warnings(d, r"connection from 127\.0\.0\.1 refused")
        assert len(refused) == 1, refused  # 56 refused, logged once (per peer, a minute)
        assert "max_connections_per_peer 8" in refused[0]
        assert not warnings(d, r"127\.0\.0\.2 refused")
    finally:
        for h in hogs:
            h.close()


def test_a_connection_without_a_complete_message_is_closed_an_established_one_is_not(
    daemon: Any,
) -> None:
    """``first_message_timeout_s: 1``: a connection that sends nothing, and one that
    trickles the bytes of a frame that never ends, are closed after about 1 s; the
    connection that sent a message before them, idle as long, stays (idle_timeout_s, 600)
    and is still served (before: both were kept for idle_timeout_s, the trickling one
    for ever)."""
    d, port = mllp_daemon(daemon, "    first_message_timeout_s: 1\n")
    with connect(port) as established:
        established.sendall(frame(message("E1", 95)))
        assert read_acks(established, 1)[0][1:3] == ["AA", "E1"]
        t0 = time.monotonic()
        silent, trickle = connect(port), connect(port)
        trickle.sendall(b"\x0bMSH|^~\\&|")
        deadline = t0 + 10
        while not is_closed(trickle) and time.monotonic() < deadline:
            try:
                trickle.sendall(b"x")  # a byte, then wait up to 0.2 s for the close
            except OSError:
                break  # closed meanwhile
            select.select([trickle], [], [], 0.2)
        trickled = time.monotonic() - t0
        wait_for(lambda: is_closed(silent), 10, "the silent connection closed")
        waited = time.monotonic() - t0
        assert is_closed(trickle) and 0.9 < trickled < 5, trickled
        assert 0.9 < waited < 5, waited
        assert not is_closed(established)  # idle longer than both, and kept
        established.sendall(frame(message("E2", 94)))
        assert read_acks(established, 1)[0][1:3] == ["AA", "E2"]
        silent.close()
        trickle.close()
    closed = [line for line in d.log().splitlines() if "sent no complete message in 1 s" in line]
    assert len(closed) == 2, closed


def test_refusals_at_max_connections_are_logged_once_per_peer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The listener's overall bound: the source on a real socket, two peers refused."""
    caplog.set_level(logging.DEBUG, "vitalmon.source.hl7mllp")

    async def main() -> None:
        src = Hl7MllpSource(
            Hl7MllpSourceConfig(type="hl7-mllp", listen="127.0.0.1:0", max_connections=2)
        )

        async def emit(batch: Any) -> None:
            batch.done()

        task = asyncio.create_task(src.run(emit, lambda rej: None))
        await asyncio.wait_for(src.listening.wait(), 5)
        assert src.port

        async def opened(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", src.port, local_addr=(source, 0))

        kept = [await opened("127.0.0.1") for _ in range(2)]
        for source in ["127.0.0.3"] * 5 + ["127.0.0.4"] * 3:
            reader, writer = await opened(source)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once
            writer.close()
        assert (src.counts["refused"], src.counts["refused_peer"]) == (8, 0)
        src.stop()
        for _reader, writer in kept:
            writer.close()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    refused = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "refused" in r.getMessage()
    ]
    assert len(refused) == 2, refused
    assert "127.0.0.3 refused (2 open, max_connections 2)" in refused[0]
    assert "127.0.0.4 refused" in refused[1]
