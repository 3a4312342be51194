-- A worker's membership of a group of workers that split partitions among them (see
-- eventsource/db/_sql.py for the format).
--
-- Each kind of group keeps its members in a table of its own: {table}, where the column {group}
-- names the group (a relay, a projection) and worker_id the member, with its heartbeat_at.
-- Its partitions' leases are held in its checkpoints table, {checkpoints}: a row per group and
-- partition with the lease's owner, lease_token and lease_until, the position and any error.
-- A claim bumps the lease's token; a checkpoint moves only while the token is the worker's own.
-- Names of groups and workers are always parameters, never SQL text. Heartbeat times come
-- from the database clock at the moment of the statement (clock_timestamp()), never from the
-- worker's clock.

-- name: heartbeat
-- Join a group, or renew this worker's membership; remove the members silent for ten TTLs;
-- the live members (heartbeat within the TTL), by id, this worker among them. The statements
-- of a WITH all see the table as it was before any of them, so the worker's own row is taken
-- from the insert, and the removal leaves it alone (it is renewed in the same statement).
WITH joined AS (
    INSERT INTO {schema}.{table} AS w ({group}, worker_id)
    VALUES (%(group)s, %(worker)s)
    ON CONFLICT ({group}, worker_id) DO UPDATE SET heartbeat_at = clock_timestamp()
    RETURNING w.worker_id
), forgotten AS (
    DELETE FROM {schema}.{table}
    WHERE {group} = %(group)s AND worker_id <> %(worker)s
      AND heartbeat_at < clock_timestamp() - make_interval(secs => %(ttl)s * 10)
)
SELECT worker_id FROM {schema}.{table}
WHERE {group} = %(group)s AND worker_id <> %(worker)s
  AND heartbeat_at > clock_timestamp() - make_interval(secs => %(ttl)s)
UNION ALL
SELECT worker_id FROM joined
ORDER BY worker_id

-- name: leave
-- Leave a group.
DELETE FROM {schema}.{table}
WHERE {group} = %(group)s AND worker_id = %(worker)s

-- name: claim
-- Take the free, expired or own leases of these partitions, bumping their tokens; each with
-- its token, its position and whether an error stops it.
UPDATE {schema}.{checkpoints} c
SET owner = %(worker)s,
    lease_token = c.lease_token + 1,
    lease_until = clock_timestamp() + make_interval(secs => %(ttl)s)
WHERE (c.{group}, c.partition) IN (
    SELECT {group}, partition FROM {schema}.{checkpoints}
    WHERE {group} = %(group)s
      AND partition = ANY(%(partitions)s)
      AND (owner IS NULL OR owner = %(worker)s OR lease_until < clock_timestamp())
    FOR UPDATE SKIP LOCKED
)
RETURNING c.partition, c.lease_token, c.position, c.error IS NOT NULL

-- name: renew
-- Extend the leases still held with these tokens; the renewed ones, where they are and
-- whether an error stops them.
UPDATE {schema}.{checkpoints} c
SET lease_until = clock_timestamp() + make_interval(secs => %(ttl)s)
FROM unnest(%(partitions)s::integer[], %(tokens)s::bigint[]) AS t(partition, token)
WHERE c.{group} = %(group)s AND c.partition = t.partition
  AND c.owner = %(worker)s AND c.lease_token = t.token
RETURNING c.partition, c.position, c.error IS NOT NULL

-- name: release
-- Give up this worker's leases of these partitions.
UPDATE {schema}.{checkpoints}
SET owner = NULL, lease_until = NULL
WHERE {group} = %(group)s AND owner = %(worker)s
  AND partition = ANY(%(partitions)s)

-- name: fence
-- End the sessions that hold checkpoints of these partitions locked past their lease, while
-- waiting for their client: a worker frozen (or cut off) inside a transaction on its
-- checkpoint (a projection's batch). Neither timeout of a batch ends such a session when it
-- stopped between the statements of a pipeline, and the row lock keeps every other worker's
-- claim away (SKIP LOCKED). The holder is the live transaction whose id locked the row (its
-- xmax); it has been waiting a whole TTL, and the lease it held has expired. The pids ended
-- (the holders are found first, in a materialized step, so that no other session is ended).
WITH stuck AS MATERIALIZED (
    SELECT a.pid
    FROM {schema}.{checkpoints} c
    JOIN pg_stat_activity a ON a.backend_xid = c.xmax
    WHERE c.{group} = %(group)s AND c.partition = ANY(%(partitions)s)
      AND c.owner IS DISTINCT FROM %(worker)s
      AND c.lease_until < clock_timestamp()
      AND a.wait_event = 'ClientRead'
      AND a.state_change < clock_timestamp() - make_interval(secs => %(ttl)s)
)
SELECT pid FROM stuck WHERE pg_terminate_backend(pid)
