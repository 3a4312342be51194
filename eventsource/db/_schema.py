"""The framework's tables, as SQLAlchemy Core metadata.

Tables are declared without a schema; the configured schema is applied by migrations and by
``metadata_for(schema)``, which the migration test compares with the migrated database.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

from eventsource._checks import MAX_STREAM_ID_LENGTH

__all__ = ["MAX_STREAM_ID_LENGTH", "VERSION_TABLE", "metadata", "metadata_for"]

VERSION_TABLE = "eventsource_version"

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

partitions = Table(
    "partitions",
    metadata,
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("head", BigInteger, nullable=False, server_default=text("0")),
)

events = Table(
    "events",
    metadata,
    Column("partition", Integer, nullable=False, autoincrement=False),
    Column("position", BigInteger, nullable=False, autoincrement=False),
    Column("event_id", UUID(as_uuid=True), nullable=False),
    Column("stream_id", Text, nullable=False),
    Column("stream_version", BigInteger, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("metadata", JSONB, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("partition", "position", name="events_pkey"),
    UniqueConstraint("event_id", name="events_event_id_key"),
    UniqueConstraint("stream_id", "stream_version", name="events_stream_version_key"),
    CheckConstraint(
        f"length(stream_id) BETWEEN 1 AND {MAX_STREAM_ID_LENGTH}", name="events_stream_id_length"
    ),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("stream_id", Text, primary_key=True),
    Column("aggregate_type", Text, nullable=False),
    Column("shape", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("state", JSONB, nullable=False),
    Column("taken_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def metadata_for(schema: str) -> MetaData:
    """A copy of the table metadata placed in ``schema``."""
    placed = MetaData(schema=schema)
    for table in metadata.tables.values():
        table.to_metadata(placed, schema=schema)
    return placed


projection_checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("projection", Text, nullable=False),
    Column("partition", Integer, nullable=False, autoincrement=False),
    Column("position", BigInteger, nullable=False, server_default=text("0")),
    Column("owner", Text, nullable=True),
    Column("lease_token", BigInteger, nullable=False, server_default=text("0")),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("error", Text, nullable=True),
    Column("error_position", BigInteger, nullable=True),
    Column("error_attempts", Integer, nullable=False, server_default=text("0")),
    Column("error_at", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("projection", "partition", name="projection_checkpoints_pkey"),
)

projection_workers = Table(
    "projection_workers",
    metadata,
    Column("projection", Text, nullable=False),
    Column("worker_id", Text, nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("projection", "worker_id", name="projection_workers_pkey"),
)

projection_state = Table(
    "projection_state",
    metadata,
    Column("projection", Text, primary_key=True),
    Column("paused_by", Text, nullable=True),
    Column("paused_until", DateTime(timezone=True), nullable=True),
    Column("replayed_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

projection_skips = Table(
    "projection_skips",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("projection", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("event_id", UUID(as_uuid=True), nullable=True),
    Column("event_type", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("skipped_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

commands = Table(
    "commands",
    metadata,
    Column("id", BigInteger, Identity(always=True), nullable=False),
    Column("queue", Text, nullable=False),
    Column("command_type", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False),
    Column("run_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("lease_token", UUID(as_uuid=True), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("worker", Text, nullable=True),
    Column("dedupe_key", Text, nullable=True),
    Column("ordering_key", Text, nullable=True),
    Column("correlation_id", Text, nullable=True),
    Column("causation_id", Text, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("error_traceback", Text, nullable=True),
    Column("enqueued_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("id", name="commands_pkey"),
    CheckConstraint("status IN ('pending', 'running', 'dead')", name="commands_status_check"),
    CheckConstraint("max_attempts >= 1", name="commands_max_attempts_check"),
    Index(
        "commands_ready",
        "queue",
        text("priority DESC"),
        "run_at",
        "id",
        postgresql_where=text("status = 'pending'"),
    ),
    Index(
        "commands_dedupe",
        "dedupe_key",
        unique=True,
        postgresql_where=text(
            "dedupe_key IS NOT NULL AND status = 'pending' AND started_at IS NULL"
        ),
    ),
    Index(
        "commands_ordering",
        "ordering_key",
        "id",
        postgresql_where=text("ordering_key IS NOT NULL AND status <> 'dead'"),
    ),
    Index("commands_leases", "lease_until", postgresql_where=text("status = 'running'")),
)

command_keys = Table(
    "command_keys",
    metadata,
    Column("ordering_key", Text, nullable=False),
    Column("command_id", BigInteger, nullable=False),
    Column("worker", Text, nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("ordering_key", name="command_keys_pkey"),
)
