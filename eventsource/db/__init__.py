"""Reaching PostgreSQL: URLs, engines, pooled and direct connections, the schema's migrations.

- ``_url``: psycopg connection strings from SQLAlchemy URLs (parameters kept, keepalives);
- ``_engine``: URL resolution (environment, embedded server) and SQLAlchemy engines;
- ``_pool``: autocommit connections for single statements, checked on reuse;
- ``_driver``: statements sent on psycopg connections directly (binary rows), or through
  libpq itself for the hottest (``Direct``);
- ``_names``: quoted schema names and LISTEN/NOTIFY channel names;
- ``_embedded``: the embedded server; ``_migrate``: migrations; ``_schema``: the version
  table's name (``schema.sql`` describes the whole schema the migrations make).

Internal to the framework: nothing here is public API.
"""

from __future__ import annotations

from eventsource._errors import describe_target
from eventsource.db._driver import (
    Direct,
    array_literal,
    connect,
    driver_connection,
    driver_connection_async,
    fetch,
    fetch_async,
    kept_cursor,
    kept_loader,
    loaded_rows,
    text_array,
)
from eventsource.db._engine import PREPARE_THRESHOLD, async_engine, resolve_url, sync_engine
from eventsource.db._migrate import SchemaStatus, head_revision, schema_status, upgrade_schema
from eventsource.db._names import channel_name, listen_statement, quote_schema
from eventsource.db._pool import RawPool, gone
from eventsource.db._schema import VERSION_TABLE
from eventsource.db._sql import Statements, load_blocks, render
from eventsource.db._url import conninfo, safe_url

__all__ = [
    "PREPARE_THRESHOLD",
    "VERSION_TABLE",
    "Direct",
    "RawPool",
    "SchemaStatus",
    "Statements",
    "array_literal",
    "async_engine",
    "channel_name",
    "connect",
    "conninfo",
    "describe_target",
    "driver_connection",
    "driver_connection_async",
    "fetch",
    "fetch_async",
    "gone",
    "head_revision",
    "kept_cursor",
    "kept_loader",
    "listen_statement",
    "load_blocks",
    "loaded_rows",
    "quote_schema",
    "render",
    "resolve_url",
    "safe_url",
    "schema_status",
    "sync_engine",
    "text_array",
    "upgrade_schema",
]
