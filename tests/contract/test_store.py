"""The event store on a real PostgreSQL, for both twins: append, read, concurrency control,
idempotency, partitions, hostile input, decoding, and a schema or server that is not there."""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from eventsource import (
    ANY,
    NO_STREAM,
    AppendResult,
    ConcurrencyError,
    DatabaseUnavailable,
    DuplicateEventId,
    Event,
    EventStore,
    ExpectedVersion,
    SchemaNotReady,
    UnknownEventType,
    _events,
    partition_for,
    upcaster,
)
from tests.domain import Deposited, Opened
from tests.integration._support import assert_dense, log_state, restored_registry, sql

# -- append and read ----------------------------------------------------------------------


def test_append_and_read_stream_round_trip(store: EventStore) -> None:
    """Appended events read back in order with their ids, place in the log and metadata."""
    events = [Opened(owner="ann"), Deposited(amount=10), Deposited(amount=5)]
    before = datetime.now(UTC) - timedelta(seconds=5)
    result = store.append("acc-1", events, NO_STREAM, metadata={"user": "u-1", "n": [1, 2]})

    partition = partition_for("acc-1", 4)
    assert result == AppendResult("acc-1", 3, partition, 3, duplicate=False)
    records = store.read_stream("acc-1")
    assert [r.event for r in records] == events
    assert [r.event_id for r in records] == [e.event_id for e in events]
    assert [r.stream_version for r in records] == [1, 2, 3]
    assert [r.position for r in records] == [1, 2, 3]
    assert {r.partition for r in records} == {partition}
    assert {r.stream_id for r in records} == {"acc-1"}
    assert [r.event_type for r in records] == ["test.Opened", "test.Deposited", "test.Deposited"]
    assert {r.schema_version for r in records} == {1}
    assert [r.data for r in records] == [{"owner": "ann"}, {"amount": 10}, {"amount": 5}]
    assert all(r.metadata == {"user": "u-1", "n": [1, 2]} for r in records)
    assert all(before < r.recorded_at < datetime.now(UTC) + timedelta(seconds=5) for r in records)
    assert store.stream_version("acc-1") == 3


def test_append_continues_the_stream(store: EventStore) -> None:
    """A later append gets the next versions and positions; after_version skips the start."""
    store.append("acc-1", [Opened(owner="ann")], NO_STREAM)
    result = store.append("acc-1", [Deposited(amount=1), Deposited(amount=2)], 1)
    assert (result.stream_version, result.position) == (3, 3)
    assert [r.stream_version for r in store.read_stream("acc-1", after_version=1)] == [2, 3]
    assert store.read_stream("acc-1", after_version=3) == []


def test_metadata_defaults_to_empty(store: EventStore) -> None:
    """Without metadata each event stores an empty object."""
    store.append("s", [Opened(owner="x")])
    assert store.read_stream("s")[0].metadata == {}


def test_missing_stream_reads_empty(store: EventStore) -> None:
    """A stream never written has version 0 and no events."""
    assert store.stream_version("nobody") == 0
    assert store.read_stream("nobody") == []


def test_store_reports_its_partitions(store: EventStore) -> None:
    """The fixture's log has 4 partitions, each with head 0 at first."""
    assert store.partitions == 4
    assert store.partition_count() == 4
    assert store.heads() == {0: 0, 1: 0, 2: 0, 3: 0}


def test_a_new_store_reads_the_partition_count_when_first_asked(
    store: EventStore, fresh_store: Callable[..., EventStore]
) -> None:
    """A store opened on an existing schema knows its partitions without a prior call."""
    other = fresh_store(partitions=16)  # the stored count wins over the option
    assert other.partitions == 4
    assert other.read_partition(3) == []


def test_partitions_of_a_schema_never_created_is_schema_not_ready(
    fresh_store: Callable[..., EventStore],
) -> None:
    """Asking a store for the partitions of a schema not created yet names the problem."""
    with pytest.raises(SchemaNotReady):
        _ = fresh_store(schema="never_created_here").partitions


def test_partitions_fixed_at_creation(
    store: EventStore, fresh_store: Callable[..., EventStore]
) -> None:
    """A second store asking for 8 partitions on the same schema sees 4, after its upgrade."""
    other = fresh_store(partitions=8)
    other.upgrade()
    assert other.partitions == 4
    assert other.partition_count() == 4


def test_schema_not_ready(fresh_store: Callable[..., EventStore]) -> None:
    """A store on a schema never upgraded raises SchemaNotReady; its status has no revision."""
    never_upgraded = fresh_store(partitions=4)
    with pytest.raises(SchemaNotReady):
        never_upgraded.append("s", [Opened(owner="a")])
    with pytest.raises(SchemaNotReady):
        never_upgraded.read_stream("s")
    assert never_upgraded.status().revision is None


def test_unreachable_server(fresh_store: Callable[..., EventStore]) -> None:
    """A store whose server refuses connections raises DatabaseUnavailable naming host and
    database."""
    unreachable = fresh_store(url="postgresql://postgres@127.0.0.1:1/test")
    with pytest.raises(DatabaseUnavailable, match=r"127\.0\.0\.1:1/test"):
        unreachable.append("s", [Opened(owner="a")])
    with pytest.raises(DatabaseUnavailable):
        unreachable.upgrade()


# -- expected versions --------------------------------------------------------------------


def test_expected_exact_no_stream_and_any_succeed(store: EventStore) -> None:
    """NO_STREAM creates, an exact version continues and ANY appends wherever the stream is."""
    assert store.append("s", [Opened(owner="a")], NO_STREAM).stream_version == 1
    assert store.append("s", [Deposited(amount=1)], 1).stream_version == 2
    assert store.append("s", [Deposited(amount=1)], ANY).stream_version == 3
    assert store.append("t", [Opened(owner="b")], ANY).stream_version == 1
    assert store.append("u", [Opened(owner="c")], 0).stream_version == 1


@pytest.mark.parametrize(
    ("expected", "actual"),
    [(NO_STREAM, 2), (0, 2), (1, 2), (3, 2), (5, 2)],
    ids=["no-stream", "zero", "stale", "ahead", "far-ahead"],
)
def test_conflict_on_existing_stream_writes_nothing(
    store: EventStore, expected: int | ExpectedVersion, actual: int
) -> None:
    """A wrong expectation on an existing stream raises ConcurrencyError and writes nothing."""
    store.append("s", [Opened(owner="a"), Deposited(amount=1)], NO_STREAM)
    store.append("other", [Opened(owner="b")], NO_STREAM)
    before = log_state(store)
    with pytest.raises(ConcurrencyError) as info:
        store.append("s", [Deposited(amount=2), Deposited(amount=3)], expected)
    assert info.value.stream_id == "s"
    assert info.value.expected == expected
    assert info.value.actual == actual
    assert "nothing was written" in str(info.value)
    assert log_state(store) == before
    assert store.stream_version("s") == 2


@pytest.mark.parametrize("expected", [1, 5])
def test_new_stream_with_exact_version_conflicts(store: EventStore, expected: int) -> None:
    """Expecting version n > 0 of a stream that does not exist conflicts with actual 0."""
    store.append("other", [Opened(owner="b")], NO_STREAM)
    before = log_state(store)
    with pytest.raises(ConcurrencyError) as info:
        store.append("fresh", [Opened(owner="a")], expected)
    assert (info.value.stream_id, info.value.expected, info.value.actual) == (
        "fresh",
        expected,
        0,
    )
    assert log_state(store) == before
    assert store.stream_version("fresh") == 0
    assert sql(store, "SELECT count(*) FROM {s}.events WHERE stream_id = 'fresh'") == [(0,)]


@pytest.mark.parametrize("bad", [-1, -3, True, "1", 1.5, None])
def test_invalid_expected_version_is_rejected(store: EventStore, bad: object) -> None:
    """expected_version must be an int >= 0, NO_STREAM or ANY."""
    with pytest.raises(ValueError, match="expected_version"):
        store.append("s", [Opened(owner="a")], bad)  # type: ignore[arg-type]
    assert store.heads() == {0: 0, 1: 0, 2: 0, 3: 0}


# -- idempotency --------------------------------------------------------------------------


@pytest.mark.parametrize("expected", [ANY, NO_STREAM, 1], ids=["any", "no-stream", "exact"])
def test_reappending_the_same_events_is_a_no_op(
    store: EventStore, expected: int | ExpectedVersion
) -> None:
    """A retry with the same event ids returns the stored result with duplicate=True."""
    if expected == 1:
        store.append("s", [Opened(owner="first")], NO_STREAM)
    store.append("other", [Opened(owner="b")])
    events = [Deposited(amount=1), Deposited(amount=2)]
    first = store.append("s", events, expected)
    assert not first.duplicate
    before = log_state(store)

    again = store.append("s", events, expected)
    assert again == dataclasses.replace(first, duplicate=True)
    # The same ids in new model instances are the same events.
    copies = [Deposited(amount=e.amount, event_id=e.event_id) for e in events]
    assert store.append("s", copies, expected) == again
    assert log_state(store) == before


def test_retry_after_the_stream_moved_on_returns_the_stored_result(store: EventStore) -> None:
    """A retry arriving after later appends still returns the original append's result."""
    store.append("s", [Opened(owner="a")], NO_STREAM)
    events = [Deposited(amount=1), Deposited(amount=2)]
    first = store.append("s", events, 1)
    store.append("s", [Deposited(amount=3)], 3)
    before = log_state(store)
    for expected in (1, ANY, 0, NO_STREAM):
        again = store.append("s", events, expected)
        assert again == dataclasses.replace(first, duplicate=True)
        assert again.stream_version == 3
    assert log_state(store) == before


@pytest.mark.parametrize("expected", [ANY, 0, 1], ids=["any", "stale", "current"])
def test_partly_stored_append_raises_duplicate_event_id(
    store: EventStore, expected: int | ExpectedVersion
) -> None:
    """Re-appending some stored ids together with new ones is DuplicateEventId, nothing written."""
    stored = Opened(owner="a")
    store.append("s", [stored], NO_STREAM)
    before = log_state(store)
    with pytest.raises(DuplicateEventId, match="nothing was written"):
        store.append("s", [stored, Deposited(amount=1)], expected)
    with pytest.raises(DuplicateEventId):
        store.append("s", [Deposited(amount=1), stored], expected)
    assert log_state(store) == before


@pytest.mark.parametrize(
    ("expected", "b_exists"),
    [(ANY, False), (NO_STREAM, False), (0, False), (ANY, True), (1, True)],
    ids=["any", "no-stream", "zero", "any-existing", "exact-existing"],
)
def test_event_id_stored_in_another_stream_is_rejected(
    store: EventStore, expected: int | ExpectedVersion, b_exists: bool
) -> None:
    """An event id already stored in another stream raises DuplicateEventId; nothing written."""
    event = Opened(owner="a")
    store.append("a", [event], NO_STREAM)
    if b_exists:
        store.append("b", [Opened(owner="b")], NO_STREAM)
    before = log_state(store)
    with pytest.raises(DuplicateEventId):
        store.append("b", [event], expected)
    with pytest.raises(DuplicateEventId):
        store.append("b", [Deposited(amount=1), event], expected)
    assert log_state(store) == before
    assert store.stream_version("b") == (1 if b_exists else 0)


def test_same_event_twice_in_one_append_is_rejected(store: EventStore) -> None:
    """One event id twice in a single append is DuplicateEventId and writes nothing."""
    event = Opened(owner="a")
    with pytest.raises(DuplicateEventId):
        store.append("s", [event, event], NO_STREAM)
    assert log_state(store).events == 0
    assert store.stream_version("s") == 0


# -- partitions and positions -------------------------------------------------------------


def test_positions_are_dense_per_partition(store: EventStore) -> None:
    """After many appends over many streams every partition holds positions 1..head."""
    rng = random.Random(7)
    streams = [f"stream-{i}" for i in range(40)]
    written = 0
    for _ in range(120):
        stream_id = rng.choice(streams)
        count = rng.randint(1, 4)
        store.append(stream_id, [Deposited(amount=i) for i in range(count)])
        written += count
    with store.transaction() as tx:
        for stream_id in rng.sample(streams, 10):
            store.append(stream_id, [Deposited(amount=1), Deposited(amount=2)], tx=tx)
            written += 2
    assert assert_dense(store) == written
    assert sum(store.heads().values()) == written
    assert all(head > 0 for head in store.heads().values())


def test_stream_partition_is_partition_for_its_id(store: EventStore) -> None:
    """Without a partition key a stream lands in partition_for(stream_id, partitions)."""
    for i in range(12):
        stream_id = f"acc-{i}"
        result = store.append(stream_id, [Opened(owner="x")])
        assert result.partition == partition_for(stream_id, 4)


def test_partition_key_places_streams_together(store: EventStore) -> None:
    """Streams with one partition key share its partition, whatever their ids hash to."""
    ids = [f"order-{i}" for i in range(8)]
    assert len({partition_for(i, 4) for i in ids}) > 1
    key_partition = partition_for("customer-42", 4)
    results = [store.append(i, [Opened(owner="c")], partition_key="customer-42") for i in ids]
    assert {r.partition for r in results} == {key_partition}
    records = store.read_partition(key_partition)
    assert [r.stream_id for r in records] == ids
    assert [r.position for r in records] == list(range(1, 9))


@pytest.mark.parametrize("expected", [ANY, 1], ids=["any", "exact"])
def test_partition_is_fixed_by_the_first_append(
    store: EventStore, expected: int | ExpectedVersion
) -> None:
    """Later appends stay in the stream's first partition, whatever partition key they pass."""
    first = store.append("s", [Opened(owner="a")], NO_STREAM, partition_key="k-1")
    other_keys = [
        k for k in ("s", "k-2", "k-3", "k-4", "k-5") if partition_for(k, 4) != first.partition
    ]
    result = store.append("s", [Deposited(amount=1)], expected, partition_key=other_keys[0])
    assert result.partition == first.partition
    assert {r.partition for r in store.read_stream("s")} == {first.partition}


def test_read_partition_pages_with_after_and_limit(store: EventStore) -> None:
    """Pages of `limit` events after `after` cover the partition once, in position order."""
    events = [Deposited(amount=i) for i in range(10)]
    partition = store.append("s", events, NO_STREAM).partition
    pages = []
    after = 0
    while page := store.read_partition(partition, after=after, limit=3):
        pages.append([r.position for r in page])
        after = page[-1].position
    assert pages == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]
    assert [r.event for r in store.read_partition(partition, after=4, limit=2)] == events[4:6]
    assert store.read_partition(partition, after=10) == []
    assert store.read_partition(partition, limit=0) == []
    assert len(store.read_partition(partition)) == 10
    assert store.read_partition((partition + 1) % 4) == []


@pytest.mark.parametrize("bad", [4, -1, 100])
def test_read_partition_rejects_missing_partitions(store: EventStore, bad: int) -> None:
    """A partition outside 0..partitions-1 is a ValueError naming the range."""
    with pytest.raises(ValueError, match=r"0\.\.3"):
        store.read_partition(bad)


def test_read_partition_rejects_non_int(store: EventStore) -> None:
    """A partition that is not an int is a TypeError."""
    with pytest.raises(TypeError):
        store.read_partition("0")  # type: ignore[arg-type]


def test_negative_limit_is_a_value_error(store: EventStore) -> None:
    """read_partition(limit=-1) is a ValueError, like the other bad arguments."""
    with pytest.raises(ValueError, match="limit"):
        store.read_partition(0, limit=-1)


def test_iter_partition_reads_to_the_head(store: EventStore) -> None:
    """iter_partition yields every event after `after` in position order, over many pages."""
    partition = store.append("s", [Deposited(amount=i) for i in range(25)], NO_STREAM).partition
    positions = [r.position for r in store.iter_partition(partition, batch=4)]
    assert positions == list(range(1, 26))
    assert [r.position for r in store.iter_partition(partition, after=20, batch=4)] == [
        21,
        22,
        23,
        24,
        25,
    ]


def test_empty_and_brace_payloads_read_back_by_every_reader(store: EventStore) -> None:
    """A payload without fields, and one whose text holds braces, quotes and commas, read back
    equal from a stream, a partition page and a partition walk, with ids, data and metadata."""
    with restored_registry():

        class Pinged(Event, name="contract.Pinged"):
            pass

        class Noted(Event, name="contract.Noted"):
            text: str

        events = [Pinged(), Noted(text='}'), Noted(text='{"a":1},"x":"}'), Pinged()]
        result = store.append("braces", events, NO_STREAM, metadata={"k": "}"})
        by_stream = store.read_stream("braces")
        page = store.read_partition(result.partition)
        walked = list(store.iter_partition(result.partition, batch=2))
        for records in (by_stream, page, walked):
            assert [r.event for r in records] == events
            assert [r.event_id for r in records] == [e.event_id for e in events]
            assert [r.data for r in records] == [{}, {"text": "}"}, {"text": '{"a":1},"x":"}'}, {}]
            assert all(r.metadata == {"k": "}"} for r in records)


# -- hostile input ------------------------------------------------------------------------

HOSTILE_IDS = [
    "'; DROP TABLE x; --",
    "'); DELETE FROM events; --",
    'with "double" quotes',
    "O'Brien",
    "back\\slash \\x00 \\u0041",
    "%(stream_id)s %s :stream_id $1 ?",
    "$$ $fn$ {s} {}",
    "ünïcødé 日本語 עברית",
    "emoji 😀🎉👩‍👩‍👧",
    "new\nline\ttab\r",
    "  spaces  ",
    "x" * 500,
    "😀" * 500,
]


@pytest.mark.parametrize("stream_id", HOSTILE_IDS, ids=range(len(HOSTILE_IDS)))
def test_hostile_stream_ids_are_stored_as_data(store: EventStore, stream_id: str) -> None:
    """Quotes, SQL, placeholders, unicode and 500-character ids round-trip as plain data."""
    metadata = {
        stream_id: stream_id,
        "sql": "'; DROP TABLE x; --",
        "nested": {"%(x)s": [1, None, True, "😀"], "quote": '"\'"'},
    }
    event = Opened(owner=stream_id)
    result = store.append(stream_id, [event], NO_STREAM, metadata=metadata, partition_key=stream_id)
    assert result.stream_id == stream_id
    assert result.partition == partition_for(stream_id, 4)
    (record,) = store.read_stream(stream_id)
    assert record.stream_id == stream_id
    assert record.event == event
    assert record.metadata == metadata
    assert store.stream_version(stream_id) == 1
    assert [r.stream_id for r in store.read_partition(result.partition)] == [stream_id]
    assert store.append(stream_id, [Deposited(amount=1)], 1).stream_version == 2
    assert sql(store, "SELECT count(*) FROM {s}.events") == [(2,)]


def test_over_long_stream_id_writes_nothing(store: EventStore) -> None:
    """A 501-character stream id (or partition key) is a ValueError and nothing is written."""
    with pytest.raises(ValueError, match="501 characters"):
        store.append("x" * 501, [Opened(owner="a")])
    with pytest.raises(ValueError, match="501 characters"):
        store.append("s", [Opened(owner="a")], partition_key="k" * 501)
    with pytest.raises(ValueError, match="501 characters"):
        store.read_stream("x" * 501)
    assert log_state(store).events == 0
    assert store.heads() == {0: 0, 1: 0, 2: 0, 3: 0}


@pytest.mark.parametrize(
    ("stream_id", "error"), [("", ValueError), ("a\x00b", ValueError), (7, TypeError)]
)
def test_invalid_stream_ids_write_nothing(
    store: EventStore, stream_id: object, error: type[Exception]
) -> None:
    """Empty, NUL-containing and non-str stream ids are rejected before any write."""
    with pytest.raises(error):
        store.append(stream_id, [Opened(owner="a")])  # type: ignore[arg-type]
    assert log_state(store).events == 0


def test_nul_in_payload_or_metadata_writes_nothing(store: EventStore) -> None:
    """U+0000 in a payload or in metadata is a ValueError and nothing is written."""
    with pytest.raises(ValueError, match="NUL"):
        store.append("s", [Opened(owner="a\x00b")])
    with pytest.raises(ValueError, match="NUL"):
        store.append("s", [Opened(owner="a")], metadata={"k": "\x00"})
    assert log_state(store).events == 0


def test_empty_append_is_rejected(store: EventStore) -> None:
    """An append without events is a ValueError, not a no-op that creates the stream."""
    with pytest.raises(ValueError, match="no events"):
        store.append("s", [], NO_STREAM)
    assert store.stream_version("s") == 0


# -- decoding -----------------------------------------------------------------------------


def test_unknown_event_type_on_read_stream(store: EventStore) -> None:
    """read_stream raises UnknownEventType naming a stored type whose class is not loaded."""
    name = f"itest.Gone.{uuid.uuid4().hex[:8]}"

    class Gone(Event, name=name):
        value: int

    store.append("s", [Opened(owner="a"), Gone(value=1)])
    with restored_registry():
        del _events._registry[name]
        with pytest.raises(UnknownEventType) as info:
            store.read_stream("s")
        assert info.value.event_type == name
        assert name in str(info.value)
        # A partition reader sees the rows; only decoding that event fails.
        first, second = store.read_partition(partition_for("s", 4))
        assert first.event == Opened(owner="a", event_id=first.event_id)
        assert second.event_type == name
        assert second.data == {"value": 1}
        with pytest.raises(UnknownEventType):
            _ = second.event
    assert store.read_stream("s")[1].event == Gone(value=1, event_id=second.event_id)
    del _events._registry[name]


def define_moved(name: str, version: int) -> type[Event]:
    """The Moved event as written by an old (v1) or a new (v2) release of the code."""
    if version == 1:

        class Moved(Event, name=name, version=1):
            km: int

    else:

        class Moved(Event, name=name, version=2):  # type: ignore[no-redef]
            meters: int

    return Moved


def test_old_schema_version_is_upcast_on_read(store: EventStore) -> None:
    """An event stored at v1 reads back as the v2 model through its registered upcaster."""
    name = f"itest.Moved.{uuid.uuid4().hex[:8]}"
    with restored_registry():
        v1 = define_moved(name, 1)
        old = v1(km=3)  # type: ignore[call-arg]
        store.append("truck", [old])

        v2 = define_moved(name, 2)

        @upcaster(name, from_version=1)
        def km_to_meters(data: dict) -> dict:
            return {"meters": data["km"] * 1000}

        new = v2(meters=5)  # type: ignore[call-arg]
        store.append("truck", [new])
        first, second = store.read_stream("truck")
        assert first.schema_version == 1
        assert first.data == {"km": 3}
        assert first.event == v2(meters=3000, event_id=old.event_id)  # type: ignore[call-arg]
        assert second.schema_version == 2
        assert second.event == new
        assert [r.event for r in store.read_partition(first.partition)] == [
            first.event,
            second.event,
        ]
