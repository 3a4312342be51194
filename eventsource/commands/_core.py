"""What the parts of a command worker share: its slots, the commands they hold, wake-ups.

``CommandWorker`` (``_worker``) is put together from parts, each a mixin of ``_WorkerCore``:
the slots that claim and run batches of commands (``_slots``), the running and settling of
one attempt (``_attempt``) and the heartbeat that keeps leases alive (``_heartbeat``).
``_WorkerCore`` declares the state they share (set by ``CommandWorker.__init__``) and the few
operations on it that several of them use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from eventsource.commands._command import HandlerSpec
from eventsource.commands._queries import CommandQueries
from eventsource.runtime import Supervisor
from eventsource.store import EventStore

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__: list[str] = []


@dataclass(slots=True)
class _Claimed:
    """A command this worker claimed: the claim's row, then how its attempt is going."""

    id: int
    queue: str
    command_type: str
    payload: str
    attempt: int  # this attempt's number (counted in the table once it starts)
    max_attempts: int
    token: uuid.UUID
    correlation_id: str | None
    causation_id: str | None
    enqueued_at: datetime
    ordering_key: str | None
    priority: int
    run_at: datetime
    counted: bool  # its attempt is counted in the table (by the claim, for the first)
    trace_context: dict[str, Any] | None  # W3C headers of the span that enqueued it, if any
    timeout: float | None = None  # seconds this attempt may run
    deadline: float | None = None  # monotonic time after which the attempt has timed out
    started: bool = False  # its handler has started
    timed_out: bool = False  # failed by the heartbeat while its handler still runs


@dataclass
class _Slot:
    """One thread's share: the commands it holds (for the heartbeat)."""

    index: int
    held: dict[int, _Claimed] = field(default_factory=dict)
    avg_seconds: float | None = None  # moving average of one handler call (None: unknown)
    busy: bool = False
    running: int | None = None  # the command whose handler runs now


def _close(conn: psycopg.Connection[Any] | None) -> None:
    """Close a worker thread's own connection, if any; a broken one closes quietly."""
    if conn is not None:
        with suppress(psycopg.Error):
            conn.close()


class _WorkerCore:
    """The state a worker's threads share, and the operations on it that they have in common.

    ``_held_lock`` guards the slots' ``held`` commands and ``_zombie_keys``; ``_wake`` (with
    ``_generation``) wakes idle slots.
    """

    store: EventStore
    queues: list[str]
    worker_id: str
    handlers: dict[str, HandlerSpec]
    lease: float
    batch_size: int
    poll_interval: float
    grace: float
    backoff_base: float
    backoff_max: float
    default_timeout: float | None
    handler_loop: asyncio.AbstractEventLoop | None  # where async handlers run (None: own)
    # Async handlers running on handler_loop: cancelled when the grace period is over.
    _on_loop: set[concurrent.futures.Future[Any]]
    processed: int  # attempts finished (acked, retried or dead) by this worker
    _sql: CommandQueries
    _types: list[str]
    _idle_ms: str  # how long a handler's ``ctx.tx`` may sit idle (ms): about one lease
    _stop: threading.Event
    _wake: threading.Condition
    _generation: int
    _slots: list[_Slot]
    _held_lock: threading.Lock
    # Keys held for handlers that ran past their timeout, until their thread returns.
    _zombie_keys: dict[int, str]
    _log: FilteringBoundLogger
    _supervisor: Supervisor
    _processed_lock: threading.Lock

    def _notify_slots(self) -> None:
        """Wake every idle slot (to claim, or to see that the worker stops)."""
        with self._wake:
            self._generation += 1
            self._wake.notify_all()

    def _wake_one(self) -> None:
        """Wake one idle slot; a slot whose claim comes back full wakes the next (a chain)."""
        with self._wake:
            self._generation += 1
            self._wake.notify()

    def _held(self) -> list[_Claimed]:
        """The commands all slots hold now (call with ``_held_lock`` held)."""
        return [c for slot in self._slots for c in slot.held.values()]

    def _forget(self, slot: _Slot, *commands: _Claimed) -> None:
        """No longer hold these commands (no more lease extensions for them)."""
        with self._held_lock:
            for command in commands:
                slot.held.pop(command.id, None)

    def _count(self, n: int) -> None:
        """Count ``n`` more finished attempts in ``processed``."""
        with self._processed_lock:
            self.processed += n

    def _key_done(self, command: _Claimed, *, wake: bool = True) -> None:
        """The key of ``command`` is free: its next command may run now, here or elsewhere.

        ``wake=False`` when the calling slot claims again next anyway: no idle slot is woken
        to race it for the key's next command (other workers are told all the same).
        """
        if command.ordering_key is not None:
            if wake:
                self._wake_one()
            self.store._announcer.announce([command.queue], channel=self._sql.channel)
