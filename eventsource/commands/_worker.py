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
import random
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from pydantic import ValidationError

from eventsource._checks import check_name, check_seconds
from eventsource._context import correlation
from eventsource._errors import EventSourceError
from eventsource._logging import get_logger
from eventsource._translate import first_line, is_outage
from eventsource.commands._command import CommandContext, HandlerSpec, registered_handlers
from eventsource.commands._queries import CommandQueries, command_queries
from eventsource.db import driver_connection, fetch
from eventsource.runtime import (
    Backoff,
    Listener,
    Supervisor,
    close_thread_loop,
    connect,
    default_worker_id,
    run_on_thread_loop,
)
from eventsource.store import EventStore, Transaction

__all__ = ["CommandWorker", "LeaseLost"]

log = get_logger("eventsource.worker")

COUNT_EVERY = 0.1  # seconds between two looks for handlers that started (their attempts)
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


def timed_out(timeout: float) -> str:
    """The error recorded for an attempt that ran past its timeout."""
    return f"TimeoutError: the handler ran longer than its timeout of {timeout:g} s"


def storable(text: str) -> str:
    """Error text PostgreSQL accepts: NUL and lone surrogates escaped, never refused."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


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
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise TypeError(f"concurrency must be an int, got {concurrency!r}")
        if not 1 <= concurrency <= 256:
            raise ValueError(f"concurrency must be from 1 to 256, got {concurrency}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an int, got {batch_size!r}")
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
        self.batch_size = max(1, min(batch_size, 10_000))
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
        self._sql: CommandQueries = command_queries(store.schema)
        self._types = sorted(self.handlers)
        # The claim: of one queue in the order of its index, or of several.
        one_queue = len(self.queues) == 1
        self._claim_sql = self._sql.claim_one_queue if one_queue else self._sql.claim
        self._claim_params: dict[str, Any] = {
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
        # Keys held for handlers that ran past their timeout, until their thread returns.
        self._zombie_keys: dict[int, str] = {}
        self._log = log.bind(worker=self.worker_id)
        self._supervisor = Supervisor(self._log, self.stop)
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
        (``DatabaseUnavailable``, ``SchemaNotReady``); later outages are waited out. A thread
        of the worker that dies stops it: ``WorkerCrashed`` is raised once it has stopped.
        """
        with self.store._raw() as conn:
            fetch(conn, self._sql.remaining, {"queues": self.queues, "types": self._types})
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
        """Claim and run commands until stopped; outages are waited out, anything else kills."""
        conn: psycopg.Connection[Any] | None = None
        backoff = Backoff()
        try:
            while not self._stop.is_set():
                with self._wake:
                    generation = self._generation
                try:
                    if conn is None or conn.closed:
                        conn = connect(
                            self.store.url, prepare_threshold=self.store._prepare_threshold
                        )
                    claimed = self._claim(conn, slot)
                    if claimed:
                        self._work(conn, slot, claimed)
                    if backoff.reset():
                        self._log.info("database available again", slot=slot.index)
                    if claimed:
                        continue
                except psycopg.Error as exc:
                    # The connection broke (an outage), or the server refused a statement of
                    # the queue's own: give up what this slot holds (the commands that never
                    # started are not charged an attempt; their leases run out and they are
                    # reclaimed), and start afresh on a new connection after a pause.
                    if backoff.failures == 0:
                        level = self._log.warning if is_outage(exc) else self._log.error
                        level(
                            "slot lost its connection; retrying",
                            slot=slot.index,
                            error=first_line(exc),
                            outage=is_outage(exc),
                        )
                    with self._held_lock:
                        slot.held.clear()
                    slot.busy = False
                    if conn is not None:
                        with suppress(psycopg.Error):
                            conn.close()
                    conn = None
                    self._stop.wait(backoff.next())
                    continue
                with self._wake:
                    if self._generation == generation and not self._stop.is_set():
                        self._wake.wait(self.poll_interval)
        finally:
            close_thread_loop()
            if conn is not None:
                with suppress(psycopg.Error):
                    conn.close()

    def _claim(self, conn: psycopg.Connection[Any], slot: _Slot) -> list[_Claimed]:
        # Claim about 0.1 s of work: many commands when handlers are quick, one when slow
        # (and one until this slot has timed a handler), so that idle slots and other
        # workers are not kept waiting behind a long batch.
        avg = slot.avg_seconds
        limit = 1 if avg is None else max(1, min(self.batch_size, int(0.1 / max(avg, 1e-6))))
        slot.busy = True
        rows = fetch(conn, self._claim_sql, {**self._claim_params, "limit": limit})
        # In the claim's order: the first (its attempt counted by the claim), then by
        # priority, time and id.
        claimed = sorted(
            (_Claimed(*row) for row in rows),
            key=lambda c: (not c.counted, -c.priority, c.run_at, c.id),
        )
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
                command.started = True
                try:
                    if self._run_one(conn, slot, command):
                        acks.append(command)
                finally:
                    slot.running = None
                now = time.monotonic()
                took = now - started
                avg = slot.avg_seconds
                slot.avg_seconds = took if avg is None else (avg + took) / 2
                # Ack finished work at least every 50 ms, and at once when a command of an
                # ordering key is done: the key's next command waits for that ack.
                if acks and (now - flushed > 0.05 or acks[-1].ordering_key is not None):
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
                    lambda: self._handler_tx(stack),
                )
                stack.callback(ctx._end)  # runs last: no transaction opens after the attempt
                with correlation(
                    command.correlation_id or f"command:{command.id}", f"command:{command.id}"
                ):
                    cmd = _decode(spec, command)
                    result = spec.fn(cmd, ctx)
                    if spec.is_async:
                        run_on_thread_loop(asyncio.wait_for(result, timeout))
                if command.timed_out:
                    raise LeaseLost(
                        f"command {command.id} attempt {command.attempt} ran past its timeout"
                        f" of {command.timeout:g} s and was failed; its result was dropped"
                    )
                if ctx._tx is not None:
                    # The ack joins the handler's transaction: its writes commit only while
                    # this attempt still holds the lease.
                    acked = fetch(
                        driver_connection(ctx._tx.connection),
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
            self._free_zombie_key(conn, command)
            return False
        except Exception as exc:
            if command.timed_out:
                bound.warning(
                    "handler returned after its timeout; result dropped",
                    error=f"{type(exc).__name__}: {exc}",
                )
                self._forget(slot, command)
                self._free_zombie_key(conn, command)
                return False
            self._failed(conn, slot, command, exc, bound)
            return False
        if ctx._tx is not None:
            self._forget(slot, command)
            self._count(1)
            self._key_done(command)
            bound.debug("command done")
            return False
        return True

    def _handler_tx(self, stack: ExitStack) -> Transaction:
        """A handler's ``ctx.tx``: a store transaction that may not sit idle past a lease.

        A worker frozen while its handler holds locks through ``ctx.tx`` (SIGSTOP, a paused
        VM) keeps its TCP connection alive; the server ends the session instead.
        """
        tx = stack.enter_context(self.store.transaction())
        fetch(driver_connection(tx.connection), self._sql.idle_timeout, {"ms": self._idle_ms})
        return tx

    def _free_zombie_key(self, conn: psycopg.Connection[Any], command: _Claimed) -> None:
        """A handler that ran past its timeout has returned: its key is free again."""
        with self._held_lock:
            key = self._zombie_keys.pop(command.id, None)
        if key is not None:
            fetch(conn, self._sql.release_key, {"key": key, "id": command.id})
            self._key_done(command)

    def _key_done(self, command: _Claimed) -> None:
        """The key of ``command`` is free: its next command may run now, here or elsewhere."""
        if command.ordering_key is not None:
            self._wake_one()
            self.store._announcer.announce([command.queue], channel=self._sql.channel)

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
        self._key_done(command)

    def _record_failure(
        self,
        conn: psycopg.Connection[Any],
        command: _Claimed,
        error: str,
        trace: str | None,
        bound: Any,
        *,
        keep_key: bool = False,
    ) -> None:
        delay = backoff(command.attempt, self.backoff_base, self.backoff_max)
        rows = fetch(
            conn,
            self._sql.fail,
            {
                "id": command.id,
                "token": command.token,
                "attempt": command.attempt,
                "delay": delay,
                "error": storable(error[:ERROR_LIMIT]),
                "traceback": storable(trace[-TRACEBACK_LIMIT:]) if trace else None,
                "keep_key": keep_key,
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
        rows = fetch(
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
        for command in acks:
            if command.ordering_key is not None:
                self._key_done(command)
                break

    def _release(
        self, conn: psycopg.Connection[Any], slot: _Slot, commands: list[_Claimed]
    ) -> None:
        """Hand back claimed commands whose handlers have not started (no attempt spent)."""
        fetch(conn, self._sql.release, _unstarted(commands))
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
        backoff = Backoff()
        next_beat = 0.0
        while True:
            try:
                if conn is None or conn.closed:
                    conn = connect(self.store.url)
                if time.monotonic() >= next_beat or self._stop.is_set():
                    self._beat(conn, check_unhandled=beats % 20 == 0)
                    next_beat = time.monotonic() + interval
                    beats += 1
                else:
                    self._count_started(conn)
                backoff.reset()
            except psycopg.Error as exc:
                if backoff.failures == 0:
                    self._log.warning(
                        "heartbeat failed", error=first_line(exc), outage=is_outage(exc)
                    )
                backoff.next()
                if conn is not None:
                    with suppress(psycopg.Error):
                        conn.close()
                conn = None
            if not self._stop.is_set():
                # Between beats, count the attempts of handlers that started meanwhile.
                self._stop.wait(COUNT_EVERY if backoff.failures == 0 else 1.0)
            elif any(slot.held for slot in self._slots) or self._zombie_keys:
                time.sleep(interval)  # shutting down: keep the running handlers' leases
            else:
                break
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()

    def _count_started(self, conn: psycopg.Connection[Any]) -> None:
        """Count the attempts of the handlers that started since the last look.

        The claim counts the first command of its batch; the others are counted here (every
        ``COUNT_EVERY`` seconds, one statement for all of them, nothing when none started),
        so that a command that never started is never charged an attempt, at no cost per
        command. A worker killed within that moment of a handler's start leaves its attempt
        uncounted: the command runs again under the same attempt number (delivery is at
        least once either way).
        """
        with self._held_lock:
            fresh = [
                c for slot in self._slots for c in slot.held.values() if c.started and not c.counted
            ]
        if not fresh:
            return
        rows = fetch(conn, self._sql.extend, {**_held_params(fresh), "lease": self.lease})
        counted = {int(row[0]) for row in rows}
        for command in fresh:
            if command.id in counted:
                command.counted = True

    def _beat(self, conn: psycopg.Connection[Any], *, check_unhandled: bool) -> None:
        now = time.monotonic()
        with self._held_lock:
            held = [c for slot in self._slots for c in slot.held.values()]
        overdue = [c for c in held if c.deadline is not None and now > c.deadline]
        live = [c for c in held if c.deadline is None or now <= c.deadline]
        for command in overdue:
            # A sync handler cannot be interrupted: fail the attempt here (a new token), so
            # whatever it does when it returns is dropped by the fence. Its ordering key stays
            # taken until its thread returns, so that nothing of its key runs beside it.
            command.timed_out = True
            with self._held_lock:
                if command.ordering_key is not None:
                    self._zombie_keys[command.id] = command.ordering_key
                for slot in self._slots:
                    slot.held.pop(command.id, None)
            self._record_failure(
                conn,
                command,
                timed_out(command.timeout or 0),
                None,
                self._log.bind(command_id=command.id, attempt=command.attempt),
                keep_key=command.ordering_key is not None,
            )
        if live:
            params = _held_params(live)
            rows = fetch(conn, self._sql.extend, {**params, "lease": self.lease})
            kept = {int(row[0]) for row in rows}
            for command in live:
                if command.started and command.id in kept:
                    command.counted = True
            if len(rows) < len(live):
                lost = [c.id for c in live if c.id not in kept]
                # Acked in the meantime, being acked right now, or reclaimed after the lease
                # ran out.
                self._log.debug("leases not extended", commands=lost)
        with self._held_lock:
            keys = [(c.ordering_key, c.id) for c in live if c.ordering_key is not None]
            keys += [(key, command_id) for command_id, key in self._zombie_keys.items()]
        if keys:
            fetch(
                conn,
                self._sql.extend_keys,
                {
                    "keys": [k for k, _ in keys],
                    "ids": [i for _, i in keys],
                    "lease": self.lease,
                },
            )
        reclaimed = fetch(conn, self._sql.reap)
        for command_id, status, command_type in reclaimed:
            self._log.warning(
                "reclaimed a command whose lease ran out",
                command_id=command_id,
                command_type=command_type,
                status=status,
            )
        if check_unhandled:
            params = {"worker": self.worker_id, "queues": self.queues, "types": self._types}
            for command_id, command_type in fetch(conn, self._sql.unhandled, params):
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
        crashed = self._supervisor.failure
        if not stuck and not (crashed and any(slot.held for slot in self._slots)):
            return
        with self._held_lock:
            held = [c for slot in self._slots for c in slot.held.values()]
            running = [c for c in held if c.started]  # started, not finished: still held
            waiting = [c for c in held if not c.started]
            for slot in self._slots:
                slot.held.clear()
            self._zombie_keys.clear()  # the process ends: those keys' leases run out
        if stuck:
            self._log.warning("grace period over; abandoning running handlers", slots=stuck)
        reason = (
            f"WorkerCrashed: {type(crashed).__name__}: {crashed}"
            if crashed is not None
            else f"WorkerShutdown: the worker stopped before the handler finished"
            f" (grace period {self.grace:g} s)"
        )
        try:
            with connect(self.store.url) as conn:
                for command in running:
                    self._record_failure(
                        conn,
                        command,
                        reason,
                        None,
                        self._log.bind(command_id=command.id),
                        # Its thread may still run: its key is freed when its lease runs out.
                        keep_key=True,
                    )
                if waiting:
                    fetch(conn, self._sql.release, _unstarted(waiting))
        except psycopg.Error as exc:
            self._log.warning("could not record abandoned attempts", error=first_line(exc))

    def _query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        try:
            with self.store._raw() as conn:
                return fetch(conn, sql, params)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._log.warning("database unavailable", error=first_line(exc))
            return [(1,)]


def _decode(spec: HandlerSpec, command: _Claimed) -> Any:
    """The command model from its stored payload; one line naming the command if it fails."""
    try:
        return spec.command.model_validate_json(command.payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "payload"
        raise EventSourceError(
            f"command {command.id} ({command.command_type}): its stored payload does not"
            f" decode to {spec.command.__name__}: {where}: {first.get('msg')}"
        ) from None


def _held_params(commands: Sequence[_Claimed]) -> dict[str, Any]:
    """Ids, tokens and attempts counted so far (those started count theirs) of held commands."""
    return {
        "ids": [c.id for c in commands],
        "tokens": [c.token for c in commands],
        "attempts": [c.attempt if c.started else c.attempt - 1 for c in commands],
    }


def _unstarted(commands: Sequence[_Claimed]) -> dict[str, list[Any]]:
    """Parameters of ``release``: commands whose handlers never started keep their count."""
    return {
        "ids": [c.id for c in commands],
        "tokens": [c.token for c in commands],
        "attempts": [c.attempt - 1 for c in commands],
    }


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
