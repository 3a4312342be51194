"""Projection workers against connection faults of the main server, on their own sessions only.

Each test gives its store an ``application_name`` of its own, so that terminating "every
client" means every backend of this test and nothing else on the shared server.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import psycopg
import pytest
from sqlalchemy import Connection, text

from eventsource import EventStore, RecordedEvent
from eventsource.db import conninfo, quote_schema
from projections import Projection, ProjectionWorker, handles
from tests.domain import Deposited, Opened
from tests.projection_domain import InSchema


class Counter(InSchema):
    """One row per applied event (no unique key: a double application shows)."""

    name = "test.fault-counter"
    tables: ClassVar[dict[str, str]] = {
        "applied": "stream_id text, version int, at timestamptz DEFAULT clock_timestamp()"
    }

    @handles(Opened, Deposited)
    def on_event(self, event: Any, record: RecordedEvent, tx: Connection) -> None:
        tx.execute(
            text(f"INSERT INTO {self.s}.applied (stream_id, version) VALUES (:s, :v)"),
            {"s": record.stream_id, "v": record.stream_version},
        )


@pytest.fixture
def tagged(database_url: str, schema: str) -> Iterator[tuple[EventStore, str]]:
    """A store whose connections carry an application_name unique to this test."""
    tag = f"fault-{uuid.uuid4().hex[:10]}"
    sep = "&" if "?" in database_url else "?"
    s = EventStore.from_url(f"{database_url}{sep}application_name={tag}", schema=schema)
    s.upgrade()
    yield s, tag
    s.close()


def terminate(store: EventStore, tag: str) -> int:
    """Terminate every backend of this test (by application_name); how many there were."""
    with psycopg.connect(conninfo(store.url.difference_update_query(["application_name"]))) as c:
        rows = c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (tag,),
        ).fetchall()
    return len(rows)


def applied(store: EventStore) -> list[tuple[str, int]]:
    with store.engine.begin() as conn:
        rows = conn.execute(
            text(f"SELECT stream_id, version FROM {quote_schema(store.schema)}.applied")
        )
        return [(r[0], r[1]) for r in rows]


def wait_until(condition: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.005)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start(worker: ProjectionWorker) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []
    worker.setup()  # the read-model tables exist before the test looks at them

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_a_worker_outlives_terminated_connections_and_listens_again(
    tagged: tuple[EventStore, str],
) -> None:
    """Every connection of the worker killed: it keeps running and wake-ups return fast."""
    store, tag = tagged
    worker = ProjectionWorker(
        store, [Counter(store.schema)], lease_ttl=2.0, heartbeat_interval=0.2, poll_interval=5
    )
    thread, errors = start(worker)
    try:
        store.append("a-1", [Opened(owner="x")])
        wait_until(lambda: len(applied(store)) == 1, 10, "the first event")
        for round_ in range(3):
            assert terminate(store, tag) > 0
            time.sleep(0.3)
            store.append("a-1", [Deposited(amount=round_ + 1)])
            # poll_interval is 5 s: applied sooner only if LISTEN came back.
            took = wait_until(lambda n=round_: len(applied(store)) == n + 2, 4, "a wake-up")
            assert took < 4
            assert thread.is_alive(), errors
        # Back to normal: a single append is applied well within a poll interval.
        time.sleep(0.5)
        before = len(applied(store))
        store.append("a-1", [Deposited(amount=9)])
        took = wait_until(lambda: len(applied(store)) == before + 1, 2, "a fast wake-up")
        assert took < 1.0
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert errors == []
    rows = applied(store)
    assert sorted(rows) == sorted(set(rows)), "an event was applied twice"
    assert len(rows) == 5


class SlowStatement(Projection):
    """A handler whose statement is cancelled by a statement timeout."""

    name = "test.slow-statement"

    @handles(Opened)
    def on_opened(self, event: Any, record: RecordedEvent, tx: Connection) -> None:
        tx.execute(text("SET LOCAL statement_timeout = 10"))
        tx.execute(text("SELECT pg_sleep(1)"))


def test_a_statement_timeout_in_a_handler_stops_the_partition_with_its_error(
    store: EventStore,
) -> None:
    """A cancelled statement is the handler's error (counted, shown), not an outage."""
    result = store.append("s-1", [Opened(owner="x")])
    worker = ProjectionWorker(
        store,
        [SlowStatement()],
        retry_delays=(0.01, 0.01),
        max_attempts=2,
        lease_ttl=2.0,
        heartbeat_interval=0.2,
    )
    done = threading.Event()

    def run() -> None:
        worker.run(stop_when_caught_up=True)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert done.wait(30), "the worker kept retrying a cancelled statement"
    with store.engine.begin() as conn:
        error, attempts = conn.execute(
            text(
                f"SELECT error, error_attempts FROM {quote_schema(store.schema)}"
                ".projection_checkpoints WHERE projection = :p AND partition = :n"
            ),
            {"p": SlowStatement.name, "n": result.partition},
        ).one()
    assert "statement timeout" in error
    assert attempts == 2


class Stalls(InSchema):
    """The first call blocks its batch transaction (a frozen worker) until released."""

    name = "test.stalls"

    tables: ClassVar[dict[str, str]] = {"stalls": "stream_id text"}

    def __init__(self, schema: str, release: threading.Event) -> None:
        super().__init__(schema)
        self.release = release
        self.stalled = threading.Event()

    @handles(Opened)
    def on_opened(self, event: Any, record: RecordedEvent, tx: Connection) -> None:
        tx.execute(text(f"INSERT INTO {self.s}.stalls VALUES (:s)"), {"s": record.stream_id})
        if not self.stalled.is_set():
            self.stalled.set()
            self.release.wait(60)


def test_a_frozen_batch_loses_its_partition_within_about_one_ttl(store: EventStore) -> None:
    """A batch transaction left idle is ended by the server; another worker takes over."""
    release = threading.Event()
    frozen = Stalls(store.schema, release)
    store.append("f-1", [Opened(owner="x")])
    first = ProjectionWorker(store, [frozen], lease_ttl=1.0, heartbeat_interval=0.2)
    thread, _ = start(first)
    try:
        assert frozen.stalled.wait(10)
        second = ProjectionWorker(
            store,
            [Stalls(store.schema, threading.Event())],
            lease_ttl=1.0,
            heartbeat_interval=0.2,
        )
        second._groups[0].projection.stalled.set()  # type: ignore[attr-defined]
        started = time.monotonic()
        other, errors = start(second)
        try:
            took = wait_until(lambda: _count(store, "stalls") == 1, 15, "the second worker's batch")
            # Idle-in-transaction timeout (1 s) + lease expiry (1 s) + a heartbeat.
            assert time.monotonic() - started < 6, took
        finally:
            second.stop()
            other.join(10)
        assert errors == []
    finally:
        release.set()
        first.stop()
        thread.join(10)
    with store.engine.begin() as conn:
        (position,) = conn.execute(
            text(
                f"SELECT max(position) FROM {quote_schema(store.schema)}.projection_checkpoints"
                " WHERE projection = :p"
            ),
            {"p": Stalls.name},
        ).one()
    assert position == 1
    # The frozen batch's insert was rolled back with its session: one committed row.
    assert _count(store, "stalls") == 1


def _count(store: EventStore, table: str) -> int:
    with store.engine.begin() as conn:
        return int(
            conn.execute(
                text(f"SELECT count(*) FROM {quote_schema(store.schema)}.{table}")
            ).scalar_one()
        )


def test_a_listener_that_fails_to_listen_closes_its_connection(
    tagged: tuple[EventStore, str],
) -> None:
    """A LISTEN connection whose set-up fails after connecting is closed, not leaked."""
    from eventsource._logging import get_logger  # noqa: PLC0415
    from eventsource.runtime import Listener  # noqa: PLC0415

    store, tag = tagged

    def sessions() -> int:
        with psycopg.connect(conninfo(store.url), autocommit=True) as c:
            row = c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND pid <> pg_backend_pid()",
                (tag,),
            ).fetchone()
        return int(row[0]) if row else 0

    before = sessions()
    listener = Listener(store.url, ["SELECT 1 / 0"], get_logger("test"))
    for _ in range(3):
        listener._retry_at = 0.0
        assert not listener.open()
    assert sessions() == before


def test_a_batch_longer_than_the_ttl_ends_with_a_live_lease(store: EventStore) -> None:
    """The checkpoint's lease is renewed from the database clock when the batch advances,
    not from the start of its transaction."""
    worker = ProjectionWorker(store, [Counter(store.schema)], lease_ttl=1.0, heartbeat_interval=0.2)
    worker.setup()
    worker.heartbeat()
    group = worker._groups[0]
    partition, lease = next(iter(group.leases.items()))
    with store.engine.connect() as conn, conn.begin():
        conn.execute(text("SELECT 1"))  # the transaction starts here
        time.sleep(1.2)  # a batch longer than the TTL
        advanced = conn.exec_driver_sql(
            worker.queries.advance,
            {
                **worker._membership.key(group),
                "partition": partition,
                "token": lease.token,
                "position": 0,
                "ttl": 1.0,
            },
        )
        assert advanced.rowcount == 1
        live = conn.execute(
            text(
                f"SELECT lease_until > clock_timestamp() FROM {quote_schema(store.schema)}"
                ".projection_checkpoints WHERE projection = :p AND partition = :n"
            ),
            {"p": Counter.name, "n": partition},
        ).scalar_one()
    assert live is True
    worker.shutdown()
