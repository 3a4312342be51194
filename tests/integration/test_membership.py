"""A worker's membership of a group (the runtime's, for relays and projections alike): one
statement per heartbeat joins or renews, removes the dead and reads the live members."""

from __future__ import annotations

import pytest

from eventsource import EventStore
from eventsource.relay._leases import RelayMembers
from eventsource.runtime import GroupMembership, MembershipQueries
from projections._membership import ProjectionMembers
from tests.integration._support import sql

TTL = 10.0
KINDS = [RelayMembers, ProjectionMembers]


def member(store: EventStore, kind: type[MembershipQueries], worker: str, silent: float) -> None:
    """A member of group 'g' of ``kind`` whose last heartbeat was ``silent`` seconds ago."""
    table, column = kind.identifiers["table"], kind.identifiers["group"]
    sql(
        store,
        f"INSERT INTO {{s}}.{table} ({column}, worker_id, heartbeat_at)"
        " VALUES ('g', :worker, clock_timestamp() - make_interval(secs => :silent))",
        {"worker": worker, "silent": silent},
    )


def members(store: EventStore, kind: type[MembershipQueries]) -> list[str]:
    """The workers in group 'g' of ``kind``'s table, live or not, by id."""
    table, column = kind.identifiers["table"], kind.identifiers["group"]
    rows = sql(store, f"SELECT worker_id FROM {{s}}.{table} WHERE {column} = 'g' ORDER BY 1")
    return [worker for (worker,) in rows]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_a_heartbeat_counts_the_worker_in_and_removes_only_the_dead(
    store: EventStore, kind: type[MembershipQueries]
) -> None:
    """The worker's own fresh heartbeat is among the live members (ordered by id); a member
    silent for two TTLs is not live but kept, one silent for ten TTLs is removed."""
    member(store, kind, "c", 0)
    member(store, kind, "d", 2 * TTL)
    member(store, kind, "e", 11 * TTL)
    queries = kind.for_schema(store.schema)
    with store._raw() as conn:
        live = conn.execute(queries.heartbeat, {"group": "g", "worker": "a", "ttl": TTL})
        assert live.fetchall() == [("a",), ("c",)]
        # a's share among the live members a and c: the even partitions.
        share = GroupMembership(queries, "a", TTL).heartbeat(conn, "g", store.partitions)
    assert share == {0, 2}
    assert members(store, kind) == ["a", "c", "d"]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_a_worker_back_after_ten_ttls_is_renewed_not_removed(
    store: EventStore, kind: type[MembershipQueries]
) -> None:
    """A worker whose own row is older than ten TTLs (it stalled) renews it and is live."""
    member(store, kind, "b", 20 * TTL)
    membership = GroupMembership(kind.for_schema(store.schema), "b", TTL)
    with store._raw() as conn:
        assert membership.heartbeat(conn, "g", store.partitions) == {0, 1, 2, 3}
        assert members(store, kind) == ["b"]
        membership.leave(conn, "g")
    assert members(store, kind) == []


def test_groups_and_kinds_are_kept_apart(store: EventStore) -> None:
    """A heartbeat reads and removes the members of its own group in its own table only."""
    member(store, ProjectionMembers, "p", 0)
    member(store, ProjectionMembers, "dead", 11 * TTL)
    sql(store, "INSERT INTO {s}.relay_workers (relay, worker_id) VALUES ('h', 'other')")
    with store._raw() as conn:
        relay = GroupMembership(RelayMembers.for_schema(store.schema), "r", TTL)
        assert relay.heartbeat(conn, "g", store.partitions) == {0, 1, 2, 3}
    assert members(store, RelayMembers) == ["r"]
    assert members(store, ProjectionMembers) == ["dead", "p"]
