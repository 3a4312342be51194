"""The command queues: enqueue commands to the store's database and inspect them.

    queue = CommandQueue(store)                    # AsyncCommandQueue(async_store) likewise,
    queue.enqueue(SendReceipt(order_id="o-1"), queue="mail")            # with await
    with store.transaction() as tx:                # enqueued if and only if tx commits
        queue.enqueue(ShipOrder(order_id="o-1"), tx=tx)

Workers deliver the commands at least once (``_worker``). What does no I/O (argument checks,
statement parameters, result shapes) is in ``_params``. ``AsyncCommandQueue`` is the source:
``CommandQueue``, below it, is generated from it by ``tools/async_to_sync.py``.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from eventsource._errors import CommandNotFound
from eventsource._telemetry import ENQUEUE, enqueue_span
from eventsource.commands._command import ANNOUNCE_AFTER_COMMIT, DEFAULT_MAX_ATTEMPTS, Command
from eventsource.commands._params import (
    CommandInfo,
    Enqueued,
    Ids,
    Infos,
    Rows,
    _command_id,
    _Options,
    _QueueCore,
    _why_not_dead,
    enqueued_attributes,
    enqueued_many_attributes,
)
from eventsource.db import driver_connection, driver_connection_async, fetch, fetch_async
from eventsource.store import AsyncEventStore, AsyncTransaction, EventStore, Transaction

__all__ = ["AsyncCommandQueue", "CommandQueue"]


# -- async source: the sync twins after the next marker are generated from it --


class AsyncCommandQueue(_QueueCore):
    """Enqueue commands to the store's database and inspect them; workers deliver them.

    ``max_attempts`` is the default for commands whose class and ``enqueue`` call set none.
    """

    def __init__(self, store: AsyncEventStore, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        super().__init__(store, max_attempts)
        self.store = store

    # -- enqueue -------------------------------------------------------------------------

    async def enqueue(
        self,
        command: Command,
        *,
        queue: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        dedupe_key: str | None = None,
        ordering_key: str | None = None,
        max_attempts: int | None = None,
        tx: AsyncTransaction | AsyncConnection | None = None,
    ) -> Enqueued:
        """Queue ``command`` for a worker; with ``tx``, it commits (or not) with ``tx``.

        ``delay`` (seconds or timedelta) or ``run_at`` schedules it; higher ``priority`` runs
        first; a ``dedupe_key`` already held by a command not yet started makes this a no-op
        (``Enqueued.duplicate``); commands sharing an ``ordering_key`` run one at a time in
        enqueue order; ``max_attempts`` bounds the retries before the command is dead.
        """
        options = _Options(queue, delay, run_at, priority, dedupe_key, ordering_key, max_attempts)
        with enqueue_span(ENQUEUE) as span:  # the command's row carries its context
            sql, params = self._one(command, options)
            enqueued = self._enqueued(await self._execute(sql, params, tx, params["queue"]))
            if span.is_recording():
                span.set_attributes(enqueued_attributes(params, enqueued))
            return enqueued

    # enqueue_many's options are enqueue's but dedupe_key, spelled out on purpose: each is
    # part of the public signature (help(), IDEs, the API test), not hidden in **options.
    async def enqueue_many(
        self,
        commands: Sequence[Command],
        *,
        queue: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        ordering_key: str | None = None,
        max_attempts: int | None = None,
        tx: AsyncTransaction | AsyncConnection | None = None,
    ) -> Ids:
        """Queue many commands in one statement (all checked before any is written); their ids."""
        options = _Options(queue, delay, run_at, priority, None, ordering_key, max_attempts)
        with enqueue_span(ENQUEUE) as span:
            params = self._many(commands, options)
            if not params:
                return []
            queues = set(params["queue"])
            ids = self._ids(await self._execute(self._sql.enqueue_many, params, tx, *queues))
            if span.is_recording():
                span.set_attributes(enqueued_many_attributes(params, ids))
            return ids

    async def _execute(
        self,
        sql: str,
        params: dict[str, Any],
        tx: AsyncTransaction | AsyncConnection | None,
        *queues: str,
    ) -> Rows:
        """Run an enqueue alone or in ``tx``; announce ``queues`` once it has committed."""
        if tx is None:
            alone, announced = self._alone(sql, params)
            async with self.store._raw() as conn:
                rows = await fetch_async(conn, alone, params)
            if not announced:
                self._announce(queues)
            return rows
        with self.store._errors():
            if isinstance(tx, AsyncTransaction):
                conn = await driver_connection_async(await tx.begin())
                rows = await fetch_async(conn, sql, params)
                tx.on_commit(lambda: self._announce(queues))
                return rows
            if isinstance(tx, AsyncConnection):  # e.g. a projection's batch transaction
                conn = await driver_connection_async(tx)
                rows = await fetch_async(conn, sql, params)
                after_commit = tx.info.get(ANNOUNCE_AFTER_COMMIT)
                if isinstance(after_commit, set):
                    # The owner of the transaction (a projection worker running a reactor)
                    # announces the queues once it has committed: no NOTIFY in the
                    # transaction, whose commit would take PostgreSQL's notify lock.
                    after_commit.update(queues)
                else:
                    await fetch_async(conn, self._sql.notify, self._notify_params(queues))
                return rows
        raise TypeError(
            f"tx must be a store {AsyncTransaction.__name__} or a SQLAlchemy"
            f" {AsyncConnection.__name__}, got {tx!r}"
        )

    # -- inspection and operations -------------------------------------------------------

    async def list(
        self,
        statuses: Sequence[str] = ("pending", "running"),
        *,
        queue: str | None = None,
        limit: int = 100,
    ) -> Infos:
        """Commands in these states, oldest first (pending and running by default)."""
        params = self._list_params(statuses, queue, limit)
        return self._infos(await self._run(self._sql.list, params))

    async def dead(self, *, queue: str | None = None, limit: int = 100) -> Infos:
        """Dead commands with their last error and traceback, oldest first."""
        return await self.list(("dead",), queue=queue, limit=limit)

    async def get(self, command_id: int) -> CommandInfo | None:
        """One command by id (``None`` once it is done: acks delete commands)."""
        rows = await self._run(self._sql.get, {"id": _command_id(command_id)})
        return CommandInfo(*rows[0]) if rows else None

    async def retry(self, command_id: int, *, attempts: int = 1) -> None:
        """Give a dead command ``attempts`` more attempts, starting now."""
        rows = await self._run(self._sql.retry, self._retry_params(command_id, attempts))
        if not rows:
            raise CommandNotFound(command_id, _why_not_dead(await self.get(command_id)))
        self._announce([rows[0][0]])

    async def purge(self, *, older_than: float | timedelta = 0, queue: str | None = None) -> int:
        """Delete dead commands last updated more than ``older_than`` ago; how many."""
        return len(await self._run(self._sql.purge, self._purge_params(older_than, queue)))

    async def counts(self) -> builtins.list[tuple[str, str, int, datetime]]:
        """(queue, status, count, oldest enqueue time) for every queue and state."""
        return self._counts(await self._run(self._sql.counts, None))

    async def _run(self, sql: str, params: dict[str, Any] | None) -> Rows:
        async with self.store._raw() as conn:  # errors translated
            return await fetch_async(conn, sql, params)


# -- sync twins, generated from the async source above by tools/async_to_sync.py (run it
# -- after editing the source; tests/unit/test_generated.py checks them): do not edit --


class CommandQueue(_QueueCore):
    """Enqueue commands to the store's database and inspect them; workers deliver them.

    ``max_attempts`` is the default for commands whose class and ``enqueue`` call set none.
    """

    def __init__(self, store: EventStore, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        super().__init__(store, max_attempts)
        self.store = store

    # -- enqueue -------------------------------------------------------------------------

    def enqueue(
        self,
        command: Command,
        *,
        queue: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        dedupe_key: str | None = None,
        ordering_key: str | None = None,
        max_attempts: int | None = None,
        tx: Transaction | Connection | None = None,
    ) -> Enqueued:
        """Queue ``command`` for a worker; with ``tx``, it commits (or not) with ``tx``.

        ``delay`` (seconds or timedelta) or ``run_at`` schedules it; higher ``priority`` runs
        first; a ``dedupe_key`` already held by a command not yet started makes this a no-op
        (``Enqueued.duplicate``); commands sharing an ``ordering_key`` run one at a time in
        enqueue order; ``max_attempts`` bounds the retries before the command is dead.
        """
        options = _Options(queue, delay, run_at, priority, dedupe_key, ordering_key, max_attempts)
        with enqueue_span(ENQUEUE) as span:  # the command's row carries its context
            sql, params = self._one(command, options)
            enqueued = self._enqueued(self._execute(sql, params, tx, params["queue"]))
            if span.is_recording():
                span.set_attributes(enqueued_attributes(params, enqueued))
            return enqueued

    # enqueue_many's options are enqueue's but dedupe_key, spelled out on purpose: each is
    # part of the public signature (help(), IDEs, the API test), not hidden in **options.
    def enqueue_many(
        self,
        commands: Sequence[Command],
        *,
        queue: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        ordering_key: str | None = None,
        max_attempts: int | None = None,
        tx: Transaction | Connection | None = None,
    ) -> Ids:
        """Queue many commands in one statement (all checked before any is written); their ids."""
        options = _Options(queue, delay, run_at, priority, None, ordering_key, max_attempts)
        with enqueue_span(ENQUEUE) as span:
            params = self._many(commands, options)
            if not params:
                return []
            queues = set(params["queue"])
            ids = self._ids(self._execute(self._sql.enqueue_many, params, tx, *queues))
            if span.is_recording():
                span.set_attributes(enqueued_many_attributes(params, ids))
            return ids

    def _execute(
        self,
        sql: str,
        params: dict[str, Any],
        tx: Transaction | Connection | None,
        *queues: str,
    ) -> Rows:
        """Run an enqueue alone or in ``tx``; announce ``queues`` once it has committed."""
        if tx is None:
            alone, announced = self._alone(sql, params)
            with self.store._raw() as conn:
                rows = fetch(conn, alone, params)
            if not announced:
                self._announce(queues)
            return rows
        with self.store._errors():
            if isinstance(tx, Transaction):
                conn = driver_connection(tx.begin())
                rows = fetch(conn, sql, params)
                tx.on_commit(lambda: self._announce(queues))
                return rows
            if isinstance(tx, Connection):  # e.g. a projection's batch transaction
                conn = driver_connection(tx)
                rows = fetch(conn, sql, params)
                after_commit = tx.info.get(ANNOUNCE_AFTER_COMMIT)
                if isinstance(after_commit, set):
                    # The owner of the transaction (a projection worker running a reactor)
                    # announces the queues once it has committed: no NOTIFY in the
                    # transaction, whose commit would take PostgreSQL's notify lock.
                    after_commit.update(queues)
                else:
                    fetch(conn, self._sql.notify, self._notify_params(queues))
                return rows
        raise TypeError(
            f"tx must be a store {Transaction.__name__} or a SQLAlchemy"
            f" {Connection.__name__}, got {tx!r}"
        )

    # -- inspection and operations -------------------------------------------------------

    def list(
        self,
        statuses: Sequence[str] = ("pending", "running"),
        *,
        queue: str | None = None,
        limit: int = 100,
    ) -> Infos:
        """Commands in these states, oldest first (pending and running by default)."""
        params = self._list_params(statuses, queue, limit)
        return self._infos(self._run(self._sql.list, params))

    def dead(self, *, queue: str | None = None, limit: int = 100) -> Infos:
        """Dead commands with their last error and traceback, oldest first."""
        return self.list(("dead",), queue=queue, limit=limit)

    def get(self, command_id: int) -> CommandInfo | None:
        """One command by id (``None`` once it is done: acks delete commands)."""
        rows = self._run(self._sql.get, {"id": _command_id(command_id)})
        return CommandInfo(*rows[0]) if rows else None

    def retry(self, command_id: int, *, attempts: int = 1) -> None:
        """Give a dead command ``attempts`` more attempts, starting now."""
        rows = self._run(self._sql.retry, self._retry_params(command_id, attempts))
        if not rows:
            raise CommandNotFound(command_id, _why_not_dead(self.get(command_id)))
        self._announce([rows[0][0]])

    def purge(self, *, older_than: float | timedelta = 0, queue: str | None = None) -> int:
        """Delete dead commands last updated more than ``older_than`` ago; how many."""
        return len(self._run(self._sql.purge, self._purge_params(older_than, queue)))

    def counts(self) -> builtins.list[tuple[str, str, int, datetime]]:
        """(queue, status, count, oldest enqueue time) for every queue and state."""
        return self._counts(self._run(self._sql.counts, None))

    def _run(self, sql: str, params: dict[str, Any] | None) -> Rows:
        with self.store._raw() as conn:  # errors translated
            return fetch(conn, sql, params)
