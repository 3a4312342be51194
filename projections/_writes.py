"""The connection a batch's handlers get: plain ``text()`` writes queued and sent together.

A pipelined projection (the default) gets a ``BatchConnection``. A handler's
``tx.execute(text("INSERT|UPDATE|DELETE ..."), {...})``, a write without ``RETURNING`` whose
``:name`` parameters are plain (no types or values bound to the clause), is not sent at once:
it is queued, and its result is a ``WriteResult``. The queue is sent in one psycopg pipeline,
runs of the same statement as one ``executemany``, before anything else reaches the database
through this connection: any other statement (a ``SELECT``, a write with ``RETURNING``, a
Core or ORM statement, a savepoint), the driver connection (``tx.connection``), and the end of
the batch. A handler that reads therefore sees its own writes and those of earlier handlers.

A queued write's error surfaces when the queue is sent, as a SQLAlchemy ``DBAPIError`` like
the one ``execute`` raises: the batch fails, and the worker narrows it to single events applied
without queueing, which finds and names the poison event exactly as without a pipeline.
Statement-level SQLAlchemy listeners (``before_cursor_execute`` and the like, echo) see every
statement: with any of them, nothing is queued.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping
from typing import Any, NoReturn

import psycopg
from sqlalchemy import Connection, Engine, TextClause
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import DBAPIError, ResourceClosedError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.types import NullType

__all__ = ["BatchConnection", "WriteResult"]

# INSERT, UPDATE or DELETE (after comments), without RETURNING: a statement that returns no rows
# (text that only might be one, a RETURNING in a string say, goes through SQLAlchemy: no harm).
_WRITE = re.compile(
    r"\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*(?:INSERT|UPDATE|DELETE)\b", re.I | re.S
)
_RETURNING = re.compile(r"\bRETURNING\b", re.I)
_MAX_PLANS = 1000  # distinct statement texts remembered; more clears the memory

_PLAN = "_eventsource_write_plan"  # the attribute caching a clause's plan (with its id)


class _Plan:
    """A queueable write: its psycopg SQL and the names of its parameters."""

    __slots__ = ("names", "sql")

    def __init__(self, sql: str, names: frozenset[str]) -> None:
        self.sql = sql
        self.names = names


_plans: dict[str, _Plan | None] = {}  # by statement text, for clauses built anew per call


def _plain(bind: BindParameter[Any]) -> bool:
    """A ``:name`` of the text alone: no type, value, callable or expansion bound to it."""
    return (
        type(bind.type) is NullType
        and bind.value is None
        and bind.callable is None
        and not bind.expanding
        and not bind.literal_execute
    )


def _plan(statement: TextClause, dialect: Dialect) -> _Plan | None:
    """How to queue ``statement``, or None if it goes through SQLAlchemy (cached on it)."""
    cached = statement.__dict__.get(_PLAN)
    # A copy of the clause (``.bindparams()``) inherits the attribute but not the id.
    if cached is not None and cached[0] == id(statement):
        plan: _Plan | None = cached[1]
        return plan
    plan = None
    if all(_plain(bind) for bind in statement._bindparams.values()):
        key = statement.text
        if key in _plans:
            plan = _plans[key]
        else:
            compiled = statement.compile(dialect=dialect)
            sql = compiled.string
            if (
                not compiled.escaped_bind_names
                and not compiled.positiontup
                and _WRITE.match(sql)
                and not _RETURNING.search(sql)
                and ";" not in sql.rstrip().rstrip(";")  # one statement (a prepared one)
            ):
                plan = _Plan(sql, frozenset(compiled.binds))
            if len(_plans) >= _MAX_PLANS:
                _plans.clear()
            _plans[key] = plan
    setattr(statement, _PLAN, (id(statement), plan))
    return plan


class WriteResult:
    """The result of a queued write: no rows, and its ``rowcount`` (which sends the queue)."""

    __slots__ = ("__weakref__", "_conn", "_rowcount")

    returns_rows = False

    def __init__(self, conn: BatchConnection) -> None:
        self._conn: BatchConnection | None = conn
        self._rowcount = -1

    @property
    def rowcount(self) -> int:
        """The rows the write matched, as ``CursorResult.rowcount``."""
        if self._conn is not None:
            self._conn.flush()
        return self._rowcount

    def close(self) -> None:
        """Nothing to release: a write's result holds no rows."""

    def _no_rows(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ResourceClosedError(
            "This result object does not return rows. It has been closed automatically."
        )

    fetchone = fetchmany = fetchall = all = first = one = one_or_none = _no_rows
    scalar = scalar_one = scalar_one_or_none = scalars = mappings = keys = _no_rows
    __iter__ = _no_rows


class BatchConnection(Connection):
    """A SQLAlchemy ``Connection`` that queues a batch's plain text writes (while
    ``queue_writes``) and sends them together before anything else runs on it."""

    def __init__(self, engine: Engine, *, queue_writes: bool) -> None:
        """A connection of ``engine``'s pool; ``queue_writes`` unless statement listeners
        or echo are set up."""
        super().__init__(engine)
        self.queue_writes = queue_writes and not self._echo and not self._listened()
        self._queue: list[tuple[str, dict[str, Any], weakref.ref[WriteResult]]] = []

    def _listened(self) -> bool:
        """Whether statement-level listeners are set up (checked only where any event is)."""
        if not (self._has_events or self.engine._has_events):
            return False
        dispatch = self.dispatch
        return bool(
            dispatch.before_execute
            or dispatch.after_execute
            or dispatch.before_cursor_execute
            or dispatch.after_cursor_execute
        )

    def execute(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        """``Connection.execute``; a plain text write is queued (its result a ``WriteResult``)."""
        if (
            self.queue_writes
            and type(statement) is TextClause
            and not execution_options
            and self._nested_transaction is None
            and (parameters is None or isinstance(parameters, Mapping))
        ):
            plan = _plan(statement, self.dialect)
            if plan is not None and (
                plan.names <= parameters.keys() if parameters is not None else not plan.names
            ):
                result = WriteResult(self)
                params = dict(parameters) if parameters is not None else {}
                self._queue.append((plan.sql, params, weakref.ref(result)))
                return result
        self.flush()
        return super().execute(statement, parameters, execution_options=execution_options)

    def exec_driver_sql(
        self, statement: str, parameters: Any = None, execution_options: Any = None
    ) -> Any:
        """``Connection.exec_driver_sql``, after the queued writes."""
        self.flush()
        return super().exec_driver_sql(statement, parameters, execution_options)

    def scalar(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        """``Connection.scalar``, after the queued writes."""
        self.flush()
        return super().scalar(statement, parameters, execution_options=execution_options)

    def scalars(
        self, statement: Any, parameters: Any = None, *, execution_options: Any = None
    ) -> Any:
        """``Connection.scalars``, after the queued writes."""
        self.flush()
        return super().scalars(statement, parameters, execution_options=execution_options)

    @property
    def connection(self) -> PoolProxiedConnection:
        """The DB-API connection, once the queued writes are sent (``Connection.connection``)."""
        if self._queue:
            self.flush()
        return super().connection

    def discard(self) -> None:
        """Forget the queued writes (the batch failed and rolls back)."""
        self._queue.clear()

    def flush(self) -> None:
        """Send the queued writes in one pipeline, runs of one statement as one ``executemany``.

        A write whose result is still referenced runs alone, so that its ``rowcount`` is its
        own. Errors are raised as SQLAlchemy raises them (``DBAPIError`` subclasses).
        """
        queue = self._queue
        if not queue:
            return
        self._queue = []
        runs: list[tuple[str, list[dict[str, Any]], WriteResult | None]] = []
        for sql, params, ref in queue:
            result = ref()
            if result is None and runs and runs[-1][0] is sql and runs[-1][2] is None:
                runs[-1][1].append(params)
            else:
                runs.append((sql, [params], result))
        raw: psycopg.Connection[Any] = super().connection.driver_connection  # type: ignore[assignment]
        cursors: list[tuple[psycopg.Cursor[Any], WriteResult | None]] = []
        sql = ""
        try:
            with raw.pipeline():
                for sql, params_seq, result in runs:
                    cursor = raw.cursor()
                    cursors.append((cursor, result))
                    cursor.executemany(sql, params_seq)
            for cursor, result in cursors:
                if result is not None:
                    result._rowcount, result._conn = cursor.rowcount, None
        except psycopg.Error as exc:
            raise DBAPIError.instance(sql, None, exc, psycopg.Error, dialect=self.dialect) from exc
        finally:
            for cursor, _ in cursors:
                cursor.close()
