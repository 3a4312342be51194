"""The async store and repository on a real PostgreSQL: the core behaviours of the sync twins."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from sqlalchemy import text

from eventsource import (
    ANY,
    NO_STREAM,
    AggregateNotFound,
    AppendResult,
    AsyncEventStore,
    AsyncRepository,
    ConcurrencyError,
    DatabaseUnavailable,
    DuplicateEventId,
    EventSourceError,
    PendingAppend,
    SchemaNotReady,
    correlation,
    partition_for,
)
from eventsource.db import quote_schema
from tests.domain import Counter, Deposited, Opened


async def count_rows(store: AsyncEventStore, table: str) -> int:
    async with store.engine.connect() as conn:
        result = await conn.execute(
            text(f"SELECT count(*) FROM {quote_schema(store.schema)}.{table}")
        )
        return int(result.scalar_one())


async def test_append_and_read_round_trip(async_store: AsyncEventStore) -> None:
    """Appended events read back in order with versions, positions and metadata."""
    events = [Opened(owner="ann"), Deposited(amount=3)]
    result = await async_store.append("acc-1", events, NO_STREAM, metadata={"user": "u"})
    assert result == AppendResult("acc-1", 2, partition_for("acc-1", 4), 2)
    records = await async_store.read_stream("acc-1")
    assert [r.event for r in records] == events
    assert [r.stream_version for r in records] == [1, 2]
    assert all(r.metadata == {"user": "u"} for r in records)
    assert await async_store.stream_version("acc-1") == 2
    assert await async_store.stream_version("nobody") == 0
    assert async_store.partitions == 4
    assert await async_store.heads() == {p: (2 if p == result.partition else 0) for p in range(4)}


async def test_conflict_writes_nothing(async_store: AsyncEventStore) -> None:
    """A wrong expected version raises ConcurrencyError with its fields and writes nothing."""
    await async_store.append("s", [Opened(owner="a")], NO_STREAM)
    heads = await async_store.heads()
    with pytest.raises(ConcurrencyError) as info:
        await async_store.append("s", [Deposited(amount=1)], NO_STREAM)
    assert (info.value.stream_id, info.value.expected, info.value.actual) == ("s", NO_STREAM, 1)
    with pytest.raises(ConcurrencyError) as info:
        await async_store.append("fresh", [Opened(owner="a")], 5)
    assert (info.value.expected, info.value.actual) == (5, 0)
    assert await async_store.heads() == heads
    assert await count_rows(async_store, "events") == 1
    assert await async_store.stream_version("s") == 1


async def test_idempotent_retry_and_duplicates(async_store: AsyncEventStore) -> None:
    """Re-appending stored ids returns the stored result; ids of another stream are rejected."""
    events = [Opened(owner="a"), Deposited(amount=1)]
    first = await async_store.append("s", events, NO_STREAM)
    for expected in (NO_STREAM, ANY, 0):
        again = await async_store.append("s", events, expected)
        assert again == dataclasses.replace(first, duplicate=True)
    with pytest.raises(DuplicateEventId):
        await async_store.append("t", events[:1], NO_STREAM)
    assert await count_rows(async_store, "events") == 2


async def test_read_partition_pages(async_store: AsyncEventStore) -> None:
    """read_partition pages by after/limit; iter_partition reads to the head; bad ids raise."""
    result = await async_store.append("s", [Deposited(amount=i) for i in range(7)], NO_STREAM)
    page = await async_store.read_partition(result.partition, after=2, limit=3)
    assert [r.position for r in page] == [3, 4, 5]
    positions = [r.position async for r in async_store.iter_partition(result.partition, batch=2)]
    assert positions == list(range(1, 8))
    with pytest.raises(ValueError, match=r"0\.\.3"):
        await async_store.read_partition(4)


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


async def test_a_transaction_cannot_be_used_after_its_block(
    async_store: AsyncEventStore,
) -> None:
    """After the block an async transaction refuses appends and statements instead of staging
    what nothing will write."""
    async with async_store.transaction() as tx:
        await async_store.append("s", [Opened(owner="a")], NO_STREAM, tx=tx)
    with pytest.raises(EventSourceError, match="transaction has ended"):
        await async_store.append("s", [Deposited(amount=1)], 1, tx=tx)
    with pytest.raises(EventSourceError, match="transaction has ended"):
        await tx.flush()
    with pytest.raises(EventSourceError, match="transaction has ended"):
        _ = tx.connection
    assert await async_store.stream_version("s") == 1


async def test_transaction_commits_together(async_store: AsyncEventStore) -> None:
    """Appends in an async transaction are written at commit; PendingAppends filled then."""
    async with async_store.transaction() as tx:
        a = await async_store.append("a", [Opened(owner="a")], NO_STREAM, tx=tx)
        b = await async_store.append("b", [Opened(owner="b")], NO_STREAM, tx=tx)
        assert isinstance(a, PendingAppend)
        with pytest.raises(EventSourceError, match="not written yet"):
            _ = a.position
        assert await count_rows(async_store, "events") == 0
    assert (a.stream_version, b.stream_version) == (1, 1)
    assert isinstance(b, PendingAppend)
    assert b.done
    assert await count_rows(async_store, "events") == 2


async def test_transaction_rolls_back_on_error(async_store: AsyncEventStore) -> None:
    """An exception in an async transaction writes nothing, even after flush."""
    await async_store.append("x", [Opened(owner="x")], NO_STREAM)
    heads = await async_store.heads()
    with pytest.raises(RuntimeError):
        async with async_store.transaction() as tx:
            await async_store.append("a", [Opened(owner="a")], NO_STREAM, tx=tx)
            await async_store.append("x", [Deposited(amount=1)], 1, tx=tx)
            await tx.flush()
            raise RuntimeError("abort")
    assert await async_store.heads() == heads
    assert await async_store.stream_version("a") == 0
    assert await async_store.stream_version("x") == 1


async def test_conflict_at_commit_rolls_back_the_transaction(async_store: AsyncEventStore) -> None:
    """A conflicting append at commit undoes the transaction's other appends."""
    await async_store.append("taken", [Opened(owner="x")], NO_STREAM)
    with pytest.raises(ConcurrencyError):
        async with async_store.transaction() as tx:
            await async_store.append("fresh", [Opened(owner="a")], NO_STREAM, tx=tx)
            await async_store.append("taken", [Deposited(amount=1)], 0, tx=tx)
    assert await async_store.stream_version("fresh") == 0
    assert await count_rows(async_store, "events") == 1


async def test_transaction_execute_and_correlation(async_store: AsyncEventStore) -> None:
    """tx.execute shares the transaction; correlation ids reach the metadata."""
    table = f"{quote_schema(async_store.schema)}.notes"
    async with async_store.engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {table} (body text)"))
    with correlation(correlation_id="req-1"):
        async with async_store.transaction() as tx:
            await async_store.append("s", [Opened(owner="a")], tx=tx)
            await tx.execute(text(f"INSERT INTO {table} VALUES ('kept')"))
    with pytest.raises(RuntimeError):
        async with async_store.transaction() as tx:
            await tx.execute(text(f"INSERT INTO {table} VALUES ('dropped')"))
            raise RuntimeError
    async with async_store.engine.connect() as conn:
        bodies = (await conn.execute(text(f"SELECT body FROM {table}"))).scalars().all()
    assert bodies == ["kept"]
    assert (await async_store.read_stream("s"))[0].metadata == {"correlation_id": "req-1"}


async def test_repository_load_save_and_conflict(async_store: AsyncEventStore) -> None:
    """AsyncRepository saves, loads, reports missing aggregates and stale saves."""
    repo = AsyncRepository(async_store, Counter)
    with pytest.raises(AggregateNotFound):
        await repo.load("c-1")
    assert await repo.get("c-1") is None
    counter = Counter("c-1")
    counter.open("ann")
    counter.add(5)
    await repo.save(counter)
    assert counter.pending_events == []
    first, second = await repo.load("c-1"), await repo.load("c-1")
    assert first == counter
    first.add(1)
    await repo.save(first)
    second.add(2)
    with pytest.raises(ConcurrencyError):
        await repo.save(second)
    assert len(second.pending_events) == 1
    assert (await repo.load("c-1")).total == 6


async def test_repository_pending_cleared_only_on_commit(async_store: AsyncEventStore) -> None:
    """Saves in an async transaction clear pending events at commit, not on rollback."""
    repo = AsyncRepository(async_store, Counter)
    counter = Counter("c-1")
    counter.open("ann")
    with pytest.raises(RuntimeError):
        async with async_store.transaction() as tx:
            await repo.save(counter, tx=tx)
            raise RuntimeError
    assert len(counter.pending_events) == 1
    async with async_store.transaction() as tx:
        await repo.save(counter, tx=tx)
        assert len(counter.pending_events) == 1
    assert counter.pending_events == []
    assert await repo.load("c-1") == counter


async def test_repository_snapshots(async_store: AsyncEventStore) -> None:
    """AsyncRepository stores snapshots every N events and loads them to the replayed state."""
    repo = AsyncRepository(async_store, Counter, snapshot_every=3)
    counter = Counter("c-1")
    counter.open("ann")
    for amount in range(1, 6):
        counter.add(amount)
        await repo.save(counter)
    snapshot = await async_store.load_snapshot("c-1", "test.Counter")
    assert snapshot is not None
    assert snapshot[0] == 6
    assert await repo.load("c-1") == counter
    assert await AsyncRepository(async_store, Counter).load("c-1") == counter


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


async def test_schema_not_ready(database_url: str, schema: str) -> None:
    """The async store on a schema never upgraded raises SchemaNotReady."""
    store = AsyncEventStore.from_url(database_url, schema=schema, partitions=4)
    try:
        with pytest.raises(SchemaNotReady):
            await store.append("s", [Opened(owner="a")])
        with pytest.raises(SchemaNotReady):
            await store.read_stream("s")
        assert (await store.status()).revision is None
    finally:
        await store.close()


async def test_unreachable_server(schema: str) -> None:
    """The async store raises DatabaseUnavailable naming host and database."""
    store = AsyncEventStore.from_url("postgresql://postgres@127.0.0.1:1/test", schema=schema)
    try:
        with pytest.raises(DatabaseUnavailable, match=r"127\.0\.0\.1:1/test"):
            await store.append("s", [Opened(owner="a")])
        with pytest.raises(DatabaseUnavailable):
            await store.upgrade()
    finally:
        await store.close()


async def test_partitions_fixed_at_creation(
    async_store: AsyncEventStore, database_url: str
) -> None:
    """A second async store asking for 8 partitions on the same schema sees 4."""
    other = AsyncEventStore.from_url(database_url, schema=async_store.schema, partitions=8)
    try:
        await other.upgrade()
        assert other.partitions == 4
        assert await other.partition_count() == 4
    finally:
        await other.close()


async def test_flush_raises_concurrency_error_inside_the_block(
    async_store: AsyncEventStore,
) -> None:
    """await tx.flush() raises ConcurrencyError where the caller can catch it."""
    await async_store.append("s", [Opened(owner="a")], NO_STREAM)
    caught: list[BaseException] = []
    with pytest.raises(ConcurrencyError):
        async with async_store.transaction() as tx:
            await async_store.append("s", [Deposited(amount=1)], NO_STREAM, tx=tx)
            try:
                await tx.flush()
            except BaseException as exc:
                caught.append(exc)
                raise
    assert isinstance(caught[0], ConcurrencyError)
