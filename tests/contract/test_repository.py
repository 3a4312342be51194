"""Repositories on a real PostgreSQL: load, save, optimistic concurrency and snapshots."""

from __future__ import annotations

import pytest

from eventsource import (
    Aggregate,
    AggregateNotFound,
    AppendResult,
    ConcurrencyError,
    Event,
    EventStore,
    PendingAppend,
    correlation,
    partition_for,
)
from tests.contract._twins import repository_for
from tests.domain import Counter, Deposited, Opened
from tests.integration._support import log_state, sql


class Order(Aggregate, name="test.Order"):
    """An aggregate placed in its customer's partition (ids look like 'customer/order')."""

    total: int = 0

    def apply(self, event: Event) -> None:
        match event:
            case Deposited():
                self.total += event.amount

    def partition_key(self) -> str:
        return self.id.split("/", 1)[0]


class CounterReshaped(Aggregate, name="test.Counter"):
    """A later release of Counter: same name, different state fields."""

    owner: str = ""
    total: int = 0
    deposits: int = 0

    def apply(self, event: Event) -> None:
        match event:
            case Opened():
                self.owner = event.owner
            case Deposited():
                self.total += event.amount
                self.deposits += 1


def opened(aggregate_id: str, *amounts: int) -> Counter:
    counter = Counter(aggregate_id)
    counter.open("ann")
    for amount in amounts:
        counter.add(amount)
    return counter


def snapshot_row(store: EventStore, stream_id: str) -> tuple | None:
    rows = sql(
        store,
        "SELECT version, aggregate_type, state FROM {s}.snapshots WHERE stream_id = :id",
        {"id": stream_id},
    )
    return tuple(rows[0]) if rows else None


# -- load and save ------------------------------------------------------------------------


def test_save_and_load_round_trip(store: EventStore) -> None:
    """A saved aggregate loads back with the same version and state, nothing pending."""
    repo = repository_for(store, Counter)
    counter = opened("c-1", 5, 7)
    result = repo.save(counter)
    assert isinstance(result, AppendResult)
    assert (result.stream_id, result.stream_version) == ("c-1", 3)
    assert counter.pending_events == []
    loaded = repo.load("c-1")
    assert loaded == counter
    assert (loaded.owner, loaded.total, loaded.version) == ("ann", 12, 3)
    assert loaded.pending_events == []
    assert repo.get("c-1") == counter


def test_load_then_save_continues_the_stream(store: EventStore) -> None:
    """Changes to a loaded aggregate are appended after its loaded version."""
    repo = repository_for(store, Counter)
    repo.save(opened("c-1", 1))
    counter = repo.load("c-1")
    counter.add(2)
    counter.add(3)
    result = repo.save(counter)
    assert result is not None
    assert result.stream_version == 4
    assert repo.load("c-1").total == 6
    assert [r.stream_version for r in store.read_stream("c-1")] == [1, 2, 3, 4]


def test_save_without_changes_writes_nothing(store: EventStore) -> None:
    """Saving an aggregate with no pending events returns None and appends nothing."""
    repo = repository_for(store, Counter)
    repo.save(opened("c-1"))
    before = log_state(store)
    assert repo.save(repo.load("c-1")) is None
    assert repo.save(Counter("c-2")) is None
    assert log_state(store) == before


def test_missing_aggregate(store: EventStore) -> None:
    """load raises AggregateNotFound naming type and id; get returns None."""
    repo = repository_for(store, Counter)
    with pytest.raises(AggregateNotFound) as info:
        repo.load("nobody")
    assert (info.value.aggregate_type, info.value.aggregate_id) == ("test.Counter", "nobody")
    assert "'nobody'" in str(info.value)
    assert repo.get("nobody") is None


def test_load_checks_the_id(store: EventStore) -> None:
    """Loading an invalid id is a ValueError/TypeError, not a database error."""
    repo = repository_for(store, Counter)
    with pytest.raises(ValueError, match="empty"):
        repo.load("")
    with pytest.raises(TypeError):
        repo.load(12)  # type: ignore[arg-type]


def test_repository_arguments_are_checked(store: EventStore) -> None:
    """A Repository needs an Aggregate subclass and a positive int snapshot interval (a
    value below 1 is a ValueError, one of another type a TypeError)."""
    with pytest.raises(TypeError, match="Aggregate subclass"):
        repository_for(store, Opened)  # type: ignore[type-var]
    for bad, error in ((0, ValueError), (-1, ValueError), (True, TypeError), (2.5, TypeError)):
        with pytest.raises(error, match="snapshot_every must be"):
            repository_for(store, Counter, snapshot_every=bad)  # type: ignore[arg-type]


def test_save_rejects_another_aggregate_type(store: EventStore) -> None:
    """A repository saves only its own aggregate type."""
    order = Order("cust/o-1")
    order.record(Deposited(amount=1))
    with pytest.raises(TypeError, match="saves Counter"):
        repository_for(store, Counter).save(order)  # type: ignore[arg-type]
    assert log_state(store).events == 0


def test_stale_aggregate_conflicts_and_writes_nothing(store: EventStore) -> None:
    """Saving an aggregate loaded before another save raises ConcurrencyError, writes nothing."""
    repo = repository_for(store, Counter)
    repo.save(opened("c-1", 1))
    first, second = repo.load("c-1"), repo.load("c-1")
    first.add(10)
    repo.save(first)
    before = log_state(store)

    second.add(20)
    with pytest.raises(ConcurrencyError) as info:
        repo.save(second)
    assert (info.value.stream_id, info.value.expected, info.value.actual) == ("c-1", 2, 3)
    assert log_state(store) == before
    assert len(second.pending_events) == 1  # kept: the caller may reload and retry
    assert repo.load("c-1").total == 11


def test_new_aggregate_with_a_taken_id_conflicts(store: EventStore) -> None:
    """A new aggregate saved under an existing id conflicts instead of appending to it."""
    repo = repository_for(store, Counter)
    repo.save(opened("c-1", 1))
    with pytest.raises(ConcurrencyError) as info:
        repo.save(opened("c-1", 99))
    assert info.value.actual == 2
    assert repo.load("c-1").total == 1


def test_save_passes_metadata_and_correlation(store: EventStore) -> None:
    """save(metadata=...) and correlation() ids are stored with the aggregate's events."""
    repo = repository_for(store, Counter)
    with correlation(correlation_id="req-7"):
        repo.save(opened("c-1", 1), metadata={"user": "u"})
    assert {tuple(sorted(r.metadata.items())) for r in store.read_stream("c-1")} == {
        (("correlation_id", "req-7"), ("user", "u"))
    }


def test_aggregate_partition_key_override(store: EventStore) -> None:
    """An aggregate's partition_key() places all of a customer's orders in one partition."""
    repo = repository_for(store, Order)
    ids = [f"customer-7/order-{i}" for i in range(6)]
    assert len({partition_for(i, 4) for i in ids}) > 1
    results = []
    for order_id in ids:
        order = Order(order_id)
        order.record(Deposited(amount=1))
        results.append(repo.save(order))
    assert {r.partition for r in results if r is not None} == {partition_for("customer-7", 4)}
    assert repo.load(ids[3]).total == 1


# -- transactions -------------------------------------------------------------------------


def test_pending_events_cleared_only_after_commit(store: EventStore) -> None:
    """In a transaction the pending events stay until commit, then are cleared."""
    repo = repository_for(store, Counter)
    a, b = opened("a", 1), opened("b", 2)
    with store.transaction() as tx:
        pa = repo.save(a, tx=tx)
        pb = repo.save(b, tx=tx)
        assert isinstance(pa, PendingAppend)
        assert isinstance(pb, PendingAppend)
        assert len(a.pending_events) == 2
        assert len(b.pending_events) == 2
    assert a.pending_events == []
    assert b.pending_events == []
    assert (pa.stream_version, pb.stream_version) == (2, 2)
    assert repo.load("a") == a
    assert repo.load("b") == b


def test_rolled_back_save_keeps_pending_events(store: EventStore) -> None:
    """If the transaction rolls back the aggregate keeps its pending events and can be saved."""
    repo = repository_for(store, Counter)
    counter = opened("c-1", 5)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        repo.save(counter, tx=tx)
        tx.flush()
        raise RuntimeError("abort")
    assert len(counter.pending_events) == 2
    assert store.stream_version("c-1") == 0
    repo.save(counter)
    assert counter.pending_events == []
    assert repo.load("c-1") == counter


def test_conflict_in_transaction_keeps_every_aggregate_pending(store: EventStore) -> None:
    """A conflict at commit leaves every aggregate of the transaction unsaved and pending."""
    repo = repository_for(store, Counter)
    repo.save(opened("taken"))
    fresh, stale = opened("fresh", 1), opened("taken", 2)
    with pytest.raises(ConcurrencyError), store.transaction() as tx:
        repo.save(fresh, tx=tx)
        repo.save(stale, tx=tx)
    assert len(fresh.pending_events) == 2
    assert len(stale.pending_events) == 2
    assert store.stream_version("fresh") == 0


def test_saving_one_aggregate_twice_in_a_transaction(store: EventStore) -> None:
    """Two saves of one aggregate in a transaction append each event once."""
    repo = repository_for(store, Counter)
    counter = opened("c-1")
    with store.transaction() as tx:
        repo.save(counter, tx=tx)
        counter.add(5)
        repo.save(counter, tx=tx)
    assert [r.stream_version for r in store.read_stream("c-1")] == [1, 2]
    assert repo.load("c-1").total == 5


# -- snapshots ----------------------------------------------------------------------------


def test_snapshot_taken_when_crossing_multiples(store: EventStore) -> None:
    """With snapshot_every=3 a snapshot is stored at versions 3 and 6, not in between."""
    repo = repository_for(store, Counter, snapshot_every=3)
    counter = opened("c-1", 1)
    repo.save(counter)
    assert snapshot_row(store, "c-1") is None
    counter.add(2)
    repo.save(counter)
    assert snapshot_row(store, "c-1") == (3, "test.Counter", {"owner": "ann", "total": 3})
    for amount in (3, 4):
        counter.add(amount)
        repo.save(counter)
        assert snapshot_row(store, "c-1")[0] == 3  # type: ignore[index]
    counter.add(5)
    repo.save(counter)
    assert snapshot_row(store, "c-1") == (6, "test.Counter", {"owner": "ann", "total": 15})
    counter.add(6)
    repo.save(counter)
    assert snapshot_row(store, "c-1")[0] == 6  # type: ignore[index]
    assert counter.pending_events == []


def test_one_save_crossing_several_multiples_snapshots_its_end(store: EventStore) -> None:
    """A save that jumps from 0 to 7 events stores one snapshot at version 7."""
    repo = repository_for(store, Counter, snapshot_every=3)
    repo.save(opened("c-1", 1, 2, 3, 4, 5, 6))
    assert snapshot_row(store, "c-1") == (7, "test.Counter", {"owner": "ann", "total": 21})


def test_snapshots_are_stored_every_n_events_and_loaded(store: EventStore) -> None:
    """A repository stores snapshots every N events (read back by load_snapshot) and loads
    them to the replayed state."""
    repo = repository_for(store, Counter, snapshot_every=3)
    counter = Counter("c-1")
    counter.open("ann")
    for amount in range(1, 6):
        counter.add(amount)
        repo.save(counter)
    snapshot = store.load_snapshot("c-1", "test.Counter")
    assert snapshot is not None
    assert snapshot[0] == 6
    assert repo.load("c-1") == counter
    assert repository_for(store, Counter).load("c-1") == counter


def test_load_from_snapshot_equals_full_replay(store: EventStore) -> None:
    """Loading from a snapshot plus later events gives the state of a full replay."""
    snapshotting = repository_for(store, Counter, snapshot_every=3)
    counter = opened("c-1")
    for amount in range(1, 9):
        counter.add(amount)
        snapshotting.save(counter)
    assert snapshot_row(store, "c-1")[0] == 9  # type: ignore[index]
    counter.add(100)
    snapshotting.save(counter)
    from_snapshot = snapshotting.load("c-1")
    replayed = repository_for(store, Counter).load("c-1")
    assert from_snapshot == replayed == counter
    assert from_snapshot.version == 10
    assert from_snapshot.total == 136


def test_load_uses_the_snapshot(store: EventStore) -> None:
    """A repository with snapshots starts from the stored snapshot state (not from event 1)."""
    repo = repository_for(store, Counter, snapshot_every=3)
    counter = opened("c-1", 1, 2)
    repo.save(counter)
    counter.add(4)
    repo.save(counter)
    # Mark the snapshot so that using it is visible in the loaded state.
    sql(
        store,
        "UPDATE {s}.snapshots SET state = jsonb_set(state, '{{total}}', '1000')"
        " WHERE stream_id = 'c-1'",
    )
    assert repo.load("c-1").total == 1004
    assert repository_for(store, Counter).load("c-1").total == 7


def test_snapshot_of_an_older_shape_is_ignored(store: EventStore) -> None:
    """A snapshot written by a class with other fields is ignored; state is rebuilt from events."""
    old = repository_for(store, Counter, snapshot_every=3)
    counter = opened("c-1", 1, 2, 3)
    old.save(counter)
    sql(
        store,
        "UPDATE {s}.snapshots SET state = jsonb_set(state, '{{total}}', '1000')"
        " WHERE stream_id = 'c-1'",
    )
    assert old.load("c-1").total == 1000  # the old shape still uses it (taken at version 4)

    new = repository_for(store, CounterReshaped, snapshot_every=3)
    loaded = new.load("c-1")
    assert (loaded.owner, loaded.total, loaded.deposits, loaded.version) == ("ann", 6, 3, 4)

    loaded.record(Deposited(amount=4))
    loaded.record(Deposited(amount=5))
    new.save(loaded)  # crosses 6: the snapshot is replaced by one of the new shape
    version, _, state = snapshot_row(store, "c-1")  # type: ignore[misc]
    assert version == 6
    assert state == {"owner": "ann", "total": 15, "deposits": 5}
    assert new.load("c-1") == loaded
    assert old.load("c-1").total == 15  # and the old shape now ignores it in turn


def test_corrupt_snapshot_state_is_ignored(store: EventStore) -> None:
    """A snapshot whose state does not validate is ignored and the stream is replayed."""
    repo = repository_for(store, Counter, snapshot_every=3)
    repo.save(opened("c-1", 1, 2, 3))
    for corrupt in (
        '{"owner": 5, "total": "lots"}',
        '{"owner": "ann", "total": null}',
        "[1, 2]",
        '"x"',
    ):
        sql(
            store,
            "UPDATE {s}.snapshots SET state = CAST(:state AS jsonb) WHERE stream_id = 'c-1'",
            {"state": corrupt},
        )
        loaded = repo.load("c-1")
        assert (loaded.owner, loaded.total, loaded.version) == ("ann", 6, 4), corrupt


@pytest.mark.parametrize("partial", ["{}", '{"owner": "ann"}'])
def test_incomplete_snapshot_state_is_ignored(store: EventStore, partial: str) -> None:
    """A snapshot state missing fields is corrupt: ignored, and the stream is replayed."""
    repo = repository_for(store, Counter, snapshot_every=3)
    repo.save(opened("c-1", 1, 2, 3))
    sql(
        store,
        "UPDATE {s}.snapshots SET state = CAST(:state AS jsonb) WHERE stream_id = 'c-1'",
        {"state": partial},
    )
    loaded = repo.load("c-1")
    assert (loaded.owner, loaded.total, loaded.version) == ("ann", 6, 4)


def test_snapshot_of_another_aggregate_type_is_ignored(store: EventStore) -> None:
    """A snapshot stored under another aggregate type name is not used."""
    repo = repository_for(store, Counter, snapshot_every=3)
    repo.save(opened("c-1", 1, 2))
    sql(
        store,
        "UPDATE {s}.snapshots SET aggregate_type = 'other.Type',"
        " state = jsonb_set(state, '{{total}}', '1000') WHERE stream_id = 'c-1'",
    )
    assert repo.load("c-1").total == 3


def test_snapshot_is_not_stored_when_the_transaction_rolls_back(store: EventStore) -> None:
    """A snapshot written with a save shares its transaction and is rolled back with it."""
    repo = repository_for(store, Counter, snapshot_every=2)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        repo.save(opened("c-1", 1, 2), tx=tx)
        tx.flush()
        raise RuntimeError
    assert snapshot_row(store, "c-1") is None
    assert store.stream_version("c-1") == 0

    with store.transaction() as tx:
        repo.save(opened("c-2", 1, 2), tx=tx)
    assert snapshot_row(store, "c-2") == (3, "test.Counter", {"owner": "ann", "total": 3})


def test_stale_snapshotting_save_writes_no_snapshot(store: EventStore) -> None:
    """A conflicting save that would cross a multiple writes neither events nor a snapshot."""
    repo = repository_for(store, Counter, snapshot_every=3)
    repo.save(opened("c-1", 1))
    first, second = repo.load("c-1"), repo.load("c-1")
    first.add(1)
    repo.save(first)
    second.add(500)
    before = log_state(store)
    with pytest.raises(ConcurrencyError):
        repo.save(second)
    assert log_state(store) == before
    assert snapshot_row(store, "c-1") == (3, "test.Counter", {"owner": "ann", "total": 2})
