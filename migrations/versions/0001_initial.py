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
-- Appends a batch: one row per stream in p_stream_ids (each stream at most once), its events
-- flattened in order into the p_event_* arrays, p_counts[i] of them for stream i.
-- p_expected: an exact version >= 0, -1 for "no stream", -2 for "any".
-- Status per stream: ok, or duplicate (every event id already stored in that stream: the stored
-- result is returned, nothing written). A version conflict raises SQLSTATE ES409 and a partly
-- stored append ES422, each with a JSON DETAIL; the statement then writes nothing.
DECLARE
    n integer := cardinality(p_stream_ids);
    v_first integer[];
    v_status text[];
    v_part integer[];
    v_base bigint[];
    v_created boolean[];
    v_version bigint[];
    v_pos bigint[];
    v_pos0 bigint[];
    v_heads bigint[] := '{{}}';
    v_head bigint;
    v_actual bigint;
    v_dup_part integer;
    v_dup_pos bigint;
    v_found integer;
    v_same integer;
    v_last integer;
    r record;
BEGIN
    -- Index of each stream's first event in the flattened arrays.
    SELECT array_agg((t.total - t.c + 1)::integer ORDER BY t.ord) INTO v_first
      FROM (SELECT u.ord, u.c, sum(u.c) OVER (ORDER BY u.ord) AS total
              FROM unnest(p_counts) WITH ORDINALITY AS u(c, ord)) t;

    -- Create or lock every stream in stream-id order, so appenders never deadlock on streams,
    -- and bump the version only where the expected version holds. An "any" append whose first
    -- event id is already stored is a retry: it is left out and checked below.
    WITH input AS (
        SELECT u.ord::integer AS ord, u.sid, u.part, u.expected, u.cnt
          FROM unnest(p_stream_ids, p_partitions, p_expected, p_counts)
               WITH ORDINALITY AS u(sid, part, expected, cnt, ord)
    ), up AS (
        INSERT INTO {s}.streams AS s (stream_id, partition, version)
        SELECT i.sid, i.part, i.cnt FROM input i
         WHERE NOT (i.expected = -2 AND EXISTS (
                   SELECT 1 FROM {s}.events e WHERE e.event_id = p_event_ids[v_first[i.ord]]))
         ORDER BY i.sid
        ON CONFLICT (stream_id) DO UPDATE SET version = s.version + excluded.version
         WHERE p_expected[array_position(p_stream_ids, s.stream_id)] IN (-2, s.version)
        RETURNING s.stream_id AS sid, s.partition AS part, s.version AS ver,
                  (s.xmax = 0) AS created
    )
    SELECT array_agg(CASE WHEN up.sid IS NOT NULL
                           AND (NOT up.created OR input.expected IN (-2, -1, 0))
                          THEN 'ok' ELSE 'check' END ORDER BY input.ord),
           array_agg(up.part ORDER BY input.ord),
           array_agg(up.ver - input.cnt ORDER BY input.ord),
           array_agg(coalesce(up.created, false) ORDER BY input.ord)
      INTO v_status, v_part, v_base, v_created
      FROM input LEFT JOIN up ON up.sid = input.sid;

    v_version := array_fill(NULL::bigint, ARRAY[n]);
    v_pos := array_fill(NULL::bigint, ARRAY[n]);

    -- Streams that did not take the append: an idempotent retry, or a conflict.
    FOR i IN 1..n LOOP
        CONTINUE WHEN v_status[i] = 'ok';
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
        ELSIF v_same = p_counts[i] THEN
            v_status[i] := 'duplicate';
            SELECT e.stream_version, e.partition, e.position
              INTO v_actual, v_dup_part, v_dup_pos
              FROM {s}.events e WHERE e.event_id = p_event_ids[v_last];
            v_version[i] := v_actual;
            v_part[i] := v_dup_part;
            v_pos[i] := v_dup_pos;
        ELSE
            RAISE EXCEPTION 'stream %: part of the append is already stored', p_stream_ids[i]
                  USING ERRCODE = 'ES422',
                        DETAIL = json_build_object('stream_id', p_stream_ids[i])::text;
        END IF;
    END LOOP;

    -- Partition heads last, in ascending partition order: the row lock on a head is held until
    -- commit, so positions in a partition become visible in order, with no holes.
    FOR r IN SELECT t.part, sum(t.cnt)::bigint AS cnt
               FROM unnest(v_status, v_part, p_counts) AS t(st, part, cnt)
              WHERE t.st = 'ok' GROUP BY t.part ORDER BY t.part LOOP
        UPDATE {s}.partitions p SET head = p.head + r.cnt
         WHERE p.partition = r.part
        RETURNING p.head - r.cnt INTO v_head;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'eventsource partition % does not exist', r.part
                  USING ERRCODE = 'foreign_key_violation';
        END IF;
        v_heads[r.part + 1] := v_head;
    END LOOP;

    -- Each ok stream's events follow those of the ok streams before it in its partition.
    SELECT array_agg(t.pos0 ORDER BY t.ord) INTO v_pos0
      FROM (SELECT u.ord,
                   CASE WHEN u.st = 'ok' THEN
                       v_heads[u.part + 1]
                       + sum(CASE WHEN u.st = 'ok' THEN u.cnt ELSE 0 END)
                             OVER (PARTITION BY u.part ORDER BY u.ord)
                       - u.cnt
                   END AS pos0
              FROM unnest(v_status, v_part, p_counts) WITH ORDINALITY AS u(st, part, cnt, ord)
           ) t;

    INSERT INTO {s}.events (partition, "position", event_id, stream_id, stream_version,
                            event_type, schema_version, data, metadata)
    SELECT a.part, a.pos0 + k, p_event_ids[a.f + k - 1], a.sid, a.base + k,
           p_types[a.f + k - 1], p_schema_versions[a.f + k - 1],
           p_data[a.f + k - 1]::jsonb, p_metadata[a.f + k - 1]::jsonb
      FROM unnest(p_stream_ids, v_status, v_part, v_base, v_first, p_counts, v_pos0)
           AS a(sid, st, part, base, f, cnt, pos0),
           generate_series(1, a.cnt) AS k
     WHERE a.st = 'ok';

    FOR i IN 1..n LOOP
        IF v_status[i] = 'ok' THEN
            v_version[i] := v_base[i] + p_counts[i];
            v_pos[i] := v_pos0[i] + p_counts[i];
        END IF;
    END LOOP;

    RETURN QUERY
        SELECT t.sid, t.st, t.ver, t.part, t.pos
          FROM unnest(p_stream_ids, v_status, v_version, v_part, v_pos)
               AS t(sid, st, ver, part, pos);
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
