"""A relay worker's membership of its relay's group, and the leases of its partitions.

The same scheme as the projection workers' (the worker runtime's ``GroupMembership``, in a
table of the relay's own): every worker heartbeats its membership; the live members (sorted by
id) split the partitions round-robin; a worker claims its share when a lease is free or
expired, renews its leases with each heartbeat and releases what is no longer its share. A
worker that dies stops renewing; its leases expire after ``lease_ttl`` and the survivors take
them. A claim bumps the lease's token; a checkpoint moves only with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from eventsource._errors import first_line, is_outage
from eventsource.db import fetch
from eventsource.relay._queries import RelayQueries
from eventsource.runtime import GroupMembership, MembershipQueries
from eventsource.store import EventStore

__all__ = ["Lease", "Leases", "RelayMembers"]


class RelayMembers(MembershipQueries):
    """The membership of the relays' groups (a group per relay) in one schema."""

    identifiers = {"table": "relay_workers", "group": "relay", "checkpoints": "relay_checkpoints"}


@dataclass
class Lease:
    """A partition's lease as this worker holds it: its token and the relayed position.

    ``fresh``: claimed, and not yet compared with what the engine already holds.
    """

    token: int
    position: int
    fresh: bool = True


@dataclass
class Leases:
    """One worker's side of a relay's group: heartbeats, its share, claims, renewals."""

    store: EventStore
    queries: RelayQueries
    relay: str
    worker_id: str
    lease_ttl: float
    log: Any
    held: dict[int, Lease] = field(default_factory=dict)
    desired: frozenset[int] = frozenset()
    members: GroupMembership = field(init=False)

    def __post_init__(self) -> None:
        queries = RelayMembers.for_schema(self.store.schema)
        self.members = GroupMembership(queries, self.worker_id, self.lease_ttl)

    def key(self) -> dict[str, Any]:
        """The parameters naming the relay and this worker."""
        return {"relay": self.relay, "worker": self.worker_id}

    def setup(self) -> None:
        """Create the relay's missing checkpoints."""
        with self.store._raw() as conn:
            fetch(conn, self.queries.init_checkpoints, {"relay": self.relay})

    def heartbeat(self) -> None:
        """Renew membership and leases, then claim or release partitions to match the share."""
        with self.store._raw() as conn:
            self.desired = self.members.heartbeat(conn, self.relay, self.store.partitions)
            self._renew(conn)
            self.release(conn, [p for p in self.held if p not in self.desired])
            self._claim(conn, sorted(self.desired - self.held.keys()))

    def leave(self) -> None:
        """Release every lease and leave the group (during an outage they expire instead)."""
        try:
            with self.store._raw() as conn:
                self.release(conn, list(self.held))
                self.members.leave(conn, self.relay)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.log.warning("could not release leases", error=first_line(exc))

    def release(self, conn: psycopg.Connection[Any], partitions: list[int]) -> None:
        """Give up the leases of ``partitions`` (for other workers to claim)."""
        if not partitions:
            return
        self.members.release(conn, self.relay, partitions)
        for partition in partitions:
            self.held.pop(partition, None)
        self.log.info("partitions released", partitions=partitions)

    def _renew(self, conn: psycopg.Connection[Any]) -> None:
        """Extend the leases held; forget those taken over."""
        if not self.held:
            return
        rows = self.members.renew(
            conn, self.relay, {p: lease.token for p, lease in self.held.items()}
        )
        renewed = {partition for partition, _, _ in rows}
        for partition in set(self.held) - renewed:
            self.log.warning("lease lost", partition=partition)
            del self.held[partition]

    def _claim(self, conn: psycopg.Connection[Any], partitions: list[int]) -> None:
        """Take the leases of ``partitions`` that are free, expired or already this worker's."""
        if not partitions:
            return
        for partition, token, position, _ in self.members.claim(conn, self.relay, partitions):
            self.held[partition] = Lease(token, position)
            self.log.info("partition claimed", partition=partition, position=position)

    def advance(self, positions: dict[int, int]) -> set[int]:
        """Move the checkpoints of ``positions`` (partition: position) with this worker's
        tokens; the partitions moved (the others' leases were lost, and are forgotten)."""
        if not positions:
            return set()
        partitions = sorted(positions)
        params = {
            **self.key(),
            "ttl": self.lease_ttl,
            "partitions": partitions,
            "tokens": [self.held[p].token for p in partitions],
            "positions": [positions[p] for p in partitions],
        }
        with self.store._raw() as conn:
            rows = fetch(conn, self.queries.advance, params)
        moved = {partition for (partition,) in rows}
        for partition in partitions:
            if partition in moved:
                self.held[partition].position = max(
                    self.held[partition].position, positions[partition]
                )
            else:
                self.log.warning("lease lost: checkpoint not moved", partition=partition)
                self.held.pop(partition, None)
        return moved

    def record_error(self, partition: int, error: str) -> None:
        """Note the error that holds ``partition`` up, for ``relay status``."""
        lease = self.held.get(partition)
        if lease is None:
            return
        with self.store._raw() as conn:
            fetch(
                conn,
                self.queries.record_error,
                {**self.key(), "partition": partition, "token": lease.token, "error": error},
            )
