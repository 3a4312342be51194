"""The event store: partitions with heads, streams, events, snapshots, and the append function.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


APPEND_FUNCTION = """
CREATE FUNCTION {s}.append_events(
    p_stream_ids text[],
    p_partitions integer[],
    p_expected bigint[],
    p_counts integer[],
    p_event_ids uuid[],
    p_types text[],
    p_schema_versions integer[],
    p_data text[],
    p_metadata text[]
) RETURNS TABLE (
    stream_id text, status text, stream_version bigint, partition integer, "position" bigint
)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
-- Appends a batch: one entry per stream in p_stream_ids (each stream at most once), its events
-- flattened in order into the p_event_* arrays, p_counts[i] of them for stream i.
-- p_expected: an exact version >= 0, -1 for "no stream", -2 for "any".
-- One row back per stream: status ok, or duplicate (every event id was already stored in that
-- stream: its stored result comes back and nothing is written). A version conflict raises
-- SQLSTATE ES409 and a partly stored append ES422, each with a JSON DETAIL; the statement
-- then writes nothing.
DECLARE
    v_ok boolean[];
    v_part integer[];
    v_base bigint[];
    v_first integer[];
    v_created boolean[];
    v_found integer;
    v_same integer;
    v_last integer;
    v_actual bigint;
    v_dups integer[] := '{{}}';
BEGIN
    -- Create or lock every stream in stream-id order, so appenders never deadlock on streams,
    -- and bump the version only where the expected version holds. An "any" append whose first
    -- event id is already stored is a retry: it is left out and checked below.
    WITH input AS (
        SELECT u.ord::integer AS ord, u.sid, u.part, u.expected, u.cnt,
               (sum(u.cnt) OVER (ORDER BY u.ord) - u.cnt + 1)::integer AS f
          FROM unnest(p_stream_ids, p_partitions, p_expected, p_counts)
               WITH ORDINALITY AS u(sid, part, expected, cnt, ord)
    ), up AS (
        INSERT INTO {s}.streams AS s (stream_id, partition, version)
        SELECT i.sid, i.part, i.cnt FROM input i
         WHERE NOT (i.expected = -2 AND EXISTS (
                   SELECT 1 FROM {s}.events e WHERE e.event_id = p_event_ids[i.f]))
         ORDER BY i.sid
        ON CONFLICT (stream_id) DO UPDATE SET version = s.version + excluded.version
         WHERE p_expected[array_position(p_stream_ids, s.stream_id)] IN (-2, s.version)
        RETURNING s.stream_id AS sid, s.partition AS part, s.version AS ver,
                  (s.xmax = 0) AS created
    )
    SELECT array_agg(up.sid IS NOT NULL AND (NOT up.created OR input.expected IN (-2, -1, 0))
                     ORDER BY input.ord),
           array_agg(up.part ORDER BY input.ord),
           array_agg(up.ver - input.cnt ORDER BY input.ord),
           array_agg(input.f ORDER BY input.ord),
           array_agg(coalesce(up.created, false) ORDER BY input.ord)
      INTO v_ok, v_part, v_base, v_first, v_created
      FROM input LEFT JOIN up ON up.sid = input.sid;

    -- Streams that did not take the append: an idempotent retry, or a conflict (rare).
    IF NOT (true = ALL (v_ok)) THEN
        FOR i IN 1..cardinality(p_stream_ids) LOOP
            CONTINUE WHEN v_ok[i];
            v_last := v_first[i] + p_counts[i] - 1;
            SELECT count(*), count(*) FILTER (WHERE e.stream_id = p_stream_ids[i])
              INTO v_found, v_same
              FROM {s}.events e
             WHERE e.event_id = ANY (p_event_ids[v_first[i] : v_last]);
            IF v_found = 0 THEN
                v_actual := 0;
                IF NOT v_created[i] THEN
                    SELECT s.version INTO v_actual FROM {s}.streams s
                     WHERE s.stream_id = p_stream_ids[i];
                END IF;
                RAISE EXCEPTION 'stream % is at version %, expected %',
                      p_stream_ids[i], coalesce(v_actual, 0), p_expected[i]
                      USING ERRCODE = 'ES409',
                            DETAIL = json_build_object('stream_id', p_stream_ids[i],
                                                       'actual', coalesce(v_actual, 0),
                                                       'expected', p_expected[i])::text;
            ELSIF v_same <> p_counts[i] THEN
                RAISE EXCEPTION 'stream %: part of the append is already stored',
                      p_stream_ids[i]
                      USING ERRCODE = 'ES422',
                            DETAIL = json_build_object('stream_id', p_stream_ids[i])::text;
            END IF;
            v_dups := v_dups || v_last;
        END LOOP;
        RETURN QUERY
            SELECT e.stream_id, 'duplicate'::text, e.stream_version, e.partition, e.position
              FROM {s}.events e WHERE e.event_id = ANY (
                   SELECT p_event_ids[d] FROM unnest(v_dups) AS d);
    END IF;

    -- Partition heads last, locked in ascending order: each head's row lock is held until
    -- commit, so positions in a partition become visible in order, with no holes.
    PERFORM 1 FROM {s}.partitions p
      WHERE p.partition IN (SELECT t.part FROM unnest(v_ok, v_part) AS t(ok, part) WHERE t.ok)
      ORDER BY p.partition FOR UPDATE;

    RETURN QUERY
    WITH a AS (
        SELECT t.ord, t.sid, t.part, t.base, t.f, t.cnt
          FROM unnest(p_stream_ids, v_ok, v_part, v_base, v_first, p_counts)
               WITH ORDINALITY AS t(sid, ok, part, base, f, cnt, ord)
         WHERE t.ok
    ), need AS (
        SELECT a.part, sum(a.cnt) AS cnt FROM a GROUP BY a.part
    ), h AS (
        UPDATE {s}.partitions p SET head = p.head + need.cnt FROM need
         WHERE p.partition = need.part
        RETURNING p.partition AS part, p.head - need.cnt AS base
    ), placed AS (
        -- Each stream's events follow those of the streams before it in its partition.
        SELECT a.*, h.base + sum(a.cnt) OVER (PARTITION BY a.part ORDER BY a.ord) - a.cnt AS pos0
          FROM a JOIN h ON h.part = a.part
    ), ins AS (
        INSERT INTO {s}.events (partition, "position", event_id, stream_id, stream_version,
                                event_type, schema_version, data, metadata)
        SELECT x.part, x.pos0 + k, p_event_ids[x.f + k - 1], x.sid, x.base + k,
               p_types[x.f + k - 1], p_schema_versions[x.f + k - 1],
               p_data[x.f + k - 1]::jsonb, p_metadata[x.f + k - 1]::jsonb
          FROM placed x, generate_series(1, x.cnt) AS k
    )
    SELECT x.sid, 'ok'::text, x.base + x.cnt, x.part, x.pos0 + x.cnt FROM placed x;
END
$fn$
"""


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    quoted = op.get_bind().dialect.identifier_preparer.quote_schema(schema)

    op.create_table(
        "meta",
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        schema=schema,
    )
    op.create_table(
        "partitions",
        sa.Column("partition", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("head", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        schema=schema,
    )
    op.create_table(
        "streams",
        sa.Column("stream_id", sa.Text(), primary_key=True),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint("length(stream_id) BETWEEN 1 AND 500", name="streams_stream_id_length"),
        schema=schema,
    )
    op.create_table(
        "events",
        sa.Column("partition", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("position", sa.BigInteger(), nullable=False, autoincrement=False),
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("stream_id", sa.Text(), nullable=False),
        sa.Column("stream_version", sa.BigInteger(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("metadata", postgresql.JSONB(), nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("partition", "position", name="events_pkey"),
        sa.UniqueConstraint("event_id", name="events_event_id_key"),
        sa.UniqueConstraint("stream_id", "stream_version", name="events_stream_version_key"),
        schema=schema,
    )
    op.create_table(
        "snapshots",
        sa.Column("stream_id", sa.Text(), primary_key=True),
        sa.Column("aggregate_type", sa.Text(), nullable=False),
        sa.Column("shape", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("state", postgresql.JSONB(), nullable=False),
        sa.Column(
            "taken_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema=schema,
    )
    op.execute(APPEND_FUNCTION.format(s=quoted))


def downgrade() -> None:
    raise RuntimeError("eventsource migrations are forward-only")
