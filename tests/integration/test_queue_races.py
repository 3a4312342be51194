"""Races of the command queue and the append function, forced deterministically.

Each test pins one finding of issue 9 and fails without its fix: claims of one ordering key
under a retry (9), a sync handler past its timeout (10), the heartbeat behind a row lock (12),
a long schema name (14) and the creation race under another partition key (19).
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text

from eventsource import (
    ANY,
    NO_STREAM,
    CommandContext,
    CommandQueue,
    ConcurrencyError,
    EventStore,
    partition_for,
)
from eventsource.commands import command_queries
from eventsource.db import conninfo, fetch, quote_schema
from tests.domain import Deposited, Opened

from . import _probes as cq
from ._support import assert_dense, sql

Probe = cq.Probe


@pytest.fixture
def probes() -> Iterator[Callable[..., Probe]]:
    """Make probes (``probes(action)``) recording the test handlers' calls; unregistered after."""
    with cq.registered_probes() as make:
        yield make


class Background:
    """``call`` run in a thread; its result or its error, once joined."""

    def __init__(self, call: Callable[[], Any], name: str) -> None:
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(call,), name=name, daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.outcome["result"] = call()
        except Exception as exc:  # the test inspects it
            self.outcome["error"] = exc

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def join(self, timeout: float = 15.0) -> dict[str, Any]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.thread.name} still runs after {timeout} s"
        return self.outcome


def lock_waiters(store: EventStore) -> int:
    """How many sessions wait on a lock in a statement on this store's schema."""
    rows = sql(
        store,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND position(:schema in query) > 0",
        {"schema": store.schema},
    )
    return int(rows[0][0])


def enqueue(queue: CommandQueue, command: Any, **options: Any) -> int:
    """Enqueue ``command``; its id."""
    command_id = queue.enqueue(command, **options).id
    assert command_id is not None
    return command_id


def claim_params(worker: str) -> dict[str, Any]:
    """The parameters of a worker's claim of every ready test command (as ``cq.claim``)."""
    return {
        "queues": ["default"],
        "types": sorted(cq.HANDLERS),
        "limit": 100,
        "lease": 30.0,
        "worker": worker,
    }


# -- finding 9: claims of one ordering key are exclusive ------------------------------------


def test_a_retry_racing_a_claim_never_runs_two_commands_of_one_key(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """A dead command retried while a later command of its key is being claimed stays
    unclaimed: a concurrent claim never takes a second command of that key."""

    def fail(cmd: Any, ctx: CommandContext) -> None:
        raise RuntimeError("boom")

    probe = probes(fail)
    queue = CommandQueue(store)
    x = enqueue(queue, probe.job(n=1), ordering_key="K", max_attempts=1)
    cq.drain(store)
    info = queue.get(x)
    assert info is not None
    assert info.status == "dead"
    y = enqueue(queue, probe.job(n=2), ordering_key="K")

    with store._raw() as t1, t1.transaction():
        # T1 claims Y (X is dead) and has not committed yet.
        first = fetch(t1, command_queries(store.schema).claim, claim_params("t1"))
        assert [row[0] for row in first] == [y]
        queue.retry(x)  # committed: X is pending again
        # T3 claims meanwhile; it may wait for T1's uncommitted claim.
        t3 = Background(lambda: cq.claim(store, worker="t3"), "claim-t3")
        cq.wait_until(lambda: t3.done or lock_waiters(store) > 0, "the second claim")
    claimed = [row[0] for row in t3.join().get("result", [])]
    assert "error" not in t3.outcome, t3.outcome
    assert claimed == [], f"a second command of key K was claimed beside {y}: {claimed}"
    assert cq.count(store, "status = 'running' AND ordering_key = 'K'") == 1


# -- finding 10: a timed-out sync handler keeps its key --------------------------------------


def test_a_sync_handler_past_its_timeout_keeps_its_key_until_it_returns(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """No command of a key (nor the retry of the timed-out one) starts before a sync handler
    that ran past its timeout has returned."""

    def act(cmd: Any, ctx: CommandContext) -> None:
        if cmd.n == 1 and ctx.attempt == 1:
            time.sleep(1.5)  # far past the handler's timeout of 0.3 s

    probe = probes(act)
    queue = CommandQueue(store)
    first = enqueue(queue, probe.slow_job(n=1), ordering_key="K")
    second = enqueue(queue, probe.slow_job(n=2), ordering_key="K")
    with cq.running(cq.make_worker(store, concurrency=2, lease=1.0)):
        cq.wait_until(
            lambda: cq.count(store) == 0 and len(probe.calls) >= 3, "both commands", timeout=15
        )
    runs = sorted(probe.calls, key=lambda c: c.start)
    assert [(c.command_id, c.attempt) for c in runs] == [(first, 1), (first, 2), (second, 1)]
    for before, after in itertools.pairwise(runs):
        assert after.start >= before.end, (
            f"command {after.command_id} attempt {after.attempt} started"
            f" {before.end - after.start:.3f} s before command {before.command_id}"
            f" attempt {before.attempt} returned"
        )


# -- finding 12: the heartbeat is not held up by a row lock ----------------------------------


def test_the_heartbeat_extends_leases_while_a_held_row_is_locked(
    store: EventStore, probes: Callable[..., Probe]
) -> None:
    """A lock on one held command's row (a ``ctx.tx`` between its ack and its commit) does not
    stop the heartbeat extending the other leases: a long handler is not reclaimed."""
    a_started, b_started, locked = threading.Event(), threading.Event(), threading.Event()

    def act(cmd: Any, ctx: CommandContext) -> None:
        if cmd.n == 1:
            a_started.set()
            locked.wait(10)  # then its ack waits for the row lock
        elif ctx.attempt == 1:
            b_started.set()
            time.sleep(3.0)  # three leases

    probe = probes(act)
    queue = CommandQueue(store)
    a = enqueue(queue, probe.job(n=1))
    b = enqueue(queue, probe.job(n=2))
    lock = f"SELECT id FROM {quote_schema(store.schema)}.commands WHERE id = %(id)s FOR UPDATE"
    with cq.running(cq.make_worker(store, concurrency=2, lease=1.0)):
        assert a_started.wait(5)
        assert b_started.wait(5)
        with store._raw() as locker, locker.transaction(), store._raw() as reaper:
            assert fetch(locker, lock, {"id": a}) == [(a,)]
            locked.set()
            # Meanwhile another worker's heartbeat reclaims whatever lease runs out.
            deadline = time.monotonic() + 10
            while not any(c.command_id == b for c in probe.calls):
                assert time.monotonic() < deadline, "the long handler did not return"
                fetch(reaper, command_queries(store.schema).reap)
                time.sleep(0.05)
        cq.wait_until(lambda: cq.count(store) == 0, "both commands done")
    assert probe.attempts(b) == [1], "the long handler's lease ran out and it ran again"
    assert probe.attempts(a) == [1]


# -- finding 14: a long schema name ---------------------------------------------------------

LONG_SCHEMA_LENGTH = 60


@pytest.fixture
def long_store(database_url: str) -> Iterator[EventStore]:
    """A store (not upgraded) in a fresh schema with a 60-character name, dropped afterwards."""
    prefix = f"t_{uuid.uuid4().hex[:12]}_"
    name = prefix + "x" * (LONG_SCHEMA_LENGTH - len(prefix))
    store = EventStore.from_url(database_url, schema=name, partitions=4)
    try:
        yield store
    finally:
        store.close()
        engine = create_engine(database_url, poolclass=None)
        try:
            with engine.begin() as conn:
                conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_schema(name)} CASCADE"))
        finally:
            engine.dispose()


def sessions(store: EventStore, statement: str) -> int:
    """Idle sessions whose last statement began with ``statement`` (a claim on this store's
    schema, or this store's LISTEN)."""
    rows = sql(
        store,
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle'"
        " AND starts_with(query, :statement)"
        " AND (position(:schema in query) > 0 OR query = :listen)",
        {
            "statement": statement,
            "schema": store.schema,
            "listen": command_queries(store.schema).listen,
        },
    )
    return int(rows[0][0])


def test_a_long_schema_name_works_end_to_end_with_listen(
    long_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """With a 60-character schema name, enqueues in a transaction (with an append, and in a
    SQLAlchemy connection) commit, and a LISTENing worker is woken at once to run them."""
    store = long_store
    assert len(store.schema) == LONG_SCHEMA_LENGTH
    store.upgrade()
    probe = probes()
    queue = CommandQueue(store)
    listen = command_queries(store.schema).listen
    worker = cq.make_worker(store, concurrency=1, listen=True, poll_interval=30.0)

    def idle_and_listening() -> bool:
        # The slot has claimed (and found nothing) and sleeps; only a NOTIFY wakes it now.
        claim = command_queries(store.schema).claim_one_queue
        return sessions(store, listen) == 1 and sessions(store, claim[:60]) == 1

    with cq.running(worker):
        cq.wait_until(idle_and_listening, "the worker to listen and idle")
        started = time.monotonic()
        with store.transaction() as tx:
            store.append("long-1", [Opened(owner="a")], NO_STREAM, tx=tx)
            queue.enqueue(probe.job(n=1), tx=tx)
        cq.wait_until(lambda: probe.ns == [1], "the command enqueued in a transaction", 5)
        assert time.monotonic() - started < 5
        cq.wait_until(lambda: cq.count(store) == 0, "the ack")
        cq.wait_until(idle_and_listening, "the worker to idle again")
        started = time.monotonic()
        with store.engine.begin() as conn:  # a reactor's way: pg_notify in the transaction
            queue.enqueue(probe.job(n=2), tx=conn)
        cq.wait_until(lambda: probe.ns == [1, 2], "the command enqueued in a connection", 5)
        assert time.monotonic() - started < 5
    assert store.stream_version("long-1") == 1


def test_appends_to_a_long_named_schema_are_announced(long_store: EventStore) -> None:
    """With a 60-character schema name, an append is announced on the channel that projection
    workers LISTEN on."""
    store = long_store
    store.upgrade()
    with psycopg.connect(conninfo(store.url), autocommit=True) as listener:
        listener.execute(store._queries.listen)
        result = store.append("long-1", [Opened(owner="a")], NO_STREAM)
        with store.transaction() as tx:
            store.append("long-2", [Opened(owner="b")], NO_STREAM, tx=tx)
        payloads: list[str] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(payloads) < 2:
            payloads += [n.payload for n in listener.notifies(timeout=0.25, stop_after=1)]
    assert payloads, "no announcement arrived"
    assert str(result.partition) in ",".join(payloads)


# -- finding 19: the creation race under another partition key ------------------------------


def test_a_creation_race_under_another_key_conflicts_instead_of_deadlocking(
    database_url: str, store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ANY append that finds its new stream created meanwhile in a lower partition, whose
    head another writer holds while it waits for ours, fails with ConcurrencyError (no
    deadlock error), and the other writer completes."""
    keys = {partition_for(f"key-{i}", 4): f"key-{i}" for i in range(200)}
    low, high = keys[min(keys)], keys[max(keys)]
    assert partition_for(low, 4) < partition_for(high, 4)
    # Bounded lock waits (longer than deadlock_timeout, 1 s by default): a hang fails.
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=5000")
    racers = EventStore.from_url(database_url, schema=store.schema, partitions=4)
    try:
        assert sql(racers, "SHOW lock_timeout") == [("5s",)]

        def w1() -> Any:
            # Appends with ANY to the new stream S, which maps to the high partition.
            with racers.transaction() as tx:
                racers.append("S", [Deposited(amount=1)], ANY, partition_key=high, tx=tx)
                return tx.flush()

        def w4() -> Any:
            # Holds the low head, then waits for the high one (behind W1).
            with racers.transaction() as tx:
                racers.append("w4-low", [Opened(owner="w4")], NO_STREAM, partition_key=low, tx=tx)
                tx.flush()
                racers.append("w4-high", [Opened(owner="w4")], NO_STREAM, partition_key=high, tx=tx)
                return tx.flush()

        with racers.transaction() as w3:  # W3 holds the high head until it commits
            racers.append("w3", [Opened(owner="w3")], NO_STREAM, partition_key=high, tx=w3)
            w3.flush()
            first = Background(w1, "writer-w1")
            cq.wait_until(lambda: lock_waiters(store) == 1, "W1 to wait for the high head")
            # W2 creates S under the other key: in the low partition.
            racers.append("S", [Opened(owner="w2")], NO_STREAM, partition_key=low)
            fourth = Background(w4, "writer-w4")
            cq.wait_until(lambda: lock_waiters(store) == 2, "W4 to wait for the high head")
        one, four = first.join(), fourth.join()
    finally:
        racers.close()
    errors = [o.get("error") for o in (one, four)]
    assert not any("deadlock" in str(e) for e in errors), errors
    error = one.get("error")
    assert isinstance(error, ConcurrencyError), one
    assert (error.stream_id, error.expected) == ("S", ANY)
    assert "error" not in four, four
    assert [r.partition for r in store.read_stream("S")] == [partition_for(low, 4)]
    assert store.stream_version("w4-high") == 1
    assert assert_dense(store) == 4
