"""Where a projection worker reads the log from: the store itself, or a relayed copy.

A ``Source`` gives the worker the heads of the partitions, a partition's events after a
position (read inside the batch's transaction, so that the checkpoint and the read model move
together whatever the source), a waiter that wakes the worker when something was appended,
and which of its errors are outages to wait out. ``StoreSource`` reads the PostgreSQL log of
the worker's own store (the default); ``JetStreamSource`` reads what the relay published.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol, runtime_checkable

import psycopg

from eventsource import EventStore, RecordedEvent
from eventsource._internal import Listener, fetch, records
from projections._queries import ProjectionQueries

__all__ = ["Source", "StoreSource", "Waiter", "announced", "lock_checkpoint"]


class Waiter(Protocol):
    """What an idle worker waits on: an append's announcement, or a timeout."""

    def open(self) -> bool:
        """Start listening (if not already); whether it listens."""

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Sleep until an announcement, ``stop`` or the timeout; whether to read again."""

    def close(self) -> None:
        """Stop listening."""


@runtime_checkable
class _Telling(Protocol):
    """A waiter that tells what its announcements said (the ``Listener``)."""

    def heard(self) -> list[str] | None:
        """The payloads since the last call; None if some may have been missed."""


def announced(waiter: Waiter) -> set[int] | None:
    """The partitions announced to ``waiter`` since the last look, or None when that is not
    known (a waiter that does not tell, a missed or unreadable announcement): then the
    heads of every partition are to be read."""
    heard = waiter.heard() if isinstance(waiter, _Telling) else None
    if not heard:
        return None
    try:
        return {int(item) for payload in heard for item in payload.split(",")}
    except ValueError:
        return None


def lock_checkpoint(
    conn: psycopg.Connection[Any], statement: str, params: dict[str, Any]
) -> list[tuple[Any, ...]] | None:
    """Run ``statement``, which locks a batch's checkpoint (without waiting) and returns its
    position first; its rows, or None when the checkpoint is not ours (or another session
    holds it)."""
    try:
        rows = fetch(conn, statement, params)
    except psycopg.errors.LockNotAvailable:
        return None
    return rows or None


class Source(Protocol):
    """The log a projection worker reads: heads, batches, wake-ups, outages."""

    def bind(self, store: EventStore) -> None:
        """Called by the worker with its own store, before anything is read."""

    def heads(self) -> dict[int, int]:
        """The last position of every partition that the source holds."""

    def read(
        self, conn: psycopg.Connection[Any], partition: int, after: int, limit: int
    ) -> list[RecordedEvent]:
        """Up to ``limit`` events of ``partition`` after ``after``, in position order, dense.

        ``conn`` is the batch's transaction on the worker's store.
        """

    def waiter(self, log: Any) -> Waiter:
        """A new waiter for a worker's idle waits."""

    def is_outage(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the source could not be reached (to be waited out)."""

    def close(self) -> None:
        """Release the source's connections."""


class StoreSource:
    """The PostgreSQL log of the worker's own store (announced by LISTEN/NOTIFY)."""

    def __init__(self, store: EventStore, queries: ProjectionQueries) -> None:
        """The log of ``store``, read with its projection ``queries``."""
        self.store = store
        self.queries = queries

    def bind(self, store: EventStore) -> None:
        """Nothing to learn: the store is the log."""

    def heads(self) -> dict[int, int]:
        """The heads of the store's partitions."""
        return self.store.heads()

    def read(
        self, conn: psycopg.Connection[Any], partition: int, after: int, limit: int
    ) -> list[RecordedEvent]:
        """The partition's events after ``after``, read in the batch's transaction."""
        rows = fetch(
            conn,
            self.queries.store.read_partition,
            {"partition": partition, "after": after, "limit": limit},
        )
        return records(rows)

    def lock_read(
        self, conn: psycopg.Connection[Any], params: dict[str, Any]
    ) -> tuple[int, list[RecordedEvent]] | None:
        """Lock the batch's checkpoint and read the events after it in one statement; the
        checkpoint's position and the events (up to ``params["limit"]``), or None when the
        checkpoint is not ours (or another session holds it)."""
        rows = lock_checkpoint(conn, self.queries.lock_read, params)
        if rows is None:
            return None
        position: int = rows[0][0]
        return position, records([row[1:] for row in rows if row[1] is not None])

    def waiter(self, log: Any) -> Listener:
        """LISTEN on the store's channel; the announcements name the written partitions."""
        return Listener(self.store.url, [self.store._queries.listen], log, keep_payloads=True)

    def is_outage(self, exc: BaseException) -> bool:
        """Outages of the store are the worker's own (``is_outage``)."""
        return False

    def close(self) -> None:
        """Nothing to release: the store is the worker's."""
