"""Shared fixtures: a real PostgreSQL (EVENTSOURCE_DATABASE_URL, else embedded) and a fresh
schema per test, dropped afterwards, so tests never share state."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import create_engine, text

from eventsource import AsyncEventStore, EventStore
from eventsource.db import quote_schema, resolve_url


@pytest.fixture(scope="session")
def database_url() -> str:
    """The server under test, as a SQLAlchemy URL string (password included)."""
    return resolve_url(os.environ.get("EVENTSOURCE_DATABASE_URL") or None).render_as_string(
        hide_password=False
    )


@pytest.fixture
def schema(database_url: str) -> Iterator[str]:
    """A fresh, unique schema name; the schema is dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    engine = create_engine(database_url, poolclass=None)
    try:
        with engine.begin() as conn:
            # The schema, and those named after it (the demo's read model: <schema>_bank).
            related = conn.execute(
                text("SELECT nspname FROM pg_namespace WHERE nspname = :n OR nspname LIKE :p"),
                {"n": name, "p": f"{name}\\_%"},
            ).scalars()
            for schema_name in list(related):
                conn.execute(text(f"DROP SCHEMA IF EXISTS {quote_schema(schema_name)} CASCADE"))
    finally:
        engine.dispose()


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
