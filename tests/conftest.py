"""Shared fixtures: a real PostgreSQL (EVENTSOURCE_DATABASE_URL, else embedded) and a fresh
schema per test, dropped afterwards, so tests never share state. They build on the fixtures of
the framework's own pytest plugin (``eventsource.testing.plugin``, registered by the installed
distribution), as an application's tests would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from eventsource import AsyncEventStore, EventStore


@pytest.fixture(scope="session")
def database_url(eventsource_database_url: str) -> str:
    """The server under test, as a SQLAlchemy URL string (password included): the testing
    plugin's (``eventsource.testing``), EVENTSOURCE_DATABASE_URL or else the embedded one."""
    return eventsource_database_url


@pytest.fixture
def schema(eventsource_schema: str) -> str:
    """A fresh, unique schema name: the testing plugin's, dropped after the test with the
    schemas named after it (the demo's read model: ``<schema>_bank``)."""
    return eventsource_schema


@pytest.fixture
def store(database_url: str, schema: str) -> Iterator[EventStore]:
    """An upgraded store in a fresh schema with 4 partitions."""
    s = EventStore.from_url(database_url, schema=schema, partitions=4)
    s.upgrade()
    yield s
    s.close()


@pytest.fixture
async def async_store(database_url: str, schema: str) -> AsyncIterator[AsyncEventStore]:
    """An upgraded async store in a fresh schema with 4 partitions."""
    s = AsyncEventStore.from_url(database_url, schema=schema, partitions=4)
    await s.upgrade()
    yield s
    await s.close()
