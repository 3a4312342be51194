"""The exceptions of eventsource: one root, specific subclasses with structured fields.

Driver errors (psycopg, SQLAlchemy) never reach callers as such; the storage boundary translates
them into these with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any


class EventSourceError(Exception):
    """An eventsource operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConcurrencyError(EventSourceError):
    """The stream is not at the expected version; nothing was written."""

    def __init__(self, stream_id: str, expected: Any, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"stream {stream_id!r} is at version {actual}, expected {_describe(expected)};"
            " nothing was written"
        )


def _describe(expected: Any) -> str:
    return str(expected) if isinstance(expected, int) else repr(expected)


class AggregateNotFound(EventSourceError):
    """No aggregate with this id has been saved."""

    def __init__(self, aggregate_type: str, aggregate_id: str) -> None:
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        super().__init__(f"{aggregate_type} {aggregate_id!r} not found")


class UnknownEventType(EventSourceError):
    """A stored event's type has no registered Event class in this process."""

    def __init__(self, event_type: str) -> None:
        self.event_type = event_type
        super().__init__(
            f"unknown event type {event_type!r}: import the module that defines it"
            " (an Event subclass registered under that name)"
        )


class DuplicateEventId(EventSourceError):
    """An event id is already stored in another stream, or only part of an append was stored."""

    def __init__(self, stream_id: str | None, detail: str) -> None:
        self.stream_id = stream_id
        where = f" to stream {stream_id!r}" if stream_id is not None else ""
        super().__init__(f"append{where} rejected: {detail}; nothing was written")


class DatabaseUnavailable(EventSourceError):
    """The PostgreSQL server cannot be reached."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(
            f"cannot connect to PostgreSQL at {where}: {reason}"
            " (check EVENTSOURCE_DATABASE_URL or --database-url, and that the server is running)"
        )


class SchemaNotReady(EventSourceError):
    """The eventsource schema is missing or older than this code; run `eventsource db upgrade`."""

    def __init__(self, schema: str, detail: str = "") -> None:
        self.schema = schema
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"the eventsource schema {schema!r} is not set up{extra}:"
            " run `eventsource db upgrade` (or store.upgrade())"
        )


class EmbeddedUnavailable(EventSourceError):
    """No database URL is set and the embedded PostgreSQL cannot start."""


class UnknownCommandType(EventSourceError):
    """A command type name has no registered Command class in this process."""

    def __init__(self, command_type: str) -> None:
        self.command_type = command_type
        super().__init__(
            f"unknown command type {command_type!r}: import the module that defines it"
            " (a Command subclass registered under that name)"
        )


class CommandNotFound(EventSourceError):
    """No command with this id is in the state the operation needs."""

    def __init__(self, command_id: int, detail: str) -> None:
        self.command_id = command_id
        super().__init__(f"command {command_id}: {detail}")


class WorkerCrashed(EventSourceError):
    """A thread of the worker died unexpectedly; the worker stopped."""
