"""Running statements on psycopg connections directly (binary rows, no result layer)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.pq import ExecStatus
from sqlalchemy import Connection
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from eventsource.db._url import conninfo

__all__ = ["connect", "driver_connection", "driver_connection_async", "fetch", "fetch_async"]

TUPLES_OK = ExecStatus.TUPLES_OK


def connect(target: URL | str, *, prepare_threshold: int | None = None) -> psycopg.Connection[Any]:
    """A new autocommit connection of the caller's own (not from a pool).

    ``target``: a SQLAlchemy URL, or a psycopg connection string already made from one
    (``conninfo``). Every connection the framework opens outside a pool is opened here.
    """
    dsn = conninfo(target) if isinstance(target, URL) else target
    return psycopg.connect(dsn, autocommit=True, prepare_threshold=prepare_threshold)


# Each driver connection keeps one binary cursor for ``fetch``: a new cursor per statement
# looks up its type adapters again (a fifth of psycopg's work for a one-row append).
_CURSOR = "_eventsource_cursor"


def fetch(
    conn: psycopg.Connection[Any], sql: str, params: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """Run one statement on the driver connection; its rows (none for a command).

    Rows come in PostgreSQL's binary format, cheaper to produce and to parse than text.
    """
    cursor: psycopg.Cursor[Any] | None = getattr(conn, _CURSOR, None)
    if cursor is None or cursor.closed:
        cursor = conn.cursor(binary=True)
        setattr(conn, _CURSOR, cursor)
    cursor.execute(sql, params)
    result = cursor.pgresult  # cheaper to test than ``description``, built on each access
    return cursor.fetchall() if result is not None and result.status == TUPLES_OK else []


def driver_connection(connection: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy connection (for statements sent directly)."""
    raw: psycopg.Connection[Any] = connection.connection.driver_connection  # type: ignore[assignment]
    return raw


async def driver_connection_async(connection: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under a SQLAlchemy ``AsyncConnection``."""
    raw = await connection.get_raw_connection()
    driver: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
    return driver


async def fetch_async(
    conn: psycopg.AsyncConnection[Any], sql: str, params: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """``fetch`` for an asyncio driver connection: one statement, its rows."""
    cursor: psycopg.AsyncCursor[Any] | None = getattr(conn, _CURSOR, None)
    if cursor is None or cursor.closed:
        cursor = conn.cursor(binary=True)
        setattr(conn, _CURSOR, cursor)
    await cursor.execute(sql, params)
    result = cursor.pgresult
    if result is None or result.status != TUPLES_OK:
        return []
    rows: list[tuple[Any, ...]] = await cursor.fetchall()
    return rows
