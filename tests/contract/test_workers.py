"""The workers consume what either twin writes.

Workers run in threads and processes of their own over a sync store; what they consume is
written through the API under test. Events appended through either twin (alone, in a
transaction, several streams at once) are projected exactly once, and commands enqueued
through either twin (alone, with ``tx=``, many at once) are handled exactly once; what a
rolled-back transaction staged is never seen.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Connection, text

import projections
from eventsource import (
    NO_STREAM,
    Command,
    CommandContext,
    CommandQueue,
    CommandWorker,
    EventStore,
    RecordedEvent,
    handler,
)
from eventsource.commands import registered_handlers
from eventsource.db import quote_schema
from projections import Projection, handles
from tests.domain import Deposited, Opened
from tests.integration._support import sql


class Noted(Command, name="test.contract.Noted"):
    """A command whose handler records its note in the test schema."""

    note: str


# The table of the running test (handlers run in the worker's threads, in this process).
NOTES: dict[str, str] = {}


@handler(Noted)
def note_it(command: Noted, ctx: CommandContext) -> None:
    ctx.tx.execute(text(f"INSERT INTO {NOTES['table']} (note) VALUES (:n)"), {"n": command.note})


HANDLERS = {n: s for n, s in registered_handlers().items() if n.startswith("test.contract.")}


class Deposits(Projection):
    """One row per Deposited event (its stream and amount), in the test schema."""

    name = "contract.deposits"

    def __init__(self, schema: str) -> None:
        self.table = f"{quote_schema(schema)}.contract_deposits"

    def setup(self, tx: Connection) -> None:
        tx.execute(text(f"CREATE TABLE IF NOT EXISTS {self.table} (s text, amount int)"))

    @handles(Deposited)
    def on_deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        tx.execute(
            text(f"INSERT INTO {self.table} VALUES (:s, :a)"),
            {"s": record.stream_id, "a": event.amount},
        )


def test_events_appended_through_the_twin_are_projected_exactly_once(
    store: EventStore, worker_store: EventStore, schema: str
) -> None:
    """Appends alone, in a transaction and to several streams at once all reach the projection;
    a rolled-back transaction's appends never do."""
    store.append("p-1", [Opened(owner="a"), Deposited(amount=1)], NO_STREAM)
    with store.transaction() as tx:
        store.append("p-2", [Deposited(amount=2)], NO_STREAM, tx=tx)
        store.append("p-3", [Deposited(amount=3), Deposited(amount=4)], NO_STREAM, tx=tx)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        store.append("p-4", [Deposited(amount=100)], NO_STREAM, tx=tx)
        raise RuntimeError("rolled back")
    projections.run(worker_store, [Deposits(schema)], stop_when_caught_up=True)
    rows = sql(worker_store, "SELECT s, amount FROM {s}.contract_deposits ORDER BY amount")
    assert [tuple(r) for r in rows] == [("p-1", 1), ("p-2", 2), ("p-3", 3), ("p-3", 4)]
    projections.run(worker_store, [Deposits(schema)], stop_when_caught_up=True)  # nothing new
    assert len(sql(worker_store, "SELECT 1 FROM {s}.contract_deposits")) == 4


def test_commands_enqueued_through_the_twin_are_handled_exactly_once(
    store: EventStore, queue: CommandQueue, worker_store: EventStore, schema: str
) -> None:
    """Enqueued alone, with an append in a transaction and many at once, each command is
    handled once; one enqueued in a rolled-back transaction never is."""
    table = f"{quote_schema(schema)}.contract_notes"
    sql(worker_store, f"CREATE TABLE {table} (note text)")
    queue.enqueue(Noted(note="alone"))
    with store.transaction() as tx:
        store.append("c-1", [Opened(owner="a")], NO_STREAM, tx=tx)
        queue.enqueue(Noted(note="with the append"), tx=tx)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        queue.enqueue(Noted(note="rolled back"), tx=tx)
        raise RuntimeError("rolled back")
    queue.enqueue_many([Noted(note=f"many {i}") for i in range(3)])

    worker = CommandWorker(
        worker_store, ["default"], handlers=HANDLERS, listen=False, poll_interval=0.05
    )
    NOTES["table"] = table
    thread = threading.Thread(target=worker.run, kwargs={"stop_when_idle": True}, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the worker was not idle within 30 s"
    notes = sorted(r[0] for r in sql(worker_store, f"SELECT note FROM {table}"))
    assert notes == ["alone", "many 0", "many 1", "many 2", "with the append"]
    assert queue.list() == []
