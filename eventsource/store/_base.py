"""What the sync and async stores share besides I/O: configuration, statements, announcer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, Self, TypeVar

from sqlalchemy.engine import URL

from eventsource._checks import check_int, check_schema_name
from eventsource._config import Settings
from eventsource._errors import SchemaNotReady, translate_errors
from eventsource.db import PREPARE_THRESHOLD, connect, conninfo, fetch
from eventsource.store._announce import Announcer
from eventsource.store._queries import store_queries
from eventsource.store._types import check_partitions

__all__ = ["StoreBase"]

EngineT = TypeVar("EngineT")


class StoreBase(Generic[EngineT]):
    """The schema, its statements and the announcer of a store over a SQLAlchemy engine."""

    def __init__(
        self,
        engine: EngineT,
        *,
        schema: str = "eventsource",
        partitions: int = 16,
        prepared_statements: bool = True,
    ) -> None:
        """Bind the store to ``engine`` and ``schema``; nothing is sent to the server yet."""
        self._engine = engine
        self.schema = schema
        # A hostile or malformed name is a ValueError here, before any SQL is built or sent.
        self._queries = store_queries(check_schema_name(schema))
        self._initial_partitions = check_partitions(partitions)
        # False behind a PgBouncer (< 1.21) in transaction mode: no server-side prepares.
        self.prepared_statements = prepared_statements
        self._announcer = Announcer(
            conninfo(self.url),
            self._queries.channel,
            self._queries.announce,
            self._prepare_threshold,
        )
        self._partitions: int | None = None

    @property
    def partitions(self) -> int:
        """The number of partitions of the log (fixed when the schema was created).

        Known once any call has touched the database (``await store.partition_count()`` on an
        async store); before that, reading it runs one short blocking query.
        """
        if self._partitions is None:
            with self._errors(), connect(self.url) as conn:
                rows = fetch(conn, self._queries.partition_count)
            if not rows or rows[0][0] is None:
                raise SchemaNotReady(self.schema, "no partition count stored")
            self._partitions = int(rows[0][0])
        return self._partitions

    @property
    def _pool_size(self) -> int:
        """The engine's pool size (a pool without one, e.g. NullPool: the default of 10)."""
        size = getattr(getattr(self._engine, "pool", None), "size", None)
        return int(size()) if callable(size) else 10

    @property
    def _prepare_threshold(self) -> int | None:
        """psycopg's prepare threshold: none behind a PgBouncer in transaction mode (< 1.21)."""
        return PREPARE_THRESHOLD if self.prepared_statements else None

    @classmethod
    def _make_engine(cls, url: URL, pool_size: int, prepared: bool = True) -> EngineT:
        raise TypeError(f"{cls.__name__} does not create engines")

    @classmethod
    def from_url(
        cls,
        url: str | URL | None = None,
        *,
        schema: str = "eventsource",
        partitions: int = 16,
        pool_size: int = 10,
        prepared_statements: bool = True,
    ) -> Self:
        """A store on ``url``; ``None`` reads ``EVENTSOURCE_DATABASE_URL``, else embedded."""
        from eventsource.db import resolve_url  # noqa: PLC0415 - may start the embedded server

        pool_size = check_int(pool_size, "pool_size", low=1, high=1000)
        engine = cls._make_engine(resolve_url(url), pool_size, prepared_statements)
        return cls(
            engine, schema=schema, partitions=partitions, prepared_statements=prepared_statements
        )

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> Self:
        """A store configured by ``EVENTSOURCE_*`` environment variables."""
        from eventsource.db import resolve_url  # noqa: PLC0415

        settings = settings or Settings()
        url = resolve_url(settings.database_url, settings)
        engine = cls._make_engine(url, settings.pool_size, settings.prepared_statements)
        return cls(
            engine,
            schema=settings.db_schema,
            partitions=settings.partitions,
            prepared_statements=settings.prepared_statements,
        )

    @property
    def engine(self) -> EngineT:
        """The SQLAlchemy engine of this store."""
        return self._engine

    @property
    def url(self) -> URL:
        """The database URL of this store's engine."""
        url: URL = self._engine.url  # type: ignore[attr-defined]
        return url

    @contextmanager
    def _errors(self) -> Iterator[None]:
        with translate_errors(self.url, self.schema):
            yield
