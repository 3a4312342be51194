"""Fixtures of the contract suite: every test runs against the sync and the async twin."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from eventsource import (
    AsyncCommandQueue,
    AsyncEventStore,
    AsyncRepository,
    CommandQueue,
    EventStore,
    Repository,
)
from tests.integration._probes import Probe, registered_probes

from ._twins import Synced, SyncedEngine


@pytest.fixture(params=["sync", "async"])
def twin(request: pytest.FixtureRequest) -> str:
    """Which twin the test runs against."""
    return str(request.param)


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    """The event loop on which the async twin's coroutines run, one per test."""
    with asyncio.Runner() as loop:
        yield loop


@pytest.fixture
def store(twin: str, database_url: str, schema: str, runner: asyncio.Runner) -> Iterator[Any]:
    """An upgraded store of the twin under test, in a fresh schema with 4 partitions."""
    if twin == "sync":
        sync_store = EventStore.from_url(database_url, schema=schema, partitions=4)
        sync_store.upgrade()
        yield sync_store
        sync_store.close()
        return
    async_store = AsyncEventStore.from_url(database_url, schema=schema, partitions=4)
    runner.run(async_store.upgrade())
    yield Synced(async_store, runner)
    runner.run(async_store.close())


@pytest.fixture
def fresh_store(
    twin: str, database_url: str, schema: str, runner: asyncio.Runner
) -> Iterator[Callable[..., Any]]:
    """A factory of stores of the twin under test (``make(url=..., **options)``), by default
    on the test's database and schema (not upgraded)."""
    opened: list[Any] = []

    def make(url: str = database_url, **options: Any) -> Any:
        options.setdefault("schema", schema)
        if twin == "sync":
            made: Any = EventStore.from_url(url, **options)
            opened.append(made)
            return made
        async_made = AsyncEventStore.from_url(url, **options)
        opened.append(async_made)
        return Synced(async_made, runner)

    yield make
    for made in opened:
        if isinstance(made, AsyncEventStore):
            runner.run(made.close())
        else:
            made.close()


@pytest.fixture
def repository(twin: str, store: Any, runner: asyncio.Runner) -> Callable[..., Any]:
    """``repository(AggregateClass, **options)`` of the twin under test."""

    def make(aggregate: type[Any], **options: Any) -> Any:
        if twin == "sync":
            return Repository(store, aggregate, **options)
        return Synced(AsyncRepository(store._target, aggregate, **options), runner)

    return make


@pytest.fixture
def make_queue(twin: str, store: Any, runner: asyncio.Runner) -> Callable[..., Any]:
    """``make_queue(**options)``: a command queue of the twin under test on ``store``."""

    def make(**options: Any) -> Any:
        if twin == "sync":
            return CommandQueue(store, **options)
        return Synced(AsyncCommandQueue(store._target, **options), runner)

    return make


@pytest.fixture
def queue(make_queue: Callable[..., Any]) -> Any:
    """The command queue of the twin under test."""
    return make_queue()


@pytest.fixture
def engine(twin: str, store: Any, runner: asyncio.Runner) -> Any:
    """The store's SQLAlchemy engine with the sync calling convention: ``connect()`` and
    ``begin()`` give connections (of the async engine, for the async twin) to hand to ``tx=``."""
    if twin == "sync":
        return store.engine
    return SyncedEngine(store.engine, runner)


@pytest.fixture
def worker_store(twin: str, store: Any, database_url: str, schema: str) -> Iterator[EventStore]:
    """The sync store workers run on: the store under test, or one on its schema."""
    if twin == "sync":
        yield store
        return
    own = EventStore.from_url(database_url, schema=schema)
    yield own
    own.close()


@pytest.fixture
def probes() -> Iterator[Callable[..., Probe]]:
    """Make probes (``probes(action)``); they are unregistered after the test."""
    with registered_probes() as make:
        yield make
