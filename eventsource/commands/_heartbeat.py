"""A worker's heartbeat: its leases kept alive, overdue attempts failed, dead workers reaped.

One thread, on its own connection, beats every ``lease / 4`` seconds: it extends the leases
of the commands (and ordering keys) the worker holds, fails the attempts that ran past their
timeout, and returns to the queue the commands of any worker whose leases ran out (it died,
stalled or lost the database). Between beats it counts the attempts of the handlers that
started. When the worker stops past its grace period, ``_abandon`` settles what still runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from eventsource._errors import first_line, is_outage
from eventsource.commands._attempt import _Attempts, _unstarted, timed_out
from eventsource.commands._core import _Claimed, _close
from eventsource.db import connect, fetch
from eventsource.runtime import Backoff

__all__: list[str] = []

COUNT_EVERY = 0.1  # seconds between two looks for handlers that started (their attempts)
UNHANDLED_EVERY = 20  # beats between two looks for commands no handler here runs


class _Heartbeat(_Attempts):
    """The worker's part that keeps its leases and reclaims the commands of dead workers."""

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
                    conn = connect(self.store.url, prepare_threshold=self.store._prepare_threshold)
                if time.monotonic() >= next_beat or self._stop.is_set():
                    self._beat(conn, check_unhandled=beats % UNHANDLED_EVERY == 0)
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
                _close(conn)
                conn = None
            if not self._stop.is_set():
                # Between beats, count the attempts of handlers that started meanwhile.
                self._stop.wait(COUNT_EVERY if backoff.failures == 0 else 1.0)
            elif any(slot.held for slot in self._slots) or self._zombie_keys:
                time.sleep(interval)  # shutting down: keep the running handlers' leases
            else:
                break
        _close(conn)

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
            fresh = [c for c in self._held() if c.started and not c.counted]
        if fresh:
            self._extend(conn, fresh)

    def _extend(self, conn: psycopg.Connection[Any], commands: Sequence[_Claimed]) -> set[int]:
        """Extend the leases of ``commands`` and count the attempts of those started.

        The ids of the commands still held: not those acked or reclaimed meanwhile, nor those
        a handler's ``ctx.tx`` is acking right now.
        """
        rows = fetch(conn, self._sql.extend, {**_held_params(commands), "lease": self.lease})
        kept = {int(row[0]) for row in rows}
        for command in commands:
            if command.started and command.id in kept:
                command.counted = True
        return kept

    def _beat(self, conn: psycopg.Connection[Any], *, check_unhandled: bool) -> None:
        """One beat: fail overdue attempts, extend leases and keys, reap, look for strays."""
        now = time.monotonic()
        with self._held_lock:
            held = self._held()
        overdue = [c for c in held if c.deadline is not None and now > c.deadline]
        live = [c for c in held if c.deadline is None or now <= c.deadline]
        self._time_out(conn, overdue)
        if live:
            kept = self._extend(conn, live)
            if len(kept) < len(live):
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

    def _time_out(self, conn: psycopg.Connection[Any], overdue: list[_Claimed]) -> None:
        """Fail the attempts that ran past their timeout while their handlers still run.

        A sync handler cannot be interrupted: its attempt is failed here (a new token), so
        whatever it does when it returns is dropped by the fence. Its ordering key stays
        taken until its thread returns, so that nothing of its key runs beside it.
        """
        for command in overdue:
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

    def _abandon(self, threads: Iterable[threading.Thread]) -> None:
        """After the grace period: fail the attempts still running (they are retried
        elsewhere, and the late finishers' acks are fenced off) and hand back the commands
        claimed behind them, whose handlers never started."""
        stuck = [t.name for t in threads]
        crashed = self._supervisor.failure
        if not stuck and not (crashed and any(slot.held for slot in self._slots)):
            return
        with self._held_lock:
            held = self._held()
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
        # Async handlers on an application's loop would run on unseen: cancel them, once
        # their attempts are recorded (the cancelled handlers' own failures are fenced off).
        for future in list(self._on_loop):
            future.cancel()


def _held_params(commands: Sequence[_Claimed]) -> dict[str, Any]:
    """Ids, tokens and attempts counted so far (those started count theirs) of held commands."""
    return {
        "ids": [c.id for c in commands],
        "tokens": [c.token for c in commands],
        "attempts": [c.attempt if c.started else c.attempt - 1 for c in commands],
    }
