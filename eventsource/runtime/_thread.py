"""A worker's ``run()`` on a thread of its own, started and stopped from an event loop.

``projections.running`` and ``commands_running`` run the process workers this way inside an
application's event loop, each with ``worker_thread_running`` around its block.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, Protocol, TypeVar

from eventsource._logging import get_logger

__all__ = ["WorkerThread", "worker_thread_running"]

log = get_logger("eventsource.running")


class _Worker(Protocol):
    """What ``WorkerThread`` runs: a command or projection worker."""

    def run(self) -> None:
        """Work until stopped (or raise what stopped the worker)."""

    def stop(self) -> None:
        """Ask the worker to stop; callable from any thread."""


class _Embeddable(_Worker, Protocol):
    """A worker that tells its ``thread`` (set before it runs) when it has started."""

    thread: WorkerThread | None


_W = TypeVar("_W", bound=_Embeddable)


class _Closable(Protocol):
    """The worker's own store: closed by the worker's thread when the worker ends."""

    def close(self) -> None:
        """Close the store's connections."""


class WorkerThread:
    """A worker's ``run()`` on a daemon thread, started and stopped from an event loop.

    The worker calls ``started()`` (from its thread) once it is ready; ``start()`` returns
    then, or raises what stopped the worker before. ``stop()`` asks it to stop and waits up to
    ``stop_timeout`` seconds for its thread; an error that ended the worker is logged when it
    happens and raised by ``stop()``. ``store`` is the worker's own and is closed by its thread.
    """

    def __init__(
        self, worker: _Worker, store: _Closable, *, name: str, stop_timeout: float
    ) -> None:
        """Prepare the thread (nothing runs before ``start()``) on the running event loop."""
        self.worker = worker
        self._store = store
        self._stop_timeout = stop_timeout
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        self._started = False
        self._finished = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def started(self) -> None:
        """The worker is ready (called once from its thread)."""
        self._started = True
        self._signal()

    def _signal(self) -> None:
        with suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._changed.set)

    def _main(self) -> None:
        """The thread: run the worker, keep what ended it, close its store, tell the loop."""
        try:
            self.worker.run()
        except BaseException as exc:  # reported to the block, which raises it
            self.error = exc
            log.error(
                "worker stopped by an error; it is raised where the block ends",
                thread=self.thread.name,
                error=f"{type(exc).__name__}: {exc}",
                exc_info=exc,
            )
        finally:
            try:
                self._store.close()
            finally:
                self._finished = True
                self._signal()

    async def _until(self, done: Any) -> None:
        """Wait (on the event loop) until ``done()``; the thread signals every change."""
        while True:
            self._changed.clear()
            if done():
                return
            await self._changed.wait()

    async def start(self) -> None:
        """Start the thread; return once the worker has started, or raise why it could not."""
        self.thread.start()
        try:
            await self._until(lambda: self._started or self._finished)
        except BaseException:
            self.worker.stop()  # cancelled while starting: let the thread wind down
            raise
        if not self._started:
            self._end()
            if self.error is not None:
                raise self.error
            raise RuntimeError(f"worker thread {self.thread.name} ended before it started")

    async def stop(self, *, raise_error: bool = True) -> None:
        """Stop the worker and wait for its thread; raise the error that ended it, if any.

        ``raise_error=False`` (the block raised already): the error was logged, not raised.
        """
        self.worker.stop()
        try:
            await asyncio.wait_for(self._until(lambda: self._finished), self._stop_timeout)
        except TimeoutError:
            log.warning("worker did not stop in time; its thread is left to finish")
            if raise_error:
                raise TimeoutError(
                    f"worker thread {self.thread.name} did not stop within"
                    f" {self._stop_timeout:g} s; it is left to finish on its own"
                ) from None
            return
        self._end()
        if self.error is not None and raise_error:
            raise self.error

    def _end(self) -> None:
        """Join the thread, which has finished its work (only its return is left)."""
        self.thread.join(1.0)


@asynccontextmanager
async def worker_thread_running(
    worker: _W, store: _Closable, *, name: str, stop_timeout: float
) -> AsyncIterator[_W]:
    """Run ``worker`` on a ``WorkerThread`` while the ``async with`` block runs; the worker.

    Entering returns once the worker has started (it calls ``worker.thread.started()``), or
    raises why it could not. Leaving stops it and raises the error that ended it, if any; when
    the block raised, that error is raised and the worker's is only logged.
    """
    thread = WorkerThread(worker, store, name=name, stop_timeout=stop_timeout)
    worker.thread = thread
    await thread.start()
    try:
        yield worker
    except BaseException:
        await thread.stop(raise_error=False)
        raise
    await thread.stop()
