"""Statements sent straight through libpq (``eventsource.db.Direct``): the one-event appends
and the announcer's NOTIFY."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest

from eventsource import (
    NO_STREAM,
    AsyncEventStore,
    Command,
    CommandQueue,
    ConcurrencyError,
    EventStore,
)
from eventsource._errors import is_outage
from eventsource.db import Direct, connect, conninfo, fetch, fetch_async, resolve_url
from tests.domain import Opened

STATEMENT = "SELECT %(n)s::bigint + 1, %(n)b::integer, %(word)s::text, %(id)s::uuid, %(none)s::text"
PARAMS = {"n": 41, "word": "héllo", "id": uuid.UUID(int=7), "none": None}
ROW = (42, 41, "héllo", str(uuid.UUID(int=7)), None)


class Ping(Command, name="test.direct.Ping"):
    """A command to enqueue."""

    n: int


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


@pytest.mark.parametrize("threshold", [2, None])
@pytest.mark.parametrize("prepared_first", [True, False])
def test_a_lost_connection_is_an_outage(
    database_url: str, threshold: int | None, prepared_first: bool
) -> None:
    """A statement on a connection whose server process is gone raises what psycopg raises
    for a lost connection (an OperationalError without SQLSTATE), which workers wait out."""
    statement = Direct(STATEMENT)
    with connect(_dsn(database_url), prepare_threshold=threshold) as conn:
        if prepared_first:
            assert fetch(conn, statement, PARAMS) == [ROW]
        with connect(_dsn(database_url)) as admin:  # ended, and waited for until it is gone
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (conn.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError) as raised:
            fetch(conn, statement, PARAMS)
        assert raised.value.sqlstate is None
        assert is_outage(raised.value)
        assert conn.closed


def test_parameters_of_other_types_are_refused(database_url: str) -> None:
    """Only str, int, float, UUID, aware datetimes and None are sent: anything else is a
    TypeError, and nothing is sent."""
    with connect(_dsn(database_url)) as conn, pytest.raises(TypeError, match="got bytes"):
        fetch(conn, Direct("SELECT %(x)s"), {"x": b"1.5"})


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


def test_floats_aware_datetimes_and_booleans_round_trip(database_url: str) -> None:
    """Floats, aware datetimes and booleans go as their text; boolean columns come back as
    bool. A naive datetime (its time zone unknown) is refused before anything is sent."""
    statement = Direct(
        "SELECT %(at)s::timestamptz = '2026-01-02 03:04:05.5+00'::timestamptz,"
        " %(seconds)s::float8 * 2, %(seconds)s::float8 > 1"
    )
    at = datetime(2026, 1, 2, 4, 4, 5, 500000, tzinfo=timezone(timedelta(hours=1)))
    with connect(_dsn(database_url), prepare_threshold=2) as conn:
        assert fetch(conn, statement, {"at": at, "seconds": 0.25}) == [(True, "0.5", False)]
        with pytest.raises(TypeError, match="an aware datetime"):
            fetch(conn, statement, {"at": at.replace(tzinfo=None), "seconds": 1.0})
        negated = Direct("SELECT NOT %(flag)s::boolean, %(flag)s::text")
        assert fetch(conn, negated, {"flag": True}) == [(False, "true")]
        assert fetch(conn, negated, {"flag": False}) == [(True, "false")]


def test_a_plain_enqueue_goes_direct_and_reports_its_id(store: EventStore) -> None:
    """The plain enqueue (alone, the most common one) runs as a Direct statement: its id comes
    back as an int and it is not a duplicate, with or without its own NOTIFY."""
    queue = CommandQueue(store)
    first = queue.enqueue(Ping(n=1), delay=0.5)
    second = queue.enqueue(Ping(n=2), run_at=datetime.now(UTC))
    assert isinstance(first.id, int) and isinstance(second.id, int)
    assert (first.duplicate, second.duplicate) == (False, False)
    assert second.id > first.id
