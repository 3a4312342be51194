"""Appends racing another writer of the same stream, forced deterministically.

A transaction writes (flushes) an append and stays open; another writer appends to the same
stream meanwhile and has to wait for it. Whatever path the second append takes (the
one-statement path in autocommit, or the append function), the outcome must be what the
expected version says, with no hole in any partition and every stream in one partition.

The last section races the creation of a stream under another partition key: the one writer
that the partition heads' locks do not hold back, whose events the append function finds only
when its insert meets them (it then reports a "raced" conflict itself).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from eventsource import (
    ANY,
    NO_STREAM,
    AsyncEventStore,
    ConcurrencyError,
    Event,
    EventStore,
    ExpectedVersion,
    PendingAppend,
    SerializationFailure,
    Transaction,
    partition_for,
)
from eventsource.db import conninfo, fetch
from eventsource.store import Queries, StagedAppends
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


# -- creating a stream under another partition key -----------------------------------------

# How the second writer appends to the stream being created (and, in a transaction, to a
# stream of its own "y" as well): alone in autocommit (the one-statement path, then the append
# function), in an appends-only transaction (the append function, written in autocommit, which
# runs it once more after a raced conflict), or in a transaction with statements of its own
# (the append function, once: the transaction is lost with the statement).
HOW = ["append", "appends-only transaction", "transaction with statements"]


def second_writer(
    store: EventStore, how: str, expected: ExpectedVersion, events: Sequence[Event], key: str
) -> Callable[[], Any]:
    """The second writer of stream "x" (under partition key ``key``), as ``how`` says."""
    if how == "append":
        return lambda: store.append("x", events, expected, partition_key=key)

    def appends(tx: Transaction) -> Any:
        x = store.append("x", events, expected, partition_key=key, tx=tx)
        y = store.append("y", [Opened(owner="y")], expected, partition_key=key, tx=tx)
        return x, y

    return in_transaction(store, how == "transaction with statements", appends)


def create_x(store: EventStore, key: str) -> Callable[[Transaction], list[Event]]:
    """The first writer: creates stream "x" with two events under partition key ``key``."""
    events: list[Event] = [Opened(owner="a"), Deposited(amount=5)]

    def write(tx: Transaction) -> list[Event]:
        store.append("x", events, NO_STREAM, partition_key=key, tx=tx)
        return events

    return write


@pytest.mark.parametrize("how", HOW)
def test_creating_a_stream_that_another_writer_is_creating_conflicts(
    store: EventStore, how: str
) -> None:
    """NO_STREAM racing another creator under another partition key conflicts at the version
    that creator reached (not its first version, nor one of the loser's own), whichever way it
    appends, and writes nothing."""
    first, other = keys_in_two_partitions()
    loser = [Opened(owner="b"), Deposited(amount=1), Deposited(amount=2)]
    created, (outcome,) = race(
        store, create_x(store, first), second_writer(store, how, NO_STREAM, loser, other)
    )
    error = outcome.get("error")
    assert isinstance(error, ConcurrencyError), outcome
    assert (error.stream_id, error.expected, error.actual) == ("x", NO_STREAM, 2)
    assert [r.event_id for r in store.read_stream("x")] == [e.event_id for e in created]
    assert store.stream_version("y") == 0
    assert assert_dense(store) == 2


@pytest.mark.parametrize("how", HOW)
def test_any_append_racing_a_creator_in_another_partition(store: EventStore, how: str) -> None:
    """ANY racing the creation of its stream under another partition key goes after the
    creator, in its partition, at the next versions, when the append can run once more: alone
    or in an appends-only transaction. In a transaction with statements of its own (which the
    conflict has rolled back) it gets a ConcurrencyError and writes nothing."""
    first, other = keys_in_two_partitions()
    events = [Deposited(amount=1), Deposited(amount=2), Deposited(amount=3)]
    _, (outcome,) = race(
        store, create_x(store, first), second_writer(store, how, ANY, events, other)
    )
    if how == "transaction with statements":
        error = outcome.get("error")
        assert isinstance(error, ConcurrencyError), outcome
        assert (error.stream_id, error.expected, error.actual) == ("x", ANY, 2)
        assert store.stream_version("y") == 0
        assert assert_dense(store) == 2
        return
    assert "error" not in outcome, outcome
    x = outcome["result"][0] if how != "append" else outcome["result"]
    assert (x.stream_version, x.partition) == (5, partition_for(first, 4))
    recorded = store.read_stream("x")
    assert [r.stream_version for r in recorded] == [1, 2, 3, 4, 5]
    assert {r.partition for r in recorded} == {partition_for(first, 4)}
    assert [r.event_id for r in recorded[2:]] == [e.event_id for e in events]
    if how != "append":
        y = outcome["result"][1]
        assert (y.stream_version, y.partition) == (1, partition_for(other, 4))
    assert assert_dense(store) == (6 if how != "append" else 5)


@pytest.mark.parametrize("how", ["append", "appends-only transaction"])
@pytest.mark.parametrize("expected", [ANY, NO_STREAM], ids=str)
async def test_async_creation_race_under_another_partition_key(
    store: EventStore, async_store: AsyncEventStore, how: str, expected: ExpectedVersion
) -> None:
    """The async store takes the same ways out of the race as the sync one."""
    first, other = keys_in_two_partitions()

    async def second() -> Any:
        if how == "append":
            return await async_store.append(
                "x", [Deposited(amount=1)], expected, partition_key=other
            )
        async with async_store.transaction() as tx:
            x = await async_store.append(
                "x", [Deposited(amount=1)], expected, partition_key=other, tx=tx
            )
            await async_store.append("y", [Opened(owner="y")], expected, partition_key=other, tx=tx)
        return x.result

    with store.transaction() as tx:
        store.append("x", [Opened(owner="a")], NO_STREAM, partition_key=first, tx=tx)
        tx.flush()
        task = asyncio.create_task(second())
        await asyncio.sleep(0.3)
        assert not task.done()
    if expected is NO_STREAM:
        with pytest.raises(ConcurrencyError) as info:
            await asyncio.wait_for(task, timeout=10)
        assert (info.value.stream_id, info.value.expected, info.value.actual) == ("x", NO_STREAM, 1)
        assert (store.stream_version("x"), store.stream_version("y")) == (1, 0)
        assert assert_dense(store) == 1
        return
    result = await asyncio.wait_for(task, timeout=10)
    assert (result.stream_version, result.partition) == (2, partition_for(first, 4))
    assert assert_dense(store) == (3 if how != "append" else 2)


def call_append_function(
    conn: psycopg.Connection[Any],
    store: EventStore,
    events: Sequence[Event],
    expected: int | ExpectedVersion,
    key: str,
) -> list[tuple[Any, ...]]:
    """The append function called on ``conn`` for ``events`` to stream "x" under ``key``."""
    staged = StagedAppends()
    staged.add("x", events, expected, None, key)
    return fetch(conn, Queries.for_schema(store.schema).append, staged.params(store.partitions))


@pytest.mark.parametrize("expected", [NO_STREAM, 0, ANY], ids=str)
def test_the_append_function_reports_a_raced_creation(
    store: EventStore, expected: int | ExpectedVersion
) -> None:
    """The append function that meets the events of a creator under another partition key
    (its insert waits for that writer, then skips the versions it stored) raises its version
    conflict, ES409, with "raced" in its JSON DETAIL and the version it sees now, and writes
    nothing; called again, it sees that writer's events and decides as for any append."""
    first, other = keys_in_two_partitions()
    events = [Deposited(amount=1), Deposited(amount=2), Deposited(amount=3)]
    with psycopg.connect(conninfo(store.url), autocommit=True) as conn:
        created, (outcome,) = race(
            store,
            create_x(store, first),
            lambda: call_append_function(conn, store, events, expected, other),
        )
        error = outcome.get("error")
        assert isinstance(error, psycopg.Error), outcome
        assert error.sqlstate == "ES409"
        code = expected.value if isinstance(expected, ExpectedVersion) else expected
        detail = {"stream_id": "x", "expected": code, "actual": 2, "raced": True}
        assert json.loads(error.diag.message_detail or "") == detail
        assert [r.event_id for r in store.read_stream("x")] == [e.event_id for e in created]
        assert assert_dense(store) == 2

        if expected is ANY:
            ((_, status, version, partition, position),) = call_append_function(
                conn, store, events, expected, other
            )
            assert (status, version, partition, position) == ("ok", 5, partition_for(first, 4), 5)
            assert assert_dense(store) == 5
        else:
            with pytest.raises(psycopg.Error) as info:
                call_append_function(conn, store, events, expected, other)
            assert info.value.sqlstate == "ES409"
            assert json.loads(info.value.diag.message_detail or "") == {
                "stream_id": "x",
                "expected": code,
                "actual": 2,
            }


def test_under_repeatable_read_a_creation_it_cannot_see_is_a_serialization_failure(
    store: EventStore,
) -> None:
    """A REPEATABLE READ transaction whose snapshot predates a stream's creation under another
    partition key cannot read the versions it would conflict with: its append fails with a
    SerializationFailure (retryable: tried again, it sees them), and writes nothing."""
    first, other = keys_in_two_partitions()
    with psycopg.connect(conninfo(store.url)) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.execute("SELECT 1")  # the transaction's snapshot is taken
        store.append("x", [Opened(owner="a")], NO_STREAM, partition_key=first)
        with pytest.raises(SerializationFailure), store._errors():
            call_append_function(conn, store, [Opened(owner="b")], NO_STREAM, other)
        conn.rollback()
        with pytest.raises(ConcurrencyError) as info, store._errors():
            call_append_function(conn, store, [Opened(owner="b")], NO_STREAM, other)
        assert (info.value.expected, info.value.actual) == (NO_STREAM, 1)
        conn.rollback()
    assert assert_dense(store) == 1
