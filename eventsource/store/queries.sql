-- The event store's statements, loaded by eventsource/store/_queries.py (see eventsource/db/_sql.py
-- for the format). They run on psycopg connections directly: parameters are psycopg's named
-- placeholders, "s" for values sent as text and "b" for values sent in binary (arrays are cheaper
-- to build that way than as quoted text); psycopg prepares them after a few executions.
--
-- The append_one_* statements write one stream in one statement: read the stream's version (from
-- its latest event), bump the partition head (its row lock is held to commit), insert the events.
-- No row back means the expected version did not hold (or an idempotent retry): nothing was
-- written, and the append function then reports exactly what happened. A writer that got to the
-- stream between the read and the head lock makes the insert fail on the unique
-- (stream_id, stream_version) key, so nothing is written then either. The suffix is the claim on
-- the stream: "new" (it must not exist), "at" (it must be at the expected version), "any" (no
-- expectation, but not a retry of a stored append). append_one_* take the events as arrays,
-- append_one_event_* one event as plain values (cheaper to send than arrays). Each of the six is
-- a claim (the fragment claim_<suffix>, the CTE s) followed by a write (write_events or
-- write_event: the CTEs h and e, and the result), put together when the file is loaded.

-- name: announce
-- Announce a payload (written partitions) on a LISTEN/NOTIFY channel.
SELECT pg_notify(%(channel)s, %(payload)s)

-- name: partition_count
-- The number of partitions, fixed when the schema was created.
SELECT value FROM {schema}.meta WHERE key = 'partitions'

-- name: append
-- Append to several streams at once through the append function: one row per stream, its outcome.
SELECT stream_id, status, stream_version, partition, position
FROM {schema}.append_events(
    %(stream_ids)b::text[], %(partitions)b::integer[], %(expected)b::bigint[],
    %(counts)b::integer[], %(event_ids)b::uuid[], %(types)b::text[],
    %(schema_versions)b::integer[], %(data)b::text[], %(metadata)b::text[])

-- fragment: claim_new
-- The claim "new" (the CTE s): the caller's partition and version 0, if the stream has no event.
SELECT %(partition)b::integer AS partition, 0::bigint AS version
WHERE NOT EXISTS (SELECT 1 FROM {schema}.events WHERE stream_id = %(stream_id)b)

-- fragment: claim_at
-- The claim "at" (the CTE s): the stream's partition and version, from its latest event, if that
-- version is the expected one.
SELECT l.partition, l.version
FROM (SELECT partition, stream_version AS version FROM {schema}.events
    WHERE stream_id = %(stream_id)b ORDER BY stream_version DESC LIMIT 1) l
WHERE l.version = %(expected)b

-- fragment: claim_any
-- The claim "any" (the CTE s): the stream's partition and version (the caller's partition and 0
-- for a new stream), unless the first event is already stored (a retry of a stored append).
SELECT coalesce(l.partition, %(partition)b::integer) AS partition,
    coalesce(l.version, 0::bigint) AS version
FROM (SELECT) AS one LEFT JOIN LATERAL (
    SELECT partition, stream_version AS version FROM {schema}.events
    WHERE stream_id = %(stream_id)b ORDER BY stream_version DESC LIMIT 1) l ON true
WHERE NOT EXISTS (SELECT 1 FROM {schema}.events WHERE event_id = %(first_id)b)

-- fragment: bump_head
-- The CTE h of both writes: move the claimed partition's head past the n new events (its row
-- lock is held to commit); base is the head before them. No claim, no row.
UPDATE {schema}.partitions p SET head = p.head + %(n)b FROM s
WHERE p.partition = s.partition RETURNING p.head - %(n)b AS base

-- fragment: appended
-- The result of both writes: the stream's version, its partition and the partition's head after
-- the new events; no row when the claim did not hold.
SELECT s.version + %(n)b, s.partition, h.base + %(n)b FROM s, h

-- fragment: write_events
-- The write of append_one_*, after the claim s: the events, given as arrays, at the positions
-- after base and the versions after the stream's.
h AS (
    -- include: bump_head
),
e AS (
    INSERT INTO {schema}.events (partition, position, event_id, stream_id, stream_version,
        event_type, schema_version, data, metadata)
    SELECT s.partition, h.base + u.k, u.id, %(stream_id)b, s.version + u.k, u.t, u.v,
        u.d::jsonb, u.m::jsonb
    FROM s, h, unnest(%(event_ids)b::uuid[], %(types)b::text[], %(schema_versions)b::integer[],
        %(data)b::text[], %(metadata)b::text[]) WITH ORDINALITY AS u(id, t, v, d, m, k)
)
-- include: appended

-- fragment: write_event
-- The write of append_one_event_*, after the claim s: one event, given as plain values, at the
-- position after base and the version after the stream's.
h AS (
    -- include: bump_head
),
e AS (
    INSERT INTO {schema}.events (partition, position, event_id, stream_id, stream_version,
        event_type, schema_version, data, metadata)
    SELECT s.partition, h.base + 1, %(first_id)b, %(stream_id)b, s.version + 1, %(type)b,
        %(schema_version)b, %(data)b::jsonb, %(metadata)b::jsonb
    FROM s, h
)
-- include: appended

-- name: append_one_new
-- Append events to one stream that must not exist yet; no row if it does.
WITH s AS (
    -- include: claim_new
),
-- include: write_events

-- name: append_one_at
-- Append events to one stream at the expected version; no row if it is elsewhere.
WITH s AS (
    -- include: claim_at
),
-- include: write_events

-- name: append_one_any
-- Append events to one stream at any version; no row if its first event is already stored.
WITH s AS (
    -- include: claim_any
),
-- include: write_events

-- name: append_one_event_new
-- Append one event to one stream that must not exist yet; no row if it does.
WITH s AS (
    -- include: claim_new
),
-- include: write_event

-- name: append_one_event_at
-- Append one event to one stream at the expected version; no row if it is elsewhere.
WITH s AS (
    -- include: claim_at
),
-- include: write_event

-- name: append_one_event_any
-- Append one event to one stream at any version; no row if the event is already stored.
WITH s AS (
    -- include: claim_any
),
-- include: write_event

-- name: append_group
-- Append to several streams (each at most once) in one statement, without the append function:
-- the claims of append_one_* for every stream (its version from its latest event), the heads of
-- the claimed partitions locked in ascending order and moved past their new events, the events
-- inserted at the positions after each head (streams in the given order) and versions after
-- each stream's. One row per stream written: (stream_id, version, partition, position). With
-- all_or_none, nothing is written unless every claim holds; otherwise the streams whose claims
-- hold are written and the others left out (the caller then asks the append function about
-- them). Parameters are cheap to build: numbers and event ids as array literals, the event
-- types once each (types) and an index into them per event (type_index), payloads and metadata
-- as one text each, joined by the record separator U+001E (JSON text holds none: it escapes
-- control characters), an empty metadata as ''. The arrays are read through scalar subqueries,
-- whose sizes the planner does not know: then its generic plan costs what a custom one would,
-- and the statement is not planned again on every call. A writer that got to a stream first between the read and
-- the insert makes the insert fail on the unique (stream_id, stream_version) key.
WITH u AS (
    SELECT u.sid, u.part, u.expected, u.cnt, u.ord,
        sum(u.cnt) OVER (ORDER BY u.ord) - u.cnt AS f0
    FROM unnest((SELECT %(stream_ids)b::text[]), (SELECT %(partitions)s::integer[]),
        (SELECT %(expected)s::bigint[]), (SELECT %(counts)s::integer[]))
        WITH ORDINALITY AS u(sid, part, expected, cnt, ord)
),
ev AS (
    SELECT ev.id, (SELECT %(types)b::text[])[ev.ti] AS t, ev.v, ev.d, ev.m, ev.k
    FROM unnest((SELECT %(event_ids)s::uuid[]), (SELECT %(type_index)s::integer[]),
        (SELECT %(schema_versions)s::integer[]),
        string_to_array((SELECT %(data)s::text), E'\x1e'),
        string_to_array((SELECT %(metadata)s::text), E'\x1e'))
        WITH ORDINALITY AS ev(id, ti, v, d, m, k)
),
c AS (
    SELECT u.ord, u.sid, u.cnt, u.f0, coalesce(l.partition, u.part) AS partition,
        coalesce(l.version, 0::bigint) AS version,
        CASE WHEN u.expected = -2 THEN NOT EXISTS (
                SELECT 1 FROM {schema}.events e, ev
                WHERE ev.k = u.f0 + 1 AND e.event_id = ev.id)
            WHEN u.expected IN (-1, 0) THEN l.version IS NULL
            ELSE coalesce(l.version = u.expected, false) END AS ok
    FROM u LEFT JOIN LATERAL (
        SELECT partition, stream_version AS version FROM {schema}.events
        WHERE stream_id = u.sid ORDER BY stream_version DESC LIMIT 1) l ON true
),
s AS (
    SELECT * FROM c
    WHERE c.ok AND (NOT (SELECT %(all_or_none)b::boolean) OR (SELECT bool_and(c.ok) FROM c))
),
n AS (
    SELECT s.partition, sum(s.cnt) AS cnt FROM s GROUP BY s.partition
),
lk AS MATERIALIZED (
    SELECT p.partition FROM {schema}.partitions p
    WHERE p.partition IN (SELECT n.partition FROM n) ORDER BY p.partition FOR UPDATE
),
h AS (
    UPDATE {schema}.partitions p SET head = p.head + n.cnt FROM n, lk
    WHERE p.partition = n.partition AND lk.partition = n.partition
    RETURNING p.partition, p.head - n.cnt AS base
),
placed AS (
    SELECT s.*, h.base + sum(s.cnt) OVER (PARTITION BY s.partition ORDER BY s.ord) - s.cnt AS pos0
    FROM s JOIN h ON h.partition = s.partition
),
e AS (
    INSERT INTO {schema}.events (partition, position, event_id, stream_id, stream_version,
        event_type, schema_version, data, metadata)
    SELECT x.partition, x.pos0 + g.i, ev.id, x.sid, x.version + g.i, ev.t, ev.v, ev.d::jsonb,
        coalesce(nullif(ev.m, '')::jsonb, '{{}}'::jsonb)
    FROM placed x CROSS JOIN LATERAL generate_series(1, x.cnt) AS g(i)
    JOIN ev ON ev.k = x.f0 + g.i
)
SELECT x.sid, x.version + x.cnt, x.partition, x.pos0 + x.cnt FROM placed x

-- fragment: event_rows
-- Stored events as RecordedEvent rows: its fields, in their order (the readers build one a row).
SELECT event_id::text, stream_id, stream_version, partition, position, event_type,
    schema_version, data::text, metadata::text, recorded_at
FROM {schema}.events

-- fragment: event_pages
-- Stored events as the store's readers take them (store/_reading.py): event_rows, but with the
-- event id (empty in its own column) spliced into the payload as its first field, making the
-- JSON document the event's model is validated from: {"event_id":"<id>", then the payload's
-- own fields. The payload's text after its "{" is "}" only for an empty payload; right() and
-- nullif() cost the server less per row than substr() and a jsonb comparison (a sixth of
-- the page read, which a replay waits on).
SELECT ''::text, stream_id, stream_version, partition, position, event_type, schema_version,
    '{{"event_id":"' || event_id::text
        || coalesce('",' || nullif(right(data::text, -1), '}}'), '"}}'),
    metadata::text, recorded_at
FROM {schema}.events

-- name: read_stream
-- The events of one stream after a version, in version order.
-- include: event_pages
WHERE stream_id = %(stream_id)s AND stream_version > %(after)s
ORDER BY stream_version

-- name: read_partition
-- Up to a limit of the events of one partition after a position, in position order.
-- include: event_rows
WHERE partition = %(partition)s AND position > %(after)s
ORDER BY position LIMIT %(limit)s

-- name: read_partition_page
-- read_partition as the store's readers take it (the fragment event_pages).
-- include: event_pages
WHERE partition = %(partition)s AND position > %(after)s
ORDER BY position LIMIT %(limit)s

-- name: stream_version
-- The version of one stream (its latest event's); no row for a stream without events.
SELECT stream_version FROM {schema}.events WHERE stream_id = %(stream_id)s
ORDER BY stream_version DESC LIMIT 1

-- name: heads
-- The head (last position) of every partition.
SELECT partition, head FROM {schema}.partitions ORDER BY partition

-- name: load_snapshot
-- The snapshot of one stream as (version, shape, state), if one is stored for its aggregate type.
SELECT version, shape, state::text FROM {schema}.snapshots
WHERE stream_id = %(stream_id)s AND aggregate_type = %(aggregate_type)s

-- name: save_snapshot
-- Store a stream's snapshot, replacing an older one or one of another shape or aggregate type.
INSERT INTO {schema}.snapshots AS t (stream_id, aggregate_type, shape, version, state)
VALUES (%(stream_id)s, %(aggregate_type)s, %(shape)s, %(version)s, %(state)s::jsonb)
ON CONFLICT (stream_id) DO UPDATE SET aggregate_type = excluded.aggregate_type,
    shape = excluded.shape, version = excluded.version, state = excluded.state,
    taken_at = now()
WHERE t.version < excluded.version OR t.shape <> excluded.shape
    OR t.aggregate_type <> excluded.aggregate_type
