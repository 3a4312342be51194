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
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from eventsource._logging import get_logger
from eventsource.commands._served import check_queues_served
from eventsource.commands._worker import CommandWorker
from eventsource.runtime import WorkerThread, worker_thread_running
from eventsource.store import AsyncEventStore, EventStore

__all__ = ["commands_running", "sync_store"]

# Past its grace period a stopping CommandWorker settles the abandoned handlers and waits up
# to 5 s for its heartbeat: its thread ends within grace + this.
SETTLE_SECONDS = 10.0

log = get_logger("eventsource.running")


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
    started, and raises if it cannot (``SchemaNotReady``, ``DatabaseUnavailable``, or a
    ``ValueError`` naming the served queues when no handler serves any of ``queues``). Leaving
    stops it: running handlers finish within ``grace`` (the rest are failed and retried as
    in a worker process, and the async ones are cancelled on the loop), then its store is
    closed. An error that stops the worker meanwhile
    is logged at once and raised when the block ends (``WorkerCrashed``). Worker processes
    (``eventsource worker run``) remain the recommended production set-up.
    """
    store = sync_store(astore)
    try:
        await asyncio.to_thread(check_queues_served, store, list(queues), options.get("handlers"))
        worker = _Embedded(store, queues, concurrency=concurrency, **options)
    except BaseException:
        store.close()
        raise
    worker.handler_loop = asyncio.get_running_loop()
    stop_timeout = worker.grace + SETTLE_SECONDS
    async with worker_thread_running(
        worker, store, name="commands-running", stop_timeout=stop_timeout
    ):
        yield worker
