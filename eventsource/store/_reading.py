"""Pages of stored events as records, fetched with as little client work per row as possible.

The store's readers select ``event_pages`` rows (``queries.sql``): each payload comes with its
event id already spliced in, the JSON document that ``decode_records`` validates straight into
its model, and the row has no id column to load. Rows come in PostgreSQL's binary format; the
recording time is kept as the integer it is sent as (microseconds since 2000) and made a
``datetime`` only when a record's ``recorded_at`` is read (building one per row costs a third
of loading the row). Records are built while the garbage collector is paused.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import postgres
from psycopg.types.numeric import Int8BinaryLoader

from eventsource.store._types import RecordedEvent, decode_records, paused_gc

__all__ = ["decoded", "fetch_page", "fetch_page_async", "whole_stream"]

# A row of ``event_pages``, its recording time in microseconds (``RecordedEvent``'s arguments).
EventRow = tuple[str, str, int, int, int, str, int, str, str, int]

_TIMESTAMPTZ = postgres.types["timestamptz"].oid


def _cursor(conn: Any) -> Any:
    """A binary cursor of ``conn`` that loads timestamptz values as microseconds."""
    cursor = conn.cursor(binary=True)
    # A binary timestamptz is an int8 of microseconds: the int8 loader (psycopg's C one, when
    # it has it) reads it as it is.
    cursor.adapters.register_loader(_TIMESTAMPTZ, Int8BinaryLoader)
    return cursor


def _records(rows: list[EventRow], conn: Any) -> list[RecordedEvent]:
    """The records of event rows whose recording time is in microseconds."""
    timezone = conn.info.timezone
    with paused_gc():
        return [RecordedEvent(*row, timezone) for row in rows]


def fetch_page(
    conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]
) -> list[RecordedEvent]:
    """The records of a query selecting ``event_pages`` rows."""
    with _cursor(conn) as cursor:
        cursor.execute(sql, params)
        return _records(cursor.fetchall(), conn)


async def fetch_page_async(
    conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any]
) -> list[RecordedEvent]:
    """``fetch_page`` on an asyncio connection."""
    async with _cursor(conn) as cursor:
        await cursor.execute(sql, params)
        return _records(await cursor.fetchall(), conn)


def decoded(page: list[RecordedEvent], decode: bool) -> list[RecordedEvent]:
    """``page`` with the events of loaded types decoded (if ``decode``)."""
    if decode:
        decode_records(page)
    return page


def whole_stream(page: list[RecordedEvent]) -> list[RecordedEvent]:
    """A stream's records, every event decoded: a stream's reader needs every class, so an
    event whose class is not loaded is an ``UnknownEventType`` here."""
    decode_records(page)
    for record in page:
        _ = record.event
    return page
