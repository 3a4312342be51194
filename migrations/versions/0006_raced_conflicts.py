"""Version conflicts decided by the append function alone, a racing creator's included.

- ``append_events``: its insert skips the versions that another writer stored meanwhile
  (``ON CONFLICT (stream_id, stream_version) DO NOTHING``) instead of failing on the unique
  key: a writer creating the same stream at this moment under another partition key, whose
  head the append does not hold. A stream that got fewer events than it was given raises
  the usual version conflict (SQLSTATE ES409) with ``"raced": true`` in its JSON DETAIL, and
  ``actual`` the version it now sees; callers never read the server's message of a unique
  violation. (Under REPEATABLE READ a version stored by a writer the snapshot cannot see is
  a serialization failure, 40001, as PostgreSQL reports it.) A stream named twice in one
  call is refused with the other arguments that do not line up, instead of clashing with
  itself.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import context, op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


APPEND_FUNCTION = """
CREATE OR REPLACE FUNCTION {s}.append_events(
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
-- then writes nothing. ES409's DETAIL: stream_id, expected, actual, and "raced": true when a
-- writer that the heads' locks do not hold back (one creating the stream at this moment under
-- another partition key) stored some of its versions first; called again, the function sees
-- that writer's events and decides as usual.
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
    v_extra integer[];
    v_i integer;
    v_actual bigint;
    v_out_ids text[];
    v_out_versions bigint[];
    v_out_parts integer[];
    v_out_positions bigint[];
BEGIN
    IF coalesce(cardinality(p_stream_ids), 0) = 0 THEN
        RETURN;
    END IF;
    IF cardinality(p_partitions) IS DISTINCT FROM cardinality(p_stream_ids)
       OR cardinality(p_expected) IS DISTINCT FROM cardinality(p_stream_ids)
       OR cardinality(p_counts) IS DISTINCT FROM cardinality(p_stream_ids)
       OR array_position(p_stream_ids, NULL) IS NOT NULL
       OR (SELECT count(DISTINCT x) FROM unnest(p_stream_ids) AS x) <> cardinality(p_stream_ids)
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
        -- that head too, and look again. Heads above every one held are taken in ascending
        -- order and waited for; a lower one would break the order that keeps appenders free
        -- of deadlocks, so it is taken only if free at once: if not, the append conflicts.
        v_extra := ARRAY(SELECT DISTINCT t.part FROM unnest(v_ok, v_part) AS t(ok, part)
                          WHERE t.ok AND NOT t.part = ANY (v_locked) ORDER BY 1);
        IF v_extra[1] > (SELECT max(x) FROM unnest(v_locked) AS x) THEN
            PERFORM 1 FROM {s}.partitions p WHERE p.partition = ANY (v_extra)
              ORDER BY p.partition FOR UPDATE;
        ELSE
            BEGIN
                PERFORM 1 FROM {s}.partitions p WHERE p.partition = ANY (v_extra)
                  ORDER BY p.partition FOR UPDATE NOWAIT;
            EXCEPTION WHEN lock_not_available THEN
                SELECT u.ord INTO v_i
                  FROM unnest(v_ok, v_part) WITH ORDINALITY AS u(ok, part, ord)
                 WHERE u.ok AND u.part = ANY (v_extra) ORDER BY u.ord LIMIT 1;
                RAISE EXCEPTION 'stream % is at version %, expected %',
                      p_stream_ids[v_i], v_base[v_i], p_expected[v_i]
                      USING ERRCODE = 'ES409',
                            DETAIL = json_build_object('stream_id', p_stream_ids[v_i],
                                                       'actual', greatest(v_base[v_i], 1),
                                                       'expected', p_expected[v_i])::text;
            END;
        END IF;
        v_locked := v_locked || v_extra;
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

    -- Write the streams that take the append. Under the heads' locks their versions stand
    -- still, but for a writer creating one of them at this moment under another partition key
    -- (in a partition whose head this append does not hold), or one that this transaction's
    -- snapshot cannot see: the insert waits for it, then leaves out the versions it stored.
    -- A stream that got fewer events than it was given conflicts ("raced"), and as the error
    -- rolls the statement back, nothing is written.
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
        INSERT INTO {s}.events AS e (partition, "position", event_id, stream_id,
                                     stream_version, event_type, schema_version, data, metadata)
        SELECT x.part, x.pos0 + k, p_event_ids[x.f + k - 1], x.sid, x.base + k,
               p_types[x.f + k - 1], p_schema_versions[x.f + k - 1],
               p_data[x.f + k - 1]::jsonb, p_metadata[x.f + k - 1]::jsonb
          FROM placed x, generate_series(1, x.cnt) AS k
            ON CONFLICT (stream_id, stream_version) DO NOTHING
        RETURNING e.stream_id AS sid
    ), got AS (
        SELECT ins.sid, count(*) AS n FROM ins GROUP BY ins.sid
    )
    SELECT array_agg(x.sid ORDER BY x.ord), array_agg(x.base + x.cnt ORDER BY x.ord),
           array_agg(x.part ORDER BY x.ord), array_agg(x.pos0 + x.cnt ORDER BY x.ord),
           min(x.ord) FILTER (WHERE coalesce(g.n, 0) < x.cnt)
      INTO v_out_ids, v_out_versions, v_out_parts, v_out_positions, v_i
      FROM placed x LEFT JOIN got g ON g.sid = x.sid;

    IF v_i IS NOT NULL THEN
        -- The stream's version as this statement sees it, its own events left out (at least
        -- the first version the other writer took).
        v_last := v_first[v_i] + p_counts[v_i] - 1;
        SELECT max(e.stream_version) INTO v_actual
          FROM {s}.events e
         WHERE e.stream_id = p_stream_ids[v_i]
           AND NOT e.event_id = ANY (p_event_ids[v_first[v_i] : v_last]);
        v_actual := greatest(v_actual, v_base[v_i] + 1);
        RAISE EXCEPTION 'stream % is at version %, expected %',
              p_stream_ids[v_i], v_actual, p_expected[v_i]
              USING ERRCODE = 'ES409',
                    DETAIL = json_build_object('stream_id', p_stream_ids[v_i],
                                               'actual', v_actual,
                                               'expected', p_expected[v_i],
                                               'raced', true)::text;
    END IF;

    RETURN QUERY
        SELECT t.sid, 'ok'::text, t.version, t.part, t.pos
          FROM unnest(v_out_ids, v_out_versions, v_out_parts, v_out_positions)
               AS t(sid, version, part, pos);
END
$fn$
"""


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    quoted = op.get_bind().dialect.identifier_preparer.quote_schema(schema)
    op.execute(APPEND_FUNCTION.format(s=quoted))


def downgrade() -> None:
    raise RuntimeError("eventsource migrations are forward-only")
