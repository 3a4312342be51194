"""Workers inside an application's event loop: ``projections.running`` and
``commands_running`` over an AsyncEventStore, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable

import pytest
from sqlalchemy import Connection

import projections
from eventsource import (
    NO_STREAM,
    AsyncCommandQueue,
    AsyncEventStore,
    Command,
    CommandContext,
    RecordedEvent,
    SchemaNotReady,
    handler,
)
from eventsource.commands import commands_running, registered_handlers
from projections import Projection, handles
from tests.domain import Deposited


class Fatal(BaseException):
    """Not an error of one event (those stop only their partition): it stops the worker."""


class Counted(Projection):
    """Counts the Deposited events it applies; a deposit of -1 is fatal to its worker."""

    name = "test.running.counted"

    def __init__(self) -> None:
        self.count = 0

    @handles(Deposited)
    def on_deposited(self, event: Deposited, record: RecordedEvent, tx: Connection) -> None:
        if event.amount == -1:
            raise Fatal("a deposit of -1")
        self.count += 1


def worker_threads() -> list[str]:
    """The names of the live threads that these workers start."""
    prefixes = ("projections-running", "commands-running", "command-slot-", "command-heartbeat")
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]


async def test_projection_checkpoint_passes_an_append(async_store: AsyncEventStore) -> None:
    """An append made inside the block is applied by the worker, and wait_for_async sees it."""
    counted = Counted()
    async with projections.running(async_store, [counted], poll_interval=0.05) as worker:
        assert isinstance(worker, projections.ProjectionWorker)
        assert worker_threads() == ["projections-running"]
        result = await async_store.append("r-1", [Deposited(amount=5)], NO_STREAM)
        await projections.wait_for_async(async_store, Counted.name, result.token, timeout=5)
        assert counted.count == 1
    assert worker_threads() == []
    statuses = await projections.status_async(async_store)
    assert all(s.owner is None for s in statuses if s.projection == Counted.name)


async def test_projection_entry_raises_on_a_schema_not_upgraded(
    database_url: str, schema: str
) -> None:
    """Entering with a schema that was never upgraded raises SchemaNotReady; no thread stays."""
    astore = AsyncEventStore.from_url(database_url, schema=schema)
    try:
        with pytest.raises(SchemaNotReady):
            async with projections.running(astore, [Counted()]):
                pytest.fail("the block must not run")
    finally:
        await astore.close()
    assert worker_threads() == []


async def test_an_error_that_stops_the_worker_is_raised_at_the_block_end(
    async_store: AsyncEventStore,
) -> None:
    """An error that stops the worker is raised where the block ends, not inside it."""
    with pytest.raises(Fatal, match="a deposit of -1"):
        async with projections.running(async_store, [Counted()], poll_interval=0.05):
            await async_store.append("r-2", [Deposited(amount=-1)], NO_STREAM)
            for _ in range(100):
                if not worker_threads():
                    break
                await asyncio.sleep(0.05)
            assert worker_threads() == []  # stopped inside the block, raised only at its end
    assert worker_threads() == []


# -- commands ------------------------------------------------------------------------------


class Ping(Command, name="test.running.Ping"):
    """Handled by a sync handler; ``fail`` makes it raise."""

    key: str
    fail: bool = False


class APing(Command, name="test.running.APing"):
    """Handled by an ``async def`` handler; ``sleep`` seconds before it returns."""

    key: str
    sleep: float = 0.0


calls: Counter[str] = Counter()
loops: dict[str, asyncio.AbstractEventLoop] = {}
threads: dict[str, threading.Thread] = {}
cancelled: list[str] = []


@handler(Ping)
def on_ping(cmd: Ping, ctx: CommandContext) -> None:
    calls[cmd.key] += 1
    threads[cmd.key] = threading.current_thread()
    if cmd.fail:
        raise RuntimeError(f"ping {cmd.key} failed")


@handler(APing, timeout=0.3)
async def on_aping(cmd: APing, ctx: CommandContext) -> None:
    calls[cmd.key] += 1
    loops[cmd.key] = asyncio.get_running_loop()
    try:
        await asyncio.sleep(cmd.sleep)
    except asyncio.CancelledError:
        cancelled.append(cmd.key)
        raise


class ALong(Command, name="test.running.ALong"):
    """Handled by an ``async def`` handler with no timeout of its own; sleeps ``sleep`` s."""

    key: str
    sleep: float


@handler(ALong)
async def on_along(cmd: ALong, ctx: CommandContext) -> None:
    await on_aping(APing(key=cmd.key, sleep=cmd.sleep), ctx)


HANDLERS = {t: spec for t, spec in registered_handlers().items() if t.startswith("test.running.")}


async def wait_until(done: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait (on the loop) until ``done()`` is true; fail after ``seconds``."""
    for _ in range(int(seconds / 0.02)):
        if done():
            return
        await asyncio.sleep(0.02)
    pytest.fail("timed out waiting")


async def test_sync_and_async_handlers_run_once_each(async_store: AsyncEventStore) -> None:
    """A sync handler runs once on a worker thread, an async one once on the block's loop."""
    queue = AsyncCommandQueue(async_store)
    async with commands_running(async_store, handlers=HANDLERS, concurrency=2) as worker:
        assert sorted(worker_threads()) == [
            "command-heartbeat",
            "command-slot-0",
            "command-slot-1",
            "commands-running",
        ]
        await queue.enqueue(Ping(key="s1"))
        await queue.enqueue(APing(key="a1"))
        await wait_until(lambda: worker.processed == 2)
        assert await queue.list() == []
    assert (calls["s1"], calls["a1"]) == (1, 1)
    assert loops["a1"] is asyncio.get_running_loop()
    assert threads["s1"].name.startswith("command-slot-")
    assert worker_threads() == []


async def test_a_failing_handler_does_not_stop_the_worker(async_store: AsyncEventStore) -> None:
    """A handler that raises is retried then dead-lettered; the worker runs on."""
    queue = AsyncCommandQueue(async_store)
    async with commands_running(
        async_store, handlers=HANDLERS, backoff_base=0.01, backoff_max=0.01
    ) as worker:
        bad = await queue.enqueue(Ping(key="bad", fail=True), max_attempts=2)
        await wait_until(lambda: calls["bad"] == 2)
        await queue.enqueue(Ping(key="after"))
        await wait_until(lambda: calls["after"] == 1)
        assert worker.stopping is False
    assert bad.id is not None
    dead = await queue.get(bad.id)
    assert dead is not None and dead.status == "dead"
    assert dead.last_error == "RuntimeError: ping bad failed"


async def test_an_async_handler_past_its_timeout_is_cancelled(
    async_store: AsyncEventStore,
) -> None:
    """An async handler running past its timeout is cancelled on the block's loop, and retried."""
    queue = AsyncCommandQueue(async_store)
    async with commands_running(async_store, handlers=HANDLERS, backoff_base=0.01):
        slow = await queue.enqueue(APing(key="slow", sleep=30), max_attempts=1)
        await wait_until(lambda: cancelled == ["slow"])
    assert slow.id is not None
    info = await queue.get(slow.id)
    assert info is not None and info.status == "dead"
    assert "longer than its timeout of 0.3 s" in (info.last_error or "")


async def test_an_async_handler_past_the_grace_period_is_cancelled(
    async_store: AsyncEventStore,
) -> None:
    """Leaving the block with an async handler still running past ``grace`` cancels it on the
    application's loop (it does not run on unseen), and its command is failed for a retry."""
    queue = AsyncCommandQueue(async_store)
    async with commands_running(async_store, handlers=HANDLERS, grace=0.2, backoff_base=0.01):
        long = await queue.enqueue(ALong(key="grace", sleep=60), max_attempts=3)
        await wait_until(lambda: calls["grace"] == 1)
    await wait_until(lambda: "grace" in cancelled, seconds=5)
    assert long.id is not None
    info = await queue.get(long.id)
    assert info is not None and info.status == "pending"
    assert "WorkerShutdown" in (info.last_error or "")


async def test_commands_entry_raises_on_a_schema_not_upgraded(
    database_url: str, schema: str
) -> None:
    """Entering with a schema that was never upgraded raises SchemaNotReady; no thread stays."""
    astore = AsyncEventStore.from_url(database_url, schema=schema)
    try:
        with pytest.raises(SchemaNotReady):
            async with commands_running(astore, handlers=HANDLERS):
                pytest.fail("the block must not run")
    finally:
        await astore.close()
    assert worker_threads() == []


async def test_an_error_of_the_block_stops_the_worker_and_propagates(
    async_store: AsyncEventStore,
) -> None:
    """An exception raised inside the block stops the worker and comes out unchanged."""
    with pytest.raises(KeyError, match="from the block"):
        async with commands_running(async_store, handlers=HANDLERS):
            assert worker_threads() != []
            raise KeyError("from the block")
    assert worker_threads() == []


async def test_commands_running_refuses_queues_no_handler_serves(
    async_store: AsyncEventStore,
) -> None:
    """A worker for a queue that no loaded handler serves does not start: the error names the
    queues that are served."""
    with pytest.raises(ValueError, match=r"no loaded handler serves queue 'nosuchqueue'.* go to '"):
        async with commands_running(async_store, queues=["nosuchqueue"]):
            raise AssertionError("the worker started")
