"""Every SQL statement of the event store, in one place, built once per schema.

The schema name is quoted by SQLAlchemy's identifier preparer before it is placed in a
statement; every value travels as a bound parameter, never as SQL text.
"""

from __future__ import annotations

import re

from sqlalchemy import TextClause, text
from sqlalchemy.dialects import postgresql

__all__ = ["Queries", "quote_schema"]

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")

_PREPARER = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]

_RECORD_COLUMNS = (
    "event_id::text, stream_id, stream_version, partition, position, event_type,"
    " schema_version, data::text, metadata::text, recorded_at"
)


def quote_schema(schema: str) -> str:
    """The quoted identifier for a schema name; ``ValueError`` for a name that is not one."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
        raise ValueError(
            f"invalid schema name {schema!r}: use letters, digits and underscores"
            " (at most 63, not starting with a digit)"
        )
    return _PREPARER.quote_schema(schema)


class Queries:
    """The statements for one schema (already quoted with ``quote_schema``)."""

    def __init__(self, quoted: str) -> None:
        s = quoted
        self.create_schema = text(f"CREATE SCHEMA IF NOT EXISTS {s}")
        self.migrate_lock = text("SELECT pg_advisory_xact_lock(:key)")
        self.init_partition_count = text(
            f"INSERT INTO {s}.meta (key, value) VALUES ('partitions', :n)"
            " ON CONFLICT (key) DO NOTHING"
        )
        self.partition_count = text(f"SELECT value FROM {s}.meta WHERE key = 'partitions'")
        self.init_partitions = text(
            f"INSERT INTO {s}.partitions (partition) SELECT generate_series(0, :n - 1)"
            " ON CONFLICT (partition) DO NOTHING"
        )
        self.append: TextClause = text(
            "SELECT stream_id, status, stream_version, partition, position"
            f" FROM {s}.append_events(CAST(:stream_ids AS text[]), CAST(:partitions AS integer[]),"
            " CAST(:expected AS bigint[]), CAST(:counts AS integer[]),"
            " CAST(:event_ids AS uuid[]), CAST(:types AS text[]),"
            " CAST(:schema_versions AS integer[]), CAST(:data AS text[]),"
            " CAST(:metadata AS text[]))"
        )
        self.read_stream = text(
            f"SELECT {_RECORD_COLUMNS} FROM {s}.events"
            " WHERE stream_id = :stream_id AND stream_version > :after"
            " ORDER BY stream_version"
        )
        self.read_partition = text(
            f"SELECT {_RECORD_COLUMNS} FROM {s}.events"
            " WHERE partition = :partition AND position > :after"
            " ORDER BY position LIMIT :limit"
        )
        self.stream_version = text(f"SELECT version FROM {s}.streams WHERE stream_id = :stream_id")
        self.heads = text(f"SELECT partition, head FROM {s}.partitions ORDER BY partition")
        self.load_snapshot = text(
            f"SELECT version, shape, state::text FROM {s}.snapshots"
            " WHERE stream_id = :stream_id AND aggregate_type = :aggregate_type"
        )
        self.save_snapshot = text(
            f"INSERT INTO {s}.snapshots AS t (stream_id, aggregate_type, shape, version, state)"
            " VALUES (:stream_id, :aggregate_type, :shape, :version, CAST(:state AS jsonb))"
            " ON CONFLICT (stream_id) DO UPDATE SET aggregate_type = excluded.aggregate_type,"
            " shape = excluded.shape, version = excluded.version, state = excluded.state,"
            " taken_at = now()"
            " WHERE t.version < excluded.version OR t.shape <> excluded.shape"
            " OR t.aggregate_type <> excluded.aggregate_type"
        )
