"""eventsource: event sourcing for Python services on PostgreSQL.

Aggregates append events to a partitioned, append-only log; projections replay partitions from
stored offsets into read models; a command queue delivers tasks to handlers at least once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventsource._aggregate import Aggregate
from eventsource._config import Settings
from eventsource._context import correlation, current_correlation
from eventsource._errors import (
    AggregateNotFound,
    CommandNotFound,
    ConcurrencyError,
    DatabaseUnavailable,
    DeadlockDetected,
    DuplicateEventId,
    EmbeddedUnavailable,
    EventDecodeError,
    EventSourceError,
    ProjectionTimeout,
    ReactorNotAttached,
    ReplayError,
    RetryableError,
    SchemaNotReady,
    SerializationFailure,
    StatementCancelled,
    UnknownCommandType,
    UnknownEventType,
    UpcastError,
    ValueRejected,
    WorkerCrashed,
)
from eventsource._events import Event, upcaster
from eventsource._logging import configure_logging
from eventsource._version import package_version
from eventsource.commands import (
    AsyncCommandQueue,
    Command,
    CommandContext,
    CommandInfo,
    CommandQueue,
    CommandWorker,
    Enqueued,
    LeaseLost,
    commands_running,
    handler,
)
from eventsource.store import (
    ANY,
    NO_STREAM,
    AppendResult,
    AsyncEventStore,
    AsyncRepository,
    AsyncTransaction,
    EventStore,
    ExpectedVersion,
    PendingAppend,
    PositionTokenError,
    RecordedEvent,
    Repository,
    Transaction,
    partition_for,
)

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
    "DeadlockDetected",
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
    "PositionTokenError",
    "ProjectionTimeout",
    "ReactorNotAttached",
    "RecordedEvent",
    "ReplayError",
    "Repository",
    "RetryableError",
    "SchemaNotReady",
    "SerializationFailure",
    "Settings",
    "StatementCancelled",
    "Transaction",
    "UnknownCommandType",
    "UnknownEventType",
    "UpcastError",
    "ValueRejected",
    "WorkerCrashed",
    "commands_running",
    "configure_logging",
    "correlation",
    "current_correlation",
    "handler",
    "partition_for",
    "upcaster",
]


if TYPE_CHECKING:
    __version__: str
else:

    def __getattr__(name: str) -> str:
        """``__version__``, looked up on first use (reading the installed metadata is slow)."""
        if name == "__version__":
            version = package_version()
            globals()["__version__"] = version
            return version
        raise AttributeError(f"module 'eventsource' has no attribute {name!r}")
