"""Appends racing another writer of the same stream, forced deterministically.

A transaction writes (flushes) an append and stays open; another writer appends to the same
stream meanwhile and has to wait for it. Whatever path the second append takes (the
one-statement path in autocommit, or the append function), the outcome must be what the
expected version says, with no hole in any partition and every stream in one partition.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from eventsource import (
    ANY,
    NO_STREAM,
    AsyncEventStore,
    ConcurrencyError,
    EventStore,
    PendingAppend,
    Transaction,
    partition_for,
)
from tests.domain import Deposited, Opened

from ._support import assert_dense


def keys_in_two_partitions(partitions: int = 4) -> tuple[str, str]:
    """Two partition keys that map to different partitions."""
    first = "key-0"
    other = next(
        f"key-{i}"
        for i in range(1, 1000)
        if partition_for(f"key-{i}", partitions) != partition_for(first, partitions)
    )
    return first, other


class Racer:
    """``call`` run in a thread, started inside the first writer's transaction."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(call,))
        self.thread.start()
        time.sleep(0.3)
        assert self.thread.is_alive(), f"the second writer did not wait: {self.outcome}"

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.outcome["result"] = call()
        except Exception as exc:  # the test inspects it
            self.outcome["error"] = exc

    def finish(self) -> dict[str, Any]:
        """The outcome, once the first writer has committed."""
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()
        return self.outcome


def race(
    store: EventStore, first: Callable[[Transaction], Any], *seconds: Callable[[], Any]
) -> tuple[Any, list[dict[str, Any]]]:
    """``first(tx)`` written (flushed) in a transaction kept open while each of ``seconds``
    runs in a thread and has to wait for it; after the commit, what ``first`` returned and the
    outcome of each second writer."""
    with store.transaction() as tx:
        written = first(tx)
        tx.flush()
        racers = [Racer(second) for second in seconds]
    return written, [racer.finish() for racer in racers]


def in_transaction(
    store: EventStore, use_connection: bool, appends: Callable[[Transaction], Any]
) -> Callable[[], Any]:
    """A second writer: ``appends(tx)`` in a transaction of its own, which first runs a
    statement of its own when ``use_connection`` (so it is not an appends-only one)."""

    def run() -> Any:
        with store.transaction() as tx:
            if use_connection:
                tx.execute(text("SELECT 1"))
            result = appends(tx)
        return result.result if isinstance(result, PendingAppend) else result

    return run


def test_any_append_follows_a_creator_in_another_partition(store: EventStore) -> None:
    """An ANY append racing the creation of its stream under another partition key lands in
    the creator's partition, at version 2."""
    first, other = keys_in_two_partitions()
    _, (outcome,) = race(
        store,
        lambda tx: store.append("x", [Opened(owner="a")], NO_STREAM, partition_key=first, tx=tx),
        lambda: store.append("x", [Deposited(amount=1)], ANY, partition_key=other),
    )
    result = outcome["result"]
    assert (result.stream_version, result.partition) == (2, partition_for(first, 4))
    assert [r.stream_version for r in store.read_stream("x")] == [1, 2]
    assert assert_dense(store) == 2


def test_creating_a_stream_that_another_writer_is_creating_conflicts(store: EventStore) -> None:
    """NO_STREAM racing another creator (even under another partition key) conflicts at 1."""
    first, other = keys_in_two_partitions()
    _, (outcome,) = race(
        store,
        lambda tx: store.append("x", [Opened(owner="a")], NO_STREAM, partition_key=first, tx=tx),
        lambda: store.append("x", [Opened(owner="b")], NO_STREAM, partition_key=other),
    )
    error = outcome["error"]
    assert isinstance(error, ConcurrencyError)
    assert (error.stream_id, error.expected, error.actual) == ("x", NO_STREAM, 1)
    assert assert_dense(store) == 1


@pytest.mark.parametrize("use_connection", [False, True])
def test_stale_exact_append_in_a_transaction_conflicts(
    store: EventStore, use_connection: bool
) -> None:
    """In a transaction (with or without statements of its own), an append expecting a version
    that another writer is moving past conflicts once that writer commits, writing nothing."""
    store.append("x", [Opened(owner="a")], NO_STREAM)

    stale = in_transaction(
        store, use_connection, lambda tx2: store.append("x", [Deposited(amount=2)], 1, tx=tx2)
    )

    _, (outcome,) = race(
        store, lambda tx: store.append("x", [Deposited(amount=1)], 1, tx=tx), stale
    )
    error = outcome["error"]
    assert isinstance(error, ConcurrencyError)
    assert (error.stream_id, error.expected, error.actual) == ("x", 1, 2)
    assert [getattr(r.event, "amount", None) for r in store.read_stream("x")] == [None, 1]
    assert assert_dense(store) == 2


@pytest.mark.parametrize("use_connection", [False, True])
def test_any_append_in_a_transaction_waits_and_appends(
    store: EventStore, use_connection: bool
) -> None:
    """An ANY append in a transaction racing another writer never conflicts: it goes after."""
    store.append("x", [Opened(owner="a")], NO_STREAM)

    any_append = in_transaction(
        store, use_connection, lambda tx2: store.append("x", [Deposited(amount=2)], ANY, tx=tx2)
    )

    _, (outcome,) = race(
        store, lambda tx: store.append("x", [Deposited(amount=1)], 1, tx=tx), any_append
    )
    assert "error" not in outcome, outcome
    assert outcome["result"].stream_version == 3
    assert [r.stream_version for r in store.read_stream("x")] == [1, 2, 3]
    assert assert_dense(store) == 3


def test_exact_append_after_the_other_writer_commits_is_fine(store: EventStore) -> None:
    """Waiting is not conflicting: an append expecting the version the other writer reaches
    goes through once it commits."""
    store.append("x", [Opened(owner="a")], NO_STREAM)
    _, (outcome,) = race(
        store,
        lambda tx: (
            store.append("x", [Deposited(amount=1)], 1, tx=tx),
            store.append("y", [Opened(owner="b")], NO_STREAM, tx=tx),
        ),
        lambda: store.append("y", [Deposited(amount=5)], 1),
    )
    assert "error" not in outcome, outcome
    assert outcome["result"].stream_version == 2
    assert assert_dense(store) == 4


async def test_async_any_append_follows_a_creator_in_another_partition(
    store: EventStore, async_store: AsyncEventStore
) -> None:
    """The async store takes the same way out of the race as the sync one."""
    first, other = keys_in_two_partitions()
    with store.transaction() as tx:
        store.append("x", [Opened(owner="a")], NO_STREAM, partition_key=first, tx=tx)
        tx.flush()
        task = asyncio.create_task(
            async_store.append("x", [Deposited(amount=1)], ANY, partition_key=other)
        )
        await asyncio.sleep(0.3)
        assert not task.done()
    result = await asyncio.wait_for(task, timeout=10)
    assert (result.stream_version, result.partition) == (2, partition_for(first, 4))
    assert assert_dense(store) == 2


@pytest.mark.parametrize("use_connection", [False, True])
def test_several_streams_racing_a_creator_in_another_partition(
    store: EventStore, use_connection: bool
) -> None:
    """A transaction appending with ANY to two streams, one of which another writer is creating
    under another partition key: with nothing but appends it goes after that writer; with
    statements of its own it gets a ConcurrencyError and writes nothing."""
    first, other = keys_in_two_partitions()

    both = in_transaction(
        store,
        use_connection,
        lambda tx2: (
            store.append("x", [Deposited(amount=1)], ANY, partition_key=other, tx=tx2),
            store.append("y", [Opened(owner="y")], ANY, partition_key=other, tx=tx2),
        ),
    )

    _, (outcome,) = race(
        store,
        lambda tx: store.append("x", [Opened(owner="a")], NO_STREAM, partition_key=first, tx=tx),
        both,
    )
    if use_connection:
        error = outcome["error"]
        assert isinstance(error, ConcurrencyError)
        assert (error.stream_id, error.expected) == ("x", ANY)
        assert store.stream_version("y") == 0
        assert assert_dense(store) == 1
    else:
        x, y = outcome["result"]
        assert (x.stream_version, x.partition) == (2, partition_for(first, 4))
        assert (y.stream_version, y.partition) == (1, partition_for(other, 4))
        assert assert_dense(store) == 3


@pytest.mark.parametrize("use_connection", [False, True])
def test_a_conflict_lost_to_a_racing_writer_reports_the_real_version(
    store: EventStore, use_connection: bool
) -> None:
    """The racing writer appended three events: the conflict says 4, not the first clash."""
    store.append("x", [Opened(owner="a")], NO_STREAM)

    stale = in_transaction(
        store, use_connection, lambda tx2: store.append("x", [Deposited(amount=9)], 1, tx=tx2)
    )

    creator = in_transaction(
        store, use_connection, lambda tx2: store.append("y", [Opened(owner="b")], NO_STREAM, tx=tx2)
    )

    _, outcomes = race(
        store,
        lambda tx: (
            store.append("x", [Deposited(amount=i) for i in range(1, 4)], 1, tx=tx),
            store.append("y", [Opened(owner="a"), Deposited(amount=1)], NO_STREAM, tx=tx),
        ),
        stale,
        creator,
    )
    errors = [outcome["error"] for outcome in outcomes]
    assert all(isinstance(e, ConcurrencyError) for e in errors), errors
    assert [(e.stream_id, e.expected, e.actual) for e in errors] == [
        ("x", 1, 4),
        ("y", NO_STREAM, 2),
    ]
    assert assert_dense(store) == 6


@pytest.mark.parametrize("use_connection", [False, True])
def test_a_retry_racing_its_original_is_a_duplicate(
    store: EventStore, use_connection: bool
) -> None:
    """The same append (same event ids) sent again while the first is still committing is an
    idempotent retry: it returns the stored result and writes nothing."""
    store.append("x", [Opened(owner="a")], NO_STREAM)
    event = Deposited(amount=1)

    retry = in_transaction(store, use_connection, lambda tx2: store.append("x", [event], 1, tx=tx2))

    original, (outcome,) = race(store, lambda tx: store.append("x", [event], 1, tx=tx), retry)
    assert "error" not in outcome, outcome
    result = outcome["result"]
    assert result.duplicate
    assert (result.stream_version, result.position) == (2, original.position)
    assert assert_dense(store) == 2
