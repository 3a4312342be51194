"""The event store's SQL statements (kept in ``queries.sql``), built once per schema."""

from __future__ import annotations

from eventsource.db import Statements

__all__ = ["Queries", "store_queries"]


class Queries(Statements):
    """The statements of ``queries.sql`` for one schema, and its announcement channel.

    ``append_one`` and ``append_one_event`` map the kind of claim on the stream ("new", "at",
    "any") to the statement that appends to one stream with it.
    """

    package = "eventsource.store"
    filename = "queries.sql"
    channel_suffix = ""  # written partitions are announced on the schema's channel

    announce: str
    partition_count: str
    append: str
    append_one_new: str
    append_one_at: str
    append_one_any: str
    append_one_event_new: str
    append_one_event_at: str
    append_one_event_any: str
    read_stream: str
    read_partition: str
    stream_version: str
    heads: str
    load_snapshot: str
    save_snapshot: str

    def __init__(self, schema: str) -> None:
        super().__init__(schema)
        self.append_one = {
            "new": self.append_one_new,
            "at": self.append_one_at,
            "any": self.append_one_any,
        }
        self.append_one_event = {
            "new": self.append_one_event_new,
            "at": self.append_one_event_at,
            "any": self.append_one_event_any,
        }


store_queries = Queries.for_schema  # the event store's statements for a schema
