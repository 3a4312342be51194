"""Workers inside an application's event loop: ``projections.running`` and
``commands_running`` over an AsyncEventStore, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import threading

import pytest
from sqlalchemy import Connection

import projections
from eventsource import NO_STREAM, AsyncEventStore, RecordedEvent, SchemaNotReady
from projections import Projection, handles
from tests.domain import Deposited


class Fatal(BaseException):
    """Not an error of one event (those stop only their partition): it stops the worker."""


class Counted(Projection):
    """Counts the Deposited events it applies; a deposit of -1 is fatal to its worker."""

    name = "test.running.counted"

    def __init__(self) -> None:
        self.count = 0

    @handles(Deposited)
    def on_deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        if event.amount == -1:
            raise Fatal("a deposit of -1")
        self.count += 1


def worker_threads() -> list[str]:
    """The names of the live threads that these workers start."""
    prefixes = ("projections-running", "commands-running", "command-slot-", "command-heartbeat")
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]


async def test_projection_checkpoint_passes_an_append(async_store: AsyncEventStore) -> None:
    """An append made inside the block is applied by the worker, and wait_for_async sees it."""
    counted = Counted()
    async with projections.running(async_store, [counted], poll_interval=0.05) as worker:
        assert isinstance(worker, projections.ProjectionWorker)
        assert worker_threads() == ["projections-running"]
        result = await async_store.append("r-1", [Deposited(amount=5)], NO_STREAM)
        await projections.wait_for_async(async_store, Counted.name, result.token, timeout=5)
        assert counted.count == 1
    assert worker_threads() == []
    statuses = await projections.status_async(async_store)
    assert all(s.owner is None for s in statuses if s.projection == Counted.name)


async def test_projection_entry_raises_on_a_schema_not_upgraded(
    database_url: str, schema: str
) -> None:
    """Entering with a schema that was never upgraded raises SchemaNotReady; no thread stays."""
    astore = AsyncEventStore.from_url(database_url, schema=schema)
    try:
        with pytest.raises(SchemaNotReady):
            async with projections.running(astore, [Counted()]):
                pytest.fail("the block must not run")
    finally:
        await astore.close()
    assert worker_threads() == []


async def test_an_error_that_stops_the_worker_is_raised_at_the_block_end(
    async_store: AsyncEventStore,
) -> None:
    """An error that stops the worker is raised where the block ends, not inside it."""
    with pytest.raises(Fatal, match="a deposit of -1"):
        async with projections.running(async_store, [Counted()], poll_interval=0.05):
            await async_store.append("r-2", [Deposited(amount=-1)], NO_STREAM)
            for _ in range(100):
                if not worker_threads():
                    break
                await asyncio.sleep(0.05)
            assert worker_threads() == []  # stopped inside the block, raised only at its end
    assert worker_threads() == []
