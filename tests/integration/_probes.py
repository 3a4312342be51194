"""Commands, handlers, probes and worker helpers shared by the command-queue tests
(tests/integration/test_commands.py and the contract suite's queue tests).

Handlers are registered globally, one per command type. Each test command carries the key of
a Probe (made by a test's ``probes`` fixture, see ``registered_probes``) that records the calls
and decides what the handler does, so tests share the handlers but never each other's
behaviour. Workers always run over a sync store (in threads of this process).
"""

from __future__ import annotations

import inspect
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from eventsource import Command, CommandContext, CommandWorker, EventStore, handler
from eventsource.commands import command_queries, registered_handlers
from eventsource.db import fetch

from ._support import sql

# -- commands and handlers -----------------------------------------------------------------


class Job(Command, name="test.cq.Job"):
    """The sync test command."""

    probe: str
    n: int = 0
    note: str = ""


class AsyncJob(Command, name="test.cq.AsyncJob"):
    """Handled by an ``async def`` handler."""

    probe: str
    n: int = 0


class SlowJob(Command, name="test.cq.SlowJob"):
    """Handled by a sync handler with a 0.3 s timeout."""

    probe: str
    n: int = 0


class SlowAsyncJob(Command, name="test.cq.SlowAsyncJob"):
    """Handled by an async handler with a 0.3 s timeout."""

    probe: str
    n: int = 0


class Orphan(Command, name="test.cq.Orphan"):
    """A command type no handler is registered for."""

    n: int = 0


HANDLER_TIMEOUT = 0.3

_probes: dict[str, Probe] = {}


@handler(Job)
def run_job(cmd: Job, ctx: CommandContext) -> None:
    _probes[cmd.probe].call(cmd, ctx)


@handler(AsyncJob)
async def run_async_job(cmd: AsyncJob, ctx: CommandContext) -> None:
    await _probes[cmd.probe].acall(cmd, ctx)


@handler(SlowJob, timeout=HANDLER_TIMEOUT)
def run_slow_job(cmd: SlowJob, ctx: CommandContext) -> None:
    _probes[cmd.probe].call(cmd, ctx)


@handler(SlowAsyncJob, timeout=HANDLER_TIMEOUT)
async def run_slow_async_job(cmd: SlowAsyncJob, ctx: CommandContext) -> None:
    await _probes[cmd.probe].acall(cmd, ctx)


# Only this module's handlers: other test modules may register handlers of their own.
HANDLERS = {
    name: spec for name, spec in registered_handlers().items() if name.startswith("test.cq.")
}


@dataclass(frozen=True)
class Seen:
    """One handler call as the probe saw it."""

    n: int
    note: str
    command_id: int
    attempt: int
    max_attempts: int
    queue: str
    command_type: str
    correlation_id: str | None
    worker_id: str
    start: float
    end: float
    error: str | None


Action = Callable[[Any, CommandContext], Any]


class Probe:
    """Records every call of the handlers of its commands; ``action`` is what a call does."""

    def __init__(self, action: Action | None = None) -> None:
        self.key = uuid.uuid4().hex
        self.action = action
        self.calls: list[Seen] = []
        self._lock = threading.Lock()

    def job(self, n: int = 0, note: str = "") -> Job:
        return Job(probe=self.key, n=n, note=note)

    def async_job(self, n: int = 0) -> AsyncJob:
        return AsyncJob(probe=self.key, n=n)

    def slow_job(self, n: int = 0) -> SlowJob:
        return SlowJob(probe=self.key, n=n)

    def slow_async_job(self, n: int = 0) -> SlowAsyncJob:
        return SlowAsyncJob(probe=self.key, n=n)

    def call(self, cmd: Any, ctx: CommandContext) -> None:
        start, error = time.monotonic(), None
        try:
            if self.action is not None:
                self.action(cmd, ctx)
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._record(cmd, ctx, start, error)

    async def acall(self, cmd: Any, ctx: CommandContext) -> None:
        start, error = time.monotonic(), None
        try:
            if self.action is not None:
                result = self.action(cmd, ctx)
                if inspect.isawaitable(result):
                    await result
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._record(cmd, ctx, start, error)

    def _record(self, cmd: Any, ctx: CommandContext, start: float, error: str | None) -> None:
        seen = Seen(
            cmd.n,
            getattr(cmd, "note", ""),
            ctx.command_id,
            ctx.attempt,
            ctx.max_attempts,
            ctx.queue,
            ctx.command_type,
            ctx.correlation_id,
            ctx.worker_id,
            start,
            time.monotonic(),
            error,
        )
        with self._lock:
            self.calls.append(seen)

    @property
    def ns(self) -> list[int]:
        """The ``n`` of each call, in call order."""
        with self._lock:
            return [c.n for c in self.calls]

    def attempts(self, command_id: int) -> list[int]:
        with self._lock:
            return [c.attempt for c in self.calls if c.command_id == command_id]


@contextmanager
def registered_probes() -> Iterator[Callable[..., Probe]]:
    """Make probes (``make(action)``) for the block; they are unregistered after it."""
    made: list[Probe] = []

    def make(action: Action | None = None) -> Probe:
        probe = Probe(action)
        _probes[probe.key] = probe
        made.append(probe)
        return probe

    try:
        yield make
    finally:
        for probe in made:
            _probes.pop(probe.key, None)


# -- helpers -------------------------------------------------------------------------------

# Short leases, quick retries and polling: the defaults (10 s, 1 s backoff) are for production.
FAST: dict[str, Any] = {
    "handlers": HANDLERS,
    "backoff_base": 0.01,
    "lease": 2.0,
    "poll_interval": 0.05,
    "grace": 5.0,
    "listen": False,
}


def make_worker(
    store: EventStore, queues: Sequence[str] = ("default",), **options: Any
) -> CommandWorker:
    """A CommandWorker with FAST options (overridden by ``options``)."""
    return CommandWorker(store, list(queues), **{**FAST, **options})


def drain(
    store: EventStore, queues: Sequence[str] = ("default",), *, timeout: float = 20.0, **opts: Any
) -> CommandWorker:
    """Run a worker until no command of its queues and types is left (in a thread, bounded)."""
    worker = make_worker(store, queues, **opts)
    thread = threading.Thread(target=worker.run, kwargs={"stop_when_idle": True}, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        worker.stop()
        thread.join(10)
        raise AssertionError(f"the worker was not idle after {timeout} s")
    return worker


@contextmanager
def running(worker: CommandWorker) -> Iterator[CommandWorker]:
    """Run ``worker`` in a thread for the block; stop it and wait for it afterwards."""
    thread = threading.Thread(target=worker.run, daemon=True, name="test-command-worker")
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive(), "the worker did not stop"


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def count(store: Any, where: str = "TRUE", params: dict[str, Any] | None = None) -> int:
    """How many rows the commands table holds (matching ``where``); either twin's store."""
    return int(sql(store, f"SELECT count(*) FROM {{s}}.commands WHERE {where}", params)[0][0])


def claim(store: EventStore, *, lease: float = 30.0, worker: str = "test-claimer") -> list[Any]:
    """Claim every ready test command as a worker would (same statement), without running it."""
    with store._raw() as conn:
        return fetch(
            conn,
            command_queries(store.schema).claim,
            {
                "queues": ["default"],
                "types": sorted(HANDLERS),
                "limit": 100,
                "lease": lease,
                "worker": worker,
            },
        )
