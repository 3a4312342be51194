"""A worker's membership of the groups of workers that split the partitions among them.

Relay workers (a group per relay) and projection workers (a group per projection) keep their
groups alike: every member heartbeats; the live members (a heartbeat within the TTL), sorted
by id, split the partitions round-robin, so that each knows its share without asking the
others; a member silent for ten TTLs is removed. Each kind keeps its members in a table of its
own, named with the column that names the group by a ``MembershipQueries`` subclass::

    class RelayMembers(MembershipQueries):
        identifiers = {
            "table": "relay_workers",
            "group": "relay",
            "checkpoints": "relay_checkpoints",
        }

One heartbeat is one statement (``membership.sql``): join or renew, remove the dead, read
the live members. The leases of the partitions are claimed, renewed and released here too; a
claim bumps a lease's token, and a worker's checkpoint writes hold only with its token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from eventsource.db import Statements, fetch
from eventsource.runtime._backoff import round_robin_share

__all__ = ["GroupMembership", "MembershipQueries"]


class MembershipQueries(Statements):
    """The membership and lease statements for one kind of group; a subclass names in
    ``identifiers`` its members' ``table``, the column that names the ``group`` in it, and its
    ``checkpoints`` table (which holds the leases)."""

    package = "eventsource.runtime"
    filename = "membership.sql"

    heartbeat: str
    leave: str
    claim: str
    renew: str
    release: str
    fence: str


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

    def claim(
        self, conn: psycopg.Connection[Any], group: str, partitions: list[int]
    ) -> list[tuple[int, int, int, bool]]:
        """Take the leases of ``partitions`` that are free, expired or already this worker's:
        each taken one as (partition, token, position, stopped by an error)."""
        params = {"group": group, "partitions": partitions}
        return fetch(conn, self.queries.claim, self._params(params))

    def renew(
        self, conn: psycopg.Connection[Any], group: str, tokens: dict[int, int]
    ) -> list[tuple[int, int, bool]]:
        """Extend the leases held (partition: token); each renewed one as (partition,
        position, stopped by an error). Those missing were taken over."""
        held = sorted(tokens)
        params = {"group": group, "partitions": held, "tokens": [tokens[p] for p in held]}
        return fetch(conn, self.queries.renew, self._params(params))

    def release(self, conn: psycopg.Connection[Any], group: str, partitions: list[int]) -> None:
        """Give up the leases of ``partitions`` (for other workers to claim)."""
        fetch(conn, self.queries.release, self._params({"group": group, "partitions": partitions}))

    def fence(self, conn: psycopg.Connection[Any], group: str, partitions: list[int]) -> list[int]:
        """End the sessions that keep ``partitions`` locked past their leases (``fence`` in
        ``membership.sql``); their pids. ``InsufficientPrivilege`` for a role that may not."""
        params = self._params({"group": group, "partitions": partitions})
        return [pid for (pid,) in fetch(conn, self.queries.fence, params)]

    def _params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**params, "worker": self.worker_id, "ttl": self.ttl}
