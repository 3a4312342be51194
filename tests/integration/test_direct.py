"""Statements sent straight through libpq (``eventsource.db.Direct``): the one-event appends
and the announcer's NOTIFY."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from eventsource import NO_STREAM, AsyncEventStore, ConcurrencyError, EventStore
from eventsource.db import Direct, connect, conninfo, fetch, fetch_async, resolve_url
from tests.domain import Opened

STATEMENT = "SELECT %(n)s::bigint + 1, %(n)b::integer, %(word)s::text, %(id)s::uuid, %(none)s::text"
PARAMS = {"n": 41, "word": "héllo", "id": uuid.UUID(int=7), "none": None}
ROW = (42, 41, "héllo", str(uuid.UUID(int=7)), None)


def _dsn(database_url: str) -> str:
    return conninfo(resolve_url(database_url))


@pytest.mark.parametrize("threshold", [2, None])
def test_a_direct_statement_takes_named_parameters_and_gives_typed_rows(
    database_url: str, threshold: int | None
) -> None:
    """Parameters by name (repeated ones sent once); integers back as int, the rest as str;
    prepared (prepare_threshold set) or sent whole (None), the same rows every time."""
    statement = Direct(STATEMENT)
    assert statement.names == ("n", "word", "id", "none")
    with connect(_dsn(database_url), prepare_threshold=threshold) as conn:
        for _ in range(3):
            assert fetch(conn, statement, PARAMS) == [ROW]
        prepared = conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE name = %s",
            (statement.name.decode(),),
        ).fetchone()
        assert prepared == ((1,) if threshold is not None else (0,))


def test_a_deallocated_statement_is_prepared_again(database_url: str) -> None:
    """A connection whose prepared statements were dropped (DEALLOCATE ALL) prepares it anew;
    one that forgot it had prepared it runs the one there."""
    statement = Direct(STATEMENT)
    with connect(_dsn(database_url), prepare_threshold=2) as conn:
        assert fetch(conn, statement, PARAMS) == [ROW]
        conn.execute("DEALLOCATE ALL")
        assert fetch(conn, statement, PARAMS) == [ROW]
        delattr(conn, "_eventsource_prepared")
        assert fetch(conn, statement, PARAMS) == [ROW]


def test_errors_are_psycopg_errors_of_their_sqlstate(database_url: str) -> None:
    """A failing statement raises psycopg's class for its SQLSTATE; the connection is usable."""
    statement = Direct("SELECT 1 / %(zero)s::integer")
    with connect(_dsn(database_url), prepare_threshold=2) as conn:
        for _ in range(2):
            with pytest.raises(psycopg.errors.DivisionByZero):
                fetch(conn, statement, {"zero": 0})
        assert fetch(conn, statement, {"zero": 1}) == [(1,)]


def test_parameters_of_other_types_are_refused(database_url: str) -> None:
    """Only str, int, UUID and None are sent: anything else is a TypeError, nothing is sent."""
    with connect(_dsn(database_url)) as conn, pytest.raises(TypeError, match="float"):
        fetch(conn, Direct("SELECT %(x)s"), {"x": 1.5})


async def test_the_async_twin_runs_the_same_statement(database_url: str) -> None:
    """``fetch_async`` runs a Direct statement as ``fetch`` does."""
    statement = Direct(STATEMENT)
    async with await psycopg.AsyncConnection.connect(
        _dsn(database_url), autocommit=True, prepare_threshold=2
    ) as conn:
        for _ in range(2):
            assert await fetch_async(conn, statement, PARAMS) == [ROW]
        with pytest.raises(psycopg.errors.DivisionByZero):
            await fetch_async(conn, Direct("SELECT 1 / %(z)s::integer"), {"z": 0})


@pytest.mark.parametrize("prepared", [True, False])
def test_one_event_appends_without_prepared_statements(
    database_url: str, schema: str, prepared: bool
) -> None:
    """Behind a PgBouncer in transaction mode (no prepared statements) the one-event appends
    write, conflict and retry as with them."""
    with EventStore.from_url(
        database_url, schema=schema, partitions=4, prepared_statements=prepared
    ) as store:
        store.upgrade()
        event = Opened(owner="ann")
        first = store.append("s-1", [event], NO_STREAM)
        assert (first.stream_version, first.duplicate) == (1, False)
        assert store.append("s-1", [event]).duplicate  # an idempotent retry
        assert store.append("s-1", [Opened(owner="bob")], 1).stream_version == 2
        with pytest.raises(ConcurrencyError):
            store.append("s-1", [Opened(owner="cy")], 1)
        with pytest.raises(ConcurrencyError):
            store.append("s-1", [Opened(owner="cy")], NO_STREAM)
        assert [r.stream_version for r in store.read_stream("s-1")] == [1, 2]


async def test_async_one_event_appends(async_store: AsyncEventStore) -> None:
    """The async store's one-event appends go the same way."""
    assert (await async_store.append("s-1", [Opened(owner="a")], NO_STREAM)).position >= 1
    assert (await async_store.append("s-1", [Opened(owner="b")], 1)).stream_version == 2
    with pytest.raises(ConcurrencyError):
        await async_store.append("s-1", [Opened(owner="c")], NO_STREAM)
