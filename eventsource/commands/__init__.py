"""The command queue: commands delivered to their handlers at least once.

- ``_command``: ``Command`` models, ``@handler`` and the handlers' ``CommandContext``;
- ``_params``: enqueue arguments, checked and encoded once for both queues;
- ``_queue``: ``AsyncCommandQueue``, and its generated sync twin ``CommandQueue``;
- ``_queries``: its SQL statements, kept in ``queries.sql``;
- ``_worker``: ``CommandWorker``, which runs the handlers, put together from ``_slots``
  (claiming and running batches), ``_attempt`` (one attempt, then its ack, retry or
  dead-letter) and ``_heartbeat`` (leases kept, expired ones reaped); ``_core`` has what
  they share;
- ``_running``: ``commands_running``, a worker inside an application's event loop, run by
  the runtime's ``WorkerThread`` (which ``projections.running`` uses too);
- ``_served``: ``check_queues_served``, which refuses a worker none of whose queues is served
  (``eventsource worker run`` and ``commands_running`` call it).

The public names are re-exported by ``eventsource``; the others here are for the framework's
own packages.
"""

from __future__ import annotations

from eventsource.commands._command import (
    ANNOUNCE_AFTER_COMMIT,
    MAX_DELAY,
    Command,
    CommandContext,
    HandlerSpec,
    command_class,
    handler,
    registered_handlers,
)
from eventsource.commands._params import CommandInfo, Enqueued
from eventsource.commands._queries import CommandQueries, command_queries
from eventsource.commands._queue import AsyncCommandQueue, CommandQueue
from eventsource.commands._running import commands_running, sync_store
from eventsource.commands._served import check_queues_served
from eventsource.commands._worker import CommandWorker, LeaseLost, backoff

__all__ = [
    "ANNOUNCE_AFTER_COMMIT",
    "MAX_DELAY",
    "AsyncCommandQueue",
    "Command",
    "CommandContext",
    "CommandInfo",
    "CommandQueries",
    "CommandQueue",
    "CommandWorker",
    "Enqueued",
    "HandlerSpec",
    "LeaseLost",
    "backoff",
    "check_queues_served",
    "command_class",
    "command_queries",
    "commands_running",
    "handler",
    "registered_handlers",
    "sync_store",
]
