"""Apply the framework's migrations to a schema, safely from several processes at once."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from eventsource.db._names import quote_schema
from eventsource.db._schema import VERSION_TABLE

if TYPE_CHECKING:
    from eventsource.store import Queries

__all__ = ["SchemaStatus", "schema_status", "upgrade_schema"]


@dataclass(frozen=True)
class SchemaStatus:
    """What `eventsource db status` reports."""

    schema: str
    revision: str | None
    head: str
    partitions: int | None

    @property
    def up_to_date(self) -> bool:
        return self.revision == self.head


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(files("migrations")))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def _lock_key(schema: str) -> int:
    # One advisory lock per schema; a stable signed 64-bit key.
    return zlib.crc32(f"eventsource.migrate:{schema}".encode()) - 2**31


def upgrade_schema(
    connection: Connection,
    schema: str,
    queries: Queries,
    partitions: int,
    revision: str = "head",
) -> int:
    """Migrate ``schema`` to ``revision`` (the head); return its partition count.

    Runs in one transaction under an advisory lock, so concurrent callers wait for each other
    and the later ones find nothing left to do. ``partitions`` is used only on first creation.
    """
    connection.execute(queries.migrate_lock, {"key": _lock_key(schema)})
    connection.execute(queries.create_schema)
    cfg = _config()
    cfg.attributes.update(connection=connection, schema=schema, version_table=VERSION_TABLE)
    command.upgrade(cfg, revision)
    connection.execute(queries.init_partition_count, {"n": str(partitions)})
    stored = int(connection.exec_driver_sql(queries.partition_count).scalar_one())
    connection.execute(queries.init_partitions, {"n": stored})
    connection.commit()
    validate_constraints(connection, schema, queries)
    return stored


# Constraints that migrations add NOT VALID (so as not to scan a big table under an
# exclusive lock): validated afterwards, each in a transaction of its own.
DEFERRED_CONSTRAINTS = (("events", "events_stream_id_length"),)


def validate_constraints(connection: Connection, schema: str, queries: Queries) -> None:
    """Validate the constraints added NOT VALID, if not done yet.

    ``VALIDATE CONSTRAINT`` takes a SHARE UPDATE EXCLUSIVE lock: appends and reads go on
    while it scans. Under the migrations' advisory lock, so that concurrent upgrades take
    turns; a no-op once validated.
    """
    for table, constraint in DEFERRED_CONSTRAINTS:
        connection.execute(queries.migrate_lock, {"key": _lock_key(schema)})
        pending = connection.execute(
            queries.constraint_not_valid, {"schema": schema, "name": constraint}
        ).scalar()
        if pending:
            connection.exec_driver_sql(
                f"ALTER TABLE {quote_schema(schema)}.{table} VALIDATE CONSTRAINT {constraint}"
            )
        connection.commit()


def schema_status(connection: Connection, schema: str, queries: Queries) -> SchemaStatus:
    """The schema's current revision and partition count (None where not created yet)."""
    context = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
    )
    revision = context.get_current_revision()
    partitions = None
    if revision is not None:
        value = connection.exec_driver_sql(queries.partition_count).scalar_one_or_none()
        partitions = int(value) if value is not None else None
    connection.rollback()
    return SchemaStatus(
        schema=schema, revision=revision, head=head_revision(), partitions=partitions
    )
