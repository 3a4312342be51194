"""The event store (async): append to streams, read streams and partitions, share transactions.

    store = AsyncEventStore.from_url("postgresql://localhost/app")
    await store.upgrade()
    result = await store.append("acc-1", [AccountOpened(owner="ann")], NO_STREAM)
    async with store.transaction() as tx:
        await store.append("acc-2", [AccountOpened(owner="bob")], NO_STREAM, tx=tx)
    await store.read_stream("acc-1")
    await store.read_partition(result.partition, after=0, limit=1000)

Async source: the sync store (``_sync``) is generated from this module by
``tools/async_to_sync.py``. Both use ``_base``, ``_staging`` (write plans) and ``_types``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import psycopg
from sqlalchemy import Executable
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventsource._errors import EventSourceError, SchemaNotReady
from eventsource._events import Event
from eventsource._instrumented import AppendSpan
from eventsource.db import (
    RawPool,
    SchemaStatus,
    async_engine,
    conninfo,
    driver_connection_async,
    fetch_async,
    schema_status,
    upgrade_schema,
)
from eventsource.store._ahead import read_ahead_async
from eventsource.store._base import StoreBase
from eventsource.store._group import AsyncGroupCommit, Entry, each_alone, group_plan
from eventsource.store._reading import decoded, fetch_page_async, whole_stream
from eventsource.store._records import RecordedEvent
from eventsource.store._staging import (
    Plan,
    StagedAppends,
    TransactionCore,
    append_plan,
    for_the_plan,
)
from eventsource.store._types import (
    ANY,
    AppendResult,
    ExpectedVersion,
    PendingAppend,
    check_partition,
    check_range,
    check_stream_id,
    check_version,
)

__all__ = ["AsyncEventStore", "AsyncTransaction", "drive_async"]


async def drive_async(conn: psycopg.AsyncConnection[Any], plan: Plan) -> list[AppendResult]:
    """Run an append plan on ``conn``: execute its steps, send it their rows or errors."""
    try:
        step = next(plan)
        while True:
            try:
                rows = await fetch_async(conn, *step)
            except psycopg.Error as exc:
                if not for_the_plan(exc):
                    raise
                step = plan.throw(exc)
            else:
                step = plan.send(rows)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


class AsyncTransaction(TransactionCore):
    """One database transaction shared by several appends, enqueues and statements.

    Appends are staged and written together when the transaction commits (or at ``flush()``),
    so the partition heads they lock are held only for the last moment of the transaction.
    The database transaction begins when a statement of its own runs (``tx.begin()``,
    ``tx.execute``, ``tx.flush``); one that only staged appends is written at commit as a
    single statement.
    """

    _block = "async with store.transaction()"  # named when it is used after its end
    store: AsyncEventStore

    def __init__(self, store: AsyncEventStore) -> None:
        super().__init__(store)
        self._connection: AsyncConnection | None = None

    @property
    def connection(self) -> AsyncConnection:
        """The SQLAlchemy connection of this transaction. A sync one begins on first use; an
        async one must have begun first (``await tx.begin()``): a property cannot wait."""
        self._check_open()
        if self._connection is None:
            if True:  # ASYNC
                raise EventSourceError(
                    "this transaction has not begun yet: `await tx.begin()` begins it and"
                    " returns its connection (tx.execute and tx.flush begin it too)"
                )
            else:
                return self.begin()
        return self._connection

    async def begin(self) -> AsyncConnection:
        """Begin the database transaction, if not yet, and return its SQLAlchemy connection."""
        self._check_open()
        if self._connection is None:
            with self.store._errors():
                connection = await self.store._engine.connect()
                try:
                    await connection.begin()
                except BaseException:
                    await connection.close()
                    raise
            self._connection = connection
        return self._connection

    async def execute(self, statement: Executable, parameters: Any = None) -> Result[Any]:
        """Run a statement in this transaction (SQLAlchemy's ``execute``)."""
        connection = await self.begin()
        return await connection.execute(statement, parameters)

    async def flush(self) -> list[AppendResult]:
        """Write the staged appends now; ``ConcurrencyError`` if any stream moved on.

        From here to commit this transaction holds the head locks of the partitions written;
        appends staged after a flush are written by a second flush, whose locks may come out
        of ascending order (PostgreSQL then detects any deadlock and one side must retry).
        """
        self._check_open()
        connection = await self.begin()
        with self.store._errors():
            raw = await driver_connection_async(connection)
            return await self._write(raw, autocommit=False)

    async def _write(
        self, conn: psycopg.AsyncConnection[Any], *, autocommit: bool
    ) -> list[AppendResult]:
        """Write the staged appends, then the statements that follow them, on ``conn``."""
        results: list[AppendResult] = []
        if self._staged:
            self._written.extend(written := self._staged.pending())
            partitions = await self.store._partition_count_cached()
            plan = append_plan(self._staged, self.store._queries, partitions, autocommit=autocommit)
            with AppendSpan() as write:
                results = await drive_async(conn, plan)
                write.written(written)
        while self._after_flush:
            await fetch_async(conn, *self._after_flush.pop(0))
        return results

    async def _commit(self) -> None:
        """Write what is staged and commit."""
        connection = self._connection
        if connection is not None:
            await self.flush()
            with self.store._errors():
                await connection.commit()
            return
        # Nothing ran on a connection yet: write on a pooled driver connection, with no round
        # trips for BEGIN and COMMIT when the appends are the only statement.
        if not self._staged:
            return
        async with self.store._raw() as raw:
            if not self._after_flush:
                await self._write(raw, autocommit=True)
                return
            async with raw.transaction():
                await self._write(raw, autocommit=False)


class AsyncEventStore(StoreBase[AsyncEngine]):
    """A partitioned, append-only event log in one PostgreSQL schema."""

    _make_engine = staticmethod(async_engine)

    def __init__(self, engine: AsyncEngine, **options: Any) -> None:
        """``options``: ``StoreBase``'s (schema, partitions, prepared_statements, group_commit)."""
        super().__init__(engine, **options)
        self._group = AsyncGroupCommit(self) if self.group_commit else None
        if True:  # ASYNC
            self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        else:  # its connections open on first use
            self._raw_pool = RawPool(conninfo(self.url), self._pool_size, self._prepare_threshold)

    async def close(self) -> None:
        """Close the connection pools."""
        self._announcer.close()
        if True:  # ASYNC
            pass  # the engine's pool holds them all
        else:
            self._raw_pool.close()
        await self._engine.dispose()

    async def __aenter__(self) -> AsyncEventStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def _raw(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled driver connection in autocommit mode for hot paths' single statements,
        without SQLAlchemy's layers; errors are translated, a broken connection is dropped."""
        with self._errors():
            if True:  # ASYNC
                async with self._autocommit.connect() as conn:
                    yield await driver_connection_async(conn)
            else:
                with self._raw_pool.connection() as conn:
                    yield conn

    # -- schema --------------------------------------------------------------------------

    async def upgrade(self) -> None:
        """Create or upgrade the schema (idempotent, safe to run from several processes)."""
        self._partitions = await self._run(upgrade_schema, self.schema, self._initial_partitions)

    async def status(self) -> SchemaStatus:
        """The schema's migration revision and partition count."""
        return await self._run(schema_status, self.schema)  # type: ignore[no-any-return]

    async def _run(self, function: Any, *args: Any) -> Any:
        """``function(connection, *args)``: sync SQLAlchemy code, on a connection of its own."""
        with self._errors():
            async with self._engine.connect() as conn:
                if True:  # ASYNC
                    return await conn.run_sync(function, *args)
                else:
                    return function(conn, *args)

    async def partition_count(self) -> int:
        """Read the number of partitions from the database (``partitions`` caches it)."""
        async with self._raw() as conn:
            rows = await fetch_async(conn, self._queries.partition_count)
        value = rows[0][0] if rows else None
        if value is None:
            raise SchemaNotReady(self.schema, "no partition count stored")
        self._partitions = int(value)
        return self._partitions

    async def _partition_count_cached(self) -> int:
        if self._partitions is None:
            return await self.partition_count()
        return self._partitions

    # -- writing -------------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[Event],
        expected_version: int | ExpectedVersion = ANY,
        *,
        metadata: Mapping[str, Any] | None = None,
        partition_key: str | None = None,
        tx: AsyncTransaction | None = None,
    ) -> AppendResult | PendingAppend:
        """Append events to a stream atomically; ``ConcurrencyError`` if it moved on.

        Re-appending events whose ids are already stored in the stream is a no-op that returns
        the stored result. With ``tx`` the append is staged and written when ``tx`` commits; the
        returned ``PendingAppend`` has its fields from then on.
        """
        if tx is not None:
            tx._check_open()
            return tx._staged.add(stream_id, events, expected_version, metadata, partition_key)
        with AppendSpan() as write:  # staged inside it: the events carry its context
            staged = StagedAppends()
            pending = staged.add(stream_id, events, expected_version, metadata, partition_key)
            partitions = await self._partition_count_cached()
            if self._group is not None:
                await self._group.append(staged, partitions)
            else:
                await self._write_alone(staged, partitions)
            write.written((pending,))
        result = pending.result
        if not result.duplicate:
            self._announcer.announce((result.partition,))
        return result

    async def _write_alone(self, staged: StagedAppends, partitions: int) -> None:
        """Write ``staged`` (a standalone append) with no other, on a pooled connection."""
        plan = append_plan(staged, self._queries, partitions, autocommit=True)
        async with self._raw() as conn:
            await drive_async(conn, plan)

    async def _write_group(self, group: list[Entry], partitions: int) -> None:
        """Write a group: its appends whose claims hold in one statement, then each other alone."""
        if len(group) == 1:  # alone (a quiet spell): its error is the caller's
            await self._write_alone(group[0].staged, partitions)
            return
        async with self._raw() as conn:
            await drive_async(conn, group_plan(group, self._queries, partitions))
            for entry, plan in each_alone(group, self._queries, partitions):
                try:
                    with self._errors():
                        await drive_async(conn, plan)
                except Exception as exc:
                    entry.error = exc
                entry.done = True

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncTransaction]:
        """One transaction for several appends, enqueues and statements; commits on exit."""
        tx = AsyncTransaction(self)
        try:
            try:
                yield tx  # the caller's own statements raise their own errors, untranslated
                await tx._commit()
            except BaseException:
                tx._rolled_back()
                if tx._connection is not None:
                    with suppress(sa_exc.DBAPIError):  # a broken connection: the original error
                        await tx._connection.rollback()
                raise
        finally:
            tx._ended = True
            if tx._connection is not None:
                await tx._connection.close()
        self._announcer.announce({p.partition for p in tx._written if p.done and not p.duplicate})
        for callback in tx._on_commit:
            callback()

    # -- reading -------------------------------------------------------------------------

    async def read_stream(self, stream_id: str, *, after_version: int = 0) -> list[RecordedEvent]:
        """A stream's events in version order (after ``after_version``), decoded."""
        check_stream_id(stream_id)
        check_version(after_version)
        params = {"stream_id": stream_id, "after": after_version}
        async with self._raw() as conn:
            page = await fetch_page_async(conn, self._queries.direct["read_stream"], params)
        return whole_stream(page)

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 if it has no events)."""
        check_stream_id(stream_id)
        async with self._raw() as conn:
            rows = await fetch_async(conn, self._queries.stream_version, {"stream_id": stream_id})
        return int(rows[0][0]) if rows else 0

    async def read_partition(
        self, partition: int, after: int = 0, limit: int = 1000, *, decode: bool = True
    ) -> list[RecordedEvent]:
        """Up to ``limit`` events of a partition with position > ``after``, in position order.

        Positions are dense and become visible in order: after reading position p, no event at
        a position <= p can appear later. Events whose class is loaded are decoded (all of them
        lazily with ``decode=False``); ``record.event`` raises ``UnknownEventType`` for others.
        """
        check_partition(partition, await self._partition_count_cached())
        check_range(after, limit)
        return decoded(await self._partition_rows(partition, after, limit), decode)

    async def _partition_rows(self, partition: int, after: int, limit: int) -> list[RecordedEvent]:
        params = {"partition": partition, "after": after, "limit": limit}
        async with self._raw() as conn:
            return await fetch_page_async(conn, self._queries.direct["read_partition_page"], params)

    async def iter_partition(
        self, partition: int, after: int = 0, *, batch: int = 1000, decode: bool = True
    ) -> AsyncIterator[RecordedEvent]:
        """Every event of a partition after ``after``, in position order, to the current head.

        Pages of ``batch`` events; the next page's query is under way while the caller works
        through the current one.
        """
        check_partition(partition, await self._partition_count_cached())
        check_range(after, batch, limit_name="batch")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        async for record in read_ahead_async(self, partition, after, batch, decode):
            yield record

    async def load_snapshot(
        self, stream_id: str, aggregate_type: str
    ) -> tuple[int, str, str] | None:
        """The stored snapshot of a stream as (version, shape, state JSON), if any."""
        params = {"stream_id": stream_id, "aggregate_type": aggregate_type}
        async with self._raw() as conn:
            rows = await fetch_async(conn, self._queries.load_snapshot, params)
        return (int(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    async def heads(self) -> dict[int, int]:
        """The head (last position) of every partition."""
        async with self._raw() as conn:
            rows = await fetch_async(conn, self._queries.heads)
        return {int(p): int(h) for p, h in rows}
