"""Workers inside an application's event loop: a process worker run on a thread of its own.

    async with eventsource.commands_running(astore, queues=["default"], concurrency=4): ...
    async with projections.running(astore, [Balances()]): ...

The worker is the very one a worker process runs (``CommandWorker``, ``ProjectionWorker``),
with every guarantee it keeps (leases, fenced acks, checkpoints, outages waited out), over a
sync ``EventStore`` made from the async store's URL, schema and options and closed with it.
``WorkerThread`` runs it: entering the block returns once the worker has started, and leaving
it stops the worker and waits for its thread without blocking the event loop. Separate worker
processes remain the recommended production set-up: a worker inside the application shares
its process, its CPU and its restarts.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Protocol

from eventsource._logging import get_logger
from eventsource.commands._worker import CommandWorker
from eventsource.store import AsyncEventStore, EventStore

__all__ = ["WorkerThread", "commands_running", "sync_store"]

# Past its grace period a stopping CommandWorker settles the abandoned handlers and waits up
# to 5 s for its heartbeat: its thread ends within grace + this.
SETTLE_SECONDS = 10.0

log = get_logger("eventsource.running")


class _Worker(Protocol):
    """What ``WorkerThread`` runs: a command or projection worker."""

    def run(self) -> None:
        """Work until stopped (or raise what stopped the worker)."""

    def stop(self) -> None:
        """Ask the worker to stop; callable from any thread."""


def sync_store(astore: AsyncEventStore) -> EventStore:
    """A sync store on the async store's database and schema, with its options."""
    if not isinstance(astore, AsyncEventStore):
        raise TypeError(f"expected an AsyncEventStore, got {type(astore).__name__}: {astore!r}")
    return EventStore.from_url(
        astore.url,
        schema=astore.schema,
        partitions=astore._initial_partitions,
        pool_size=astore._pool_size,
        prepared_statements=astore.prepared_statements,
    )


class WorkerThread:
    """A worker's ``run()`` on a daemon thread, started and stopped from an event loop.

    The worker calls ``started()`` (from its thread) once it is ready; ``start()`` returns
    then, or raises what stopped the worker before. ``stop()`` asks it to stop and waits up to
    ``stop_timeout`` seconds for its thread; an error that ended the worker is logged when it
    happens and raised by ``stop()``. ``store`` is the worker's own and is closed by its thread.
    """

    def __init__(
        self, worker: _Worker, store: EventStore, *, name: str, stop_timeout: float
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


class _Embedded(CommandWorker):
    """A ``CommandWorker`` that tells its ``WorkerThread`` when it has started."""

    thread: WorkerThread | None = None

    def _started(self) -> None:
        if self.thread is not None:
            self.thread.started()


@asynccontextmanager
async def commands_running(
    astore: AsyncEventStore,
    queues: Sequence[str] = ("default",),
    concurrency: int = 4,
    **options: Any,
) -> AsyncIterator[CommandWorker]:
    """Run the registered command handlers while the ``async with`` block runs.

        async with eventsource.commands_running(astore, queues=["default"], concurrency=4):
            await AsyncCommandQueue(astore).enqueue(SendStatement(account_id="acc-1"))

    The worker is a ``CommandWorker`` (``options``: ``handlers``, ``lease``, ``grace``, ...) on
    threads of its own: sync handlers run on its slot threads, ``async def`` handlers on the
    event loop that entered the block, so that they can use the application's async
    resources (a handler's timeout cancels it there). Entering returns once the worker has
    started, and raises if it cannot (``SchemaNotReady``, ``DatabaseUnavailable``). Leaving
    stops it: running handlers finish within ``grace`` (the rest are failed and retried as
    in a worker process), then its store is closed. An error that stops the worker meanwhile
    is logged at once and raised when the block ends (``WorkerCrashed``). Worker processes
    (``eventsource worker run``) remain the recommended production set-up.
    """
    store = sync_store(astore)
    try:
        worker = _Embedded(store, queues, concurrency=concurrency, **options)
    except BaseException:
        store.close()
        raise
    worker.handler_loop = asyncio.get_running_loop()
    thread = WorkerThread(
        worker, store, name="commands-running", stop_timeout=worker.grace + SETTLE_SECONDS
    )
    worker.thread = thread
    await thread.start()
    try:
        yield worker
    except BaseException:
        await thread.stop(raise_error=False)
        raise
    await thread.stop()
