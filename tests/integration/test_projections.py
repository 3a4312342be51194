"""Projections in process on a real PostgreSQL: read models, checkpoints, batches, poison
events, leases and their fencing, rebalancing, replay, read-your-writes and bad input."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import pytest
from sqlalchemy import Connection, text

import projections
from eventsource import (
    AppendResult,
    Event,
    EventSourceError,
    EventStore,
    PendingAppend,
    RecordedEvent,
    UnknownEventType,
    partition_for,
)
from eventsource._events import is_registered
from eventsource.db import quote_schema
from projections import Projection, ProjectionTimeout, ProjectionWorker, ReplayError, handles
from tests.domain import Deposited, Opened
from tests.projection_domain import (
    POISON,
    Ledger,
    LedgerState,
    ledger_from_log,
    ledger_read_model,
    write_workload,
)

from ._support import restored_registry, sql

# Short leases and retry delays: the defaults (5 s, 1 s, 0.2-5 s) are for production.
FAST: dict[str, Any] = {
    "lease_ttl": 2.0,
    "heartbeat_interval": 0.2,
    "poll_interval": 0.1,
    "retry_delays": (0.01,),
}


# -- projections used by these tests -------------------------------------------------------


class _Recording(Projection):
    """One row per handled event in ``{schema}.{table}``, with the writing transaction's id.

    It has no ``name`` of its own: an intermediate base class, not registered.
    """

    table: ClassVar[str] = "recorded"

    def __init__(self, schema: str) -> None:
        self.qualified = f"{quote_schema(schema)}.{self.table}"

    def setup(self, tx: Connection) -> None:
        tx.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {self.qualified} (partition integer NOT NULL,"
                " position bigint NOT NULL, stream_id text NOT NULL, amount bigint NOT NULL,"
                " txid bigint NOT NULL DEFAULT txid_current())"
            )
        )

    def reset(self, tx: Connection) -> None:
        tx.execute(text(f"TRUNCATE {self.qualified}"))

    def write(self, record: RecordedEvent, amount: int, tx: Connection) -> None:
        tx.execute(
            text(f"INSERT INTO {self.qualified} VALUES (:p, :pos, :s, :a)"),
            {"p": record.partition, "pos": record.position, "s": record.stream_id, "a": amount},
        )


class PoisonError(Exception):
    """The Picky projection rejects deposits of the POISON amount (until it is fixed)."""


class Picky(_Recording):
    """Writes its row first, then raises on a POISON deposit unless the class is ``fixed``."""

    name = "it.picky"
    table = "picky"
    fixed: ClassVar[bool] = False

    @handles(Deposited)
    def on_deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        self.write(record, event.amount, tx)
        if event.amount == POISON and not type(self).fixed:
            raise PoisonError(f"rejected the deposit at position {record.position}")


class TxLog(_Recording):
    """Records each event with the id of the transaction that applied it; batches of 10."""

    name = "it.txlog"
    table = "txlog"
    batch_size = 10

    @handles(Opened, Deposited)
    def on_event(self, event: Event, record: RecordedEvent, tx: Connection) -> None:
        self.write(record, getattr(event, "amount", 0), tx)


class DepositsOnly(_Recording):
    """Handles Deposited only; every other event type is none of its business."""

    name = "it.deposits"
    table = "deposits"

    @handles(Deposited)
    def on_deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        self.write(record, event.amount, tx)


class ByTypeName(_Recording):
    """Handles deposits named by their stored type name rather than their class."""

    name = "it.by_type_name"
    table = "by_name"

    def __init__(self, schema: str) -> None:
        super().__init__(schema)
        self.seen: list[Event] = []

    @handles("test.Deposited")
    def on_deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        self.seen.append(event)
        self.write(record, event.amount, tx)


class Batches(_Recording):
    """Overrides ``handle_batch``: writes every batch at once and remembers the batches."""

    name = "it.batches"
    table = "batches"
    batch_size = 7

    def __init__(self, schema: str) -> None:
        super().__init__(schema)
        self.batches: list[list[tuple[int, int]]] = []

    def handle_batch(self, records: Sequence[RecordedEvent], tx: Connection) -> None:
        self.batches.append([(r.partition, r.position) for r in records])
        rows = [
            {
                "p": r.partition,
                "pos": r.position,
                "s": r.stream_id,
                "a": getattr(r.event, "amount", 0),
            }
            for r in records
        ]
        tx.execute(text(f"INSERT INTO {self.qualified} VALUES (:p, :pos, :s, :a)"), rows)


class AsyncDeposits(_Recording):
    """An ``async def`` handler."""

    name = "it.async"
    table = "async_deposits"

    @handles(Deposited)
    async def on_deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        await asyncio.sleep(0)
        self.write(record, event.amount, tx)


class AsyncOne(_Recording):
    """An ``async def`` handler that yields to its event loop for a moment per event."""

    name = "it.async_one"
    table = "async_one"
    batch_size = 1

    @handles(Deposited)
    async def on_deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        await asyncio.sleep(0.005)
        self.write(record, event.amount, tx)


class AsyncTwo(AsyncOne):
    """The same as AsyncOne under another name and table."""

    name = "it.async_two"
    table = "async_two"


class SlowSetup(_Recording):
    """A ``setup`` that takes a moment between creating its table and committing."""

    name = "it.slow_setup"
    table = "slow_setup"

    def setup(self, tx: Connection) -> None:
        super().setup(tx)
        time.sleep(0.5)


HOSTILE_NAME = "x'); DROP TABLE events; --"


class Hostile(Projection):
    """A projection whose name is SQL; its read model is in memory."""

    name = HOSTILE_NAME

    def __init__(self) -> None:
        self.total = 0

    @handles(Deposited)
    def on_deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        self.total += event.amount


class BrokenReset(Ledger):
    """The Ledger (same name, not registered again) whose ``reset`` empties it, then fails."""

    def reset(self, tx: Connection) -> None:
        super().reset(tx)
        raise RuntimeError("reset failed half way")


class Original(Projection):
    """Owns the name ``it.taken``."""

    name = "it.taken"


# -- helpers -------------------------------------------------------------------------------


def streams_per_partition(partitions: int = 4, prefix: str = "acc") -> dict[int, str]:
    """One stream id per partition."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        found.setdefault(partition_for(f"{prefix}-{i}", partitions), f"{prefix}-{i}")
        i += 1
    return found


def checkpoints(store: EventStore, name: str) -> dict[int, dict[str, Any]]:
    """The projection's checkpoint rows by partition."""
    rows = sql(
        store,
        "SELECT partition, position, owner, lease_token, error, error_position, error_attempts"
        " FROM {s}.projection_checkpoints WHERE projection = :n ORDER BY partition",
        {"n": name},
    )
    keys = ("position", "owner", "token", "error", "error_position", "error_attempts")
    return {row[0]: dict(zip(keys, row[1:], strict=True)) for row in rows}


def positions(store: EventStore, name: str) -> dict[int, int]:
    return {p: row["position"] for p, row in checkpoints(store, name).items()}


def stopped(store: EventStore, name: str, partition: int) -> bool:
    """Whether the partition is stopped on an error (False before a worker registered it)."""
    row = checkpoints(store, name).get(partition)
    return row is not None and row["error"] is not None


def owners(store: EventStore, name: str) -> dict[int, str | None]:
    return {p: row["owner"] for p, row in checkpoints(store, name).items()}


def recorded(store: EventStore, table: str) -> list[tuple[int, int, str, int]]:
    """(partition, position, stream, amount) rows of a _Recording table, in log order."""
    rows = sql(store, f"SELECT partition, position, stream_id, amount FROM {{s}}.{table}")
    return sorted(tuple(r) for r in rows)


def log_rows(store: EventStore, types: tuple[type[Event], ...] = (Deposited,)) -> list[Any]:
    """(partition, position, stream, amount) of every event of ``types`` in the log."""
    rows = []
    for partition in range(store.partitions):
        for r in store.iter_partition(partition):
            if r.event_type in {t.event_type for t in types}:
                rows.append((r.partition, r.position, r.stream_id, getattr(r.event, "amount", 0)))
    return sorted(rows)


def ledger(store: EventStore) -> LedgerState:
    return ledger_read_model(store.engine, store.schema)


def held(worker: ProjectionWorker) -> set[int]:
    """The partitions a worker believes it holds (its in-memory leases)."""
    return {p for group in worker._groups for p in group.leases}


def work_to_heads(worker: ProjectionWorker, heads: dict[int, int]) -> None:
    """Call ``work`` until the worker's partitions are at ``heads`` (or stopped)."""
    for _ in range(100):
        if worker.caught_up(heads):
            return
        worker.work(heads)
    raise AssertionError(f"worker {worker.worker_id} did not reach {heads}")


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.02)


def poisoned_log(store: EventStore) -> tuple[str, int, int]:
    """Deposits in every partition, with one POISON deposit mid-stream; its stream, partition
    and position."""
    streams = streams_per_partition()
    for stream_id in streams.values():
        store.append(stream_id, [Deposited(amount=a) for a in (1, 2, 3)])
    poison_stream = streams[2]
    store.append(poison_stream, [Deposited(amount=4), Deposited(amount=POISON)])
    for stream_id in streams.values():
        store.append(stream_id, [Deposited(amount=a) for a in (5, 6)])
    (poison,) = [r for r in store.read_stream(poison_stream) if r.data["amount"] == POISON]
    return poison_stream, poison.partition, poison.position


@pytest.fixture
def running() -> Iterator[Callable[[ProjectionWorker], threading.Thread]]:
    """Starts workers' ``run()`` in threads; stops and joins them after the test."""
    started: list[tuple[ProjectionWorker, threading.Thread]] = []

    def start(worker: ProjectionWorker) -> threading.Thread:
        thread = threading.Thread(target=worker.run, name=f"worker-{worker.worker_id}")
        thread.start()
        started.append((worker, thread))
        return thread

    yield start
    for worker, thread in started:
        worker.stop()
        thread.join(timeout=10)
        assert not thread.is_alive(), f"worker {worker.worker_id} did not stop"


# -- the read model and its checkpoints ----------------------------------------------------


def test_read_model_equals_a_fresh_computation_from_the_log(store: EventStore) -> None:
    """Run to the head twice (from the checkpoints the second time): the read model holds
    every event of the log exactly once, and every checkpoint is at its partition's head."""
    written = write_workload(store, seed=1, ops=150, prefix="a")
    worker = projections.run(store, [Ledger(store.schema)], stop_when_caught_up=True, **FAST)
    assert isinstance(worker, ProjectionWorker)
    expected = ledger_from_log(store)
    assert expected.events == written == sum(store.heads().values())
    assert ledger(store) == expected
    assert positions(store, Ledger.name) == store.heads()

    written += write_workload(store, seed=2, ops=100, prefix="b")
    projections.run(store, [Ledger(store.schema)], stop_when_caught_up=True, **FAST)
    expected = ledger_from_log(store)
    assert expected.events == written
    assert ledger(store) == expected
    assert positions(store, Ledger.name) == store.heads()
    assert set(owners(store, Ledger.name).values()) == {None}  # released on the way out


def test_a_handler_that_raises_after_writing_leaves_neither_write_nor_checkpoint(
    store: EventStore,
) -> None:
    """A batch whose handler raises after writing is rolled back whole (rows and checkpoint);
    event by event, the events before the poison one commit and the poison one never does."""
    _, partition, poison_position = poisoned_log(store)
    heads = store.heads()
    worker = ProjectionWorker(store, [Picky(store.schema)], max_attempts=1, **FAST)
    worker.setup()
    worker.heartbeat()
    assert held(worker) == {0, 1, 2, 3}
    worker.work(heads)  # one batch per partition; the poisoned partition's batch fails

    assert positions(store, Picky.name)[partition] == 0
    assert [r for r in recorded(store, "picky") if r[0] == partition] == []
    others = [r for r in log_rows(store) if r[0] != partition]
    assert [r for r in recorded(store, "picky") if r[0] != partition] == others

    work_to_heads(worker, heads)
    worker.shutdown()
    row = checkpoints(store, Picky.name)[partition]
    assert row["position"] == poison_position - 1
    assert row["error_position"] == poison_position
    applied = [r for r in recorded(store, "picky") if r[0] == partition]
    assert applied == [r for r in log_rows(store) if r[0] == partition][: poison_position - 1]
    assert POISON not in [r[3] for r in applied]  # written by the handler, rolled back


def test_a_batch_is_one_transaction_with_its_checkpoint(store: EventStore) -> None:
    """Events of one batch share one transaction, batches hold up to batch_size consecutive
    events, and the checkpoint row was last written by the last batch's transaction."""
    streams = streams_per_partition()
    store.append(streams[1], [Opened(owner="o"), *[Deposited(amount=i) for i in range(1, 35)]])
    for p in (0, 2, 3):
        store.append(streams[p], [Deposited(amount=7) for _ in range(3 + p * 4)])
    worker = ProjectionWorker(store, [TxLog(store.schema)], **FAST)
    worker.setup()
    worker.heartbeat()
    heads = store.heads()
    work_to_heads(worker, heads)

    rows = sql(store, "SELECT partition, position, txid FROM {s}.txlog ORDER BY 1, 2")
    assert [(p, pos) for p, pos, _ in rows] == [
        (p, pos) for p in range(4) for pos in range(1, heads[p] + 1)
    ]
    for partition in range(4):
        txids = [txid for p, _, txid in rows if p == partition]
        # Batches are runs of one txid, in position order, of 10 events but the last.
        runs: list[list[int]] = []
        for txid in txids:
            if runs and runs[-1][0] == txid:
                runs[-1].append(txid)
            else:
                runs.append([txid])
        assert len({run[0] for run in runs}) == len(runs)
        sizes = [len(run) for run in runs]
        assert sizes == [10] * (heads[partition] // 10) + (
            [heads[partition] % 10] if heads[partition] % 10 else []
        )
        # The checkpoint's current row version was written by the last batch's transaction.
        (xmin,) = sql(
            store,
            "SELECT xmin::text::bigint FROM {s}.projection_checkpoints"
            " WHERE projection = :n AND partition = :p",
            {"n": TxLog.name, "p": partition},
        )[0]
        assert xmin == txids[-1] % 2**32
    assert heads == {0: 3, 1: 35, 2: 11, 3: 15}
    worker.shutdown()


# -- handlers --------------------------------------------------------------------------------


def test_unknown_event_types_are_skipped_by_a_projection_that_does_not_handle_them(
    store: EventStore,
) -> None:
    """Events whose class is not loaded are passed over (never decoded) by a projection that
    has no handler for their type: no UnknownEventType, every partition reaches its head."""
    streams = streams_per_partition()
    with restored_registry():

        class Mystery(Event, name="it.Mystery"):
            clue: str

        for stream_id in streams.values():
            store.append(stream_id, [Deposited(amount=1), Mystery(clue="?"), Deposited(amount=2)])
    assert not is_registered("it.Mystery")
    records = store.read_partition(0, decode=False)
    with pytest.raises(UnknownEventType):
        _ = records[1].event  # truly unknown to this process

    projections.run(store, [DepositsOnly(store.schema)], stop_when_caught_up=True, **FAST)
    assert recorded(store, "deposits") == log_rows(store)
    assert len(recorded(store, "deposits")) == 8
    assert positions(store, DepositsOnly.name) == store.heads() == dict.fromkeys(range(4), 3)
    assert all(s.error is None for s in projections.status(store))


def test_handles_takes_a_stored_type_name(store: EventStore) -> None:
    """``@handles("type.name")`` routes events of that stored type, decoded, to the method."""
    write_workload(store, seed=3, ops=40, prefix="n")
    projection = ByTypeName(store.schema)
    projections.run(store, [projection], stop_when_caught_up=True, **FAST)
    assert ByTypeName.handled_types() == {"test.Deposited"}
    assert all(type(event) is Deposited for event in projection.seen)
    assert recorded(store, "by_name") == log_rows(store)
    assert len(projection.seen) == len(log_rows(store)) > 0


def test_handle_batch_override_receives_whole_batches(store: EventStore) -> None:
    """An overridden ``handle_batch`` gets each partition's events in position order, in
    batches of ``batch_size`` (the last one shorter), each event exactly once."""
    write_workload(store, seed=4, ops=60, prefix="h")
    projection = Batches(store.schema)
    projections.run(store, [projection], stop_when_caught_up=True, **FAST)
    heads = store.heads()
    for partition in range(4):
        batches = [b for b in projection.batches if b[0][0] == partition]
        assert all({p for p, _ in batch} == {partition} for batch in batches)
        flat = [pos for batch in batches for _, pos in batch]
        assert flat == list(range(1, heads[partition] + 1))
        assert [len(b) for b in batches[:-1]] == [7] * (len(batches) - 1)
        assert 1 <= len(batches[-1]) <= 7
    assert recorded(store, "batches") == log_rows(store, (Opened, Deposited))


def test_an_async_handler_is_awaited(store: EventStore) -> None:
    """An ``async def`` handler runs to completion inside the batch's transaction."""
    write_workload(store, seed=5, ops=40, prefix="as")
    projections.run(store, [AsyncDeposits(store.schema)], stop_when_caught_up=True, **FAST)
    assert recorded(store, "async_deposits") == log_rows(store)
    assert positions(store, AsyncDeposits.name) == store.heads()
    assert all(s.error is None for s in projections.status(store))


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_async_handlers_of_two_workers_in_two_threads(store: EventStore) -> None:
    """Two workers in two threads of one process, each with an async handler, both finish."""
    for i in range(40):
        store.append(f"s{i}", [Deposited(amount=i + 1)])
    errors: list[BaseException] = []

    def run(projection: Projection) -> None:
        try:
            projections.run(store, [projection], stop_when_caught_up=True, max_attempts=1, **FAST)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(p,))
        for p in (AsyncOne(store.schema), AsyncTwo(store.schema))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    stopped = [(s.projection, s.partition, s.error) for s in projections.status(store) if s.error]
    assert stopped == []
    assert recorded(store, "async_one") == recorded(store, "async_two") == log_rows(store)


# -- poison events ---------------------------------------------------------------------------


def test_a_poison_event_stops_only_its_partition(store: EventStore) -> None:
    """A handler that keeps failing on one event stops that partition just before it, after
    max_attempts, with the error recorded and shown by status; the others reach their heads."""
    _, partition, poison_position = poisoned_log(store)
    worker = projections.run(
        store, [Picky(store.schema)], stop_when_caught_up=True, max_attempts=3, **FAST
    )
    assert worker.max_attempts == 3
    heads = store.heads()
    at = positions(store, Picky.name)
    assert at == {**heads, partition: poison_position - 1}

    rows = {s.partition: s for s in projections.status(store) if s.projection == Picky.name}
    stopped = rows[partition]
    assert stopped.error is not None
    assert "PoisonError" in stopped.error
    assert f"rejected the deposit at position {poison_position}" in stopped.error
    assert stopped.error_position == poison_position
    assert stopped.error_attempts == 3
    assert stopped.error_at is not None
    assert stopped.lag == heads[partition] - poison_position + 1
    assert all(rows[p].error is None and rows[p].lag == 0 for p in rows if p != partition)
    assert stopped.as_json()["error_position"] == poison_position


def test_a_poison_event_stops_its_partition_when_retries_outlast_a_heartbeat(
    store: EventStore, running: Any
) -> None:
    """With retry delays longer than the heartbeat interval, the poisoned partition still
    stops after max_attempts, with the error recorded."""
    _, partition, poison_position = poisoned_log(store)
    worker = ProjectionWorker(
        store,
        [Picky(store.schema)],
        lease_ttl=2.0,
        heartbeat_interval=0.1,
        poll_interval=0.05,
        max_attempts=3,
        retry_delays=(0.3,),
    )
    running(worker)
    # 3 attempts, 0.3 s apart: stopped after about 0.6 s.
    wait_until(
        lambda: stopped(store, Picky.name, partition),
        timeout=4,
        what="the poisoned partition to stop",
    )
    row = checkpoints(store, Picky.name)[partition]
    assert (row["position"], row["error_position"], row["error_attempts"]) == (
        poison_position - 1,
        poison_position,
        3,
    )


def test_retry_after_fixing_the_handler_resumes_the_partition(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``retry`` clears a stopped partition's error; with the handler fixed, the poison event
    and the rest of the partition are applied."""
    _, partition, poison_position = poisoned_log(store)
    projections.run(store, [Picky(store.schema)], stop_when_caught_up=True, **FAST)
    assert checkpoints(store, Picky.name)[partition]["error"] is not None

    monkeypatch.setattr(Picky, "fixed", True)
    assert projections.retry(store, Picky.name, partition) == poison_position - 1
    row = checkpoints(store, Picky.name)[partition]
    assert (row["error"], row["error_position"], row["error_attempts"]) == (None, None, 0)

    projections.run(store, [Picky(store.schema)], stop_when_caught_up=True, **FAST)
    assert positions(store, Picky.name) == store.heads()
    assert recorded(store, "picky") == log_rows(store)
    assert sql(store, "SELECT count(*) FROM {s}.projection_skips")[0][0] == 0


def test_retry_reaches_a_running_worker(store: EventStore, running: Any) -> None:
    """A live worker whose partition stopped picks it up again after ``retry``."""
    _, partition, _ = poisoned_log(store)
    worker = ProjectionWorker(store, [Picky(store.schema)], **FAST)
    running(worker)
    wait_until(lambda: stopped(store, Picky.name, partition), what="poison")
    Picky.fixed = True
    try:
        projections.retry(store, Picky.name, partition)
        wait_until(lambda: positions(store, Picky.name) == store.heads(), what="the head")
    finally:
        Picky.fixed = False
    assert recorded(store, "picky") == log_rows(store)


def test_skip_skips_exactly_the_poison_event_and_records_it(store: EventStore) -> None:
    """``skip`` moves past the poison event only, logs it in projection_skips (event id, type,
    error), and the partition goes on to its head."""
    poison_stream, partition, poison_position = poisoned_log(store)
    projections.run(store, [Picky(store.schema)], stop_when_caught_up=True, **FAST)

    assert projections.skip(store, Picky.name, partition) == (poison_position, "test.Deposited")
    projections.run(store, [Picky(store.schema)], stop_when_caught_up=True, **FAST)
    assert positions(store, Picky.name) == store.heads()
    expected = [r for r in log_rows(store) if (r[0], r[1]) != (partition, poison_position)]
    assert recorded(store, "picky") == expected
    assert len(expected) == len(log_rows(store)) - 1

    (poison,) = [r for r in store.read_stream(poison_stream) if r.position == poison_position]
    skips = sql(
        store,
        "SELECT projection, partition, position, event_id, event_type, error"
        " FROM {s}.projection_skips",
    )
    assert len(skips) == 1
    name, p, position, event_id, event_type, error = skips[0]
    assert (name, p, position, event_id, event_type) == (
        Picky.name,
        partition,
        poison_position,
        poison.event_id,
        "test.Deposited",
    )
    assert "PoisonError" in error


def test_a_stopped_partition_stays_stopped_across_worker_runs(store: EventStore) -> None:
    """Nothing is skipped silently: without retry or skip, new workers leave the partition
    stopped at the same place, however much is appended behind the poison event."""
    poison_stream, partition, poison_position = poisoned_log(store)
    projections.run(store, [Picky(store.schema)], stop_when_caught_up=True, **FAST)
    before = checkpoints(store, Picky.name)[partition]
    result = store.append(poison_stream, [Deposited(amount=9)])
    assert isinstance(result, AppendResult)

    for worker_id in ("second", "third"):
        projections.run(
            store, [Picky(store.schema)], stop_when_caught_up=True, worker_id=worker_id, **FAST
        )
        after = checkpoints(store, Picky.name)[partition]
        assert after["position"] == poison_position - 1
        assert (after["error"], after["error_position"]) == (
            before["error"],
            before["error_position"],
        )
    assert [
        r for r in recorded(store, "picky") if r[0] == partition and r[1] >= poison_position
    ] == []
    assert sql(store, "SELECT count(*) FROM {s}.projection_skips")[0][0] == 0
    with pytest.raises(ProjectionTimeout):
        projections.wait_for(store, Picky.name, result, timeout=0.2)


def test_retry_and_skip_refuse_a_partition_that_is_not_stopped(store: EventStore) -> None:
    """``retry`` and ``skip`` on a healthy partition raise, naming it, and change nothing."""
    write_workload(store, seed=6, ops=20, prefix="r")
    projections.run(store, [Picky(store.schema)], stop_when_caught_up=True, **FAST)
    before = checkpoints(store, Picky.name)
    for action in (projections.retry, projections.skip):
        with pytest.raises(EventSourceError, match=r"'it\.picky' partition 1 is not stopped"):
            action(store, Picky.name, 1)
    with pytest.raises(EventSourceError, match="not stopped"):
        projections.skip(store, "no.such.projection", 0)
    assert checkpoints(store, Picky.name) == before
    assert sql(store, "SELECT count(*) FROM {s}.projection_skips")[0][0] == 0


# -- leases, fencing and rebalancing -------------------------------------------------------


def test_a_worker_whose_lease_was_taken_cannot_commit(store: EventStore) -> None:
    """Once another worker has claimed its expired leases, a worker applies nothing (read
    model and checkpoints unchanged), drops those leases and cannot claim them back."""
    a = ProjectionWorker(store, [Ledger(store.schema)], worker_id="a", **FAST)
    b = ProjectionWorker(store, [Ledger(store.schema)], worker_id="b", **FAST)
    a.setup()
    a.heartbeat()
    assert held(a) == {0, 1, 2, 3}
    write_workload(store, seed=7, ops=60, prefix="f")

    # a stalls (a long GC pause, a frozen VM): its heartbeat and leases expire, b takes over.
    sql(
        store,
        "UPDATE {s}.projection_checkpoints SET lease_until = now() - interval '1 hour'"
        " WHERE owner = 'a'",
    )
    sql(
        store,
        "UPDATE {s}.projection_workers SET heartbeat_at = now() - interval '1 hour'"
        " WHERE worker_id = 'a'",
    )
    tokens = {p: row["token"] for p, row in checkpoints(store, Ledger.name).items()}
    b.setup()
    b.heartbeat()
    assert held(b) == {0, 1, 2, 3}
    assert set(owners(store, Ledger.name).values()) == {"b"}
    assert all(row["token"] > tokens[p] for p, row in checkpoints(store, Ledger.name).items())

    heads = store.heads()
    assert a.work(heads) is False  # a wakes up and tries every partition it thinks it holds
    assert ledger(store).events == 0
    assert positions(store, Ledger.name) == dict.fromkeys(range(4), 0)
    assert held(a) == set()
    a.heartbeat()  # a is alive again: its share is half, but b's leases are valid
    assert held(a) == set()
    assert a.work(heads) is False
    assert set(owners(store, Ledger.name).values()) == {"b"}

    work_to_heads(b, heads)
    assert ledger(store) == ledger_from_log(store)
    a.shutdown()
    b.shutdown()


def test_two_workers_split_the_partitions_and_one_takes_all_when_the_other_leaves(
    store: EventStore, running: Any
) -> None:
    """Two running workers of one projection own two partitions each; after one shuts down
    the other owns all four; across the handover no event is lost or applied twice."""
    options = {**FAST, "lease_ttl": 1.0, "heartbeat_interval": 0.1, "poll_interval": 0.05}
    a = ProjectionWorker(store, [Ledger(store.schema)], worker_id="a", **options)
    b = ProjectionWorker(store, [Ledger(store.schema)], worker_id="b", **options)
    a.setup()  # the read model's tables exist before the workers start together
    write_workload(store, seed=8, ops=60, prefix="g")
    thread_a = running(a)
    running(b)
    wait_until(
        lambda: owners(store, Ledger.name) == {0: "a", 1: "b", 2: "a", 3: "b"},
        what="an even split",
    )
    write_workload(store, seed=9, ops=60, prefix="g2")

    a.stop()
    thread_a.join(timeout=10)
    assert not thread_a.is_alive()
    wait_until(lambda: set(owners(store, Ledger.name).values()) == {"b"}, what="b owning all")
    assert held(b) == {0, 1, 2, 3}
    assert sql(store, "SELECT worker_id FROM {s}.projection_workers") == [("b",)]
    write_workload(store, seed=10, ops=30, prefix="g3")
    wait_until(lambda: positions(store, Ledger.name) == store.heads(), what="the heads")
    assert ledger(store) == ledger_from_log(store)


# -- replay ----------------------------------------------------------------------------------


def test_replay_gives_the_same_read_model_as_live_processing(store: EventStore) -> None:
    """A replay resets the read model and rebuilds it from offset 0 to what live processing
    built; it reports every event of the log and hands the partitions back."""
    write_workload(store, seed=11, ops=200, prefix="p")
    projections.run(store, [Ledger(store.schema)], stop_when_caught_up=True, **FAST)
    live = ledger(store)
    assert live == ledger_from_log(store)
    sql(store, "DELETE FROM {s}.ledger_applied WHERE version % 3 = 0")
    sql(store, "UPDATE {s}.ledger_totals SET total = -1")

    applied = projections.replay(store, Ledger(store.schema), progress=False, **FAST)
    assert applied == sum(store.heads().values())
    assert ledger(store) == live
    assert positions(store, Ledger.name) == store.heads()
    assert set(owners(store, Ledger.name).values()) == {None}
    state = sql(store, "SELECT paused_by, paused_until, replayed_at FROM {s}.projection_state")
    assert state[0][:2] == (None, None)
    assert state[0][2] is not None


def test_replay_while_a_thread_appends(store: EventStore) -> None:
    """Events appended during a replay end up in the read model once: after the replay and a
    live run, it equals a fresh computation from the log."""
    write_workload(store, seed=12, ops=400, prefix="q")
    projections.run(store, [Ledger(store.schema)], stop_when_caught_up=True, **FAST)
    before = sum(store.heads().values())
    done = threading.Event()

    def append() -> None:
        try:
            write_workload(store, seed=13, ops=150, prefix="q-live")
        finally:
            done.set()

    writer = threading.Thread(target=append)
    writer.start()
    try:
        applied = projections.replay(store, Ledger(store.schema), progress=False, **FAST)
    finally:
        writer.join(timeout=60)
    assert done.is_set()
    assert applied >= before
    assert sum(store.heads().values()) > before
    projections.run(store, [Ledger(store.schema)], stop_when_caught_up=True, **FAST)
    assert ledger(store) == ledger_from_log(store)


def test_a_failing_reset_leaves_checkpoints_and_read_model_untouched(store: EventStore) -> None:
    """A replay whose ``reset`` raises re-raises that error and changes nothing: read model,
    checkpoints, errors; the projection is not left paused and live workers carry on."""
    write_workload(store, seed=14, ops=80, prefix="z")
    projections.run(store, [Ledger(store.schema)], stop_when_caught_up=True, **FAST)
    model = ledger(store)
    before = {p: (r["position"], r["error"]) for p, r in checkpoints(store, Ledger.name).items()}

    with pytest.raises(RuntimeError, match="reset failed half way"):
        projections.replay(store, BrokenReset(store.schema), progress=False, **FAST)

    assert ledger(store) == model
    after = {p: (r["position"], r["error"]) for p, r in checkpoints(store, Ledger.name).items()}
    assert after == before
    assert set(owners(store, Ledger.name).values()) == {None}
    assert sql(store, "SELECT paused_by, paused_until FROM {s}.projection_state") == [(None, None)]
    assert all(s.paused_by is None for s in projections.status(store))
    write_workload(store, seed=15, ops=20, prefix="z2")
    projections.run(store, [Ledger(store.schema)], stop_when_caught_up=True, **FAST)
    assert ledger(store) == ledger_from_log(store)


def test_replay_is_refused_while_another_replay_holds_the_projection(store: EventStore) -> None:
    """A replay of a projection that another replay has paused raises ReplayError and
    resets nothing."""
    write_workload(store, seed=16, ops=30, prefix="y")
    projections.run(store, [Ledger(store.schema)], stop_when_caught_up=True, **FAST)
    model = ledger(store)
    sql(
        store,
        "UPDATE {s}.projection_state SET paused_by = 'replay:elsewhere',"
        " paused_until = now() + interval '1 hour'",
    )
    with pytest.raises(ReplayError, match="being replayed by another process"):
        projections.replay(store, Ledger(store.schema), progress=False, **FAST)
    assert ledger(store) == model
    assert positions(store, Ledger.name) == store.heads()


# -- read-your-writes ------------------------------------------------------------------------


def test_wait_for_returns_once_the_projection_has_passed_the_append(
    store: EventStore, running: Any
) -> None:
    """With a worker running, ``wait_for`` returns once the projection has applied the append
    (plain or in a transaction), and the read model already shows it."""
    running(ProjectionWorker(store, [Ledger(store.schema)], **FAST))
    for i in range(5):
        result = store.append(f"ryw-{i}", [Opened(owner="o"), Deposited(amount=100 + i)])
        assert isinstance(result, AppendResult)
        projections.wait_for(store, Ledger.name, result, timeout=10)
        assert ledger(store).totals[f"ryw-{i}"] == (2, 100 + i)
    with store.transaction() as tx:
        pending = store.append("ryw-tx", [Deposited(amount=7)], tx=tx)
    assert isinstance(pending, PendingAppend)
    projections.wait_for(store, Ledger, pending, timeout=10)
    assert ledger(store).totals["ryw-tx"] == (1, 7)


def test_wait_for_times_out_when_no_worker_runs(store: EventStore) -> None:
    """Without a worker, ``wait_for`` raises ProjectionTimeout (a TimeoutError) after its
    timeout, both before the projection ever ran and after its worker has gone."""
    result = store.append("w-1", [Deposited(amount=1)])
    assert isinstance(result, AppendResult)
    started = time.monotonic()
    with pytest.raises(ProjectionTimeout, match="no checkpoint") as info:
        projections.wait_for(store, Ledger.name, result, timeout=0.3)
    assert isinstance(info.value, TimeoutError)
    assert 0.3 <= time.monotonic() - started < 3

    projections.run(store, [Ledger(store.schema)], stop_when_caught_up=True, **FAST)
    projections.wait_for(store, Ledger.name, result, timeout=0.3)  # passed already
    later = store.append("w-1", [Deposited(amount=2)])
    assert isinstance(later, AppendResult)
    with pytest.raises(TimeoutError, match=rf"position {later.position} of partition"):
        projections.wait_for(store, Ledger.name, later, timeout=0.3)


# -- names -----------------------------------------------------------------------------------


def test_a_projection_name_with_sql_in_it_is_stored_as_data(store: EventStore) -> None:
    """A projection named with SQL runs like any other: its name is stored verbatim, the
    log is intact, and status, wait_for and retry take the name as data."""
    result = store.append("h-1", [Deposited(amount=5), Deposited(amount=6)])
    assert isinstance(result, AppendResult)
    projection = Hostile()
    projections.run(store, [projection], stop_when_caught_up=True, **FAST)
    assert projection.total == 11
    assert sql(store, "SELECT projection FROM {s}.projection_state") == [(HOSTILE_NAME,)]
    assert {s.projection for s in projections.status(store)} == {HOSTILE_NAME}
    assert positions(store, HOSTILE_NAME) == store.heads()
    projections.wait_for(store, HOSTILE_NAME, result, timeout=1)
    with pytest.raises(EventSourceError, match="not stopped"):
        projections.retry(store, HOSTILE_NAME, result.partition)
    assert len(store.read_stream("h-1")) == 2  # the events table is still there
    assert sql(store, "SELECT count(*) FROM {s}.events")[0][0] == 2


def test_two_projections_with_one_name_in_one_run_are_refused(store: EventStore) -> None:
    """Running two projections with one name raises ValueError before anything is set up."""
    with pytest.raises(ValueError, match=r"two projections are named 'test\.ledger'"):
        projections.run(store, [Ledger(store.schema), Ledger(store.schema)])
    with pytest.raises(ValueError, match="names must be unique"):
        ProjectionWorker(store, [Ledger(store.schema), BrokenReset(store.schema)])
    assert sql(store, "SELECT count(*) FROM {s}.projection_state")[0][0] == 0


def test_two_projection_classes_with_one_name_are_refused() -> None:
    """Defining a second Projection class under a name already taken raises TypeError."""
    with pytest.raises(TypeError, match=r"projection name 'it\.taken' is already registered by"):

        class Impostor(Projection):
            name = "it.taken"

    assert Original.name == "it.taken"


# -- bugs found ------------------------------------------------------------------------------


def test_workers_starting_together_both_set_up(store: EventStore) -> None:
    """Two workers starting at the same moment both get through the projection's setup."""
    errors: list[BaseException] = []

    def start(delay: float) -> None:
        time.sleep(delay)
        try:
            ProjectionWorker(store, [SlowSetup(store.schema)], **FAST).setup()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(d,)) for d in (0.0, 0.1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == []
