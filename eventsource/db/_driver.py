"""Running statements on psycopg connections directly (binary rows, no result layer)."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.pq import ExecStatus
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["driver_connection", "fetch", "fetch_async"]

TUPLES_OK = ExecStatus.TUPLES_OK


def fetch(
    conn: psycopg.Connection[Any], sql: str, params: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """Run one statement on the driver connection; its rows (none for a command).

    Rows come in PostgreSQL's binary format, cheaper to produce and to parse than text.
    """
    with conn.cursor(binary=True) as cursor:
        cursor.execute(sql, params)
        result = cursor.pgresult  # cheaper to test than ``description``, built on each access
        return cursor.fetchall() if result is not None and result.status == TUPLES_OK else []


def driver_connection(connection: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy connection (for statements sent directly)."""
    raw: psycopg.Connection[Any] = connection.connection.driver_connection  # type: ignore[assignment]
    return raw


async def fetch_async(
    conn: AsyncConnection, sql: str, params: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """``fetch`` for a SQLAlchemy async connection: one statement, its rows.

    Hot statements skip SQLAlchemy's result layer: rows come straight from psycopg, in
    PostgreSQL's binary format (cheaper to produce and to parse than text).
    """
    raw = await conn.get_raw_connection()
    async with raw.driver_connection.cursor(binary=True) as cursor:  # type: ignore[union-attr]
        await cursor.execute(sql, params)
        if cursor.description is None:
            return []
        rows: list[tuple[Any, ...]] = await cursor.fetchall()
        return rows
