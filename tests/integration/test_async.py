"""What only the async twin has: its read-ahead of partition pages is a task (the sync twin's
is a thread: test_read_ahead.py), and many tasks on one event loop share the store.

Everything the twins have in common is tested once, against both, in tests/contract.
"""

from __future__ import annotations

import asyncio

from eventsource import NO_STREAM, AsyncEventStore, AsyncRepository, ConcurrencyError
from tests.domain import Counter, Deposited


async def test_iter_partition_reads_ahead_and_stops_cleanly(async_store: AsyncEventStore) -> None:
    """Leaving iter_partition early drops the page read ahead and returns its connection;
    events appended while iterating are read up to the head."""
    result = await async_store.append("s", [Deposited(amount=i) for i in range(12)], NO_STREAM)
    seen = []
    async for record in async_store.iter_partition(result.partition, batch=3):
        seen.append(record.position)
        if record.position == 4:
            break
    assert seen == [1, 2, 3, 4]
    await asyncio.sleep(0.1)
    assert async_store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    seen = []
    async for record in async_store.iter_partition(result.partition, batch=3):
        seen.append(record.position)
        if record.position == 5:
            await async_store.append("s", [Deposited(amount=99)], 12)
    assert seen == list(range(1, 14))


async def test_concurrent_tasks_with_retries(async_store: AsyncEventStore) -> None:
    """Concurrent tasks incrementing one aggregate with retries lose no update."""
    repo = AsyncRepository(async_store, Counter)
    counter = Counter("hot")
    counter.open("ann")
    await repo.save(counter)

    async def increment() -> None:
        for _ in range(10):
            while True:
                current = await repo.load("hot")
                current.add(1)
                try:
                    await repo.save(current)
                    break
                except ConcurrencyError:
                    await asyncio.sleep(0)

    await asyncio.gather(*(increment() for _ in range(5)))
    final = await repo.load("hot")
    assert (final.total, final.version) == (50, 51)
    versions = [r.stream_version for r in await async_store.read_stream("hot")]
    assert versions == list(range(1, 52))
