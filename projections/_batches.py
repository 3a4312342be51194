"""Processing the partitions a worker holds, one batch (one transaction) at a time.

Each batch is one transaction: lock the checkpoint row (only while the lease token is still
this worker's, so a worker whose lease was taken can never commit), read the partition after
the checkpoint, run the handlers, move the checkpoint. A handler that keeps failing stops only
its partition: the batch is narrowed to single events to find the poison event, retried with
backoff, then recorded with its error for `eventsource projections retry|skip`.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
import structlog

from eventsource import RecordedEvent
from eventsource._internal import (
    ANNOUNCE_AFTER_COMMIT,
    BatchSpan,
    command_queries,
    driver_connection,
    fail_current,
    fetch,
    is_outage,
    partition_stopped,
    paused_gc,
)
from projections._membership import Group, Lease, Membership
from projections._projection import Projection
from projections._sources import Source, StoreSource, lock_checkpoint
from projections._writes import BatchConnection

__all__ = ["Batches"]


class _LeaseLost(Exception):
    """The checkpoint's lease token is no longer this worker's."""


class Batches:
    """Runs the batches of the partitions a worker holds, and keeps count of their failures."""

    def __init__(
        self,
        membership: Membership,
        *,
        max_attempts: int,
        retry_delays: Sequence[float],
        stop: threading.Event,
        log: structlog.typing.FilteringBoundLogger,
        source: Source,
    ) -> None:
        """Batches of the partitions ``membership`` holds, read from ``source``; they stop
        early once ``stop`` is set."""
        self.membership = membership
        self.store = membership.store
        self.queries = membership.queries
        self.lease_ttl = membership.lease_ttl
        self.max_attempts = max_attempts
        self.retry_delays = tuple(retry_delays)
        # Statement and idle-in-transaction timeouts of a batch: a frozen or partitioned
        # worker's session is ended by the server within one TTL, so its checkpoint row
        # (locked by the batch) is free for the worker that takes the lease over.
        self._timeout_ms = str(max(1000, int(self.lease_ttl * 1000)))
        # Reactors' enqueues are announced on the command queue's channel after the commit.
        self._command_channel = command_queries(self.store.schema).channel
        self._stop = stop
        self._log = log
        self.source = source
        # The store's log is locked and read in one statement; another source after the lock.
        self._lock_read = (
            source.lock_read if isinstance(source, StoreSource) else self._lock_then_read
        )

    def caught_up(self, groups: Sequence[Group], heads: dict[int, int]) -> bool:
        """Every partition of this worker's share is held and at its head (or stopped)."""
        for group in groups:
            if group.paused:
                continue
            if set(group.desired) - group.leases.keys() or group.behind(heads):
                return False
        return True

    def work(self, groups: Sequence[Group], heads: dict[int, int]) -> bool:
        """One batch for every held partition behind its head; whether anything was applied."""
        counts = [count for _, count in self._batches(groups, lambda g: g.behind(heads))]
        return any(count > 0 for count in counts)

    def work_announced(self, groups: Sequence[Group], partitions: set[int]) -> bool:
        """One batch for every announced partition this worker holds (without reading the
        heads: the announcement says it moved); whether one may have more than a batch."""

        def announced(group: Group) -> list[int]:
            held = sorted(partitions & group.leases.keys())
            return [p for p in held if not group.leases[p].failed]

        ran = list(self._batches(groups, announced))  # every batch, none cut short
        return any(count >= group.projection.batch_size for group, count in ran)

    def _batches(
        self, groups: Sequence[Group], pick: Callable[[Group], list[int]]
    ) -> Iterator[tuple[Group, int]]:
        """One batch for each partition that ``pick`` gives of each group, unless it waits to
        be retried, until stopped: each group with the number of events its batch covered."""
        now = time.monotonic()
        for group in groups:
            for partition in pick(group):
                if self._stop.is_set():
                    return
                if group.retry_at.get(partition, 0.0) > now:
                    continue
                yield group, self.batch(group, partition, group.leases[partition])

    def batch(self, group: Group, partition: int, lease: Lease) -> int:
        """Apply one batch of ``partition``; the number of events it covered.

        The batch has a span (the current one while its handlers run) and is timed.
        """
        batch: list[RecordedEvent] = []
        with BatchSpan() as span:
            try:
                return self._batch(group, partition, lease, batch)
            finally:
                span.done(group.name, partition, batch)

    def _batch(self, group: Group, partition: int, lease: Lease, batch: list[RecordedEvent]) -> int:
        """``batch``'s work, which fills ``batch`` with the events it read."""
        narrow = group.narrow_until.get(partition)
        narrowing = narrow is not None and lease.position < narrow
        size = 1 if narrowing else group.projection.batch_size
        key = {**self.membership.key(group), "partition": partition, "token": lease.token}
        try:
            # Not translated: a handler's own SQL errors are its own (and may be poison).
            # A pipelined projection's plain writes are queued and sent together, except
            # after a failure (narrowing, retrying): then handlers run as without a pipeline.
            failed = narrowing or partition in group.attempts
            queue_writes = group.projection.pipelined and not failed
            conn = BatchConnection(self.store.engine, queue_writes=queue_writes)
            with conn:
                # Reactors' enqueues leave their queues here, announced after the commit.
                queues: set[str] = set()
                conn.info[ANNOUNCE_AFTER_COMMIT] = queues
                try:
                    with conn.begin():
                        position = self._apply(conn, group.projection, key, size, batch)
                finally:
                    conn.info.pop(ANNOUNCE_AFTER_COMMIT, None)
        except _LeaseLost:
            self._log.warning(
                "lease lost: batch rolled back", projection=group.name, partition=partition
            )
            group.leases.pop(partition, None)
            return 0
        except Exception as exc:  # a handler may raise anything: it may be a poison event
            if is_outage(exc) or self.source.is_outage(exc):
                raise  # the database or the source, not the handler: the run loop waits it out
            fail_current(exc)
            self._failed(group, partition, lease, batch, exc)
            return 0
        if queues:
            self.store._announcer.announce(queues, channel=self._command_channel)
        lease.position = position
        if not batch:
            return 0
        group.attempts.pop(partition, None)
        group.retry_at.pop(partition, None)
        if narrow is not None and lease.position >= narrow:
            del group.narrow_until[partition]
        return len(batch)

    def _apply(
        self,
        conn: BatchConnection,
        projection: Projection,
        key: dict[str, Any],
        size: int,
        batch: list[RecordedEvent],
    ) -> int:
        """In the batch's transaction: lock the checkpoint, read, handle, advance.

        Fills ``batch`` with the events read (for the caller's error handling); returns the
        checkpoint's position afterwards.
        """
        raw = driver_connection(conn)
        params = {**key, "ms": self._timeout_ms, "limit": size}
        read = self._lock_read(raw, params)
        if read is None:
            raise _LeaseLost
        position, events = read
        batch.extend(events)
        if not batch:
            return position
        if len(batch) == 1:
            conn.queue_writes = False  # one event: nothing to gain, and its errors come at once
        with paused_gc():
            try:
                projection.handle_batch(batch, conn)
                conn.flush()  # the queued writes, if any: their errors are the batch's
            except BaseException:
                conn.discard()  # nothing more is sent: the transaction rolls back
                raise
        last = batch[-1].position
        with raw.cursor() as cursor:
            cursor.execute(self.queries.advance, {**key, "position": last, "ttl": self.lease_ttl})
            if cursor.rowcount != 1:
                raise _LeaseLost
        return last

    def _lock_then_read(
        self, raw: psycopg.Connection[Any], params: dict[str, Any]
    ) -> tuple[int, list[RecordedEvent]] | None:
        """Lock the checkpoint, then read the source after it (a source other than the
        store); None when the checkpoint is not ours (or another session holds it)."""
        locked = lock_checkpoint(raw, self.queries.lock_checkpoint, params)
        if locked is None:
            return None
        position: int = locked[0][0]
        return position, self.source.read(raw, params["partition"], position, params["limit"])

    def _failed(
        self,
        group: Group,
        partition: int,
        lease: Lease,
        batch: list[RecordedEvent],
        exc: Exception,
    ) -> None:
        """After a failed batch: narrow it to single events, retry later, or stop the partition.

        A batch of several events is retried one event at a time, to find the one its
        handler rejects; a single event is retried after the next of ``retry_delays``; after
        ``max_attempts`` the partition stops, its error recorded on its checkpoint.
        """
        if len(batch) > 1:
            # Somewhere in this batch is an event its handler rejects: go one at a time.
            group.narrow_until[partition] = batch[-1].position
            self._log.warning(
                "batch failed; retrying event by event",
                projection=group.name,
                partition=partition,
                error=repr(exc),
            )
            return
        attempts = group.attempts.get(partition, 0) + 1
        group.attempts[partition] = attempts
        event = batch[0] if batch else None
        if attempts < self.max_attempts:
            delay = self.retry_delays[min(attempts, len(self.retry_delays)) - 1]
            group.retry_at[partition] = time.monotonic() + delay
            self._log.warning(
                "handler failed; will retry",
                projection=group.name,
                partition=partition,
                attempt=attempts,
                delay=delay,
                position=event.position if event else None,
                error=repr(exc),
            )
            return
        error = "".join(traceback.format_exception(exc))[-8000:]
        with self.store._raw() as conn:
            fetch(
                conn,
                self.queries.record_error,
                {
                    **self.membership.key(group),
                    "partition": partition,
                    "token": lease.token,
                    "error": error,
                    "error_position": event.position if event else lease.position + 1,
                    "attempts": attempts,
                },
            )
        lease.failed = True
        group.attempts.pop(partition, None)
        partition_stopped(group.name, partition)
        self._log.error(
            "partition stopped on a poison event",
            projection=group.name,
            partition=partition,
            attempts=attempts,
            position=event.position if event else None,
            event_type=event.event_type if event else None,
            error=repr(exc),
        )
