"""Run projections, or a queue's pending commands, in-process until there is nothing left.

Both run the real workers on a thread with settings fit for tests (short polls, no LISTEN,
quick retries) and give up with ``TimeoutError`` after ``timeout`` seconds::

    store.append("acc-1", [Opened(owner="ann")])
    run_projections(store, [Balances()])             # the read model is now up to date

    queue.enqueue(SendStatement(account_id="acc-1"))
    result = drain(queue)
    assert (result.succeeded, result.failed, result.died) == (1, 0, 0)
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from eventsource import commands
from eventsource._checks import check_seconds
from eventsource.store import AsyncEventStore, EventStore
from projections import PartitionStatus, Projection, ProjectionWorker
from projections import status as projection_status

__all__ = [
    "DrainResult",
    "ProjectionRun",
    "drain",
    "drain_async",
    "run_projections",
    "run_projections_async",
]

# The handlers a drain runs: a function per command class.
Handlers = Mapping[type[commands.Command], Callable[[Any, commands.CommandContext], Any]]

MAX_DEAD = 100_000  # dead commands looked at to tell those that died during a drain

PROJECTION_OPTIONS: dict[str, Any] = {
    "poll_interval": 0.05,
    "heartbeat_interval": 0.2,
    "retry_delays": (0.01, 0.01),
}
WORKER_OPTIONS: dict[str, Any] = {
    "concurrency": 2,
    "listen": False,
    "poll_interval": 0.05,
    "lease": 5.0,
    "grace": 5.0,
    "backoff_base": 0.01,
    "backoff_max": 0.1,
}


@dataclass(frozen=True)
class ProjectionRun:
    """What ``run_projections`` did: the worker, and the partitions' status afterwards."""

    worker: ProjectionWorker
    statuses: list[PartitionStatus]

    @property
    def stopped(self) -> list[PartitionStatus]:
        """The partitions stopped by an event their projection failed on."""
        return [s for s in self.statuses if s.error is not None]


@dataclass(frozen=True)
class DrainResult:
    """What ``drain`` did: attempts finished, how they ended, and the commands that died."""

    ran: int
    succeeded: int
    failed: int
    dead: list[commands.CommandInfo] = field(default_factory=list)

    @property
    def died(self) -> int:
        """How many commands were dead-lettered during the drain."""
        return len(self.dead)


def _run_bounded(
    target: Callable[[], None], stop: Callable[[], None], timeout: float, left: Callable[[], str]
) -> None:
    """Run ``target`` on a thread for at most ``timeout`` s; its error is raised here.

    On time-out, ``TimeoutError`` with what ``left()`` says is left to do (asked before
    ``stop`` is called and the thread is waited for).
    """
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target()
        except BaseException as exc:  # raised in the caller's thread below
            errors.append(exc)

    thread = threading.Thread(target=body, name="eventsource-testing", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        message = left()
        stop()
        thread.join(30)
        raise TimeoutError(message)
    if errors:
        raise errors[0]


def run_projections(
    store: EventStore,
    projections: Sequence[Projection],
    *,
    timeout: float = 10.0,
    check: bool = True,
    **options: Any,
) -> ProjectionRun:
    """Run projections until every partition is at its head (``projections.run`` with
    ``stop_when_caught_up``), on a thread, for at most ``timeout`` seconds.

    With ``check`` (the default) a partition stopped by a failing event raises
    ``AssertionError`` with the projection, the position and the error; ``TimeoutError``
    says which partitions still lag. ``options`` go to ``ProjectionWorker``.
    Example::

        run = run_projections(event_store, [Balances()])
        assert run.stopped == []
    """
    timeout = check_seconds(timeout, "timeout", low=0.01)
    if not isinstance(store, EventStore):
        raise TypeError(f"store must be an EventStore, got {store!r}")
    if isinstance(projections, Projection) or not isinstance(projections, Sequence):
        raise TypeError(f"projections must be a list of projections, got {projections!r}")
    worker = ProjectionWorker(store, projections, **{**PROJECTION_OPTIONS, **options})
    names = {p.name for p in projections}

    def statuses() -> list[PartitionStatus]:
        return [s for s in projection_status(store) if s.projection in names]

    def left() -> str:
        lag = ", ".join(f"{s.projection}[{s.partition}] lag {s.lag}" for s in statuses() if s.lag)
        return f"projections not caught up after {timeout:g} s: {lag or 'no lag left'}"

    _run_bounded(
        functools.partial(worker.run, stop_when_caught_up=True), worker.stop, timeout, left
    )
    run = ProjectionRun(worker, statuses())
    if check and run.stopped:
        lines = []
        for s in run.stopped:
            error = (s.error or "").strip().splitlines()
            lines.append(
                f"  {s.projection}[{s.partition}] at position {s.error_position}:"
                f" {error[-1] if error else '?'}"
            )
            lines += [f"      {line}" for line in error[:-1]]
        raise AssertionError("\n".join(["projections stopped on a failing event:", *lines]))
    return run


def _handler_specs(
    handlers: Handlers | None,
) -> dict[str, commands.HandlerSpec]:
    """The handlers to run: the registered ones, or ``{CommandClass: function}``."""
    if handlers is None:
        return commands.registered_handlers()
    if not isinstance(handlers, Mapping):
        raise TypeError(f"handlers must be a dict of Command class to function, got {handlers!r}")
    specs = {}
    for command, fn in handlers.items():
        if not (isinstance(command, type) and issubclass(command, commands.Command)):
            raise TypeError(f"handlers keys must be Command classes, got {command!r}")
        if not callable(fn):
            raise TypeError(f"handlers[{command.__name__}] must be a function, got {fn!r}")
        specs[command.command_type] = commands.HandlerSpec(
            command, fn, inspect.iscoroutinefunction(fn), None
        )
    return specs


class _Counter:
    """A count that handler threads add to."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        """Count one more."""
        with self._lock:
            self.value += 1


def _counted(spec: commands.HandlerSpec, done: _Counter) -> commands.HandlerSpec:
    """``spec`` whose function counts, in ``done``, the attempts whose handler returned."""
    fn = spec.fn
    if spec.is_async:

        @functools.wraps(fn)
        async def counted_async(command: Any, ctx: commands.CommandContext) -> Any:
            result = await fn(command, ctx)
            done.add()
            return result

        return commands.HandlerSpec(spec.command, counted_async, True, spec.timeout)

    @functools.wraps(fn)
    def counted(command: Any, ctx: commands.CommandContext) -> Any:
        result = fn(command, ctx)
        done.add()
        return result

    return commands.HandlerSpec(spec.command, counted, False, spec.timeout)


def drain(
    queue: commands.CommandQueue,
    *,
    timeout: float = 10.0,
    handlers: Handlers | None = None,
    queues: Sequence[str] | None = None,
    **options: Any,
) -> DrainResult:
    """Run the pending commands of ``queue`` in-process until none is left.

    A ``CommandWorker`` (polling, quick retries) runs with ``stop_when_idle`` on a thread:
    failed attempts are retried until they succeed or die, and commands that handlers enqueue
    run too; commands enqueued with a delay are waited for. ``handlers`` are the registered
    ones, or ``{CommandClass: function}`` (nothing registered). ``queues``: those with pending
    commands at the start, and ``"default"``. ``TimeoutError`` after ``timeout`` seconds;
    ``options`` go to ``CommandWorker``. Example::

        queue.enqueue(SendStatement(account_id="acc-1"))
        result = drain(queue, handlers={SendStatement: lambda cmd, ctx: sent.append(cmd)})
        assert (result.ran, result.failed, result.died) == (1, 0, 0)
    """
    timeout = check_seconds(timeout, "timeout", low=0.01)
    if not isinstance(queue, commands.CommandQueue):
        raise TypeError(f"queue must be a CommandQueue, got {queue!r}")
    if queues is None:
        names = [
            "default",
            *(q for q, status, _, _ in queue.counts() if status in ("pending", "running")),
        ]
    elif isinstance(queues, str) or not isinstance(queues, Sequence):
        raise TypeError(f"queues must be a list of queue names, got {queues!r}")
    else:
        names = list(queues)
    done = _Counter()
    specs = {name: _counted(spec, done) for name, spec in _handler_specs(handlers).items()}
    dead_before = {info.id for info in queue.dead(limit=MAX_DEAD)}
    worker = commands.CommandWorker(
        queue.store,
        list(dict.fromkeys(names)),
        handlers=specs,
        **{**WORKER_OPTIONS, **options},
    )

    def left() -> str:
        counts = queue.counts()
        rows = sorted(
            f"{q} {status}: {n}"
            for q, status, n, _ in counts
            if q in names and status in ("pending", "running")
        )
        return f"commands left after {timeout:g} s: {', '.join(rows) or 'none pending'}"

    _run_bounded(functools.partial(worker.run, stop_when_idle=True), worker.stop, timeout, left)
    dead = [info for info in queue.dead(limit=MAX_DEAD) if info.id not in dead_before]
    return DrainResult(worker.processed, done.value, worker.processed - done.value, dead)


# -- async variants: the same workers, on a sync store of the same schema, off the event loop --


@contextmanager
def _sync_twin(store: AsyncEventStore) -> Iterator[EventStore]:
    """A sync store on ``store``'s database and schema, closed afterwards."""
    twin = EventStore.from_url(store.url, schema=store.schema, pool_size=4)
    try:
        yield twin
    finally:
        twin.close()


async def run_projections_async(
    store: AsyncEventStore,
    projections: Sequence[Projection],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - the workers' deadline, as in the sync twin
    check: bool = True,
    **options: Any,
) -> ProjectionRun:
    """``run_projections`` for an ``AsyncEventStore``, on a thread (the loop keeps running)::

    await run_projections_async(async_event_store, [Balances()])
    """
    if not isinstance(store, AsyncEventStore):
        raise TypeError(f"store must be an AsyncEventStore, got {store!r}")

    def body() -> ProjectionRun:
        with _sync_twin(store) as twin:
            return run_projections(twin, projections, timeout=timeout, check=check, **options)

    return await asyncio.to_thread(body)


async def drain_async(
    queue: commands.AsyncCommandQueue,
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - the workers' deadline, as in the sync twin
    handlers: Handlers | None = None,
    queues: Sequence[str] | None = None,
    **options: Any,
) -> DrainResult:
    """``drain`` for an ``AsyncCommandQueue``, on a thread (the loop keeps running)::

    await queue.enqueue(SendStatement(account_id="acc-1"))
    assert (await drain_async(queue)).succeeded == 1
    """
    if not isinstance(queue, commands.AsyncCommandQueue):
        raise TypeError(f"queue must be an AsyncCommandQueue, got {queue!r}")

    def body() -> DrainResult:
        with _sync_twin(queue.store) as twin:
            sync_queue = commands.CommandQueue(twin)
            return drain(sync_queue, timeout=timeout, handlers=handlers, queues=queues, **options)

    return await asyncio.to_thread(body)
