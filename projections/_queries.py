"""Every SQL statement of the projection runtime, from ``queries.sql``, rendered per schema.

Statements run on psycopg connections with ``%(name)s`` placeholders; names of projections
and workers are always parameters, never SQL text. Lease times come from the database clock
at the moment of the statement (``clock_timestamp()``), never from the start of a transaction
nor from the worker's clock.
"""

from __future__ import annotations

from eventsource import AsyncEventStore, EventStore
from eventsource._internal import Queries as StoreQueries
from eventsource._internal import Statements

__all__ = ["ProjectionQueries", "projection_queries"]


class ProjectionQueries(Statements):
    """Checkpoints, pauses and replay state of the projections in one schema (membership and
    leases: ``ProjectionMembers``).

    ``store`` holds the event store's statements for the same schema (a batch reads the
    partition with them).
    """

    package = "projections"
    filename = "queries.sql"

    store: StoreQueries
    register: str
    init_checkpoints: str
    init_checkpoints_at_head: str
    setup_lock: str
    paused: str
    pause: str
    unpause: str
    lock_checkpoint: str
    lock_read: str
    advance: str
    record_error: str
    retry: str
    skip: str
    reset_checkpoints: str
    lock_all: str
    position: str
    status: str

    def __init__(self, schema: str) -> None:
        super().__init__(schema)
        self.store = StoreQueries.for_schema(schema)


def projection_queries(store: EventStore | AsyncEventStore) -> ProjectionQueries:
    """The projection statements for ``store``'s schema, rendered once per schema."""
    return ProjectionQueries.for_schema(store.schema)
