"""Database URLs and SQLAlchemy engines (psycopg 3 driver), shared by the sync and async stores."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Pool, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from eventsource._checks import check_database_url
from eventsource._config import Settings
from eventsource.db._embedded import embedded_url
from eventsource.db._pool import gone
from eventsource.db._url import KEEPALIVES

__all__ = ["async_engine", "resolve_url", "sync_engine"]


def resolve_url(url: str | URL | None, settings: Settings | None = None) -> URL:
    """The SQLAlchemy URL for ``url``; ``None`` means the environment's URL or the embedded server.

    ``postgresql://`` and ``postgres://`` URLs are given the psycopg 3 driver.
    """
    if url is None:
        settings = settings or Settings()
        url = settings.database_url or embedded_url(settings.embedded_dir)
    if not isinstance(url, str):
        url = url.render_as_string(hide_password=False)
    parsed = make_url(check_database_url(url))
    return parsed.set(drivername="postgresql+psycopg")


PREPARE_THRESHOLD = 2


def _engine_options(url: URL, pool_size: int, prepared: bool = True) -> dict[str, Any]:
    return {
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "pool_pre_ping": False,
        "pool_recycle": 3600,
        # Hot statements are prepared server-side after a few executions (not behind a
        # PgBouncer older than 1.21 in transaction mode: ``prepared=False``).
        "connect_args": {
            "prepare_threshold": PREPARE_THRESHOLD if prepared else None,
            **{key: value for key, value in KEEPALIVES.items() if key not in url.query},
        },
    }


def _check_on_checkout(pool: Pool) -> None:
    """Replace a pooled connection that the server closed while it sat idle.

    The check is one ``poll`` of the socket, no round trip (see ``db._pool.gone``); SQLAlchemy
    replaces a connection whose checkout raises ``DisconnectionError``.
    """

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
        if gone(driver):
            raise sa_exc.DisconnectionError("the idle connection was closed by the server")

    event.listen(pool, "checkout", checkout)


def sync_engine(url: URL, pool_size: int = 10, prepared: bool = True) -> Engine:
    """A SQLAlchemy engine (psycopg 3) whose pooled connections are checked on checkout."""
    engine = create_engine(url, **_engine_options(url, pool_size, prepared))
    _check_on_checkout(engine.pool)
    return engine


def async_engine(url: URL, pool_size: int = 10, prepared: bool = True) -> AsyncEngine:
    """The asyncio twin of ``sync_engine``."""
    engine = create_async_engine(url, **_engine_options(url, pool_size, prepared))
    _check_on_checkout(engine.sync_engine.pool)
    return engine
