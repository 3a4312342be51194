"""Pages of stored events as records, fetched with as little client work per row as possible.

The store's readers select ``event_pages`` rows (``queries.sql``): each payload comes with its
event id already spliced in, the JSON document that ``decoding`` validates straight into its
model, and the row has no id column to load. The sync store sends these statements with libpq's
blocking calls (``Direct.run_loaded``). Rows come in PostgreSQL's binary format; the
recording time is kept as the integer it is sent as (microseconds since 2000) and made a
``datetime`` only when a record's ``recorded_at`` is read (building one per row costs a third
of loading the row). A page returned whole is built with the collector paused; one handed out
record by record (``iter_partition``) is built as it goes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import tzinfo
from itertools import repeat
from typing import Any, Final, NamedTuple

import psycopg
from psycopg import postgres
from psycopg.abc import Transformer
from psycopg.adapt import Transformer as new_transformer
from psycopg.pq.abc import PGresult
from psycopg.types.numeric import Int8BinaryLoader

from eventsource.db import Direct, kept_cursor, kept_loader, loaded_rows
from eventsource.store._records import RecordedEvent, decode_records, decoding, paused_gc

__all__ = [
    "POSITION",
    "EventRow",
    "Unloaded",
    "decoded",
    "fetch_page",
    "fetch_page_async",
    "fetch_rows",
    "fetch_rows_async",
    "fetch_unloaded",
    "handed_out",
    "whole_stream",
]

# A row of ``event_pages``, its recording time in microseconds (``RecordedEvent``'s arguments).
EventRow = tuple[str, str, int, int, int, str, int, str, str, int]

_TIMESTAMPTZ = postgres.types["timestamptz"].oid
POSITION: Final = 4  # the position column of an ``event_pages`` row


# Each driver connection keeps one cursor for pages (as ``db.fetch`` keeps one for the rest):
# a new cursor with its own loader costs ~15 µs more per read, a fifth of reading a stream.
_PAGES = "_eventsource_page_cursor"
_LOADER = "_eventsource_page_loader"


def _times_as_integers(cursor: Any) -> None:
    # A binary timestamptz is an int8 of microseconds: the int8 loader (psycopg's C one, when
    # it has it) reads it as it is.
    cursor.adapters.register_loader(_TIMESTAMPTZ, Int8BinaryLoader)


def _cursor(conn: Any) -> Any:
    """The binary cursor of ``conn`` for pages, which loads timestamptz values as microseconds."""
    return kept_cursor(conn, _PAGES, _times_as_integers)


def fetch_rows(
    conn: psycopg.Connection[Any], statement: Direct, params: dict[str, Any]
) -> tuple[list[EventRow], tzinfo]:
    """The rows of a statement selecting ``event_pages`` rows (one of ``Queries.direct``:
    sent with libpq's blocking calls), and the time zone of their times."""
    loader = kept_loader(conn, _LOADER, _cursor(conn))
    rows: list[EventRow] = statement.run_loaded(conn, params, loader)
    return rows, conn.info.timezone


class Unloaded(NamedTuple):
    """A page as libpq gave it, its rows not loaded yet. A thread that waits for pages
    hands them over unloaded and sends the next query at once; the thread that reads them
    loads them (with the GIL, which the waiting thread then hardly needs)."""

    result: PGresult
    loader: Transformer  # the waiting thread's own, made on its first page
    timezone: tzinfo

    def rows(self) -> list[EventRow]:
        """The page's rows, loaded."""
        rows: list[EventRow] = loaded_rows(self.loader, self.result)
        return rows

    def last_position(self) -> int:
        """The position of the page's last row (the page has one)."""
        value = self.result.get_value(self.result.ntuples - 1, POSITION)
        return int.from_bytes(value or b"", "big", signed=True)  # a binary int8


def fetch_unloaded(
    conn: psycopg.Connection[Any],
    statement: Direct,
    params: dict[str, Any],
    loader: Transformer | None = None,
) -> Unloaded:
    """The page of a statement selecting ``event_pages`` rows, not loaded yet; with the
    ``loader`` of the pages before it, else a new one of its own. A new loader makes its
    column loaders here, on the connection's thread (they read the connection's encoding):
    loading the pages on another thread then does not touch the connection."""
    result = statement.run_binary(conn, params)
    if loader is None:
        loader = new_transformer(_cursor(conn))
        loader.set_pgresult(result)  # its column loaders, made once
    return Unloaded(result, loader, conn.info.timezone)


async def fetch_rows_async(
    conn: psycopg.AsyncConnection[Any], statement: Direct, params: dict[str, Any]
) -> tuple[list[EventRow], tzinfo]:
    """``fetch_rows`` on an asyncio connection (the statement's text through the cursor)."""
    cursor = _cursor(conn)
    await cursor.execute(statement.sql, params)
    return await cursor.fetchall(), conn.info.timezone


def fetch_page(
    conn: psycopg.Connection[Any], statement: Direct, params: dict[str, Any]
) -> list[RecordedEvent]:
    """The records of a statement selecting ``event_pages`` rows."""
    return page_records(*fetch_rows(conn, statement, params))


async def fetch_page_async(
    conn: psycopg.AsyncConnection[Any], statement: Direct, params: dict[str, Any]
) -> list[RecordedEvent]:
    """``fetch_page`` on an asyncio connection."""
    return page_records(*await fetch_rows_async(conn, statement, params))


def page_records(rows: list[EventRow], timezone: tzinfo) -> list[RecordedEvent]:
    """The records of ``event_pages`` rows, built with the collector paused."""
    of_row = RecordedEvent._of_row
    with paused_gc():
        return [of_row(row, timezone) for row in rows]


def handed_out(rows: list[EventRow], timezone: tzinfo, decode: bool) -> Iterator[RecordedEvent]:
    """The records of ``event_pages`` rows, each built (and its event decoded, with
    ``decode``) as it is handed out: a caller that is done with each record in turn leaves
    the collector only young objects to look at, as in a loop over plain rows."""
    built = map(RecordedEvent._of_row, rows, repeat(timezone))
    return decoding(built) if decode else built


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
