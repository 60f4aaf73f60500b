"""Group commit: the worker threads of the server take queued work in groups.

A worker blocks for one item, then takes whatever is already queued (never waiting)
up to a limit, so concurrent requests share one model call and one log write.
``None`` on the queue asks the worker to stop after the group in hand.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def take_group(
    source: queue.Queue[T | None] | queue.SimpleQueue[T | None],
    limit: int,
    weight: Callable[[T], int] = lambda _: 1,
    timeout: float | None = None,
) -> tuple[list[T], bool]:
    """``(items, stop)``: one item (blocking, at most ``timeout`` seconds: then none)
    plus those already queued, until their total ``weight`` reaches ``limit``; ``stop``
    is True once ``None`` was taken."""
    try:
        first = source.get(timeout=timeout)
    except queue.Empty:
        return [], False
    if first is None:
        return [], True
    items, total = [first], weight(first)
    while total < limit:
        try:
            item = source.get_nowait()
        except queue.Empty:
            break
        if item is None:
            return items, True
        items.append(item)
        total += weight(item)
    return items, False
