"""A private event loop per thread, for async handlers called from worker threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["close_thread_loop", "run_on_thread_loop"]

T = TypeVar("T")

_local = threading.local()


def run_on_thread_loop(awaitable: Awaitable[T]) -> T:
    """Run an awaitable to completion on this thread's event loop (created on first use)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed():
        loop = _local.loop = asyncio.new_event_loop()
    return loop.run_until_complete(awaitable)


def close_thread_loop() -> None:
    """Close this thread's loop, if async handlers created one."""
    loop: Any = getattr(_local, "loop", None)
    if loop is not None and not loop.is_closed():
        loop.close()
    _local.loop = None
