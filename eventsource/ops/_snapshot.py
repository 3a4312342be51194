"""What the operations page, ``/metrics`` and the ``--check`` options read: one snapshot.

A ``Snapshot`` is read with a handful of cheap statements (none scans the event log): the
partitions' heads, the projections' checkpoints (``projections.status``), the queue's counts
with the oldest due command (one pass over the commands), the lag in seconds, the live workers
and an estimate of the append rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import projections
from eventsource.db import fetch
from eventsource.ops._queries import ops_queries
from eventsource.store import EventStore

__all__ = [
    "RATE_WINDOW",
    "WORKER_TTL",
    "CommandCount",
    "Partition",
    "ProjectionSummary",
    "Snapshot",
    "read_snapshot",
]

RATE_WINDOW = 1000  # events per partition the append rate is estimated over
WORKER_TTL = 15.0  # seconds since its heartbeat for a projection worker to count as live


@dataclass(frozen=True)
class Partition:
    """One partition of the log: its head, and when its last event was recorded."""

    partition: int
    head: int
    last_recorded_at: datetime | None


@dataclass(frozen=True)
class CommandCount:
    """How many commands of one queue are in one state (pending, running, dead)."""

    queue: str
    status: str
    count: int


@dataclass(frozen=True)
class ProjectionSummary:
    """One projection over its partitions: lag in events and in seconds (the oldest
    unapplied event's age), stopped partitions, live workers, the replay pausing it."""

    projection: str
    partitions: int
    lag: int
    lag_seconds: float
    stopped: int
    workers: int
    paused_by: str | None


@dataclass(frozen=True)
class Snapshot:
    """The state of a store as the operations page shows it, read at ``taken_at``.

    ``checkpoints``: every projection's partitions (``projections.PartitionStatus``);
    ``lag_seconds``: per (projection, partition) that lags, the age of its first unapplied
    event; ``oldest_due``: per queue, seconds its oldest due pending command has waited;
    ``projection_workers``: live workers per projection; ``command_workers``: workers running
    a command now; ``append_rate``: events per second, estimated over each partition's last
    ``RATE_WINDOW`` events.
    """

    partitions: list[Partition]
    checkpoints: list[projections.PartitionStatus]
    lag_seconds: dict[tuple[str, int], float]
    commands: list[CommandCount]
    oldest_due: dict[str, float]
    projection_workers: dict[str, int]
    command_workers: int
    append_rate: float
    read_seconds: float
    taken_at: float = field(default_factory=time.time)

    @property
    def events(self) -> int:
        """Events in the log (the sum of the partitions' heads)."""
        return sum(p.head for p in self.partitions)

    @property
    def total_lag(self) -> int:
        """Events not yet applied, over every projection and partition."""
        return sum(c.lag for c in self.checkpoints)

    def count(self, status: str, queue: str | None = None) -> int:
        """Commands in ``status`` (of one queue, or of all)."""
        return sum(
            c.count for c in self.commands if c.status == status and queue in (None, c.queue)
        )

    @property
    def queue_depth(self) -> int:
        """Commands pending or running."""
        return self.count("pending") + self.count("running")

    @property
    def dead_letters(self) -> int:
        """Dead commands (no attempts left)."""
        return self.count("dead")

    @property
    def stopped(self) -> list[projections.PartitionStatus]:
        """The projections' partitions stopped on an error."""
        return [c for c in self.checkpoints if c.error is not None]

    @property
    def live_workers(self) -> int:
        """Live projection workers plus command workers running a command."""
        return sum(self.projection_workers.values()) + self.command_workers

    def projection_names(self) -> list[str]:
        """The projections with checkpoints, by name."""
        return sorted({c.projection for c in self.checkpoints})

    def summary(self, projection: str) -> ProjectionSummary:
        """One projection's figures over its partitions."""
        rows = [c for c in self.checkpoints if c.projection == projection]
        ages = [s for (name, _), s in self.lag_seconds.items() if name == projection]
        return ProjectionSummary(
            projection=projection,
            partitions=len(rows),
            lag=sum(c.lag for c in rows),
            lag_seconds=max(ages, default=0.0),
            stopped=sum(c.error is not None for c in rows),
            workers=self.projection_workers.get(projection, 0),
            paused_by=next((c.paused_by for c in rows if c.paused_by), None),
        )

    def queues(self) -> list[str]:
        """The queues with commands, by name."""
        return sorted({c.queue for c in self.commands})


def read_snapshot(store: EventStore) -> Snapshot:
    """Read the store's ``Snapshot`` (a few indexed statements; none scans the event log)."""
    started = time.perf_counter()
    sql = ops_queries(store.schema)
    checkpoints = projections.status(store)
    with store._raw() as conn:
        figures = fetch(conn, sql.command_figures)
        heads = fetch(conn, sql.heads)
        rate = fetch(conn, sql.append_rate, {"window": RATE_WINDOW})
        lags = fetch(conn, sql.lag_seconds)
        workers = fetch(conn, sql.live_workers, {"ttl": WORKER_TTL})
        busy = fetch(conn, sql.busy_command_workers)
    return Snapshot(
        partitions=[Partition(int(p), int(h), at) for p, h, at in heads],
        checkpoints=checkpoints,
        lag_seconds={(name, int(p)): float(s) for name, p, s in lags},
        commands=[CommandCount(q, s, int(n)) for q, s, n, _ in figures],
        oldest_due={q: float(age) for q, s, _, age in figures if age is not None},
        projection_workers={name: int(n) for name, n in workers},
        command_workers=int(busy[0][0]) if busy else 0,
        append_rate=float(rate[0][0]) if rate else 0.0,
        read_seconds=time.perf_counter() - started,
    )
