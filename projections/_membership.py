"""A worker's membership of its projections' groups, and the leases of its partitions.

Every worker process heartbeats its membership; the live members (sorted by id) split the
partitions round-robin, so each worker knows which partitions are its share. A worker claims
its share when a partition's lease is free or expired, renews its leases with each heartbeat,
and releases what is no longer its share (a worker joined) after the batch in hand. A worker
that dies stops renewing; its leases expire after ``lease_ttl`` and the survivors take them.

A replay runs as an exclusive worker: it holds the projection paused and its share is every
partition; the other workers release theirs at their next heartbeat until it is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import psycopg
import structlog

from eventsource import EventStore
from eventsource._internal import (
    GroupMembership,
    MembershipQueries,
    fetch,
    first_line,
    is_outage,
)
from projections._projection import Projection
from projections._queries import ProjectionQueries

__all__ = ["Group", "Lease", "Membership", "ProjectionMembers"]


class ProjectionMembers(MembershipQueries):
    """The membership of the projections' groups (a group per projection) in one schema."""

    identifiers = {
        "table": "projection_workers",
        "group": "projection",
        "checkpoints": "projection_checkpoints",
    }


@dataclass
class Lease:
    """A partition's lease as this worker holds it: its token and the checkpoint's state."""

    token: int
    position: int
    failed: bool


@dataclass
class Group:
    """One projection as seen by this worker: its leases and its failing partitions."""

    projection: Projection
    leases: dict[int, Lease] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    retry_at: dict[int, float] = field(default_factory=dict)
    narrow_until: dict[int, int] = field(default_factory=dict)  # single events up to here
    paused: bool = False
    desired: frozenset[int] = frozenset()

    @property
    def name(self) -> str:
        """The projection's name."""
        return self.projection.name

    def behind(self, heads: dict[int, int]) -> list[int]:
        """The held partitions short of their ``heads``, those stopped on an error excepted."""
        return [
            partition
            for partition, lease in self.leases.items()
            if not lease.failed and lease.position < heads.get(partition, 0)
        ]


@dataclass
class Membership:
    """One worker's side of its groups: heartbeats, its share, claims, renewals, releases.

    ``exclusive``: a replay's membership (every partition, the projection held paused).
    """

    store: EventStore
    queries: ProjectionQueries
    worker_id: str
    _: KW_ONLY
    lease_ttl: float
    exclusive: bool
    log: structlog.typing.FilteringBoundLogger
    members: GroupMembership = field(init=False)

    def __post_init__(self) -> None:
        queries = ProjectionMembers.for_schema(self.store.schema)
        self.members = GroupMembership(queries, self.worker_id, self.lease_ttl)

    def key(self, group: Group) -> dict[str, Any]:
        """The parameters naming ``group``'s projection and this worker."""
        return {"projection": group.name, "worker": self.worker_id}

    def heartbeat(self, groups: Sequence[Group]) -> None:
        """Renew membership and leases, then claim or release partitions to match the share."""
        partitions = self.store.partitions
        with self.store._raw() as conn:
            for group in groups:
                share = self.members.heartbeat(conn, group.name, partitions)
                group.desired = self._share(conn, group, share)
                if group.paused:
                    # A replay holds the projection: step aside until it is done.
                    self.release(conn, group, list(group.leases))
                    continue
                self._renew(conn, group)
                self.release(conn, group, [p for p in group.leases if p not in group.desired])
                self._claim(conn, group, sorted(group.desired - group.leases.keys()))

    def leave(self, groups: Sequence[Group]) -> None:
        """Release every lease and leave the groups (during an outage they expire instead)."""
        try:
            with self.store._raw() as conn:
                for group in groups:
                    self.release(conn, group, list(group.leases))
                    self.members.leave(conn, group.name)
        except Exception as exc:
            if not is_outage(exc):
                raise
            # They expire by themselves within one lease TTL.
            self.log.warning("could not release leases", error=first_line(exc))

    def release(self, conn: psycopg.Connection[Any], group: Group, partitions: list[int]) -> None:
        """Give up the leases of ``partitions`` (for other workers to claim)."""
        if not partitions:
            return
        self.members.release(conn, group.name, partitions)
        for partition in partitions:
            group.leases.pop(partition, None)
        self.log.info("partitions released", projection=group.name, partitions=partitions)

    def _share(
        self, conn: psycopg.Connection[Any], group: Group, share: frozenset[int]
    ) -> frozenset[int]:
        """The partitions of ``group`` that are this worker's to hold.

        Every partition for an exclusive worker (which renews its pause of the projection),
        none while a replay holds the projection paused (``group.paused``), else ``share``,
        the round-robin share of this worker's place among the live members.
        """
        key = self.key(group)
        if self.exclusive:
            fetch(conn, self.queries.pause, {**key, "ttl": self.lease_ttl})
            return frozenset(range(self.store.partitions))
        paused = fetch(conn, self.queries.paused, key)
        group.paused = bool(paused) and paused[0][0] != self.worker_id
        return frozenset() if group.paused else share

    def _renew(self, conn: psycopg.Connection[Any], group: Group) -> None:
        """Extend the leases held; forget those taken over, take in operators' retries and skips."""
        if not group.leases:
            return
        tokens = {partition: lease.token for partition, lease in group.leases.items()}
        renewed = {}
        for partition, position, failed in self.members.renew(conn, group.name, tokens):
            lease = group.leases[partition]
            if lease.failed and not failed:  # an operator retried or skipped it
                group.attempts.pop(partition, None)
            lease.position, lease.failed = position, failed
            renewed[partition] = lease
        for partition in set(group.leases) - renewed.keys():
            self.log.warning("lease lost", projection=group.name, partition=partition)
        group.leases = renewed

    def _claim(self, conn: psycopg.Connection[Any], group: Group, partitions: list[int]) -> None:
        """Take the leases of ``partitions`` that are free, expired or already this worker's;
        the sessions of frozen workers that hold others past their leases are ended, and those
        partitions claimed at the next heartbeat."""
        if not partitions:
            return
        for partition, token, position, failed in self.members.claim(conn, group.name, partitions):
            group.leases[partition] = Lease(token, position, failed)
            self.log.info(
                "partition claimed", projection=group.name, partition=partition, position=position
            )
        locked = [p for p in partitions if p not in group.leases]
        if not locked:
            return
        try:
            ended = self.members.fence(conn, group.name, locked)
        except psycopg.errors.InsufficientPrivilege as exc:
            # They are taken when the frozen worker wakes (or its connection drops).
            self.log.warning("could not end a frozen session", error=first_line(exc))
            return
        if ended:
            self.log.warning(
                "ended sessions that held partitions past their leases",
                projection=group.name,
                partitions=locked,
                pids=ended,
            )
