"""Transactions: several appends and user statements committed, or rolled back, together."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from eventsource import (
    ANY,
    NO_STREAM,
    ConcurrencyError,
    DuplicateEventId,
    EventSourceError,
    EventStore,
    PendingAppend,
    SchemaNotReady,
    correlation,
    partition_for,
)
from eventsource.db import quote_schema
from tests.contract._twins import repository_for
from tests.domain import Counter, Deposited, Opened
from tests.integration._support import log_state, sql


def streams_in_distinct_partitions(count: int, partitions: int = 4) -> list[str]:
    """Stream ids whose partitions are all different."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < count:
        found.setdefault(partition_for(f"tx-{i}", partitions), f"tx-{i}")
        i += 1
    return [found[p] for p in sorted(found)]


def test_appends_across_streams_and_partitions_commit_together(store: EventStore) -> None:
    """Appends to several streams in several partitions are written at commit, all at once."""
    a, b, c, d = streams_in_distinct_partitions(4)
    with store.transaction() as tx:
        pendings = [
            store.append(a, [Opened(owner="a")], NO_STREAM, tx=tx),
            store.append(b, [Opened(owner="b"), Deposited(amount=2)], NO_STREAM, tx=tx),
            store.append(c, [Opened(owner="c")], ANY, tx=tx),
            store.append(d, [Opened(owner="d")], 0, tx=tx),
            store.append("same-partition-as-a", [Opened(owner="e")], partition_key=a, tx=tx),
        ]
        assert all(isinstance(p, PendingAppend) for p in pendings)
        assert log_state(store).events == 0  # nothing visible before commit
    assert log_state(store).events == 6
    assert [p.stream_version for p in pendings] == [1, 2, 1, 1, 1]
    assert [p.partition for p in pendings[:4]] == [0, 1, 2, 3]
    assert pendings[4].partition == pendings[0].partition
    assert pendings[4].position == pendings[0].position + 1
    assert not any(p.duplicate for p in pendings)
    for pending in pendings:
        records = store.read_stream(pending.stream_id)
        assert records[-1].position == pending.position
        assert records[-1].partition == pending.partition


def test_exception_in_block_rolls_everything_back(store: EventStore) -> None:
    """An exception inside the block writes no events and moves no head."""
    store.append("existing", [Opened(owner="x")], NO_STREAM)
    before = log_state(store)
    streams = streams_in_distinct_partitions(4)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.transaction() as tx:
        for stream_id in streams:
            store.append(stream_id, [Opened(owner="a")], NO_STREAM, tx=tx)
        store.append("existing", [Deposited(amount=1)], 1, tx=tx)
        tx.flush()  # written, but not committed
        raise Boom
    assert log_state(store) == before
    assert all(store.stream_version(s) == 0 for s in streams)


def test_conflict_at_commit_rolls_back_the_other_appends(store: EventStore) -> None:
    """A ConcurrencyError from one stream at commit undoes the transaction's other appends."""
    store.append("taken", [Opened(owner="x"), Deposited(amount=1)], NO_STREAM)
    before = log_state(store)
    with pytest.raises(ConcurrencyError) as info, store.transaction() as tx:
        store.append("fresh-1", [Opened(owner="a")], NO_STREAM, tx=tx)
        store.append("taken", [Deposited(amount=2)], 1, tx=tx)
        store.append("fresh-2", [Opened(owner="b")], NO_STREAM, tx=tx)
    assert (info.value.stream_id, info.value.expected, info.value.actual) == ("taken", 1, 2)
    assert log_state(store) == before


def test_conflict_of_a_single_staged_stream_at_commit(store: EventStore) -> None:
    """A transaction with one stale append raises ConcurrencyError at commit, writing nothing."""
    store.append("taken", [Opened(owner="x")], NO_STREAM)
    before = log_state(store)
    with pytest.raises(ConcurrencyError) as info, store.transaction() as tx:
        store.append("taken", [Deposited(amount=2)], NO_STREAM, tx=tx)
    assert (info.value.expected, info.value.actual) == (NO_STREAM, 1)
    assert log_state(store) == before


def test_duplicate_in_another_stream_rolls_back_the_transaction(store: EventStore) -> None:
    """An event id already stored elsewhere fails the commit and undoes every append."""
    event = Opened(owner="x")
    store.append("a", [event], NO_STREAM)
    before = log_state(store)
    with pytest.raises(DuplicateEventId), store.transaction() as tx:
        store.append("b", [Opened(owner="y")], NO_STREAM, tx=tx)
        store.append("c", [event], NO_STREAM, tx=tx)
    assert log_state(store) == before


def test_idempotent_retry_inside_a_transaction(store: EventStore) -> None:
    """A retried append in a transaction is reported duplicate while the others are written."""
    events = [Opened(owner="x"), Deposited(amount=1)]
    first = store.append("a", events, NO_STREAM)
    with store.transaction() as tx:
        retry = store.append("a", events, NO_STREAM, tx=tx)
        new = store.append("b", [Opened(owner="y")], NO_STREAM, tx=tx)
    assert retry.duplicate
    assert (retry.stream_version, retry.partition, retry.position) == (
        first.stream_version,
        first.partition,
        first.position,
    )
    assert not new.duplicate
    assert store.stream_version("a") == 2
    assert store.stream_version("b") == 1


def test_single_stream_retry_inside_a_transaction(store: EventStore) -> None:
    """A transaction that only retries a stored append commits and reports it duplicate."""
    events = [Opened(owner="x")]
    first = store.append("a", events, NO_STREAM)
    before = log_state(store)
    with store.transaction() as tx:
        retry = store.append("a", events, NO_STREAM, tx=tx)
    assert retry.result == dataclasses.replace(first, duplicate=True)
    assert log_state(store) == before


def test_pending_append_fields_raise_before_commit_and_are_set_after(store: EventStore) -> None:
    """PendingAppend results are unavailable until commit, then hold the written place."""
    with store.transaction() as tx:
        pending = store.append("s", [Opened(owner="a"), Deposited(amount=1)], NO_STREAM, tx=tx)
        assert isinstance(pending, PendingAppend)
        assert not pending.done
        assert (pending.stream_id, pending.count) == ("s", 2)
        with pytest.raises(EventSourceError, match="not written yet"):
            _ = pending.stream_version
        with pytest.raises(EventSourceError, match="not written yet"):
            _ = pending.position
    assert pending.done
    assert pending.result.stream_version == 2
    assert (pending.stream_version, pending.partition, pending.position) == (
        2,
        partition_for("s", 4),
        2,
    )
    assert pending.duplicate is False


def test_flush_writes_within_the_transaction(store: EventStore) -> None:
    """tx.flush() writes staged appends now: results are set, others see them only at commit."""
    with store.transaction() as tx:
        pending = store.append("s", [Opened(owner="a")], NO_STREAM, tx=tx)
        results = tx.flush()
        assert pending.done
        assert [(r.stream_id, r.stream_version) for r in results] == [("s", 1)]
        assert store.read_stream("s") == []  # another connection: not committed yet
        assert tx.flush() == []  # nothing left to write
        later = store.append("s", [Deposited(amount=1)], 1, tx=tx)
    assert later.stream_version == 2
    assert [r.stream_version for r in store.read_stream("s")] == [1, 2]


def test_chained_appends_to_one_stream_in_a_transaction(store: EventStore) -> None:
    """Several appends to one stream whose versions chain are written as consecutive events."""
    with store.transaction() as tx:
        first = store.append("s", [Opened(owner="a")], NO_STREAM, tx=tx)
        second = store.append("s", [Deposited(amount=1), Deposited(amount=2)], 1, tx=tx)
        third = store.append("s", [Deposited(amount=3)], ANY, tx=tx)
    assert [first.stream_version, second.stream_version, third.stream_version] == [1, 3, 4]
    assert [first.position, second.position, third.position] == [1, 3, 4]
    assert [r.stream_version for r in store.read_stream("s")] == [1, 2, 3, 4]


def test_non_chaining_append_in_a_transaction_fails_at_once(store: EventStore) -> None:
    """A second append to a staged stream that does not chain raises at the append call."""
    with pytest.raises(ConcurrencyError) as info, store.transaction() as tx:
        store.append("s", [Opened(owner="a")], NO_STREAM, tx=tx)
        store.append("s", [Deposited(amount=1)], 0, tx=tx)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert log_state(store).events == 0


def test_execute_runs_user_sql_in_the_same_transaction(store: EventStore) -> None:
    """tx.execute statements commit with the appends, and roll back with them."""
    table = f"{quote_schema(store.schema)}.notes"
    sql(store, "CREATE TABLE {s}.notes (id int PRIMARY KEY, body text)")

    with store.transaction() as tx:
        store.append("s", [Opened(owner="a")], NO_STREAM, tx=tx)
        tx.execute(text(f"INSERT INTO {table} VALUES (1, :body)"), {"body": "kept"})
        seen = tx.execute(text(f"SELECT body FROM {table}")).scalar_one()
        assert seen == "kept"
    assert sql(store, "SELECT id, body FROM {s}.notes") == [(1, "kept")]
    assert store.stream_version("s") == 1

    with pytest.raises(ZeroDivisionError), store.transaction() as tx:
        store.append("s", [Deposited(amount=1)], 1, tx=tx)
        tx.execute(text(f"INSERT INTO {table} VALUES (2, 'dropped')"))
        tx.flush()
        _ = 1 / 0
    assert sql(store, "SELECT id FROM {s}.notes") == [(1,)]
    assert store.stream_version("s") == 1


def test_user_sql_sees_events_flushed_in_its_transaction(store: EventStore) -> None:
    """After flush, tx.execute reads the transaction's own uncommitted events."""
    with store.transaction() as tx:
        store.append("s", [Opened(owner="a"), Deposited(amount=1)], NO_STREAM, tx=tx)
        tx.flush()
        count = tx.execute(
            text(f"SELECT count(*) FROM {quote_schema(store.schema)}.events")
        ).scalar_one()
    assert count == 2


def test_failed_commit_of_user_sql_rolls_back_appends(store: EventStore) -> None:
    """A failing user statement aborts the transaction with its own error; no append is written."""
    sql(store, "CREATE TABLE {s}.uniq (id int PRIMARY KEY)")
    sql(store, "INSERT INTO {s}.uniq VALUES (1)")
    with pytest.raises(sa_exc.IntegrityError), store.transaction() as tx:
        store.append("s", [Opened(owner="a")], NO_STREAM, tx=tx)
        tx.flush()
        tx.execute(text(f"INSERT INTO {quote_schema(store.schema)}.uniq VALUES (1)"))
    assert store.stream_version("s") == 0


def test_correlation_ids_land_in_metadata(store: EventStore) -> None:
    """Events appended inside correlation() carry its ids, merged with explicit metadata."""
    with correlation(correlation_id="req-1", causation_id="cmd-9"):
        store.append("a", [Opened(owner="a")], metadata={"user": "u"})
        with store.transaction() as tx:
            store.append("b", [Opened(owner="b")], tx=tx, metadata={"correlation_id": "own"})
    store.append("c", [Opened(owner="c")])
    assert store.read_stream("a")[0].metadata == {
        "user": "u",
        "correlation_id": "req-1",
        "causation_id": "cmd-9",
    }
    assert store.read_stream("b")[0].metadata == {"correlation_id": "own", "causation_id": "cmd-9"}
    assert store.read_stream("c")[0].metadata == {}


def test_on_commit_runs_only_after_commit(store: EventStore) -> None:
    """on_commit callbacks run after a commit, never after a rollback."""
    calls: list[str] = []
    with store.transaction() as tx:
        tx.on_commit(lambda: calls.append("committed"))
        store.append("s", [Opened(owner="a")], tx=tx)
        assert calls == []
    assert calls == ["committed"]

    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.on_commit(lambda: calls.append("rolled back"))
        raise RuntimeError
    assert calls == ["committed"]


def test_empty_transaction_commits(store: EventStore) -> None:
    """A transaction without appends commits without touching the log."""
    before = log_state(store)
    with store.transaction() as tx:
        assert tx.flush() == []
    assert log_state(store) == before


def test_flush_raises_concurrency_error_inside_the_block(store: EventStore) -> None:
    """tx.flush() raises ConcurrencyError (as documented) where the caller can catch it."""
    store.append("s", [Opened(owner="a")], NO_STREAM)
    caught: list[BaseException] = []
    with pytest.raises(ConcurrencyError), store.transaction() as tx:
        store.append("s", [Deposited(amount=1)], NO_STREAM, tx=tx)
        try:
            tx.flush()
        except BaseException as exc:
            caught.append(exc)
            raise
    assert isinstance(caught[0], ConcurrencyError)


def test_user_sql_error_is_not_reported_as_schema_not_ready(store: EventStore) -> None:
    """A missing user table in tx.execute is not blamed on the eventsource schema."""
    with pytest.raises(Exception) as info, store.transaction() as tx:
        tx.execute(text("SELECT * FROM no_such_user_table"))
    assert not isinstance(info.value, SchemaNotReady)


def test_a_transaction_takes_a_connection_only_when_it_runs_a_statement(
    store: EventStore,
) -> None:
    """Staging appends holds no pooled connection; the first statement of its own begins one."""
    pool = store.engine.pool
    with store.transaction() as tx:
        store.append("s-1", [Opened(owner="a")], NO_STREAM, tx=tx)
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        assert log_state(store).events == 0
    assert store.stream_version("s-1") == 1

    with store.transaction() as tx:
        store.append("s-2", [Opened(owner="b")], NO_STREAM, tx=tx)
        tx.execute(text("SELECT 1"))
        assert pool.checkedout() == 1  # type: ignore[attr-defined]
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    assert store.stream_version("s-2") == 1


def test_an_appends_only_transaction_with_a_snapshot_is_all_or_nothing(store: EventStore) -> None:
    """Appends and the snapshot of a save commit together, and a conflict writes neither."""
    repo = repository_for(store, Counter, snapshot_every=1)
    store.append("taken", [Opened(owner="x")], NO_STREAM)
    before = log_state(store)
    counter = Counter("c-1")
    counter.open("ann")
    with pytest.raises(ConcurrencyError), store.transaction() as tx:
        repo.save(counter, tx=tx)
        store.append("taken", [Deposited(amount=1)], NO_STREAM, tx=tx)
    assert log_state(store) == before
    assert sql(store, "SELECT count(*) FROM {s}.snapshots") == [(0,)]

    with store.transaction() as tx:
        repo.save(counter, tx=tx)
        store.append("taken", [Deposited(amount=1)], 1, tx=tx)
    assert sql(store, "SELECT stream_id, version FROM {s}.snapshots") == [("c-1", 1)]
    assert store.stream_version("taken") == 2
    assert repo.load("c-1").owner == "ann"


def test_a_transaction_cannot_be_used_after_its_block(store: EventStore) -> None:
    """After the block (in an on_commit callback, say) a transaction refuses statements and
    appends instead of starting a new transaction that nobody commits."""
    pool = store.engine.pool
    with store.transaction() as tx:
        store.append("s", [Opened(owner="a")], NO_STREAM, tx=tx)
    for use in (
        lambda: tx.execute(text("SELECT 1")),
        lambda: tx.connection,
        tx.flush,
        lambda: store.append("s", [Deposited(amount=1)], 1, tx=tx),
        lambda: tx.on_commit(lambda: None),
    ):
        with pytest.raises(EventSourceError, match="transaction has ended"):
            use()
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    assert store.stream_version("s") == 1


def test_the_append_function_refuses_arrays_that_do_not_line_up(store: EventStore) -> None:
    """Called directly with empty arrays it writes nothing; with arrays that do not line up
    (or a NULL, or a stream named twice) it fails at once instead of waiting on locks."""
    call = (
        "SELECT count(*) FROM {s}.append_events(CAST(:ids AS text[]), CAST(:parts AS int[]),"
        " CAST(:expected AS bigint[]), CAST(:counts AS int[]),"
        " ARRAY[gen_random_uuid()], ARRAY['t'], ARRAY[1], ARRAY['{{}}'], ARRAY['{{}}'])"
    )
    empty = (
        "SELECT count(*) FROM {s}.append_events('{{}}', '{{}}', '{{}}', '{{}}', '{{}}', '{{}}',"
        " '{{}}', '{{}}', '{{}}')"
    )
    assert sql(store, empty) == [(0,)]
    for ids, parts, expected, counts in (
        (["a"], [], [-2], [1]),
        (["a"], [None], [-2], [1]),
        (["a"], [0], [-2], [2]),
        (["a"], [0], [-3], [1]),
        (["a"], [99], [-2], [1]),
        (["a", "b"], [0, 1], [-2, -2], [1, 0]),
        ([None], [0], [-2], [1]),
    ):
        with pytest.raises(sa_exc.DataError, match=r"do not line up|does not exist"):
            sql(
                store,
                call,
                {"ids": ids, "parts": parts, "expected": expected, "counts": counts},
            )
    twice = (
        "SELECT count(*) FROM {s}.append_events(ARRAY['a', 'a'], ARRAY[0, 0],"
        " ARRAY[-2, -2]::bigint[], ARRAY[1, 1], ARRAY[gen_random_uuid(), gen_random_uuid()],"
        " ARRAY['t', 't'], ARRAY[1, 1], ARRAY['{{}}', '{{}}'], ARRAY['{{}}', '{{}}'])"
    )
    with pytest.raises(sa_exc.DataError, match="do not line up"):
        sql(store, twice)
    assert log_state(store).events == 0


def test_begin_starts_the_transaction_and_returns_its_connection(store: EventStore) -> None:
    """``tx.begin()`` begins at once and gives the connection that ``tx.connection`` then is;
    statements on it commit with the appends."""
    sql(store, "CREATE TABLE {s}.notes (id int PRIMARY KEY)")
    pool = store.engine.pool
    with store.transaction() as tx:
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        connection = tx.begin()
        assert pool.checkedout() == 1  # type: ignore[attr-defined]
        assert tx.begin() is connection
        store.append("s-1", [Opened(owner="a")], NO_STREAM, tx=tx)
        tx.execute(text(f"INSERT INTO {quote_schema(store.schema)}.notes VALUES (1)"))
    assert sql(store, "SELECT id FROM {s}.notes") == [(1,)]
    assert store.stream_version("s-1") == 1
