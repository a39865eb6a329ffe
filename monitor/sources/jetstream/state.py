"""A partition's alert lifecycle and admissions, kept in the cluster for its next owner.

The bucket ``<stream>_STATE`` (a replicated JetStream KV bucket, history 1, no TTL)
holds, for the beds of partition ``n``:

* ``alert.<n>.<id>``: an open alert: its latest event and the lifecycle's timers (the
  acknowledgement, escalation, when it was last published); deleted when it resolves;
* ``adm.<n>.<ward>.<bed>``: the bed's admission (patient, profile); deleted at discharge;
* ``pause.<n>.<ward>.<bed>``: the end (wall clock) of the bed's alert pause.

(``<ward>`` and ``<bed>`` as :func:`~monitor.sources.jetstream.subjects.kv_token`.)

**Written by the owner before anyone is told.** The engine hands :meth:`keep` what a
batch changed before the batch's events go to any sink, so an alert event published or
an admission taken has its state in the cluster (replicas: ``replicas``) first. Only the
beds whose partition lease is valid are written: a stale owner writes nothing. A write
that fails (the cluster electing, a node gone) is kept and tried again, every second
and with the next change, newest value per key; while the bucket does not answer the
engine does not wait on it (after a failure, for ``RETRY_S``).

**Read by the next owner** (:meth:`load`) when it takes the partition: the admissions
before it replays the partition (the rules use the admitted profiles), the pauses
at once, the open alerts after the replay (:class:`monitor.pipeline.Carry`).

An acknowledgement names only an alert id: :meth:`knows_alert` tells an instance that
does not own the alert whether another one does (no ``unknown_alert`` refusal then).

Deleted keys leave a marker in the bucket; the holder of the capture lease purges
markers older than ``PURGE_AFTER_S`` every ``PURGE_EVERY_S``.

The values name the patient (the admission, an alert's ``patient``): the bucket is a
primary store like the journal, kept in the same cluster as the readings' stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from monitor.model import Admission, AlertEvent, AlertState, Priority
from monitor.pipeline import Carried
from monitor.sources.jetstream.subjects import kv_token, kv_untoken
from monitor.tasks import raise_if_cancelled

log = logging.getLogger("vitalmon.source.jetstream.state")

#: After a failed write the engine does not wait on the bucket for this long (the
#: writes are kept and tried again in the background).
RETRY_S = 5.0
#: How long a write may take before it counts as failed (and is kept for later).
WRITE_TIMEOUT_S = 2.0
#: Delete markers older than this are purged, every PURGE_EVERY_S.
PURGE_AFTER_S = 600.0
PURGE_EVERY_S = 600.0
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclasses.dataclass(slots=True)
class PartitionState:
    """What :meth:`ClusterState.load` found for one partition."""

    admissions: list[Admission]
    alerts: list[Carried]
    #: (ward, bed) -> end of the pause (wall clock; only those not yet over)
    pauses: dict[tuple[str, str], float]


def encode_carried(c: Carried) -> bytes:
    event = dataclasses.asdict(c.event)
    event["priority"], event["state"] = str(c.event.priority), str(c.event.state)
    body = {
        "event": event,
        "rule_priority": c.rule_priority,
        "active_since": c.active_since,
        "notified_at": c.notified_at,
        "acked_by": c.acked_by,
        "escalated": c.escalated,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_carried(raw: bytes) -> Carried:
    body = json.loads(raw)
    e = dict(body["event"])
    e["priority"], e["state"] = Priority(e["priority"]), AlertState(e["state"])
    return Carried(
        AlertEvent(**e),
        str(body["rule_priority"]),
        float(body["active_since"]),
        float(body["notified_at"]),
        body.get("acked_by"),
        bool(body.get("escalated", False)),
    )


def encode_admission(a: Admission) -> bytes:
    return json.dumps(dataclasses.asdict(a), separators=(",", ":")).encode()


def decode_admission(raw: bytes) -> Admission:
    return Admission(**json.loads(raw))


class ClusterState:
    """The :class:`monitor.pipeline.StateKeeper` of a JetStream source."""

    def __init__(
        self,
        partition_of: Callable[[str, str], int],
        valid: Callable[[int], bool],
    ) -> None:
        self.partition_of = partition_of
        self.valid = valid
        #: the bucket (set once the source has connected)
        self.kv: Any = None
        self.js: Any = None
        self.bucket = ""
        #: key -> value (None: delete) not yet written
        self._pending: dict[str, bytes | None] = {}
        self._down_until = 0.0
        self._last_warning = -1e9
        self._tasks: set[asyncio.Task[None]] = set()
        self.counts: Counter[str] = Counter()

    def attach(self, js: Any, kv: Any, bucket: str) -> None:
        self.js, self.kv, self.bucket = js, kv, bucket

    # ------------------------------------------------------------------ writing

    def _bed_key(self, kind: str, ward: str, bed: str) -> tuple[int, str]:
        n = self.partition_of(ward, bed)
        return n, f"{kind}.{n}.{kv_token(ward)}.{kv_token(bed)}"

    async def keep(
        self,
        alerts: dict[str, tuple[str, str, Carried | None]],
        admissions: dict[tuple[str, str], Admission | None],
    ) -> None:
        for ident, (ward, bed, carried) in alerts.items():
            n = self.partition_of(ward, bed)
            if self.valid(n):
                self._pending[f"alert.{n}.{ident}"] = (
                    None if carried is None else encode_carried(carried)
                )
        for (ward, bed), adm in admissions.items():
            n, key = self._bed_key("adm", ward, bed)
            if self.valid(n):
                self._pending[key] = None if adm is None else encode_admission(adm)
        if self._pending and time.monotonic() >= self._down_until:
            await self.flush()

    def keep_pause(self, ward: str, bed: str, until: float) -> None:
        """A pause taken on an owned bed (the commands source): written in the
        background (a pause's loss costs held alerts, never a missed one)."""
        n, key = self._bed_key("pause", ward, bed)
        if not self.valid(n):
            return
        self._pending[key] = json.dumps({"until": until}).encode()
        if time.monotonic() >= self._down_until:
            task = asyncio.get_running_loop().create_task(self.flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Write what is pending (concurrently); keep what failed for the next try."""
        if self.kv is None or not self._pending:
            return
        todo, self._pending = self._pending, {}

        async def one(key: str, value: bytes | None) -> None:
            if value is None:
                await self.kv.delete(key)
            else:
                await self.kv.put(key, value)

        keys = list(todo)
        results = await asyncio.gather(
            *(asyncio.wait_for(one(k, todo[k]), WRITE_TIMEOUT_S) for k in keys),
            return_exceptions=True,
        )
        failed = 0
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, BaseException):
                failed += 1
                self._pending.setdefault(key, todo[key])  # (a newer value wins)
        self.counts["written"] += len(keys) - failed
        if failed:
            self.counts["write_failed"] += failed
            self._down_until = time.monotonic() + RETRY_S
            now = time.monotonic()
            if now - self._last_warning >= 60.0:
                self._last_warning = now
                log.warning(
                    "cluster state: %d of %d write(s) failed; kept and tried again",
                    failed,
                    len(keys),
                )

    async def run(self, purge: Callable[[], bool]) -> None:
        """Try pending writes again every second; purge old delete markers every
        PURGE_EVERY_S when ``purge()`` says this instance is the one to."""
        last_purge = time.monotonic()
        while True:
            raise_if_cancelled()
            await asyncio.sleep(1.0)
            if self._pending:
                self._down_until = 0.0
                await self.flush()
            if purge() and time.monotonic() - last_purge >= PURGE_EVERY_S:
                last_purge = time.monotonic()
                try:
                    await self.kv.purge_deletes(olderthan=int(PURGE_AFTER_S))
                except Exception as exc:  # noqa: BLE001 - again next time
                    log.debug("cluster state: purge of delete markers failed (%s)", exc)

    # ------------------------------------------------------------------ reading

    async def load(self, n: int) -> PartitionState:
        """The state of partition ``n`` as its last owner kept it (raises if the bucket
        cannot be read: the partition is not taken on without it).

        The keys come from a watcher of the bucket; then every key the server holds
        under the partition that the watcher did not give is read on its own. nats-py's
        watcher can end its initial values before all of them arrived
        (nats-io/nats.py#842): a new owner must not take on part of the alerts."""
        from nats.js.errors import KeyNotFoundError

        found = PartitionState([], [], {})
        seen: set[str] = set()
        watcher = await self.kv.watch(f"*.{n}.>", ignore_deletes=True)
        now = time.time()
        try:
            while True:
                entry = await watcher.updates(timeout=WRITE_TIMEOUT_S * 5)
                if entry is None:
                    break
                seen.add(entry.key)
                self._take_entry(found, entry.key, entry.value, entry.operation, now)
        finally:
            await watcher.stop()
        bucket = self.kv._name
        info = await self.kv._js.stream_info(
            self.kv._stream, subjects_filter=f"$KV.{bucket}.*.{n}.>"
        )
        for subject in info.state.subjects or {}:
            key = subject.removeprefix(f"$KV.{bucket}.")
            if key in seen:
                continue
            with contextlib.suppress(KeyNotFoundError):  # (deleted, purged)
                entry = await self.kv.get(key)
                self.counts["late_keys"] += 1
                self._take_entry(found, key, entry.value, entry.operation, now)
        return found

    def _take_entry(
        self, found: PartitionState, key: str, value: bytes | None, op: Any, now: float
    ) -> None:
        if value is None or op is not None:
            return  # (a delete marker)
        kind, _n, rest = key.split(".", 2)
        try:
            if kind == "alert":
                found.alerts.append(decode_carried(value))
            elif kind == "adm":
                found.admissions.append(decode_admission(value))
            elif kind == "pause":
                ward, bed = (kv_untoken(t) for t in rest.split("."))
                until = float(json.loads(value)["until"])
                if until > now:
                    found.pauses[(ward, bed)] = until
        except (ValueError, KeyError, TypeError) as exc:
            self.counts["unreadable"] += 1
            log.warning("cluster state: key %s unreadable (%s); skipped", key, exc)

    async def forward_ack(self, alert_id: str, by: str, identity: str | None) -> bool:
        """An acknowledgement of an alert this instance does not have open: if the
        cluster has it open on a partition this instance does not own, leave it there
        for that partition's owner (``ack.<n>.<id>``), who applies it now, or when it
        takes the partition on (an owner that died, a takeover under way). -> whether
        the cluster has it (else it is unknown: refused)."""
        n = await self.alert_partition(alert_id)
        if n is None or self.valid(n):
            return False
        body = json.dumps({"by": by, "identity": identity}).encode()
        for _attempt in range(3):
            try:
                await asyncio.wait_for(self.kv.put(f"ack.{n}.{alert_id}", body), WRITE_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - again; then said
                raise_if_cancelled()
                log.debug("cluster state: forwarded acknowledgement not written (%s)", exc)
                continue
            return True
        log.warning("cluster state: an acknowledgement for another instance could not be kept")
        return True  # (the owner, if alive, took it from MQTT itself)

    async def forwarded_acks(self, n: int) -> AsyncIterator[tuple[str, str, str | None, str]]:
        """Acknowledgements left for partition ``n``: those there now, then each as it
        comes: (alert id, by, identity, key), until cancelled."""
        watcher = await self.kv.watch(f"ack.{n}.*", ignore_deletes=True)
        try:
            while True:
                raise_if_cancelled()
                entry = await watcher.updates(timeout=None)
                if entry is None or entry.value is None or entry.operation is not None:
                    continue
                try:
                    body = json.loads(entry.value)
                    ident = entry.key.split(".", 2)[2]
                    yield ident, str(body["by"]), body.get("identity"), entry.key
                except (ValueError, KeyError, IndexError) as exc:
                    log.warning("cluster state: key %s unreadable (%s); dropped", entry.key, exc)
                    await self.drop(entry.key)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def drop(self, key: str) -> None:
        with contextlib.suppress(Exception):
            await self.kv.purge(key)

    async def alert_partition(self, alert_id: str) -> int | None:
        """The partition of an alert open in the cluster (None: not open anywhere)."""
        if self.js is None or not _TOKEN.fullmatch(alert_id):
            return None  # (an id that is no key: no subject of ours either)
        subject = f"$KV.{self.bucket}.alert.*.{alert_id}"
        try:
            msg = await asyncio.wait_for(
                self.js.get_last_msg(f"KV_{self.bucket}", subject), WRITE_TIMEOUT_S
            )
        except Exception:  # noqa: BLE001 - not found (or not answering): not known
            return None
        headers = msg.headers or {}
        if headers.get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
            return None
        try:
            return int(msg.subject.split(".")[-2])
        except ValueError:
            return None

    async def knows_alert(self, alert_id: str) -> bool:
        """Whether an alert with this id is open on any partition."""
        return await self.alert_partition(alert_id) is not None
