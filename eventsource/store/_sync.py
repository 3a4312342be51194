"""The event store: append to streams, read streams and partitions, share transactions.

store = EventStore.from_url("postgresql://localhost/app")
store.upgrade()
result = store.append("acc-1", [AccountOpened(owner="ann")], NO_STREAM)
with store.transaction() as tx:
    store.append("acc-2", [AccountOpened(owner="bob")], NO_STREAM, tx=tx)
store.read_stream("acc-1")
store.read_partition(result.partition, after=0, limit=1000)
"""

# Generated from eventsource/store/_async.py
# by tools/async_to_sync.py: edit that file, then run `python tools/async_to_sync.py`
# (tests/unit/test_generated.py checks that this file is current).

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, Executable
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Result

from eventsource._errors import SchemaNotReady
from eventsource._events import Event
from eventsource._instrumented import AppendSpan
from eventsource.db import (
    RawPool,
    SchemaStatus,
    conninfo,
    driver_connection,
    fetch,
    schema_status,
    sync_engine,
    upgrade_schema,
)
from eventsource.store._ahead import read_ahead
from eventsource.store._base import StoreBase
from eventsource.store._group import Entry, GroupCommit, each_alone, group_plan
from eventsource.store._reading import decoded, fetch_page, whole_stream
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

__all__ = ["EventStore", "Transaction", "drive"]


def drive(conn: psycopg.Connection[Any], plan: Plan) -> list[AppendResult]:
    """Run an append plan on ``conn``: execute its steps, send it their rows or errors."""
    try:
        step = next(plan)
        while True:
            try:
                rows = fetch(conn, *step)
            except psycopg.Error as exc:
                if not for_the_plan(exc):
                    raise
                step = plan.throw(exc)
            else:
                step = plan.send(rows)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


class Transaction(TransactionCore):
    """One database transaction shared by several appends, enqueues and statements.

    Appends are staged and written together when the transaction commits (or at ``flush()``),
    so the partition heads they lock are held only for the last moment of the transaction.
    The database transaction begins when a statement of its own runs (``tx.begin()``,
    ``tx.execute``, ``tx.flush``); one that only staged appends is written at commit as a
    single statement.
    """

    _block = "with store.transaction()"  # named when it is used after its end
    store: EventStore

    def __init__(self, store: EventStore) -> None:
        super().__init__(store)
        self._connection: Connection | None = None

    @property
    def connection(self) -> Connection:
        """The SQLAlchemy connection of this transaction. A sync one begins on first use; an
        async one must have begun first (``tx.begin()``): a property cannot wait."""
        self._check_open()
        if self._connection is None:
            return self.begin()
        return self._connection

    def begin(self) -> Connection:
        """Begin the database transaction, if not yet, and return its SQLAlchemy connection."""
        self._check_open()
        if self._connection is None:
            with self.store._errors():
                connection = self.store._engine.connect()
                try:
                    connection.begin()
                except BaseException:
                    connection.close()
                    raise
            self._connection = connection
        return self._connection

    def execute(self, statement: Executable, parameters: Any = None) -> Result[Any]:
        """Run a statement in this transaction (SQLAlchemy's ``execute``)."""
        connection = self.begin()
        return connection.execute(statement, parameters)

    def flush(self) -> list[AppendResult]:
        """Write the staged appends now; ``ConcurrencyError`` if any stream moved on.

        From here to commit this transaction holds the head locks of the partitions written;
        appends staged after a flush are written by a second flush, whose locks may come out
        of ascending order (PostgreSQL then detects any deadlock and one side must retry).
        """
        self._check_open()
        connection = self.begin()
        with self.store._errors():
            raw = driver_connection(connection)
            return self._write(raw, autocommit=False)

    def _write(self, conn: psycopg.Connection[Any], *, autocommit: bool) -> list[AppendResult]:
        """Write the staged appends, then the statements that follow them, on ``conn``."""
        results: list[AppendResult] = []
        if self._staged:
            self._written.extend(written := self._staged.pending())
            partitions = self.store._partition_count_cached()
            plan = append_plan(self._staged, self.store._queries, partitions, autocommit=autocommit)
            with AppendSpan() as write:
                results = drive(conn, plan)
                write.written(written)
        while self._after_flush:
            fetch(conn, *self._after_flush.pop(0))
        return results

    def _commit(self) -> None:
        """Write what is staged and commit."""
        connection = self._connection
        if connection is not None:
            self.flush()
            with self.store._errors():
                connection.commit()
            return
        # Nothing ran on a connection yet: write on a pooled driver connection, with no round
        # trips for BEGIN and COMMIT when the appends are the only statement.
        if not self._staged:
            return
        with self.store._raw() as raw:
            if not self._after_flush:
                self._write(raw, autocommit=True)
                return
            with raw.transaction():
                self._write(raw, autocommit=False)


class EventStore(StoreBase[Engine]):
    """A partitioned, append-only event log in one PostgreSQL schema."""

    _make_engine = staticmethod(sync_engine)

    def __init__(self, engine: Engine, **options: Any) -> None:
        """``options``: ``StoreBase``'s (schema, partitions, prepared_statements, group_commit)."""
        super().__init__(engine, **options)
        self._group = GroupCommit(self) if self.group_commit else None
        self._raw_pool = RawPool(conninfo(self.url), self._pool_size, self._prepare_threshold)

    def close(self) -> None:
        """Close the connection pools."""
        self._announcer.close()
        self._raw_pool.close()
        self._engine.dispose()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _raw(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled driver connection in autocommit mode for hot paths' single statements,
        without SQLAlchemy's layers; errors are translated, a broken connection is dropped."""
        with self._errors(), self._raw_pool.connection() as conn:
            yield conn

    # -- schema --------------------------------------------------------------------------

    def upgrade(self) -> None:
        """Create or upgrade the schema (idempotent, safe to run from several processes)."""
        self._partitions = self._run(upgrade_schema, self.schema, self._initial_partitions)

    def status(self) -> SchemaStatus:
        """The schema's migration revision and partition count."""
        return self._run(schema_status, self.schema)  # type: ignore[no-any-return]

    def _run(self, function: Any, *args: Any) -> Any:
        """``function(connection, *args)``: sync SQLAlchemy code, on a connection of its own."""
        with self._errors(), self._engine.connect() as conn:
            return function(conn, *args)

    def partition_count(self) -> int:
        """Read the number of partitions from the database (``partitions`` caches it)."""
        with self._raw() as conn:
            rows = fetch(conn, self._queries.partition_count)
        value = rows[0][0] if rows else None
        if value is None:
            raise SchemaNotReady(self.schema, "no partition count stored")
        self._partitions = int(value)
        return self._partitions

    def _partition_count_cached(self) -> int:
        if self._partitions is None:
            return self.partition_count()
        return self._partitions

    # -- writing -------------------------------------------------------------------------

    def append(
        self,
        stream_id: str,
        events: Sequence[Event],
        expected_version: int | ExpectedVersion = ANY,
        *,
        metadata: Mapping[str, Any] | None = None,
        partition_key: str | None = None,
        tx: Transaction | None = None,
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
            partitions = self._partition_count_cached()
            if self._group is not None:
                self._group.append(staged, partitions)
            else:
                self._write_alone(staged, partitions)
            write.written((pending,))
        result = pending.result
        if not result.duplicate:
            self._announcer.announce((result.partition,))
        return result

    def _write_alone(self, staged: StagedAppends, partitions: int) -> None:
        """Write ``staged`` (a standalone append) with no other, on a pooled connection."""
        plan = append_plan(staged, self._queries, partitions, autocommit=True)
        with self._raw() as conn:
            drive(conn, plan)

    def _write_group(self, group: list[Entry], partitions: int) -> None:
        """Write a group: its appends whose claims hold in one statement, then each other alone."""
        if len(group) == 1:  # alone (a quiet spell): its error is the caller's
            self._write_alone(group[0].staged, partitions)
            return
        with self._raw() as conn:
            drive(conn, group_plan(group, self._queries, partitions))
            for entry, plan in each_alone(group, self._queries, partitions):
                try:
                    with self._errors():
                        drive(conn, plan)
                except Exception as exc:
                    entry.error = exc
                entry.done = True

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One transaction for several appends, enqueues and statements; commits on exit."""
        tx = Transaction(self)
        try:
            try:
                yield tx  # the caller's own statements raise their own errors, untranslated
                tx._commit()
            except BaseException:
                tx._rolled_back()
                if tx._connection is not None:
                    with suppress(sa_exc.DBAPIError):  # a broken connection: the original error
                        tx._connection.rollback()
                raise
        finally:
            tx._ended = True
            if tx._connection is not None:
                tx._connection.close()
        self._announcer.announce({p.partition for p in tx._written if p.done and not p.duplicate})
        for callback in tx._on_commit:
            callback()

    # -- reading -------------------------------------------------------------------------

    def read_stream(self, stream_id: str, *, after_version: int = 0) -> list[RecordedEvent]:
        """A stream's events in version order (after ``after_version``), decoded."""
        check_stream_id(stream_id)
        check_version(after_version)
        params = {"stream_id": stream_id, "after": after_version}
        with self._raw() as conn:
            page = fetch_page(conn, self._queries.direct["read_stream"], params)
        return whole_stream(page)

    def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 if it has no events)."""
        check_stream_id(stream_id)
        with self._raw() as conn:
            rows = fetch(conn, self._queries.stream_version, {"stream_id": stream_id})
        return int(rows[0][0]) if rows else 0

    def read_partition(
        self, partition: int, after: int = 0, limit: int = 1000, *, decode: bool = True
    ) -> list[RecordedEvent]:
        """Up to ``limit`` events of a partition with position > ``after``, in position order.

        Positions are dense and become visible in order: after reading position p, no event at
        a position <= p can appear later. Events whose class is loaded are decoded (all of them
        lazily with ``decode=False``); ``record.event`` raises ``UnknownEventType`` for others.
        """
        check_partition(partition, self._partition_count_cached())
        check_range(after, limit)
        return decoded(self._partition_rows(partition, after, limit), decode)

    def _partition_rows(self, partition: int, after: int, limit: int) -> list[RecordedEvent]:
        params = {"partition": partition, "after": after, "limit": limit}
        with self._raw() as conn:
            return fetch_page(conn, self._queries.direct["read_partition_page"], params)

    def iter_partition(
        self, partition: int, after: int = 0, *, batch: int = 1000, decode: bool = True
    ) -> Iterator[RecordedEvent]:
        """Every event of a partition after ``after``, in position order, to the current head.

        Pages of ``batch`` events; the next page's query is under way while the caller works
        through the current one.
        """
        check_partition(partition, self._partition_count_cached())
        check_range(after, batch, limit_name="batch")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        yield from read_ahead(self, partition, after, batch, decode)

    def load_snapshot(self, stream_id: str, aggregate_type: str) -> tuple[int, str, str] | None:
        """The stored snapshot of a stream as (version, shape, state JSON), if any."""
        params = {"stream_id": stream_id, "aggregate_type": aggregate_type}
        with self._raw() as conn:
            rows = fetch(conn, self._queries.load_snapshot, params)
        return (int(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    def heads(self) -> dict[int, int]:
        """The head (last position) of every partition."""
        with self._raw() as conn:
            rows = fetch(conn, self._queries.heads)
        return {int(p): int(h) for p, h in rows}
