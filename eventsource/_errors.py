"""The exceptions of eventsource, and the one translation of driver errors into them.

One root (``EventSourceError``), specific subclasses with structured fields for what callers
catch, and ``RetryableError`` for failures that may pass when the operation is tried again
(a deadlock, a serialization failure, a lost connection). Each exception's docstring is its
default message; one with structured fields (the stream, the expected version, ...) is a
dataclass whose message is built from them. Every public one is exported by ``eventsource``.

Driver errors (psycopg, SQLAlchemy) never reach callers as such: ``translate`` turns
them into these at the storage boundary with ``raise ... from exc``, by SQLSTATE alone (the
server's message text is never parsed). ``is_outage`` is the one rule for what counts as an
outage, which workers wait out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import psycopg
import psycopg.errors
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from eventsource._versions import ExpectedVersion


class EventSourceError(Exception):
    """An eventsource operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    # An error with structured fields is a dataclass (``@dataclass(eq=False, repr=False)``):
    # its fields are its arguments and attributes, its message what ``_message`` builds from
    # them. Such declarations look alike on purpose: the likeness is this convention.

    def __post_init__(self) -> None:
        EventSourceError.__init__(self, self._message())

    def _message(self) -> str:
        return ""


@dataclass(eq=False, repr=False)
class ConcurrencyError(EventSourceError):
    """The stream is not at the expected version; nothing was written."""

    stream_id: str
    expected: Any
    actual: int

    def _message(self) -> str:
        expected = self.expected
        shown = str(expected) if isinstance(expected, int) else repr(expected)
        return (
            f"stream {self.stream_id!r} is at version {self.actual}, expected {shown};"
            " nothing was written"
        )


@dataclass(eq=False, repr=False)
class AggregateNotFound(EventSourceError):
    """No aggregate with this id has been saved."""

    aggregate_type: str
    aggregate_id: str

    def _message(self) -> str:
        return f"{self.aggregate_type} {self.aggregate_id!r} not found"


class _UnknownType(EventSourceError):
    """A type name (its one field) that no class loaded in this process is registered under."""

    _kind: ClassVar[tuple[str, str]]  # what is named, and the base class of what is missing

    def _message(self) -> str:
        (field,) = fields(self)  # type: ignore[arg-type]  # each subclass is a dataclass
        kind, base = self._kind
        return (
            f"unknown {kind} type {getattr(self, field.name)!r}: import the module that defines"
            f" it ({base} subclass registered under that name)"
        )


@dataclass(eq=False, repr=False)
class UnknownEventType(_UnknownType):
    """A stored event's type has no registered Event class in this process."""

    event_type: str
    _kind = ("event", "an Event")


@dataclass(eq=False, repr=False)
class UnknownCommandType(_UnknownType):
    """A command type name has no registered Command class in this process."""

    command_type: str
    _kind = ("command", "a Command")


@dataclass(eq=False, repr=False)
class DuplicateEventId(EventSourceError):
    """An event id is already stored in another stream, or only part of an append was stored."""

    stream_id: str | None
    detail: str

    def _message(self) -> str:
        where = f" to stream {self.stream_id!r}" if self.stream_id is not None else ""
        return f"append{where} rejected: {self.detail}; nothing was written"


class RetryableError(EventSourceError):
    """The operation failed for a reason that may pass: try it again.

    Nothing of the failed transaction was committed (a deadlock or a serialization failure
    rolled it back), or the connection was lost (an append retried with the same event ids
    is stored once).
    """


class DeadlockDetected(RetryableError):
    """The transaction deadlocked with another one and was rolled back; retry it."""


class SerializationFailure(RetryableError):
    """The transaction could not be serialized with a concurrent one and was rolled back;
    retry it."""


@dataclass(eq=False, repr=False)
class StatementCancelled(EventSourceError):
    """The statement was cancelled by a statement timeout or a lock timeout."""

    detail: str

    def _message(self) -> str:
        return f"the statement was cancelled (a statement or lock timeout?): {self.detail}"


@dataclass(eq=False, repr=False)
class ValueRejected(EventSourceError, ValueError):
    """The database refused a value (a check constraint or a value out of range); nothing was
    written."""

    detail: str

    def _message(self) -> str:
        return f"rejected by the database: {self.detail}"


@dataclass(eq=False, repr=False)
class DatabaseUnavailable(RetryableError):
    """The PostgreSQL server cannot be reached."""

    where: str
    reason: str

    def _message(self) -> str:
        return (
            f"cannot connect to PostgreSQL at {self.where}: {self.reason}"
            " (check EVENTSOURCE_DATABASE_URL or --database-url, and that the server is running)"
        )


@dataclass(eq=False, repr=False)
class SchemaNotReady(EventSourceError):
    """The eventsource schema is missing or older than this code; run `eventsource db upgrade`."""

    schema: str
    detail: str = ""

    def _message(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return (
            f"the eventsource schema {self.schema!r} is not set up{extra}:"
            " run `eventsource db upgrade` (or store.upgrade())"
        )


class EmbeddedUnavailable(EventSourceError):
    """No database URL is set and the embedded PostgreSQL cannot start."""


@dataclass(eq=False, repr=False)
class CommandNotFound(EventSourceError):
    """No command with this id is in the state the operation needs."""

    command_id: int
    detail: str

    def _message(self) -> str:
        return f"command {self.command_id}: {self.detail}"


class WorkerCrashed(EventSourceError):
    """A thread of the worker died unexpectedly; the worker stopped."""


class ProjectionTimeout(EventSourceError, TimeoutError):
    """A projection did not reach the awaited position in time."""


class ReplayError(EventSourceError):
    """The replay could not take the projection over."""


@dataclass(eq=False, repr=False)
class ReactorNotAttached(EventSourceError, RuntimeError):
    """The reactor is not attached to a store: run it with a projection worker
    (``projections.run`` or ``eventsource projections run``)."""

    name: str

    def _message(self) -> str:
        return (
            f"reactor {self.name!r} is not attached to a store: run it with a projection"
            " worker (projections.run or `eventsource projections run`)"
        )


class UpcastError(EventSourceError):
    """A stored event cannot be upgraded to the current schema version of its class."""


@dataclass(eq=False, repr=False)
class EventDecodeError(EventSourceError):
    """A stored event's payload does not decode into its class (it no longer fits the model).

    ``event_type`` and ``schema_version`` name the stored event; ``stream_id`` and
    ``stream_version`` say where it is, when known.
    """

    event_type: str
    schema_version: int
    detail: str
    stream_id: str | None = None
    stream_version: int | None = None

    def _message(self) -> str:
        where = ""
        if self.stream_id is not None:
            where = f" of stream {self.stream_id!r}"
            if self.stream_version is not None:
                where += f" at version {self.stream_version}"
        return (
            f"stored event {self.event_type!r} (schema version {self.schema_version}){where}"
            f" cannot be decoded: {self.detail}"
        )

    def at(self, stream_id: str, stream_version: int) -> EventDecodeError:
        """The same error, naming the stream and version of the stored event."""
        return replace(self, stream_id=stream_id, stream_version=stream_version)


# -- translation of driver errors ------------------------------------------------------------

# Server states of a failed connection, not statement: shutdown, start-up, no free slot.
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
        if isinstance(exc, psycopg.errors.PipelineAborted):  # an earlier statement failed
            return False
        if isinstance(exc, psycopg.OperationalError):  # without SQLSTATE: libpq itself failed
            state = exc.sqlstate
            return state is None or state.startswith("08") or state in _OUTAGE_STATES
        if isinstance(exc, psycopg.Error):
            return False
        exc = exc.__cause__
    return False


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name if it has none), for logs."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def describe_target(url: URL) -> str:
    """``host:port/database`` of ``url``, to name the server in an error (no credentials)."""
    host = url.host or url.query.get("host") or "localhost"
    if isinstance(host, tuple):
        host = host[0]
    port = f":{url.port}" if url.port else ""
    return f"{host}{port}/{url.database or ''}"


def json_detail(orig: BaseException) -> dict[str, Any]:
    """The JSON DETAIL that the framework's own SQL functions attach to their errors ({} for
    any other error)."""
    diag = getattr(orig, "diag", None)
    text = getattr(diag, "message_detail", None) or "{}"
    try:
        detail = json.loads(text)
    except ValueError:
        return {}
    return detail if isinstance(detail, dict) else {}


def _version_conflict(orig: BaseException, schema: str) -> Exception:
    detail = json_detail(orig)
    expected = detail.get("expected")
    if isinstance(expected, int) and expected < 0:
        expected = ExpectedVersion(expected)
    return ConcurrencyError(detail.get("stream_id", "?"), expected, detail.get("actual", -1))


def _partly_stored(orig: BaseException, schema: str) -> Exception:
    return DuplicateEventId(
        json_detail(orig).get("stream_id"),
        "part of its event ids are already stored (in it or in another stream), part not",
    )


def _unique(orig: BaseException, schema: str) -> Exception:
    constraint = getattr(getattr(orig, "diag", None), "constraint_name", None) or ""
    if constraint == "events_event_id_key":
        return DuplicateEventId(
            None, "one of its event ids is already stored (event ids are unique across the log)"
        )
    return EventSourceError(f"unique constraint {constraint} violated: {first_line(orig)}")


def _not_ready(orig: BaseException, schema: str) -> Exception:
    return SchemaNotReady(schema, first_line(orig))


# append_events: the stream is not at the expected version (DETAIL: stream_id, expected, actual,
# and "raced": true when a writer its locks did not hold back stored a version first).
VERSION_CONFLICT = "ES409"

# The errors of the framework's own SQL (ES…) and the server's, by SQLSTATE. Classes of
# states map by their first two characters (22: data exceptions).
_BY_SQLSTATE: dict[str, Callable[[BaseException, str], Exception]] = {
    VERSION_CONFLICT: _version_conflict,
    "ES422": _partly_stored,  # append_events: part of an append's event ids already stored
    "23505": _unique,
    "42P01": _not_ready,  # undefined table
    "42883": _not_ready,  # undefined function
    "3F000": _not_ready,  # invalid schema name
    "23514": lambda orig, schema: ValueRejected(first_line(orig)),  # check violation
    "22": lambda orig, schema: ValueRejected(first_line(orig)),  # data exception
    "57014": lambda orig, schema: StatementCancelled(first_line(orig)),  # query cancelled
    "55P03": lambda orig, schema: StatementCancelled(first_line(orig)),  # lock not available
    "40P01": lambda orig, schema: DeadlockDetected(),
    "40001": lambda orig, schema: SerializationFailure(),
}


def translate(
    orig: BaseException | None,
    url: URL,
    schema: str,
    *,
    invalidated: bool = False,
) -> Exception:
    """The eventsource error for a driver error (``orig``), decided by its SQLSTATE."""
    sqlstate = getattr(orig, "sqlstate", None) or ""
    make = _BY_SQLSTATE.get(sqlstate) or _BY_SQLSTATE.get(sqlstate[:2])
    if make is not None and orig is not None:
        return make(orig, schema)
    if is_outage(orig) or invalidated:
        reason = first_line(orig) if orig is not None else "the connection was lost"
        return DatabaseUnavailable(describe_target(url), reason)
    return EventSourceError(f"database error: {first_line(orig) if orig else 'unknown'}")
