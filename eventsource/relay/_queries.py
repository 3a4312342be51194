"""Every SQL statement of the relay, from ``queries.sql``, rendered per schema."""

from __future__ import annotations

from eventsource.db import Statements

__all__ = ["RelayQueries"]


class RelayQueries(Statements):
    """Checkpoints of the relays in one schema (membership and leases: ``RelayMembers``)."""

    package = "eventsource.relay"
    filename = "queries.sql"

    init_checkpoints: str
    advance: str
    record_error: str
    read_partitions: str
    status: str
