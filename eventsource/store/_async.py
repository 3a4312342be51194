"""The event store (async): the twin of ``EventStore`` for asyncio services.

    store = AsyncEventStore.from_url("postgresql://localhost/app")
    await store.upgrade()
    result = await store.append("acc-1", [AccountOpened(owner="ann")], NO_STREAM)
    async with store.transaction() as tx:
        await store.append("acc-2", [...], NO_STREAM, tx=tx)

Everything but I/O lives in ``StoreBase`` (``_base``, shared with the sync store), and a test
pins that both stores offer the same methods with the same parameters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import psycopg
from sqlalchemy import Executable
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Result
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventsource._errors import EventSourceError, SchemaNotReady
from eventsource._events import Event
from eventsource.db import SchemaStatus, fetch_async, schema_status, upgrade_schema
from eventsource.store._base import StoreBase
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
    RecordedEvent,
    check_partition,
    check_range,
    check_stream_id,
    check_version,
    records,
)

__all__ = ["AsyncEventStore", "AsyncTransaction"]


async def _drive(conn: AsyncConnection, plan: Plan) -> list[AppendResult]:
    """Run an append plan on ``conn``: execute what it yields, send back the rows (or throw
    it the errors that it answers)."""
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
    """One database transaction shared by several appends, enqueues and statements (async).

    As with the sync ``Transaction``, appends are staged and written together at commit (or
    at ``flush()``), and the database transaction begins only when a statement of its own
    runs: ``await tx.begin()`` (which returns its ``AsyncConnection``), ``tx.execute`` or
    ``tx.flush``. One that only staged appends is written at commit as a single statement.
    """

    _block = "async with store.transaction()"
    store: AsyncEventStore

    def __init__(self, store: AsyncEventStore) -> None:
        super().__init__(store)
        self._connection: AsyncConnection | None = None

    @property
    def connection(self) -> AsyncConnection:
        """The SQLAlchemy ``AsyncConnection`` of this transaction, once it has begun.

        A property cannot wait for a connection: ``await tx.begin()`` begins the transaction
        and returns it (``tx.execute`` and ``tx.flush`` begin it as well).
        """
        self._check_open()
        if self._connection is None:
            raise EventSourceError(
                "this transaction has not begun yet: `await tx.begin()` begins it and returns"
                " its connection (tx.execute and tx.flush begin it too)"
            )
        return self._connection

    async def begin(self) -> AsyncConnection:
        """Begin the database transaction, if not yet, and return its ``AsyncConnection``."""
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
        """Run a statement in this transaction (a SQLAlchemy ``AsyncConnection.execute``)."""
        connection = await self.begin()
        return await connection.execute(statement, parameters)

    async def flush(self) -> list[AppendResult]:
        """Write the staged appends now; ``ConcurrencyError`` if any stream moved on."""
        self._check_open()
        connection = await self.begin()
        with self.store._errors():
            return await self._write(connection, autocommit=False)

    async def _write(self, conn: AsyncConnection, *, autocommit: bool) -> list[AppendResult]:
        """Write the staged appends, then the statements that follow them, on ``conn``."""
        results: list[AppendResult] = []
        if self._staged:
            self._written.extend(self._staged.pending())
            partitions = await self.store._partition_count_cached()
            plan = append_plan(self._staged, self.store._queries, partitions, autocommit=autocommit)
            results = await _drive(conn, plan)
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
        # Nothing ran on a connection yet: write in autocommit, with no round trips for BEGIN
        # and COMMIT when the appends are the only statement.
        if not self._staged:
            return
        with self.store._errors():
            if not self._after_flush:
                async with self.store._autocommit.connect() as conn:
                    await self._write(conn, autocommit=True)
                return
            async with self.store._engine.begin() as conn:
                await self._write(conn, autocommit=False)


class AsyncEventStore(StoreBase[AsyncEngine]):
    """A partitioned, append-only event log in one PostgreSQL schema (asyncio)."""

    def __init__(self, engine: AsyncEngine, **options: Any) -> None:
        """``options``: those of ``StoreBase`` (schema, partitions, prepared_statements)."""
        super().__init__(engine, **options)
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @classmethod
    def _make_engine(cls, url: URL, pool_size: int, prepared: bool = True) -> AsyncEngine:
        from eventsource.db import async_engine  # noqa: PLC0415

        return async_engine(url, pool_size, prepared)

    async def close(self) -> None:
        """Close the connection pool."""
        self._announcer.close()
        await self._engine.dispose()

    async def __aenter__(self) -> AsyncEventStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- schema --------------------------------------------------------------------------

    async def upgrade(self) -> None:
        """Create or upgrade the schema (idempotent, safe to run from several processes)."""
        with self._errors():
            async with self._engine.connect() as conn:
                self._partitions = await conn.run_sync(
                    upgrade_schema, self.schema, self._initial_partitions
                )

    async def status(self) -> SchemaStatus:
        """The schema's migration revision and partition count."""
        with self._errors():
            async with self._engine.connect() as conn:
                return await conn.run_sync(schema_status, self.schema)

    @property
    def partitions(self) -> int:
        """The number of partitions, once known (after any call that touched the database)."""
        if self._partitions is None:
            raise EventSourceError(
                "the partition count is not loaded yet: await store.partition_count() first"
            )
        return self._partitions

    async def partition_count(self) -> int:
        """Read the number of partitions from the database (``partitions`` caches it)."""
        with self._errors():
            async with self._autocommit.connect() as conn:
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
        """Append events to a stream atomically; ``ConcurrencyError`` if it moved on."""
        if tx is not None:
            tx._check_open()
            return tx._staged.add(stream_id, events, expected_version, metadata, partition_key)
        staged = StagedAppends()
        pending = staged.add(stream_id, events, expected_version, metadata, partition_key)
        partitions = await self._partition_count_cached()
        plan = append_plan(staged, self._queries, partitions, autocommit=True)
        with self._errors():
            async with self._autocommit.connect() as conn:
                await _drive(conn, plan)
        result = pending.result
        if not result.duplicate:
            self._announcer.announce((result.partition,))
        return result

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
        with self._errors():
            async with self._autocommit.connect() as conn:
                rows = await fetch_async(
                    conn,
                    self._queries.read_stream,
                    {"stream_id": stream_id, "after": after_version},
                )
        result = records(rows, decode=True)
        for record in result:
            _ = record.event  # a stream's reader needs every class: UnknownEventType otherwise
        return result

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 if it has no events)."""
        check_stream_id(stream_id)
        with self._errors():
            async with self._autocommit.connect() as conn:
                rows = await fetch_async(
                    conn, self._queries.stream_version, {"stream_id": stream_id}
                )
        return int(rows[0][0]) if rows else 0

    async def read_partition(
        self, partition: int, after: int = 0, limit: int = 1000, *, decode: bool = True
    ) -> list[RecordedEvent]:
        """Up to ``limit`` events of a partition with position > ``after``, in position order."""
        check_partition(partition, await self._partition_count_cached())
        check_range(after, limit)
        return records(await self._partition_rows(partition, after, limit), decode=decode)

    async def _partition_rows(self, partition: int, after: int, limit: int) -> list[Any]:
        with self._errors():
            async with self._autocommit.connect() as conn:
                return await fetch_async(
                    conn,
                    self._queries.read_partition,
                    {"partition": partition, "after": after, "limit": limit},
                )

    async def iter_partition(
        self, partition: int, after: int = 0, *, batch: int = 1000, decode: bool = True
    ) -> AsyncIterator[RecordedEvent]:
        """Every event of a partition after ``after``, in position order, to the current head.

        Pages of ``batch`` events; the next page's query is sent before the current page is
        decoded and handed out, so the server works on it meanwhile.
        """
        check_partition(partition, await self._partition_count_cached())
        check_range(after, batch, limit_name="batch")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        rows = await self._partition_rows(partition, after, batch)
        while True:
            ahead = None
            try:
                if len(rows) == batch:
                    ahead = asyncio.ensure_future(
                        self._partition_rows(partition, rows[-1][4], batch)
                    )
                    await asyncio.sleep(0)  # let it send its query
                for record in records(rows, decode=decode):
                    yield record
            except BaseException:  # the caller stopped early (or failed): drop the next page
                if ahead is not None:
                    ahead.cancel()
                    with suppress(BaseException):
                        await ahead
                raise
            if ahead is None:
                return
            rows = await ahead

    async def load_snapshot(
        self, stream_id: str, aggregate_type: str
    ) -> tuple[int, str, str] | None:
        """The stored snapshot of a stream as (version, shape, state JSON), if any."""
        with self._errors():
            async with self._autocommit.connect() as conn:
                rows = await fetch_async(
                    conn,
                    self._queries.load_snapshot,
                    {"stream_id": stream_id, "aggregate_type": aggregate_type},
                )
        return (int(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    async def heads(self) -> dict[int, int]:
        """The head (last position) of every partition."""
        with self._errors():
            async with self._autocommit.connect() as conn:
                rows = await fetch_async(conn, self._queries.heads)
        return {int(p): int(h) for p, h in rows}
