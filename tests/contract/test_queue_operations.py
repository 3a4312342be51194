"""The command queue, for both twins: enqueues in transactions (the store's, or a SQLAlchemy
connection's), correlation ids, and the inspection and operation of commands (list, get,
counts, dead, retry, purge).

Commands are delivered by a worker over a sync store on the same schema (``worker_store``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from eventsource import (
    CommandContext,
    CommandNotFound,
    EventStore,
    correlation,
)
from tests.domain import Opened
from tests.integration._probes import Job, Probe, count, drain
from tests.integration._support import sql

# -- transactions --------------------------------------------------------------------------


def test_enqueue_in_a_transaction_commits_with_the_append(
    store: Any, queue: Any, worker_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """With tx=, the command and the append become visible together, at commit."""
    probe = probes()
    many_probe = probes()
    with store.transaction() as tx:
        store.append("order-1", [Opened(owner="ann")], tx=tx)
        queued = queue.enqueue(probe.job(n=1), tx=tx)
        many = queue.enqueue_many([many_probe.job(n=2), many_probe.job(n=3)], tx=tx)
        assert queued.id is not None
        assert count(store) == 0  # not visible outside the transaction yet
        assert store.read_stream("order-1") == []
    assert count(store, "id = :id", {"id": queued.id}) == 1
    assert count(store, "id = ANY(:ids)", {"ids": many}) == 2
    assert len(store.read_stream("order-1")) == 1
    drain(worker_store)
    assert probe.ns == [1]
    assert probe.calls[0].command_id == queued.id
    assert sorted(many_probe.ns) == [2, 3]


def test_a_rolled_back_enqueue_is_never_delivered(
    store: Any, queue: Any, worker_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """A command enqueued in a transaction that rolls back is never handled."""
    probe = probes()
    with pytest.raises(RuntimeError, match="abort"), store.transaction() as tx:
        store.append("order-2", [Opened(owner="bob")], tx=tx)
        queue.enqueue(probe.job(n=1), tx=tx)
        queue.enqueue_many([probe.job(n=2), probe.job(n=3)], tx=tx)
        raise RuntimeError("abort")
    assert count(store) == 0
    assert store.read_stream("order-2") == []
    queue.enqueue(probe.job(n=4))  # committed: proves the worker below does run handlers
    drain(worker_store)
    assert probe.ns == [4]


def test_enqueue_joins_a_sqlalchemy_connection_transaction(
    store: Any, queue: Any, engine: Any, worker_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """tx= may be a SQLAlchemy Connection (as projections hand out): it commits with it."""
    probe = probes()
    with engine.connect() as conn:
        conn.begin()
        queue.enqueue(probe.job(n=1), tx=conn)
        conn.rollback()
    assert count(store) == 0
    with engine.begin() as conn:
        queue.enqueue(probe.job(n=2), tx=conn)
        queue.enqueue_many([probe.job(n=3)], tx=conn)
    assert count(store) == 2
    drain(worker_store)
    assert sorted(probe.ns) == [2, 3]


# -- correlation ---------------------------------------------------------------------------


def test_correlation_id_flows_from_enqueue_to_the_handlers_events(
    store: Any, queue: Any, worker_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """enqueue inside correlation() stores the ids; events the handler appends carry them."""

    def append(cmd: Job, ctx: CommandContext) -> None:
        worker_store.append(f"direct-{cmd.n}", [Opened(owner="direct")])
        worker_store.append(f"in-tx-{cmd.n}", [Opened(owner="tx")], tx=ctx.tx)

    probe = probes(append)
    with correlation(correlation_id="x", causation_id="request-7"):
        correlated = queue.enqueue(probe.job(n=1))
    plain = queue.enqueue(probe.job(n=2))
    info = queue.get(correlated.id)
    assert info is not None
    assert info.correlation_id == "x"
    rows = sql(store, "SELECT causation_id FROM {s}.commands WHERE id = :id", {"id": correlated.id})
    assert rows == [("request-7",)]
    drain(worker_store)
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


# -- dead commands: list, get, counts, retry, purge ----------------------------------------


def _kill(store: Any, command_id: int) -> None:
    """Make a command dead, as a worker does after its last attempt (with an error)."""
    sql(
        store,
        "UPDATE {s}.commands SET status = 'dead', attempts = max_attempts,"
        " last_error = 'boom', updated_at = now() - interval '2 hours' WHERE id = :id",
        {"id": command_id},
    )


def test_dead_commands_are_listed_retried_and_purged(
    store: Any, queue: Any, probes: Callable[..., Probe]
) -> None:
    """dead() lists them with their error; retry gives attempts back; purge deletes by age."""
    probe = probes()
    retried = queue.enqueue(probe.job(note="retried"))
    purged = queue.enqueue(probe.job(note="purged"), queue="old")
    _kill(store, retried.id)
    _kill(store, purged.id)
    assert sorted(i.id for i in queue.dead()) == [retried.id, purged.id]
    assert queue.dead(queue="old")[0].last_error == "boom"
    queue.retry(retried.id, attempts=2)
    again = queue.get(retried.id)
    assert (again.status, again.max_attempts - again.attempts) == ("pending", 2)
    with pytest.raises(CommandNotFound):
        queue.retry(retried.id)  # no longer dead
    assert queue.purge(older_than=3 * 3600) == 0  # died two hours ago: too young
    assert queue.purge(older_than=3600, queue="old") == 1
    assert queue.get(purged.id) is None
    assert queue.dead() == []


def test_a_poison_command_is_dead_after_max_attempts_and_can_be_retried(
    store: Any, queue: Any, worker_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """After max_attempts failures a command is dead with error and traceback; retry revives."""
    fixed = threading.Event()

    def poison(cmd: Job, ctx: CommandContext) -> None:
        if not fixed.is_set():
            raise ValueError(f"poison n={cmd.n}")

    probe = probes(poison)
    queued = queue.enqueue(probe.job(n=13), max_attempts=3)
    healthy = queue.enqueue(probe.job(n=14), max_attempts=1, queue="other")
    assert queued.id is not None
    assert healthy.id is not None
    drain(worker_store)  # returns although a dead command is left
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
    drain(worker_store)
    assert probe.attempts(queued.id) == [1, 2, 3, 4]
    assert queue.get(queued.id) is None  # done, so deleted
    assert queue.dead() == []


def test_retry_gives_a_dead_command_more_attempts(
    queue: Any, worker_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """retry(id, attempts=n) allows n more attempts; a missing id is CommandNotFound."""

    def still_down(cmd: Job, ctx: CommandContext) -> None:
        raise OSError("still down")

    probe = probes(still_down)
    queued = queue.enqueue(probe.job(), max_attempts=1)
    assert queued.id is not None
    drain(worker_store)
    queue.retry(queued.id, attempts=2)
    drain(worker_store)
    assert probe.attempts(queued.id) == [1, 2, 3]
    (dead,) = queue.dead()
    assert (dead.attempts, dead.max_attempts, dead.last_error) == (3, 3, "OSError: still down")
    with pytest.raises(CommandNotFound, match="no such command") as info:
        queue.retry(queued.id + 1000)
    assert info.value.command_id == queued.id + 1000


def test_purge_deletes_dead_commands_older_than_given(
    store: Any, queue: Any, worker_store: EventStore, probes: Callable[..., Probe]
) -> None:
    """purge(older_than=...) deletes dead commands last updated before then, only those."""

    def fail(cmd: Job, ctx: CommandContext) -> None:
        raise RuntimeError("dead on arrival")

    probe = probes(fail)
    old = queue.enqueue(probe.job(n=1), max_attempts=1)
    recent = queue.enqueue(probe.job(n=2), max_attempts=1)
    other_queue = queue.enqueue(probe.job(n=3), max_attempts=1, queue="elsewhere")
    drain(worker_store, ["default", "elsewhere"])
    live = queue.enqueue(probe.job(n=4), delay=3600)
    sql(
        store,
        "UPDATE {s}.commands SET updated_at = now() - interval '2 hours' WHERE id = :id",
        {"id": old.id},
    )
    assert len(queue.dead()) == 3
    assert queue.counts() == [
        ("default", "dead", 2, queue.get(old.id).enqueued_at),
        ("default", "pending", 1, queue.get(live.id).enqueued_at),
        ("elsewhere", "dead", 1, queue.get(other_queue.id).enqueued_at),
    ]
    assert queue.purge(older_than=3600) == 1
    assert {d.id for d in queue.dead()} == {recent.id, other_queue.id}
    assert queue.purge(queue="elsewhere") == 1
    assert queue.purge(older_than=timedelta(0)) == 1
    assert queue.dead() == []
    assert [i.id for i in queue.list()] == [live.id]  # pending commands are never purged
    assert queue.purge() == 0
