"""Command workers: claim commands, run their handlers, ack, retry or dead-letter them.

A worker process runs ``concurrency`` slots, each a thread with its own connection that claims
a batch of ready commands (``FOR UPDATE SKIP LOCKED``), runs their handlers one after another
and acks the finished ones together. Every claim sets a lease and a fresh lease token; the
worker's heartbeat thread extends the leases of the commands it holds. A worker that dies
stops extending them, and any live worker reclaims the commands once their leases run out.

Acks, retries, dead-letters, lease extensions and releases all carry the attempt's lease token,
so a worker that outlived its lease (stalled, partitioned, or past its handler's timeout) can
never complete, fail or release a command that another worker now holds: its late writes
match no row and are dropped, and a handler's ``ctx.tx`` rolls back with them.

This module holds ``CommandWorker`` itself: its settings, its lifecycle (start, watch for
notifications, stop, shut down within ``grace``) and the threads it starts. Its parts are
the slots (``_slots``), one attempt's run and settlement (``_attempt``) and the heartbeat
(``_heartbeat``); ``_core`` has what they share.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

from eventsource._checks import check_int, check_name, check_seconds
from eventsource._errors import first_line, is_outage
from eventsource._logging import get_logger
from eventsource.commands._attempt import LeaseLost, backoff
from eventsource.commands._command import HandlerSpec, registered_handlers
from eventsource.commands._core import _Slot
from eventsource.commands._heartbeat import _Heartbeat
from eventsource.commands._queries import command_queries
from eventsource.commands._slots import _Slots
from eventsource.db import fetch
from eventsource.runtime import Listener, Supervisor, default_worker_id
from eventsource.store import EventStore

__all__ = ["CommandWorker", "LeaseLost", "backoff"]

log = get_logger("eventsource.worker")


class CommandWorker(_Slots, _Heartbeat):
    """Runs registered handlers for the commands of some queues until ``stop()``.

    ``lease`` is the visibility timeout in seconds (extended by heartbeat every ``lease / 4``
    while a handler runs); ``batch_size`` bounds a claim; ``listen=False`` polls every
    ``poll_interval`` seconds instead of waiting for LISTEN/NOTIFY (behind PgBouncer in
    transaction mode); ``grace`` is how long shutdown waits for running handlers.

    ``async def`` handlers run on an event loop of each slot thread's own, unless
    ``handler_loop`` is set before ``run()``: the running loop of another thread (an
    application's, see ``commands_running``) then runs them (``run_coroutine_threadsafe``),
    each slot thread waiting for its handler; timeouts cancel them there. Sync handlers always
    run on the slot threads.
    """

    def __init__(
        self,
        store: EventStore,
        queues: Sequence[str] = ("default",),
        *,
        concurrency: int = 4,
        worker_id: str | None = None,
        handlers: dict[str, HandlerSpec] | None = None,
        lease: float = 10.0,
        batch_size: int = 100,
        poll_interval: float = 1.0,
        listen: bool = True,
        grace: float = 30.0,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        default_timeout: float | None = None,
    ) -> None:
        """Check the settings (``ValueError``, ``TypeError``); nothing runs before ``run()``.

        Any queue name is accepted: ``enqueue(cmd, queue=...)`` may put a command of any type
        in any queue, so no queue can be known here to get nothing for ``handlers``
        (``eventsource worker run`` refuses a worker none of whose queues is served).
        """
        if isinstance(queues, str) or not queues:
            raise ValueError(f"queues must be a non-empty list of queue names, got {queues!r}")
        concurrency = check_int(concurrency, "concurrency", low=1, high=256)
        batch_size = check_int(batch_size, "batch_size", low=1, high=10_000)
        self.store = store
        self.queues = [check_name(q, "queue") for q in dict.fromkeys(queues)]
        self.concurrency = concurrency
        self.worker_id = check_name(worker_id, "worker_id") if worker_id else default_worker_id()
        self.handlers = registered_handlers() if handlers is None else dict(handlers)
        if not self.handlers:
            raise ValueError(
                "no command handlers are registered: import the module that defines them"
                " (functions decorated with @handler)"
            )
        self.lease = check_seconds(lease, "lease", low=0.5, high=86400)
        # A handler's ``ctx.tx`` may sit idle this long (ms): about one lease.
        self._idle_ms = str(max(1000, int(self.lease * 1000)))
        self.batch_size = batch_size
        self.poll_interval = check_seconds(poll_interval, "poll_interval", low=0.01)
        self.listen = listen
        self.grace = check_seconds(grace, "grace")
        self.backoff_base = check_seconds(backoff_base, "backoff_base")
        self.backoff_max = check_seconds(backoff_max, "backoff_max", high=365 * 86400)
        self.default_timeout = (
            None
            if default_timeout is None
            else check_seconds(default_timeout, "default_timeout", low=0.001)
        )
        self._sql = command_queries(store.schema)
        self._types = sorted(self.handlers)
        self._remaining_params = {"queues": self.queues, "types": self._types}
        # The claim: of one queue in the order of its index, or of several.
        one_queue = len(self.queues) == 1
        self._claim_sql = self._sql.claim_one_queue if one_queue else self._sql.claim
        self._claim_params = {
            "queue" if one_queue else "queues": self.queues[0] if one_queue else self.queues,
            "types": self._types,
            "lease": self.lease,
            "worker": self.worker_id,
        }
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._generation = 0
        self._slots = [_Slot(i) for i in range(concurrency)]
        self._held_lock = threading.Lock()
        self._zombie_keys = {}
        self._on_loop = set()
        self._log = log.bind(worker=self.worker_id)
        self._supervisor = Supervisor(self._log, self.stop)
        self.processed = 0
        self._processed_lock = threading.Lock()

    # -- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; running handlers finish (within ``grace``), the rest is released."""
        self._stop.set()
        self._notify_slots()

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called (or the worker is shutting down for another reason)."""
        return self._stop.is_set()

    def run(self, *, stop_when_idle: bool = False) -> None:
        """Work until ``stop()`` (or, with ``stop_when_idle``, until no command is left).

        An unreachable database or a schema without the command queue raises at once
        (``DatabaseUnavailable``, ``SchemaNotReady``); later outages are waited out. A thread
        of the worker that dies stops it: ``WorkerCrashed`` is raised once it has stopped.
        """
        with self.store._raw() as conn:
            fetch(conn, self._sql.remaining, self._remaining_params)
        self._log.info(
            "worker started",
            queues=self.queues,
            concurrency=self.concurrency,
            handlers=len(self.handlers),
            listen=self.listen,
        )
        supervisor = self._supervisor
        threads = [
            supervisor.spawn(self._slot_loop, f"command-slot-{i}", slot)
            for i, slot in enumerate(self._slots)
        ]
        beat = supervisor.spawn(self._heartbeat_loop, "command-heartbeat")
        try:
            self._watch(stop_when_idle)
        except BaseException as exc:
            supervisor.crashed("main", exc)
            raise
        finally:
            self._stop.set()
            self._notify_slots()
            deadline = time.monotonic() + self.grace
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            self._abandon([t for t in threads if t.is_alive()])
            beat.join(timeout=5)
            self._log.info("worker stopped", processed=self.processed)
        supervisor.check()

    def _watch(self, stop_when_idle: bool) -> None:
        """The main thread: wake idle slots on NOTIFY; with ``stop_when_idle``, watch the queue."""
        listener = Listener(self.store.url, [self._sql.listen], self._log) if self.listen else None
        if listener is not None:
            listener.open()
        self._started()
        try:
            while not self._stop.is_set():
                if stop_when_idle and self._idle():
                    return
                if listener is None:
                    self._stop.wait(0.1 if stop_when_idle else self.poll_interval)
                    self._notify_slots()
                    continue
                timeout = 0.1 if stop_when_idle else self.poll_interval
                if listener.wait(timeout, self._stop):
                    # A notification, or LISTEN came back (catch up on the gap): claim.
                    self._wake_one()
                elif not listener.listening:
                    self._notify_slots()  # deaf: poll
        finally:
            if listener is not None:
                listener.close()

    # Set before ``run()`` to run async handlers on that (running) loop: see the class doc.
    handler_loop: asyncio.AbstractEventLoop | None = None

    def _started(self) -> None:
        """The worker has started: schema checked, threads running, listening (a hook)."""

    def _idle(self) -> bool:
        """Whether no slot is busy and no command for this worker is pending or running.

        Not while the database is unreachable: the worker waits for it to come back.
        """
        if any(slot.busy or slot.held for slot in self._slots):
            return False
        try:
            with self.store._raw() as conn:
                rows = fetch(conn, self._sql.remaining, self._remaining_params)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._log.warning("database unavailable", error=first_line(exc))
            return False
        return int(rows[0][0]) == 0
