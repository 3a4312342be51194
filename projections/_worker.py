"""Projection workers: a consumer group per projection, sharing its partitions through leases.

Every worker process heartbeats its membership; the live members (sorted by id) split the
partitions round-robin, so each worker knows which partitions are its share. A worker claims
its share when a partition's lease is free or expired, renews its leases with each heartbeat,
and releases what is no longer its share (a worker joined) after the batch in hand. A worker
that dies stops renewing; its leases expire after ``lease_ttl`` and the survivors take them.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy import Connection

from eventsource import EventStore, RecordedEvent
from eventsource._internal import (
    ANNOUNCE_AFTER_COMMIT,
    Backoff,
    Listener,
    check_name,
    check_seconds,
    command_channel,
    default_worker_id,
    driver_connection,
    fetch,
    first_line,
    get_logger,
    is_outage,
    paused_gc,
    records,
)
from projections._projection import Projection, check_unique, close_thread_loop
from projections._queries import projection_queries
from projections._reactor import Reactor

__all__ = ["ProjectionWorker", "run"]

log = get_logger("projections.worker")


@dataclass
class _Lease:
    token: int
    position: int
    failed: bool


@dataclass
class _Group:
    """One projection as seen by this worker: its leases and its failing partitions."""

    projection: Projection
    leases: dict[int, _Lease] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    retry_at: dict[int, float] = field(default_factory=dict)
    narrow_until: dict[int, int] = field(default_factory=dict)  # single events up to here
    paused: bool = False
    desired: frozenset[int] = frozenset()

    @property
    def name(self) -> str:
        return self.projection.name


class _LeaseLost(Exception):
    """The checkpoint's lease token is no longer this worker's."""


class ProjectionWorker:
    """Runs projections over the partitions this worker holds leases on, until stopped."""

    def __init__(
        self,
        store: EventStore,
        projections: Sequence[Projection],
        *,
        worker_id: str | None = None,
        lease_ttl: float = 5.0,
        heartbeat_interval: float = 1.0,
        poll_interval: float = 1.0,
        max_attempts: int = 3,
        retry_delays: Sequence[float] = (0.2, 1.0, 5.0),
        exclusive: bool = False,
    ) -> None:
        check_unique(projections)
        if not projections:
            raise ValueError("a worker needs at least one projection")
        lease_ttl = check_seconds(lease_ttl, "lease_ttl", low=0.5, high=3600)
        heartbeat_interval = check_seconds(heartbeat_interval, "heartbeat_interval", low=0.01)
        poll_interval = check_seconds(poll_interval, "poll_interval", low=0.01)
        if lease_ttl <= heartbeat_interval:
            raise ValueError(
                f"lease_ttl ({lease_ttl:g} s) must be longer than heartbeat_interval"
                f" ({heartbeat_interval:g} s)"
            )
        self.store = store
        self.worker_id = check_name(worker_id, "worker_id") if worker_id else default_worker_id()
        self.lease_ttl = lease_ttl
        self.heartbeat_interval = heartbeat_interval
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.retry_delays = tuple(retry_delays)
        self.exclusive = exclusive  # replay: every partition, and keep the projection paused
        self.queries = projection_queries(store)
        # Statement and idle-in-transaction timeouts of a batch: a frozen or partitioned
        # worker's session is ended by the server within one TTL, so its checkpoint row
        # (locked by the batch) is free for the worker that takes the lease over.
        self._timeout_ms = str(max(1000, int(lease_ttl * 1000)))
        self._groups = [_Group(p) for p in projections]
        for projection in projections:
            if isinstance(projection, Reactor):
                projection.attach(store)
        self._stop = threading.Event()
        self._log = log.bind(worker=self.worker_id)

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop after the batch in hand (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, stop_when_caught_up: bool = False) -> None:
        """Process events until ``stop()`` (or until every held partition is at its head).

        The database must be reachable at start (``DatabaseUnavailable`` otherwise); later
        outages are waited out: the worker backs off, reconnects, listens again and catches
        up. Any other error stops the worker and is raised here.
        """
        self.setup()
        listener = Listener(self.store.url, [self.store._queries.listen], self._log)
        listener.open()
        backoff = Backoff()
        self._log.info("worker started", projections=[g.name for g in self._groups])
        try:
            next_beat = 0.0
            while not self._stop.is_set():
                try:
                    if time.monotonic() >= next_beat:
                        self.heartbeat()
                        next_beat = time.monotonic() + self.heartbeat_interval
                    heads = self.store.heads()
                    if stop_when_caught_up and self.caught_up(heads):
                        break
                    worked = self.work(heads)
                except Exception as exc:
                    if not is_outage(exc):
                        raise
                    delay = backoff.next()
                    if backoff.failures == 1:
                        self._log.warning("database unavailable; waiting", error=first_line(exc))
                    self._stop.wait(delay)
                    next_beat = 0.0  # renew the leases first thing once it is back
                    continue
                if backoff.reset():
                    self._log.info("database available again")
                if not worked and not self._stop.is_set():
                    listener.wait(self._idle_timeout(next_beat), self._stop)
        finally:
            self.shutdown()
            close_thread_loop()
            listener.close()
            self._log.info("worker stopped")

    def setup(self) -> None:
        """Register the projections, create their checkpoints and call their ``setup``."""
        with self.store._raw() as conn:
            for group in self._groups:
                fetch(conn, self.queries.register, {"projection": group.name})
                init = self.queries.init_checkpoints
                if isinstance(group.projection, Reactor) and group.projection.start_at_head:
                    init = self.queries.init_checkpoints_at_head
                fetch(conn, init, {"projection": group.name})
        for group in self._groups:
            with self.store._errors(), self.store.engine.begin() as tx:
                # Workers starting together must not race on CREATE ... IF NOT EXISTS.
                tx.exec_driver_sql(
                    self.queries.setup_lock,
                    {"key": f"eventsource.projection.setup:{self.store.schema}:{group.name}"},
                )
                group.projection.setup(tx)

    def shutdown(self) -> None:
        """Release every lease and leave the groups."""
        try:
            with self.store._raw() as conn:
                for group in self._groups:
                    self._release(conn, group, list(group.leases))
                    fetch(conn, self.queries.leave, self._key(group))
        except Exception as exc:
            if not is_outage(exc):
                raise
            # They expire by themselves within one lease TTL.
            self._log.warning("could not release leases", error=first_line(exc))

    # -- membership and leases -----------------------------------------------------------

    def heartbeat(self) -> None:
        """Renew membership and leases, then claim or release partitions to match the share."""
        partitions = self.store.partitions
        with self.store._raw() as conn:
            for group in self._groups:
                key = self._key(group)
                fetch(conn, self.queries.heartbeat, key)
                fetch(conn, self.queries.forget_dead, {**key, "ttl": self.lease_ttl})
                if self.exclusive:
                    fetch(conn, self.queries.pause, {**key, "ttl": self.lease_ttl})
                    desired = frozenset(range(partitions))
                else:
                    paused = fetch(conn, self.queries.paused, key)
                    group.paused = bool(paused) and paused[0][0] != self.worker_id
                    if group.paused:
                        # A replay holds the projection: step aside until it is done.
                        self._release(conn, group, list(group.leases))
                        group.desired = frozenset()
                        continue
                    live = [
                        w
                        for (w,) in fetch(
                            conn, self.queries.live_workers, {**key, "ttl": self.lease_ttl}
                        )
                    ]
                    if self.worker_id not in live:
                        live = sorted([*live, self.worker_id])
                    mine = live.index(self.worker_id)
                    desired = frozenset(p for p in range(partitions) if p % len(live) == mine)
                group.desired = desired
                self._renew(conn, group)
                extra = [p for p in group.leases if p not in desired]
                if extra:
                    self._release(conn, group, extra)
                wanted = sorted(desired - group.leases.keys())
                if wanted:
                    rows = fetch(
                        conn,
                        self.queries.claim,
                        {**key, "ttl": self.lease_ttl, "partitions": wanted},
                    )
                    for partition, token, position, failed in rows:
                        group.leases[partition] = _Lease(token, position, failed)
                        self._log.info(
                            "partition claimed",
                            projection=group.name,
                            partition=partition,
                            position=position,
                        )

    def _renew(self, conn: psycopg.Connection[Any], group: _Group) -> None:
        if not group.leases:
            return
        held = sorted(group.leases)
        rows = fetch(
            conn,
            self.queries.renew,
            {
                **self._key(group),
                "ttl": self.lease_ttl,
                "partitions": held,
                "tokens": [group.leases[p].token for p in held],
            },
        )
        renewed = {}
        for partition, position, failed in rows:
            lease = group.leases[partition]
            if lease.failed and not failed:  # an operator retried or skipped it
                group.attempts.pop(partition, None)
            lease.position, lease.failed = position, failed
            renewed[partition] = lease
        for partition in set(group.leases) - renewed.keys():
            self._log.warning("lease lost", projection=group.name, partition=partition)
        group.leases = renewed

    def _release(self, conn: psycopg.Connection[Any], group: _Group, partitions: list[int]) -> None:
        if not partitions:
            return
        fetch(conn, self.queries.release, {**self._key(group), "partitions": partitions})
        for partition in partitions:
            group.leases.pop(partition, None)
        self._log.info("partitions released", projection=group.name, partitions=partitions)

    def _key(self, group: _Group) -> dict[str, Any]:
        return {"projection": group.name, "worker": self.worker_id}

    # -- processing ----------------------------------------------------------------------

    def caught_up(self, heads: dict[int, int]) -> bool:
        """Every partition of this worker's share is held and at its head (or stopped)."""
        for group in self._groups:
            if group.paused:
                continue
            if set(group.desired) - group.leases.keys():
                return False
            for partition, lease in group.leases.items():
                if not lease.failed and lease.position < heads.get(partition, 0):
                    return False
        return True

    def work(self, heads: dict[int, int]) -> bool:
        """One batch for every held partition behind its head; whether anything was applied."""
        worked = False
        now = time.monotonic()
        for group in self._groups:
            for partition, lease in list(group.leases.items()):
                if self._stop.is_set():
                    return worked
                if lease.failed or lease.position >= heads.get(partition, 0):
                    continue
                if group.retry_at.get(partition, 0.0) > now:
                    continue
                worked |= self.batch(group, partition, lease) > 0
        return worked

    def batch(self, group: _Group, partition: int, lease: _Lease) -> int:
        """Apply one batch of ``partition``; the number of events it covered."""
        narrow = group.narrow_until.get(partition)
        size = 1 if narrow is not None and lease.position < narrow else group.projection.batch_size
        key = {**self._key(group), "partition": partition, "token": lease.token}
        batch: list[RecordedEvent] = []
        try:
            # Not translated: a handler's own SQL errors are its own (and may be poison).
            with self.store.engine.connect() as conn:
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
            if is_outage(exc):
                raise  # the database, not the handler: the run loop waits it out
            self._failed(group, partition, lease, batch, exc)
            return 0
        if queues:
            self.store._announcer.announce(queues, channel=command_channel(self.store.schema))
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
        conn: Connection,
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
        try:
            locked = fetch(raw, self.queries.lock_checkpoint, {**key, "ms": self._timeout_ms})
        except psycopg.errors.LockNotAvailable:
            locked = []  # another session holds the checkpoint: not ours
        if not locked:
            raise _LeaseLost
        position: int = locked[0][0]
        batch.extend(
            records(
                fetch(
                    raw,
                    self.queries.store.read_partition,
                    {"partition": key["partition"], "after": position, "limit": size},
                ),
                decode=False,
            )
        )
        if not batch:
            return position
        with paused_gc():
            if projection.pipelined:
                # Statements go out back to back; errors surface when the pipeline syncs.
                with raw.pipeline():
                    projection.handle_batch(batch, conn)
            else:
                projection.handle_batch(batch, conn)
        last = batch[-1].position
        with raw.cursor() as cursor:
            cursor.execute(self.queries.advance, {**key, "position": last, "ttl": self.lease_ttl})
            if cursor.rowcount != 1:
                raise _LeaseLost
        return last

    def _failed(
        self,
        group: _Group,
        partition: int,
        lease: _Lease,
        batch: list[RecordedEvent],
        exc: Exception,
    ) -> None:
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
                    **self._key(group),
                    "partition": partition,
                    "token": lease.token,
                    "error": error,
                    "error_position": event.position if event else lease.position + 1,
                    "attempts": attempts,
                },
            )
        lease.failed = True
        group.attempts.pop(partition, None)
        self._log.error(
            "partition stopped on a poison event",
            projection=group.name,
            partition=partition,
            attempts=attempts,
            position=event.position if event else None,
            event_type=event.event_type if event else None,
            error=repr(exc),
        )

    # -- waiting -------------------------------------------------------------------------

    def _idle_timeout(self, next_beat: float) -> float:
        now = time.monotonic()
        wake = min(now + self.poll_interval, next_beat)
        for group in self._groups:
            for when in group.retry_at.values():
                if when > now:
                    wake = min(wake, when)
        return max(0.0, wake - now)


def run(
    store: EventStore,
    projections: Sequence[Projection],
    *,
    stop_when_caught_up: bool = False,
    worker_id: str | None = None,
    **options: Any,
) -> ProjectionWorker:
    """Run ``projections`` in this thread as one worker of their groups.

    With ``stop_when_caught_up`` it returns once every partition of its share is at the head
    (or stopped by a poison event), which suits tests and scripts.
    """
    worker = ProjectionWorker(store, projections, worker_id=worker_id, **options)
    worker.run(stop_when_caught_up=stop_when_caught_up)
    return worker
