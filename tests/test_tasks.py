"""monitor.tasks: cancellations that are not lost, blocking calls nothing waits for.

Below the I/O boundary: ``swallowing`` is what nats-py's ``Client._flush_pending`` does
with a cancellation (catches it and passes); tests/test_jetstream_state.py has the same
with real servers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from monitor.tasks import cancel_and_wait, in_thread, raise_if_cancelled


async def swallowing() -> None:
    """Awaits something short, and takes a cancellation that reaches it for nothing."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0.01)


def test_a_retry_loop_ends_at_its_first_cancellation_whatever_its_callee_did() -> None:
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            await swallowing()
            raise_if_cancelled()

    async def main() -> None:
        task = asyncio.create_task(loop())
        await asyncio.sleep(0.005)  # (inside swallowing)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1.0)
        assert done and task.cancelled()
        assert rounds == 1

    asyncio.run(main())


def test_cancel_and_wait_ends_a_task_that_swallows_a_cancellation_now_and_then() -> None:
    async def stubborn() -> None:
        while True:  # (no raise_if_cancelled: a library's loop)
            await swallowing()
            await asyncio.sleep(0.013)

    async def main() -> None:
        tasks = [asyncio.create_task(stubborn()) for _ in range(3)]
        await asyncio.sleep(0.005)
        t0 = time.monotonic()
        await asyncio.wait_for(cancel_and_wait(*tasks), 5)
        assert all(t.done() for t in tasks)
        assert time.monotonic() - t0 < 2

    asyncio.run(main())


def test_a_call_given_up_is_not_waited_for_and_its_late_outcome_is_dropped() -> None:
    release = threading.Event()
    abandoned: list[bool] = []

    def hangs() -> str:
        release.wait(10)
        return "late"

    async def main() -> None:
        with pytest.raises(TimeoutError, match=r"no answer within 0\.1 s"):
            await in_thread(hangs, 0.1, "test-hang", on_abandon=lambda: abandoned.append(True))
        assert abandoned == [True]
        assert await in_thread(lambda: "now", 1.0, "test-ok") == "now"
        release.set()

    asyncio.run(main())
