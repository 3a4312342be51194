"""A worker's membership of the groups of workers that split the partitions among them.

Relay workers (a group per relay) and projection workers (a group per projection) keep their
groups alike: every member heartbeats; the live members (a heartbeat within the TTL), sorted
by id, split the partitions round-robin, so that each knows its share without asking the
others; a member silent for ten TTLs is removed. Each kind keeps its members in a table of its
own, named with the column that names the group by a ``MembershipQueries`` subclass::

    class RelayMembers(MembershipQueries):
        identifiers = {"table": "relay_workers", "group": "relay"}

One heartbeat is one statement (``membership.sql``): join or renew, remove the dead, read
the live members.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from eventsource.db import Statements, fetch
from eventsource.runtime._backoff import round_robin_share

__all__ = ["GroupMembership", "MembershipQueries"]


class MembershipQueries(Statements):
    """The membership statements for one kind of group; a subclass names its table and the
    table's column that names the group in ``identifiers`` (``table``, ``group``)."""

    package = "eventsource.runtime"
    filename = "membership.sql"

    heartbeat: str
    leave: str


@dataclass(frozen=True)
class GroupMembership:
    """``worker_id``'s membership of groups of one kind, alive for ``ttl`` seconds after each
    heartbeat."""

    queries: MembershipQueries
    worker_id: str
    ttl: float

    def heartbeat(
        self, conn: psycopg.Connection[Any], group: str, partitions: int
    ) -> frozenset[int]:
        """Join ``group`` or renew this worker's membership, removing the members silent for
        ten TTLs; the partitions (of ``partitions``) that are this worker's share among the live
        members."""
        rows = fetch(
            conn,
            self.queries.heartbeat,
            {"group": group, "worker": self.worker_id, "ttl": self.ttl},
        )
        return round_robin_share([worker for (worker,) in rows], self.worker_id, partitions)

    def leave(self, conn: psycopg.Connection[Any], group: str) -> None:
        """Leave ``group`` (its share goes to the others at their next heartbeat)."""
        fetch(conn, self.queries.leave, {"group": group, "worker": self.worker_id})
