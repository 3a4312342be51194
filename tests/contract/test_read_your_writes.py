"""Retrying updates and position tokens, on both twins.

``repo.update(id, change, retries=N)`` loads, changes and saves, starting over on a conflict;
``result.token`` names where an append landed, for ``projections.wait_for``.
"""

from __future__ import annotations

from typing import Any

import pytest

from eventsource import (
    NO_STREAM,
    AggregateNotFound,
    ConcurrencyError,
    EventSourceError,
    EventStore,
)
from eventsource.store import PositionTokenError, parse_token
from tests.contract._twins import repository_for
from tests.domain import Counter, Deposited, Opened


def _open(store: EventStore, stream_id: str = "c-1") -> None:
    store.append(stream_id, [Opened(owner="ann")], NO_STREAM)


def test_update_loads_changes_and_saves(store: EventStore) -> None:
    """update applies the change to the loaded aggregate and returns the save's result."""
    _open(store)
    result = repository_for(store, Counter).update("c-1", lambda c: c.add(5))
    assert result is not None
    assert result.stream_version == 2
    assert repository_for(store, Counter).load("c-1").total == 5


def test_update_that_records_nothing_returns_none(store: EventStore) -> None:
    """A change that records no event saves nothing and returns None."""
    _open(store)
    assert repository_for(store, Counter).update("c-1", lambda c: None) is None
    assert store.stream_version("c-1") == 1


def test_update_starts_over_after_a_conflict(store: EventStore, worker_store: EventStore) -> None:
    """A writer that gets in between a try's load and save makes update load again and
    apply the change to the fresh state; nothing is lost."""
    _open(store)
    calls: list[int] = []

    def change(counter: Counter) -> None:
        calls.append(counter.version)
        if len(calls) == 1:  # another writer saves meanwhile
            worker_store.append("c-1", [Deposited(amount=100)], 1)
        counter.add(5)

    result = repository_for(store, Counter).update("c-1", change, retries=2)
    assert calls == [1, 2]
    assert result is not None
    assert result.stream_version == 3
    assert repository_for(store, Counter).load("c-1").total == 105


def test_update_gives_up_after_its_retries(store: EventStore, worker_store: EventStore) -> None:
    """When every try conflicts, the last ConcurrencyError is raised after retries + 1 tries,
    and none of update's events is written."""
    _open(store)
    calls: list[int] = []

    def change(counter: Counter) -> None:
        calls.append(counter.version)
        worker_store.append("c-1", [Deposited(amount=1)], counter.version)
        counter.add(5)

    with pytest.raises(ConcurrencyError):
        repository_for(store, Counter).update("c-1", change, retries=2)
    assert len(calls) == 3
    assert repository_for(store, Counter).load("c-1").total == 3  # the other writer's only


def test_update_of_a_missing_aggregate_is_not_found(store: EventStore) -> None:
    """update does not create: an aggregate never saved is AggregateNotFound."""
    with pytest.raises(AggregateNotFound):
        repository_for(store, Counter).update("nobody", lambda c: c.add(1))


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"retries": -1}, ValueError, "retries must not be negative"),
        ({"retries": 101}, ValueError, "retries must be from 0 to 100"),
        ({"retries": True}, TypeError, "retries must be an int"),
        ({"change": "add"}, TypeError, "change must be callable"),
    ],
)
def test_update_arguments_are_checked(
    store: EventStore, options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad update arguments are refused before anything is read or written."""
    _open(store)
    options = dict(options)  # the parameters are shared by both twins' runs
    change = options.pop("change", lambda c: c.add(1))
    with pytest.raises(error, match=match):
        repository_for(store, Counter).update("c-1", change, **options)
    assert store.stream_version("c-1") == 1


# -- position tokens ------------------------------------------------------------------------


def test_a_result_token_names_schema_partition_and_position(store: EventStore) -> None:
    """result.token parses back, for the store's schema, to the append's partition and
    position; a token is a plain string."""
    result = store.append("t-1", [Opened(owner="a"), Deposited(amount=1)], NO_STREAM)
    token = result.token
    assert isinstance(token, str)
    assert token == f"p1:{store.schema}:{result.partition}:{result.position}"
    assert parse_token(token, store.schema) == (result.partition, result.position)


def test_a_pending_append_has_its_token_once_committed(store: EventStore) -> None:
    """A staged append's token is an error before commit and its position after."""
    with store.transaction() as tx:
        pending = store.append("t-2", [Opened(owner="a")], NO_STREAM, tx=tx)
        with pytest.raises(EventSourceError, match="not written yet"):
            _ = pending.token
    assert parse_token(pending.token, store.schema) == (pending.partition, pending.position)


@pytest.mark.parametrize(
    ("token", "match"),
    [
        ("", "malformed position token"),
        ("p1:s:1", "malformed position token"),
        ("p2:s:1:2", "malformed position token"),
        ("p1:s:x:2", "bad partition"),
        ("p1:s:1:-2", "bad position"),
        ("p1:s:1:" + "9" * 30, "bad position"),
        ("p1:other:1:2", "of the store in schema 'other'"),
        ("p1:s:1:2" + "x" * 500, "malformed position token"),
    ],
)
def test_bad_tokens_are_position_token_errors(token: str, match: str) -> None:
    """A malformed token, or one of another schema, is a PositionTokenError (a ValueError)."""
    with pytest.raises(PositionTokenError, match=match) as info:
        parse_token(token, "s")
    assert isinstance(info.value, ValueError)


def test_a_token_must_be_a_string() -> None:
    """Anything but a str is refused as a token."""
    with pytest.raises(PositionTokenError, match="a position token is a str, got int"):
        parse_token(42, "s")
