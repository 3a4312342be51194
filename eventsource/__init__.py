"""eventsource: event sourcing for Python services on PostgreSQL.

Aggregates append events to a partitioned, append-only log; projections replay partitions from
stored offsets into read models; a command queue delivers tasks to handlers at least once.
"""

from __future__ import annotations

from ._aggregate import Aggregate
from ._async_store import AsyncEventStore, AsyncTransaction
from ._command_worker import CommandWorker, LeaseLost
from ._commands import (
    AsyncCommandQueue,
    Command,
    CommandContext,
    CommandInfo,
    CommandQueue,
    Enqueued,
    handler,
)
from ._config import Settings
from ._context import correlation, current_correlation
from ._core import (
    ANY,
    NO_STREAM,
    AppendResult,
    ExpectedVersion,
    PendingAppend,
    RecordedEvent,
    partition_for,
)
from ._errors import (
    AggregateNotFound,
    CommandNotFound,
    ConcurrencyError,
    DatabaseUnavailable,
    DuplicateEventId,
    EmbeddedUnavailable,
    EventSourceError,
    SchemaNotReady,
    UnknownCommandType,
    UnknownEventType,
    WorkerCrashed,
)
from ._events import Event, EventDecodeError, UpcastError, upcaster
from ._repository import AsyncRepository, Repository
from ._store import EventStore, Transaction

__all__ = [
    "ANY",
    "NO_STREAM",
    "Aggregate",
    "AggregateNotFound",
    "AppendResult",
    "AsyncCommandQueue",
    "AsyncEventStore",
    "AsyncRepository",
    "AsyncTransaction",
    "Command",
    "CommandContext",
    "CommandInfo",
    "CommandNotFound",
    "CommandQueue",
    "CommandWorker",
    "ConcurrencyError",
    "DatabaseUnavailable",
    "DuplicateEventId",
    "EmbeddedUnavailable",
    "Enqueued",
    "Event",
    "EventDecodeError",
    "EventSourceError",
    "EventStore",
    "ExpectedVersion",
    "LeaseLost",
    "PendingAppend",
    "RecordedEvent",
    "Repository",
    "SchemaNotReady",
    "Settings",
    "Transaction",
    "UnknownCommandType",
    "UnknownEventType",
    "UpcastError",
    "WorkerCrashed",
    "correlation",
    "current_correlation",
    "handler",
    "partition_for",
    "upcaster",
]
