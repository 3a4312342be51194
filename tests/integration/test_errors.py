"""Driver errors come out of the store as eventsource errors, decided by SQLSTATE."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest

from eventsource import (
    DatabaseUnavailable,
    DeadlockDetected,
    EventSourceError,
    EventStore,
    RetryableError,
    SerializationFailure,
    StatementCancelled,
    ValueRejected,
)
from eventsource.db import conninfo, quote_schema


@pytest.fixture
def table(store: EventStore) -> Iterator[str]:
    """A two-row table of the test's own in the store's schema."""
    name = f"{quote_schema(store.schema)}.accounts"
    with store.engine.begin() as tx:
        tx.exec_driver_sql(
            f"CREATE TABLE {name} (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0))"
        )
        tx.exec_driver_sql(f"INSERT INTO {name} VALUES (1, 10), (2, 10)")
    yield name


def test_a_deadlock_is_retryable(store: EventStore, table: str) -> None:
    """Two transactions that lock two rows in opposite orders: one gets DeadlockDetected."""
    locked = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def run(first: int, second: int) -> None:
        try:
            with store._errors(), store.engine.begin() as tx:
                tx.exec_driver_sql(f"UPDATE {table} SET balance = balance WHERE id = {first}")
                locked.wait()
                tx.exec_driver_sql(f"UPDATE {table} SET balance = balance WHERE id = {second}")
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=ab) for ab in ((1, 2), (2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(errors) == 1, errors
    assert type(errors[0]) is DeadlockDetected
    assert isinstance(errors[0], RetryableError)
    assert "retry it" in str(errors[0])


def test_a_serialization_failure_is_retryable(store: EventStore, table: str) -> None:
    """A repeatable-read transaction that updates a row changed since its snapshot."""
    repeatable = store.engine.execution_options(isolation_level="REPEATABLE READ")
    with pytest.raises(SerializationFailure) as info, store._errors(), repeatable.begin() as tx:
        tx.exec_driver_sql(f"SELECT balance FROM {table} WHERE id = 1").all()
        with store.engine.begin() as other:
            other.exec_driver_sql(f"UPDATE {table} SET balance = 11 WHERE id = 1")
        tx.exec_driver_sql(f"UPDATE {table} SET balance = 12 WHERE id = 1")
    assert isinstance(info.value, RetryableError)


def test_a_statement_timeout_cancels_the_statement(store: EventStore) -> None:
    """57014 is StatementCancelled, an error of the statement, not an outage or a retry."""
    with pytest.raises(StatementCancelled) as info, store._errors(), store.engine.begin() as tx:
        tx.exec_driver_sql("SET LOCAL statement_timeout = 20")
        tx.exec_driver_sql("SELECT pg_sleep(2)")
    assert not isinstance(info.value, RetryableError)
    assert "statement timeout" in str(info.value)


def test_a_check_violation_is_a_rejected_value(store: EventStore, table: str) -> None:
    """23514 (and data exceptions, class 22) are ValueRejected, a ValueError."""
    rejected = pytest.raises(ValueRejected, match="rejected by the database")
    with rejected as info, store._raw() as conn:
        conn.execute(f"UPDATE {table} SET balance = -1 WHERE id = 1")
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueRejected, match="division by zero"), store._raw() as conn:
        conn.execute("SELECT 1 / 0")
    with store._raw() as conn:  # nothing was written
        assert conn.execute(f"SELECT balance FROM {table} WHERE id = 1").fetchone() == (10,)


def test_a_lost_connection_is_retryable(store: EventStore) -> None:
    """A backend terminated in the middle of a transaction: DatabaseUnavailable."""
    lost = pytest.raises(DatabaseUnavailable)
    with lost as info, store._errors(), store.engine.begin() as tx:
        pid = tx.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with psycopg.connect(conninfo(store.url), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        tx.exec_driver_sql("SELECT 1")
    assert isinstance(info.value, RetryableError)


def test_an_unmapped_error_keeps_the_root_class(store: EventStore) -> None:
    """A syntax error is an EventSourceError with the server's first line, no traceback text."""
    with pytest.raises(EventSourceError, match="syntax error") as info, store._raw() as conn:
        conn.execute("SELEC 1")
    assert type(info.value) is EventSourceError
    assert "\n" not in str(info.value)
