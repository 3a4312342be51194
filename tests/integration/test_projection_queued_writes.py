"""Pipelined projections by default: plain text writes are queued and sent together.

Handlers that read inside the batch still see every write before them; a write's result keeps
an exact ``rowcount``; a failing write still stops the partition at its own event.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from sqlalchemy import Connection, text
from sqlalchemy import event as sa_event
from sqlalchemy.exc import IntegrityError, ResourceClosedError

import projections
from eventsource import EventStore, RecordedEvent
from eventsource.db import quote_schema
from projections import Projection, handles
from tests.domain import Deposited, Opened
from tests.projection_domain import InSchema

FAST: dict[str, Any] = {"heartbeat_interval": 0.05, "lease_ttl": 1.0, "retry_delays": (0.01,)}
POISON = 13


class Ledger(InSchema):
    """Every event's amount in ``ledger``; each handler reads the ledger after its write.

    ``seen`` records, per event, what the handler's reads returned: the rows of its stream
    so far (``fetchall``) and the stream's total (``scalar``), both counting its own write.
    """

    name = "test.queued.ledger"
    batch_size = 100
    tables: ClassVar[dict[str, str]] = {
        "ledger": "stream_id text, version int,"
        f" amount int NOT NULL CHECK (amount <> {POISON}), PRIMARY KEY (stream_id, version)",
        "seen": "stream_id text, version int, rows int, total int,"
        " PRIMARY KEY (stream_id, version)",
    }

    @handles(Opened, Deposited)
    def on_event(self, event: Any, record: RecordedEvent, tx: Connection) -> None:
        params = {"id": record.stream_id, "v": record.stream_version, "n": 0}
        if isinstance(event, Deposited):
            params["n"] = event.amount
        tx.execute(text(f"INSERT INTO {self.s}.ledger VALUES (:id, :v, :n)"), params)
        params["n"] = -1  # changed after execute: the queued write keeps what it was given
        rows = tx.execute(
            text(f"SELECT version FROM {self.s}.ledger WHERE stream_id = :id"), params
        ).fetchall()
        total = tx.execute(
            text(f"SELECT sum(amount) FROM {self.s}.ledger WHERE stream_id = :id"), params
        ).scalar()
        tx.execute(
            text(f"INSERT INTO {self.s}.seen VALUES (:id, :v, :rows, :total)"),
            {"id": record.stream_id, "v": record.stream_version, "rows": len(rows), "total": total},
        )


class Upserts(InSchema):
    """Totals kept with UPDATE, then INSERT when the UPDATE's ``rowcount`` is 0; the result of
    the first write of each batch is read only at its end (after later writes were queued)."""

    name = "test.queued.upserts"
    batch_size = 50

    tables: ClassVar[dict[str, str]] = {"totals": "id text PRIMARY KEY, n int"}

    def __init__(self, schema: str) -> None:
        super().__init__(schema)
        self.first: Any = None
        self.late_counts: list[int] = []

    def handle_batch(self, records: Any, tx: Connection) -> None:
        self.first = None
        super().handle_batch(records, tx)
        self.late_counts.append(self.first.rowcount)

    @handles(Opened, Deposited)
    def on_event(self, event: Any, record: RecordedEvent, tx: Connection) -> None:
        updated = tx.execute(
            text(f"UPDATE {self.s}.totals SET n = n + 1 WHERE id = :id"), {"id": record.stream_id}
        )
        if self.first is None:
            self.first = updated
        if updated.rowcount == 0:
            tx.execute(
                text(f"INSERT INTO {self.s}.totals VALUES (:id, 1)"), {"id": record.stream_id}
            )


class Guarded(InSchema):
    """Inserts each stream's id once, catching the duplicate in a savepoint."""

    name = "test.queued.guarded"

    tables: ClassVar[dict[str, str]] = {"streams": "id text PRIMARY KEY"}

    def __init__(self, schema: str) -> None:
        super().__init__(schema)
        self.duplicates = 0

    @handles(Opened, Deposited)
    def on_event(self, event: Any, record: RecordedEvent, tx: Connection) -> None:
        try:
            with tx.begin_nested():
                tx.execute(
                    text(f"INSERT INTO {self.s}.streams VALUES (:id)"), {"id": record.stream_id}
                )
        except IntegrityError:
            self.duplicates += 1


class Immediate(InSchema):
    """``pipelined = False``: every statement runs when executed; its result is SQLAlchemy's."""

    name = "test.queued.immediate"
    pipelined = False

    tables: ClassVar[dict[str, str]] = {"marks": "id text"}

    def __init__(self, schema: str) -> None:
        super().__init__(schema)
        self.results: list[str] = []

    @handles(Opened)
    def on_event(self, event: Any, record: RecordedEvent, tx: Connection) -> None:
        result = tx.execute(
            text(f"INSERT INTO {self.s}.marks VALUES (:id)"), {"id": record.stream_id}
        )
        self.results.append(type(result).__name__)


def rows(store: EventStore, sql: str) -> list[Any]:
    with store.engine.connect() as conn:
        return list(conn.execute(text(sql.format(s=quote_schema(store.schema)))))


def test_a_handler_reading_in_the_batch_sees_its_own_and_earlier_writes(store: EventStore) -> None:
    for i in range(12):
        store.append(f"acc-{i}", [Opened(owner="o"), *(Deposited(amount=k) for k in range(1, 9))])
    projections.run(store, [Ledger(store.schema)], stop_when_caught_up=True, **FAST)
    seen = {
        (r.stream_id, r.version): (r.rows, r.total) for r in rows(store, "SELECT * FROM {s}.seen")
    }
    expected = {(f"acc-{i}", v): (v, sum(range(1, v))) for i in range(12) for v in range(1, 10)}
    assert seen == expected
    ledger = rows(store, "SELECT amount FROM {s}.ledger WHERE amount < 0")
    assert ledger == []  # the parameters as given to execute, not as changed afterwards


def test_a_queued_write_reports_its_own_rowcount(store: EventStore) -> None:
    for i in range(5):
        store.append(f"acc-{i}", [Opened(owner="o"), *(Deposited(amount=1) for _ in range(20))])
    upserts = Upserts(store.schema)
    projections.run(store, [upserts], stop_when_caught_up=True, **FAST)
    assert {r.id: r.n for r in rows(store, "SELECT * FROM {s}.totals")} == {
        f"acc-{i}": 21 for i in range(5)
    }
    assert upserts.late_counts and set(upserts.late_counts) <= {0, 1}
    # Each batch's first UPDATE is of a stream's first event (0 rows) or a later one (1 row).
    assert 0 in upserts.late_counts


def test_a_queued_write_has_no_rows(store: EventStore) -> None:
    class Reader(Projection):
        name = "test.queued.reader"

        def setup(self, tx: Connection) -> None:
            tx.execute(text(f"CREATE TABLE IF NOT EXISTS {quote_schema(store.schema)}.x (id text)"))

        @handles(Opened)
        def on_event(self, event: Any, record: RecordedEvent, tx: Connection) -> None:
            s = quote_schema(store.schema)
            result = tx.execute(text(f"INSERT INTO {s}.x VALUES (:id)"), {"id": record.stream_id})
            with pytest.raises(ResourceClosedError, match="does not return rows"):
                result.fetchall()
            returned = tx.execute(
                text(f"INSERT INTO {s}.x VALUES (:id) RETURNING id"), {"id": "r"}
            ).scalar_one()
            assert returned == "r" and result.rowcount == 1
            types.add(type(result).__name__)

    types: set[str] = set()
    store.append("acc", [Opened(owner="o"), Opened(owner="p")])  # one batch of two events
    worker = projections.run(store, [Reader()], stop_when_caught_up=True, **FAST)
    assert not [p for g in worker._groups for p, lease in g.leases.items() if lease.failed]
    assert types == {"WriteResult"}
    assert sorted(r.id for r in rows(store, "SELECT id FROM {s}.x")) == ["acc", "acc", "r", "r"]


def test_a_handler_catching_its_error_in_a_savepoint_goes_on(store: EventStore) -> None:
    for i in range(4):
        store.append(f"acc-{i}", [Opened(owner="o"), Deposited(amount=1), Deposited(amount=2)])
    guarded = Guarded(store.schema)
    projections.run(store, [guarded], stop_when_caught_up=True, **FAST)
    assert sorted(r.id for r in rows(store, "SELECT id FROM {s}.streams")) == [
        f"acc-{i}" for i in range(4)
    ]
    assert guarded.duplicates == 8
    assert not [s for s in projections.status(store) if s.error]


def test_a_failing_write_stops_only_its_event(store: EventStore) -> None:
    """No flag: the batch fails when its queue is sent, narrows, and the partition stops at the
    poison event with every event before it applied; the other partitions are complete."""
    others = [store.append(f"ok-{i}", [Opened(owner="o"), Deposited(amount=1)]) for i in range(8)]
    bad = store.append("bad", [Opened(owner="o"), Deposited(amount=POISON), Deposited(amount=2)])
    projections.run(store, [Ledger(store.schema)], stop_when_caught_up=True, max_attempts=2, **FAST)
    (stopped,) = [s for s in projections.status(store) if s.error]
    assert stopped.partition == bad.partition
    assert stopped.error_position == bad.position - 1
    assert "CheckViolation" in (stopped.error or "")
    applied = {(r.stream_id, r.version) for r in rows(store, "SELECT * FROM {s}.ledger")}
    assert ("bad", 1) in applied and ("bad", 2) not in applied and ("bad", 3) not in applied
    for result in others:
        if result.partition != bad.partition:
            assert (result.stream_id, 2) in applied


def test_pipelined_false_runs_each_statement_when_executed(store: EventStore) -> None:
    store.append("acc", [Opened(owner="o"), Opened(owner="p")])
    immediate = Immediate(store.schema)
    projections.run(store, [immediate], stop_when_caught_up=True, **FAST)
    assert immediate.results == ["CursorResult", "CursorResult"]
    assert Projection.pipelined is True


def test_statement_listeners_see_every_statement(store: EventStore) -> None:
    """With a ``before_cursor_execute`` listener on the engine nothing is queued: it sees each
    handler's statement, and the results are SQLAlchemy's own."""
    seen: list[str] = []

    def listener(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "marks" in statement and statement.startswith("INSERT"):
            seen.append(statement)

    sa_event.listen(store.engine, "before_cursor_execute", listener)
    store.append("acc", [Opened(owner="o"), Opened(owner="p")])
    immediate = ListenedTo(store.schema)
    projections.run(store, [immediate], stop_when_caught_up=True, **FAST)
    assert immediate.results == ["CursorResult", "CursorResult"]
    assert len(seen) == 2


class ListenedTo(Immediate):
    """``Immediate``'s handler, pipelined (the default)."""

    name = "test.queued.listened"
    pipelined = True
