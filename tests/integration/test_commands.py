"""The command queue's workers on a real PostgreSQL: handler contexts, retries and backoff,
fenced leases and timeouts, ordering keys, unhandled types, graceful stops, the release of a
claimed command whose dedupe key is taken again, and LISTEN/NOTIFY wake-ups.

The queue's API (enqueue and its options, dedupe keys, transactions, correlation ids, list,
get, counts, dead, retry, purge) is tested against both twins in tests/contract/test_queue.py
and tests/contract/test_queue_operations.py.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import text

from eventsource import (
    CommandContext,
    CommandQueue,
    EventSourceError,
    EventStore,
)
from eventsource.commands import HandlerSpec, command_queries
from eventsource.db import fetch, quote_schema
from tests.domain import Opened

from ._probes import (
    HANDLER_TIMEOUT,
    AsyncJob,
    Job,
    Orphan,
    Probe,
    SlowAsyncJob,
    SlowJob,
    claim,
    count,
    drain,
    make_worker,
    registered_probes,
    running,
    wait_until,
)
from ._support import sql


@pytest.fixture
def probes() -> Iterator[Callable[..., Probe]]:
    """Make probes (``probes(action)``); they are unregistered after the test."""
    with registered_probes() as make:
        yield make


# -- helpers -------------------------------------------------------------------------------


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


# -- dedupe keys ---------------------------------------------------------------------------


def test_releasing_a_command_whose_dedupe_key_was_enqueued_again(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """A claimed command is released (graceful stop) although its dedupe key is pending again."""
    probe = probes()
    queue = CommandQueue(store)
    first = queue.enqueue(probe.job(n=1), dedupe_key="k")
    ((claimed_id, *_, token, _corr, _cause, _at, _key, _prio, _run_at, _first, _trace),) = claim(
        store
    )
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


# -- retries ------------------------------------------------------------------------------


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


# -- wake-ups -----------------------------------------------------------------------------


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
