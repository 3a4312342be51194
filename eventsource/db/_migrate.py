"""Apply the framework's migrations to a schema, safely from several processes at once."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import ClassVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from eventsource.db._schema import VERSION_TABLE
from eventsource.db._sql import Statements

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
        """Whether the schema is at the head revision."""
        return self.revision == self.head


def migrations_directory() -> Path:
    """The directory of the framework's Alembic scripts, found from this package.

    A wheel installs the repository's ``migrations/`` as ``eventsource._migrations``; a source
    checkout (or an editable install) has it beside the ``eventsource`` package. Neither the
    current directory nor a top-level ``migrations`` package of the application is ever used.
    """
    spec = find_spec("eventsource._migrations")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).parent
    return Path(__file__).resolve().parents[2] / "migrations"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_directory()))
    return cfg


def head_revision() -> str:
    """The newest revision of the framework's migrations."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


class MigrateStatements(Statements):
    """The statements of ``migrate.sql`` for one schema."""

    package = "eventsource.db"
    filename = "migrate.sql"

    migrate_lock: str
    create_schema: str
    partition_count: str
    init_partitions: str
    constraint_not_valid: str
    validate_events_stream_id_length: str

    # The constraints that migrations add NOT VALID (not to scan a big table under an exclusive
    # lock), each with the statement that validates it afterwards.
    deferred_constraints: ClassVar[dict[str, str]] = {
        "events_stream_id_length": "validate_events_stream_id_length",
    }


migrate_statements = MigrateStatements.for_schema  # the migration statements for a schema


def _lock_key(schema: str) -> int:
    # One advisory lock per schema; a stable signed 64-bit key.
    return zlib.crc32(f"eventsource.migrate:{schema}".encode()) - 2**31


def upgrade_schema(
    connection: Connection,
    schema: str,
    partitions: int,
    revision: str = "head",
) -> int:
    """Migrate ``schema`` to ``revision`` (the head); return its partition count.

    Runs in one transaction under an advisory lock, so concurrent callers wait for each other
    and the later ones find nothing left to do. ``partitions`` is used only on first creation.
    """
    statements = migrate_statements(schema)
    connection.exec_driver_sql(statements.migrate_lock, {"key": _lock_key(schema)})
    connection.exec_driver_sql(statements.create_schema)
    cfg = _config()
    cfg.attributes.update(connection=connection, schema=schema, version_table=VERSION_TABLE)
    command.upgrade(cfg, revision)
    stored = connection.exec_driver_sql(statements.init_partitions, {"n": str(partitions)})
    count = int(stored.scalar_one())
    connection.commit()
    validate_constraints(connection, schema)
    return count


def validate_constraints(connection: Connection, schema: str) -> None:
    """Validate the constraints added NOT VALID, if not done yet, each in its own transaction.

    ``VALIDATE CONSTRAINT`` takes a SHARE UPDATE EXCLUSIVE lock: appends and reads go on
    while it scans. Under the migrations' advisory lock, so that concurrent upgrades take
    turns; a no-op once validated.
    """
    statements = migrate_statements(schema)
    for constraint, validation in statements.deferred_constraints.items():
        connection.exec_driver_sql(statements.migrate_lock, {"key": _lock_key(schema)})
        pending = connection.exec_driver_sql(
            statements.constraint_not_valid, {"schema": schema, "name": constraint}
        ).scalar()
        if pending:
            connection.exec_driver_sql(getattr(statements, validation))
        connection.commit()


def schema_status(connection: Connection, schema: str) -> SchemaStatus:
    """The schema's current revision and partition count (None where not created yet)."""
    context = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
    )
    revision = context.get_current_revision()
    partitions = None
    if revision is not None:
        value = connection.exec_driver_sql(
            migrate_statements(schema).partition_count
        ).scalar_one_or_none()
        partitions = int(value) if value is not None else None
    connection.rollback()
    return SchemaStatus(
        schema=schema, revision=revision, head=head_revision(), partitions=partitions
    )
