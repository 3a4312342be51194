"""Pages read for a replay: every field as a plain read gives it, every event decoded as
``decode_event`` decodes it (upcasts and errors included), in both twins."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
import pytest

from eventsource import (
    NO_STREAM,
    AsyncEventStore,
    Event,
    EventDecodeError,
    EventStore,
    UnknownEventType,
    upcaster,
)
from eventsource.db import conninfo, fetch
from eventsource.store._reading import fetch_page
from tests.domain import Deposited, Opened
from tests.integration._support import sql


class Renamed(Event, name="replay.Renamed", version=3):
    """Stored under versions 1 and 2 as well; upcast on read."""

    title: str
    note: str


@upcaster(Renamed, from_version=1)
def _title(data: dict[str, Any]) -> dict[str, Any]:
    return {"title": data["name"]}


@upcaster(Renamed, from_version=2)
def _note(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "note": "upcast"}


class Empty(Event, name="replay.Empty"):
    """An event without fields: its payload is ``{}``."""


def _fields(record: Any) -> tuple[Any, ...]:
    return (
        record.event_id,
        record.stream_id,
        record.stream_version,
        record.partition,
        record.position,
        record.event_type,
        record.schema_version,
        record.data,
        record.metadata,
        record.recorded_at,
    )


def _seed(store: EventStore) -> int:
    """Events of several types (and metadata) in one stream; returns its partition."""
    events: list[Event] = [Opened(owner="ann"), Empty(), Renamed(title="t", note="n")]
    events += [Deposited(amount=i) for i in range(7)]
    result = store.append("mixed", events, NO_STREAM, metadata={"by": "test", "n": [1, 2]})
    # Older schema versions, as an earlier deployment stored them.
    sql(
        store,
        'UPDATE {s}.events SET schema_version = 1, data = \'{{"name": "old"}}\''
        " WHERE stream_id = 'mixed' AND stream_version = 3",
    )
    store.append("mixed", [Renamed(title="x", note="y")], 10)
    sql(
        store,
        'UPDATE {s}.events SET schema_version = 2, data = \'{{"title": "mid"}}\''
        " WHERE stream_id = 'mixed' AND stream_version = 11",
    )
    return result.partition


def test_pages_hold_the_values_a_plain_read_gives(store: EventStore) -> None:
    """Ids, times (value, type and zone), metadata and payloads are those of the stored rows,
    the events are those decode_event gives one at a time, upcasts included."""
    partition = _seed(store)
    paged = list(store.iter_partition(partition, batch=3))
    lazy = store.read_partition(partition, decode=False)
    with store._raw() as conn:
        rows = fetch(
            conn, store._queries.read_partition, {"partition": partition, "after": 0, "limit": 100}
        )
    assert len(paged) == len(lazy) == len(rows) == 11
    for record, other, row in zip(paged, lazy, rows, strict=True):
        assert _fields(record) == _fields(other)
        assert record.event == other.event
        assert isinstance(record.event_id, UUID) and str(record.event_id) == row[0]
        assert type(record.recorded_at) is datetime
        assert record.recorded_at == row[9]
        assert record.data == json.loads(row[7])
        assert record.metadata == json.loads(row[8])
        assert record.recorded_at.tzinfo == row[9].tzinfo
        assert record.recorded_at.utcoffset() == row[9].utcoffset()
    assert [r.metadata for r in paged] == [{"by": "test", "n": [1, 2]}] * 10 + [{}]
    assert paged[1].event == Empty(event_id=paged[1].event_id)
    assert paged[2].event == Renamed(event_id=paged[2].event_id, title="old", note="upcast")
    assert paged[10].event == Renamed(event_id=paged[10].event_id, title="mid", note="upcast")
    assert [type(r.event) for r in paged[3:10]] == [Deposited] * 7
    assert store.read_stream("mixed")[2].event == paged[2].event


def test_recording_times_keep_the_connection_time_zone(store: EventStore) -> None:
    """Times read in another session time zone are that zone's, as psycopg gives them."""
    partition = store.append("tz", [Deposited(amount=1)], NO_STREAM).partition
    params = {"partition": partition, "after": 0, "limit": 10}
    with psycopg.connect(conninfo(store.url), autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'Asia/Kathmandu'")
        (row,) = fetch(conn, store._queries.read_partition, params)
        (record,) = fetch_page(conn, store._queries.direct["read_partition_page"], params)
    assert record.recorded_at == row[9]
    assert str(record.recorded_at.tzinfo) == str(row[9].tzinfo) == "Asia/Kathmandu"
    assert record.recorded_at.isoformat() == row[9].isoformat()


def test_a_bad_payload_in_a_page_names_the_first_event_that_fails(store: EventStore) -> None:
    """A payload that does not fit its class fails the page with the error naming its stream
    and version; an unknown type does not fail it, and says so when its event is read."""
    partition = store.append("s", [Deposited(amount=i) for i in range(6)], NO_STREAM).partition
    sql(store, "UPDATE {s}.events SET event_type = 'replay.Gone' WHERE stream_version = 2")
    sql(
        store,
        'UPDATE {s}.events SET data = \'{{"amount": "many"}}\' WHERE stream_version IN (4, 5)',
    )
    records = store.iter_partition(partition, batch=6)  # one page: the records before go out
    first = next(records)
    assert first.event == Deposited(event_id=first.event_id, amount=0)
    unknown = next(records)
    with pytest.raises(UnknownEventType, match=r"replay\.Gone"):
        _ = unknown.event
    assert next(records).stream_version == 3
    where = r"'test\.Deposited' \(schema version 1\) of stream 's' at version 4"
    with pytest.raises(EventDecodeError, match=where) as info:
        next(records)
    assert "amount: Input should be a valid integer" in str(info.value)
    for read in (lambda: store.read_partition(partition), lambda: store.read_stream("s")):
        with pytest.raises(EventDecodeError, match=where):
            read()


async def test_the_async_twin_reads_the_same_pages(
    store: EventStore, async_store: AsyncEventStore
) -> None:
    """The async store's pages hold the same records and events as the sync store's."""
    partition = _seed(store)
    expected = list(store.iter_partition(partition, batch=4))
    paged = [r async for r in async_store.iter_partition(partition, batch=4)]
    read = await async_store.read_partition(partition)
    stream = await async_store.read_stream("mixed")
    for records in (paged, read, stream):
        assert [_fields(r) for r in records] == [_fields(r) for r in expected]
        assert [r.event for r in records] == [r.event for r in expected]
