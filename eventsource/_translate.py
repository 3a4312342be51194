"""The exceptions of eventsource, and the one translation of driver errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg.conninfo
import psycopg.errors
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from eventsource._errors import (
    ConcurrencyError,
    DatabaseUnavailable,
    DuplicateEventId,
    EventSourceError,
    SchemaNotReady,
)
from eventsource._versions import ExpectedVersion
from eventsource.db import describe_target

# Server states that mean the connection, not the statement, failed: the server is shutting
# down or starting up, or has no connection slot left.
_OUTAGE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def is_outage(exc: BaseException | None) -> bool:
    """Whether ``exc`` means the database could not be reached (an outage to wait out).

    Connection-class failures only: SQLSTATE class 08, 57P01-57P03 (shutdown, crash,
    starting up), no free connection slot, a closed or broken connection, a connection
    attempt that failed, ``DatabaseUnavailable``. Everything else (timeouts, deadlocks,
    constraint violations, a handler's own errors) is an error of the work in hand.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DatabaseUnavailable | psycopg.InterfaceError):
            return True
        if isinstance(exc, sa_exc.DBAPIError):
            if exc.connection_invalidated:
                return True
            exc = exc.orig
            continue
        if isinstance(exc, psycopg.OperationalError):
            state = exc.sqlstate
            # No SQLSTATE: libpq itself failed (refused, reset, closed by the server).
            return state is None or state.startswith("08") or state in _OUTAGE_STATES
        if isinstance(exc, psycopg.Error):
            return False
        exc = exc.__cause__
    return False


@contextmanager
def translate_errors(url: URL, schema: str) -> Iterator[None]:
    """Turn driver errors into eventsource errors, at the one storage boundary."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        raise translate(exc.orig, url, schema, invalidated=exc.connection_invalidated) from exc
    except psycopg.Error as exc:  # statements run on the driver connection directly
        raise translate(exc, url, schema) from exc


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none), for logs."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def translate(  # noqa: PLR0911 - one return per kind of driver error
    orig: BaseException | None, url: URL, schema: str, *, invalidated: bool = False
) -> Exception:
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate == "ES409":  # raised by append_events on a version conflict
        detail = json.loads(orig.diag.message_detail or "{}")  # type: ignore[union-attr]
        expected = detail.get("expected")
        return ConcurrencyError(
            detail.get("stream_id"),
            ExpectedVersion(expected) if expected < 0 else expected,
            detail.get("actual"),
        )
    if sqlstate == "ES422":
        detail = json.loads(orig.diag.message_detail or "{}")  # type: ignore[union-attr]
        return DuplicateEventId(
            detail.get("stream_id"),
            "part of its event ids are already stored (in it or in another stream), part not",
        )
    if isinstance(orig, psycopg.errors.UniqueViolation):
        constraint = getattr(orig.diag, "constraint_name", None) or ""
        if constraint == "events_event_id_key":
            return DuplicateEventId(
                None, "one of its event ids is already stored (event ids are unique across the log)"
            )
        return EventSourceError(f"unique constraint {constraint} violated: {orig}")
    if isinstance(
        orig,
        psycopg.errors.UndefinedTable
        | psycopg.errors.UndefinedFunction
        | psycopg.errors.InvalidSchemaName,
    ):
        return SchemaNotReady(schema, first_line(orig))
    if isinstance(orig, psycopg.errors.CheckViolation):
        return ValueError(f"rejected by the database: {first_line(orig)}")
    if isinstance(orig, psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
        return EventSourceError(
            f"the statement was cancelled (a statement or lock timeout?): {first_line(orig)}"
        )
    if isinstance(orig, psycopg.errors.SerializationFailure):
        return EventSourceError(
            "the transaction could not be serialized with a concurrent one and was rolled back;"
            " retry it"
        )
    if isinstance(orig, psycopg.errors.DeadlockDetected):
        return EventSourceError(
            "the transaction deadlocked with another one and was rolled back; retry it"
        )
    if is_outage(orig) or invalidated:
        lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
        reason = lines[0] if lines else type(orig).__name__
        return DatabaseUnavailable(describe_target(url), reason)
    return EventSourceError(f"database error: {str(orig).splitlines()[0] if str(orig) else orig!r}")
