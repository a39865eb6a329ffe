"""Which instance reads which partition: leases in a replicated JetStream KV bucket.

Why a KV bucket with leases, not consumer priority groups: the owner of a partition
must also be the only instance that evaluates its beds and publishes their alerts,
not only the only one that receives its messages; a lease gives every instance a
revision-checked claim it can test before it evaluates or publishes (the fence), and
the same bucket carries who is alive.

The bucket ``<stream>_OWNERS`` (history 1, ``ttl`` = ``lease_s``: a key not renewed
within a lease is gone) holds:

* ``member.<id>``: an instance is alive (renewed every ``lease_s / 4``);
* ``p.<n>``: partition ``n`` is owned by the instance named in the value. It is taken
  with ``create`` (refused while the key exists), renewed with ``update(last=revision)``
  (refused if anyone else wrote it since) and released with ``delete(last=revision)``.

Each partition has one wanted owner among the live members: round robin over their
sorted names, the same on every instance, so the shares differ by at most one.
An instance takes the free partitions it is the wanted owner of and releases, after
draining them, the ones it holds that now want another live member. When an owner dies,
its keys expire after ``lease_s`` and the wanted owners among the survivors take them:
takeover within ``lease_s`` plus one renewal period.

**Fence.** :meth:`Ownership.valid` says whether this instance still holds a partition by
its own clock: until ``LEASE_MARGIN`` of a lease after the last renewal it *sent* (the
server's lease started later). An instance paused longer than that (SIGSTOP, a long GC,
a frozen VM) finds its leases invalid the moment it runs again, before it has asked
anyone: the source then drops what it had fetched and the engine what it had queued, so
a stale owner neither evaluates nor publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from monitor.tasks import raise_if_cancelled

log = logging.getLogger("vitalmon.source.jetstream.ownership")

#: The share of a lease an owner counts on after sending its renewal.
LEASE_MARGIN = 0.75


def wanted_owner(members: list[str], partition: int) -> str:
    """The member that should own ``partition``: round robin over the sorted live members
    (shares differ by at most one partition)."""
    return sorted(members)[partition % len(members)]


class Ownership:
    def __init__(
        self,
        kv: Any,
        me: str,
        partitions: int,
        lease_s: float,
        acquired: Callable[[int], Awaitable[None]],
        releasing: Callable[[int], Awaitable[None]],
        lost: Callable[[int], Awaitable[None]],
        sticky: frozenset[int] = frozenset(),
    ) -> None:
        self.kv = kv
        self.me = me
        self.partitions = partitions
        self.lease_s = lease_s
        self._acquired, self._releasing, self._lost = acquired, releasing, lost
        #: partitions never handed over to rebalance, only when their holder goes (the
        #: capture session: each move leaves the devices' messages waiting meanwhile)
        self.sticky = sticky
        #: partition -> (KV revision, monotonic deadline of the lease by our clock)
        self.held: dict[int, tuple[int, float]] = {}
        self._member_rev: int | None = None
        self.members: list[str] = []
        self.takeovers = 0
        #: partition -> its release under way (drain, then delete)
        self._releases: dict[int, asyncio.Task[None]] = {}

    def valid(self, partition: int) -> bool:
        held = self.held.get(partition)
        return held is not None and time.monotonic() < held[1]

    def owned(self) -> list[int]:
        return sorted(n for n in self.held if self.valid(n))

    async def run(self) -> None:
        """Renew and rebalance every ``lease_s / 4`` until cancelled."""
        while True:
            try:
                await self.tick()
            except Exception as exc:  # noqa: BLE001 - a node gone: the next round
                raise_if_cancelled()  # (a cancellation nats-py turned into an error)
                log.warning("ownership round failed (%s); trying again", exc)
            raise_if_cancelled()  # (or swallowed: cancelled means stop, whatever it said)
            await asyncio.sleep(self.lease_s / 4)

    async def tick(self) -> None:
        """One round: renew the member key and every held partition at once (one that
        does not answer is tried again next round; its fence says meanwhile whether it
        may still be counted on), then list the members, then take and release. A
        release drains the partition in a task of its own while this goes on renewing
        it: a slow drain never lets the other leases lapse."""
        # the leases first, each on its own: a member key or a listing that does not
        # answer (a cluster electing, a node gone, a loaded host) never keeps a held
        # partition from being renewed
        member, *renewals = await asyncio.gather(
            self._renew_member(),
            *(self._renew(n) for n in list(self.held)),
            return_exceptions=True,
        )
        for failed in (r for r in renewals if isinstance(r, BaseException)):
            log.debug("a lease renewal did not answer (%s); next round", failed)
        if isinstance(member, BaseException):
            raise member  # (no taking or releasing without our own key: next round)
        self.members = await self._members()
        for n in range(self.partitions):
            want = wanted_owner(self.members, n) if self.members else self.me
            if n in self.held and want != self.me and n not in self.sticky:
                if n not in self._releases:
                    self._releases[n] = asyncio.create_task(
                        self._release(n), name=f"vitalmon.release[{n}]"
                    )
            elif n not in self.held and want == self.me:
                await self._take(n)

    async def release_all(self) -> None:
        """On the way out: hand every partition back at once (drained first), so the
        others need not wait for the leases to expire."""
        for task in list(self._releases.values()):
            with contextlib.suppress(Exception):
                await task
        for n in list(self.held):
            await self._release(n)
        if self._member_rev is not None:
            with contextlib.suppress(Exception):  # (it expires anyway)
                await self.kv.delete(f"member.{self.me}", last=self._member_rev)

    # ---------------------------------------------------------------- one key each

    async def _renew_member(self) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        key = f"member.{self.me}"
        try:
            if self._member_rev is None:
                self._member_rev = await self.kv.create(key, self.me.encode())
            else:
                self._member_rev = await self.kv.update(
                    key, self.me.encode(), last=self._member_rev
                )
        except KeyWrongLastSequenceError:
            self._member_rev = None  # expired (a pause): created again next round
            self._member_rev = await self.kv.create(key, self.me.encode())

    async def _members(self) -> list[str]:
        keys = await live_keys(self.kv, "member.")
        return sorted(k.removeprefix("member.") for k in keys)

    async def _take(self, n: int) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        sent = time.monotonic()
        try:
            rev = await self.kv.create(f"p.{n}", self.me.encode())
        except KeyWrongLastSequenceError:
            return  # still held (its owner releasing it, or a lease not yet expired)
        self.held[n] = (rev, sent + LEASE_MARGIN * self.lease_s)
        self.takeovers += 1
        log.info("partition %d taken", n)
        await self._acquired(n)

    async def _renew(self, n: int) -> None:
        from nats.js.errors import KeyWrongLastSequenceError

        rev, _deadline = self.held[n]
        sent = time.monotonic()
        try:
            new = await self.kv.update(f"p.{n}", self.me.encode(), last=rev)
        except KeyWrongLastSequenceError:
            if self.held.pop(n, None) is None:
                return  # (released meanwhile)
            log.warning("partition %d lost (its lease expired and was taken or freed)", n)
            await self._lost(n)
            return
        if n in self.held:  # (not released meanwhile)
            self.held[n] = (new, sent + LEASE_MARGIN * self.lease_s)

    async def _release(self, n: int) -> None:
        try:
            await self._releasing(n)  # (drained: nothing of it in flight)
            held = self.held.pop(n, None)
            if held is None:
                return  # (lost meanwhile)
            with contextlib.suppress(Exception):  # (it expires anyway)
                await self.kv.delete(f"p.{n}", last=held[0])  # (the revision renewed last)
            log.info("partition %d released", n)
        finally:
            self._releases.pop(n, None)


async def live_keys(kv: Any, prefix: str = "") -> list[str]:
    """The keys of a KV bucket that hold a value, those starting with ``prefix``.

    Not ``kv.keys()``: in nats-py 2.16 its watcher can report the end of the listing
    before the keys already on their way arrived (nats-io/nats.py#842), so while keys
    are being renewed it sometimes lists none or some -- an instance that did not see
    itself among the members would release every partition it holds. The server's own
    count of the bucket's subjects is complete; each is then read, and the ones whose
    latest message deletes or purges them (or that expired meanwhile) are left out."""
    from nats.js.errors import KeyNotFoundError

    bucket = kv._name
    info = await kv._js.stream_info(kv._stream, subjects_filter=f"$KV.{bucket}.{prefix}>")
    subjects = info.state.subjects or {}
    out = []
    for subject in subjects:
        key = subject.removeprefix(f"$KV.{bucket}.")
        with contextlib.suppress(KeyNotFoundError):  # (deleted, purged, expired)
            entry = await kv.get(key)
            if entry.value is not None:
                out.append(key)
    return sorted(out)
