"""The framework's internals that its other top-level packages build on.

``projections`` (workers, replay, reactors, the JetStream source) and the benchmarks need more
of the store than its public API: its statements, direct driver calls, the worker runtime, the
input checks, the relay's message format and NATS client.
They import it from here and only from here, so that what they depend on is listed in one
place. Nothing here is public API: it may change in any release.
"""

from __future__ import annotations

from eventsource._checks import (
    MAX_NAME_LENGTH,
    check_bool,
    check_int,
    check_name,
    check_seconds,
)
from eventsource._instrumented import BatchSpan, handler_failed, partition_stopped
from eventsource._logging import configure_logging, get_logger
from eventsource._registry import Registry
from eventsource._telemetry import fail_current, linked, tracing
from eventsource.commands import ANNOUNCE_AFTER_COMMIT, command_queries, sync_store
from eventsource.db import Statements, driver_connection, fetch, fetch_async, quote_schema
from eventsource.runtime import (
    Backoff,
    GroupMembership,
    Listener,
    MembershipQueries,
    WorkerThread,
    close_thread_loop,
    default_worker_id,
    first_line,
    is_outage,
    run_on_thread_loop,
    worker_thread_running,
)
from eventsource.store import Queries, check_partition, parse_token, paused_gc, records

__all__ = [
    "ANNOUNCE_AFTER_COMMIT",
    "MAX_NAME_LENGTH",
    "Backoff",
    "BatchSpan",
    "GroupMembership",
    "Listener",
    "MembershipQueries",
    "Queries",
    "Registry",
    "Statements",
    "WorkerThread",
    "check_bool",
    "check_int",
    "check_name",
    "check_partition",
    "check_seconds",
    "close_thread_loop",
    "command_queries",
    "configure_logging",
    "default_worker_id",
    "driver_connection",
    "fail_current",
    "fetch",
    "fetch_async",
    "first_line",
    "get_logger",
    "handler_failed",
    "is_outage",
    "linked",
    "parse_token",
    "partition_stopped",
    "paused_gc",
    "quote_schema",
    "records",
    "run_on_thread_loop",
    "sync_store",
    "tracing",
    "worker_thread_running",
]
