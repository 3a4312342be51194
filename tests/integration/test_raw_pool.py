"""The store's pool of autocommit connections for single statements."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy import text

from eventsource import DatabaseUnavailable, EventStore
from eventsource.db import RawPool, conninfo
from eventsource.db import _pool as pool_module
from eventsource.db._pool import QUICK
from tests.domain import Opened
from tests.proxy import Proxy


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


def _terminate(store: EventStore, pid: int) -> None:
    """Terminate a backend and wait until it is gone (its goodbye is then on the socket)."""
    with psycopg.connect(conninfo(store.url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        for _ in range(200):
            row = admin.execute(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %s)", (pid,)
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)
    raise AssertionError(f"backend {pid} did not exit")


def test_a_killed_idle_connection_is_replaced_without_an_error(store: EventStore) -> None:
    """A pooled connection whose server process died is replaced when it is next taken."""
    store.append("s-1", [Opened(owner="a")])
    (pid,) = backend_pids(store)
    _terminate(store, pid)
    assert [r.stream_id for r in store.read_stream("s-1")] == ["s-1"]
    (new_pid,) = backend_pids(store)
    assert new_pid != pid


def test_a_killed_idle_engine_connection_is_replaced(store: EventStore) -> None:
    """The transaction engine's pooled connections are checked on checkout too."""
    with store.engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
    _terminate(store, int(pid))  # type: ignore[arg-type]
    with store.transaction() as tx:
        store.append("s-2", [Opened(owner="a")], tx=tx)
        new_pid = tx.execute(text("SELECT pg_backend_pid()")).scalar()
    assert new_pid != pid
    assert [r.stream_id for r in store.read_stream("s-2")] == ["s-2"]


def test_url_parameters_reach_the_server(database_url: str, schema: str) -> None:
    """options= and application_name= in the URL arrive as written (spaces kept)."""
    url = database_url + ("&" if "?" in database_url else "?")
    url += "options=-c%20lock_timeout%3D2345&application_name=my%20app"
    other = EventStore.from_url(url, schema=schema, partitions=2)
    try:
        other.upgrade()
        other.append("u-1", [Opened(owner="a")])
        assert other.read_stream("u-1")[0].stream_id == "u-1"
        with other._raw() as conn:
            assert conn.execute("SHOW lock_timeout").fetchone() == ("2345ms",)
            assert conn.execute("SHOW application_name").fetchone() == ("my app",)
        with other.engine.connect() as conn:
            assert conn.execute(text("SHOW application_name")).scalar() == "my app"
    finally:
        other.close()


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

    from eventsource.db import resolve_url  # noqa: PLC0415

    engine = create_engine(resolve_url(database_url), poolclass=NullPool)
    other = EventStore(engine, schema=store.schema)
    try:
        result = other.append("np-1", [Opened(owner="a")])
        assert store.read_stream("np-1")[0].position == result.position
    finally:
        other.close()


def test_the_pool_serves_again_at_once_after_an_outage(
    database_url: str, store: EventStore
) -> None:
    """After the server was away for a while, statements run on pooled connections again at
    once: the pool does not keep backing off its reconnection attempts (each statement would
    then wait for it, and run on a connection of its own)."""
    with Proxy(database_url) as proxy:
        other = EventStore.from_url(proxy.url, schema=store.schema)
        try:
            other.append("o-1", [Opened(owner="a")])
            proxy.down()
            failures = 0
            for _ in range(6):  # the pool's connection attempts fail again and again
                with pytest.raises(DatabaseUnavailable):
                    other.heads()
                failures += 1
                time.sleep(0.5)
            proxy.up()
            with other._raw() as conn:
                pid = conn.info.backend_pid
            opened = proxy.accepted
            pids = set()
            for _ in range(5):
                with other._raw() as conn:
                    pids.add(conn.info.backend_pid)
            assert pids == {pid}, "statements after the outage ran on new connections each"
            assert proxy.accepted == opened
            assert failures == 6
            assert other.read_stream("o-1")[0].stream_id == "o-1"
        finally:
            other.close()


# -- RawPool itself -------------------------------------------------------------------------


def _pool(database_url: str, size: int = 1) -> RawPool:
    from eventsource.db import resolve_url  # noqa: PLC0415

    return RawPool(conninfo(resolve_url(database_url)), size, prepare_threshold=None)


def _queued(pool: RawPool, count: int) -> None:
    """Wait until ``count`` callers wait for a connection of ``pool``."""
    deadline = time.monotonic() + 10
    while len(pool._waiters) < count:
        assert time.monotonic() < deadline, f"{count} callers did not come to wait"
        time.sleep(0.005)


def test_a_full_pool_hands_a_connection_back_to_its_oldest_waiter(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every connection in use, callers wait and are handed the connections given back,
    in the order they came; the pool opens no more than its limit."""
    monkeypatch.setattr(pool_module, "QUICK", 30.0)  # no caller gives up waiting here
    pool = _pool(database_url, size=1)  # two connections at most
    held = [pool.connection(), pool.connection()]
    pids = {lease.__enter__().info.backend_pid for lease in held}
    order: list[tuple[str, int]] = []

    def wait(name: str) -> None:
        with pool.connection() as conn:
            order.append((name, conn.info.backend_pid))

    first = threading.Thread(target=wait, args=("first",))
    first.start()
    _queued(pool, 1)
    second = threading.Thread(target=wait, args=("second",))
    second.start()
    _queued(pool, 2)
    held[0].__exit__(None, None, None)  # one connection back: the oldest waiter's
    first.join(timeout=10)
    second.join(timeout=10)  # then handed the one the first waiter gave back
    held[1].__exit__(None, None, None)
    try:
        assert [name for name, _ in order] == ["first", "second"]
        assert {pid for _, pid in order} <= pids, "a waiter opened a connection past the limit"
        assert len({pid for _, pid in order}) == 1, "the waiters did not share the one given back"
    finally:
        pool.close()


def test_a_caller_that_waits_too_long_gets_a_connection_of_its_own(database_url: str) -> None:
    pool = _pool(database_url, size=1)
    held = [pool.connection(), pool.connection()]
    pids = {lease.__enter__().info.backend_pid for lease in held}
    try:
        started = time.monotonic()
        with pool.connection() as conn:
            own = conn
            assert conn.info.backend_pid not in pids
        assert time.monotonic() - started >= QUICK
        assert own.closed, "a connection of the caller's own is closed after the block"
    finally:
        for lease in held:
            lease.__exit__(None, None, None)
        pool.close()


def test_a_connection_given_back_inside_a_transaction_is_closed(database_url: str) -> None:
    pool = _pool(database_url)
    try:
        with pool.connection() as conn:
            conn.execute("BEGIN")
            left = conn
        assert left.closed
        with pool.connection() as conn:
            assert conn is not left
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def test_a_failed_connection_attempt_raises_at_once_and_frees_its_place() -> None:
    """When the server cannot be reached the caller gets the error at once; the failed
    attempts do not use up the pool's places."""
    pool = RawPool("host=127.0.0.1 port=1 connect_timeout=2", 1, prepare_threshold=None)
    for _ in range(5):  # more attempts than the pool has places
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError), pool.connection():
            pass
        assert time.monotonic() - started < QUICK
    assert pool._open == 0
    pool.close()


def test_after_close_blocks_get_connections_of_their_own(database_url: str) -> None:
    pool = _pool(database_url)
    lease = pool.connection()
    in_use = lease.__enter__()
    pool.close()
    lease.__exit__(None, None, None)
    assert in_use.closed, "a connection given back after close is closed"
    with pool.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        own = conn
    assert own.closed
