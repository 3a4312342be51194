"""The sync store's read-ahead of partition pages on a thread (the async twin reads ahead
with a task: see test_async.py)."""

from __future__ import annotations

import threading

import pytest

from eventsource import NO_STREAM, EventStore, SchemaNotReady
from tests.domain import Deposited
from tests.integration._support import sql


def test_iter_partition_reads_ahead_and_stops_cleanly(store: EventStore) -> None:
    """Pages after the first are read ahead on a thread; leaving early stops that thread, and
    events appended meanwhile are read up to the head."""
    partition = store.append("s", [Deposited(amount=i) for i in range(40)], NO_STREAM).partition

    def readers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("eventsource-pages-")]

    it = store.iter_partition(partition, batch=5)
    first = [next(it).position for _ in range(12)]
    assert first == list(range(1, 13))
    assert len(readers()) == 1
    it.close()
    assert readers() == []

    seen = []
    for record in store.iter_partition(partition, batch=5):
        seen.append(record.stream_version)
        if record.position == 20:
            store.append("s", [Deposited(amount=99)], 40)
    assert seen == list(range(1, 42))
    assert readers() == []


def test_iter_partition_hands_a_read_error_to_the_caller(store: EventStore) -> None:
    """An error of the read-ahead thread is raised in the caller, translated."""
    partition = store.append("s", [Deposited(amount=i) for i in range(30)], NO_STREAM).partition
    it = store.iter_partition(partition, batch=5)
    assert next(it).position == 1
    sql(store, "DROP SCHEMA {s} CASCADE")
    with pytest.raises(SchemaNotReady):
        list(it)
