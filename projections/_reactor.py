"""Reactors: event handlers that turn events into commands, exactly once per event.

    class StatementOnLargeDeposit(Reactor):
        name = "bank.statement-on-large-deposit"

        @handles(MoneyDeposited)
        def on_deposit(self, event, record, tx) -> None:
            if event.amount >= 1000:
                self.enqueue(SendStatement(account_id=record.stream_id), tx)

A reactor runs on the projection runtime (partitions, leases, checkpoints): its enqueues join
the batch's transaction, the one that moves its checkpoint, so a crash never loses an event's
commands nor enqueues them twice. Reactors are not replayed (that would enqueue every command
again). ``start_at_head = True`` makes a new reactor begin at the log's current head instead of
its beginning, so that deploying it does not react to history.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from sqlalchemy import Connection

from eventsource import (
    Command,
    CommandQueue,
    Enqueued,
    EventStore,
    ReactorNotAttached,
    RecordedEvent,
)
from eventsource._internal import check_bool, linked, tracing
from projections._projection import Projection

__all__ = ["Reactor"]


class Reactor(Projection):
    """A projection whose handlers enqueue commands with ``self.enqueue(command, tx)``."""

    start_at_head: ClassVar[bool] = False
    _queue: CommandQueue | None = None
    _record: RecordedEvent | None = None  # the event whose handlers run now

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_bool(cls.start_at_head, f"{cls.__qualname__}.start_at_head")

    def attach(self, store: EventStore) -> None:
        """Bind the reactor to the store whose command queue it feeds (done by the worker)."""
        self._queue = CommandQueue(store)

    def enqueue(self, command: Command, tx: Connection, **options: Any) -> Enqueued:
        """Enqueue ``command`` in the batch's transaction ``tx`` (committed with the checkpoint).

        ``options`` are those of ``CommandQueue.enqueue``: queue, delay, run_at, priority,
        dedupe_key, ordering_key, max_attempts.
        """
        if self._queue is None:
            raise ReactorNotAttached(self.name)
        if "tx" in options:
            raise TypeError("pass the batch's transaction as the second argument, not tx=")
        with linked(self._record):  # the enqueue's span links to the event's
            return self._queue.enqueue(command, tx=tx, **options)

    def handle_batch(self, records: Sequence[RecordedEvent], tx: Connection) -> None:
        """Apply one batch as ``Projection.handle_batch`` does, one event after another, so
        that each command's enqueue span links to the span that appended its event (with no
        tracer provider there is nothing to link: the batch is applied in one call)."""
        if not tracing():
            super().handle_batch(records, tx)
            return
        try:
            for record in records:
                self._record = record
                super().handle_batch((record,), tx)
        finally:
            self._record = None
