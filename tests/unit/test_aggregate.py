"""Aggregates: recording, applying and counting events, and their snapshot shape (no database)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from eventsource import Aggregate, Event
from tests.domain import Counter, Deposited, Opened


class Basket(Aggregate, name="unit.Basket"):
    items: list[str] = []
    count: int = 0

    def apply(self, event: Event) -> None:
        match event:
            case Opened():
                self.items.append(event.owner)
                self.count += 1


class NoApply(Aggregate):
    value: int = 0


def test_new_aggregate_is_empty_at_version_zero() -> None:
    """Aggregate(id) has its id, version 0, no pending events and its default state."""
    counter = Counter("c-1")
    assert counter.id == "c-1"
    assert counter.version == 0
    assert counter.pending_events == []
    assert counter.state() == {"owner": "", "total": 0}


def test_record_applies_counts_and_queues() -> None:
    """record() changes state through apply, bumps the version and queues the event."""
    counter = Counter("c-1")
    counter.open("ann")
    counter.add(5)
    counter.add(7)
    assert counter.owner == "ann"
    assert counter.total == 12
    assert counter.version == 3
    pending = counter.pending_events
    assert [type(e) for e in pending] == [Opened, Deposited, Deposited]
    assert [e.amount for e in pending[1:]] == [5, 7]  # type: ignore[attr-defined]


def test_pending_events_is_a_copy() -> None:
    """Mutating the returned pending list does not change what will be saved."""
    counter = Counter("c-1")
    counter.add(1)
    counter.pending_events.clear()
    assert len(counter.pending_events) == 1


def test_command_rule_failure_records_nothing() -> None:
    """A command that rejects its input leaves version and pending events unchanged."""
    counter = Counter("c-1")
    with pytest.raises(ValueError, match="positive"):
        counter.add(0)
    assert counter.version == 0
    assert counter.pending_events == []


def test_apply_not_defined_raises_type_error() -> None:
    """An aggregate without apply() cannot record: TypeError, nothing queued."""
    aggregate = NoApply("n-1")
    with pytest.raises(TypeError, match="must define apply"):
        aggregate.record(Deposited(amount=1))
    assert aggregate.version == 0
    assert aggregate.pending_events == []


def test_record_rejects_non_events() -> None:
    """record() takes Event instances only."""
    with pytest.raises(TypeError, match="takes an Event"):
        Counter("c-1").record({"amount": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [1, None, b"id"])
def test_aggregate_id_must_be_text(bad: object) -> None:
    """A non-str aggregate id is a TypeError."""
    with pytest.raises(TypeError, match="aggregate id must be a str"):
        Counter(bad)  # type: ignore[arg-type]


def test_replay_applies_without_queueing() -> None:
    """_replay (used by loading) applies events and counts them but queues nothing."""
    counter = Counter("c-1")
    counter._replay([Opened(owner="ann"), Deposited(amount=3)])
    assert (counter.owner, counter.total, counter.version) == ("ann", 3, 2)
    assert counter.pending_events == []


def test_mark_saved_drops_the_oldest_pending() -> None:
    """_mark_saved(n) removes the n oldest pending events, keeping later ones."""
    counter = Counter("c-1")
    counter.add(1)
    counter.add(2)
    counter.add(3)
    counter._mark_saved(2)
    assert [e.amount for e in counter.pending_events] == [3]  # type: ignore[attr-defined]
    assert counter.version == 3


def test_mutable_defaults_are_not_shared() -> None:
    """Each instance gets its own copy of a mutable default."""
    a, b = Basket("a"), Basket("b")
    a.record(Opened(owner="x"))
    assert a.items == ["x"]
    assert b.items == []
    assert Basket.items == []


def test_partition_key_defaults_to_the_id() -> None:
    """Without an override the partition key is the aggregate id."""
    assert Counter("c-9").partition_key() == "c-9"


def test_aggregate_type_defaults_to_class_name() -> None:
    """The aggregate type name is name= or else the class name."""
    assert Counter.aggregate_type == "test.Counter"
    assert NoApply.aggregate_type == "NoApply"


def test_equality_compares_id_version_and_state() -> None:
    """Two aggregates are equal when type, id, version and state are equal; never hashable."""
    a, b = Counter("c"), Counter("c")
    a.add(1)
    b.add(1)
    assert a == b
    b.add(1)
    assert a != b
    assert a != Counter("other")
    with pytest.raises(TypeError):
        hash(a)


def test_snapshot_round_trip() -> None:
    """_snapshot_state and _from_snapshot restore the state at the given version."""
    counter = Counter("c-1")
    counter.open("ann")
    counter.add(4)
    restored = Counter._from_snapshot("c-1", counter.version, counter._snapshot_state())
    assert restored == counter
    assert restored.pending_events == []


def test_snapshot_that_does_not_validate_raises() -> None:
    """A snapshot state of the wrong types raises ValidationError."""
    with pytest.raises(ValidationError):
        Counter._from_snapshot("c-1", 3, '{"owner": "ann", "total": "lots"}')


def test_snapshot_shape_changes_with_fields_and_version() -> None:
    """The snapshot shape differs when fields, defaults or snapshot_version change."""

    class Shape1(Aggregate, name="unit.Shape"):
        total: int = 0

    class Shape2(Aggregate, name="unit.Shape"):
        total: int = 0
        extra: str = ""

    class Shape3(Aggregate, name="unit.Shape"):
        total: int = 1

    class Shape4(Aggregate, name="unit.Shape", snapshot_version=2):
        total: int = 0

    class Shape5(Aggregate, name="unit.Shape"):
        total: int = 0

    shapes = [c._snapshot_shape() for c in (Shape1, Shape2, Shape3, Shape4)]
    assert len(set(shapes)) == 4
    assert Shape5._snapshot_shape() == Shape1._snapshot_shape()


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (5, TypeError, "aggregate id must be a str"),
        ("", ValueError, "aggregate id must not be empty"),
        ("a\x00", ValueError, "aggregate id must not contain a NUL"),
        ("a\udcff", ValueError, "aggregate id is not valid UTF-8"),
        ("a" * 501, ValueError, "aggregate id is 501 characters long"),
    ],
)
def test_aggregate_ids_that_cannot_be_streams_are_rejected(
    bad: object, error: type[Exception], match: str
) -> None:
    """An aggregate id that could not be stored as a stream id is refused at construction."""
    with pytest.raises(error, match=match):
        Counter(bad)  # type: ignore[arg-type]


def test_aggregate_class_options_are_checked() -> None:
    """A bad aggregate type name or snapshot_version is refused at class creation."""
    with pytest.raises(ValueError, match="aggregate type name must not contain a NUL"):

        class BadName(Aggregate, name="x\x00"):
            pass

    with pytest.raises(ValueError, match="snapshot_version must be from 1"):

        class BadVersion(Aggregate, snapshot_version=0):
            pass
