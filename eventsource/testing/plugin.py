"""The pytest plugin: stores in a fresh schema of a real PostgreSQL, dropped after each test.

Installed with eventsource as the ``eventsource`` pytest plugin (or loaded with
``-p eventsource.testing.plugin``). The server is ``EVENTSOURCE_DATABASE_URL``, else the
embedded one. Fixtures:

- ``event_store``: an upgraded ``EventStore`` in a fresh schema;
- ``async_event_store``: the same as an ``AsyncEventStore`` (needs pytest-asyncio);
- ``eventsource_schema``: the fresh schema's name (read models may go in it, or in schemas
  named ``<schema>_…``: those are dropped too);
- ``eventsource_database_url``: the server's URL.

The number of partitions is the ini option ``eventsource_partitions`` (default 4)::

    def test_deposit(event_store):
        Repository(event_store, Account).save(opened_account())
        run_projections(event_store, [Balances()])
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from eventsource.db import quote_schema, resolve_url
from eventsource.store import AsyncEventStore, EventStore

__all__ = [
    "async_event_store",
    "event_store",
    "eventsource_database_url",
    "eventsource_schema",
]

PARTITIONS_OPTION = "eventsource_partitions"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Declare the ini option ``eventsource_partitions``."""
    parser.addini(
        PARTITIONS_OPTION,
        "partitions of the stores the eventsource fixtures create (default 4)",
        default="4",
    )


def _partitions(config: pytest.Config) -> int:
    value = str(config.getini(PARTITIONS_OPTION)).strip()
    if not value.isdigit() or not 1 <= int(value) <= 1024:
        raise ValueError(f"{PARTITIONS_OPTION} must be a number from 1 to 1024, got {value!r}")
    return int(value)


@pytest.fixture(scope="session")
def eventsource_database_url() -> str:
    """The server's URL (password included): EVENTSOURCE_DATABASE_URL, else the embedded one."""
    return resolve_url(None).render_as_string(hide_password=False)


@pytest.fixture
def eventsource_schema(eventsource_database_url: str) -> Iterator[str]:
    """A fresh schema name; the schema and those named ``<schema>_…`` are dropped afterwards."""
    name = f"es_{uuid.uuid4().hex[:12]}"
    yield name
    engine = create_engine(eventsource_database_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            related = conn.execute(
                text("SELECT nspname FROM pg_namespace WHERE nspname = :n OR nspname LIKE :p"),
                {"n": name, "p": f"{name}\\_%"},
            ).scalars()
            for schema in list(related):
                conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_schema(schema)} CASCADE"))
    finally:
        engine.dispose()


def _store_options(request: pytest.FixtureRequest, url: str, schema: str) -> dict[str, Any]:
    """The arguments of ``from_url`` for either store fixture."""
    return {"url": url, "schema": schema, "partitions": _partitions(request.config)}


@pytest.fixture
def event_store(
    request: pytest.FixtureRequest, eventsource_database_url: str, eventsource_schema: str
) -> Iterator[EventStore]:
    """An upgraded ``EventStore`` in a fresh schema, closed and dropped after the test."""
    store = EventStore.from_url(
        **_store_options(request, eventsource_database_url, eventsource_schema)
    )
    try:
        store.upgrade()
        yield store
    finally:
        store.close()


# pytest-asyncio runs the async fixture in any asyncio_mode; without it, a plugin that runs
# async fixtures (anyio's, asyncio_mode=auto of another) must.
_async_fixture: Callable[[Callable[..., Any]], Any]
try:
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - pytest-asyncio is a test dependency here
    _async_fixture = pytest.fixture


@_async_fixture
async def async_event_store(
    request: pytest.FixtureRequest, eventsource_database_url: str, eventsource_schema: str
) -> AsyncIterator[AsyncEventStore]:
    """An upgraded ``AsyncEventStore`` in a fresh schema, closed and dropped afterwards."""
    store = AsyncEventStore.from_url(
        **_store_options(request, eventsource_database_url, eventsource_schema)
    )
    try:
        await store.upgrade()
        yield store
    finally:
        await store.close()
