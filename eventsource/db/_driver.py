"""Running statements on psycopg connections directly (binary rows, no result layer)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
import psycopg.adapt
from psycopg import errors
from psycopg.abc import Transformer
from psycopg.generators import execute
from psycopg.pq import ConnStatus, ExecStatus, Format
from psycopg.pq.abc import PGconn, PGresult
from sqlalchemy import Connection
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from eventsource.db._url import conninfo

__all__ = [
    "Direct",
    "array_literal",
    "connect",
    "driver_connection",
    "driver_connection_async",
    "fetch",
    "fetch_async",
    "kept_cursor",
    "kept_loader",
    "loaded_rows",
    "text_array",
]

TUPLES_OK = ExecStatus.TUPLES_OK
COMMAND_OK = ExecStatus.COMMAND_OK
BAD = ConnStatus.BAD


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


def kept_cursor(conn: Any, name: str = _CURSOR, setup: Callable[[Any], None] | None = None) -> Any:
    """The binary cursor that ``conn`` keeps under ``name`` (made, and given to ``setup``, on
    first use or after it was closed): one per connection and use, its adapters looked up
    once. It holds its last result until the next statement."""
    cursor = getattr(conn, name, None)
    if cursor is None or cursor.closed:
        cursor = conn.cursor(binary=True)
        if setup is not None:
            setup(cursor)
        setattr(conn, name, cursor)
    return cursor


def fetch(
    conn: psycopg.Connection[Any], sql: str | Direct, params: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """Run one statement on the driver connection; its rows (none for a command).

    Rows come in PostgreSQL's binary format, cheaper to produce and to parse than text; a
    ``Direct`` statement runs as its own ``run`` says.
    """
    if isinstance(sql, Direct):
        return sql.run(conn, params or {})
    cursor: psycopg.Cursor[Any] = kept_cursor(conn)
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
    conn: psycopg.AsyncConnection[Any], sql: str | Direct, params: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    """``fetch`` for an asyncio driver connection: one statement, its rows."""
    if isinstance(sql, Direct):
        return await sql.run_async(conn, params or {})
    cursor: psycopg.AsyncCursor[Any] = kept_cursor(conn)
    await cursor.execute(sql, params)
    result = cursor.pgresult
    if result is None or result.status != TUPLES_OK:
        return []
    rows: list[tuple[Any, ...]] = await cursor.fetchall()
    return rows


# -- statements sent straight through libpq ----------------------------------------------------

_PLACEHOLDER = re.compile(r"%\((\w+)\)[sb]")
_INTEGERS = frozenset((20, 21, 23))  # int8, int2, int4: the result columns read as int
_BOOLEAN = 16  # bool: the result columns read as bool
_PREPARED = "_eventsource_prepared"  # the Direct statements prepared on a driver connection
_LOADER = "_eventsource_loader"  # the default loaders of a driver connection, for Direct rows


def _text(value: object, encoding: str) -> bytes | None:
    """A parameter in PostgreSQL's text format (the server infers its type from the query)."""
    if isinstance(value, str):
        return value.encode(encoding)
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, int | float | UUID):
        return str(value).encode("ascii")
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.isoformat().encode("ascii")
    if value is None:
        return None
    raise TypeError(
        "a Direct statement takes str, int, float, bool, UUID, an aware datetime or None,"
        f" got {type(value).__name__}"
    )


def array_literal(values: Iterable[object]) -> str:
    """An array literal of numbers or UUIDs (whose text needs no quoting), a ``Direct``
    statement's way to send an array: as text, cast in the query."""
    return "{" + ",".join(map(str, values)) + "}"


def text_array(values: Iterable[str]) -> str:
    """An array literal of texts (no NULL): each element in double quotes, its backslashes
    and double quotes escaped (the only characters special inside quotes)."""
    return "{" + ",".join(map(_quoted, values)) + "}"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _rows(result: PGresult, encoding: str) -> list[tuple[Any, ...]]:
    """The rows of a text-format result: integer columns as int, booleans as bool, the others
    as str."""
    if result.status != TUPLES_OK:
        return []
    columns = range(result.nfields)
    types = [result.ftype(c) for c in columns]
    rows = []
    for r in range(result.ntuples):
        row: list[int | bool | str | None] = []
        for c in columns:
            value = result.get_value(r, c)
            if value is None:
                row.append(None)
            elif types[c] in _INTEGERS:
                row.append(int(value))
            elif types[c] == _BOOLEAN:
                row.append(value == b"t")
            else:
                row.append(value.decode(encoding))
        rows.append(tuple(row))
    return rows


class Direct:
    """One statement of a hot path, sent through libpq without a cursor.

    ``fetch`` costs ~65 µs of CPU for a one-row append here, ~20 µs of it psycopg's cursor
    (placeholder conversion, adapters, prepared-statement bookkeeping). A ``Direct`` statement
    converts its ``%(name)s`` placeholders to ``$n`` once, sends its parameters as text (str,
    int, float, bool, UUID, aware datetime or None; the server infers their types from the query)
    and reads its rows as text (integers as int, booleans as bool, the rest as str), or with
    ``run_loaded`` in binary format through psycopg's loaders. It runs
    on autocommit connections only: it sends no implicit ``BEGIN``. On a connection that
    prepares statements (``prepare_threshold`` set) it is prepared on first use, under a name
    of its own; otherwise it is sent whole each time (PgBouncer in transaction mode).
    """

    __slots__ = ("loaded", "name", "names", "query", "sql")

    def __init__(self, sql: str, *, loaded: bool = False) -> None:
        """``sql`` with psycopg's named placeholders (``%(name)s`` or ``%(name)b``). With
        ``loaded``, ``run`` reads its rows in binary format through psycopg's default loaders
        (rows of many values: a tenth of the text rows' work; uuid and time values typed)."""
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        self.sql = sql
        self.query = _PLACEHOLDER.sub(number, sql).encode("utf-8")
        self.names = tuple(names)
        self.name = b"eventsource_" + hashlib.sha1(self.query).hexdigest()[:20].encode("ascii")
        self.loaded = loaded

    def values(self, params: Mapping[str, Any], encoding: str) -> list[bytes | None]:
        """The parameters in ``$n`` order, in text format (``encoding``: the connection's)."""
        return [_text(params[name], encoding) for name in self.names]

    def _send(
        self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], values: Any
    ) -> bool:
        """Send the statement (prepared if it is); whether a prepare is sent first."""
        pgconn = conn.pgconn
        if conn.prepare_threshold is None:
            pgconn.send_query_params(self.query, values, result_format=self._format)
            return False
        if self.name in _prepared_on(conn):
            pgconn.send_query_prepared(self.name, values, result_format=self._format)
            return False
        pgconn.send_prepare(self.name, self.query)
        return True

    def run(
        self, conn: psycopg.Connection[Any], params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Run the statement on the driver connection; its rows (none for a command).

        It is sent with libpq's blocking calls (``PQexecPrepared`` and its kin), which release
        the GIL while they wait: about 60 µs less CPU per statement here than psycopg's wait
        loop, and less latency. A signal's handler (Ctrl-C) runs when the statement returns,
        which suits the short statements ``Direct`` is for.
        """
        result = self._execute(conn, params, self._format)
        if self.loaded:
            return loaded_rows(kept_loader(conn), result)
        return _rows(result, conn.info.encoding)

    @property
    def _format(self) -> Format:
        return Format.BINARY if self.loaded else Format.TEXT

    def run_loaded(
        self, conn: psycopg.Connection[Any], params: Mapping[str, Any], loader: Transformer
    ) -> list[tuple[Any, ...]]:
        """``run``, its rows in binary format loaded by ``loader`` (a psycopg ``Transformer``
        over the adapters that load them, as a cursor's fetch would)."""
        return loaded_rows(loader, self.run_binary(conn, params))

    def run_binary(self, conn: psycopg.Connection[Any], params: Mapping[str, Any]) -> PGresult:
        """``run``, its result in binary format as libpq gives it, its rows not loaded yet.
        ``loaded_rows`` loads them later, on any thread, without the connection, with a loader
        whose column loaders exist already (a new loader makes them from the connection's
        settings: prime it with ``set_pgresult`` on the connection's thread first)."""
        return self._execute(conn, params, Format.BINARY)

    def _execute(
        self, conn: psycopg.Connection[Any], params: Mapping[str, Any], result_format: Format
    ) -> PGresult:
        """Run the statement with libpq's blocking calls; its result (an error raised)."""
        encoding = conn.info.encoding
        values = self.values(params, encoding)
        pgconn = conn.pgconn
        with conn.lock:
            if conn.prepare_threshold is None:
                result = pgconn.exec_params(self.query, values, result_format=result_format)
                return _checked(pgconn, result, encoding)
            for _ in range(2):
                if self.name not in _prepared_on(conn):
                    prepare = pgconn.prepare(self.name, self.query)
                    with suppress(errors.DuplicatePreparedStatement):  # its note lost
                        _checked(pgconn, prepare, encoding)
                    _prepared_on(conn).add(self.name)
                try:
                    # None is NULL here as in send_query_prepared (whose stub says so)
                    result = pgconn.exec_prepared(
                        self.name,
                        values,  # type: ignore[arg-type]
                        result_format=result_format,
                    )
                    return _checked(pgconn, result, encoding)
                except errors.InvalidSqlStatementName:  # deallocated behind our back
                    _prepared_on(conn).discard(self.name)
        raise AssertionError("unreachable")  # pragma: no cover

    async def run_async(
        self, conn: psycopg.AsyncConnection[Any], params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """``run`` on an asyncio driver connection."""
        encoding = conn.info.encoding
        values = self.values(params, encoding)
        async with conn.lock:
            for _ in range(2):
                if self._send(conn, values):
                    self._prepared(conn, await conn.wait(execute(conn.pgconn)), encoding)
                    conn.pgconn.send_query_prepared(self.name, values, result_format=self._format)
                try:
                    results = await conn.wait(execute(conn.pgconn))
                    if self.loaded:
                        return loaded_rows(
                            kept_loader(conn), _checked(conn.pgconn, results[-1], encoding)
                        )
                    return _result(results, encoding)
                except errors.InvalidSqlStatementName:  # deallocated behind our back
                    _prepared_on(conn).discard(self.name)
        raise AssertionError("unreachable")  # pragma: no cover

    def _prepared(
        self,
        conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
        results: list[PGresult],
        encoding: str,
    ) -> None:
        """Note the statement prepared on ``conn`` (the results of its prepare)."""
        with suppress(errors.DuplicatePreparedStatement):  # there already, its note lost
            _result(results, encoding)
        _prepared_on(conn).add(self.name)


def _prepared_on(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> set[bytes]:
    """The names of the ``Direct`` statements prepared on ``conn``."""
    prepared: set[bytes] | None = getattr(conn, _PREPARED, None)
    if prepared is None:
        prepared = set()
        setattr(conn, _PREPARED, prepared)
    return prepared


def _checked(pgconn: PGconn, result: PGresult, encoding: str) -> PGresult:
    """The result of a blocking call, if it succeeded; else its error, as psycopg's class for
    its SQLSTATE, or what psycopg raises for a lost connection (an ``OperationalError``
    without SQLSTATE: an outage) when it says the connection was lost."""
    if result.status in (TUPLES_OK, COMMAND_OK):
        return result
    if pgconn.status == BAD:
        raise errors.OperationalError(result.get_error_message(encoding).strip())
    raise errors.error_from_result(result, encoding=encoding)


def kept_loader(conn: Any, name: str = _LOADER, context: Any = None) -> Transformer:
    """The loader (a psycopg ``Transformer``) that ``conn`` keeps under ``name``, made on first
    use over ``context``'s adapters (a cursor's; the connection's by default)."""
    loader: Transformer | None = getattr(conn, name, None)
    if loader is None:
        loader = psycopg.adapt.Transformer(conn if context is None else context)
        setattr(conn, name, loader)
    return loader


def loaded_rows(loader: Transformer, result: PGresult) -> list[tuple[Any, ...]]:
    """The rows of a binary result, loaded by ``loader``."""
    loader.set_pgresult(result)
    rows: list[tuple[Any, ...]] = loader.load_rows(0, result.ntuples, tuple)
    return rows


def _result(results: list[PGresult], encoding: str) -> list[tuple[Any, ...]]:
    """The rows of the last result; the error of a failed one, as psycopg's class for it."""
    for result in results:
        if result.status not in (TUPLES_OK, COMMAND_OK):
            raise errors.error_from_result(result, encoding=encoding)
    return _rows(results[-1], encoding) if results else []
