-- The relay's statements: its checkpoints and leases in one schema (see
-- eventsource/db/_sql.py for the format). Its workers' membership of a relay's group is kept
-- by the worker runtime's statements (eventsource/runtime/membership.sql).
--
-- A relay is named after the stream it publishes to; names of relays and workers are always
-- parameters, never SQL text. Lease times come from the database clock at the moment of the
-- statement (clock_timestamp()), never from the worker's clock. A claim bumps a checkpoint's
-- lease token; a checkpoint moves only while the token is the worker's own.

-- name: init_checkpoints
-- Create a relay's missing checkpoints, at the start of the log.
INSERT INTO {schema}.relay_checkpoints (relay, partition)
SELECT %(relay)s, p.partition FROM {schema}.partitions p
ON CONFLICT (relay, partition) DO NOTHING

-- name: advance
-- Move checkpoints forward (never back) to what the engine acknowledged, renewing their
-- leases, while the leases are ours; the partitions moved.
UPDATE {schema}.relay_checkpoints c
SET position = GREATEST(c.position, t.position),
    updated_at = clock_timestamp(),
    error = NULL,
    error_at = NULL,
    lease_until = clock_timestamp() + make_interval(secs => %(ttl)s)
FROM unnest(%(partitions)s::integer[], %(tokens)s::bigint[], %(positions)s::bigint[])
    AS t(partition, token, position)
WHERE c.relay = %(relay)s AND c.partition = t.partition
  AND c.owner = %(worker)s AND c.lease_token = t.token
RETURNING c.partition

-- name: record_error
-- Note the error that holds a partition up (it is retried), while the lease is ours.
UPDATE {schema}.relay_checkpoints
SET error = %(error)s,
    error_at = clock_timestamp(),
    updated_at = clock_timestamp()
WHERE relay = %(relay)s AND partition = %(partition)s
  AND owner = %(worker)s AND lease_token = %(token)s

-- name: read_partitions
-- Up to a limit of the events of each of several partitions after its position, in order,
-- as the relay makes its messages of them: the header lines that need no encoding are made
-- here (ids, numbers, the time in UTC), the rest is left as text.
SELECT e.partition, e.position, e.event_id::text, e.stream_id, e.event_type,
    'Nats-Msg-Id: ' || e.event_id || E'\r\nEs-Event-Id: ' || e.event_id
    || E'\r\nEs-Stream-Version: ' || e.stream_version || E'\r\nEs-Partition: ' || e.partition
    || E'\r\nEs-Position: ' || e.position || E'\r\nEs-Schema-Version: ' || e.schema_version
    || E'\r\nEs-Recorded-At: '
    || to_char(e.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
    || E'\r\n',
    e.metadata::text, e.data::text
FROM unnest(%(partitions)s::integer[], %(after)s::bigint[]) AS t(partition, after)
CROSS JOIN LATERAL (
    SELECT ev.partition, ev.position, ev.event_id, ev.stream_id, ev.event_type,
        ev.stream_version, ev.schema_version, ev.recorded_at, ev.metadata, ev.data
    FROM {schema}.events ev
    WHERE ev.partition = t.partition AND ev.position > t.after
    ORDER BY ev.position LIMIT %(limit)s
) AS e
ORDER BY e.partition, e.position

-- name: status
-- Every relay's checkpoints with their partitions' heads.
SELECT c.relay, c.partition, c.position, p.head, c.owner, c.lease_until, c.updated_at,
       c.error, c.error_at
FROM {schema}.relay_checkpoints c
JOIN {schema}.partitions p ON p.partition = c.partition
ORDER BY c.relay, c.partition
