"""The event store (sync): append to streams, read streams and partitions, share transactions.

    store = EventStore.from_url("postgresql://localhost/app")
    store.upgrade()
    result = store.append("acc-1", [AccountOpened(owner="ann")], expected_version=NO_STREAM)
    store.read_stream("acc-1")
    store.read_partition(result.partition, after=0, limit=1000)

The async twin is ``AsyncEventStore``; both share everything but I/O through ``StoreBase``
(``_base``). Transactions are in ``_transaction``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from eventsource._errors import SchemaNotReady
from eventsource._events import Event
from eventsource.db import (
    RawPool,
    SchemaStatus,
    conninfo,
    fetch,
    schema_status,
    upgrade_schema,
)
from eventsource.store._base import StoreBase
from eventsource.store._staging import StagedAppends, append_plan
from eventsource.store._transaction import Transaction, drive
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

__all__ = ["EventStore"]


class _PageReader:
    """Reads the pages of a partition one ahead of the caller, on a thread of its own.

    The thread waits for the server with the GIL released, so the next page is on its way
    while the caller decodes and handles the current one.
    """

    def __init__(self, store: EventStore, partition: int, after: int, batch: int) -> None:
        self._store = store
        self._params = {"partition": partition, "after": after, "limit": batch}
        self._pages: queue.Queue[list[tuple[Any, ...]] | BaseException] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"eventsource-pages-{partition}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        params = self._params
        try:
            with self._store._raw() as conn:
                while not self._stop.is_set():
                    rows = fetch(conn, self._store._queries.read_partition, params)
                    if not self._put(rows) or len(rows) < params["limit"]:
                        return
                    params["after"] = rows[-1][4]  # the position column
        except BaseException as exc:  # handed to the caller, raised there
            self._put(exc)

    def _put(self, item: list[tuple[Any, ...]] | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._pages.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def next_rows(self) -> list[tuple[Any, ...]]:
        """The next page's rows (fewer than a batch at the end); the reader's error, raised."""
        item = self._pages.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop reading ahead (the caller stopped early, or reached the end)."""
        self._stop.set()
        with suppress(queue.Empty):
            self._pages.get_nowait()
        self._thread.join(timeout=10)


def _pool_size(engine: Engine) -> int:
    """The engine's pool size (a pool without one, e.g. NullPool: the default of 10)."""
    size = getattr(engine.pool, "size", None)
    return int(size()) if callable(size) else 10


class EventStore(StoreBase[Engine]):
    """A partitioned, append-only event log in one PostgreSQL schema."""

    @classmethod
    def _make_engine(cls, url: URL, pool_size: int, prepared: bool = True) -> Engine:
        from eventsource.db import sync_engine  # noqa: PLC0415

        return sync_engine(url, pool_size, prepared)

    def __init__(self, engine: Engine, **options: Any) -> None:
        """``options``: those of ``StoreBase`` (schema, partitions, prepared_statements)."""
        super().__init__(engine, **options)
        # Connections open on first use.
        self._raw_pool = RawPool(conninfo(self.url), _pool_size(engine), self._prepare_threshold)

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
        """A pooled driver connection in autocommit mode, for single statements on hot paths.

        It skips SQLAlchemy's connection and result layers (a few tens of microseconds per
        call); errors are translated, and a broken connection is dropped from the pool.
        """
        with self._errors(), self._raw_pool.connection() as conn:
            yield conn

    # -- schema --------------------------------------------------------------------------

    def upgrade(self) -> None:
        """Create or upgrade the schema (idempotent, safe to run from several processes)."""
        with self._errors(), self._engine.connect() as conn:
            self._partitions = upgrade_schema(conn, self.schema, self._initial_partitions)

    def status(self) -> SchemaStatus:
        """The schema's migration revision and partition count."""
        with self._errors(), self._engine.connect() as conn:
            return schema_status(conn, self.schema)

    @property
    def partitions(self) -> int:
        """The number of partitions of the log (fixed when the schema was created)."""
        if self._partitions is None:
            return self.partition_count()
        return self._partitions

    def partition_count(self) -> int:
        """Read the number of partitions from the database (``partitions`` caches it)."""
        with self._raw() as conn:
            rows = fetch(conn, self._queries.partition_count)
        value = rows[0][0] if rows else None
        if value is None:
            raise SchemaNotReady(self.schema, "no partition count stored")
        self._partitions = int(value)
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
        staged = StagedAppends()
        pending = staged.add(stream_id, events, expected_version, metadata, partition_key)
        plan = append_plan(staged, self._queries, self.partitions, autocommit=True)
        with self._raw() as conn:
            drive(conn, plan)
        result = pending.result
        if not result.duplicate:
            self._announcer.announce((result.partition,))
        return result

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
        with self._raw() as conn:
            rows = fetch(
                conn, self._queries.read_stream, {"stream_id": stream_id, "after": after_version}
            )
        result = records(rows, decode=True)
        for record in result:
            _ = record.event  # a stream's reader needs every class: UnknownEventType otherwise
        return result

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
        check_partition(partition, self.partitions)
        check_range(after, limit)
        with self._raw() as conn:
            rows = fetch(
                conn,
                self._queries.read_partition,
                {"partition": partition, "after": after, "limit": limit},
            )
        return records(rows, decode=decode)

    def iter_partition(
        self, partition: int, after: int = 0, *, batch: int = 1000, decode: bool = True
    ) -> Iterator[RecordedEvent]:
        """Every event of a partition after ``after``, in position order, to the current head.

        Pages of ``batch`` events; from the second page on, the next page is read on a
        background thread while the caller works through the current one.
        """
        check_partition(partition, self.partitions)
        check_range(after, batch, limit_name="batch")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        page = self.read_partition(partition, after, batch, decode=decode)
        yield from page
        if len(page) < batch:
            return
        reader = _PageReader(self, partition, page[-1].position, batch)
        try:
            while rows := reader.next_rows():
                yield from records(rows, decode=decode)
                if len(rows) < batch:
                    return
        finally:
            reader.close()

    def load_snapshot(self, stream_id: str, aggregate_type: str) -> tuple[int, str, str] | None:
        """The stored snapshot of a stream as (version, shape, state JSON), if any."""
        with self._raw() as conn:
            rows = fetch(
                conn,
                self._queries.load_snapshot,
                {"stream_id": stream_id, "aggregate_type": aggregate_type},
            )
        return (int(rows[0][0]), rows[0][1], rows[0][2]) if rows else None

    def heads(self) -> dict[int, int]:
        """The head (last position) of every partition."""
        with self._raw() as conn:
            return {int(p): int(h) for p, h in fetch(conn, self._queries.heads)}
