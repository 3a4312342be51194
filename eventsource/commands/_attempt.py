"""One attempt of a command: running its handler, then settling it (ack, retry or dead-letter).

A handler that returns is acked: in a batch with its slot's other finished commands, or, when
it used ``ctx.tx``, inside that transaction just before its commit. A handler that raises (or
runs past its timeout) fails the attempt: the command is retried after ``backoff`` or, with
no attempts left, is dead. Every write carries the attempt's lease token, so that an attempt
whose lease ran out (``LeaseLost``) records nothing.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
import traceback
from collections.abc import Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import psycopg
from pydantic import ValidationError

from eventsource._context import correlation
from eventsource._errors import EventSourceError
from eventsource._instrumented import attempted, command_span, dead_lettered, observed
from eventsource._telemetry import fail_current
from eventsource.commands._command import CommandContext, HandlerSpec
from eventsource.commands._core import _Claimed, _Slot, _WorkerCore
from eventsource.db import driver_connection, fetch
from eventsource.runtime import run_on_thread_loop
from eventsource.store import Transaction

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = ["LeaseLost", "backoff", "storable", "timed_out"]

# How an attempt ended (the ``eventsource.command.outcome`` of its span and metrics).
SUCCEEDED, FAILED, DEAD, DROPPED = "succeeded", "failed", "dead", "dropped"

ERROR_LIMIT = 4000  # characters of error text kept per command
TRACEBACK_LIMIT = 20000


class LeaseLost(EventSourceError):
    """The attempt's lease was taken over (it ran out); its result was not recorded."""


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


class _Attempts(_WorkerCore):
    """The worker's part that runs one attempt's handler and records how it ended."""

    def _run_one(self, conn: psycopg.Connection[Any], slot: _Slot, command: _Claimed) -> bool:
        """Run one attempt; True when it succeeded without a transaction (ack it in a batch).

        The attempt has a span of its own, a child of the span that enqueued the command
        (when one recorded), and is counted and timed by outcome.
        """
        if not observed():  # no SDK: nothing to record, so nothing to measure either
            return self._attempt(conn, slot, command)[1]
        started = time.perf_counter()
        with command_span(command.trace_context) as span:
            outcome, ack_later = self._attempt(conn, slot, command)
            if span.is_recording():
                span.set_attributes(
                    {
                        "eventsource.command.id": command.id,
                        "eventsource.command.type": command.command_type,
                        "eventsource.queue": command.queue,
                        "eventsource.command.attempt": command.attempt,
                        "eventsource.command.max_attempts": command.max_attempts,
                        "eventsource.command.outcome": outcome,
                    }
                )
        attempted(command.queue, command.command_type, outcome, started)
        return ack_later

    def _attempt(
        self, conn: psycopg.Connection[Any], slot: _Slot, command: _Claimed
    ) -> tuple[str, bool]:
        """Run one attempt: its outcome (succeeded, failed, dead or dropped), and whether it
        succeeded without a transaction (to be acked in a batch)."""
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
                        # On the worker's handler_loop if it has one: wait_for cancels there.
                        run_on_thread_loop(
                            asyncio.wait_for(result, timeout), self.handler_loop, self._on_loop
                        )
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
            self._dropped(conn, slot, command)
            return DROPPED, False
        except Exception as exc:
            if command.timed_out:
                bound.warning(
                    "handler returned after its timeout; result dropped",
                    error=f"{type(exc).__name__}: {exc}",
                )
                self._dropped(conn, slot, command)
                return DROPPED, False
            return self._failed(conn, slot, command, exc, bound), False
        if ctx._tx is not None:
            self._forget(slot, command)
            self._count(1)
            self._key_done(command)
            bound.debug("command done")
            return SUCCEEDED, False
        return SUCCEEDED, True

    def _handler_tx(self, stack: ExitStack) -> Transaction:
        """A handler's ``ctx.tx``: a store transaction that may not sit idle past a lease.

        A worker frozen while its handler holds locks through ``ctx.tx`` (SIGSTOP, a paused
        VM) keeps its TCP connection alive; the server ends the session instead.
        """
        tx = stack.enter_context(self.store.transaction())
        fetch(driver_connection(tx.connection), self._sql.idle_timeout, {"ms": self._idle_ms})
        return tx

    def _dropped(self, conn: psycopg.Connection[Any], slot: _Slot, command: _Claimed) -> None:
        """An attempt whose result was dropped (its lease was lost) has returned.

        If it ran past its timeout and kept its ordering key meanwhile, the key is free again.
        """
        self._forget(slot, command)
        with self._held_lock:
            key = self._zombie_keys.pop(command.id, None)
        if key is not None:
            fetch(conn, self._sql.release_key, {"key": key, "id": command.id})
            self._key_done(command)

    def _failed(
        self,
        conn: psycopg.Connection[Any],
        slot: _Slot,
        command: _Claimed,
        exc: BaseException,
        bound: FilteringBoundLogger,
    ) -> str:
        """The handler raised ``exc``: record the failed attempt and free its key; the
        outcome (failed, dead, or dropped when the lease had run out)."""
        fail_current(exc)
        if isinstance(exc, TimeoutError | asyncio.TimeoutError) and command.timeout is not None:
            error = timed_out(command.timeout)
        else:
            error = f"{type(exc).__name__}: {exc}"
        trace = "".join(traceback.format_exception(exc))
        outcome = self._record_failure(conn, command, error, trace, bound)
        self._forget(slot, command)
        self._key_done(command)
        return outcome

    def _record_failure(
        self,
        conn: psycopg.Connection[Any],
        command: _Claimed,
        error: str,
        trace: str | None,
        bound: FilteringBoundLogger,
        *,
        keep_key: bool = False,
    ) -> str:
        """Fail the attempt in the table: retried after ``backoff``, or dead when none is left;
        the outcome (failed, dead, or dropped when the lease had run out).

        ``keep_key`` keeps the command's ordering key taken (its handler may still run).
        """
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
            return DROPPED
        if rows[0][0] == "dead":
            bound.error("command dead: no attempts left", error=error, attempts=rows[0][1])
            dead_lettered(command.queue, command.command_type)
            return DEAD
        bound.warning("attempt failed; will retry", error=error, retry_in=round(delay, 3))
        if delay < self.poll_interval:  # wake a slot when the retry is due
            timer = threading.Timer(delay, self._notify_slots)
            timer.daemon = True
            timer.start()
        return FAILED

    def _ack(
        self, conn: psycopg.Connection[Any], slot: _Slot, acks: list[_Claimed], *, wake: bool = True
    ) -> None:
        """Ack finished commands in one statement; those whose leases ran out are not acked.

        The first key among them that is freed wakes a slot to run that key's next command
        (``wake=False``: the calling slot, done with its batch, claims next itself).
        """
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
                self._key_done(command, wake=wake)
                break

    def _release(
        self, conn: psycopg.Connection[Any], slot: _Slot, commands: list[_Claimed]
    ) -> None:
        """Hand back claimed commands whose handlers have not started (no attempt spent)."""
        fetch(conn, self._sql.release, _unstarted(commands))
        self._forget(slot, *commands)


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


def _unstarted(commands: Sequence[_Claimed]) -> dict[str, list[Any]]:
    """Parameters of ``release``: commands whose handlers never started keep their count."""
    return {
        "ids": [c.id for c in commands],
        "tokens": [c.token for c in commands],
        "attempts": [c.attempt - 1 for c in commands],
    }
