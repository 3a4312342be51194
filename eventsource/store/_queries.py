"""The event store's SQL statements (kept in ``queries.sql``), built once per schema."""

from __future__ import annotations

from eventsource.db import Statements

__all__ = ["Queries", "store_queries"]


class Queries(Statements):
    """The statements of ``queries.sql`` for one schema, and its announcement channel.

    ``append_one_<claim>`` appends events to one stream, ``append_one_event_<claim>`` one event,
    with the claim on the stream: ``new`` (it must not exist), ``at`` (the expected version),
    ``any``; ``direct`` holds the ``append_one_event_<claim>`` and ``append_group`` statements
    and the page reads (``read_stream``, ``read_partition_page``) as ``Direct`` ones.
    """

    package = "eventsource.store"
    # The one-event appends of a standalone append, the hottest statements, and the group
    # commit's statement (all its parameters are texts, numbers or array literals).
    direct_names = (
        "append_one_event_new",
        "append_one_event_at",
        "append_one_event_any",
        "append_group",
        "read_stream",  # the page reads (store/_reading.py), in binary format by its loader
        "read_partition_page",
    )
    loaded_names = ("append_group",)  # up to a row per stream of a group
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
    append_group: str
    read_stream: str
    read_partition: str
    read_partition_page: str
    stream_version: str
    heads: str
    load_snapshot: str
    save_snapshot: str


store_queries = Queries.for_schema  # the event store's statements for a schema
