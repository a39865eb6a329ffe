"""Asyncio helpers any stage uses: a blocking call in a thread nothing waits for, and
cancellations that are not lost. Imports no stage."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: How often :func:`cancel_and_wait` cancels again a task that has not ended.
CANCEL_AGAIN_S = 0.05


async def cancel_and_wait(*tasks: asyncio.Task[Any], every_s: float = CANCEL_AGAIN_S) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again every
    ``every_s`` those that have not.

    One cancellation is not always enough: nats-py swallows one that reaches it while
    it flushes a publish or a request (``Client._flush_pending`` catches
    ``CancelledError`` and passes), so a good share of the cancellations of a task busy
    with NATS are lost and the task goes on; a plain ``cancel()`` and ``await`` then
    waits for ever. For tasks whose own clean-up does not await long (a clean-up is
    cancelled as well). What a task raised instead of ending cancelled is dropped, as
    ``gather(return_exceptions=True)`` would: they are being stopped."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _done, pending = await asyncio.wait(pending, timeout=every_s)
    for t in tasks:
        if not t.cancelled():
            t.exception()  # (retrieved: never "Task exception was never retrieved")


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if this task has been cancelled and something it called
    swallowed the cancellation (nats-py: see :func:`cancel_and_wait`) or turned it into
    another error that a retry loop catches: loops that retry call this every round, so
    that a cancellation is never taken for one more round."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


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
