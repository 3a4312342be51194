"""Helpers shared by the integration tests: raw SQL on a store's schema, state fingerprints."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from eventsource import EventStore, _events
from eventsource.db import quote_schema

_engines: dict[str, Engine] = {}


def _sync_engine(store: Any) -> Engine:
    """The store's own engine, or for an async store one sync engine per URL (cached)."""
    if isinstance(store.engine, Engine):
        return store.engine
    key = store.url.render_as_string(hide_password=False)
    if key not in _engines:
        _engines[key] = create_engine(store.url, poolclass=NullPool)
    return _engines[key]


def sql(store: Any, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
    """Run ``statement`` (``{s}`` is the store's quoted schema) in its own transaction; the
    store may be either twin."""
    with _sync_engine(store).begin() as conn:
        result = conn.execute(text(statement.format(s=quote_schema(store.schema))), params or {})
        return list(result.all()) if result.returns_rows else []


@dataclass(frozen=True)
class LogState:
    """Everything an append can change: heads, streams (partition, version) and events."""

    heads: dict[int, int]
    streams: list[tuple[str, int, int]]
    events: int


def log_state(store: EventStore) -> LogState:
    """A fingerprint of the log, to prove that a failed append wrote nothing."""
    streams = sql(
        store,
        "SELECT stream_id, min(partition), max(stream_version) FROM {s}.events"
        " GROUP BY stream_id ORDER BY 1",
    )
    (count,) = sql(store, "SELECT count(*) FROM {s}.events")[0]
    return LogState(store.heads(), [tuple(r) for r in streams], int(count))


def assert_dense(store: EventStore) -> int:
    """Every partition's positions are exactly 1..head and every stream's versions 1..n."""
    total = 0
    for partition, head in store.heads().items():
        positions = [
            r[0]
            for r in sql(
                store,
                "SELECT position FROM {s}.events WHERE partition = :p ORDER BY position",
                {"p": partition},
            )
        ]
        assert positions == list(range(1, head + 1)), f"partition {partition} has holes"
        total += head
    rows = sql(
        store,
        "SELECT stream_id, array_agg(stream_version ORDER BY stream_version),"
        " array_agg(DISTINCT partition) FROM {s}.events GROUP BY 1",
    )
    for stream_id, versions, partitions in rows:
        assert versions == list(range(1, len(versions) + 1)), f"stream {stream_id!r} has holes"
        assert len(partitions) == 1, f"stream {stream_id!r} spans partitions {partitions}"
    (count,) = sql(store, "SELECT count(*) FROM {s}.events")[0]
    assert count == total
    return total


@contextmanager
def restored_registry() -> Iterator[None]:
    """Event classes and upcasters registered inside the block are forgotten after it."""
    registry = dict(_events._registry)
    upcasters = dict(_events._upcasters)
    try:
        yield
    finally:
        _events._registry.clear()
        _events._registry.update(registry)
        _events._upcasters.clear()
        _events._upcasters.update(upcasters)
