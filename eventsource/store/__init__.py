"""The event store: a partitioned, append-only log of events in one PostgreSQL schema.

- ``_types``: the values it takes and gives (``RecordedEvent``, ``AppendResult``, expected
  versions) and the checks of its arguments;
- ``_staging``: appends staged by a transaction and written at its commit (``append_plan``);
- ``_queries``: its SQL statements (kept in ``queries.sql``); ``_announce``: LISTEN/NOTIFY
  of written partitions;
- ``_base``: what the sync and async stores share; ``_async``: the async store and its
  transactions, ``_sync`` their sync twins, generated from it (``tools/async_to_sync.py``);
  ``_ahead``: partitions read a page ahead;
- ``_async_repository`` and its generated twin ``_repository``: aggregates loaded from and
  saved to their streams.

The public names are re-exported by ``eventsource``; the others here are for the framework's
own packages.
"""

from __future__ import annotations

from eventsource.store._announce import MAX_PAYLOAD, Announcer, payloads
from eventsource.store._async import AsyncEventStore, AsyncTransaction
from eventsource.store._async_repository import AsyncRepository
from eventsource.store._queries import Queries
from eventsource.store._records import RecordedEvent, paused_gc, records
from eventsource.store._repository import Repository
from eventsource.store._staging import StagedAppends
from eventsource.store._sync import EventStore, Transaction
from eventsource.store._token import PositionTokenError, make_token, parse_token
from eventsource.store._types import (
    ANY,
    MAX_PARTITIONS,
    NO_STREAM,
    AppendResult,
    ExpectedVersion,
    PendingAppend,
    check_expected,
    check_partition,
    check_partitions,
    check_range,
    check_stream_id,
    partition_for,
)

__all__ = [
    "ANY",
    "MAX_PARTITIONS",
    "MAX_PAYLOAD",
    "NO_STREAM",
    "Announcer",
    "AppendResult",
    "AsyncEventStore",
    "AsyncRepository",
    "AsyncTransaction",
    "EventStore",
    "ExpectedVersion",
    "PendingAppend",
    "PositionTokenError",
    "Queries",
    "RecordedEvent",
    "Repository",
    "StagedAppends",
    "Transaction",
    "check_expected",
    "check_partition",
    "check_partitions",
    "check_range",
    "check_stream_id",
    "make_token",
    "parse_token",
    "partition_for",
    "paused_gc",
    "payloads",
    "records",
]
