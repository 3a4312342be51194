"""The operations page's SQL statements, kept in ``queries.sql`` and rendered once per schema."""

from __future__ import annotations

from eventsource.db import Statements

__all__ = ["OpsQueries", "ops_queries"]


class OpsQueries(Statements):
    """The figures the operations page and ``/metrics`` read, for one schema."""

    package = "eventsource.ops"
    filename = "queries.sql"

    heads: str
    append_rate: str
    lag_seconds: str
    live_workers: str
    busy_command_workers: str
    command_figures: str
    read_stream_page: str


ops_queries = OpsQueries.for_schema  # the operations page's statements for a schema
