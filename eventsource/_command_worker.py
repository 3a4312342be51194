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
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from ._command_queries import CommandQueries
from ._commands import CommandContext, HandlerSpec, registered_handlers
from ._context import correlation
from ._core import conninfo
from ._errors import DatabaseUnavailable, EventSourceError
from ._logging import get_logger
from ._loop import close_thread_loop, run_on_thread_loop
from ._store import EventStore, _driver, _fetch

__all__ = ["CommandWorker", "LeaseLost"]

log = get_logger("eventsource.worker")

ERROR_LIMIT = 4000  # characters of error text kept per command
TRACEBACK_LIMIT = 20000


class LeaseLost(EventSourceError):
    """The attempt's lease was taken over (it ran out); its result was not recorded."""


@dataclass(slots=True)
class _Claimed:
    id: int
    queue: str
    command_type: str
    payload: str
    attempt: int
    max_attempts: int
    token: uuid.UUID
    correlation_id: str | None
    causation_id: str | None
    enqueued_at: datetime
    timeout: float | None = None  # seconds this attempt may run
    deadline: float | None = None  # monotonic time after which the attempt has timed out
    done: bool = False


@dataclass
class _Slot:
    """One thread's share: the commands it holds (for the heartbeat)."""

    index: int
    held: dict[int, _Claimed] = field(default_factory=dict)
    avg_seconds: float | None = None  # moving average of one handler call (None: unknown)
    busy: bool = False
    running: int | None = None  # the command whose handler runs now


def timed_out(timeout: float) -> str:
    """The error recorded for an attempt that ran past its timeout."""
    return f"TimeoutError: the handler ran longer than its timeout of {timeout:g} s"


def storable(text: str) -> str:
    """Error text PostgreSQL accepts: NUL and lone surrogates escaped, never refused."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [0.5, 1] of min(cap, base * 2^(n-1))."""
    ceiling: float = min(cap, base * 2.0 ** min(attempt - 1, 30))
    return ceiling * (0.5 + random.random() / 2)


class CommandWorker:
    """Runs registered handlers for the commands of some queues until ``stop()``.

    ``lease`` is the visibility timeout in seconds (extended by heartbeat every ``lease / 4``
    while a handler runs); ``batch_size`` bounds a claim; ``listen=False`` polls every
    ``poll_interval`` seconds instead of waiting for LISTEN/NOTIFY (behind PgBouncer in
    transaction mode); ``grace`` is how long shutdown waits for running handlers.
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
        if isinstance(queues, str) or not queues:
            raise ValueError(f"queues must be a non-empty list of queue names, got {queues!r}")
        if not 1 <= concurrency <= 256:
            raise ValueError(f"concurrency must be from 1 to 256, got {concurrency}")
        if lease < 0.5:
            raise ValueError(f"lease must be at least 0.5 seconds, got {lease}")
        self.store = store
        self.queues = list(dict.fromkeys(queues))
        self.concurrency = concurrency
        self.worker_id = worker_id or default_worker_id()
        self.handlers = registered_handlers() if handlers is None else dict(handlers)
        if not self.handlers:
            raise ValueError(
                "no command handlers are registered: import the module that defines them"
                " (functions decorated with @handler)"
            )
        self.lease = float(lease)
        self.batch_size = max(1, batch_size)
        self.poll_interval = poll_interval
        self.listen = listen
        self.grace = grace
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.default_timeout = default_timeout
        self._sql: CommandQueries = store._command_queries
        self._types = sorted(self.handlers)
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._generation = 0
        self._slots = [_Slot(i) for i in range(concurrency)]
        self._held_lock = threading.Lock()
        self._log = log.bind(worker=self.worker_id)
        self.processed = 0  # attempts finished (acked, retried or dead) by this worker
        self._processed_lock = threading.Lock()

    # -- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; running handlers finish (within ``grace``), the rest is released."""
        self._stop.set()
        self._notify_slots()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, stop_when_idle: bool = False) -> None:
        """Work until ``stop()`` (or, with ``stop_when_idle``, until no command is left).

        An unreachable database or a schema without the command queue raises at once
        (``DatabaseUnavailable``, ``SchemaNotReady``); later outages are waited out.
        """
        with self.store._raw() as conn:
            _fetch(conn, self._sql.remaining, {"queues": self.queues, "types": self._types})
        self._log.info(
            "worker started",
            queues=self.queues,
            concurrency=self.concurrency,
            handlers=len(self.handlers),
            listen=self.listen,
        )
        threads = [
            threading.Thread(target=self._slot_loop, args=(slot,), name=f"command-slot-{i}")
            for i, slot in enumerate(self._slots)
        ]
        beat = threading.Thread(target=self._heartbeat_loop, name="command-heartbeat", daemon=True)
        for thread in threads:
            thread.daemon = True
            thread.start()
        beat.start()
        try:
            self._watch(stop_when_idle)
        finally:
            self._stop.set()
            self._notify_slots()
            deadline = time.monotonic() + self.grace
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            self._abandon([t for t in threads if t.is_alive()])
            beat.join(timeout=5)
            self._log.info("worker stopped", processed=self.processed)

    def _watch(self, stop_when_idle: bool) -> None:
        """The main thread: wake idle slots on NOTIFY; with ``stop_when_idle``, watch the queue."""
        listener = self._listen() if self.listen else None
        try:
            while not self._stop.is_set():
                if stop_when_idle and self._idle():
                    return
                if listener is None:
                    self._stop.wait(0.1 if stop_when_idle else self.poll_interval)
                    self._notify_slots()
                    continue
                try:
                    woke = False
                    for _ in listener.notifies(timeout=0.25, stop_after=1):
                        woke = True
                    if woke:
                        self._wake_one()
                except psycopg.OperationalError:
                    self._log.warning("LISTEN connection lost; reconnecting")
                    listener.close()
                    self._stop.wait(1.0)
                    listener = self._listen()
                    if listener is None:
                        self._stop.wait(self.poll_interval)
        finally:
            if listener is not None:
                listener.close()

    def _listen(self) -> psycopg.Connection[Any] | None:
        try:
            conn = psycopg.connect(conninfo(self.store.url), autocommit=True)
            conn.execute(self._sql.listen)
        except psycopg.Error as exc:
            self._log.warning("LISTEN unavailable; polling only", error=str(exc))
            return None
        return conn

    def _notify_slots(self) -> None:
        with self._wake:
            self._generation += 1
            self._wake.notify_all()

    def _wake_one(self) -> None:
        """Wake one idle slot; a slot whose claim comes back full wakes the next (a chain)."""
        with self._wake:
            self._generation += 1
            self._wake.notify()

    def _idle(self) -> bool:
        if any(slot.busy or slot.held for slot in self._slots):
            return False
        rows = self._query(self._sql.remaining, {"queues": self.queues, "types": self._types})
        return int(rows[0][0]) == 0

    # -- slots ---------------------------------------------------------------------------

    def _slot_loop(self, slot: _Slot) -> None:
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self._stop.is_set():
                with self._wake:
                    generation = self._generation
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(
                            conninfo(self.store.url),
                            autocommit=True,
                            prepare_threshold=self.store._prepare_threshold,
                        )
                    claimed = self._claim(conn, slot)
                    if claimed:
                        self._work(conn, slot, claimed)
                        continue
                except psycopg.Error as exc:
                    # The connection broke, or a statement failed: give up what this slot
                    # holds (its leases run out and the commands are reclaimed), start afresh.
                    self._log.warning("slot failed", slot=slot.index, error=str(exc))
                    with self._held_lock:
                        slot.held.clear()
                    slot.busy = False
                    if conn is not None:
                        conn.close()
                    conn = None
                    self._stop.wait(1.0)
                    continue
                with self._wake:
                    if self._generation == generation and not self._stop.is_set():
                        self._wake.wait(self.poll_interval)
        finally:
            close_thread_loop()
            if conn is not None:
                conn.close()

    def _claim(self, conn: psycopg.Connection[Any], slot: _Slot) -> list[_Claimed]:
        # Claim about 0.1 s of work: many commands when handlers are quick, one when slow
        # (and one until this slot has timed a handler), so that idle slots and other
        # workers are not kept waiting behind a long batch.
        avg = slot.avg_seconds
        limit = 1 if avg is None else max(1, min(self.batch_size, int(0.1 / max(avg, 1e-6))))
        slot.busy = True
        rows = _fetch(
            conn,
            self._sql.claim,
            {
                "queues": self.queues,
                "types": self._types,
                "limit": limit,
                "lease": self.lease,
                "worker": self.worker_id,
            },
        )
        claimed = [_Claimed(*row) for row in rows]
        with self._held_lock:
            for command in claimed:
                slot.held[command.id] = command
        if not claimed:
            slot.busy = False
        elif len(claimed) == limit:
            self._wake_one()  # there may be more: let another idle slot claim too
        return claimed

    def _work(self, conn: psycopg.Connection[Any], slot: _Slot, claimed: list[_Claimed]) -> None:
        acks: list[_Claimed] = []
        flushed = time.monotonic()
        try:
            for index, command in enumerate(claimed):
                if self._stop.is_set():
                    self._release(conn, slot, claimed[index:])
                    break
                started = time.monotonic()
                slot.running = command.id
                try:
                    if self._run_one(conn, slot, command):
                        acks.append(command)
                finally:
                    slot.running = None
                now = time.monotonic()
                took = now - started
                avg = slot.avg_seconds
                slot.avg_seconds = took if avg is None else (avg + took) / 2
                if acks and now - flushed > 0.05:  # ack finished work at least every 50 ms
                    self._ack(conn, slot, acks)
                    acks, flushed = [], now
        finally:
            if acks:
                self._ack(conn, slot, acks)
            slot.busy = False

    def _run_one(self, conn: psycopg.Connection[Any], slot: _Slot, command: _Claimed) -> bool:
        """Run one attempt; True when it succeeded without a transaction (ack it in a batch)."""
        spec = self.handlers[command.command_type]
        timeout = spec.timeout if spec.timeout is not None else self.default_timeout
        if timeout is not None:
            command.timeout, command.deadline = timeout, time.monotonic() + timeout
        bound = self._log.bind(
            command_id=command.id,
            command_type=command.command_type,
            attempt=command.attempt,
            correlation_id=command.correlation_id,
        )
        try:
            with ExitStack() as stack:
                ctx = CommandContext(
                    command.id,
                    command.attempt,
                    command.max_attempts,
                    command.queue,
                    command.command_type,
                    command.enqueued_at,
                    command.correlation_id,
                    self.worker_id,
                    bound,
                    lambda: stack.enter_context(self.store.transaction()),
                )
                stack.callback(ctx._end)  # runs last: no transaction opens after the attempt
                with correlation(
                    command.correlation_id or f"command:{command.id}", f"command:{command.id}"
                ):
                    cmd = spec.command.model_validate_json(command.payload)
                    result = spec.fn(cmd, ctx)
                    if spec.is_async:
                        run_on_thread_loop(asyncio.wait_for(result, timeout))
                if ctx._tx is not None:
                    # The ack joins the handler's transaction: its writes commit only while
                    # this attempt still holds the lease.
                    acked = _fetch(
                        _driver(ctx._tx.connection),
                        self._sql.ack_one,
                        {"id": command.id, "token": command.token},
                    )
                    if not acked:
                        raise LeaseLost(
                            f"command {command.id} attempt {command.attempt}: the lease ran out"
                            " before the handler finished; its writes were rolled back"
                        )
        except LeaseLost as exc:
            bound.warning("lease lost; result dropped", error=str(exc))
            self._forget(slot, command)
            return False
        except Exception as exc:
            self._failed(conn, slot, command, exc, bound)
            return False
        if ctx._tx is not None:
            self._forget(slot, command)
            self._count(1)
            bound.debug("command done")
            return False
        return True

    def _failed(
        self,
        conn: psycopg.Connection[Any],
        slot: _Slot,
        command: _Claimed,
        exc: BaseException,
        bound: Any,
    ) -> None:
        if isinstance(exc, TimeoutError | asyncio.TimeoutError) and command.timeout is not None:
            error = timed_out(command.timeout)
        else:
            error = f"{type(exc).__name__}: {exc}"
        trace = "".join(traceback.format_exception(exc))
        self._record_failure(conn, command, error, trace, bound)
        self._forget(slot, command)

    def _record_failure(
        self,
        conn: psycopg.Connection[Any],
        command: _Claimed,
        error: str,
        trace: str | None,
        bound: Any,
    ) -> None:
        delay = backoff(command.attempt, self.backoff_base, self.backoff_max)
        rows = _fetch(
            conn,
            self._sql.fail,
            {
                "id": command.id,
                "token": command.token,
                "delay": delay,
                "error": storable(error[:ERROR_LIMIT]),
                "traceback": storable(trace[-TRACEBACK_LIMIT:]) if trace else None,
            },
        )
        self._count(1)
        if not rows:
            bound.warning("attempt failed after its lease ran out; not recorded", error=error)
        elif rows[0][0] == "dead":
            bound.error("command dead: no attempts left", error=error, attempts=rows[0][1])
        else:
            bound.warning("attempt failed; will retry", error=error, retry_in=round(delay, 3))
            if delay < self.poll_interval:  # wake a slot when the retry is due
                timer = threading.Timer(delay, self._notify_slots)
                timer.daemon = True
                timer.start()

    def _ack(self, conn: psycopg.Connection[Any], slot: _Slot, acks: list[_Claimed]) -> None:
        rows = _fetch(
            conn,
            self._sql.ack,
            {"ids": [c.id for c in acks], "tokens": [c.token for c in acks]},
        )
        if len(rows) < len(acks):
            acked = {int(row[0]) for row in rows}
            for command in acks:
                if command.id not in acked:
                    self._log.warning(
                        "ack dropped: the lease ran out and the command was reclaimed",
                        command_id=command.id,
                        attempt=command.attempt,
                    )
        self._forget(slot, *acks)
        self._count(len(rows))

    def _release(
        self, conn: psycopg.Connection[Any], slot: _Slot, commands: list[_Claimed]
    ) -> None:
        """Hand back claimed commands whose handlers have not started (no attempt spent)."""
        _fetch(
            conn,
            self._sql.release,
            {"ids": [c.id for c in commands], "tokens": [c.token for c in commands]},
        )
        self._forget(slot, *commands)

    def _forget(self, slot: _Slot, *commands: _Claimed) -> None:
        """No longer hold these commands (no more lease extensions for them)."""
        with self._held_lock:
            for command in commands:
                slot.held.pop(command.id, None)

    def _count(self, n: int) -> None:
        with self._processed_lock:
            self.processed += n

    # -- heartbeat -----------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        """Extend held leases, time out overdue attempts, reclaim expired leases of others."""
        conn: psycopg.Connection[Any] | None = None
        interval = max(0.1, self.lease / 4)
        beats = 0
        while True:
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(conninfo(self.store.url), autocommit=True)
                self._beat(conn, check_unhandled=beats % 20 == 0)
            except psycopg.Error as exc:
                self._log.warning("heartbeat failed", error=str(exc))
                if conn is not None:
                    conn.close()
                conn = None
            beats += 1
            if not self._stop.is_set():
                self._stop.wait(interval)
            elif any(slot.held for slot in self._slots):
                time.sleep(interval)  # shutting down: keep the running handlers' leases
            else:
                break
        if conn is not None:
            conn.close()

    def _beat(self, conn: psycopg.Connection[Any], *, check_unhandled: bool) -> None:
        now = time.monotonic()
        with self._held_lock:
            held = [c for slot in self._slots for c in slot.held.values()]
        overdue = [c for c in held if c.deadline is not None and now > c.deadline]
        live = [c for c in held if c.deadline is None or now <= c.deadline]
        for command in overdue:
            # A sync handler cannot be interrupted: fail the attempt here (a new token), so
            # whatever it does when it returns is dropped by the fence.
            self._record_failure(
                conn,
                command,
                timed_out(command.timeout or 0),
                None,
                self._log.bind(command_id=command.id, attempt=command.attempt),
            )
            with self._held_lock:
                for slot in self._slots:
                    slot.held.pop(command.id, None)
        if live:
            rows = _fetch(
                conn,
                self._sql.extend,
                {
                    "ids": [c.id for c in live],
                    "tokens": [c.token for c in live],
                    "lease": self.lease,
                },
            )
            if len(rows) < len(live):
                kept = {int(row[0]) for row in rows}
                lost = [c.id for c in live if c.id not in kept]
                # Acked in the meantime, or reclaimed after the lease ran out.
                self._log.debug("leases not extended", commands=lost)
        reclaimed = _fetch(conn, self._sql.reap)
        for command_id, status, command_type in reclaimed:
            self._log.warning(
                "reclaimed a command whose lease ran out",
                command_id=command_id,
                command_type=command_type,
                status=status,
            )
        if check_unhandled:
            params = {"worker": self.worker_id, "queues": self.queues, "types": self._types}
            for command_id, command_type in _fetch(conn, self._sql.unhandled, params):
                self._log.error(
                    "no handler for this command type in this worker",
                    command_id=command_id,
                    command_type=command_type,
                )
        if reclaimed or overdue:
            self._notify_slots()

    def _abandon(self, threads: Iterable[threading.Thread]) -> None:
        """After the grace period: fail the attempts still running (they are retried
        elsewhere, and the late finishers' acks are fenced off) and hand back the commands
        claimed behind them, whose handlers never started."""
        stuck = [t.name for t in threads]
        if not stuck:
            return
        with self._held_lock:
            running = [
                slot.held[slot.running]
                for slot in self._slots
                if slot.running is not None and slot.running in slot.held
            ]
            waiting = [
                c for slot in self._slots for c in slot.held.values() if c.id != slot.running
            ]
            for slot in self._slots:
                slot.held.clear()
        self._log.warning("grace period over; abandoning running handlers", slots=stuck)
        try:
            with psycopg.connect(conninfo(self.store.url), autocommit=True) as conn:
                for command in running:
                    self._record_failure(
                        conn,
                        command,
                        "WorkerShutdown: the worker stopped before the handler finished"
                        f" (grace period {self.grace:g} s)",
                        None,
                        self._log.bind(command_id=command.id),
                    )
                if waiting:
                    _fetch(
                        conn,
                        self._sql.release,
                        {"ids": [c.id for c in waiting], "tokens": [c.token for c in waiting]},
                    )
        except psycopg.Error as exc:
            self._log.warning("could not record abandoned attempts", error=str(exc))

    def _query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        try:
            with self.store._raw() as conn:
                return _fetch(conn, sql, params)
        except DatabaseUnavailable as exc:
            self._log.warning("database unavailable", error=str(exc))
            return [(1,)]


def run_worker(
    store: EventStore,
    queues: Sequence[str] = ("default",),
    *,
    stop_when_idle: bool = False,
    **options: Any,
) -> CommandWorker:
    """Run a worker in this thread; with ``stop_when_idle`` it returns once nothing is left."""
    worker = CommandWorker(store, queues, **options)
    worker.run(stop_when_idle=stop_when_idle)
    return worker
