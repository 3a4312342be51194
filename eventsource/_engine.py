"""Database URLs and SQLAlchemy engines (psycopg 3 driver), shared by the sync and async stores."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ._config import Settings
from ._embedded import embedded_url

__all__ = ["async_engine", "resolve_url", "sync_engine"]

_POSTGRES_SCHEMES = {"postgresql", "postgres"}


def resolve_url(url: str | URL | None, settings: Settings | None = None) -> URL:
    """The SQLAlchemy URL for ``url``; ``None`` means the environment's URL or the embedded server.

    ``postgresql://`` and ``postgres://`` URLs are given the psycopg 3 driver.
    """
    if url is None:
        settings = settings or Settings()
        url = settings.database_url or embedded_url(settings.embedded_dir)
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        raise ValueError(
            "invalid database URL: expected postgresql://user:password@host:port/database"
        ) from None
    backend = parsed.drivername.split("+", 1)[0]
    if backend not in _POSTGRES_SCHEMES:
        raise ValueError(
            f"unsupported database URL scheme {parsed.drivername!r}: eventsource needs PostgreSQL"
            " (postgresql://user:password@host:port/database)"
        )
    return parsed.set(drivername="postgresql+psycopg")


PREPARE_THRESHOLD = 2


def _engine_options(pool_size: int, prepared: bool = True) -> dict[str, Any]:
    return {
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "pool_pre_ping": False,
        "pool_recycle": 3600,
        # Hot statements are prepared server-side after a few executions (not behind a
        # PgBouncer older than 1.21 in transaction mode: ``prepared=False``).
        "connect_args": {"prepare_threshold": PREPARE_THRESHOLD if prepared else None},
    }


def sync_engine(url: URL, pool_size: int = 10, prepared: bool = True) -> Engine:
    return create_engine(url, **_engine_options(pool_size, prepared))


def async_engine(url: URL, pool_size: int = 10, prepared: bool = True) -> AsyncEngine:
    return create_async_engine(url, **_engine_options(pool_size, prepared))
