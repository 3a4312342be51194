"""Projection workers inside an application's event loop.

    async with projections.running(astore, [Balances()]):
        result = await astore.append(...)
        await projections.wait_for_async(astore, "balances", result.token)

The worker is a ``ProjectionWorker``, as in ``eventsource projections run``, on a thread of
its own over a sync store of the async store's database; the event loop is never blocked.
Separate worker processes remain the recommended production set-up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from eventsource import AsyncEventStore
from eventsource._internal import (
    WorkerThread,
    check_seconds,
    is_outage,
    sync_store,
    worker_thread_running,
)
from projections._projection import Projection
from projections._worker import ProjectionWorker

__all__ = ["running"]


class _Embedded(ProjectionWorker):
    """A ``ProjectionWorker`` that tells its ``WorkerThread`` when it has started."""

    thread: WorkerThread | None = None

    def heartbeat(self) -> None:
        """The first heartbeat follows setup and LISTEN: the worker has started by then."""
        try:
            super().heartbeat()
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._started()  # an outage now is waited out, as later ones are
            raise
        self._started()

    def _started(self) -> None:
        if self.thread is not None:
            self.thread.started()
            self.thread = None


@asynccontextmanager
async def running(
    astore: AsyncEventStore,
    projections: Sequence[Projection],
    *,
    grace: float = 30.0,
    **worker_options: Any,
) -> AsyncIterator[ProjectionWorker]:
    """Run ``projections`` on a worker thread while the ``async with`` block runs.

    Entering returns once the worker has set up its projections, listens and has claimed its
    share of partitions; it raises if the worker cannot start (``SchemaNotReady`` on a schema
    that is not upgraded, ``DatabaseUnavailable``). Leaving stops the worker after the batch
    in hand (within ``grace`` seconds, else ``TimeoutError``) and closes its store. An error
    that stops the worker meanwhile is logged at once and raised when the block ends.
    ``worker_options`` are those of ``ProjectionWorker`` (``worker_id``, ``lease_ttl``, ...).
    Worker processes (``eventsource projections run``) remain the recommended production
    set-up; this suits applications that must run in one process, tests and demos.
    """
    grace = check_seconds(grace, "grace")
    store = sync_store(astore)
    try:
        worker = _Embedded(store, projections, **worker_options)
    except BaseException:
        store.close()
        raise
    async with worker_thread_running(worker, store, name="projections-running", stop_timeout=grace):
        yield worker
