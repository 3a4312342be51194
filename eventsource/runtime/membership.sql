-- A worker's membership of a group of workers that split partitions among them (see
-- eventsource/db/_sql.py for the format).
--
-- Each kind of group keeps its members in a table of its own: {table}, where the column {group}
-- names the group (a relay, a projection) and worker_id the member, with its heartbeat_at.
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
