"""eventsource: event sourcing for Python services on PostgreSQL.

Aggregates append events to a partitioned, append-only log; projections replay partitions from
stored offsets into read models; a command queue delivers tasks to handlers at least once.
"""

from __future__ import annotations

from ._aggregate import Aggregate
from ._async_store import AsyncEventStore, AsyncTransaction
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
    ConcurrencyError,
    DatabaseUnavailable,
    DuplicateEventId,
    EmbeddedUnavailable,
    EventSourceError,
    SchemaNotReady,
    UnknownEventType,
)
from ._events import Event, UpcastError, upcaster
from ._repository import AsyncRepository, Repository
from ._store import EventStore, Transaction

__all__ = [
    "ANY",
    "NO_STREAM",
    "Aggregate",
    "AggregateNotFound",
    "AppendResult",
    "AsyncEventStore",
    "AsyncRepository",
    "AsyncTransaction",
    "ConcurrencyError",
    "DatabaseUnavailable",
    "DuplicateEventId",
    "EmbeddedUnavailable",
    "Event",
    "EventSourceError",
    "EventStore",
    "ExpectedVersion",
    "PendingAppend",
    "RecordedEvent",
    "Repository",
    "SchemaNotReady",
    "Settings",
    "Transaction",
    "UnknownEventType",
    "UpcastError",
    "correlation",
    "current_correlation",
    "partition_for",
    "upcaster",
]
