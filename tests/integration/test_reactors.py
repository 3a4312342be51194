"""Reactors: projections whose handlers enqueue commands with their checkpoint, exactly once."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Connection

import projections
from eventsource import (
    Command,
    CommandContext,
    CommandQueue,
    CommandWorker,
    EventStore,
    ReactorNotAttached,
    RecordedEvent,
)
from eventsource.commands import HandlerSpec, command_queries
from projections import Reactor, ReplayError, handles
from tests.domain import Deposited, Opened

FAST: dict[str, Any] = {"heartbeat_interval": 0.05, "lease_ttl": 1.0, "retry_delays": (0.01,)}
POISON = 13


class Audit(Command, name="test.reactor.Audit", queue="audit"):
    stream_id: str
    amount: int
    position: int


class AuditDeposits(Reactor):
    """One Audit command per deposit; a deposit of POISON fails after enqueuing its command."""

    name = "test.reactor.audit"

    @handles(Deposited)
    def deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        self.enqueue(
            Audit(stream_id=record.stream_id, amount=event.amount, position=record.position),
            tx,
            dedupe_key=None,
        )
        if event.amount == POISON:
            raise ValueError("poison deposit")


class AuditFromNow(AuditDeposits):
    name = "test.reactor.audit-from-now"
    start_at_head = True


def audits(store: EventStore) -> list[tuple[str, int]]:
    """The payloads of the queued Audit commands, as (stream, amount), sorted."""
    rows = CommandQueue(store).list(("pending", "running", "dead"), queue="audit", limit=10_000)
    out = []
    for info in rows:
        command = Audit.model_validate_json(info.payload)
        out.append((command.stream_id, command.amount))
    return sorted(out)


def deposit(store: EventStore, stream: str, *amounts: int) -> None:
    store.append(stream, [Opened(owner="o"), *(Deposited(amount=a) for a in amounts)])


def test_each_event_enqueues_its_commands_exactly_once(store: EventStore) -> None:
    """Run to the head twice (and after more appends): every deposit has one command."""
    for i in range(20):
        deposit(store, f"acc-{i}", i + 100, i + 200)
    projections.run(store, [AuditDeposits()], stop_when_caught_up=True, **FAST)
    projections.run(store, [AuditDeposits()], stop_when_caught_up=True, **FAST)
    expected = sorted((f"acc-{i}", a) for i in range(20) for a in (i + 100, i + 200))
    assert audits(store) == expected
    deposit(store, "acc-late", 7)
    projections.run(store, [AuditDeposits()], stop_when_caught_up=True, **FAST)
    assert audits(store) == sorted([*expected, ("acc-late", 7)])


def test_a_failing_batch_enqueues_nothing_and_the_poison_event_stops_its_partition(
    store: EventStore,
) -> None:
    """The poison event's command rolls back with its batch; the others are enqueued once."""
    deposit(store, "acc-ok", 1, 2)
    deposit(store, "acc-bad", 3, POISON, 4)
    projections.run(store, [AuditDeposits()], stop_when_caught_up=True, max_attempts=2, **FAST)
    assert audits(store) == [("acc-bad", 3), ("acc-ok", 1), ("acc-ok", 2)]
    (bad,) = store.read_stream("acc-bad")[2:3]
    (status,) = [s for s in projections.status(store) if s.error]
    assert (status.partition, status.error_position) == (bad.partition, bad.position)


def test_the_enqueued_commands_reach_their_handler(store: EventStore) -> None:
    """Reactor → queue → worker: the handler sees each deposit once."""
    deposit(store, "acc-1", 5, 6)
    projections.run(store, [AuditDeposits()], stop_when_caught_up=True, **FAST)
    seen: list[tuple[str, int]] = []

    def audit(command: Audit, ctx: CommandContext) -> None:
        seen.append((command.stream_id, command.amount))

    worker = CommandWorker(
        store,
        ["audit"],
        concurrency=1,
        listen=False,
        handlers={Audit.command_type: HandlerSpec(Audit, audit, False, None)},
    )
    worker.run(stop_when_idle=True)
    assert sorted(seen) == [("acc-1", 5), ("acc-1", 6)]
    assert audits(store) == []


def test_a_reactor_starting_at_the_head_skips_the_history(store: EventStore) -> None:
    """start_at_head: events appended before its first start trigger nothing."""
    deposit(store, "acc-old", 1)
    projections.run(store, [AuditFromNow()], stop_when_caught_up=True, **FAST)
    assert audits(store) == []
    deposit(store, "acc-new", 2)
    projections.run(store, [AuditFromNow()], stop_when_caught_up=True, **FAST)
    assert audits(store) == [("acc-new", 2)]


def test_a_reactor_is_not_replayed(store: EventStore) -> None:
    """Replaying would enqueue every command again: refused, nothing enqueued."""
    deposit(store, "acc-1", 5)
    projections.run(store, [AuditDeposits()], stop_when_caught_up=True, **FAST)
    with pytest.raises(ReplayError, match="is a reactor"):
        projections.replay(store, AuditDeposits(), progress=False)
    assert audits(store) == [("acc-1", 5)]


def test_enqueue_outside_a_worker_is_an_error(store: EventStore) -> None:
    """A reactor not attached to a store says how to run it."""
    with store.engine.begin() as tx, pytest.raises(ReactorNotAttached, match="not attached"):
        AuditDeposits().enqueue(Audit(stream_id="s", amount=1, position=1), tx)


def _listen(store: EventStore) -> Any:
    import psycopg  # noqa: PLC0415

    from eventsource.db import conninfo  # noqa: PLC0415

    conn = psycopg.connect(conninfo(store.url), autocommit=True)
    conn.execute(command_queries(store.schema).listen)
    return conn


def test_an_enqueue_in_a_reactor_batch_sends_no_notify_in_the_transaction(
    store: EventStore,
) -> None:
    """Enqueues in a transaction whose owner announces after commit (a reactor's batch) send
    no NOTIFY themselves, so their commits never queue on PostgreSQL's notify lock; other
    SQLAlchemy transactions still notify at commit."""
    from eventsource.commands import ANNOUNCE_AFTER_COMMIT  # noqa: PLC0415

    queue = CommandQueue(store)
    listener = _listen(store)
    try:
        with store.engine.connect() as conn:
            pending: set[str] = set()
            conn.info[ANNOUNCE_AFTER_COMMIT] = pending
            try:
                with conn.begin():
                    queue.enqueue(Audit(stream_id="s", amount=1, position=1), tx=conn)
            finally:
                conn.info.pop(ANNOUNCE_AFTER_COMMIT, None)
        assert pending == {"audit"}
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        with store.engine.connect() as conn, conn.begin():
            queue.enqueue(Audit(stream_id="s", amount=2, position=2), tx=conn)
        assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == ["audit"]
    finally:
        listener.close()


def test_a_reactor_batch_wakes_the_command_workers_after_its_commit(store: EventStore) -> None:
    """The queues a reactor's batch enqueued to are announced once the batch has committed."""
    store.append("acc-1", [Deposited(amount=5)])
    listener = _listen(store)
    try:
        projections.run(store, [AuditDeposits()], stop_when_caught_up=True, **FAST)
        assert audits(store) == [("acc-1", 5)]
        assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == ["audit"]
    finally:
        listener.close()
