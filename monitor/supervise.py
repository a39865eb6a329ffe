"""The daemon's tasks: each one supervised (a failure ends the daemon in order, named),
joined at shutdown within a deadline, and the short background tasks kept until done."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from monitor.tasks import cancel_and_wait

log = logging.getLogger("vitalmon.daemon")


def root_cause(exc: BaseException) -> str:
    """What went wrong, named: the innermost exception of groups and chains, with its type
    (``OperationalError: database or disk is full``), not "unhandled errors in a
    TaskGroup"."""
    while True:
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        elif exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            break
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


async def supervised(
    coro: Coroutine[Any, Any, None], name: str, fail: Callable[[str, BaseException], None]
) -> None:
    """Run one of the daemon's tasks; if it fails, ``fail(name, exc)`` (which shuts the
    daemon down in order)."""
    try:
        await coro
    except Exception as exc:  # noqa: BLE001 - any failure ends the daemon, named
        fail(name, exc)


class Background:
    """Short tasks started on the side (a technical alarm to queue, a connection to
    close): kept referenced until they are done, awaited at shutdown."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks)


async def join(
    tasks: list[asyncio.Task[None]], deadline: float, forced: asyncio.Event, what: str
) -> None:
    """Wait for ``tasks`` until the deadline or a forced exit, then cancel the rest."""
    forced_task = asyncio.create_task(forced.wait(), name="vitalmon.forced")
    pending = set(tasks)
    try:
        while pending and not forced_task.done():
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            done, _ = await asyncio.wait(
                [*pending, forced_task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            pending -= done
    finally:
        forced_task.cancel()
    if pending:
        why = "forced exit" if forced.is_set() else "shutdown budget exceeded"
        log.warning("%s: cancelling %s (%s)", why, ", ".join(t.get_name() for t in pending), what)
        await cancel_and_wait(*pending, every_s=0.25)  # (a clean-up gets a little time)
