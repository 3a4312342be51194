"""The command queue on a real PostgreSQL: enqueue and its options, dedupe keys, transactions,
handler contexts, retries and dead letters, fenced leases and timeouts, ordering keys,
graceful stops, correlation ids, LISTEN/NOTIFY wake-ups and the async twin."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import text

import eventsource.commands._queue
from eventsource import (
    AsyncCommandQueue,
    AsyncEventStore,
    Command,
    CommandContext,
    CommandNotFound,
    CommandQueue,
    CommandWorker,
    Enqueued,
    EventSourceError,
    EventStore,
    UnknownCommandType,
    correlation,
    handler,
)
from eventsource.commands import HandlerSpec, command_queries, registered_handlers
from eventsource.db import fetch, quote_schema
from tests.domain import Opened

from ._support import sql

# -- commands and handlers used by these tests ---------------------------------------------
#
# Handlers are registered globally, one per command type. Each test command carries the key
# of a Probe (registered by the ``probes`` fixture) that records the calls and decides what
# the handler does, so tests share the handlers but never each other's behaviour.


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


class Mailing(Command, name="test.cq.Mailing", queue="mail", max_attempts=2):
    """A command class with its own default queue and max attempts (never handled)."""

    to: str


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


@pytest.fixture
def probes() -> Iterator[Callable[..., Probe]]:
    """Make probes (``probes(action)``); they are unregistered after the test."""
    made: list[Probe] = []

    def make(action: Action | None = None) -> Probe:
        probe = Probe(action)
        _probes[probe.key] = probe
        made.append(probe)
        return probe

    yield make
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


def count(store: EventStore, where: str = "TRUE", params: dict[str, Any] | None = None) -> int:
    """How many rows the commands table holds (matching ``where``)."""
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


def token_of(store: EventStore, command_id: int) -> uuid.UUID:
    rows = sql(store, "SELECT lease_token FROM {s}.commands WHERE id = :id", {"id": command_id})
    token: uuid.UUID = rows[0][0]
    return token


def make_marks(store: EventStore) -> Callable[[CommandContext, str], None]:
    """Create ``marks(note)`` in the test schema; the returned function writes one via ctx.tx."""
    sql(store, "CREATE TABLE {s}.marks (note text NOT NULL)")
    insert = text(f"INSERT INTO {quote_schema(store.schema)}.marks VALUES (:note)")

    def mark(ctx: CommandContext, note: str) -> None:
        ctx.tx.execute(insert, {"note": note})

    return mark


def marks(store: EventStore) -> list[str]:
    return [row[0] for row in sql(store, "SELECT note FROM {s}.marks ORDER BY note")]


# -- enqueue -------------------------------------------------------------------------------


def test_enqueue_returns_ids_and_stores_the_command(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """enqueue returns increasing ids; the stored row holds queue, type, payload and defaults."""
    probe = probes()
    queue = CommandQueue(store, max_attempts=9)
    first = queue.enqueue(probe.job(n=1, note="hello"))
    second = queue.enqueue(probe.job(n=2), priority=3)
    assert isinstance(first, Enqueued)
    assert first.duplicate is False
    assert first.id is not None
    assert second.id is not None
    assert second.id > first.id
    info = queue.get(first.id)
    assert info is not None
    assert (info.queue, info.command_type, info.status) == ("default", "test.cq.Job", "pending")
    assert (info.priority, info.attempts, info.max_attempts) == (0, 0, 9)
    assert json.loads(info.payload) == {"probe": probe.key, "n": 1, "note": "hello"}
    assert info.lease_until is None
    assert info.worker is None
    assert info.last_error is None
    assert info.run_at == info.enqueued_at
    assert [i.id for i in queue.list()] == [first.id, second.id]
    assert queue.get(second.id).priority == 3  # type: ignore[union-attr]
    assert count(store) == 2


def test_class_defaults_and_enqueue_options_choose_queue_and_max_attempts(
    store: EventStore,
) -> None:
    """max_attempts: enqueue's, else the class's, else the queue's; queue likewise."""
    queue = CommandQueue(store, max_attempts=7)
    by_class = queue.enqueue(Mailing(to="ann"))
    by_call = queue.enqueue(Mailing(to="bob"), queue="urgent", max_attempts=4)
    assert by_class.id is not None
    assert by_call.id is not None
    a, b = queue.get(by_class.id), queue.get(by_call.id)
    assert a is not None
    assert b is not None
    assert (a.queue, a.max_attempts) == ("mail", 2)
    assert (b.queue, b.max_attempts) == ("urgent", 4)
    assert [i.id for i in queue.list(queue="mail")] == [by_class.id]
    assert sorted(queue.counts()) == [
        ("mail", "pending", 1, a.enqueued_at),
        ("urgent", "pending", 1, b.enqueued_at),
    ]


def test_a_delayed_command_is_not_claimed_before_its_time(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """delay= schedules a command: workers skip it until run_at, then run it."""
    probe = probes()
    queue = CommandQueue(store)
    started = time.monotonic()
    delayed = queue.enqueue(probe.job(n=1), delay=0.8)
    queue.enqueue(probe.job(n=2))
    assert delayed.id is not None
    info = queue.get(delayed.id)
    assert info is not None
    # Counted from the database clock when the statement runs (a moment after now()).
    assert (info.run_at - info.enqueued_at).total_seconds() == pytest.approx(0.8, abs=2e-2)
    with running(make_worker(store)):
        wait_until(lambda: probe.ns == [2], "the undelayed command")
        time.sleep(0.3)
        assert probe.ns == [2]  # the delayed one is still waiting ...
        waiting = queue.get(delayed.id)
        assert waiting is not None
        assert (waiting.status, waiting.attempts) == ("pending", 0)
        wait_until(lambda: len(probe.calls) == 2, "the delayed command", timeout=5)
    assert probe.ns == [2, 1]
    assert probe.calls[1].start - started >= 0.75
    assert count(store) == 0


def test_run_at_and_timedelta_delay_schedule_commands(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """run_at= (any time zone) and a timedelta delay are stored as instants; claims skip them."""
    probe = probes()
    queue = CommandQueue(store)
    plus5 = timezone(timedelta(hours=5))
    at = (datetime.now(UTC) + timedelta(seconds=0.6)).astimezone(plus5)
    by_run_at = queue.enqueue(probe.job(n=1), run_at=at)
    by_timedelta = queue.enqueue(probe.job(n=2), delay=timedelta(milliseconds=500))
    past = queue.enqueue(probe.job(n=3), run_at=datetime.now(UTC) - timedelta(hours=1))
    assert by_run_at.id is not None
    assert by_timedelta.id is not None
    stored = queue.get(by_run_at.id)
    assert stored is not None
    assert stored.run_at == at
    claimed = claim(store)
    assert [row[0] for row in claimed] == [past.id]  # the scheduled ones are not ready yet
    sql(store, "DELETE FROM {s}.commands WHERE id = :id", {"id": past.id})
    drain(store)
    assert sorted(probe.ns) == [1, 2]
    assert count(store) == 0


def test_higher_priority_runs_first_then_oldest(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """A worker runs ready commands by priority (highest first), then in enqueue order."""
    probe = probes()
    queue = CommandQueue(store)
    for n, priority in enumerate([0, 5, -3, 10, 5]):
        queue.enqueue(probe.job(n=n), priority=priority)
    drain(store, concurrency=1)
    assert probe.ns == [3, 1, 4, 0, 2]


def test_enqueue_many_writes_all_in_one_statement(
    store: EventStore, probes: Callable[..., Probe], monkeypatch: pytest.MonkeyPatch
) -> None:
    """enqueue_many sends one statement and returns the ids in input order."""
    probe = probes()
    queue = CommandQueue(store)
    statements: list[str] = []
    real_fetch = fetch  # what _commands uses

    def counting_fetch(conn: Any, statement: str, params: Any = None) -> Any:
        statements.append(statement)
        return real_fetch(conn, statement, params)

    monkeypatch.setattr(eventsource.commands._queue, "fetch", counting_fetch)
    ids = queue.enqueue_many(
        [probe.job(n=n) for n in range(5)], queue="bulk", priority=4, max_attempts=3
    )
    monkeypatch.undo()
    assert len(statements) == 1
    assert len(ids) == 5
    assert ids == sorted(ids)
    infos = [queue.get(i) for i in ids]
    assert [json.loads(i.payload)["n"] for i in infos if i] == [0, 1, 2, 3, 4]
    assert {(i.queue, i.priority, i.max_attempts) for i in infos if i} == {("bulk", 4, 3)}
    drain(store, ["bulk"], concurrency=1)
    assert probe.ns == [0, 1, 2, 3, 4]
    assert queue.enqueue_many([]) == []


def test_enqueue_many_writes_nothing_when_one_command_is_bad(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """All commands of enqueue_many are checked first: one bad one and none is written."""
    probe = probes()
    queue = CommandQueue(store)
    with pytest.raises(TypeError, match="expected a Command instance"):
        queue.enqueue_many([probe.job(n=1), probe.job(n=2), "job 3"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="NUL"):
        queue.enqueue_many([probe.job(n=1), probe.job(note="nul \x00 here")])
    assert count(store) == 0


class _NotRegistered(Command, abstract=True):
    """An abstract command class: it cannot be enqueued."""

    x: int = 0


BAD_ENQUEUES: list[Any] = [
    pytest.param({"command": {"probe": "p"}}, TypeError, "expected a Command instance", id="dict"),
    pytest.param({"command": _NotRegistered()}, UnknownCommandType, "_NotRegistered", id="abst"),
    pytest.param({"delay": -0.5}, ValueError, "delay must not be negative", id="neg-delay"),
    pytest.param(
        {"run_at": datetime(2030, 1, 1)},  # naive: the error under test
        ValueError,
        "run_at must be timezone-aware",
        id="naive-run-at",
    ),
    pytest.param(
        {"delay": 1, "run_at": datetime.now(UTC)}, ValueError, "not both", id="delay-and-run-at"
    ),
    pytest.param({"queue": "  "}, ValueError, "queue name must not be empty", id="blank-queue"),
    pytest.param(
        {"queue": ""},
        ValueError,
        "queue name must not be empty",
        id="empty-queue",
    ),
    pytest.param({"dedupe_key": "a\x00b"}, ValueError, "dedupe_key must not contain", id="nul-dk"),
    pytest.param({"ordering_key": "\x00"}, ValueError, "ordering_key must not", id="nul-ok"),
    pytest.param({"queue": "q\x00"}, ValueError, "queue name must not contain", id="nul-queue"),
    pytest.param({"max_attempts": 0}, ValueError, "max_attempts must be from 1", id="attempts-0"),
    pytest.param({"priority": 2**40}, ValueError, "priority must be from", id="priority"),
]


@pytest.mark.parametrize(("options", "error", "match"), BAD_ENQUEUES)
def test_bad_enqueue_raises_a_clear_error_and_writes_nothing(
    store: EventStore,
    probes: Callable[..., Probe],
    options: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    """Bad commands and options raise TypeError/ValueError/UnknownCommandType; no row is written."""
    options = dict(options)
    command = options.pop("command", None) or probes().job()
    with pytest.raises(error, match=match):
        CommandQueue(store).enqueue(command, **options)
    assert count(store) == 0


def test_names_keys_and_payloads_are_stored_as_data(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """Quotes, SQL and unicode in queue names, keys and payloads round-trip as plain data."""
    probe = probes()
    queue = CommandQueue(store)
    qname = "q'; DROP TABLE commands; -- «队列» 🚀"
    dedupe = "k'\"; SELECT pg_sleep(10); -- ключ 🔑 \\"
    ordering = "o') OR 1=1 -- ordre é"
    note = "it's \"quoted\" '); DELETE FROM commands; -- \\u0000 (literal) ∑ 🙂 \t\n"
    queued = queue.enqueue(
        probe.job(n=7, note=note), queue=qname, dedupe_key=dedupe, ordering_key=ordering
    )
    assert queued.id is not None
    info = queue.get(queued.id)
    assert info is not None
    assert (info.queue, info.dedupe_key, info.ordering_key) == (qname, dedupe, ordering)
    assert Job.model_validate_json(info.payload) == probe.job(n=7, note=note)
    assert [i.id for i in queue.list(queue=qname)] == [queued.id]
    assert queue.enqueue(probe.job(n=8), queue=qname, dedupe_key=dedupe).duplicate
    drain(store, [qname])
    assert [(c.n, c.note, c.queue) for c in probe.calls] == [(7, note, qname)]
    assert count(store) == 0


# -- dedupe keys ---------------------------------------------------------------------------


def test_dedupe_key_makes_a_second_enqueue_a_no_op_while_pending(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """Same dedupe key while the first is pending: Enqueued(first id, duplicate=True), no row."""
    probe = probes()
    queue = CommandQueue(store)
    first = queue.enqueue(probe.job(n=1), dedupe_key="report:42")
    again = queue.enqueue(probe.job(n=2), dedupe_key="report:42", priority=9)
    other = queue.enqueue(probe.job(n=3), dedupe_key="report:43")
    assert first == Enqueued(first.id, duplicate=False)
    assert again == Enqueued(first.id, duplicate=True)
    assert not other.duplicate
    assert other.id != first.id
    assert count(store) == 2
    assert count(store, "dedupe_key = 'report:42' AND priority = 0") == 1
    drain(store)
    assert sorted(probe.ns) == [1, 3]


def test_dedupe_holds_under_concurrent_enqueues(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """Eight threads enqueueing one dedupe key at once write exactly one command."""
    probe = probes()
    queue = CommandQueue(store)
    barrier = threading.Barrier(8)
    results: list[Enqueued] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def enqueue(n: int) -> None:
        try:
            barrier.wait(5)
            result = queue.enqueue(probe.job(n=n), dedupe_key="once")
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(result)

    threads = [threading.Thread(target=enqueue, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert len(results) == 8
    winners = [r for r in results if not r.duplicate]
    assert len(winners) == 1
    # A loser sees the winner's id, or None when the winner committed after its snapshot.
    assert {r.id for r in results if r.duplicate} <= {winners[0].id, None}
    assert count(store) == 1
    assert count(store, "dedupe_key = 'once'") == 1


def test_dedupe_key_is_free_again_once_the_command_started_or_finished(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """A dedupe key binds only not-yet-started commands: running or done ones free it."""
    go = threading.Event()
    started = threading.Event()

    def block_first(cmd: Job, ctx: CommandContext) -> None:
        if cmd.n == 1:
            started.set()
            assert go.wait(10)

    probe = probes(block_first)
    queue = CommandQueue(store)
    first = queue.enqueue(probe.job(n=1), dedupe_key="k")
    with running(make_worker(store, concurrency=1)):
        assert started.wait(10)
        while_running = queue.enqueue(probe.job(n=2), dedupe_key="k")
        assert not while_running.duplicate
        assert while_running.id != first.id
        assert queue.enqueue(probe.job(n=3), dedupe_key="k") == Enqueued(
            while_running.id, duplicate=True
        )
        go.set()
        wait_until(lambda: count(store) == 0, "both commands to finish")
    after_done = queue.enqueue(probe.job(n=4), dedupe_key="k")
    assert not after_done.duplicate
    assert after_done.id not in (first.id, while_running.id)
    drain(store)
    assert probe.ns == [1, 2, 4]


def test_releasing_a_command_whose_dedupe_key_was_enqueued_again(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """A claimed command is released (graceful stop) although its dedupe key is pending again."""
    probe = probes()
    queue = CommandQueue(store)
    first = queue.enqueue(probe.job(n=1), dedupe_key="k")
    ((claimed_id, *_, token, _corr, _cause, _at, _key, _prio, _run_at, _first),) = claim(store)
    assert claimed_id == first.id
    second = queue.enqueue(probe.job(n=2), dedupe_key="k")
    assert not second.duplicate  # the key was free: the first had started
    with store._raw() as conn:
        released = fetch(
            conn,
            command_queries(store.schema).release,
            {"ids": [first.id], "tokens": [token], "attempts": [0]},
        )
    assert released == [(first.id,)]
    assert count(store, "status = 'pending'") == 2  # nothing lost


# -- transactions --------------------------------------------------------------------------


def test_enqueue_in_a_transaction_commits_with_the_append(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """With tx=, the command and the append become visible together, at commit."""
    probe = probes()
    queue = CommandQueue(store)
    with store.transaction() as tx:
        store.append("order-1", [Opened(owner="ann")], tx=tx)
        queued = queue.enqueue(probe.job(n=1), tx=tx)
        assert queued.id is not None
        assert count(store) == 0  # not visible outside the transaction yet
        assert store.read_stream("order-1") == []
    assert count(store, "id = :id", {"id": queued.id}) == 1
    assert len(store.read_stream("order-1")) == 1
    drain(store)
    assert probe.ns == [1]
    assert probe.calls[0].command_id == queued.id


def test_a_rolled_back_enqueue_is_never_delivered(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """A command enqueued in a transaction that rolls back is never handled."""
    probe = probes()
    queue = CommandQueue(store)
    with pytest.raises(RuntimeError, match="abort"), store.transaction() as tx:
        store.append("order-2", [Opened(owner="bob")], tx=tx)
        queue.enqueue(probe.job(n=1), tx=tx)
        queue.enqueue_many([probe.job(n=2), probe.job(n=3)], tx=tx)
        raise RuntimeError("abort")
    assert count(store) == 0
    assert store.read_stream("order-2") == []
    queue.enqueue(probe.job(n=4))  # committed: proves the worker below does run handlers
    drain(store)
    assert probe.ns == [4]


def test_enqueue_joins_a_sqlalchemy_connection_transaction(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """tx= may be a SQLAlchemy Connection (as projections hand out): it commits with it."""
    probe = probes()
    queue = CommandQueue(store)
    with store.engine.connect() as conn:
        conn.begin()
        queue.enqueue(probe.job(n=1), tx=conn)
        conn.rollback()
    assert count(store) == 0
    with store.engine.begin() as conn:
        queue.enqueue(probe.job(n=2), tx=conn)
        queue.enqueue_many([probe.job(n=3)], tx=conn)
    assert count(store) == 2
    drain(store)
    assert sorted(probe.ns) == [2, 3]


# -- handlers and their context ------------------------------------------------------------


def test_handler_context_carries_ids_and_attempt(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """ctx has the command id, attempt 1 of max, queue, type and the worker's id."""
    probe = probes()
    queue = CommandQueue(store)
    queued = queue.enqueue(probe.job(n=1), queue="ctx", max_attempts=4)
    worker = drain(store, ["ctx"], worker_id="worker-ctx")
    (seen,) = probe.calls
    assert seen.command_id == queued.id
    assert (seen.attempt, seen.max_attempts) == (1, 4)
    assert (seen.queue, seen.command_type) == ("ctx", "test.cq.Job")
    assert seen.worker_id == "worker-ctx" == worker.worker_id
    assert seen.error is None
    assert worker.processed == 1
    assert count(store) == 0  # acked: done commands are deleted


def test_ctx_tx_writes_commit_with_the_ack(store: EventStore, probes: Callable[..., Probe]) -> None:
    """Writes made through ctx.tx (rows and appends) commit together with the ack."""
    mark = make_marks(store)

    def write(cmd: Job, ctx: CommandContext) -> None:
        mark(ctx, f"done-{cmd.n}")
        store.append(f"ctx-{cmd.n}", [Opened(owner="ctx")], tx=ctx.tx)

    probe = probes(write)
    queue = CommandQueue(store)
    queue.enqueue(probe.job(n=1))
    queue.enqueue(probe.job(n=2))
    drain(store)
    assert marks(store) == ["done-1", "done-2"]
    assert [len(store.read_stream(f"ctx-{n}")) for n in (1, 2)] == [1, 1]
    assert count(store) == 0


def test_a_failing_handler_rolls_back_its_ctx_tx_writes(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """A handler that raises after writing through ctx.tx leaves no trace of those writes."""
    mark = make_marks(store)

    def fail_first(cmd: Job, ctx: CommandContext) -> None:
        mark(ctx, f"attempt-{ctx.attempt}")
        store.append(f"fail-{ctx.attempt}", [Opened(owner="x")], tx=ctx.tx)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails after writing")

    probe = probes(fail_first)
    queued = CommandQueue(store).enqueue(probe.job())
    drain(store)
    assert queued.id is not None
    assert probe.attempts(queued.id) == [1, 2]
    assert marks(store) == ["attempt-2"]
    assert store.read_stream("fail-1") == []
    assert len(store.read_stream("fail-2")) == 1
    assert count(store) == 0


def test_ctx_tx_is_refused_once_the_attempt_has_ended(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """Work a handler leaves behind cannot open a transaction after its attempt: nothing
    would commit it."""
    kept: list[CommandContext] = []

    def keep(cmd: Job, ctx: CommandContext) -> None:
        kept.append(ctx)

    probe = probes(keep)
    CommandQueue(store).enqueue(probe.job())
    drain(store)
    (ctx,) = kept
    with pytest.raises(EventSourceError, match="has ended"):
        _ = ctx.tx
    assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert count(store) == 0


def test_async_handlers_run_on_an_event_loop_with_ctx_tx(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """An ``async def`` handler is awaited by the worker; its ctx.tx commits with the ack."""
    mark = make_marks(store)
    loops: list[bool] = []

    async def act(cmd: AsyncJob, ctx: CommandContext) -> None:
        await asyncio.sleep(0.01)
        loops.append(asyncio.get_running_loop().is_running())
        mark(ctx, f"async-{cmd.n}")

    probe = probes(act)
    queue = CommandQueue(store)
    queue.enqueue_many([probe.async_job(n=1), probe.async_job(n=2)])
    drain(store)
    assert sorted(probe.ns) == [1, 2]
    assert loops == [True, True]
    assert marks(store) == ["async-1", "async-2"]
    assert count(store) == 0


# -- retries, dead letters, operations -----------------------------------------------------


def test_a_handler_failing_twice_is_acked_on_attempt_three_after_backoff(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """Failed attempts are retried with exponential backoff; the third succeeds and is acked."""
    queue = CommandQueue(store)
    errors_seen: list[str | None] = []

    def flaky(cmd: Job, ctx: CommandContext) -> None:
        info = queue.get(ctx.command_id)
        errors_seen.append(info.last_error if info else "missing")
        if ctx.attempt < 3:
            raise RuntimeError(f"failure {ctx.attempt}")

    probe = probes(flaky)
    queued = queue.enqueue(probe.job())
    assert queued.id is not None
    drain(store, backoff_base=0.2)
    assert probe.attempts(queued.id) == [1, 2, 3]
    assert errors_seen == [None, "RuntimeError: failure 1", "RuntimeError: failure 2"]
    first, second, third = probe.calls
    # Backoff with jitter: [0.5, 1] x 0.2 s after the first failure, x 0.4 s after the second.
    assert second.start - first.end >= 0.1 - 0.01
    assert third.start - second.end >= 0.2 - 0.01
    assert count(store) == 0


def test_a_poison_command_is_dead_after_max_attempts_and_can_be_retried(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """After max_attempts failures a command is dead with error and traceback; retry revives."""
    fixed = threading.Event()

    def poison(cmd: Job, ctx: CommandContext) -> None:
        if not fixed.is_set():
            raise ValueError(f"poison n={cmd.n}")

    probe = probes(poison)
    queue = CommandQueue(store)
    queued = queue.enqueue(probe.job(n=13), max_attempts=3)
    healthy = queue.enqueue(probe.job(n=14), max_attempts=1, queue="other")
    assert queued.id is not None
    assert healthy.id is not None
    drain(store)  # returns although a dead command is left
    assert probe.attempts(queued.id) == [1, 2, 3]
    assert queue.list() == [queue.get(healthy.id)]  # only the other queue's command is live
    (dead,) = queue.dead()
    assert dead.id == queued.id
    assert (dead.status, dead.attempts, dead.max_attempts) == ("dead", 3, 3)
    assert dead.last_error == "ValueError: poison n=13"
    assert dead.traceback is not None
    assert "Traceback (most recent call last)" in dead.traceback
    assert "in poison" in dead.traceback
    assert "ValueError: poison n=13" in dead.traceback
    assert dead.lease_until is None
    assert dead.worker is None

    fixed.set()
    queue.retry(queued.id)
    revived = queue.get(queued.id)
    assert revived is not None
    assert (revived.status, revived.attempts, revived.max_attempts) == ("pending", 3, 4)
    with pytest.raises(CommandNotFound, match="it is pending, not dead") as info:
        queue.retry(queued.id)
    assert info.value.command_id == queued.id
    drain(store)
    assert probe.attempts(queued.id) == [1, 2, 3, 4]
    assert queue.get(queued.id) is None  # done, so deleted
    assert queue.dead() == []


def test_retry_gives_a_dead_command_more_attempts(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """retry(id, attempts=n) allows n more attempts; a missing id is CommandNotFound."""

    def still_down(cmd: Job, ctx: CommandContext) -> None:
        raise OSError("still down")

    probe = probes(still_down)
    queue = CommandQueue(store)
    queued = queue.enqueue(probe.job(), max_attempts=1)
    assert queued.id is not None
    drain(store)
    queue.retry(queued.id, attempts=2)
    drain(store)
    assert probe.attempts(queued.id) == [1, 2, 3]
    (dead,) = queue.dead()
    assert (dead.attempts, dead.max_attempts, dead.last_error) == (3, 3, "OSError: still down")
    with pytest.raises(CommandNotFound, match="no such command") as info:
        queue.retry(queued.id + 1000)
    assert info.value.command_id == queued.id + 1000


def test_purge_deletes_dead_commands_older_than_given(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """purge(older_than=...) deletes dead commands last updated before then, only those."""

    def fail(cmd: Job, ctx: CommandContext) -> None:
        raise RuntimeError("dead on arrival")

    probe = probes(fail)
    queue = CommandQueue(store)
    old = queue.enqueue(probe.job(n=1), max_attempts=1)
    recent = queue.enqueue(probe.job(n=2), max_attempts=1)
    other_queue = queue.enqueue(probe.job(n=3), max_attempts=1, queue="elsewhere")
    drain(store, ["default", "elsewhere"])
    live = queue.enqueue(probe.job(n=4), delay=3600)
    sql(
        store,
        "UPDATE {s}.commands SET updated_at = now() - interval '2 hours' WHERE id = :id",
        {"id": old.id},
    )
    assert len(queue.dead()) == 3
    assert queue.purge(older_than=3600) == 1
    assert {d.id for d in queue.dead()} == {recent.id, other_queue.id}
    assert queue.purge(queue="elsewhere") == 1
    assert queue.purge(older_than=timedelta(0)) == 1
    assert queue.dead() == []
    assert [i.id for i in queue.list()] == [live.id]  # pending commands are never purged
    assert queue.purge() == 0


# -- leases, fencing and timeouts ----------------------------------------------------------


def test_a_late_ack_after_the_lease_was_reclaimed_deletes_nothing(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """Acks, extensions and failures carry the lease token: a reclaimed attempt's are dropped."""
    go = {1: threading.Event(), 2: threading.Event()}
    started = {1: threading.Event(), 2: threading.Event()}

    def block(cmd: Job, ctx: CommandContext) -> None:
        started[ctx.attempt].set()
        assert go[ctx.attempt].wait(10)

    probe = probes(block)
    queue = CommandQueue(store)
    queued = queue.enqueue(probe.job())
    assert queued.id is not None
    q = command_queries(store.schema)
    first = make_worker(store, concurrency=1, lease=5.0, worker_id="first")
    with running(first):
        assert started[1].wait(10)
        old_token = token_of(store, queued.id)
        with store._raw() as conn, conn.transaction():
            # The lease runs out and the reaper takes the command back, in one transaction
            # (so the first worker's heartbeat cannot extend the lease in between).
            conn.execute(
                f"UPDATE {quote_schema(store.schema)}.commands"
                " SET lease_until = now() - interval '1 s' WHERE id = %(id)s",
                {"id": queued.id},
            )
            reaped = fetch(conn, q.reap)
            assert reaped == [(queued.id, "pending", "test.cq.Job")]
            fenced = {"ids": [queued.id], "tokens": [old_token]}
            assert fetch(conn, q.ack, fenced) == []
            assert fetch(conn, q.extend, {**fenced, "lease": 60.0, "attempts": [1]}) == []
            assert fetch(conn, q.release, {**fenced, "attempts": [0]}) == []
        reclaimed = queue.get(queued.id)
        assert reclaimed is not None
        assert (reclaimed.status, reclaimed.attempts) == ("pending", 1)
        assert reclaimed.last_error is not None
        assert "the lease of worker first expired" in reclaimed.last_error

        second = make_worker(store, concurrency=1, worker_id="second")
        with running(second):
            assert started[2].wait(10)
            go[1].set()  # the first attempt returns now and acks with its old token
            wait_until(lambda: len(probe.calls) == 1, "the first attempt to return")
            first.stop()
            time.sleep(0.3)
            held = queue.get(queued.id)
            assert held is not None, "the stale ack deleted a command another worker holds"
            assert (held.status, held.worker, held.attempts) == ("running", "second", 2)
            go[2].set()
            wait_until(lambda: count(store) == 0, "the second attempt's ack")
    assert probe.attempts(queued.id) == [1, 2]


def test_a_dead_workers_command_is_reclaimed_by_another_workers_heartbeat(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """Expired leases go back to pending (or dead on the last attempt) via a live heartbeat;
    a command claimed behind the one that started is not charged an attempt."""
    probe = probes()
    queue = CommandQueue(store)
    last = queue.enqueue(probe.job(n=2), max_attempts=1)
    retried = queue.enqueue(probe.job(n=1), max_attempts=1)
    assert retried.id is not None
    assert last.id is not None
    # The first of the batch starts at once (its attempt counted); then the worker "died".
    assert len(claim(store, worker="crashed-worker", lease=0.5)) == 2
    time.sleep(0.6)
    drain(store)
    assert probe.ns == [1]
    assert probe.attempts(retried.id) == [1]  # it never started before: still attempt 1
    assert queue.get(retried.id) is None
    (dead,) = queue.dead()
    assert dead.id == last.id
    assert dead.attempts == 1
    assert dead.last_error is not None
    assert "the lease of worker crashed-worker expired" in dead.last_error


def test_a_sync_handler_past_its_timeout_is_retried_and_its_late_writes_roll_back(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """A sync attempt running past @handler(timeout=) is failed and retried; its ctx.tx is lost."""
    mark = make_marks(store)
    queue = CommandQueue(store)
    late_return = threading.Event()
    errors_seen: list[str | None] = []

    def last_error(ctx: CommandContext) -> str | None:
        info = queue.get(ctx.command_id)
        return info.last_error if info else None

    def slow_first(cmd: SlowJob, ctx: CommandContext) -> None:
        mark(ctx, f"attempt-{ctx.attempt}")
        if ctx.attempt == 1:
            # Run on until the worker has failed this attempt, then return (and try to commit)
            # at once: long before the retry is due, while the command is pending again.
            wait_until(lambda: last_error(ctx), "the timeout to be recorded", timeout=5)
            late_return.set()
        else:
            errors_seen.append(last_error(ctx))

    probe = probes(slow_first)
    queued = queue.enqueue(probe.slow_job())
    assert queued.id is not None
    drain(store, concurrency=2, lease=1.0, backoff_base=1.0)
    assert late_return.is_set()
    assert probe.attempts(queued.id) == [1, 2]
    assert probe.calls[0].end - probe.calls[0].start >= HANDLER_TIMEOUT
    assert probe.calls[0].end < probe.calls[1].start
    assert errors_seen == [
        f"TimeoutError: the handler ran longer than its timeout of {HANDLER_TIMEOUT:g} s"
    ]
    assert marks(store) == ["attempt-2"]  # the timed-out attempt's write did not commit
    assert count(store) == 0


def test_an_async_handler_past_its_timeout_is_cancelled_and_retried(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """An async attempt running past its timeout is cancelled (not awaited) and retried."""
    queue = CommandQueue(store)
    cancelled: list[int] = []
    errors_seen: list[str | None] = []

    async def slow_first(cmd: SlowAsyncJob, ctx: CommandContext) -> None:
        if ctx.attempt == 1:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                cancelled.append(ctx.attempt)
                raise
        info = queue.get(ctx.command_id)
        errors_seen.append(info.last_error if info else None)

    probe = probes(slow_first)
    queued = queue.enqueue(probe.slow_async_job())
    assert queued.id is not None
    started = time.monotonic()
    drain(store, concurrency=1, lease=1.0)
    assert time.monotonic() - started < 3  # the 5 s sleep was not waited for
    assert cancelled == [1]
    assert probe.attempts(queued.id) == [1, 2]
    assert probe.calls[0].end - probe.calls[0].start < HANDLER_TIMEOUT + 1.0
    assert len(errors_seen) == 1
    assert errors_seen[0] is not None
    assert errors_seen[0].startswith("TimeoutError")
    assert count(store) == 0


# -- ordering keys -------------------------------------------------------------------------


def test_commands_sharing_an_ordering_key_run_one_at_a_time_in_enqueue_order(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """With 4 slots, one key's commands never overlap and start in enqueue order."""

    def work(cmd: Job, ctx: CommandContext) -> None:
        time.sleep(0.03)

    probe = probes(work)
    queue = CommandQueue(store)
    keys = {"A": list(range(6)), "B": list(range(10, 16))}
    for a, b in zip(keys["A"], keys["B"], strict=True):
        queue.enqueue(probe.job(n=a, note="A"), ordering_key="A")
        queue.enqueue(probe.job(n=b, note="B"), ordering_key="B")
    queue.enqueue_many([probe.job(n=n, note="C") for n in range(20, 24)], ordering_key="C")
    keys["C"] = list(range(20, 24))
    drain(store, concurrency=4, batch_size=1)
    assert len(probe.calls) == 16
    for key, expected in keys.items():
        calls = sorted((c for c in probe.calls if c.note == key), key=lambda c: c.start)
        assert [c.n for c in calls] == expected, f"key {key} ran out of order"
        for before, after in itertools.pairwise(calls):
            assert before.end <= after.start, f"key {key}: {before.n} overlapped {after.n}"


def test_different_ordering_keys_run_in_parallel(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """Commands with different ordering keys are not serialised: they overlap in time."""

    def work(cmd: Job, ctx: CommandContext) -> None:
        time.sleep(0.4)

    probe = probes(work)
    queue = CommandQueue(store)
    for n in range(4):
        queue.enqueue(probe.job(n=n), ordering_key=f"key-{n}")
    started = time.monotonic()
    drain(store, concurrency=4, batch_size=1)
    elapsed = time.monotonic() - started
    assert sorted(probe.ns) == [0, 1, 2, 3]
    assert max(c.start for c in probe.calls) < min(c.end for c in probe.calls)
    assert elapsed < 4 * 0.4


# -- unhandled types, graceful stop --------------------------------------------------------


def test_a_command_without_a_handler_is_flagged_and_kept(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """A pending command of a type the worker cannot handle gets last_error and stays pending."""
    probe = probes()
    queue = CommandQueue(store)
    orphan = queue.enqueue(Orphan(n=1))
    queue.enqueue(probe.job(n=2))
    worker = drain(store)
    assert probe.ns == [2]
    (info,) = queue.list()
    assert info.id == orphan.id
    assert (info.status, info.attempts) == ("pending", 0)
    assert (
        info.last_error
        == f"no handler for command type test.cq.Orphan in worker {worker.worker_id}"
    )

    ran: list[int] = []
    orphan_spec = HandlerSpec(Orphan, lambda cmd, ctx: ran.append(cmd.n), False, None)
    drain(store, handlers={"test.cq.Orphan": orphan_spec})
    assert ran == [1]  # a worker that has the handler still gets it: nothing was dropped
    assert count(store) == 0


def test_stop_releases_claimed_commands_that_have_not_started(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """stop() during a claimed batch: the running handler finishes, the rest go back untouched."""
    started, go = threading.Event(), threading.Event()

    def block_first(cmd: Job, ctx: CommandContext) -> None:
        if cmd.n == 0:
            started.set()
            assert go.wait(10)

    probe = probes(block_first)
    queue = CommandQueue(store)
    worker = make_worker(store, concurrency=1)
    with running(worker):
        # A slot claims one command until it has timed a handler, then ~0.1 s of work.
        queue.enqueue(probe.job(n=-1))
        deadline = time.monotonic() + 10
        while probe.ns != [-1] and time.monotonic() < deadline:
            time.sleep(0.01)
        ids = queue.enqueue_many([probe.job(n=n) for n in range(5)])
        assert started.wait(10)
        assert count(store, "status = 'running'") == 5  # one claimed batch
        # Only the started one has its attempt counted.
        assert count(store, "status = 'running' AND attempts = 1") == 1
        worker.stop()
        go.set()
    assert probe.ns == [-1, 0]
    assert queue.get(ids[0]) is None  # the started one finished and was acked
    rest = queue.list()
    assert [i.id for i in rest] == ids[1:]
    for info in rest:
        assert (info.status, info.attempts, info.worker, info.lease_until) == (
            "pending",
            0,
            None,
            None,
        )
        assert info.last_error is None
    drain(store)
    assert probe.ns[:2] == [-1, 0]
    assert sorted(probe.ns[2:]) == [1, 2, 3, 4]  # each released one ran once, on its first attempt
    assert all(c.attempt == 1 for c in probe.calls)


def test_an_attempt_counts_once_its_handler_starts_not_when_claimed(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """In a claimed batch, a command's attempt is counted when its handler starts (within a
    moment), and those still waiting behind it are not charged."""
    started, go = threading.Event(), threading.Event()

    def block_second(cmd: Job, ctx: CommandContext) -> None:
        if cmd.n == 1:
            started.set()
            assert go.wait(10)

    probe = probes(block_second)
    queue = CommandQueue(store)
    worker = make_worker(store, concurrency=1)
    with running(worker):
        queue.enqueue(probe.job(n=-1))  # a timed handler: the slot then claims in batches
        wait_until(lambda: probe.ns == [-1], "the warm-up command")
        ids = queue.enqueue_many([probe.job(n=n) for n in range(4)])
        assert started.wait(10)
        # n=1 runs, n=2 and n=3 wait (n=0 is done; its ack may still be on its way).
        assert count(store, "id = ANY(:ids) AND status = 'running'", {"ids": ids[1:]}) == 3
        wait_until(
            lambda: count(store, "id = :id AND attempts = 1", {"id": ids[1]}) == 1,
            "the attempt of the started command to be counted",
        )
        assert count(store, "id = ANY(:ids) AND attempts = 0", {"ids": ids[2:]}) == 2
        go.set()
    drain(store)
    assert sorted(probe.ns) == [-1, 0, 1, 2, 3]
    assert all(c.attempt == 1 for c in probe.calls)


def test_a_handler_still_running_after_the_grace_period_is_failed_for_retry(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """Past ``grace`` a stopping worker gives up the attempt (retried later), losing nothing."""
    started, go = threading.Event(), threading.Event()

    def block_once(cmd: Job, ctx: CommandContext) -> None:
        if ctx.attempt == 1:
            started.set()
            assert go.wait(10)

    probe = probes(block_once)
    queue = CommandQueue(store)
    queued = queue.enqueue(probe.job())
    assert queued.id is not None
    worker = make_worker(store, concurrency=1, grace=0.3)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert started.wait(10)
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    info = queue.get(queued.id)
    assert info is not None
    assert (info.status, info.attempts) == ("pending", 1)
    assert info.last_error is not None
    assert info.last_error.startswith("WorkerShutdown")
    go.set()  # the abandoned attempt returns now; its ack must not count
    wait_until(lambda: len(probe.calls) == 1, "the abandoned attempt to return")
    time.sleep(0.2)
    assert queue.get(queued.id) is not None
    drain(store)
    assert probe.attempts(queued.id) == [1, 2]
    assert count(store) == 0


# -- correlation, wake-ups -----------------------------------------------------------------


def test_correlation_id_flows_from_enqueue_to_the_handlers_events(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """enqueue inside correlation() stores the ids; events the handler appends carry them."""

    def append(cmd: Job, ctx: CommandContext) -> None:
        store.append(f"direct-{cmd.n}", [Opened(owner="direct")])
        store.append(f"in-tx-{cmd.n}", [Opened(owner="tx")], tx=ctx.tx)

    probe = probes(append)
    queue = CommandQueue(store)
    with correlation(correlation_id="x", causation_id="request-7"):
        correlated = queue.enqueue(probe.job(n=1))
    plain = queue.enqueue(probe.job(n=2))
    info = queue.get(correlated.id)  # type: ignore[arg-type]
    assert info is not None
    assert info.correlation_id == "x"
    rows = sql(store, "SELECT causation_id FROM {s}.commands WHERE id = :id", {"id": correlated.id})
    assert rows == [("request-7",)]
    drain(store)
    by_n = {c.n: c for c in probe.calls}
    assert by_n[1].correlation_id == "x"
    assert by_n[2].correlation_id is None
    for stream in ("direct-1", "in-tx-1"):
        (event,) = store.read_stream(stream)
        assert event.metadata["correlation_id"] == "x"
        assert event.metadata["causation_id"] == f"command:{correlated.id}"
    for stream in ("direct-2", "in-tx-2"):
        (event,) = store.read_stream(stream)
        assert event.metadata["correlation_id"] == f"command:{plain.id}"
        assert event.metadata["causation_id"] == f"command:{plain.id}"


def test_listen_notify_wakes_an_idle_worker_at_once(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """An enqueue wakes a listening worker long before its poll interval."""
    probe = probes()
    queue = CommandQueue(store)
    worker = make_worker(store, listen=True, poll_interval=30.0)
    with running(worker):
        time.sleep(0.5)  # every slot has found nothing and waits for a wake-up
        enqueued = time.monotonic()
        queue.enqueue(probe.job(n=1))
        wait_until(lambda: probe.ns == [1], "the handler", timeout=10)
        latency = probe.calls[0].start - enqueued
    assert latency < 2.0


def test_listen_notify_wakes_a_worker_on_a_custom_queue_after_a_transaction(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """A transaction's enqueue announces its queue on commit, waking that queue's worker."""
    probe = probes()
    queue = CommandQueue(store)
    worker = make_worker(store, ["custom"], listen=True, poll_interval=30.0)
    with running(worker):
        time.sleep(0.5)
        with store.transaction() as tx:
            queue.enqueue(probe.job(n=1), queue="custom", tx=tx)
        committed = time.monotonic()
        wait_until(lambda: probe.ns == [1], "the handler", timeout=10)
        latency = probe.calls[0].start - committed
    assert latency < 2.0


# -- the async twin ------------------------------------------------------------------------


async def test_async_queue_enqueues_alone_and_in_async_transactions(
    store: EventStore, async_store: AsyncEventStore, probes: Callable[..., Probe]
) -> None:
    """AsyncCommandQueue.enqueue returns ids, dedupes, and commits or rolls back with its tx."""
    probe = probes()
    queue = AsyncCommandQueue(async_store)
    alone = await queue.enqueue(probe.job(n=1), dedupe_key="a")
    assert alone.id is not None
    assert not alone.duplicate
    assert await queue.enqueue(probe.job(n=2), dedupe_key="a") == Enqueued(alone.id, True)
    async with async_store.transaction() as tx:
        await async_store.append("async-order", [Opened(owner="ann")], tx=tx)
        joined = await queue.enqueue(probe.job(n=3), tx=tx)
        many = await queue.enqueue_many([probe.job(n=4), probe.job(n=5)], tx=tx)
        assert await asyncio.to_thread(count, store) == 1  # not committed yet
    assert joined.id is not None
    assert joined.id > alone.id
    assert len(many) == 2
    with pytest.raises(RuntimeError, match="abort"):
        async with async_store.transaction() as tx:
            await queue.enqueue(probe.job(n=6), tx=tx)
            raise RuntimeError("abort")
    assert await asyncio.to_thread(count, store) == 4
    assert len(await async_store.read_stream("async-order")) == 1
    await asyncio.to_thread(drain, store)
    assert sorted(probe.ns) == [1, 3, 4, 5]


async def test_async_queue_lists_dead_commands_and_retries_them(
    store: EventStore, async_store: AsyncEventStore, probes: Callable[..., Probe]
) -> None:
    """AsyncCommandQueue.list/dead/get/retry/purge/counts mirror the sync queue."""
    fixed = threading.Event()

    def fail_until_fixed(cmd: Job, ctx: CommandContext) -> None:
        if not fixed.is_set():
            raise LookupError(f"missing {cmd.n}")

    probe = probes(fail_until_fixed)
    queue = AsyncCommandQueue(async_store)
    first = await queue.enqueue(probe.job(n=1), max_attempts=2)
    second = await queue.enqueue(probe.job(n=2), max_attempts=1)
    assert first.id is not None
    assert second.id is not None
    assert [i.id for i in await queue.list()] == [first.id, second.id]
    await asyncio.to_thread(drain, store)
    assert await queue.list() == []
    dead = await queue.dead()
    assert [d.id for d in dead] == [first.id, second.id]
    assert [d.last_error for d in dead] == ["LookupError: missing 1", "LookupError: missing 2"]
    assert all(d.traceback and "LookupError" in d.traceback for d in dead)
    assert await queue.counts() == [("default", "dead", 2, dead[0].enqueued_at)]

    fixed.set()
    await queue.retry(first.id)
    info = await queue.get(first.id)
    assert info is not None
    assert (info.status, info.max_attempts) == ("pending", 3)
    with pytest.raises(CommandNotFound, match="pending, not dead"):
        await queue.retry(first.id)
    with pytest.raises(CommandNotFound, match="no such command"):
        await queue.retry(first.id + 1000)
    await asyncio.to_thread(drain, store)
    assert await queue.get(first.id) is None
    assert probe.attempts(first.id) == [1, 2, 3]
    assert await queue.purge(older_than=3600) == 0
    assert await queue.purge() == 1
    assert await queue.dead() == []
    assert await asyncio.to_thread(count, store) == 0


def test_a_delay_given_in_a_long_transaction_counts_from_the_enqueue(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """enqueue(tx=, delay=) schedules from the moment of the enqueue, not from the start of
    the transaction."""
    probe = probes()
    queue = CommandQueue(store)
    with store.transaction() as tx:
        tx.execute(text("SELECT 1"))  # the transaction starts here
        time.sleep(1.0)
        queued = queue.enqueue(probe.job(n=1), delay=2.0, tx=tx)
    assert queued.id is not None
    ((ahead,),) = sql(
        store,
        "SELECT extract(epoch FROM run_at - clock_timestamp()) FROM {s}.commands WHERE id = :id",
        {"id": queued.id},
    )
    assert 1.5 < ahead <= 2.0
