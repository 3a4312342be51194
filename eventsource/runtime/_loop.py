"""Where async handlers called from worker threads run: a private event loop per thread, or
an application's own running loop (workers run inside an application's event loop)."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["close_thread_loop", "run_on_thread_loop"]

T = TypeVar("T")

_local = threading.local()


def run_on_thread_loop(awaitable: Awaitable[T], loop: asyncio.AbstractEventLoop | None = None) -> T:
    """Run an awaitable to completion on this thread's event loop (created on first use).

    With ``loop``, the running loop of another thread (an application's), it runs there
    instead (``asyncio.run_coroutine_threadsafe``) and this thread waits for its result; a
    cancellation over there is a ``concurrent.futures.CancelledError`` here.
    """
    if loop is not None:
        coroutine = _awaiting(awaitable)
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:  # that loop is closed: nothing will await them
            coroutine.close()
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise
        return future.result()
    loop = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop.run_until_complete(awaitable)


async def _awaiting(awaitable: Awaitable[T]) -> T:
    return await awaitable


def close_thread_loop() -> None:
    """Close this thread's loop, if async handlers created one."""
    loop: Any = getattr(_local, "loop", None)
    if loop is not None and not loop.is_closed():
        loop.close()
    _local.loop = None
