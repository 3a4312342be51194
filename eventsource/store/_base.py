"""What the sync and async stores share besides I/O: configuration, statements, announcer."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Generic, Self, TypeVar

import psycopg
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from eventsource._checks import check_bool, check_int, check_schema_name
from eventsource._config import MAX_POOL_SIZE, Settings
from eventsource._errors import SchemaNotReady, translate
from eventsource.db import PREPARE_THRESHOLD, connect, conninfo, fetch, safe_url
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
        group_commit: bool = True,
    ) -> None:
        """Bind the store to ``engine`` and ``schema``; nothing is sent to the server yet.

        ``group_commit``: standalone appends that threads (tasks) of this store make at the
        same moment are written together, in one statement and one commit (``_group``).
        """
        self._engine = engine
        self.schema = schema
        # A hostile or malformed name is a ValueError here, before any SQL is built or sent.
        self._queries = store_queries(check_schema_name(schema))
        self._initial_partitions = check_partitions(partitions)
        # False behind a PgBouncer (< 1.21) in transaction mode: no server-side prepares.
        self.prepared_statements = prepared_statements
        self.group_commit = check_bool(group_commit, "group_commit")
        self._announcer = Announcer(
            conninfo(self.url),
            self._queries.channel,
            self._queries.announce,
            self._prepare_threshold,
        )
        self._partitions: int | None = None

    def __repr__(self) -> str:
        """``EventStore('postgresql+psycopg://user:***@host/db', schema='eventsource')``."""
        return f"{type(self).__name__}({safe_url(self.url)!r}, schema={self.schema!r})"

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
        schema: str | None = None,
        partitions: int | None = None,
        pool_size: int | None = None,
        prepared_statements: bool | None = None,
        group_commit: bool | None = None,
    ) -> Self:
        """A store on ``url``; ``None`` reads ``EVENTSOURCE_DATABASE_URL``, else embedded.

        Each setting left out (``None``) comes from its ``EVENTSOURCE_*`` variable, else its
        default, exactly as ``from_env`` reads it: arguments win over the environment, and the
        environment over the defaults (schema ``eventsource``, 16 partitions, a pool of 10,
        prepared statements and group commit on)::

            store = EventStore.from_url(url, schema="bank")   # EVENTSOURCE_POOL_SIZE applies
        """
        from eventsource.db import resolve_url  # noqa: PLC0415

        given: dict[str, object] = {}
        if url is not None:  # checked as the argument; a bad EVENTSOURCE_DATABASE_URL is moot
            url = resolve_url(url)
            given["database_url"] = url.render_as_string(hide_password=False)
        if schema is not None:
            given["db_schema"] = check_schema_name(schema)
        if partitions is not None:
            given["partitions"] = check_partitions(partitions)
        if pool_size is not None:
            given["pool_size"] = check_int(pool_size, "pool_size", low=1, high=MAX_POOL_SIZE)
        if prepared_statements is not None:
            if not isinstance(prepared_statements, bool):
                raise TypeError(
                    f"prepared_statements must be True or False, got {prepared_statements!r}"
                )
            given["prepared_statements"] = prepared_statements
        if group_commit is not None:
            given["group_commit"] = check_bool(group_commit, "group_commit")
        return cls._from_settings(url, Settings(**given))

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> Self:
        """A store configured by ``EVENTSOURCE_*`` environment variables (or ``settings``)."""
        settings = settings or Settings()
        return cls._from_settings(settings.database_url, settings)

    @classmethod
    def _from_settings(cls, url: str | URL | None, settings: Settings) -> Self:
        """A store on ``url`` (``None``: the settings' URL, else embedded) with ``settings``."""
        from eventsource.db import resolve_url  # noqa: PLC0415 - may start the embedded server

        resolved = resolve_url(url, settings)
        engine = cls._make_engine(resolved, settings.pool_size, settings.prepared_statements)
        return cls(
            engine,
            schema=settings.db_schema,
            partitions=settings.partitions,
            prepared_statements=settings.prepared_statements,
            group_commit=settings.group_commit,
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

    def _errors(self) -> AbstractContextManager[None]:
        """A block whose driver errors become this store's errors (``translate``)."""
        return TranslateErrors(self.url, self.schema)


class TranslateErrors:
    """A block that turns driver errors raised in it into eventsource errors (``url`` and
    ``schema`` are the store's, named by ``DatabaseUnavailable`` and ``SchemaNotReady``).

    A class rather than a generator: it wraps every hot statement, and costs a third as much.
    """

    __slots__ = ("schema", "url")

    def __init__(self, url: URL, schema: str) -> None:
        self.url = url
        self.schema = schema

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, sa_exc.DBAPIError):
            raise translate(
                exc.orig, self.url, self.schema, invalidated=exc.connection_invalidated
            ) from exc
        if isinstance(exc, psycopg.Error):  # statements run on the driver connection directly
            raise translate(exc, self.url, self.schema) from exc
