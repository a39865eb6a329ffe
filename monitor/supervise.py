"""The daemon's tasks: each one supervised (a failure ends the daemon in order, named),
joined at shutdown within a deadline, and the short background tasks kept until done."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("vitalmon.daemon")

T = TypeVar("T")


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
        for t in pending:
            t.cancel()
        await asyncio.wait(pending)


async def in_thread(
    fn: Callable[[], T],
    timeout_s: float,
    name: str,
    on_abandon: Callable[[], None] | None = None,
) -> T:
    """``fn()`` in a daemon thread of its own, given up after ``timeout_s`` in all
    (TimeoutError) or when cancelled; either way ``on_abandon()`` is called (to shut the
    call's socket down, where the caller can reach it).

    For a blocking network client whose timeouts bound each socket operation, not the
    call: a server that answers a byte at a time, or a name resolution that hangs, keeps
    such a call alive indefinitely. An executor would keep its worker, and a stop would
    wait for it (in ``shutdown`` and again at interpreter exit); nothing joins this
    thread, so the process exits whatever the call does. A late outcome is dropped.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if done.done():
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop
            outcome: tuple[T | None, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        with contextlib.suppress(RuntimeError):  # (the loop is gone: nobody waits)
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=target, name=name, daemon=True).start()
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(done)
    except TimeoutError:
        if on_abandon is not None:
            on_abandon()
        raise TimeoutError(f"no answer within {timeout_s:g} s") from None
    except BaseException:
        if on_abandon is not None:
            on_abandon()
        raise
    finally:
        if not done.done():
            done.cancel()  # (a late outcome is dropped)
        elif not done.cancelled():
            done.exception()  # (retrieved: never "exception was never retrieved")
