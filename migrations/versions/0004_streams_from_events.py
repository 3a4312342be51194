"""Streams are read from their events: no stream table to write on every append.

A stream's version is its highest stored ``stream_version`` and its partition that of its
events; the unique key (stream_id, stream_version) already guards both. Appends no longer
write a stream row: they lock the partition heads first, then read the versions, which cannot
move while the heads are held (every append to a stream takes its partition's head).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import context, op

revision = "0004"
down_revision = "0003"
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
-- p_partitions[i]: the partition of stream i if it is new (a stored stream keeps its own).
-- p_expected: an exact version >= 0, -1 for "no stream", -2 for "any".
-- One row back per stream: status ok, or duplicate (every event id was already stored in that
-- stream: its stored result comes back and nothing is written). A version conflict raises
-- SQLSTATE ES409 and a partly stored append ES422, each with a JSON DETAIL; the statement
-- then writes nothing.
DECLARE
    v_locked integer[];
    v_ok boolean[];
    v_part integer[];
    v_base bigint[];
    v_first integer[];
    v_found integer;
    v_same integer;
    v_last integer;
    v_dups integer[] := '{{}}';
BEGIN
    IF coalesce(cardinality(p_stream_ids), 0) = 0 THEN
        RETURN;
    END IF;
    IF cardinality(p_partitions) IS DISTINCT FROM cardinality(p_stream_ids)
       OR cardinality(p_expected) IS DISTINCT FROM cardinality(p_stream_ids)
       OR cardinality(p_counts) IS DISTINCT FROM cardinality(p_stream_ids)
       OR array_position(p_stream_ids, NULL) IS NOT NULL
       OR array_position(p_partitions, NULL) IS NOT NULL
       OR array_position(p_expected, NULL) IS NOT NULL
       OR (SELECT min(x) FROM unnest(p_expected) AS x) < -2
       OR (SELECT count(*) FILTER (WHERE c IS NULL OR c < 1) FROM unnest(p_counts) AS c) > 0
       OR (SELECT sum(c) FROM unnest(p_counts) AS c)
          IS DISTINCT FROM coalesce(cardinality(p_event_ids), 0)
    THEN
        RAISE EXCEPTION 'append_events: the argument arrays do not line up'
              USING ERRCODE = '22023';
    END IF;

    -- Lock the heads of the streams' partitions in ascending order (appenders never deadlock
    -- on them). A stored stream's partition never changes, so it may be read before locking;
    -- a stream expected not to exist is looked for under the heads' locks only (if it does
    -- exist, the append conflicts whatever partition is locked).
    SELECT array_agg(CASE WHEN u.expected IN (-1, 0) THEN u.part ELSE coalesce(
               (SELECT e.partition FROM {s}.events e
                 WHERE e.stream_id = u.sid AND e.stream_version = 1), u.part) END)
      INTO v_locked
      FROM unnest(p_stream_ids, p_partitions, p_expected) AS u(sid, part, expected);
    PERFORM 1 FROM {s}.partitions p WHERE p.partition = ANY (v_locked)
      ORDER BY p.partition FOR UPDATE;
    GET DIAGNOSTICS v_found = ROW_COUNT;
    IF v_found <> (SELECT count(DISTINCT x) FROM unnest(v_locked) AS x) THEN
        RAISE EXCEPTION 'append_events: a partition does not exist' USING ERRCODE = '22023';
    END IF;

    LOOP
        -- Every append to a stream holds its partition's head: under these locks, versions
        -- stand still. An "any" append whose first event id is already stored is a retry.
        SELECT array_agg(CASE
                   WHEN x.expected = -2 THEN NOT EXISTS (
                        SELECT 1 FROM {s}.events e WHERE e.event_id = p_event_ids[x.f])
                   WHEN x.expected IN (-1, 0) THEN x.ver IS NULL
                   ELSE coalesce(x.ver = x.expected, false)
               END ORDER BY x.ord),
               array_agg(coalesce(x.stored_part, x.part) ORDER BY x.ord),
               array_agg(coalesce(x.ver, 0) ORDER BY x.ord),
               array_agg(x.f ORDER BY x.ord)
          INTO v_ok, v_part, v_base, v_first
          FROM (
              SELECT u.ord, u.part, u.expected,
                     (sum(u.cnt) OVER (ORDER BY u.ord) - u.cnt + 1)::integer AS f,
                     l.ver, l.stored_part
                FROM unnest(p_stream_ids, p_partitions, p_expected, p_counts)
                     WITH ORDINALITY AS u(sid, part, expected, cnt, ord)
                LEFT JOIN LATERAL (
                     SELECT e.stream_version AS ver, e.partition AS stored_part
                       FROM {s}.events e WHERE e.stream_id = u.sid
                      ORDER BY e.stream_version DESC LIMIT 1) l ON true
          ) x;
        -- Streams that take the append must have their partition locked.
        EXIT WHEN coalesce((SELECT array_agg(t.part) FROM unnest(v_ok, v_part) AS t(ok, part)
                             WHERE t.ok) <@ v_locked, true);
        -- A stream was created meanwhile in another partition (another partition key): lock
        -- that head too, and look again.
        v_part := ARRAY(SELECT t.part FROM unnest(v_ok, v_part) AS t(ok, part) WHERE t.ok);
        PERFORM 1 FROM {s}.partitions p
          WHERE p.partition = ANY (v_part) AND NOT p.partition = ANY (v_locked)
          ORDER BY p.partition FOR UPDATE;
        v_locked := v_locked || v_part;
    END LOOP;

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
                RAISE EXCEPTION 'stream % is at version %, expected %',
                      p_stream_ids[i], v_base[i], p_expected[i]
                      USING ERRCODE = 'ES409',
                            DETAIL = json_build_object('stream_id', p_stream_ids[i],
                                                       'actual', v_base[i],
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
    op.execute(
        f"DROP FUNCTION {quoted}.append_events(text[], integer[], bigint[], integer[], uuid[],"
        " text[], integer[], text[], text[])"
    )
    op.execute(APPEND_FUNCTION.format(s=quoted))
    # NOT VALID: no scan of the events under this migration's ACCESS EXCLUSIVE lock (which
    # would stop appends and reads for the whole scan); new rows are checked at once, and the
    # stored ones by VALIDATE CONSTRAINT after the migration has committed (upgrade_schema),
    # under a lock that lets appends and reads go on.
    op.execute(
        f"ALTER TABLE {quoted}.events ADD CONSTRAINT events_stream_id_length"
        " CHECK (length(stream_id) BETWEEN 1 AND 500) NOT VALID"
    )
    op.drop_table("streams", schema=schema)


def downgrade() -> None:
    raise RuntimeError("eventsource migrations are forward-only")
