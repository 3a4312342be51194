"""Every SQL statement of the event store, in one place, built once per schema."""

from __future__ import annotations

from eventsource.db import channel_name, listen_statement

__all__ = ["Queries"]

_RECORD_COLUMNS = (
    "event_id::text, stream_id, stream_version, partition, position, event_type,"
    " schema_version, data::text, metadata::text, recorded_at"
)


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which appends to ``schema`` announce their partitions."""
    return channel_name(schema)


class Queries:
    """The statements for one schema (already quoted with ``quote_schema``)."""

    def __init__(self, quoted: str, schema: str) -> None:
        s = quoted
        # Written partitions are announced on this channel (see _announce.py).
        self.channel = notify_channel(schema)
        self.listen = listen_statement(self.channel)
        self.announce = "SELECT pg_notify(%(channel)s, %(payload)s)"
        self.partition_count = f"SELECT value FROM {s}.meta WHERE key = 'partitions'"
        # The hot statements run on the psycopg connection itself (no SQLAlchemy layer), with
        # psycopg's placeholders: %(name)s, or %(name)b for arrays sent in binary (cheaper to
        # build than quoted text); psycopg prepares them after a few executions.
        self.append = (
            "SELECT stream_id, status, stream_version, partition, position"
            f" FROM {s}.append_events(%(stream_ids)b::text[], %(partitions)b::integer[],"
            " %(expected)b::bigint[], %(counts)b::integer[], %(event_ids)b::uuid[],"
            " %(types)b::text[], %(schema_versions)b::integer[], %(data)b::text[],"
            " %(metadata)b::text[])"
        )
        # One stream, one statement: read the stream's version (from its latest event), bump
        # the partition head (its row lock is held to commit), insert the events. No row back
        # means the expected version did not hold (or an idempotent retry): nothing was
        # written, and the append function then reports exactly what happened. A writer that
        # got to the stream between the read and the head lock makes the insert fail on the
        # unique (stream_id, stream_version) key, so nothing is written then either.
        # ``append_one`` takes the events as arrays, ``append_one_event`` one event as plain
        # values (cheaper to send than arrays).
        latest = (
            f"SELECT partition, stream_version AS version FROM {s}.events"
            " WHERE stream_id = %(stream_id)b ORDER BY stream_version DESC LIMIT 1"
        )
        claims = {
            "new": "SELECT %(partition)b::integer AS partition, 0::bigint AS version"
            f" WHERE NOT EXISTS (SELECT 1 FROM {s}.events WHERE stream_id = %(stream_id)b)",
            "at": f"SELECT l.partition, l.version FROM ({latest}) l WHERE l.version = %(expected)b",
            "any": "SELECT coalesce(l.partition, %(partition)b::integer) AS partition,"
            f" coalesce(l.version, 0::bigint) AS version FROM (SELECT) AS one LEFT JOIN LATERAL"
            f" ({latest}) l ON true WHERE NOT EXISTS"
            f" (SELECT 1 FROM {s}.events WHERE event_id = %(first_id)b)",
        }
        insert = (
            f"INSERT INTO {s}.events (partition, position, event_id, stream_id, stream_version,"
            " event_type, schema_version, data, metadata)"
        )
        many = (
            f" {insert} SELECT s.partition, h.base + u.k, u.id, %(stream_id)b,"
            " s.version + u.k, u.t, u.v, u.d::jsonb, u.m::jsonb FROM s, h,"
            " unnest(%(event_ids)b::uuid[], %(types)b::text[], %(schema_versions)b::integer[],"
            " %(data)b::text[], %(metadata)b::text[]) WITH ORDINALITY AS u(id, t, v, d, m, k)"
        )
        one = (
            f" {insert} SELECT s.partition, h.base + 1, %(first_id)b, %(stream_id)b,"
            " s.version + 1, %(type)b, %(schema_version)b, %(data)b::jsonb, %(metadata)b::jsonb"
            " FROM s, h"
        )

        def one_stream(claim: str, events: str) -> str:
            return (
                f"WITH s AS ({claim}),"
                f" h AS (UPDATE {s}.partitions p SET head = p.head + %(n)b FROM s"
                "  WHERE p.partition = s.partition RETURNING p.head - %(n)b AS base),"
                f" e AS ({events})"
                " SELECT s.version + %(n)b, s.partition, h.base + %(n)b FROM s, h"
            )

        self.append_one = {kind: one_stream(claim, many) for kind, claim in claims.items()}
        self.append_one_event = {kind: one_stream(claim, one) for kind, claim in claims.items()}
        self.read_stream = (
            f"SELECT {_RECORD_COLUMNS} FROM {s}.events"
            " WHERE stream_id = %(stream_id)s AND stream_version > %(after)s"
            " ORDER BY stream_version"
        )
        self.read_partition = (
            f"SELECT {_RECORD_COLUMNS} FROM {s}.events"
            " WHERE partition = %(partition)s AND position > %(after)s"
            " ORDER BY position LIMIT %(limit)s"
        )
        self.stream_version = (
            f"SELECT stream_version FROM {s}.events WHERE stream_id = %(stream_id)s"
            " ORDER BY stream_version DESC LIMIT 1"
        )
        self.heads = f"SELECT partition, head FROM {s}.partitions ORDER BY partition"
        self.load_snapshot = (
            f"SELECT version, shape, state::text FROM {s}.snapshots"
            " WHERE stream_id = %(stream_id)s AND aggregate_type = %(aggregate_type)s"
        )
        self.save_snapshot = (
            f"INSERT INTO {s}.snapshots AS t (stream_id, aggregate_type, shape, version, state)"
            " VALUES (%(stream_id)s, %(aggregate_type)s, %(shape)s, %(version)s,"
            " %(state)s::jsonb)"
            " ON CONFLICT (stream_id) DO UPDATE SET aggregate_type = excluded.aggregate_type,"
            " shape = excluded.shape, version = excluded.version, state = excluded.state,"
            " taken_at = now()"
            " WHERE t.version < excluded.version OR t.shape <> excluded.shape"
            " OR t.aggregate_type <> excluded.aggregate_type"
        )
