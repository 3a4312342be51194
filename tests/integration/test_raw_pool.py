"""The store's pool of autocommit connections for single statements."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from eventsource import DatabaseUnavailable, EventStore
from tests.domain import Opened


def backend_pids(store: EventStore) -> set[int]:
    with store._raw() as conn:
        first = conn.info.backend_pid
    return {first}


def test_connections_are_reused(store: EventStore) -> None:
    """Sequential single statements run on one pooled connection."""
    pids = set()
    for _ in range(5):
        with store._raw() as conn:
            pids.add(conn.info.backend_pid)
    assert len(pids) == 1


def test_a_killed_connection_fails_once_and_is_replaced(store: EventStore) -> None:
    """A pooled connection whose server process died gives one clear error, then a new one."""
    store.append("s-1", [Opened(owner="a")])
    (pid,) = backend_pids(store)
    with store.engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    with pytest.raises(DatabaseUnavailable):
        store.read_stream("s-1")
    assert [r.stream_id for r in store.read_stream("s-1")] == ["s-1"]
    (new_pid,) = backend_pids(store)
    assert new_pid != pid


def test_a_failed_statement_leaves_the_connection_usable(store: EventStore) -> None:
    """A statement error in autocommit leaves no open transaction: the connection is kept."""
    with store._raw() as conn:
        pid = conn.info.backend_pid
    with pytest.raises(Exception, match="division by zero"), store._raw() as conn:
        conn.execute("SELECT 1 / 0")
    with store._raw() as conn:
        assert conn.info.backend_pid == pid
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)


def test_close_closes_idle_connections(database_url: str, store: EventStore) -> None:
    other = EventStore.from_url(database_url, schema=store.schema)
    with other._raw() as conn:
        kept = conn
    other.close()
    assert kept.closed


def test_a_store_over_an_engine_without_a_sized_pool(database_url: str, store: EventStore) -> None:
    """EventStore(engine) with NullPool still gets a single-statement pool."""
    from sqlalchemy import create_engine  # noqa: PLC0415
    from sqlalchemy.pool import NullPool  # noqa: PLC0415

    from eventsource._engine import resolve_url  # noqa: PLC0415

    engine = create_engine(resolve_url(database_url), poolclass=NullPool)
    other = EventStore(engine, schema=store.schema)
    try:
        result = other.append("np-1", [Opened(owner="a")])
        assert store.read_stream("np-1")[0].position == result.position
    finally:
        other.close()
