"""eventsource.testing's run_projections and drain against a real PostgreSQL."""

from __future__ import annotations

import threading
import time
from typing import Any, ClassVar

import pytest
from sqlalchemy import Connection, text

from eventsource import (
    AsyncCommandQueue,
    AsyncEventStore,
    Command,
    CommandContext,
    CommandQueue,
    Event,
    EventStore,
    RecordedEvent,
)
from eventsource.db import quote_schema
from eventsource.testing import drain, drain_async, run_projections, run_projections_async
from projections import handles
from tests.projection_domain import InSchema


class KitAdded(Event, name="kitint.Added"):
    amount: int


class KitPing(Command, name="kitint.Ping"):
    n: int


class KitFollowUp(Command, name="kitint.FollowUp"):
    n: int


class Totals(InSchema):
    """Per-stream sums of KitAdded amounts; an amount of -1 is rejected."""

    name = "kit.totals"
    tables: ClassVar[dict[str, str]] = {
        "kit_totals": "stream_id text PRIMARY KEY, total bigint NOT NULL"
    }

    def reset(self, tx: Connection) -> None:
        tx.execute(text(f"TRUNCATE {self.s}.kit_totals"))

    @handles(KitAdded)
    def on_added(self, event: KitAdded, record: RecordedEvent, tx: Connection) -> None:
        if event.amount == -1:
            raise ValueError("negative amounts are refused")
        tx.execute(
            text(
                f"INSERT INTO {self.s}.kit_totals VALUES (:s, :a) ON CONFLICT (stream_id)"
                f" DO UPDATE SET total = {self.s}.kit_totals.total + :a"
            ),
            {"s": record.stream_id, "a": event.amount},
        )


def _totals(store: EventStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT * FROM {quote_schema(store.schema)}.kit_totals"))
        return {str(stream): int(total) for stream, total in rows}


def test_run_projections_returns_once_the_read_model_is_up_to_date(store: EventStore) -> None:
    """Every appended event is applied when run_projections returns."""
    for i in range(10):
        store.append(f"s-{i % 3}", [KitAdded(amount=i)])
    run = run_projections(store, [Totals(store.schema)], timeout=20)
    assert _totals(store) == {"s-0": 0 + 3 + 6 + 9, "s-1": 1 + 4 + 7, "s-2": 2 + 5 + 8}
    assert run.stopped == []
    assert all(s.lag == 0 for s in run.statuses)
    assert len(run.statuses) == store.partitions


def test_run_projections_reports_a_partition_stopped_by_a_failing_event(
    store: EventStore,
) -> None:
    """A poison event fails run_projections with the projection, position and error."""
    result = store.append("s-1", [KitAdded(amount=2), KitAdded(amount=-1)])
    with pytest.raises(AssertionError) as info:
        run_projections(store, [Totals(store.schema)], timeout=20)
    first, second, *traceback = str(info.value).splitlines()
    assert first == "projections stopped on a failing event:"
    assert second == (
        f"  kit.totals[{result.partition}] at position {result.position}:"
        " ValueError: negative amounts are refused"
    )
    assert "      Traceback (most recent call last):" in traceback
    run = run_projections(store, [Totals(store.schema)], timeout=20, check=False)
    assert [s.partition for s in run.stopped] == [result.partition]


def test_run_projections_times_out_with_the_lag(store: EventStore) -> None:
    """A projection that cannot catch up in time raises TimeoutError naming the lag."""

    class Slow(Totals):
        name = "kit.slow"

        def on_added(self, event: KitAdded, record: RecordedEvent, tx: Connection) -> None:
            time.sleep(0.3)

    result = store.append("s-1", [KitAdded(amount=i) for i in range(5)])
    with pytest.raises(TimeoutError, match=rf"after 0.5 s: kit.slow\[{result.partition}\] lag"):
        run_projections(store, [Slow(store.schema)], timeout=0.5)


def test_run_projections_rejects_a_single_projection(store: EventStore) -> None:
    """Bad arguments name the argument and the value."""
    bad: Any = Totals(store.schema)
    with pytest.raises(TypeError, match="projections must be a list of projections, got"):
        run_projections(store, bad)
    with pytest.raises(ValueError, match="timeout"):
        run_projections(store, [bad], timeout=-1)


def test_drain_runs_every_command_including_those_handlers_enqueue(store: EventStore) -> None:
    """Commands enqueued by handlers run too; the summary counts the attempts."""
    queue = CommandQueue(store)
    seen: list[tuple[str, int]] = []

    def ping(cmd: KitPing, ctx: CommandContext) -> None:
        seen.append(("ping", cmd.n))
        queue.enqueue(KitFollowUp(n=cmd.n), queue="later")

    def follow_up(cmd: KitFollowUp, ctx: CommandContext) -> None:
        seen.append(("follow-up", cmd.n))

    for n in range(3):
        queue.enqueue(KitPing(n=n))
    queue.enqueue(KitFollowUp(n=9), queue="later")
    result = drain(queue, handlers={KitPing: ping, KitFollowUp: follow_up}, timeout=20)
    assert sorted(seen) == sorted(
        [("ping", 0), ("ping", 1), ("ping", 2), ("follow-up", 9)]
        + [("follow-up", n) for n in range(3)]
    )
    assert (result.ran, result.succeeded, result.failed, result.died) == (7, 7, 0, 0)
    assert queue.list() == []


def test_drain_counts_retries_and_dead_commands(store: EventStore) -> None:
    """A failing attempt is retried; a command out of attempts is listed as dead."""
    queue = CommandQueue(store)
    attempts: dict[int, int] = {}
    lock = threading.Lock()

    def ping(cmd: KitPing, ctx: CommandContext) -> None:
        with lock:
            attempts[cmd.n] = attempts.get(cmd.n, 0) + 1
        if cmd.n == 1 and ctx.attempt == 1:
            raise RuntimeError("flaky once")
        if cmd.n == 2:
            raise RuntimeError("always broken")

    for n in range(3):
        queue.enqueue(KitPing(n=n), max_attempts=3)
    result = drain(queue, handlers={KitPing: ping}, timeout=20)
    assert attempts == {0: 1, 1: 2, 2: 3}
    assert (result.ran, result.succeeded, result.failed, result.died) == (6, 2, 4, 1)
    assert [d.last_error for d in result.dead] == ["RuntimeError: always broken"]


def test_drain_of_an_empty_queue_runs_nothing(store: EventStore) -> None:
    """Nothing pending: drain returns at once with zero counts."""
    result = drain(CommandQueue(store), handlers={KitPing: lambda cmd, ctx: None})
    assert (result.ran, result.succeeded, result.failed, result.died) == (0, 0, 0, 0)


def test_drain_times_out_naming_what_is_left(store: EventStore) -> None:
    """A command that outlasts the timeout makes drain raise TimeoutError."""
    queue = CommandQueue(store)
    release = threading.Event()
    queue.enqueue(KitPing(n=1))
    try:
        with pytest.raises(TimeoutError, match=r"commands left after 0\.5 s: default running: 1"):
            drain(
                queue, handlers={KitPing: lambda cmd, ctx: release.wait(10)}, timeout=0.5, grace=0.1
            )
    finally:
        release.set()


def test_drain_rejects_bad_arguments(store: EventStore) -> None:
    """Bad arguments name the argument and the value."""
    queue = CommandQueue(store)
    bad: Any = "default"
    with pytest.raises(TypeError, match="queues must be a list of queue names, got 'default'"):
        drain(queue, queues=bad)
    with pytest.raises(TypeError, match="handlers keys must be Command classes, got 'default'"):
        drain(queue, handlers={bad: print})
    with pytest.raises(TypeError, match="queue must be a CommandQueue, got 'default'"):
        drain(bad)


async def test_the_async_variants_run_projections_and_commands(
    async_store: AsyncEventStore,
) -> None:
    """run_projections_async and drain_async work on async stores, off the event loop."""
    await async_store.append("s-1", [KitAdded(amount=3), KitAdded(amount=4)])
    run = await run_projections_async(async_store, [Totals(async_store.schema)], timeout=20)
    assert run.stopped == []
    async with async_store.engine.connect() as conn:
        rows = await conn.execute(
            text(f"SELECT * FROM {quote_schema(async_store.schema)}.kit_totals")
        )
        assert rows.all() == [("s-1", 7)]
    queue = AsyncCommandQueue(async_store)
    seen: list[int] = []
    await queue.enqueue(KitPing(n=5))
    result = await drain_async(queue, handlers={KitPing: lambda cmd, ctx: seen.append(cmd.n)})
    assert (result.succeeded, result.died, seen) == (1, 0, [5])


async def test_the_async_variants_check_their_store(store: EventStore) -> None:
    """A sync store or queue given to an async variant is named in a TypeError."""
    with pytest.raises(TypeError, match="store must be an AsyncEventStore, got EventStore"):
        await run_projections_async(store, [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="queue must be an AsyncCommandQueue, got <"):
        await drain_async(CommandQueue(store))  # type: ignore[arg-type]
