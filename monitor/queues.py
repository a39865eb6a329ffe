"""Bounded queues between stages, closed by an end marker (``None``)."""

from __future__ import annotations

import asyncio
from typing import Any


def put_end(queue: asyncio.Queue[Any], name: str) -> None:
    """Queue the end marker behind everything already queued, without waiting.

    Called once the producers have stopped, so a full queue only shrinks: the marker
    then goes in as soon as there is room.
    """
    try:
        queue.put_nowait(None)
    except asyncio.QueueFull:
        asyncio.get_running_loop().create_task(queue.put(None), name=f"{name}.end")
