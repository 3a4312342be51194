"""Projection workers: a consumer group per projection, sharing its partitions through leases.

A ``ProjectionWorker`` runs the loop: heartbeat its membership and leases on schedule
(``_membership``), apply a batch to every held partition behind its head (``_batches``), and
wait for an append's announcement or the next poll when there is nothing to do. Database
outages are waited out; any other error stops the worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from eventsource import EventStore
from eventsource._internal import (
    Backoff,
    check_name,
    check_seconds,
    default_worker_id,
    fetch,
    first_line,
    get_logger,
    is_outage,
)
from projections._batches import Batches
from projections._membership import Group, Lease, Membership
from projections._projection import Projection, check_unique, close_thread_loop
from projections._queries import projection_queries
from projections._reactor import Reactor
from projections._sources import Source, StoreSource, announced

__all__ = ["ProjectionWorker", "run"]

log = get_logger("projections.worker")


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
        source: Source | None = None,
    ) -> None:
        """A worker of ``projections``' groups on ``store``.

        ``worker_id`` names it among its groups' members (default host:pid); ``lease_ttl``:
        how long its leases and membership outlive its last heartbeat, every
        ``heartbeat_interval``; ``poll_interval``: the longest idle wait without an append's
        announcement; a failing event is tried ``max_attempts`` times, after
        ``retry_delays``; ``exclusive`` (replay): it takes every partition and keeps the
        projection paused; ``source``: where the log is read (default: ``store`` itself; a
        ``JetStreamSource`` reads what the relay published, with the checkpoints still here).
        """
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
        self.source = source if source is not None else StoreSource(store, self.queries)
        self.source.bind(store)
        self._groups = [Group(p) for p in projections]
        for projection in projections:
            if isinstance(projection, Reactor):
                projection.attach(store)
        self._stop = threading.Event()
        self._next_poll = 0.0  # when the heads of every partition are read again at the latest
        self._log = log.bind(worker=self.worker_id)
        self._membership = Membership(
            store,
            self.queries,
            self.worker_id,
            lease_ttl=lease_ttl,
            exclusive=exclusive,
            log=self._log,
        )
        self._batches = Batches(
            self._membership,
            max_attempts=max_attempts,
            retry_delays=self.retry_delays,
            stop=self._stop,
            log=self._log,
            source=self.source,
        )

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop after the batch in hand (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stop.is_set()

    def run(self, *, stop_when_caught_up: bool = False) -> None:
        """Process events until ``stop()`` (or until every held partition is at its head).

        The database must be reachable at start (``DatabaseUnavailable`` otherwise); later
        outages are waited out: the worker backs off, reconnects, listens again and catches
        up. Any other error stops the worker and is raised here.
        """
        self.setup()
        listener = self.source.waiter(self._log)
        listener.open()
        backoff = Backoff()
        down = "database"  # what the last outage was of
        self._log.info("worker started", projections=[g.name for g in self._groups])
        try:
            next_beat = 0.0
            self._next_poll = 0.0
            # Partitions an announcement named, worked at once; None: read every head.
            partitions: set[int] | None = None
            while not self._stop.is_set():
                try:
                    if time.monotonic() >= next_beat:
                        self.heartbeat()
                        next_beat = time.monotonic() + self.heartbeat_interval
                        partitions = None  # leases may have changed hands
                    worked = self._pass(partitions, stop_when_caught_up)
                    if worked is None:
                        break
                except Exception as exc:
                    database_down = is_outage(exc)
                    if not (database_down or self.source.is_outage(exc)):
                        raise
                    delay = backoff.next()
                    down = "database" if database_down else "source"
                    if backoff.failures == 1:
                        self._log.warning(f"{down} unavailable; waiting", error=first_line(exc))
                    self._stop.wait(delay)
                    next_beat = 0.0  # renew the leases first thing once it is back
                    partitions = None
                    continue
                if backoff.reset():
                    self._log.info(f"{down} available again")
                partitions = None
                if (
                    not worked
                    and not self._stop.is_set()
                    and listener.wait(self._idle_timeout(next_beat), self._stop)
                ):
                    partitions = announced(listener)
        finally:
            try:
                self.shutdown()  # may fail (the database is gone): the rest still runs
            finally:
                close_thread_loop()
                listener.close()
                self.source.close()
                self._log.info("worker stopped")

    def _pass(self, partitions: set[int] | None, stop_when_caught_up: bool) -> bool | None:
        """Work the announced ``partitions`` at once or, without them or when a poll is due,
        every held partition behind its head; whether to look again without waiting (None:
        caught up, with ``stop_when_caught_up``)."""
        if partitions is not None and time.monotonic() < self._next_poll:
            # The heads of the rest are read on the next poll at the latest.
            return self._batches.work_announced(self._groups, partitions)
        heads = self.source.heads()
        if stop_when_caught_up and self.caught_up(heads):
            return None
        worked = self.work(heads)
        self._next_poll = time.monotonic() + self.poll_interval
        return worked

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
        self._membership.leave(self._groups)

    # -- membership, leases and batches (see _membership and _batches) --------------------

    def heartbeat(self) -> None:
        """Renew membership and leases, then claim or release partitions to match the share."""
        self._membership.heartbeat(self._groups)

    def caught_up(self, heads: dict[int, int]) -> bool:
        """Every partition of this worker's share is held and at its head (or stopped)."""
        return self._batches.caught_up(self._groups, heads)

    def work(self, heads: dict[int, int]) -> bool:
        """One batch for every held partition behind its head; whether anything was applied."""
        return self._batches.work(self._groups, heads)

    def batch(self, group: Group, partition: int, lease: Lease) -> int:
        """Apply one batch of ``partition``; the number of events it covered."""
        return self._batches.batch(group, partition, lease)

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
